"""The compressibility report of a checkpoint (``pqprune analyze``): per layer, per role and for the whole model,
density, PQ Index, Gini and the fraction SAP would keep now, optionally per-neuron PQI summaries and model metrics.

The report is built tensor by tensor from a :class:`~pqprune.checkpoint.sources.Source`, so a sharded checkpoint
is measured without holding more than one tensor: survivor counts and power sums add up over tensors (the global
PQ Index needs no concatenation), and the Gini index comes from magnitude histograms that add up as well
(:mod:`pqprune.measure.histogram`: exact for float16/bfloat16 weights). Float32/64 tensors get their exact layer
Gini from a sort; their global (and per-role) Gini is exact up to :data:`EXACT_LIMIT` weights, which are then
kept in memory, and binned above it (low by at most 2^-14; ``gini_exact`` says which). At global scope the
per-layer split of SAP's count is the engine's exact selection: from the 16-bit histograms, else by the streaming
selection over the tensors read again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from pqprune.checkpoint.sources import Source, SourceMasks, SourceWeights, memory_source
from pqprune.export.metrics import MetricsTally, model_metrics
from pqprune.files import FileFormatError, finite_or_none
from pqprune.measure.gini_index import gini, gini_layers_and_global_of
from pqprune.measure.histogram import HALF_DTYPES, Histogram, half_histogram, half_keys, half_rows, key_histogram
from pqprune.measure.indices import check_pq, pq_from_sums, sap_prune_count
from pqprune.measure.sums import power_sums_of
from pqprune.measure.weights import GLOBAL, Scope, check_masks, check_scope, named_weights
from pqprune.prune.select import global_masks, magnitude_scores, score_stream
from pqprune.threads import torch_threads

Report = dict[str, Any]

FIELDS = ("name", "shape", "numel", "density", "pqi", "gini", "sap_keep_fraction")
"""Columns of a layer row, in order (``neuron_pqi`` follows at neuron scope)."""
EXACT_LIMIT = 1 << 25
"""Float32/64 weights up to this many are kept in memory for an exact global Gini index (128 MB of float32)."""
GROUP_BY = ("suffix",)


def role(name: str) -> str:
    """What a tensor is across layers: its name after the last numeric component (``model.layers.3.mlp.down_proj
    .weight`` → ``mlp.down_proj.weight``); a name without one is its own role (``lm_head.weight``)."""
    parts = name.split(".")
    last = max((i for i, part in enumerate(parts) if part.isdigit()), default=-1)
    return ".".join(parts[last + 1 :]) or name


@dataclass
class _Pool:
    """Survivors, power sums and a magnitude histogram of some tensors together (the model, or one role)."""

    p: float
    q: float
    numel: int = 0
    alive: int = 0
    kept: int = 0
    sum_p: float = 0.0
    sum_q: float = 0.0
    hist: Histogram | None = None  # made on the first add (2^20 bins): rows of single layers need none

    def add(self, layer: _Layer) -> None:
        self.numel += layer.numel
        self.alive += layer.alive
        self.sum_p += layer.sum_p
        self.sum_q += layer.sum_q
        if self.hist is None:
            self.hist = Histogram.empty_keys()
        if layer.half is not None:
            self.hist.add_half(layer.half, layer.dtype)
        else:
            assert layer.keys is not None
            self.hist.add_keys(*layer.keys, exact=False)

    def gini(self) -> float:
        return self.hist.gini() if self.hist is not None else math.nan

    def pqi(self) -> float:
        return _pqi(self.alive, self.sum_p, self.sum_q, self.p, self.q)


@dataclass
class _Layer:
    """What is kept of one tensor once it has been read."""

    name: str
    shape: list[int]
    dtype: torch.dtype
    numel: int
    alive: int
    sum_p: float
    sum_q: float
    gini: float
    half: Tensor | None = None  # its half_histogram (float16/bfloat16)
    keys: tuple[Tensor, Tensor] | None = None  # its key_histogram (float32/64), dropped once pooled
    neuron_pqi: dict[str, float | None] | None = None  # min / median / max over its rows
    kept: int = 0


def _pqi(count: float, sum_p: float, sum_q: float, p: float, q: float) -> float:
    def t(x: float) -> Tensor:
        return torch.tensor([float(x)], dtype=torch.float64)

    return float(pq_from_sums(t(count), t(sum_p), t(sum_q), p, q)[0])


def _read_layer(name: str, w: Tensor, m: Tensor | None, p: float, q: float, scope: Scope) -> _Layer:
    """One tensor's counts, sums, Gini and (neuron scope) per-row PQI and SAP counts; one read of it per measure."""
    alive = w.numel() if m is None else int(torch.count_nonzero(m))
    layer = _Layer(name, list(w.shape), w.dtype, w.numel(), alive, 0.0, 0.0, math.nan)
    rows = None
    if w.dtype in HALF_DTYPES:
        if scope == "neuron":  # counts and row sums in one pass
            layer.half, rows = half_rows(w, (p, q), m, name)
        else:
            layer.half = half_histogram(w, m, name)
        hist = Histogram.of_half(layer.half, w.dtype)
        layer.sum_p, layer.sum_q, layer.gini = hist.power_sum(p), hist.power_sum(q), hist.gini()
    else:
        rows = power_sums_of({name: w}, (p, q), {name: m})[name]
        layer.sum_p, layer.sum_q = float(rows.sums[p].sum()), float(rows.sums[q].sum())
        layer.gini = cast(float, gini(w, "global", m))
        layer.keys = key_histogram(w, m, name)
    if scope == "neuron":
        assert rows is not None
        neuron_pqi = pq_from_sums(rows.count, rows.sums[p], rows.sums[q], p, q)
        layer.kept = alive - int(sap_prune_count(neuron_pqi, rows.count, p, q).sum())
        layer.neuron_pqi = _neuron_summary(neuron_pqi)
    elif scope == "layer":
        layer.kept = alive - sap_prune_count(_pqi(alive, layer.sum_p, layer.sum_q, p, q), alive, p, q)
    return layer


