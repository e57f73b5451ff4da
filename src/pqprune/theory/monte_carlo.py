"""Monte-Carlo estimate of the pruning gap of random networks [Qian21], docs/math.md §8: draws, gap estimated as the
largest change over unit-sphere inputs and projected-gradient ascents, ``p̂ = P(gap ≤ ε)`` with a Wilson interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pqprune.prune.methods.lq import _check_finite_positive
from pqprune.theory.gap_bound import RandomNetSpec, guaranteed_probability
from pqprune.theory.moments import magnitude_threshold

# ============================================================================ shared helpers
Z95 = 1.959963984540054
"""Two-sided 95% standard-normal quantile (Wilson intervals)."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion [Wilson 1927]:

    (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n).
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p̂ = 0 (or 1) the lower (upper) limit is exactly 0 (1); floating point leaves ~1e-17 otherwise.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


# ============================================================================ §8: Monte-Carlo estimator
def sample_network(
    spec: RandomNetSpec, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> tuple[list[Tensor], list[Tensor]]:
    """One draw of the target weights and of their pruned version, as :class:`RandomNetSpec` describes."""
    dense, pruned = [], []
    for shape, s in zip(spec.weight_shapes(), spec.scales()):
        if spec.dist == "normal":
            w = torch.randn(shape, generator=generator, dtype=dtype) * s
        else:
            K = math.sqrt(3.0) * s
            w = (torch.rand(shape, generator=generator, dtype=dtype) * 2.0 - 1.0) * K
        if spec.method == "random":
            keep = torch.rand(shape, generator=generator, dtype=dtype) < spec.density
        else:
            keep = w.abs() >= magnitude_threshold(
                spec.density, spec.dist, s if spec.dist == "normal" else math.sqrt(3.0) * s
            )
        dense.append(w)
        pruned.append(w * keep)
    return dense, pruned


def network_forward(spec: RandomNetSpec, weights: Sequence[Tensor], x: Tensor) -> Tensor:
    """``F(x)`` for a batch ``x`` of shape ``(batch, input_size)`` (ReLU between layers, none after the last)."""
    if spec.arch == "fcn":
        h = x
        for k, w in enumerate(weights):
            h = h @ w.T
            if k < len(weights) - 1:
                h = torch.relu(h)
        return h
    h = x.reshape(x.shape[0], *spec.image)
    for w in weights[:-1]:
        h = torch.relu(torch.nn.functional.conv2d(h, w, padding=1))
    return h.reshape(h.shape[0], -1) @ weights[-1].T


def _unit_rows(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)


def estimate_gap(
    spec: RandomNetSpec,
    dense: Sequence[Tensor],
    pruned: Sequence[Tensor],
    generator: torch.Generator,
    n_inputs: int = 256,
    restarts: int = 4,
    steps: int = 40,
) -> float:
    """Estimate ``sup_{‖x‖≤1}‖F(x) − F'(x)‖``: max over ``n_inputs`` uniform unit-sphere inputs, then projected
    gradient ascent on the sphere from the ``restarts`` best of them and ``restarts`` fresh random points.

    Both networks are positively homogeneous (ReLU, no bias), so the sup over the ball is attained on the sphere.
    The estimate is a *lower* estimate of the true sup (so ``P(gap_est ≤ ε) ≥ P(gap ≤ ε)``).
    """
    dtype = dense[0].dtype
    x = _unit_rows(torch.randn(n_inputs, spec.input_size, generator=generator, dtype=dtype))
    with torch.no_grad():
        g = (network_forward(spec, dense, x) - network_forward(spec, pruned, x)).norm(dim=1)
    best = float(g.max())
    if restarts <= 0 or steps <= 0:
        return best
    top = x[torch.topk(g, min(restarts, n_inputs)).indices]
    fresh = _unit_rows(torch.randn(restarts, spec.input_size, generator=generator, dtype=dtype))
    z = torch.cat([top, fresh]).clone()
    lr = 0.5
    for _ in range(steps):
        z.requires_grad_(True)
        gap = (network_forward(spec, dense, z) - network_forward(spec, pruned, z)).norm(dim=1)
        best = max(best, float(gap.detach().max()))
        (grad,) = torch.autograd.grad(gap.sum(), z)
        with torch.no_grad():
            z = _unit_rows(z + lr * _unit_rows(grad + 1e-300))
        lr *= 0.93
    with torch.no_grad():
        gap = (network_forward(spec, dense, z) - network_forward(spec, pruned, z)).norm(dim=1)
    return max(best, float(gap.max()))


@dataclass
class MonteCarloResult:
    """Result of :func:`monte_carlo_gap`."""

    spec: RandomNetSpec
    eps: float
    n_draws: int
    successes: int  # draws with gap ≤ ε
    p_hat: float  # successes / n_draws
    low: float  # Wilson 95% interval
    high: float
    gaps: Tensor  # float64 [n_draws], estimated sup-gaps
    guaranteed: float  # guaranteed_probability(spec, eps): the bound's lower bound on P(gap ≤ ε)
    seed: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            **{f"spec_{k}": v for k, v in self.spec.__dict__.items()},
            "eps": self.eps,
            "n_draws": self.n_draws,
            "successes": self.successes,
            "p_hat": self.p_hat,
            "low": self.low,
            "high": self.high,
            "guaranteed": self.guaranteed,
            "gap_mean": float(self.gaps.mean()),
            "gap_max": float(self.gaps.max()),
            "seed": self.seed,
        }


def monte_carlo_gap(
    spec: RandomNetSpec,
    eps: float,
    n_draws: int = 100,
    n_inputs: int = 256,
    restarts: int = 4,
    steps: int = 40,
    seed: int = 0,
) -> MonteCarloResult:
    """Monte-Carlo estimate of ``P(sup_{‖x‖≤1}‖F(x) − F'(x)‖ ≤ ε)`` [Qian21], docs/math.md §8.

    ``n_draws`` independent (network, pruning) draws from ``spec`` (seeded by ``seed``; the same seed gives the
    same numbers); each gap by :func:`estimate_gap`; ``p̂ = #{gap ≤ ε}/N`` with its Wilson 95% interval, beside
    the probability :func:`guaranteed_probability` guarantees (which must not exceed the interval's top).
    """
    _check_finite_positive("eps", eps)
    if not (isinstance(n_draws, int) and n_draws >= 1):
        raise ValueError(f"n_draws must be an integer >= 1, got {n_draws!r}")
    if not (isinstance(n_inputs, int) and n_inputs >= 1):
        raise ValueError(f"n_inputs must be an integer >= 1, got {n_inputs!r}")
    gen = torch.Generator().manual_seed(seed)
    gaps = torch.empty(n_draws, dtype=torch.float64)
    for i in range(n_draws):
        dense, pruned = sample_network(spec, gen)
        gaps[i] = estimate_gap(spec, dense, pruned, gen, n_inputs=n_inputs, restarts=restarts, steps=steps)
    k = int((gaps <= eps).sum())
    low, high = wilson_interval(k, n_draws)
    return MonteCarloResult(
        spec, float(eps), n_draws, k, k / n_draws, low, high, gaps, guaranteed_probability(spec, eps), seed
    )
