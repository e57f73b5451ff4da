"""Exact error moments of one randomly or magnitude-pruned layer with i.i.d. weights [Qian21], docs/math.md §8."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pqprune.prune.methods.lq import _check_finite_positive


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _check_density(rho: float, name: str = "density") -> None:
    if not (isinstance(rho, (int, float)) and 0 < rho <= 1):
        raise ValueError(f"{name} (keep probability) must be in (0, 1], got {rho!r}")


def _phi(x: float) -> float:
    """Standard normal density φ(x)."""
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _Phi(x: float) -> float:
    """Standard normal distribution function Φ(x)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _norm_sf2(a: float) -> float:
    """``P(|Z| > a) = 2(1 − Φ(a)) = erfc(a/√2)`` for a standard normal Z (accurate in the far tail)."""
    return math.erfc(a / math.sqrt(2.0))


def _norm_isf2(p: float) -> float:
    """The ``a ≥ 0`` with ``P(|Z| > a) = p`` (inverse of :func:`_norm_sf2`), by bisection on erfc."""
    if p >= 1.0:
        return 0.0
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _norm_sf2(mid) > p:
            lo = mid
        else:
            hi = mid
    return hi


def _gauss_trunc_m2(a: float) -> float:
    """``E[Z² 1{|Z| < a}] = (2Φ(a) − 1) − 2aφ(a)`` for Z ~ N(0,1), a ≥ 0 (docs/math.md §8)."""
    if a <= 0:
        return 0.0
    if a == math.inf:
        return 1.0
    return max(0.0, math.erf(a / math.sqrt(2.0)) - 2.0 * a * _phi(a))


# ============================================================================ §8: exact per-layer moments
@dataclass(frozen=True)
class ErrorMoment:
    """Exact moments of the error ``e = (W − W')x`` of one pruned layer (docs/math.md §8)."""

    second_moment: float  # E‖e‖²
    pruned_fraction: float  # expected fraction of weights set to 0
    mean_zero: bool = True  # E e = 0 (true for symmetric weights and for the rescaled random rule)


def _check_layer_args(m: int, x_norm: float) -> None:
    if not (isinstance(m, int) and m >= 1):
        raise ValueError(f"m (output rows) must be an integer >= 1, got {m!r}")
    if not (math.isfinite(x_norm) and x_norm >= 0):
        raise ValueError(f"x_norm must be finite and >= 0, got {x_norm!r}")


def magnitude_moment_uniform(tau: float, K: float = 1.0, m: int = 1, x_norm: float = 1.0) -> ErrorMoment:
    """Magnitude pruning at threshold τ of ``W ~ U[−K, K]`` i.i.d. [Qian21], docs/math.md §8:

        E‖e‖² = m‖x‖² E[W² 1{|W|<τ}] = m‖x‖² τ³/(3K),   pruned fraction τ/K   (τ ≤ K).

    Each ``e_i = Σ_j W_ij 1{|W_ij|<τ} x_j`` is a sum of independent zero-mean terms, so ``E e_i² = ‖x‖² E[W²1{|W|<τ}]``.
    For τ ≥ K everything is pruned (τ is clipped to K). Check: K=1, τ=0.3, ‖x‖=1, m=256 → 2.304.
    """
    _check_layer_args(m, x_norm)
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be finite and >= 0, got {tau!r}")
    _check_finite_positive("K", K)
    t = min(tau, K)
    return ErrorMoment(m * x_norm**2 * t**3 / (3.0 * K), t / K)


def magnitude_moment_normal(tau: float, sigma: float = 1.0, m: int = 1, x_norm: float = 1.0) -> ErrorMoment:
    """Magnitude pruning at threshold τ of ``W ~ N(0, σ²)`` i.i.d. [Qian21], docs/math.md §8, with ``a = τ/σ``:

        E‖e‖² = m‖x‖² σ² [(2Φ(a) − 1) − 2aφ(a)],   pruned fraction 2Φ(a) − 1.

    (``∫_{−τ}^{τ} w² φ_σ(w) dw`` by parts.) Check: σ=1, τ=0.5, ‖x‖=1, m=256 → 7.90.
    """
    _check_layer_args(m, x_norm)
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be finite and >= 0, got {tau!r}")
    _check_finite_positive("sigma", sigma)
    a = tau / sigma
    return ErrorMoment(m * x_norm**2 * sigma**2 * _gauss_trunc_m2(a), math.erf(a / math.sqrt(2.0)))


def random_moment(
    rho: float, second_moment_w: float = 1.0, m: int = 1, x_norm: float = 1.0, rescale: bool = False
) -> ErrorMoment:
    """Random pruning with keep probability ρ (independent Bernoulli mask B) [Qian21], docs/math.md §8:

        W' = W·B:      E‖e‖² = m‖x‖² (1 − ρ) E[W²];
        W' = W·B/ρ:    E‖e‖² = m‖x‖² E[W²] (1 − ρ)/ρ   and  E e = 0 for any W distribution,

    since ``E(1 − B)² = 1 − ρ`` and ``E(1 − B/ρ)² = (1 − ρ)/ρ``. Pruned fraction 1 − ρ. ``second_moment_w`` is
    ``E[W²]`` (σ² for N(0,σ²), K²/3 for U[−K,K]). Check: E[W²]=1, ρ=0.7, m=256 → 76.8 and 109.7.
    """
    _check_layer_args(m, x_norm)
    _check_density(rho, "rho")
    if not (math.isfinite(second_moment_w) and second_moment_w >= 0):
        raise ValueError(f"second_moment_w must be finite and >= 0, got {second_moment_w!r}")
    factor = (1.0 - rho) / rho if rescale else 1.0 - rho
    return ErrorMoment(m * x_norm**2 * second_moment_w * factor, 1.0 - rho)


def magnitude_threshold(density: float, dist: str = "normal", scale: float = 1.0) -> float:
    """Threshold τ with ``P(|W| ≥ τ) = density``: ``σ·Φ^{−1}(1 − ρ/2)`` for N(0,σ²), ``K(1 − ρ)`` for U[−K,K]."""
    _check_density(density)
    _check_finite_positive("scale", scale)
    if dist == "normal":
        return scale * _norm_isf2(density)
    if dist == "uniform":
        return scale * (1.0 - density)
    raise ValueError(f"dist must be 'normal' or 'uniform', got {dist!r}")
