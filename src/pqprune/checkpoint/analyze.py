"""The compressibility report of a checkpoint (``pqprune analyze``): per layer and for the whole model, density,
PQ Index, Gini and the fraction SAP would keep now, optionally per-neuron PQI summaries and model metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pqprune.files import finite_or_none
from pqprune.measure.gini_index import gini_layers_and_global
from pqprune.measure.indices import check_pq, pq_from_sums, sap_prune_count
from pqprune.measure.sums import RowStats, map_units, power_sums, reduce_scope
from pqprune.measure.weights import GLOBAL, Scope, check_masks, check_scope, named_weights
from pqprune.prune.select import magnitude_scores, select_keep

Report = dict[str, Any]

FIELDS = ("name", "shape", "numel", "density", "pqi", "gini", "sap_keep_fraction")
"""Columns of a layer row, in order (``neuron_pqi`` follows at neuron scope)."""


def _neuron_summary(values: Tensor) -> dict[str, float | None]:
    """min / median / max of the per-neuron indices, ignoring degenerate (NaN) neurons."""
    v = values[~torch.isnan(values)]
    if v.numel() == 0:
        return {"min": None, "median": None, "max": None}
    # numpy's median averages the two middle values (torch.median takes the lower one).
    return {"min": float(v.min()), "median": float(np.median(v.cpu().numpy())), "max": float(v.max())}


def _global_keep(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor | None], prune: int) -> dict[str, int]:
    """Per-tensor count of survivors kept when the ``prune`` smallest-magnitude survivors of the model go.

    Uses the engine's exact-k selection (ties by flat index of the concatenation), so the per-layer split is
    the one SAP at global scope would make.
    """
    if prune == 0:
        return {n: _survivors(w, masks.get(n)) for n, w in weights.items()}
    keep = select_keep(magnitude_scores(weights), {GLOBAL: prune}, "global", alive=masks)
    return {n: int(torch.count_nonzero(keep[n])) for n in weights}


def _survivors(w: Tensor, m: Tensor | None) -> int:
    return w.numel() if m is None else int(m.sum())


def analyze(
    obj: nn.Module | Mapping[str, Tensor] | Tensor,
    masks: Mapping[str, Tensor] | None = None,
    p: float = 0.5,
    q: float = 1.0,
    scope: Scope = "layer",
    metrics: bool = False,
    input_shape: Sequence[int] | None = None,
) -> Report:
    """Sparsity report of the prunable weights of ``obj`` [Diao23] (docs/math.md §1–5).

    With ``metrics=True`` (or an ``input_shape``) the report also holds ``"metrics"``: the ShrinkBench-style
    record of :func:`pqprune.export.model_metrics` (parameters, nonzeros, sizes; FLOPs given ``input_shape``).

    Returns ``{"global": {...}, "layers": [{...}, ...]}`` with, per layer and for the whole model: ``numel``,
    ``density`` (survivors / numel, from ``masks``), ``pqi`` (``I_{p,q}`` of the survivors at that level),
    ``gini`` and ``sap_keep_fraction`` — the fraction of survivors SAP with default hyper-parameters
    (η=0, γ=1, β=0.9) would keep if it pruned now with units of ``scope``: ``Σ(d − c)/Σ d`` over the units
    inside the layer (or the model). At ``scope="global"`` the per-layer split follows the exact global
    selection. At ``scope="neuron"`` each layer also gets ``neuron_pqi`` = min / median / max over its rows.
    Degenerate units (no survivors, or all survivors zero) give None (NaN) for their index.
    """
    check_pq(p, q)
    check_scope(scope)
    weights = named_weights(obj)
    matched = check_masks(weights, masks)
    rows = power_sums(weights, (p, q), matched)  # the one read of the weights
    layer_units = reduce_scope(rows, "layer")
    global_unit = reduce_scope(rows, "global")[GLOBAL]

    def pqi(u: RowStats) -> Tensor:
        return pq_from_sums(u.count, u.sums[p], u.sums[q], p, q)

    layer_pqi = {n: float(v[0]) for n, v in map_units(layer_units, pqi).items()}
    global_pqi = float(pqi(global_unit)[0])
    layer_gini, global_gini = gini_layers_and_global(weights, {n: m for n, m in matched.items() if m is not None})

    survivors = {n: _survivors(w, matched[n]) for n, w in weights.items()}
    neuron_pqi: dict[str, Tensor] = {}
    if scope == "global":
        c = sap_prune_count(global_pqi, int(global_unit.count[0]), p, q)
        kept = _global_keep(weights, matched, c)
    elif scope == "layer":
        kept = {n: survivors[n] - int(sap_prune_count(layer_pqi[n], survivors[n], p, q)) for n in weights}
    else:
        kept = {}
        for n, u in rows.items():
            neuron_pqi[n] = pqi(u)
            kept[n] = survivors[n] - int(sap_prune_count(neuron_pqi[n], u.count, p, q).sum())

    def keep_fraction(kept_n: int, alive_n: int) -> float | None:
        return kept_n / alive_n if alive_n > 0 else None

    layers = []
    for n, w in weights.items():
        row: dict[str, Any] = {
            "name": n,
            "shape": list(w.shape),
            "numel": w.numel(),
            "density": survivors[n] / w.numel() if w.numel() else None,
            "pqi": finite_or_none(layer_pqi[n]),
            "gini": finite_or_none(layer_gini[n]),
            "sap_keep_fraction": keep_fraction(kept[n], survivors[n]),
        }
        if scope == "neuron":
            row["neuron_pqi"] = _neuron_summary(neuron_pqi[n])
        layers.append(row)
    numel = sum(w.numel() for w in weights.values())
    alive = sum(survivors.values())
    report: Report = {
        "global": {
            "numel": numel,
            "density": alive / numel if numel else None,
            "pqi": finite_or_none(global_pqi),
            "gini": finite_or_none(global_gini),
            "sap_keep_fraction": keep_fraction(sum(kept.values()), alive),
        },
        "layers": layers,
    }
    if (metrics or input_shape is not None) and not isinstance(obj, Tensor):
        from pqprune.export.metrics import model_metrics

        report["metrics"] = model_metrics(obj, masks, input_shape)
    return report
