"""Plain training and evaluation loops over in-memory tensors: device-agnostic, deterministic, pluggable hooks.

Defaults are those of Diao et al. (2023), "Pruning deep neural networks from a sparsity perspective" (ICLR) and
its code: SGD, lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4, cosine annealing over the epochs of a call
(so restarted each pruning round), batch 250, gradient-norm clipping at 1.0.

The loop knows nothing about pruning. A pruning engine plugs in through two callables:

- ``before_step()``: after ``backward()``, before clipping and the optimizer step (mask the gradients, so the
  clipping norm is that of the surviving weights' gradients);
- ``after_step()``: right after ``optimizer.step()`` (re-zero pruned weights that weight decay or momentum moved).

Order of one step: zero_grad → forward → loss → backward → before_step → clip → step → after_step → on_step.

With ``distributed=True`` (a process group initialised, see :mod:`pqprune.experiment.distributed`) the same loop runs on
every rank: the model is wrapped in DistributedDataParallel, each global batch of ``batch_size`` examples (the
same seeded permutation on every rank) is split between the ranks, and the local loss is scaled so that DDP's
gradient average equals the gradient of the global batch's mean loss — the gradient a single process would
compute. DDP all-reduces the gradients inside ``backward()``, so ``before_step`` (gradient masking) runs after
the all-reduce on identical gradients; every rank then clips and steps identically. Evaluation splits the data
and sums counts and losses over the ranks.
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

from pqprune.experiment import distributed as dist_mod

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
    """Accept a ``(x, y)`` pair (``pqprune.experiment.data.Split`` is one) and check it."""
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

    def state(self) -> dict[str, Any]:
        """Plain sums, to be added over ranks by :meth:`merged` (regression: per-output sums of y and y²)."""
        ys = torch.cat(self.ys) if self.ys else None
        return {
            "n": self.n,
            "loss": self.loss,
            "correct": self.correct,
            "sse": self.sse,
            "regression": ys is not None,
            "sum_y": ys.sum(dim=0).tolist() if ys is not None else None,
            "sum_y2": (ys**2).sum(dim=0).tolist() if ys is not None else None,
        }

    @staticmethod
    def merged(states: list[dict[str, Any]]) -> Metrics:
        """The metrics of the union of the batches the ``states`` saw (one state per rank)."""
        n = sum(s["n"] for s in states)
        if n == 0:
            return Metrics(float("nan"), float("nan"))
        loss = sum(s["loss"] for s in states)
        regression = [s for s in states if s["regression"]]
        if not regression:  # classification (or ranks that saw nothing)
            return Metrics(loss / n, sum(s["correct"] for s in states) / n)
        sum_y = torch.tensor([s["sum_y"] for s in regression], dtype=torch.float64).sum(dim=0)
        sum_y2 = torch.tensor([s["sum_y2"] for s in regression], dtype=torch.float64).sum(dim=0)
        sst = float((sum_y2 - sum_y**2 / n).sum())  # Σ (y − ȳ)² from the sums, in float64
        sse = sum(s["sse"] for s in states)
        return Metrics(loss / n, 1.0 - sse / sst if sst > 0 else float("nan"))

    def metrics(self) -> Metrics:
        if self.n == 0:
            return Metrics(float("nan"), float("nan"))
        if not self.ys:
            return Metrics(self.loss / self.n, self.correct / self.n)
        ys = torch.cat(self.ys)
        sst = float(((ys - ys.mean(dim=0)) ** 2).sum())
        return Metrics(self.loss / self.n, 1.0 - self.sse / sst if sst > 0 else float("nan"))


# --------------------------------------------------------------------------------------------- threads
# Multiply-adds per training batch below which one CPU thread trains fastest: below it a step's ops are so short
# that handing them to more threads costs more than it gives (the MLP of the paper at batch 250 does 3.4e7).
SMALL_WORK = 1 << 24


def multiply_adds(model: nn.Module, x: Tensor) -> int:
    """Multiply-adds of the linear and convolution layers in one forward pass of the batch ``x`` (no gradients)."""
    total = 0

    def count(module: nn.Module, _inputs: Any, out: Tensor) -> None:
        nonlocal total
        w = module.weight
        assert isinstance(w, Tensor)
        # A linear output entry sums in_features products; a convolution's, in_channels/groups × kernel ones.
        total += out.numel() * (w.shape[1] if isinstance(module, nn.Linear) else w[0].numel())

    handles = [
        m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]
    was = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return total


def choose_threads(requested: int, model: nn.Module, example: Tensor, batch_size: int) -> int:
    """CPU threads for a run: ``requested`` if > 0, else one for models whose training batch needs fewer than
    :data:`SMALL_WORK` multiply-adds, else the process's current number (never more: a sweep worker keeps one)."""
    if requested > 0:
        return requested
    work = multiply_adds(model, example[:1]) * batch_size
    return 1 if work < SMALL_WORK else torch.get_num_threads()


