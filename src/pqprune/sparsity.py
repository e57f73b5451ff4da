"""Sparsity measures of weights: PQ Index, Gini, Hoyer and the l_q soft-sparsity index.

Pure tensor maths; nothing here knows of training, data or pruning policies.

Every measure is computed over the *surviving* entries of a unit (``masks`` mark survivors with True), at one
of three scopes (math.md §1):

* ``global``: all prunable entries of the model, concatenated;
* ``layer``: one prunable tensor;
* ``neuron``: one output unit, i.e. one row of ``W.reshape(out_features, -1)``.

The PQ Index, Hoyer and l_q index are functions of power sums ``S_s = Σ|w_i|^s``. Per-row power sums are a
sufficient statistic for all three scopes, so :func:`power_sums` reads the weights once, whatever the set of
exponents, and :func:`reduce_scope` sums rows into layers or the whole model. Sums are accumulated in float64:
float32 norms over very large vectors are badly wrong on CPU (design.md, Numerics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import Tensor, nn

Scope = Literal["global", "layer", "neuron"]
SCOPES: tuple[str, ...] = ("global", "layer", "neuron")
GLOBAL = "global"
"""Name of the single unit at global scope."""

WeightSource = Union[Tensor, nn.Module, Mapping[str, Tensor]]
Masks = Mapping[str, Tensor]
Result = Union[float, dict[str, float], dict[str, Tensor]]

# Elements handled at once by the one-pass kernel; small enough to stay in cache, large enough to amortise
# Python overhead.
_CHUNK = 1 << 20
# Module types whose 2-D+ "weight" is not a connection matrix: never pruned by default (math.md §1).
_NOT_PRUNABLE = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)


# --------------------------------------------------------------------------------------------- discovery
def prunable_weights(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters pqprune prunes by default: those named ``*weight`` with ``dim() > 1``.

    This covers ``nn.Linear``, ``nn.Conv{1,2,3}d`` and attention projections (``in_proj_weight``); weights of
    embeddings and normalisation layers are left out (math.md §1).
    """
    found: dict[str, nn.Parameter] = {}
    for mod_name, mod in module.named_modules():
        if isinstance(mod, _NOT_PRUNABLE):
            continue
        for p_name, param in mod.named_parameters(recurse=False):
            if p_name.endswith("weight") and param.dim() > 1:
                found[f"{mod_name}.{p_name}" if mod_name else p_name] = param
    return found


def is_prunable_entry(name: str, tensor: Tensor) -> bool:
    """Rule for state dicts, where module types are unknown: floating ``*weight`` tensors with ``dim() > 1``."""
    return name.endswith("weight") and tensor.dim() > 1 and tensor.is_floating_point()


def named_weights(obj: WeightSource) -> dict[str, Tensor]:
    """Name → tensor for a tensor (named ``"tensor"``), a module or a state dict."""
    if isinstance(obj, Tensor):
        return {"tensor": obj.detach()}
    if isinstance(obj, nn.Module):
        found = {n: p.detach() for n, p in prunable_weights(obj).items()}
    elif isinstance(obj, Mapping):
        found = {}
        for name, t in obj.items():
            if not isinstance(t, Tensor):
                raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
            if is_prunable_entry(name, t):
                found[name] = t.detach()
    else:
        raise TypeError(f"expected a tensor, an nn.Module or a state dict, got {type(obj).__name__}")
    if not found:
        raise ValueError("no prunable weights found (floating tensors named '*weight' with dim() > 1)")
    return found


def as_rows(w: Tensor) -> Tensor:
    """View a weight as ``(out_units, fan_in)``: a conv filter is flattened over ``in_channels × kernel``."""
    return w.reshape(1, -1) if w.dim() <= 1 else w.reshape(w.shape[0], -1)


