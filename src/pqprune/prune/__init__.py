"""Prune: masks beside the model, exact-k selection, the pruning methods and the :class:`Pruner` that runs them.

measure → select → method → pruner: a method decides how many weights each unit loses and ranks them
(:mod:`pqprune.prune.methods`), :mod:`pqprune.prune.select` picks exactly that many, :class:`MaskSet` holds and
enforces the masks, and :class:`Pruner` ties them to a model.
"""

from pqprune.prune.masks import MaskSet, load_masks
from pqprune.prune.methods import (
    SAP,
    LotteryTicket,
    LqNeuron,
    Method,
    OneShot,
    Plan,
    RandomMatched,
    RandomPruning,
    UnitRecord,
)
from pqprune.prune.pruner import Pruner
from pqprune.prune.select import select_prune

__all__ = [
    "SAP",
    "LotteryTicket",
    "LqNeuron",
    "MaskSet",
    "Method",
    "OneShot",
    "Plan",
    "Pruner",
    "RandomMatched",
    "RandomPruning",
    "UnitRecord",
    "load_masks",
    "select_prune",
]
