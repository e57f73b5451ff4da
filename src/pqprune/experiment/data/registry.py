"""Data sets by name, as in-memory tensors with seeded train / validation / test splits.

Every data set here is small enough to hold in memory, so training iterates over index permutations of tensors
(no DataLoader, no worker processes): fast on 2 CPU cores and bit-for-bit deterministic for a given seed.
Normalisation constants are those of the code of Diao et al. (2023).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

Task = Literal["classification", "regression"]

DEFAULT_VAL_FRACTION = 0.1
DEFAULT_ROOT_ENV = "PQPRUNE_DATA_ROOT"

# (mean, std) per channel on [0, 1] pixels, from the paper's code (Diao et al. 2023).
PAPER_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


class DatasetNotFound(ValueError):
    """A data set's files are missing; the one-line message says where they were looked for and how to get them."""


class Split(NamedTuple):
    """Inputs ``x`` (N, *input_shape) float32 and targets ``y``: int64 labels or float32 regression targets."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:  # type: ignore[override,unused-ignore]
        return int(self.x.shape[0])


@dataclass(frozen=True)
class DataSplits:
    """A data set ready for training: normalised tensors in three splits plus what a model needs to know.

    ``num_classes`` is the number of classes, or the output dimension for a regression task. ``augment`` names
    the training-time augmentation the paper used for this data set (``"crop_flip"`` for CIFAR) or is None;
    :mod:`pqprune.experiment.train` applies it only when asked. ``extras`` holds data-set specific objects, e.g. the
    teacher network of ``teacher`` under ``extras["teacher"]``.
    """

    name: str
    train: Split
    val: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int
    task: Task = "classification"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    augment: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


@dataclass(frozen=True)
class _Raw:
    """What a loader returns before splitting and normalisation; images are uint8 or float in their own range."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    task: Task = "classification"
    scale: float = 1.0  # divide by this first (255 for 8-bit images)
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # None: standardise with train statistics
    augment: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


Loader = Callable[..., _Raw]
_REGISTRY: dict[str, Loader] = {}
_NEEDS_ROOT: set[str] = set()


def _register(name: str, needs_root: bool = False) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        _REGISTRY[name] = fn
        if needs_root:
            _NEEDS_ROOT.add(name)
        return fn

    return deco


def available() -> list[str]:
    """Names accepted by :func:`get_dataset`."""
    return sorted(_REGISTRY)


def needs_root(name: str) -> bool:
    """Whether data set ``name`` is read from files under a data root (as opposed to built in)."""
    return _canonical(name) in _NEEDS_ROOT


def default_root() -> Path:
    """``$PQPRUNE_DATA_ROOT`` if set, else ``./data``."""
    return Path(os.environ.get(DEFAULT_ROOT_ENV, "data"))


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(available())}")
    return key


def get_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    download: bool = False,
    **kw: Any,
) -> DataSplits:
    """Load data set ``name`` as normalised tensors with a seeded validation split carved from train.

    ``seed`` only chooses which training examples go to validation; the test split is fixed (the data set's
    own, or a fixed stratified carve for ``mnist5k`` / ``digits``) so runs with different seeds are scored on the
    same test images. Extra keyword arguments go to the data set (e.g. ``teacher``'s sizes and distribution);
    an unknown one is an error.

    Raises ``ValueError`` for an unknown name or bad argument, :class:`DatasetNotFound` when files are missing.
    """
    key = _canonical(name)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    loader = _REGISTRY[key]
    _check_options(key, loader, kw)
    if key in _NEEDS_ROOT:
        raw = loader(Path(root) if root is not None else default_root(), download=download, **kw)
    else:
        raw = loader(**kw)
    return _finish(key, raw, seed, val_fraction)


def options(name: str) -> dict[str, Any]:
    """The extra keyword options data set ``name`` accepts, with their defaults."""
    key = _canonical(name)
    params = inspect.signature(_REGISTRY[key]).parameters.values()
    return {p.name: p.default for p in params if p.name not in ("root", "download")}


def _check_options(key: str, loader: Loader, kw: dict[str, Any]) -> None:
    allowed = options(key)
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for data set {key!r}; accepted: {accepted}")


# --------------------------------------------------------------------------------------------- splitting
def _val_indices(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train, val) index tensors: a seeded permutation; the validation part keeps the permuted order."""
    n_val = round(n * fraction)
    if fraction > 0 and n - n_val < 1:
        raise ValueError(f"val_fraction={fraction} leaves no training example out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val]


def _stratified_test(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, test) indices taking ``fraction`` of each class, for data sets shipped without a test split."""
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        test.append(rng.permutation(idx)[: round(len(idx) * fraction)])
    test_idx = np.sort(np.concatenate(test))
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def _finish(name: str, raw: _Raw, seed: int, val_fraction: float) -> DataSplits:
    x_all = torch.from_numpy(np.ascontiguousarray(raw.x_train)).to(torch.float32)
    x_test = torch.from_numpy(np.ascontiguousarray(raw.x_test)).to(torch.float32)
    y_dtype = torch.int64 if raw.task == "classification" else torch.float32
    y_all = torch.from_numpy(np.ascontiguousarray(raw.y_train)).to(y_dtype)
    y_test = torch.from_numpy(np.ascontiguousarray(raw.y_test)).to(y_dtype)
    if raw.scale != 1.0:
        x_all, x_test = x_all / raw.scale, x_test / raw.scale

    if raw.stats is not None:
        mean, std = raw.stats
    else:
        # Scalar statistics of the data set's training part (before the validation carve): test never leaks
        # into them, and they do not depend on the split seed, so every seed sees the same test tensors.
        m, s = float(x_all.mean()), float(x_all.std())
        mean, std = (m,), (s if s > 0 else 1.0,)
    tr, va = _val_indices(len(x_all), val_fraction, seed)
    x_train, x_val = x_all[tr], x_all[va]
    x_train, x_val, x_test = (_normalise(t, mean, std) for t in (x_train, x_val, x_test))
    return DataSplits(
        name=name,
        train=Split(x_train, y_all[tr]),
        val=Split(x_val, y_all[va]),
        test=Split(x_test, y_test),
        input_shape=tuple(x_all.shape[1:]),
        num_classes=raw.num_classes,
        task=raw.task,
        mean=tuple(mean),
        std=tuple(std),
        augment=raw.augment,
        extras=raw.extras,
    )


def _normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    if len(mean) == 1:
        return (x - mean[0]) / std[0]
    shape = (1, len(mean)) + (1,) * (x.dim() - 2)  # per channel, channel axis 1
    return (x - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