def check_masks(weights: Mapping[str, Tensor], masks: Masks | None) -> dict[str, Tensor | None]:
    """Match masks to weights by name; a mask for an unknown name or of the wrong shape is an error."""
    masks = dict(masks or {})
    unknown = sorted(set(masks) - set(weights))
    if unknown:
        raise ValueError(f"masks name tensors that are not prunable weights here: {unknown}")
    out: dict[str, Tensor | None] = {}
    for name, w in weights.items():
        m = masks.get(name)
        if m is not None:
            if m.shape != w.shape:
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(m.shape)}, the weight has {tuple(w.shape)}"
                )
            if m.dtype != torch.bool:
                raise ValueError(f"mask for {name!r} must be a bool tensor, got {m.dtype}")
        out[name] = m
    return out


# --------------------------------------------------------------------------------------------- parameters
def check_pq(p: float, q: float) -> None:
    """PQ Index needs ``0 < p < q`` [Diao23, Definition 1]."""
    if not (math.isfinite(p) and math.isfinite(q)):
        raise ValueError(f"p and q must be finite, got p={p}, q={q}")
    if p <= 0:
        raise ValueError(f"p must be > 0, got p={p}")
    if p >= q:
        raise ValueError(f"the PQ Index needs p < q, got p={p}, q={q}")


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


# --------------------------------------------------------------------------------------------- one pass
@dataclass
class RowStats:
    """Per-row statistics of one tensor: survivor counts and float64 power sums ``Σ|w|^s`` for each s."""

    count: Tensor  # float64 [rows]
    sums: dict[float, Tensor]  # exponent -> float64 [rows]

    def total(self) -> "RowStats":
        """The same statistics with all rows summed into one."""
        return RowStats(self.count.sum().reshape(1), {s: v.sum().reshape(1) for s, v in self.sums.items()})


def _abs_power(a: Tensor, s: float) -> Tensor:
    # sqrt/identity/square are several times faster than a general pow and exact to the same rounding.
    if s == 1.0:
        return a
    if s == 0.5:
        return a.sqrt()
    if s == 2.0:
        return a.square()
    return a.pow(s)


