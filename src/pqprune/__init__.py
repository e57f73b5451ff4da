"""pqprune: sparsity-informed neural-network pruning (PQ Index, SAP, l_q soft sparsity, probabilistic bounds)."""

from pqprune.sparsity import (
    gini,
    hoyer,
    lq_index,
    pq_index,
    pq_index_grid,
    retained_bound,
    sap_prune_count,
)

from pqprune.masks import MaskSet, load_masks
from pqprune.methods import SAP, LotteryTicket, LqNeuron, OneShot, RandomMatched, RandomPruning
from pqprune.pruner import Pruner

__version__ = "0.1.0"

__all__ = [
    "gini",
    "hoyer",
    "lq_index",
    "pq_index",
    "pq_index_grid",
    "retained_bound",
    "sap_prune_count",
    "Pruner",
    "MaskSet",
    "load_masks",
    "SAP",
    "LotteryTicket",
    "OneShot",
    "RandomPruning",
    "RandomMatched",
    "LqNeuron",
]
