"""Measure: how compressible weights are — PQ Index, Gini, Hoyer, l_q index — at global, layer or neuron scope.

Pure tensor maths over the surviving weights (docs/math.md §1–§5); nothing here knows of pruning policies,
training or data.
"""

from pqprune.measure.gini_index import gini, gini_layers_and_global
from pqprune.measure.indices import (
    check_lq,
    check_pq,
    hoyer,
    lq_index,
    pq_index,
    pq_index_grid,
    retained_bound,
    sap_prune_count,
)
from pqprune.measure.sums import RowStats, UnitStats, power_sums, power_sums_of, reduce_scope
from pqprune.measure.weights import (
    GLOBAL,
    SCOPES,
    Scope,
    as_rows,
    check_mask,
    check_masks,
    check_scope,
    match_masks,
    named_weights,
    prunable_weights,
)

__all__ = [
    "GLOBAL",
    "SCOPES",
    "RowStats",
    "Scope",
    "UnitStats",
    "as_rows",
    "check_lq",
    "check_mask",
    "check_masks",
    "check_pq",
    "check_scope",
    "gini",
    "gini_layers_and_global",
    "hoyer",
    "lq_index",
    "match_masks",
    "named_weights",
    "power_sums",
    "power_sums_of",
    "pq_index",
    "pq_index_grid",
    "prunable_weights",
    "reduce_scope",
    "retained_bound",
    "sap_prune_count",
]
