"""Data sets by name, as in-memory tensors with seeded train / validation / test splits.

Built in (no file, no network): ``mnist5k``, ``digits``, ``mnist1d``, ``teacher``. Read from a folder in
torchvision's on-disk layout: ``mnist``, ``fashionmnist``, ``cifar10``, ``cifar100``, ``svhn``; in its own
official layout: ``tinyimagenet``.
"""

from pqprune.experiment.data import builtin, folders, tinyimagenet  # noqa: F401  (registers the data sets)
from pqprune.experiment.data.builtin import TEACHER_DISTS, Teacher, make_teacher, teacher_rows
from pqprune.experiment.data.folders import read_cifar_batch, read_idx
from pqprune.experiment.data.registry import (
    DEFAULT_ROOT_ENV,
    DatasetNotFound,
    DataSplits,
    Split,
    available,
    default_root,
    get_dataset,
    needs_root,
    options,
)

__all__ = [
    "DEFAULT_ROOT_ENV",
    "TEACHER_DISTS",
    "DataSplits",
    "DatasetNotFound",
    "Split",
    "Teacher",
    "available",
    "default_root",
    "get_dataset",
    "make_teacher",
    "needs_root",
    "options",
    "read_cifar_batch",
    "read_idx",
    "teacher_rows",
]