def _read_layers(
    source: Source, names: Sequence[str], p: float, q: float, scope: Scope, tally: MetricsTally | None
) -> Iterator[tuple[_Layer, Tensor, Tensor | None]]:
    """:func:`_read_layer` of each tensor ``names`` in order, with its tensor and mask; every tensor of the source
    is also counted into ``tally`` when given.

    Tensors are measured on all threads at once, one tensor per thread, each op single-threaded: the work per
    tensor is a few passes over chunks too small for PyTorch's own threads to pay off, and counting magnitudes is
    single-threaded in PyTorch. At most one tensor per thread (and one being read) is held.
    """
    selected = set(names)
    workers = max(1, torch.get_num_threads())
    pending: deque[tuple[Future[tuple[_Layer | None, MetricsTally | None]], Tensor, Tensor | None]] = deque()

    def read(name: str, w: Tensor, m: Tensor | None) -> tuple[_Layer | None, MetricsTally | None]:
        layer = _read_layer(name, w, m, p, q, scope) if name in selected else None
        counted = None
        if tally is not None:
            counted = MetricsTally()
            # a 16-bit layer's zero survivors are its histogram's first bin: no pass to count them
            nonzeros = None if layer is None or layer.half is None else layer.alive - int(layer.half[0])
            counted.add(name, w, m, nonzeros=nonzeros, kept=None if layer is None else layer.alive)
        return layer, counted

    def done() -> Iterator[tuple[_Layer, Tensor, Tensor | None]]:
        future, w, m = pending.popleft()
        try:
            layer, counted = future.result()
        except ValueError as err:  # NaN or infinite survivors, named by tensor: name the checkpoint too
            raise FileFormatError(f"{source.what}: {err}") from err
        if counted is not None and tally is not None:
            tally.merge(counted)
        if layer is not None:
            yield layer, w, m

    with torch_threads(1), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pqprune-analyze") as pool:
        for name, w, m in source.stream(list(source.infos) if tally is not None else names):
            pending.append((pool.submit(read, name, w, m), w, m))
            del w, m
            while len(pending) > workers:
                yield from done()
        while pending:
            yield from done()


def _neuron_summary(values: Tensor) -> dict[str, float | None]:
    """min / median / max of the per-neuron indices, ignoring degenerate (NaN) neurons."""
    v = values[~torch.isnan(values)]
    if v.numel() == 0:
        return {"min": None, "median": None, "max": None}
    # numpy's median averages the two middle values (torch.median takes the lower one).
    return {"min": float(v.min()), "median": float(np.median(v.cpu().numpy())), "max": float(v.max())}


# --------------------------------------------------------------------------------------------- global scope split
def _split_by_histograms(layers: Sequence[_Layer], everything: Histogram, prune: int) -> None:
    """Survivors kept per layer when the ``prune`` smallest magnitudes of all layers go (ties by flat index of the
    concatenation, as the engine's selection), from the layers' exact 16-bit histograms and their sum
    ``everything``."""
    cum = torch.cumsum(everything.counts, 0)
    bound = int(torch.searchsorted(cum, torch.tensor([prune]))[0]) if prune else -1  # the key of the last one pruned
    need = prune - (int(cum[bound - 1]) if bound > 0 else 0)
    for layer in layers:
        assert layer.half is not None
        keys = half_keys(layer.dtype)
        below = int(layer.half[keys < bound].sum())
        ties = int(layer.half[keys == bound].sum())
        take = min(need, ties)
        need -= take
        layer.kept = layer.alive - below - take


def _split_streamed(source: Source, layers: Sequence[_Layer], prune: int) -> None:
    """The same split by the engine's streaming exact-k selection, reading the tensors again (a few passes)."""
    names = [layer.name for layer in layers]
    stream, score = score_stream(magnitude_scores(SourceWeights(source, names)), SourceMasks(source, names), names)
    for layer, keep in zip(layers, global_masks(stream, prune, score)):
        layer.kept = int(torch.count_nonzero(keep))


