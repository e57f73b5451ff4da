"""Theory: the retained-weight bound (docs/math.md §4), the l_q bound rule (§7) and the probabilistic pruning gap
of random networks (§8), with the Monte-Carlo and teacher studies that check them.
"""

from pqprune.prune.methods.lq import lq_keep_counts
from pqprune.theory.gap_bound import (
    ARCHS,
    DISTS,
    METHODS,
    RandomNetSpec,
    guaranteed_probability,
    hp_gap_bound,
    random_matrix_norm_bound,
)
from pqprune.theory.lq_bounds import (
    LqLayerBound,
    LqNetworkBound,
    linear_chain,
    lq_layer_bound,
    lq_network_bound,
    lq_neuron_bound,
)
from pqprune.theory.moments import (
    ErrorMoment,
    magnitude_moment_normal,
    magnitude_moment_uniform,
    magnitude_threshold,
    random_moment,
)
from pqprune.theory.monte_carlo import (
    MonteCarloResult,
    estimate_gap,
    monte_carlo_gap,
    network_forward,
    sample_network,
    wilson_interval,
)
from pqprune.theory.retained import eta_r, retained_bound_curve, retained_bound_exact

__all__ = [
    "ARCHS",
    "DISTS",
    "METHODS",
    "ErrorMoment",
    "LqLayerBound",
    "LqNetworkBound",
    "MonteCarloResult",
    "RandomNetSpec",
    "estimate_gap",
    "eta_r",
    "guaranteed_probability",
    "hp_gap_bound",
    "linear_chain",
    "lq_keep_counts",
    "lq_layer_bound",
    "lq_network_bound",
    "lq_neuron_bound",
    "magnitude_moment_normal",
    "magnitude_moment_uniform",
    "magnitude_threshold",
    "monte_carlo_gap",
    "network_forward",
    "random_matrix_norm_bound",
    "random_moment",
    "retained_bound_curve",
    "retained_bound_exact",
    "sample_network",
    "wilson_interval",
]
