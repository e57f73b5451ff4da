"""Benchmark of the runner's training loop against a plain PyTorch loop (not part of the test suite).

For the paper's MLP on ``mnist5k`` and the CNN on ``digits`` (the run's own data, model and initial weights), 20
epochs with the run's settings (SGD with Nesterov momentum and weight decay, cosine schedule per epoch, batch 250,
gradient-norm clipping at 1), one thread:

  plain   a hand-written PyTorch loop: shuffle, forward, cross-entropy, backward, clip, step;
  runner  ``train_epochs`` as a run calls it, without a pruner;
  masked  ``train_epochs`` as a run calls it after a pruning step (density 0.8): gradients masked before clipping
          (the run's SGD then keeps the pruned weights at 0).

The three alternate ``--reps`` times in rotating order, each from the same initial weights; the table gives median
seconds and the median over repetitions of plain/variant (≥ 0.9 is the target: the runner costs at most ~11%).

    python bench/bench_runner.py [--reps 6] [--epochs 20]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pqprune import LotteryTicket, Pruner
from pqprune.experiment.prepare import prepare
from pqprune.experiment.settings import RunSettings
from pqprune.experiment.train import TrainConfig, cosine_lr, train_epochs

WORKLOADS = {"MLP on mnist5k": ("mnist5k", "mlp"), "CNN on digits": ("digits", "cnn")}


def plain_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, cfg: TrainConfig, seed: int) -> None:
    """What a user would write by hand, with the run's settings."""
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr, epoch, epochs)
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm or math.inf)
            opt.step()


def variants(data: str, model_name: str, epochs: int) -> dict[str, Callable[[], None]]:
    prep = prepare(RunSettings(data=data, model=model_name, epochs=epochs, device="cpu"))
    x, y = prep.data.train
    cfg = prep.train_config
    initial = copy.deepcopy(prep.model.state_dict())
    plain_model = copy.deepcopy(prep.model)
    runner_model = copy.deepcopy(prep.model)
    masked_model = copy.deepcopy(prep.model)
    pruner = Pruner(masked_model, LotteryTicket(0.2), scope="global")
    pruner.step()

    def plain() -> None:
        plain_model.load_state_dict(initial)
        plain_loop(plain_model, x, y, epochs, cfg, seed=1)

    def runner() -> None:
        runner_model.load_state_dict(initial)
        train_epochs(runner_model, prep.data.train, epochs, cfg, seed=1)

    def masked() -> None:
        pruner.rewind()
        train_epochs(
            masked_model,
            prep.data.train,
            epochs,
            cfg,
            seed=1,
            before_step=pruner.maskset.mask_grads,
        )

    return {"plain": plain, "runner": runner, "masked": masked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.epochs} epochs, {args.reps} repetitions"
    )
    lines = [
        "| workload | plain (s) | runner (s) | plain/runner | masked (s) | plain/masked |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for label, (data, model_name) in WORKLOADS.items():
        fns = variants(data, model_name, args.epochs)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for f in fns.values():
            f()  # warm-up
        order = list(fns)
        for r in range(args.reps):
            for k in order[r % len(order) :] + order[: r % len(order)]:
                t = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = {k: statistics.median(p / v for p, v in zip(times["plain"], times[k])) for k in ("runner", "masked")}
        lines.append(
            f"| {label} | {med['plain']:.2f} | {med['runner']:.2f} | {ratio['runner']:.2f} | {med['masked']:.2f} | "
            f"{ratio['masked']:.2f} |"
        )
        print(lines[-1], flush=True)
        worst = min(ratio.values())
        verdicts.append(
            f"{label}: plain/masked {ratio['masked']:.2f} (target ≥ 0.9: {'met' if worst >= 0.9 else 'MISSED'})"
        )
    print("\n" + "\n".join([*lines, "", *verdicts]))


if __name__ == "__main__":
    main()
