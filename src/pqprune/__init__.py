"""pqprune: sparsity-informed neural-network pruning (PQ Index, SAP, l_q soft sparsity, probabilistic bounds).

The layers, each a subpackage, import only downwards::

    measure → prune → store → experiment → theory, export → checkpoint → report → cli

The names below are the public API; the subpackages (``pqprune.export``, ``pqprune.theory``, …) are loaded on
first use, so ``import pqprune`` stays light and ``pqprune.export.load_sparse`` works after it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pqprune.measure import gini, hoyer, lq_index, pq_index, pq_index_grid, retained_bound, sap_prune_count
from pqprune.prune import (
    SAP,
    LotteryTicket,
    LqNeuron,
    MaskSet,
    OneShot,
    Pruner,
    RandomMatched,
    RandomPruning,
    load_masks,
)

__version__ = "0.2.0"

_SUBPACKAGES = frozenset(
    {"measure", "prune", "store", "experiment", "theory", "export", "checkpoint", "report", "cli", "files"}
)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"pqprune.{name}")
    raise AttributeError(f"module 'pqprune' has no attribute {name!r}")


__all__ = [
    "SAP",
    "LotteryTicket",
    "LqNeuron",
    "MaskSet",
    "OneShot",
    "Pruner",
    "RandomMatched",
    "RandomPruning",
    "gini",
    "hoyer",
    "load_masks",
    "lq_index",
    "pq_index",
    "pq_index_grid",
    "retained_bound",
    "sap_prune_count",
]
