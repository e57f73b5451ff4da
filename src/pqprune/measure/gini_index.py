"""The Gini index of the surviving magnitudes, per neuron, per layer and for the whole model (docs/math.md §3).

``G = Σ_i (2i − N − 1)·x_(i) / (N·Σ_i x_(i))`` over the N survivors sorted ascending [Hurley & Rickard 2009]: it
needs each unit sorted, unlike the power-sum measures. The layer and global values come from one sort: on CPU,
for float16/32 weights, one radix sort of all survivors' magnitudes by the compiled kernel, carrying each one's
layer along (the global order restricted to a layer is that layer's order); elsewhere one sort of each layer, the
global order being the merge of the layers' sorted runs (:func:`gini_layers_and_global`).

Pruned entries are set to 0 and sorted with the rest: they come first, so the survivors hold the last N ranks,
and zero survivors add nothing wherever they sit.
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


def _kernel_layers_and_global(
    weights: Mapping[str, Tensor], masks: Mapping[str, Tensor | None]
) -> tuple[dict[str, float], float] | None:
    """Layer and global Gini from one radix sort of all survivors' float32 magnitudes by the compiled kernel (the
    global order restricted to a layer is the layer's order), or None where it does not apply (no kernel, not on
    CPU, float64 weights, more than 65,536 layers)."""
    if (
        sums.kernels is None
        or not weights
        or len(weights) > 1 << 16
        or any(w.device.type != "cpu" or w.dtype == torch.float64 for w in weights.values())
    ):
        return None
    kept = {
        n: w.detach().reshape(-1) if (m := masks[n]) is None else w.detach().reshape(-1)[m.reshape(-1)]
        for n, w in weights.items()
    }
    counts = [v.numel() for v in kept.values()]
    # The magnitudes are written straight into one buffer (no per-layer copies, no concatenation).
    flat = torch.empty(sum(counts), dtype=torch.float32)
    unit = torch.empty(sum(counts), dtype=torch.int16)
    at = 0
    for i, v in enumerate(kept.values()):
        part = flat[at : at + v.numel()]
        if v.dtype == torch.float32:
            torch.abs(v, out=part)
        else:
            part.copy_(v).abs_()
        unit[at : at + v.numel()] = i
        at += v.numel()
    out = torch.empty((len(counts) + 1, 2), dtype=torch.float64)
    flat = flat.view(torch.int32)
    if not sums.kernels.gini_sums(flat.data_ptr(), unit.data_ptr(), flat.numel(), len(counts), out.data_ptr()):
        bad = next(n for n, v in kept.items() if not bool(v.isfinite().all()))
        raise ValueError(f"tensor {bad!r} has NaN or infinite surviving entries")
    layers = {
        n: _gini_from_sums(float(out[i, 0]), float(out[i, 1]), c) for i, (n, c) in enumerate(zip(weights, counts))
    }
    return layers, _gini_from_sums(float(out[-1, 0]), float(out[-1, 1]), flat.numel())


def gini_layers_and_global(obj: WeightSource, masks: Masks | None = None) -> tuple[dict[str, float], float]:
    """The Gini index of every layer's survivors and of all survivors together, from one sort (module docstring):
    the compiled kernel's radix sort of all survivors, else one sort of each layer and a merge of the sorted runs
    (a timsort of their concatenation on CPU, which costs a fraction of a sort). Same values as :func:`gini` at
    layer and global scope.
    """
    weights = named_weights(obj)
    matched = check_masks(weights, masks)
    if (fast := _kernel_layers_and_global(weights, matched)) is not None:
        return fast
    runs = _layer_runs(weights, matched)
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
