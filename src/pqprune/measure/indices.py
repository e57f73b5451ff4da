"""Sparsity measures of weights from power sums: PQ Index, Hoyer, the l_q soft-sparsity index, and SAP's arithmetic
(the Gini index, which needs sorted weights, is in :mod:`pqprune.measure.gini`).

Pure tensor maths; nothing here knows of training, data or pruning policies. Formulas: docs/math.md §2–§5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import overload

import torch
from torch import Tensor

from pqprune.measure.sums import UnitStats, power_sums, reduce_scope
from pqprune.measure.weights import Masks, Result, Scope, WeightSource, check_scope


# --------------------------------------------------------------------------------------------- parameters
def check_pq(p: float, q: float) -> None:
    """PQ Index needs ``0 < p < q`` [Diao23, Definition 1]."""
    if not (math.isfinite(p) and math.isfinite(q)):
        raise ValueError(f"p and q must be finite, got p={p}, q={q}")
    if p <= 0:
        raise ValueError(f"p must be > 0, got p={p}")
    if p >= q:
        raise ValueError(f"the PQ Index needs p < q, got p={p}, q={q}")


# --------------------------------------------------------------------------------------------- formulas
def _power_mean(count: Tensor, s_sum: Tensor, s: float) -> Tensor:
    """``M_s = (S_s / d)^{1/s}``: a mean of ``|w_i|^s`` taken back to the scale of ``|w|`` (at most ``max|w|``, so
    it cannot overflow); ``0/0`` gives NaN for a unit without survivors."""
    return (s_sum / count) ** (1.0 / s)


def pq_from_sums(count: Tensor, sum_p: Tensor, sum_q: Tensor, p: float, q: float) -> Tensor:
    """PQ Index from power sums [Diao23, Definition 1].

    ``I_{p,q}(w) = 1 − d^{1/q−1/p} ‖w‖_p / ‖w‖_q = 1 − M_p / M_q`` with power means
    ``M_s = (Σ|w_i|^s / d)^{1/s}``. NaN where the unit is empty or all its survivors are zero (both means are
    then ``0/0`` or ``0``, and ``0/0`` is NaN).
    """
    check_pq(p, q)
    ratio = _power_mean(count, sum_p, p) / _power_mean(count, sum_q, q)
    # M_p ≤ M_q always (power-mean inequality); a ratio above 1 is float32 rounding of the block sums (~1e-7),
    # and a negative index would only confuse reports, so it is clipped to 0 (clamp keeps NaN).
    return 1.0 - ratio.clamp(max=1.0)


def hoyer_from_sums(count: Tensor, sum_1: Tensor, sum_2: Tensor) -> Tensor:
    """Hoyer sparsity ``(√d − ‖w‖₁/‖w‖₂) / (√d − 1)`` [Hoyer 2004]; ``I_{1,2} = (1 − 1/√d)·Hoyer``.

    NaN for degenerate units and for ``d = 1`` (the denominator vanishes).
    """
    sqrt_d = torch.sqrt(count)
    out = (sqrt_d - sum_1 / torch.sqrt(sum_2)) / (sqrt_d - 1.0)
    degenerate = (count <= 1) | (sum_2 <= 0)
    return torch.where(degenerate, torch.full_like(out, math.nan), out)


def lq_from_sums(count: Tensor, sum_q: Tensor, sum_1: Tensor, q: float) -> Tensor:
    """l_q soft-sparsity index ``SI_q(w) = d^{1/q−1} ‖w‖₁/‖w‖_q = 1/(1 − I_{q,1}(w))`` for 0 < q < 1 [Yang22].

    Range ``[1, d^{1/q−1}]``; 1 iff all survivors have equal magnitude.
    """
    check_lq(q)
    return 1.0 / (1.0 - pq_from_sums(count, sum_q, sum_1, q, 1.0))


def check_lq(q: float) -> None:
    if not (0 < q < 1):
        raise ValueError(f"the l_q index needs 0 < q < 1, got q={q}")


# --------------------------------------------------------------------------------------------- public API
def _shape(units: UnitStats, values: Tensor, scope: Scope) -> Result:
    """Public return convention for per-row ``values`` of ``units``: float (global), name → float (layer),
    name → 1-D tensor of its own (neuron)."""
    if scope == "global":
        return float(values[0])
    if scope == "layer":
        return dict(zip(units.names, values.tolist()))
    return {n: v.clone() for n, v in units.split(values).items()}


def pq_index_grid(
    obj: WeightSource,
    pairs: Sequence[tuple[float, float]],
    scope: Scope = "global",
    masks: Masks | None = None,
) -> dict[tuple[float, float], Result]:
    """PQ Index for many ``(p, q)`` pairs from a single read of the weights.

    Returns ``{(p, q): result}`` where each result follows :func:`pq_index`'s convention.
    """
    pairs = [(float(p), float(q)) for p, q in pairs]
    for p, q in pairs:
        check_pq(p, q)
    check_scope(scope)
    units = reduce_scope(power_sums(obj, {e for pq in pairs for e in pq}, masks), scope)
    u = units.joined
    return {(p, q): _shape(units, pq_from_sums(u.count, u.sums[p], u.sums[q], p, q), scope) for p, q in pairs}


def pq_index(
    obj: WeightSource, p: float = 0.5, q: float = 1.0, scope: Scope = "global", masks: Masks | None = None
) -> Result:
    """PQ Index of the surviving weights [Diao23, Definition 1 and Theorem 1].

    ``I_{p,q}(w) = 1 − d^{1/q−1/p}·‖w‖_p/‖w‖_q`` for ``0 < p < q``, ``d`` = number of survivors. It lies in
    ``[0, 1 − d^{1/q−1/p}]``: 0 iff all magnitudes are equal, the maximum iff ``w`` is 1-sparse; larger means
    sparser (more compressible).

    Args:
        obj: a tensor, an ``nn.Module`` or a state dict (name → tensor).
        p, q: the exponents, ``0 < p < q``; ``(0.5, 1.0)`` by default, ``(1.0, 2.0)`` is the paper's other pair.
        scope: ``"global"`` → float; ``"layer"`` → ``{name: float}``; ``"neuron"`` → ``{name: 1-D tensor}``.
        masks: name → bool tensor, True where the entry survives; unnamed tensors are fully alive.

    Degenerate units (no survivors, or all survivors zero) give NaN. NaN/Inf weights raise ``ValueError``.
    """
    return pq_index_grid(obj, [(p, q)], scope, masks)[(float(p), float(q))]


def hoyer(obj: WeightSource, scope: Scope = "global", masks: Masks | None = None) -> Result:
    """Hoyer sparsity of the surviving weights: ``(√d − ‖w‖₁/‖w‖₂)/(√d − 1)`` [Hoyer 2004]."""
    units = reduce_scope(power_sums(obj, (1.0, 2.0), masks), scope)
    u = units.joined
    return _shape(units, hoyer_from_sums(u.count, u.sums[1.0], u.sums[2.0]), scope)


def lq_index(obj: WeightSource, q: float, scope: Scope = "global", masks: Masks | None = None) -> Result:
    """l_q soft-sparsity index ``SI_q = d^{1/q−1}‖w‖₁/‖w‖_q = 1/(1 − I_{q,1})``, 0 < q < 1 [Yang22]."""
    check_lq(q)
    units = reduce_scope(power_sums(obj, (q, 1.0), masks), scope)
    u = units.joined
    return _shape(units, lq_from_sums(u.count, u.sums[q], u.sums[1.0], q), scope)


# --------------------------------------------------------------------------------------------- SAP arithmetic
# Relative tolerance of SAP's ceil: larger than the ~1e-7 relative error of float32-based power sums.
_TIE_RTOL = 1e-6


def _as_float_tensor(x: float | Tensor) -> Tensor:
    return x.to(torch.float64) if isinstance(x, Tensor) else torch.tensor(float(x), dtype=torch.float64)


def retained_bound(index: float | Tensor, d: float | Tensor, p: float, q: float, eta: float = 0.0) -> float | Tensor:
    """Lower bound on the number ``r`` of retained weights [Diao23, Theorem 2].

    If the ``r`` largest magnitudes ``M_r`` satisfy ``Σ_{i∉M_r}|w_i|^p ≤ η_r Σ_{i∈M_r}|w_i|^p``, then

        r ≥ d · (1 + η_r)^{−q/(q−p)} · (1 − I_{p,q}(w))^{qp/(q−p)}.

    Tight for an equal-magnitude k-sparse vector at ``r = k``, ``η_r = 0``. Returns a float for float inputs.
    """
    check_pq(p, q)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    i, dd = _as_float_tensor(index), _as_float_tensor(d)
    out = dd * (1.0 + eta) ** (-q / (q - p)) * (1.0 - i) ** (q * p / (q - p))
    return out if isinstance(index, Tensor) or isinstance(d, Tensor) else float(out)


@overload
def sap_prune_count(
    index: Tensor, d: int | Tensor, p: float, q: float, eta: float = ..., gamma: float = ..., beta: float = ...
) -> Tensor: ...
@overload
def sap_prune_count(
    index: float | Tensor, d: Tensor, p: float, q: float, eta: float = ..., gamma: float = ..., beta: float = ...
) -> Tensor: ...
@overload
def sap_prune_count(
    index: float, d: int, p: float, q: float, eta: float = ..., gamma: float = ..., beta: float = ...
) -> int: ...
def sap_prune_count(
    index: float | Tensor,
    d: int | Tensor,
    p: float,
    q: float,
    eta: float = 0.0,
    gamma: float = 1.0,
    beta: float = 0.9,
) -> int | Tensor:
    """How many survivors SAP prunes from a unit this round [Diao23, Algorithm 1], docs/math.md §5.

        r = ceil(d · (1+η)^{q/(p−q)} · (1 − I)^{qp/(q−p)})
        c = floor(d · clamp(γ·(1 − r/d), 0, β))

    ``r`` carries a tolerance (``ceil(x − 1e−9 − 1e−6·x)``, relative because the index of float32 weights is
    accurate to ~1e-7 relative) so that an equal-magnitude k-sparse unit gives ``r = k``; ``c`` likewise
    (``floor(x + 1e−9 + 1e−12·x)``) so that ``β·d`` does not lose a weight to rounding. A NaN index (a
    degenerate unit) prunes nothing. Returns an int for scalar inputs, an int64 tensor otherwise.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not (0 < beta <= 1):
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    dd = _as_float_tensor(d)
    bound = _as_float_tensor(retained_bound(_as_float_tensor(index), dd, p, q, eta))
    # The tolerance is relative: power sums of float32 weights carry ~1e-7 relative error, so d·(1−I) of an
    # equal-magnitude k-sparse unit lands within ~1e-7·k of k, on either side; ceil(x − 1e−9) would give k+1.
    r = torch.ceil(bound - (1e-9 + _TIE_RTOL * bound.abs())).clamp(min=0)
    r = torch.minimum(r, dd)
    c_real = torch.minimum(gamma * (dd - r), beta * dd).clamp(min=0.0)
    c = torch.floor(c_real + (1e-9 + 1e-12 * c_real)).to(torch.int64)
    c = torch.where(torch.isnan(bound) | (dd <= 0), torch.zeros_like(c), c)
    if isinstance(index, Tensor) or isinstance(d, Tensor):
        return c
    return int(c)
