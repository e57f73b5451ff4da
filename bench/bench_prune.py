"""Benchmarks of the pruning engine (not part of the test suite).

(a) One global magnitude-pruning step (20%) on ~11M and ~100M weights: pqprune (``Pruner.step`` with
    ``LotteryTicket(0.2)``: measure, exact-k selection, mask update, enforce) against a full sort of all
    magnitudes and against ``torch.nn.utils.prune.global_unstructured``. Every measurement runs in its own
    subprocess; peak extra memory = max RSS (``resource.getrusage``) minus the RSS just before the step.
(b) One training step (forward, backward, SGD momentum + weight decay) of the MLP 784-128-256-10 and of a
    small CNN: pqprune masks through ``Pruner.wrap(optimizer)`` against the same model and optimizer unwrapped,
    and against ``torch.nn.utils.prune`` hooks, all at the same density (80%), one thread. Medians of thread
    CPU time over interleaved repetitions in rotating order, and the median of per-repetition ratios.

    python bench/bench_prune.py [--sizes 11M,100M] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

SIZES = {"11M": 11_173_962, "100M": 100_000_000}


# ------------------------------------------------------------------------------------------------ (a)
def _model(total: int) -> nn.Module:
    """Linear layers of ResNet-like sizes (512×4608, 2.36M each) summing to ~``total`` weights."""
    torch.manual_seed(0)
    rows, cols = 512, 4608
    n_full, rest = divmod(total, rows * cols)
    layers = [nn.Linear(cols, rows, bias=False) for _ in range(n_full)]
    if rest:
        layers.append(nn.Linear(rest, 1, bias=False))
    return nn.Sequential(*layers)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def worker(kind: str, total: int) -> dict:
    torch.set_num_threads(1)
    model = _model(total)
    weights = [m.weight for m in model]
    n = sum(w.numel() for w in weights)
    k = int(0.2 * n)
    if kind == "pqprune":
        from pqprune import LotteryTicket, Pruner

        pr = Pruner(model, LotteryTicket(0.2), scope="global")
        before = _rss()
        t, c0 = time.perf_counter(), _cpu()
        pr.step()
        dt, dc = time.perf_counter() - t, _cpu() - c0
        pruned = n - round(pr.density() * n)
    elif kind == "sort":
        before = _rss()
        t, c0 = time.perf_counter(), _cpu()
        flat = torch.cat([w.detach().abs().reshape(-1) for w in weights])
        order = torch.sort(flat, stable=True).indices[:k]
        keep = torch.ones(n, dtype=torch.bool)
        keep[order] = False
        masks, off = [], 0
        for w in weights:
            masks.append(keep[off : off + w.numel()].reshape(w.shape))
            off += w.numel()
        with torch.no_grad():
            for w, m in zip(weights, masks):
                w.mul_(m)
        dt, dc = time.perf_counter() - t, _cpu() - c0
        pruned = int((~keep).sum())
    elif kind == "torch_prune":
        from torch.nn.utils import prune

        before = _rss()
        t, c0 = time.perf_counter(), _cpu()
        prune.global_unstructured([(m, "weight") for m in model], pruning_method=prune.L1Unstructured, amount=0.2)
        dt, dc = time.perf_counter() - t, _cpu() - c0
        pruned = int(sum((m.weight_mask == 0).sum() for m in model))
    else:
        raise ValueError(kind)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "kind": kind,
        "n": n,
        "seconds": dt,
        "cpu_seconds": dc,
        "extra_bytes": peak - before,
        "weight_bytes": 4 * n,
        "pruned": pruned,
        "k": k,
    }


def run_worker(kind: str, total: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(total)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_step(sizes: list[str], skip_sort_at: int) -> list[str]:
    lines = [
        "| weights | method | wall (s) | CPU (s) | CPU vs pqprune | peak extra memory (× weights) |",
        "|---|---|---|---|---|---|",
    ]
    for label in sizes:
        total = SIZES[label]
        res = {"pqprune": run_worker("pqprune", total)}
        assert res["pqprune"]["pruned"] == res["pqprune"]["k"], res["pqprune"]
        for kind in ("torch_prune", "sort"):
            if kind == "sort" and total > skip_sort_at:
                continue
            res[kind] = run_worker(kind, total)
        base = res["pqprune"]["cpu_seconds"]
        for kind, r in res.items():
            lines.append(
                f"| {label} | {kind} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['cpu_seconds'] / base:.1f}× "
                f"| {r['extra_bytes'] / r['weight_bytes']:.2f} |"
            )
        print("\n".join(lines[-len(res) :]), flush=True)
    return lines


# ------------------------------------------------------------------------------------------------ (b)
def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


def bench_train(reps: int, steps: int) -> list[str]:
    from torch.nn.utils import prune

    from pqprune import LotteryTicket, Pruner

    torch.set_num_threads(1)
    lines = [
        "| model | batch | variant | CPU ms/step (median) | vs unmasked (median paired ratio) |",
        "|---|---|---|---|---|",
    ]
    for name, make in (("MLP 784-128-256-10", _mlp), ("CNN 2conv+fc", _cnn)):
        for batch in (64, 256) if name.startswith("MLP") else (64,):
            x = torch.randn(batch, 1, 28, 28)
            y = torch.randint(0, 10, (batch,))
            # "unmasked" and "pqprune" are the same model and optimizer, with and without the hooks of
            # Pruner.wrap: only the masking differs (separate instances differed by ~2% from memory layout alone).
            torch.manual_seed(0)
            model = make()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            pr = Pruner(model, LotteryTicket(0.2), scope="layer")
            pr.step()
            torch.manual_seed(0)
            tp_model = make()
            for m in tp_model.modules():
                if isinstance(m, (nn.Linear, nn.Conv2d)):
                    prune.l1_unstructured(m, "weight", amount=0.2)
            tp_opt = torch.optim.SGD(tp_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            variants = {"unmasked": (model, opt), "pqprune": (model, opt), "torch_prune": (tp_model, tp_opt)}

            def toggle(v: str, pr=pr, opt=opt) -> None:
                if v == "pqprune":
                    pr.wrap(opt)
                else:
                    pr.unwrap(opt)

            def one(model, opt, x=x, y=y):
                # Thread CPU time: with one intra-op thread all work is on this thread, and time spent
                # descheduled by other jobs on the shared cores is not counted.
                t = time.thread_time()
                for _ in range(steps):
                    opt.zero_grad(set_to_none=True)
                    nn.functional.cross_entropy(model(x), y).backward()
                    opt.step()
                return (time.thread_time() - t) / steps

            times: dict[str, list[float]] = {v: [] for v in variants}
            for v in variants:
                toggle(v)
                one(*variants[v])  # warm-up
            order = list(variants)
            for r in range(reps):
                # Interleaved, so drifting load on shared cores hits all variants alike, and in an order rotated
                # every repetition: whichever variant runs first after another one was measured ~2% slower.
                for v in order[r % len(order) :] + order[: r % len(order)]:
                    toggle(v)
                    times[v].append(one(*variants[v]))
            for v, ts in times.items():
                med = statistics.median(ts)
                # Ratio per repetition against the unmasked run of the same repetition, then the median: slow
                # drifts of the shared machine's load cancel within a repetition.
                ratio = statistics.median(t / u for t, u in zip(ts, times["unmasked"]))
                lines.append(f"| {name} | {batch} | {v} | {1e3 * med:.3f} | {ratio:.3f}× |")
            print("\n".join(lines[-3:]), flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "N"))
    ap.add_argument("--sizes", default="11M,100M")
    ap.add_argument("--skip-sort-above", type=int, default=200_000_000)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions of (b)")
    ap.add_argument("--only", choices=("a", "b"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return
    out = []
    if args.only in (None, "a"):
        out += ["(a) one global 20% pruning step", *bench_step(args.sizes.split(","), args.skip_sort_above), ""]
    if args.only in (None, "b"):
        out += [
            "(b) one training step, SGD momentum + weight decay, density 0.8",
            *bench_train(5 if args.quick else 31, 10 if args.quick else 30),
        ]
    print("\n" + "\n".join(out))


if __name__ == "__main__":
    main()
