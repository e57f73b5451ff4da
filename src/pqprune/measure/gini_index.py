"""The Gini index of the surviving magnitudes, per neuron, per layer and for the whole model (docs/math.md §3).

``G = Σ_i (2i − N − 1)·x_(i) / (N·Σ_i x_(i))`` over the N survivors sorted ascending [Hurley & Rickard 2009]: it
needs each unit sorted, unlike the power-sum measures. The layer and global values come from one sort: on CPU,
for float16/32 weights, one radix sort of all survivors' magnitudes by the compiled kernel, each carrying its
layer (the global order restricted to a layer is that layer's order), its steps split over PyTorch's threads;
elsewhere one sort of each layer, the global order being the merge of the layers' sorted runs
(:func:`gini_layers_and_global`).

The compiled sort leaves pruned entries out. The other sorts set them to 0 and sort them with the rest: they come
first, so the survivors hold the last N ranks, and zero survivors add nothing wherever they sit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from pqprune.measure import sums
from pqprune.measure.weights import Masks, Result, Scope, WeightSource, as_rows, check_masks, check_scope, named_weights

# Columns summed at once in float64: a block of 256K stays in cache, and the Python overhead per block is small.
_CHUNK = 1 << 18
# Non-negative floats sort like their bit patterns read as integers; CPU sorts of integers are radix sorts.
_KEYS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _magnitudes(w: Tensor, m: Tensor | None, name: str) -> Tensor:
    """``|w|`` as float32 (float64 kept) with pruned entries set to 0; NaN/Inf survivors raise, naming ``w``."""
    a = w.abs().to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    if m is not None:
        a.masked_fill_(m.logical_not(), 0.0)
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"tensor {name!r} has NaN or infinite surviving entries")
    return a


def _survivors(w: Tensor, m: Tensor | None) -> float:
    return float(w.numel()) if m is None else float(torch.count_nonzero(m))


def _sorted(a: Tensor) -> Tensor:
    """Ascending sort of the flattened magnitudes ``a`` (non-negative), values only.

    On CPU by their bit patterns as integers, which order non-negative floats like their values: PyTorch sorts
    integers with a radix sort, several times faster than numpy's or its own float sort here.
    """
    flat = a.reshape(-1)
    if flat.device.type != "cpu":
        return torch.sort(flat).values
    return torch.sort(flat.view(_KEYS[flat.dtype])).values.view(flat.dtype)


def _merged(runs: Sequence[Tensor]) -> Tensor:
    """The ascending merge of ascending ``runs`` (widened to one dtype).

    On CPU numpy's stable sort of their concatenation: a timsort, which finds the runs and merges them, costing a
    fraction of a sort. Elsewhere a sort of the concatenation.
    """
    dtype = torch.float64 if any(r.dtype == torch.float64 for r in runs) else torch.float32
    parts = [r.to(dtype) for r in runs]
    if parts[0].device.type != "cpu":
        return torch.sort(torch.cat(parts)).values
    keys = np.concatenate([p.view(_KEYS[dtype]).numpy() for p in parts])
    keys.sort(kind="stable")
    return torch.from_numpy(keys).view(dtype)


def _gini_sorted(x: Tensor, count: float) -> float:
    """Gini index of ``count`` survivors held by the last ``count`` entries of the ascending 1-D ``x``.

    ``Σ_i (2i − N − 1)·x_(i) = 2·Σ_c (c + 1)·x_c − (2·(L − N) + N + 1)·Σ_c x_c`` over the L columns c (rank
    ``i = c + 1 − (L − N)``), both sums in float64 a block at a time. NaN without survivors or when all are 0.
    """
    length = x.numel()
    total = weighted = 0.0
    if length:
        ramp = torch.arange(min(_CHUNK, length), dtype=torch.float64, device=x.device)
        block = torch.empty(ramp.numel(), dtype=torch.float64, device=x.device)
        for c0 in range(0, length, _CHUNK):
            xs = block[: min(_CHUNK, length - c0)].copy_(x[c0 : c0 + _CHUNK])
            s = float(xs.sum())
            total += s
            weighted += (c0 + 1) * s + float(torch.dot(xs, ramp[: xs.numel()]))
    if count <= 0 or total <= 0:
        return math.nan
    return (2.0 * weighted - (2.0 * (length - count) + count + 1.0) * total) / (count * total)


def _sorted_rows(a: Tensor) -> Tensor:
    """Ascending sort along the last dimension, values only (numpy's sort on CPU: no index tensor)."""
    if a.device.type == "cpu":
        return torch.from_numpy(np.sort(a.numpy(), axis=-1))
    return torch.sort(a, dim=-1).values


def _gini_rows(mags: Tensor, count: Tensor) -> Tensor:
    """Gini index per row of ``mags`` [rows, L] (magnitudes, pruned entries set to 0), ``count`` survivors per row;
    the rows' version of :func:`_gini_sorted`, for the neuron scope."""
    x = _sorted_rows(mags)
    n_rows, length = x.shape
    count = count.to(torch.float64)
    offset = (length - count).unsqueeze(1)  # rank i = column + 1 − offset
    weighted = torch.zeros(n_rows, dtype=torch.float64, device=x.device)
    total = torch.zeros(n_rows, dtype=torch.float64, device=x.device)
    step = max(1, _CHUNK // max(n_rows, 1))
    for c0 in range(0, length, step):
        xs = x[:, c0 : c0 + step].to(torch.float64)
        rank = torch.arange(c0 + 1, c0 + 1 + xs.shape[1], dtype=torch.float64, device=x.device) - offset
        weighted += (xs * (2.0 * rank - count.unsqueeze(1) - 1.0)).sum(dim=1)
        total += xs.sum(dim=1)
    out = weighted / (count * total)
    return torch.where((count <= 0) | (total <= 0), torch.full_like(out, math.nan), out)


def _layer_runs(weights: Mapping[str, Tensor], masks: Mapping[str, Tensor | None]) -> dict[str, tuple[Tensor, float]]:
    """Name → (sorted magnitudes with pruned entries at 0, survivors), one sort per tensor.

    NaN and infinite magnitudes sort last, so the last entry tells whether a survivor is one (a pruned one is 0).
    """
    out = {}
    for n, w in weights.items():
        a = w.abs().to(torch.float64 if w.dtype == torch.float64 else torch.float32)
        if (m := masks[n]) is not None:
            a.masked_fill_(m.logical_not(), 0.0)
        x = _sorted(a)
        if x.numel() and not math.isfinite(float(x[-1])):
            raise ValueError(f"tensor {n!r} has NaN or infinite surviving entries")
        out[n] = (x, _survivors(w, m))
    return out


def _gini_from_sums(weighted: float, total: float, count: float) -> float:
    """:func:`_gini_sorted`'s value from ``Σ_i i·x_(i)`` (ranks from 1 over the ``count`` survivors) and ``Σ x``."""
    if count <= 0 or total <= 0:
        return math.nan
    return (2.0 * weighted - (count + 1.0) * total) / (count * total)


# The compiled sort's limits (_kernels.c): 2^12 buckets of the keys' top bits, unit numbers in 13 bits.
_BUCKETS = 1 << 12
_MAX_UNITS = 1 << 13
_LANES = 4  # gini_count and gini_scatter count and write entries in four interleaved lanes


def _bucket_counts(table: Tensor, numel: int) -> tuple[list[int], Tensor, bool]:
    """The entry ranges the threads took (cuts ``[0, …, numel]``), each (range, lane)'s bucket counts
    (int64 [ranges × lanes, buckets + 1]; the last bucket: pruned entries) and whether all survivors are finite."""
    assert sums.kernels is not None
    kernel, hists, finite = sums.kernels, {}, {}

    def count(e0: int, e1: int) -> None:
        hists[e0] = torch.zeros((_LANES, _BUCKETS + 1), dtype=torch.int64)
        finite[e0] = kernel.gini_count(table.data_ptr(), table.shape[0], e0, e1, hists[e0].data_ptr())

    sums.on_threads(count, numel, numel)
    starts = sorted(hists)
    return [*starts, numel], torch.cat([hists[e0] for e0 in starts]), all(finite.values())


def _scattered(table: Tensor, numel: int, cuts: list[int], counts: Tensor) -> tuple[Tensor, Tensor]:
    """One word per entry (its key's low bits above its unit), bucket after bucket, and the buckets' starts (int64
    [buckets + 2]); each thread's range of entries as :func:`_bucket_counts` cut it."""
    assert sums.kernels is not None
    kernel = sums.kernels
    start = torch.zeros(_BUCKETS + 2, dtype=torch.int64)
    torch.cumsum(counts.sum(0), 0, out=start[1:])
    # each (range, lane) writes its part of a bucket after the parts of the (range, lane)s before it
    nexts = (start[:-1] + counts.cumsum(0) - counts).reshape(len(cuts) - 1, -1)
    words = torch.empty(numel, dtype=torch.int32)
    kernel.huge_pages(words.data_ptr(), 4 * numel)  # written once, at random: 4 KB page faults cost a pass

    def scatter(e0: int, e1: int) -> None:
        next_ = nexts[cuts.index(e0)]
        kernel.gini_scatter(table.data_ptr(), table.shape[0], e0, e1, next_.data_ptr(), words.data_ptr())

    sums.on_threads(scatter, numel, numel, lambda parts: cuts)
    return words, start


def _bucket_sums(words: Tensor, start: Tensor, n_units: int) -> Tensor:
    """Per unit, and (last row) for all units: ``Σ_i i·x_(i)`` (ranks from 1), ``Σ x`` and the count (float64
    [units + 1, 3]), from the buckets sorted and walked in ranges split over threads."""
    assert sums.kernels is not None
    kernel, parts, survivors = sums.kernels, {}, int(start[_BUCKETS])

    def walk(b0: int, b1: int) -> None:
        parts[b0] = torch.empty((n_units + 1, 3), dtype=torch.float64)
        kernel.gini_buckets(words.data_ptr(), start.data_ptr(), b0, b1, n_units, parts[b0].data_ptr())

    def bucket_cuts(n_parts: int) -> list[int]:
        targets = torch.tensor([survivors * i // n_parts for i in range(1, n_parts)], dtype=torch.int64)
        return [0, *torch.searchsorted(start[1 : _BUCKETS + 1], targets).add(1).tolist(), _BUCKETS]

    sums.on_threads(walk, _BUCKETS, survivors, bucket_cuts)
    out = torch.zeros((n_units + 1, 3), dtype=torch.float64)
    for b0 in sorted(parts):  # ranks r within a range are r + (count before it): Σ (r + c)·x = Σ r·x + c·Σ x
        out[:, 0] += parts[b0][:, 0] + out[:, 2] * parts[b0][:, 1]
        out[:, 1:] += parts[b0][:, 1:]
    return out


def _kernel_layers_and_global(
    weights: Mapping[str, Tensor], masks: Mapping[str, Tensor | None]
) -> tuple[dict[str, float], float] | None:
    """Layer and global Gini from one radix sort of all survivors' float32 magnitudes by the compiled kernel (the
    global order restricted to a layer is the layer's order), or None where it does not apply (no kernel, not on
    CPU, float64 weights, more than 8,192 layers). Three steps, each split over threads (``_kernels.c``): count
    the survivors' buckets, scatter them into one buffer by bucket, sort and walk each bucket.
    """
    if (
        sums.kernels is None
        or not weights
        or len(weights) > _MAX_UNITS
        or any(w.device.type != "cpu" or w.dtype == torch.float64 for w in weights.values())
        or any(
            m is not None and (m.device.type != "cpu" or m.dtype not in (torch.bool, torch.uint8))
            for m in masks.values()
        )
    ):
        return None
    flats = {n: w.detach().reshape(-1).to(torch.float32).contiguous() for n, w in weights.items()}
    alive = {n: None if m is None else m.reshape(-1).contiguous() for n, m in masks.items()}
    rows = [
        [f.data_ptr(), 0 if (m := alive[n]) is None else m.data_ptr(), f.numel(), u]
        for u, (n, f) in enumerate(flats.items())
    ]
    table, numel = torch.tensor(rows, dtype=torch.int64), sum(f.numel() for f in flats.values())
    cuts, counts, finite = _bucket_counts(table, numel)
    if not finite:
        for n, f in flats.items():
            nonfinite = ~f.isfinite() if (m := alive[n]) is None else ~f.isfinite() & m
            if bool(nonfinite.any()):
                raise ValueError(f"tensor {n!r} has NaN or infinite surviving entries")
    words, start = _scattered(table, numel, cuts, counts)
    weighted, total, count = _bucket_sums(words, start, len(flats)).T.tolist()
    layers = {n: _gini_from_sums(weighted[u], total[u], count[u]) for u, n in enumerate(flats)}
    return layers, _gini_from_sums(weighted[-1], total[-1], count[-1])


def gini_layers_and_global(obj: WeightSource, masks: Masks | None = None) -> tuple[dict[str, float], float]:
    """The Gini index of every layer's survivors and of all survivors together, from one sort (module docstring):
    the compiled kernel's radix sort of all survivors, else one sort of each layer and a merge of the sorted runs
    (a timsort of their concatenation on CPU, which costs a fraction of a sort). Same values as :func:`gini` at
    layer and global scope.
    """
    weights = named_weights(obj)
    return gini_layers_and_global_of(weights, check_masks(weights, masks))


def gini_layers_and_global_of(
    weights: Mapping[str, Tensor], masks: Mapping[str, Tensor | None]
) -> tuple[dict[str, float], float]:
    """:func:`gini_layers_and_global` of name → tensor taken as given (none left out by name or shape), each with
    its bool mask or None (every name of ``weights`` in ``masks``)."""
    if not weights:
        return {}, math.nan
    if (fast := _kernel_layers_and_global(weights, masks)) is not None:
        return fast
    runs = _layer_runs(weights, masks)
    layers = {n: _gini_sorted(x, c) for n, (x, c) in runs.items()}
    everything = _merged([x for x, _ in runs.values()])
    return layers, _gini_sorted(everything, sum(c for _, c in runs.values()))


def gini(obj: WeightSource, scope: Scope = "global", masks: Masks | Tensor | None = None) -> Result:
    """Gini index of the surviving magnitudes [Hurley & Rickard 2009], as in docs/math.md §3.

    ``G = Σ_i (2i − N − 1)·x_(i) / (N·Σ_i x_(i))`` over the N survivors sorted ascending. A constant vector gives
    0, a 1-sparse one ``1 − 1/N``. Needs a sort of each unit (O(n log n)), unlike the power-sum measures; for
    both the layer and the global values use :func:`gini_layers_and_global` (one sort, not two).
    """
    check_scope(scope)
    weights = named_weights(obj)
    matched = check_masks(weights, masks)
    if scope == "neuron":
        out = {}
        for n, w in weights.items():
            m = matched[n]
            rows = as_rows(_magnitudes(w, m, n))
            cnt = (
                torch.full((rows.shape[0],), float(rows.shape[1]))
                if m is None
                else as_rows(m).sum(1, dtype=torch.float64)
            )
            out[n] = _gini_rows(rows, cnt).cpu()
        return out
    if (fast := _kernel_layers_and_global(weights, matched)) is not None:
        return fast[0] if scope == "layer" else fast[1]
    runs = _layer_runs(weights, matched)
    if scope == "layer":
        return {n: _gini_sorted(x, c) for n, (x, c) in runs.items()}
    return _gini_sorted(_merged([x for x, _ in runs.values()]), sum(c for _, c in runs.values()))
