"""Unit arithmetic the methods share: survivors and power sums per unit, counts, records, fixed-ratio plans."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from pqprune.measure.indices import sap_prune_count
from pqprune.measure.sums import UnitStats, power_sums_of, reduce_scope
from pqprune.measure.weights import GLOBAL, Scope, as_rows
from pqprune.prune.methods.base import Counts, Masks, Plan, UnitRecord, Weights, shapes_of
from pqprune.prune.select import LazyScores


# --------------------------------------------------------------------------------------------- unit helpers
def unit_stats(weights: Weights, masks: Masks, scope: Scope, exponents: Sequence[float]) -> UnitStats:
    """Survivor counts and float64 power sums per unit, from one read of the weights."""
    return reduce_scope(power_sums_of(weights, exponents, masks), scope)


def _rows_cols(shape: torch.Size) -> tuple[int, int]:
    """``as_rows``' shape for a tensor of ``shape``, without the tensor."""
    rows = shape[0] if len(shape) > 1 else 1
    return rows, (shape.numel() // rows if rows else 0)


def unit_sizes(weights: Weights, scope: Scope) -> dict[str, Tensor]:
    """Entries per unit when dense (float64, one per unit row), matching :func:`unit_stats`' layout."""
    shapes = shapes_of(weights)
    if scope == "neuron":
        return {
            n: torch.full((_rows_cols(s)[0],), float(_rows_cols(s)[1]), dtype=torch.float64) for n, s in shapes.items()
        }
    if scope == "layer":
        return {n: torch.tensor([float(s.numel())], dtype=torch.float64) for n, s in shapes.items()}
    return {GLOBAL: torch.tensor([float(sum(s.numel() for s in shapes.values()))], dtype=torch.float64)}


def unit_counts(weights: Weights, masks: Masks, scope: Scope) -> dict[str, Tensor]:
    """Survivors per unit (float64, one per unit row, :func:`unit_stats`' layout), from the masks alone;
    a tensor without a mask is fully alive and costs nothing to count."""
    per: dict[str, Tensor] = {}
    for n, shape in shapes_of(weights).items():
        m = masks.get(n)
        rows, cols = _rows_cols(shape)
        if scope == "neuron":
            per[n] = (
                torch.full((rows,), float(cols), dtype=torch.float64)
                if m is None
                else torch.count_nonzero(as_rows(m), dim=1).to(torch.float64).cpu()
            )
        else:
            per[n] = torch.tensor([float(shape.numel() if m is None else torch.count_nonzero(m))], dtype=torch.float64)
    if scope == "global":
        return {GLOBAL: torch.stack(list(per.values())).sum().reshape(1)}
    return per


def as_counts(per_unit: Mapping[str, Tensor], scope: Scope) -> Counts:
    """Unit tensors (one entry per unit row) → the counts :func:`pqprune.prune.select.select_prune` takes."""
    if scope == "neuron":
        return {n: c.to(torch.int64).cpu() for n, c in per_unit.items()}
    return {n: int(c.reshape(-1)[0]) for n, c in per_unit.items()}


def make_records(
    scope: Scope,
    d: Mapping[str, Tensor],
    index: Mapping[str, Tensor],
    r: Mapping[str, Tensor],
    c: Mapping[str, Tensor],
    clipped: Mapping[str, Tensor] | None = None,
) -> list[UnitRecord]:
    """One record per unit; neuron units are named ``"param[row]"``."""
    out = []
    for u in d:
        cols = [d[u].tolist(), index[u].tolist(), r[u].tolist(), c[u].tolist()]
        cl = clipped[u].tolist() if clipped is not None else [False] * len(cols[0])
        for i, (dd, ii, rr, cc, bb) in enumerate(zip(*cols, cl)):
            name = f"{u}[{i}]" if scope == "neuron" else u
            out.append(UnitRecord(name, int(dd), float(ii), int(rr), int(cc), bool(bb)))
    return out


def retained_count(index: Tensor, d: Tensor, p: float, q: float, eta: float) -> Tensor:
    """SAP's r for the report: with γ = β = 1, sap_prune_count prunes exactly d − r, so its rounding rule
    (tolerances included) is reused rather than repeated here. A NaN index retains everything."""
    return d - sap_prune_count(index, d, p, q, eta, 1.0, 1.0).to(torch.float64)


def ratio_count(d: Tensor, ratio: float) -> Tensor:
    """``floor(P·d)`` with a tolerance, so that 0.2·1000 is 200 and not 199."""
    return torch.floor(d * ratio + 1e-9)


def check_ratio(ratio: float, arg: str = "ratio") -> float:
    if not isinstance(ratio, (int, float)) or not (0.0 < float(ratio) < 1.0):
        raise ValueError(f"{arg} must be in (0, 1), got {ratio!r}")
    return float(ratio)


def random_scores(weights: Weights, seed: int, round_: int) -> LazyScores:
    """Uniform scores, reproducible per (seed, round, tensor), recomputed identically on every access."""
    order = {n: i for i, n in enumerate(weights)}

    def fn(name: str, w: Tensor) -> Tensor:
        state = np.random.SeedSequence([seed, round_, order[name]]).generate_state(2, dtype=np.uint64)
        g = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
        return torch.rand(w.shape, generator=g, dtype=torch.float64).to(w.device)

    return LazyScores(weights, fn)


# --------------------------------------------------------------------------------------------- fixed ratio
def fixed_ratio_plan(
    weights: Weights, masks: Masks, scope: Scope, c_of: Callable[[str, Tensor], Tensor], scores: Mapping[str, Tensor]
) -> Plan:
    """Plan with counts ``c_of(unit, d)``. No sparsity index is used, so none is computed (NaN in records):
    the counts come from the masks alone and the weights are read only by the selection."""
    d = unit_counts(weights, masks, scope)
    c = {u: c_of(u, du).clamp(min=0) for u, du in d.items()}
    idx = {u: torch.full_like(du, math.nan) for u, du in d.items()}
    r = {u: d[u] - c[u] for u in d}
    return Plan(as_counts(c, scope), scores, make_records(scope, d, idx, r, c))
