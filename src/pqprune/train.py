"""Plain training and evaluation loops over in-memory tensors: device-agnostic, deterministic, pluggable hooks.

Defaults are those of Diao et al. (2023), "Pruning deep neural networks from a sparsity perspective" (ICLR) and
its code: SGD, lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4, cosine annealing over the epochs of a call
(so restarted each pruning round), batch 250, gradient-norm clipping at 1.0.

The loop knows nothing about pruning. A pruning engine plugs in through two callables:

- ``before_step()``: after ``backward()``, before clipping and the optimizer step (mask the gradients, so the
  clipping norm is that of the surviving weights' gradients);
- ``after_step()``: right after ``optimizer.step()`` (re-zero pruned weights that weight decay or momentum moved).

Order of one step: zero_grad → forward → loss → backward → before_step → clip → step → after_step → on_step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AUGMENTATIONS = (None, "crop_flip")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and loop settings (defaults: the paper's). ``clip_norm=None`` disables clipping."""

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch_size: int = 250
    eval_batch_size: int = 1000
    schedule: str = "cosine"  # "cosine" (per epoch, as the paper's CosineAnnealingLR) or "constant"
    clip_norm: float | None = 1.0
    augment: str | None = None  # None, or "crop_flip" (random 4-pixel-padded crop + horizontal flip; CIFAR)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(
                f"batch sizes must be >= 1, got batch_size={self.batch_size} eval_batch_size={self.eval_batch_size}"
            )
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ValueError(f"clip_norm must be > 0 or None, got {self.clip_norm}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Metrics(NamedTuple):
    """Mean loss and accuracy (classification) or R² (regression, where the loss is the MSE)."""

    loss: float
    accuracy: float


@dataclass(frozen=True)
class StepInfo:
    epoch: int
    step: int  # global step within this call, from 0
    loss: float
    lr: float


@dataclass(frozen=True)
class EpochInfo:
    epoch: int
    loss: float  # mean training loss over the epoch (in train mode, as seen by the optimiser)
    accuracy: float  # running training accuracy (classification) or R² (regression)
    lr: float
    seconds: float


@dataclass
class TrainResult:
    epochs: list[EpochInfo] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


Tensors = tuple[Tensor, Tensor]
Hook = Callable[[], Any]


# --------------------------------------------------------------------------------------------- helpers
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → cuda if available else cpu; ``"cpu"``/``"cuda"``/``"cuda:1"`` as given, checked for availability."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} requested but CUDA is not available; use --device cpu or auto")
    return dev


def _tensors(data: Any) -> Tensors:
    """Accept a ``(x, y)`` pair (``pqprune.data.Split`` is one) and check it."""
    try:
        x, y = data
    except (TypeError, ValueError) as exc:
        raise TypeError(f"data must be an (x, y) pair of tensors, got {type(data).__name__}") from exc
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or len(x) != len(y):
        raise TypeError("data must be an (x, y) pair of tensors of equal length")
    return x, y


def _is_classification(y: Tensor) -> bool:
    return not y.is_floating_point()


