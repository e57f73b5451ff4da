"""Training throughput of 1 vs 2 processes (torchrun + DDP, gloo) on this machine, in samples per second.

One run measures every row: for each workload (the paper's MLP on mnist5k, the CNN on digits) it trains
``--epochs`` timed epochs (after one warm-up epoch) with pqprune's own loop (``train_epochs`` with the mask
hooks of a Pruner that has pruned once), global batch 250, in

  * 1 process, 1 thread;
  * 2 processes (``torchrun --standalone --nproc_per_node 2``), 1 thread each — the distributed path;
  * 1 process, 2 threads — for honesty: what the same two cores give without DDP.

    python bench/bench_distributed.py [--epochs 2] [--json]

Samples per second = timed epochs × training examples / wall seconds on rank 0 (between two barriers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKLOADS = {"mlp-mnist5k": ("mnist5k", "mlp"), "cnn-digits": ("digits", "cnn")}


def worker(workload: str, epochs: int, threads: int) -> dict:
    """Train one workload; prints a JSON line on rank 0. Runs under torchrun or alone."""
    import torch

    from pqprune.experiment import data as data_mod
    from pqprune.experiment import distributed
    from pqprune.experiment import models as models_mod
    from pqprune.experiment.train import TrainConfig, resolve_device, train_epochs
    from pqprune.prune.pruner import Pruner

    torch.set_num_threads(threads)
    data_name, model_name = WORKLOADS[workload]
    with distributed.session(resolve_device("cpu")) as ctx:
        splits = data_mod.get_dataset(data_name, None, seed=0, val_fraction=0.1)
        model = models_mod.build_model(model_name, splits.input_shape, splits.num_classes, seed=0)
        pruner = Pruner(model, "lottery_ticket")
        pruner.step()  # masks with pruned entries, so the hooks do real work
        cfg = TrainConfig()
        kw = dict(before_step=pruner.maskset.mask_grads, after_step=pruner.enforce, distributed=ctx.active)
        train_epochs(model, splits.train, 1, cfg, seed=1, **kw)  # warm-up
        if ctx.active:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        train_epochs(model, splits.train, epochs, cfg, seed=2, **kw)
        if ctx.active:
            torch.distributed.barrier()
        seconds = time.perf_counter() - t0
        row = {
            "workload": workload,
            "processes": ctx.world_size,
            "threads": threads,
            "samples_per_second": epochs * len(splits.train) / seconds,
            "seconds": seconds,
            "train_examples": len(splits.train),
            "epochs": epochs,
        }
        if ctx.is_main:
            print("RESULT " + json.dumps(row), flush=True)
        return row


def _launch(workload: str, epochs: int, processes: int, threads: int) -> dict:
    me = os.path.abspath(__file__)
    args = ["--worker", workload, "--epochs", str(epochs), "--threads", str(threads)]
    if processes == 1:
        cmd = [sys.executable, me, *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            me,
            *args,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement (after one warm-up)")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--worker", choices=sorted(WORKLOADS), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker, a.epochs, a.threads)
        return
    rows = []
    for workload in WORKLOADS:
        for processes, threads in ((1, 1), (2, 1), (1, 2)):
            rows.append(_launch(workload, a.epochs, processes, threads))
            print(
                f"  measured {workload} {processes}x{threads}: {rows[-1]['samples_per_second']:.0f} samples/s",
                file=sys.stderr,
                flush=True,
            )
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print("| workload | processes × threads | samples/s | vs 1×1 |")
    print("| --- | --- | ---: | ---: |")
    for r in rows:
        base = next(b for b in rows if b["workload"] == r["workload"] and b["processes"] == 1 and b["threads"] == 1)
        print(
            f"| {r['workload']} | {r['processes']} × {r['threads']} | {r['samples_per_second']:.0f} | "
            f"{r['samples_per_second'] / base['samples_per_second']:.2f}× |"
        )


if __name__ == "__main__":
    main()