def row_power_sums(w: Tensor, exponents: Iterable[float], mask: Tensor | None = None, name: str = "tensor") -> RowStats:
    """Per-row ``Σ|w_i|^s`` over survivors, in one read of ``w``.

    Powers are taken in the weight's precision (float32 at least; float16/bfloat16 are widened) and summed
    into float64, chunk by chunk, so a 100M-entry tensor is as accurate as a float64 computation to ~1e-7
    relative error. Raises ``ValueError`` naming the tensor if a surviving entry is NaN or infinite.
    """
    exps = sorted({float(s) for s in exponents})
    for s in exps:
        if not s > 0:
            raise ValueError(f"power-sum exponents must be > 0, got {s}")
    rows = as_rows(w)
    mrows = as_rows(mask) if mask is not None else None
    n_rows, n_cols = rows.shape
    compute = torch.float64 if rows.dtype == torch.float64 else torch.float32
    sums = {s: torch.zeros(n_rows, dtype=torch.float64, device=w.device) for s in exps}
    if mrows is None:
        count = torch.full((n_rows,), float(n_cols), dtype=torch.float64, device=w.device)
    else:
        count = mrows.sum(dim=1, dtype=torch.float64)
    # Blocks of whole rows, or column slices of one row when a single row is larger than a chunk.
    row_step = max(1, _CHUNK // max(n_cols, 1))
    col_step = n_cols if n_cols <= _CHUNK else _CHUNK
    for r0 in range(0, n_rows, row_step):
        r1 = min(n_rows, r0 + row_step)
        for c0 in range(0, n_cols, col_step):
            c1 = min(n_cols, c0 + col_step)
            a = rows[r0:r1, c0:c1].to(compute).abs()
            if mrows is not None:
                a = torch.where(mrows[r0:r1, c0:c1], a, torch.zeros((), dtype=compute, device=a.device))
            for s in exps:
                sums[s][r0:r1] += _abs_power(a, s).sum(dim=1, dtype=torch.float64)
    bad = [s for s in exps if not bool(torch.isfinite(sums[s]).all())]
    if bad:
        raise ValueError(f"tensor {name!r} has NaN or infinite surviving entries")
    return RowStats(count, sums)


def power_sums(obj: WeightSource, exponents: Iterable[float], masks: Masks | None = None) -> dict[str, RowStats]:
    """Per-row power sums of every prunable tensor of ``obj`` (one read of all weights)."""
    exps = list(exponents)
    weights = named_weights(obj)
    matched = check_masks(weights, masks)
    return {n: row_power_sums(w, exps, matched[n], name=n) for n, w in weights.items()}


def reduce_scope(stats: Mapping[str, RowStats], scope: Scope) -> dict[str, RowStats]:
    """Unit statistics at a scope: rows as they are (neuron), summed per tensor (layer) or over all (global)."""
    check_scope(scope)
    if scope == "neuron":
        return dict(stats)
    per_layer = {n: s.total() for n, s in stats.items()}
    if scope == "layer":
        return per_layer
    exps = next(iter(per_layer.values())).sums.keys()
    count = torch.stack([s.count for s in per_layer.values()]).sum().reshape(1)
    sums = {e: torch.stack([s.sums[e] for s in per_layer.values()]).sum().reshape(1) for e in exps}
    return {GLOBAL: RowStats(count, sums)}


# --------------------------------------------------------------------------------------------- formulas
def _power_mean_log(count: Tensor, s_sum: Tensor, s: float) -> Tensor:
    """log M_s with ``M_s = (S_s / d)^{1/s}``; the log form never overflows for large d."""
    return (torch.log(s_sum) - torch.log(count)) / s


def pq_from_sums(count: Tensor, sum_p: Tensor, sum_q: Tensor, p: float, q: float) -> Tensor:
    """PQ Index from power sums [Diao23, Definition 1].

    ``I_{p,q}(w) = 1 − d^{1/q−1/p} ‖w‖_p / ‖w‖_q = 1 − M_p / M_q`` with power means
    ``M_s = (Σ|w_i|^s / d)^{1/s}``. NaN where the unit is empty or all its survivors are zero.
    """
    check_pq(p, q)
    with torch.no_grad():
        ratio = torch.exp(_power_mean_log(count, sum_p, p) - _power_mean_log(count, sum_q, q))
        out = 1.0 - ratio
        degenerate = (count <= 0) | (sum_q <= 0)
        return torch.where(degenerate, torch.full_like(out, math.nan), out)


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
def _shape(units: Mapping[str, Tensor], scope: Scope) -> Result:
    """Public return convention: float (global), name → float (layer), name → 1-D tensor (neuron)."""
    if scope == "global":
        return float(units[GLOBAL][0])
    if scope == "layer":
        return {n: float(v[0]) for n, v in units.items()}
    return dict(units)


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
    return {
        (p, q): _shape({n: pq_from_sums(u.count, u.sums[p], u.sums[q], p, q) for n, u in units.items()}, scope)
        for p, q in pairs
    }


def pq_index(obj: WeightSource, p: float = 0.5, q: float = 1.0, scope: Scope = "global", masks: Masks | None = None) -> Result:
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
    return _shape({n: hoyer_from_sums(u.count, u.sums[1.0], u.sums[2.0]) for n, u in units.items()}, scope)


def lq_index(obj: WeightSource, q: float, scope: Scope = "global", masks: Masks | None = None) -> Result:
    """l_q soft-sparsity index ``SI_q = d^{1/q−1}‖w‖₁/‖w‖_q = 1/(1 − I_{q,1})``, 0 < q < 1 [Yang22]."""
    check_lq(q)
    units = reduce_scope(power_sums(obj, (q, 1.0), masks), scope)
    return _shape({n: lq_from_sums(u.count, u.sums[q], u.sums[1.0], q) for n, u in units.items()}, scope)


def _gini_sorted(x: Tensor) -> float:
    """Gini index of ascending magnitudes: ``G = Σ_i (2i − N − 1)·x_(i) / (N·Σ x_(i))`` [Hurley & Rickard 2009]."""
    n = x.numel()
    total = x.sum(dtype=torch.float64)
    if n == 0 or total <= 0:
        return math.nan
    i = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    weighted = (x.to(torch.float64) * (2.0 * i - n - 1.0)).sum()
    return float(weighted / (n * total))


def gini(obj: WeightSource, scope: Scope = "global", masks: Masks | None = None) -> Result:
    """Gini index of the surviving magnitudes [Hurley & Rickard 2009], as in math.md §3.

    ``G = Σ_i (2i − N − 1)·x_(i) / (N·Σ_i x_(i))`` over the N survivors sorted ascending. A constant vector gives
    0, a 1-sparse one ``1 − 1/N``. Needs a sort of each unit (O(n log n)), unlike the power-sum measures.
    """
    check_scope(scope)
    weights = named_weights(obj)
    matched = check_masks(weights, masks)
    survivors: dict[str, list[Tensor]] = {}
    for name, w in weights.items():
        rows, m = as_rows(w), matched[name]
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"tensor {name!r} has NaN or infinite entries")
        mrows = as_rows(m) if m is not None else None
        if scope == "neuron":
            survivors[name] = [r.abs() if mrows is None else r[mr].abs() for r, mr in zip(rows, mrows if mrows is not None else rows)]
        else:
            flat = w.reshape(-1).abs() if m is None else w.reshape(-1)[m.reshape(-1)].abs()
            survivors[name] = [flat]
    if scope == "neuron":
        return {
            n: torch.tensor([_gini_sorted(torch.sort(r.float()).values) for r in rows], dtype=torch.float64)
            for n, rows in survivors.items()
        }
    if scope == "layer":
        return {n: _gini_sorted(torch.sort(v[0].float()).values) for n, v in survivors.items()}
    allv = torch.cat([v[0].float().reshape(-1) for v in survivors.values()])
    return _gini_sorted(torch.sort(allv).values)