def _loss(out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy for int64 labels; for float targets torch's MSE (mean over samples and outputs)."""
    if _is_classification(y):
        return F.cross_entropy(out, y, reduction=reduction)
    return F.mse_loss(out, y.view_as(out), reduction=reduction)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (0-based) for cosine annealing to 0 over ``epochs`` (torch's CosineAnnealingLR)."""
    return base * (1 + math.cos(math.pi * epoch / epochs)) / 2


def augment_crop_flip(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random ``pad``-padded crop and horizontal flip of a batch of (N, C, H, W) images, vectorised.

    Padding is with 0 in normalised units (the mean image value), not with black pixels as torchvision does.
    """
    if x.dim() != 4:
        raise ValueError(f"crop_flip augmentation needs (N, C, H, W) images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    offs = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offs[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offs[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


class _Score:
    """Accumulates the summed loss and correct count (or residual / total sums for R²) over batches."""

    def __init__(self) -> None:
        self.n = 0
        self.loss = 0.0
        self.correct = 0
        self.ys: list[Tensor] = []
        self.sse = 0.0

    def add(self, out: Tensor, y: Tensor, loss_sum: float) -> None:
        self.n += len(y)
        self.loss += loss_sum
        if _is_classification(y):
            self.correct += int((out.argmax(dim=1) == y).sum())
        else:
            self.sse += float(((out.detach() - y.view_as(out)) ** 2).sum())
            self.ys.append(y.detach().reshape(len(y), -1).double().cpu())

    def metrics(self) -> Metrics:
        if self.n == 0:
            return Metrics(float("nan"), float("nan"))
        if not self.ys:
            return Metrics(self.loss / self.n, self.correct / self.n)
        ys = torch.cat(self.ys)
        sst = float(((ys - ys.mean(dim=0)) ** 2).sum())
        return Metrics(self.loss / self.n, 1.0 - self.sse / sst if sst > 0 else float("nan"))


# --------------------------------------------------------------------------------------------- evaluate
@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 1000, device: str | torch.device | None = None) -> Metrics:
    """Mean loss and accuracy of ``model`` on ``data`` (an ``(x, y)`` pair), in eval mode; the mode is restored.

    Classification (int64 ``y``): cross-entropy and top-1 accuracy. Regression (float ``y``): the MSE (mean
    over samples and outputs) and, as ``accuracy``, R² — higher is better, so model selection works unchanged.
    """
    x, y = _tensors(data)
    dev = resolve_device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    score = _Score()
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(dev, non_blocking=True), y[i : i + batch_size].to(dev, non_blocking=True)
            out = model(xb)
            score.add(out, yb, float(_loss(out, yb)) * len(yb))
    finally:
        model.train(was_training)
    return score.metrics()


# --------------------------------------------------------------------------------------------- train
def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with the paper's settings; weight decay on every parameter, as in the paper's code."""
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    )


def train_epochs(
    model: nn.Module,
    data: Any,
    epochs: int,
    config: TrainConfig | None = None,
    *,
    seed: int = 0,
    generator: torch.Generator | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    before_step: Hook | None = None,
    after_step: Hook | None = None,
    on_step: Callable[[StepInfo], Any] | None = None,
    on_epoch: Callable[[EpochInfo], Any] | None = None,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` (an ``(x, y)`` pair, e.g. ``DataSplits.train``) for ``epochs`` epochs.

    A fresh SGD optimiser (unless ``optimizer`` is given) and a cosine schedule over these ``epochs`` are used,
    so each call — each pruning round — restarts the schedule (Diao et al. 2023). Batches are slices of a
    permutation drawn from ``generator`` (default: a new one seeded with ``seed``): the same seed gives the
    same weights. Pass a different seed per round, or one generator across rounds, to vary the order. A final
    batch of a single example is dropped (BatchNorm cannot train on it).

    The model is moved to ``device`` (default: where it is); ``x`` and ``y`` are moved batch by batch unless
    they are already there. On any exception, including KeyboardInterrupt, ``after_step`` is still run for a
    step the optimiser has taken, so masks hold; the weights are those of mid-epoch and the caller should
    restore its last checkpoint. The model is left in train mode.
    """
    cfg = config or TrainConfig()
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    x, y = _tensors(data)
    if len(x) == 0:
        raise ValueError("cannot train on an empty data set")
    dev = resolve_device(device) if device is not None else _model_device(model)
    model.to(dev)
    if x.device != dev:
        x, y = x.to(dev), y.to(dev)  # small data sets: one copy up front beats one per batch
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    opt = optimizer if optimizer is not None else make_optimizer(model, cfg)
    result = TrainResult()
    start = time.perf_counter()
    model.train()
    pending_after = False  # a step was taken whose after_step has not run yet
    step = 0
    n = len(x)
    try:
        for epoch in range(epochs):
            t0 = time.perf_counter()
            lr = cosine_lr(cfg.lr, epoch, epochs) if cfg.schedule == "cosine" else cfg.lr
            for group in opt.param_groups:
                group["lr"] = lr
            perm = torch.randperm(n, generator=gen).to(dev)
            score = _Score()
            for i in range(0, n, cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                if len(idx) < 2 and n > 1:
                    continue
                xb, yb = x[idx], y[idx]
                if cfg.augment == "crop_flip":
                    xb = augment_crop_flip(xb, gen)
                opt.zero_grad(set_to_none=True)
                out = model(xb)
                loss = _loss(out, yb)
                loss.backward()
                if before_step is not None:
                    before_step()
                if cfg.clip_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                opt.step()
                pending_after = after_step is not None
                if after_step is not None:
                    after_step()
                    pending_after = False
                loss_value = float(loss.detach())
                score.add(out.detach(), yb, loss_value * len(yb))
                if on_step is not None:
                    on_step(StepInfo(epoch, step, loss_value, lr))
                step += 1
            m = score.metrics()
            info = EpochInfo(epoch, m.loss, m.accuracy, lr, time.perf_counter() - t0)
            result.epochs.append(info)
            if on_epoch is not None:
                on_epoch(info)
    finally:
        if pending_after and after_step is not None:
            after_step()
        result.steps = step
        result.seconds = time.perf_counter() - start
    return result
