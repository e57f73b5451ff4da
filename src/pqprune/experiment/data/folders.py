"""Data sets read from a folder in torchvision's on-disk layout: ``mnist``, ``fashionmnist``, ``cifar10``,
``cifar100``, ``svhn``. torchvision itself is not required: the idx, CIFAR-pickle and SVHN ``.mat`` formats are
read here (CIFAR pickles through a restricted unpickler that only admits numpy's array reconstruction). Only
``download=True`` needs torchvision.
"""

from __future__ import annotations

import gzip
import importlib
import io
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pqprune.experiment.data.registry import PAPER_STATS, DatasetNotFound, _Raw, _register
from pqprune.files import FileFormatError


# --------------------------------------------------------------------------------------------- file formats
def _open_maybe_gz(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise FileFormatError(f"cannot read {path}: {exc}") from exc


_IDX_DTYPES: dict[int, type | str] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format, optionally gzipped) into a numpy array."""
    path = Path(path)
    data = _open_maybe_gz(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise FileFormatError(f"{path} is not an idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FileFormatError(f"{path} is truncated (idx header)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise FileFormatError(f"{path} has {len(data)} bytes, expected {expected} for shape {dims}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _np_global(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles written by either name must resolve to the same object.
    for mod in (module, module.replace("numpy.core", "numpy._core"), module.replace("numpy._core", "numpy.core")):
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"{module}.{name} not found")


_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol-2 pickles of bytes; pure data conversion
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Only rebuilds numpy arrays, dicts, lists, strings and numbers: a CIFAR batch needs nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        if module == "_codecs":
            import codecs

            return codecs.encode
        return _np_global(module, name)


def read_cifar_batch(path: str | os.PathLike) -> dict[str, Any]:
    """Read one CIFAR python batch (a pickled dict) with the restricted unpickler; keys become ``str``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except OSError as exc:
        raise FileFormatError(f"cannot read {path}: {exc}") from exc
    except Exception as exc:  # any unpickling failure means the file is not a CIFAR batch
        raise FileFormatError(f"{path} is not a CIFAR python batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise FileFormatError(f"{path} is not a CIFAR python batch (got {type(obj).__name__})")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = read_cifar_batch(path)
    if "data" not in batch or label_key not in batch:
        raise FileFormatError(f"{path} lacks 'data' or {label_key!r}")
    x = np.asarray(batch["data"], dtype=np.uint8)
    y = np.asarray(batch[label_key], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
        raise FileFormatError(f"{path}: data of shape {x.shape} with {len(y)} labels, expected (N, 3072) and N labels")
    return x.reshape(-1, 3, 32, 32), y


# --------------------------------------------------------------------------------------------- torchvision sets
_HOW_TO_GET = {
    "mnist": "torchvision.datasets.MNIST(root, download=True), "
    "or the four idx files from http://yann.lecun.com/exdb/mnist/",
    "fashionmnist": "torchvision.datasets.FashionMNIST(root, download=True), "
    "or the four idx files from https://github.com/zalandoresearch/fashion-mnist",
    "cifar10": "torchvision.datasets.CIFAR10(root, download=True), "
    "or extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into root",
    "cifar100": "torchvision.datasets.CIFAR100(root, download=True), "
    "or extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into root",
    "svhn": "torchvision.datasets.SVHN(root, split=..., download=True), "
    "or train_32x32.mat and test_32x32.mat from http://ufldl.stanford.edu/housenumbers/",
}


def _not_found(name: str, root: Path, missing: Sequence[str]) -> DatasetNotFound:
    where = ", ".join(missing)
    return DatasetNotFound(
        f"data set {name!r} not found under --data-root {str(root.resolve())!r}: missing {where}; "
        f"rerun with --download where a network exists, or get it with {_HOW_TO_GET[name]}"
    )


def _torchvision_download(name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd  # optional: only for download=True
    except Exception as exc:  # ImportError, or a broken build failing at import (the case on CPU-only torch)
        raise DatasetNotFound(
            f"download of {name!r} needs torchvision, which cannot be imported here ({type(exc).__name__}: {exc}); "
            f"get the files on another machine with {_HOW_TO_GET[name]} and copy them under {str(root.resolve())!r}"
        ) from exc
    root.mkdir(parents=True, exist_ok=True)
    if name == "svhn":
        for split in ("train", "test"):
            tvd.SVHN(str(root), split=split, download=True)
        return
    cls = {"mnist": tvd.MNIST, "fashionmnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _load_idx_set(name: str, subdir: str, root: Path, download: bool) -> _Raw:
    folder = root / subdir / "raw"
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    paths = [_find_idx(folder, s) for s in stems]
    if download and any(p is None for p in paths):
        _torchvision_download(name, root)
        paths = [_find_idx(folder, s) for s in stems]
    missing = [str((folder / s).resolve()) + "[.gz]" for s, p in zip(stems, paths) if p is None]
    if missing:
        raise _not_found(name, root, missing)
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)  # type: ignore[arg-type]
    for x, y, p in ((xtr, ytr, paths[0]), (xte, yte, paths[2])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise FileFormatError(f"{p}: images of shape {x.shape} do not match {len(y)} labels")
    return _Raw(
        xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64), 10, scale=255.0, stats=PAPER_STATS[name]
    )


@_register("mnist", needs_root=True)
def _load_mnist(root: Path, download: bool = False) -> _Raw:
    return _load_idx_set("mnist", "MNIST", root, download)


@_register("fashionmnist", needs_root=True)
def _load_fashionmnist(root: Path, download: bool = False) -> _Raw:
    return _load_idx_set("fashionmnist", "FashionMNIST", root, download)


def _load_cifar(
    name: str,
    root: Path,
    download: bool,
    folder: str,
    train_files: Sequence[str],
    test_file: str,
    label_key: str,
    classes: int,
) -> _Raw:
    base = root / folder
    files = [base / f for f in (*train_files, test_file)]
    if download and not all(f.is_file() for f in files):
        _torchvision_download(name, root)
    missing = [str(f.resolve()) for f in files if not f.is_file()]
    if missing:
        raise _not_found(name, root, missing)
    parts = [_cifar_arrays(f, label_key) for f in files]
    xtr = np.concatenate([p[0] for p in parts[:-1]])
    ytr = np.concatenate([p[1] for p in parts[:-1]])
    return _Raw(
        xtr, ytr, parts[-1][0], parts[-1][1], classes, scale=255.0, stats=PAPER_STATS[name], augment="crop_flip"
    )


@_register("cifar10", needs_root=True)
def _load_cifar10(root: Path, download: bool = False) -> _Raw:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _load_cifar("cifar10", root, download, "cifar-10-batches-py", train, "test_batch", "labels", 10)


@_register("cifar100", needs_root=True)
def _load_cifar100(root: Path, download: bool = False) -> _Raw:
    return _load_cifar("cifar100", root, download, "cifar-100-python", ["train"], "test", "fine_labels", 100)


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a corrupt file
        raise FileFormatError(f"{path} is not a readable SVHN .mat file: {exc}") from exc
    if "X" not in mat or "y" not in mat:
        raise FileFormatError(f"{path} lacks the 'X' or 'y' variable")
    x = np.transpose(np.asarray(mat["X"], dtype=np.uint8), (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    if len(y) != len(x):
        raise FileFormatError(f"{path}: {len(x)} images but {len(y)} labels")
    y = np.where(y == 10, 0, y)  # SVHN stores digit 0 as label 10
    return x, y


@_register("svhn", needs_root=True)
def _load_svhn(root: Path, download: bool = False) -> _Raw:
    files = [root / "train_32x32.mat", root / "test_32x32.mat"]
    if download and not all(f.is_file() for f in files):
        _torchvision_download("svhn", root)
    missing = [str(f.resolve()) for f in files if not f.is_file()]
    if missing:
        raise _not_found("svhn", root, missing)
    (xtr, ytr), (xte, yte) = (_read_svhn(f) for f in files)
    return _Raw(xtr, ytr, xte, yte, 10, scale=255.0, stats=PAPER_STATS["svhn"])