# --------------------------------------------------------------------------------------------- the report
def _row(name: str, pool: _Pool, gini_value: float, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        **(extra or {}),
        "numel": pool.numel,
        "density": pool.alive / pool.numel if pool.numel else None,
        "pqi": finite_or_none(pool.pqi()),
        "gini": finite_or_none(gini_value),
        "sap_keep_fraction": pool.kept / pool.alive if pool.alive > 0 else None,
    }


def analyze_source(
    source: Source,
    names: Sequence[str] | None = None,
    p: float = 0.5,
    q: float = 1.0,
    scope: Scope = "layer",
    group_by: str | None = None,
    metrics: bool = False,
    chain_flops: bool = False,
    exact_limit: int = EXACT_LIMIT,
) -> Report:
    """The report of :func:`analyze` for the tensors ``names`` of ``source`` (default: ``source.select()``), read one
    at a time. ``group_by="suffix"`` adds ``"groups"``: one row per :func:`role` across layers. ``metrics`` adds the
    record of :func:`pqprune.export.model_metrics` over every tensor of the source, in the same pass
    (``chain_flops``: with the FLOPs of a chain of 2-D weights)."""
    check_pq(p, q)
    check_scope(scope)
    if group_by is not None and group_by not in GROUP_BY:
        raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}, got {group_by!r}")
    names = source.select() if names is None else list(names)
    layers: list[_Layer] = []
    # Every tensor read is also kept (a reference: no copy) until more than exact_limit weights have been read:
    # small float32/64 models get their exact global Gini and split from the engine's functions over all of them.
    held: dict[str, tuple[Tensor, Tensor | None]] | None = {}
    held_numel = 0
    everything = _Pool(p, q)
    groups: dict[str, tuple[_Pool, list[_Layer]]] = {}
    tally = MetricsTally() if metrics else None

    def pooled(layer: _Layer, w: Tensor, m: Tensor | None) -> None:
        nonlocal held, held_numel
        held_numel += w.numel()
        held = None if held is None or held_numel > exact_limit else {**held, layer.name: (w, m)}
        everything.add(layer)
        if group_by is not None:
            pool, members = groups.setdefault(role(layer.name), (_Pool(p, q), []))
            pool.add(layer)
            members.append(layer)
        layer.keys = None  # pooled: the binned histogram is not needed any more
        layers.append(layer)

    for layer, w, m in _read_layers(source, names, p, q, scope, tally):
        pooled(layer, w, m)
    all_half = all(layer.half is not None for layer in layers)
    global_gini = everything.gini() if all_half or held is None else _exact_gini(held)
    if scope == "global":
        prune = sap_prune_count(everything.pqi(), everything.alive, p, q)
        if all_half:
            assert everything.hist is not None  # every layer was added to it
            _split_by_histograms(layers, everything.hist, prune)
        else:
            _split_streamed(source, layers, prune)
    exact_global = all_half or held is not None
    everything.kept = sum(layer.kept for layer in layers)
    report: Report = {"global": {**_row(GLOBAL, everything, global_gini), "gini_exact": exact_global}, "layers": []}
    del report["global"]["name"]
    for layer in layers:
        pool = _Pool(p, q, layer.numel, layer.alive, layer.kept, layer.sum_p, layer.sum_q)
        row = _row(layer.name, pool, layer.gini, {"shape": layer.shape})
        if layer.neuron_pqi is not None:
            row["neuron_pqi"] = layer.neuron_pqi
        report["layers"].append(row)
    if group_by is not None:
        report["groups"] = _group_rows(groups, held)
    if tally is not None:
        report["metrics"] = tally.result(chain=chain_flops)
    return report


def _exact_gini(held: Mapping[str, tuple[Tensor, Tensor | None]]) -> float:
    """The Gini index of the survivors of all ``held`` tensors together (one sort of all, no copy of them)."""
    return gini_layers_and_global_of({n: w for n, (w, _) in held.items()}, {n: m for n, (_, m) in held.items()})[1]


def _group_rows(
    groups: Mapping[str, tuple[_Pool, list[_Layer]]], held: Mapping[str, tuple[Tensor, Tensor | None]] | None
) -> list[dict[str, Any]]:
    """One row per role, its layers pooled; the Gini index exact from held weights or 16-bit histograms."""
    rows = []
    for name, (pool, members) in groups.items():
        pool.kept = sum(layer.kept for layer in members)
        exact = all(layer.half is not None for layer in members)
        if exact or held is None:
            value = pool.gini()
        else:
            mine = {layer.name: held[layer.name] for layer in members}
            value = _exact_gini(mine)
            exact = True
        rows.append({**_row(name, pool, value), "layers": len(members), "gini_exact": exact})
    return rows


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
    Degenerate units (no survivors, or all survivors zero) give None (NaN) for their index. ``global`` also says
    whether its Gini index is exact (``gini_exact``). Checkpoint files: :func:`analyze_source`.
    """
    check_pq(p, q)
    check_scope(scope)
    weights = named_weights(obj)
    matched = check_masks(weights, masks)
    report = analyze_source(memory_source(weights, matched), list(weights), p, q, scope)
    if (metrics or input_shape is not None) and not isinstance(obj, Tensor):
        report["metrics"] = model_metrics(obj, masks, input_shape)
    return report