# --------------------------------------------------------------------------------------------- evaluate
@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
    *,
    distributed: bool = False,
) -> Metrics:
    """Mean loss and accuracy of ``model`` on ``data`` (an ``(x, y)`` pair), in eval mode; the mode is restored.

    Classification (int64 ``y``): cross-entropy and top-1 accuracy. Regression (float ``y``): the MSE (mean
    over samples and outputs) and, as ``accuracy``, R² — higher is better, so model selection works unchanged.

    ``distributed=True`` (a collective: every rank must call it): each rank evaluates a contiguous share of
    ``data`` and the sums are combined, so every rank returns the metrics of the whole of ``data``. Pass the
    plain module, not its DDP wrapper.
    """
    x, y = _tensors(data)
    if distributed:
        lo, hi = dist_mod.shard_bounds(len(x), dist_mod.rank(), dist_mod.world_size())
        x, y = x[lo:hi], y[lo:hi]
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
    if distributed:
        return _Score.merged(dist_mod.gather_objects(score.state()))
    return score.metrics()


# --------------------------------------------------------------------------------------------- train
def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with the paper's settings; weight decay on every parameter, as in the paper's code."""
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
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
    distributed: bool = False,
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

    ``distributed=True`` (every rank calls it with the same arguments; see the module docstring): DDP training
    on each rank's share of every global batch of ``config.batch_size``. Every rank must pass the same ``seed``
    (or equally seeded generators), since all draw the same permutation. ``EpochInfo`` holds the whole
    epoch's loss and accuracy (summed over ranks); ``StepInfo.loss`` is this rank's share of the batch. At the end
    of each epoch rank 0's buffers (BatchNorm statistics) are copied to all, so evaluation agrees across ranks.
    A global batch with fewer than two examples per rank is skipped (BatchNorm cannot train on one), so only a
    last batch of 2 … 2N−1 examples makes an epoch differ from a single process's.
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
    world, rank = (dist_mod.world_size(), dist_mod.rank()) if distributed else (1, 0)
    net = dist_mod.wrap_ddp(model, dev) if distributed else model  # the same parameters, with gradient all-reduce
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
                if distributed and len(idx) < 2 * world:
                    continue  # a share of one example: BatchNorm cannot train on it (as above)
                xb, yb = x[idx], y[idx]
                if cfg.augment == "crop_flip":
                    # Drawn for the whole global batch on every rank, so generators stay in step and each
                    # example gets the crop it would get in one process.
                    xb = augment_crop_flip(xb, gen)
                if distributed:
                    n_global = len(idx)
                    xb, yb = dist_mod.batch_share(xb, rank, world), dist_mod.batch_share(yb, rank, world)
                opt.zero_grad(set_to_none=True)
                out = net(xb)
                if distributed:
                    loss_sum = _loss(out, yb, "sum")
                    per_example = out[0].numel() if not _is_classification(yb) else 1  # MSE: mean over outputs too
                    # DDP averages over ranks; scaling by world/n_global makes that average the global batch's
                    # mean-loss gradient, exactly, even when the ranks' shares differ in size.
                    loss = loss_sum * (world / (n_global * per_example))
                    loss_value = float(loss_sum.detach()) / (len(yb) * per_example)
                else:
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
                if not distributed:
                    loss_value = float(loss.detach())
                score.add(out.detach(), yb, loss_value * len(yb))
                if on_step is not None:
                    on_step(StepInfo(epoch, step, loss_value, lr))
                step += 1
            if distributed:
                dist_mod.broadcast_buffers(model)
                m = _Score.merged(dist_mod.gather_objects(score.state()))
            else:
                m = score.metrics()
            info = EpochInfo(epoch, m.loss, m.accuracy, lr, time.perf_counter() - t0)
            result.epochs.append(info)
            if on_epoch is not None:
                on_epoch(info)
    finally:
        if pending_after and after_step is not None:
            after_step()
        del net  # drop DDP's gradient hooks now: the next round wraps the model afresh
        result.steps = step
        result.seconds = time.perf_counter() - start
    return result