# --------------------------------------------------------------------------------------------- SAP arithmetic
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


def sap_prune_count(
    index: float | Tensor,
    d: int | Tensor,
    p: float,
    q: float,
    eta: float = 0.0,
    gamma: float = 1.0,
    beta: float = 0.9,
) -> int | Tensor:
    """How many survivors SAP prunes from a unit this round [Diao23, Algorithm 1], math.md §5.

        r = ceil(d · (1+η)^{q/(p−q)} · (1 − I)^{qp/(q−p)})
        c = floor(d · clamp(γ·(1 − r/d), 0, β))

    ``r`` carries a tolerance (``ceil(x − 1e−9)``) so that an equal-magnitude k-sparse unit gives ``r = k``;
    ``c`` likewise (``floor(x + 1e−9)``) so that ``β·d`` does not lose a weight to rounding. A NaN index (a
    degenerate unit) prunes nothing. Returns an int for scalar inputs, an int64 tensor otherwise.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not (0 < beta <= 1):
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    dd = _as_float_tensor(d)
    bound = _as_float_tensor(retained_bound(_as_float_tensor(index), dd, p, q, eta))
    r = torch.ceil(bound - 1e-9).clamp(min=0)
    r = torch.minimum(r, dd)
    c_real = torch.minimum(gamma * (dd - r), beta * dd).clamp(min=0.0)
    c = torch.floor(c_real + 1e-9).to(torch.int64)
    c = torch.where(torch.isnan(bound) | (dd <= 0), torch.zeros_like(c), c)
    if isinstance(index, Tensor) or isinstance(d, Tensor):
        return c
    return int(c)
