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

__version__ = "0.1.0"

__all__ = [
    "gini",
    "hoyer",
    "lq_index",
    "pq_index",
    "pq_index_grid",
    "retained_bound",
    "sap_prune_count",
]
