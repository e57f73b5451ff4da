"""Exact-k selection: prune exactly ``c`` survivors per unit, the ``c`` smallest by score (docs/math.md §5).

Units follow docs/math.md §1: ``global`` (all tensors concatenated in mapping order), ``layer`` (one tensor) and
``neuron`` (one row of ``W.reshape(out, -1)``). Within a unit the ``c`` survivors with the smallest scores are
pruned; equal scores are broken by flat index (lower index pruned first), so the result is deterministic and
the number pruned always equals the number decided — unlike a "prune everything below a threshold" rule,
which prunes nothing or too much on ties.

Layer and neuron scope, O(n) per unit: find the c-th smallest surviving score ``v`` by partition (numpy's
introselect on CPU, ``torch.kthvalue`` elsewhere), take every survivor strictly below ``v``, then fill the
remaining count from the survivors equal to ``v`` in flat-index order. Global scope, O(n) and streaming: the
same threshold found by radix selection on the scores' bit patterns, a chunk at a time (:func:`global_threshold`),
so no copy of all scores is ever made and the tensors may come one at a time from checkpoint shards; the extra
memory is the bool masks (:func:`global_masks`). No full sort and no ``torch.quantile`` (which refuses more than
2^24 elements).

Nothing here knows of models, methods or training: inputs are tensors and counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from pqprune.measure import sums
from pqprune.measure.weights import GLOBAL, Scope, as_rows, check_mask, check_scope, match_masks, match_names

Counts = Mapping[str, "int | Tensor"]

# Above this row length, ties are filled row by row with nonzero() instead of a vectorised cumsum, so a single
# huge row never needs an int64 cumsum of its full length.
_VECTOR_TIE_ROW = 1 << 16

ScoreStream = Callable[[], Iterable[tuple[Tensor, "Tensor | None"]]]
"""Called once per pass; yields ``(tensor, alive)`` for every tensor of the global unit, always in the same order
(``alive`` None: every entry survives). Each call may read the tensors afresh, e.g. from checkpoint shards."""
ChunkScore = Callable[[Tensor, Tensor], Tensor]
"""``score(chunk, out)``: the element-wise score of a flat chunk of a streamed tensor, written into ``out``."""


class LazyScores(Mapping[str, Tensor]):
    """Name → score tensor, computed on access by ``fn(name, tensors[name])`` and never stored.

    Magnitude scores of 100M weights would otherwise be a second full copy of the model; the global selection
    reads the scores in three passes, so ``fn`` must be deterministic. ``chunk_score(chunk, out)``, given when
    the score is element-wise (``|w|``), lets the global selection score a chunk at a time instead.
    """

    def __init__(
        self,
        tensors: Mapping[str, Tensor],
        fn: Callable[[str, Tensor], Tensor],
        chunk_score: ChunkScore | None = None,
    ):
        self._tensors = tensors
        self._fn = fn
        self.chunk_score = chunk_score

    def __getitem__(self, name: str) -> Tensor:
        return self._fn(name, self._tensors[name])

    def source(self, name: str) -> Tensor:
        """The tensor the scores of ``name`` are computed from (same shape)."""
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _abs_into(w: Tensor, out: Tensor) -> Tensor:
    if w.dtype != out.dtype:  # float16/bfloat16 weights, float32 scores: widened exactly, then made positive
        return out.copy_(w).abs_()
    return torch.abs(w, out=out)


def magnitude_scores(weights: Mapping[str, Tensor]) -> LazyScores:
    """``|w|``: the score of magnitude pruning (smallest magnitudes pruned first)."""
    return LazyScores(weights, lambda _name, w: w.detach().abs(), chunk_score=_abs_into)


# --------------------------------------------------------------------------------------------- helpers
def _score_dtype(t: Tensor) -> torch.dtype:
    # float16/bfloat16 widen exactly to float32; numpy cannot partition bfloat16.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _dead_to_inf(s: Tensor, alive: Tensor | None) -> Tensor:
    """Scores with pruned entries at +inf, in place when ``s`` is already a private copy."""
    if alive is not None:
        s.masked_fill_(~alive, float("inf"))
    return s


def _check_scores(name: str, s: Tensor) -> None:
    if torch.isnan(s).any():
        raise ValueError(f"scores of {name!r} contain NaN")


def _kth_values(rows: Tensor, k: Tensor) -> Tensor:
    """The ``k[i]``-th smallest value (1-based) of each row; ``rows`` is a private copy and may be reordered."""
    out = torch.empty(rows.shape[0], dtype=rows.dtype, device=rows.device)
    for kk in torch.unique(k).tolist():
        sel = (k == kk).nonzero().flatten()
        if rows.device.type == "cpu":
            # numpy's introselect is ~6x faster than torch.kthvalue on CPU and works in place.
            if sel.numel() == rows.shape[0]:
                arr = rows.numpy()
                arr.partition(kk - 1, axis=1)
                out[:] = rows[:, kk - 1]
            else:
                arr = rows[sel].numpy()
                arr.partition(kk - 1, axis=1)
                out[sel] = torch.from_numpy(arr[:, kk - 1].copy())
        else:
            out[sel] = torch.kthvalue(rows[sel], kk, dim=1).values
    return out


def _select_rows(scores: Tensor, alive: Tensor | None, k: Tensor, v: Tensor) -> Tensor:
    """Bool mask of the ``k[i]`` smallest survivors per row, given each row's k-th smallest value ``v[i]``."""
    vv = v.unsqueeze(1)
    chosen = scores < vv
    eq = scores == vv
    if alive is not None:
        chosen &= alive
        eq &= alive
    need = k - torch.count_nonzero(chosen, dim=1)
    n_eq = torch.count_nonzero(eq, dim=1)
    # Rows whose ties at v are all needed take them all; the others take the first `need` in index order.
    partial = (need < n_eq).nonzero().flatten()
    full = need >= n_eq
    chosen |= eq & full.unsqueeze(1)
    if partial.numel():
        if scores.shape[1] <= _VECTOR_TIE_ROW:
            eq_p = eq[partial]
            rank = eq_p.cumsum(dim=1, dtype=torch.int32)
            chosen[partial] |= eq_p & (rank <= need[partial].unsqueeze(1).to(torch.int32))
        else:
            for i, n in zip(partial.tolist(), need[partial].tolist()):
                idx = eq[i].nonzero().flatten()[: int(n)]
                chosen[i, idx] = True
    return chosen


def smallest_in_rows(scores: Tensor, k: Tensor | int, alive: Tensor | None = None, name: str = "tensor") -> Tensor:
    """Bool mask of the ``k[i]`` smallest surviving entries of each row of ``as_rows(scores)``.

    ``k`` is one count per row (or one int for all rows) with ``0 ≤ k[i] ≤`` survivors of row ``i``. Ties are
    broken by column index. Returns a mask of ``scores``' shape. O(n): one partition per distinct ``k``.
    """
    rows = as_rows(scores)
    arows = as_rows(check_mask(name, alive, scores.shape)) if alive is not None else None
    n_rows = rows.shape[0]
    k = torch.as_tensor(k, dtype=torch.int64).reshape(-1).to(rows.device)
    if k.numel() == 1 and n_rows != 1:
        k = k.expand(n_rows)
    if k.numel() != n_rows:
        raise ValueError(f"{name!r}: {k.numel()} counts for {n_rows} rows")
    n_alive = torch.count_nonzero(arows, dim=1) if arows is not None else torch.full_like(k, rows.shape[1])
    if bool((k < 0).any()) or bool((k > n_alive).any()):
        bad = int(((k < 0) | (k > n_alive)).nonzero()[0])
        raise ValueError(f"{name!r}: cannot prune {int(k[bad])} of the {int(n_alive[bad])} survivors of row {bad}")
    out = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
    todo = (k > 0).nonzero().flatten()
    if todo.numel():
        sub = rows if todo.numel() == n_rows else rows[todo]
        work = sub.to(_score_dtype(sub), copy=True)  # the one copy: partitioned in place
        sub_alive = None if arows is None else (arows if todo.numel() == n_rows else arows[todo])
        _check_scores(name, work)
        _dead_to_inf(work, sub_alive)
        v = _kth_values(work, k[todo])
        del work
        chosen = _select_rows(sub.to(_score_dtype(sub)), sub_alive, k[todo], v)
        if todo.numel() == n_rows:
            out = chosen
        else:
            out[todo] = chosen
    return out.reshape(scores.shape)


# --------------------------------------------------------------------------------------------- global scope
# Entries per chunk of the streaming passes: large enough that per-op overheads (and a multi-threaded op's
# start-up) stay small, small enough that a chunk's buffers are a rounding error beside the masks.
_CHUNK = 1 << 20
_DIGIT = 16  # bits of the radix digit counted per pass: a 65,536-bin histogram
_INT = {torch.float32: (torch.int32, 32), torch.float64: (torch.int64, 64)}


@dataclass(frozen=True)
class Threshold:
    """Where the ``k`` smallest surviving scores end: all ``below`` survivors with a score ``< value`` and the
    first ``ties`` (in flat order of the concatenation) of the ``equal`` survivors with a score ``== value``;
    ``below + ties = k``. ``negative``: some surviving score was negative (or a NaN with its sign bit set)."""

    value: float
    key: int  # the order key of ``value`` (see _order_keys)
    below: int
    ties: int
    equal: int
    negative: bool


Buffers = dict[tuple[torch.dtype, torch.device], Tensor]


def _streamed(stream: ScoreStream) -> Iterator[tuple[int, Tensor, Tensor | None]]:
    """``(position, tensor, alive)`` over one pass of ``stream``, masks checked against their tensors."""
    for pos, (t, alive) in enumerate(stream()):
        if alive is not None and alive.shape != t.shape:
            raise ValueError(f"mask of tensor {pos} has shape {tuple(alive.shape)}, its scores have {tuple(t.shape)}")
        yield pos, t, alive


def _tensor_chunks(
    t: Tensor, alive: Tensor | None, score: ChunkScore | None, buffers: Buffers
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """``(flat score chunk, flat alive chunk)`` of one streamed tensor, in flat order.

    Scores are computed chunk by chunk into one reused buffer when ``score`` is given, so a pass never holds more
    than a chunk of them; float16/bfloat16 scores are widened to float32 (exactly).
    """
    flat = t.detach().reshape(-1)
    a = None if alive is None else alive.reshape(-1)
    dtype = _score_dtype(flat)
    key = (dtype, flat.device)
    if (score is not None or flat.dtype != dtype) and key not in buffers:
        buffers[key] = torch.empty(_CHUNK, dtype=dtype, device=flat.device)
    for i in range(0, flat.numel(), _CHUNK):
        part = flat[i : i + _CHUNK]
        if score is not None:
            part = score(part, buffers[key][: part.numel()])
        elif part.dtype != dtype:
            part = buffers[key][: part.numel()].copy_(part)
        yield part, None if a is None else a[i : i + _CHUNK]


def _score_chunks(stream: ScoreStream, score: ChunkScore | None) -> Iterator[tuple[int, Tensor, Tensor, Tensor | None]]:
    """``(tensor position, tensor, flat score chunk, flat alive chunk)`` over one pass of ``stream``, in flat order
    (see :func:`_tensor_chunks`)."""
    buffers: Buffers = {}
    for pos, t, alive in _streamed(stream):
        for part, a in _tensor_chunks(t, alive, score, buffers):
            yield pos, t, part, a


def _magnitude_kernel(t: Tensor, alive: Tensor | None, score: ChunkScore | None) -> bool:
    """Whether the compiled kernels can do a pass over ``t`` (magnitude scores of a contiguous float32 CPU tensor,
    a bool mask or none): the common case of magnitude pruning, in one fused pass instead of several."""
    return (
        sums.kernels is not None
        and score is _abs_into
        and t.dtype == torch.float32
        and t.device.type == "cpu"
        and t.is_contiguous()
        and (alive is None or (alive.dtype == torch.bool and alive.is_contiguous()))
    )


def _kernel_digits(t: Tensor, alive: Tensor | None, level: int, prefix: int) -> Tensor:
    """:func:`_digit_histogram`'s counts (65,537 bins) for the magnitudes of one tensor, by the compiled kernel,
    split over threads."""
    assert sums.kernels is not None
    kernel = sums.kernels
    flat, a = t.detach().reshape(-1), None if alive is None else alive.reshape(-1)
    parts: dict[int, Tensor] = {}

    def work(i0: int, i1: int) -> None:
        out = parts[i0] = torch.zeros((1 << _DIGIT) + 1, dtype=torch.int64)
        mask = 0 if a is None else a.data_ptr() + i0
        kernel.f32_magnitude_digits(flat.data_ptr() + 4 * i0, mask, i1 - i0, level, prefix, out.data_ptr())

    sums.on_threads(work, flat.numel(), flat.numel())
    return torch.stack(list(parts.values())).sum(0)


def _kernel_keep(t: Tensor, alive: Tensor | None, bound: int) -> Tensor:
    """The survivors of one tensor whose magnitude's order key is at least ``bound``, by the compiled kernel."""
    assert sums.kernels is not None
    kernel = sums.kernels
    keep = torch.empty(t.shape, dtype=torch.bool)
    flat, a, out = t.detach().reshape(-1), None if alive is None else alive.reshape(-1), keep.view(-1)

    def work(i0: int, i1: int) -> None:
        mask = 0 if a is None else a.data_ptr() + i0
        kernel.f32_keep_from(flat.data_ptr() + 4 * i0, mask, i1 - i0, bound, out.data_ptr() + i0)

    sums.on_threads(work, flat.numel(), flat.numel())
    return keep


def _order_keys(s: Tensor, maybe_negative: bool = True) -> tuple[Tensor, bool]:
    """Signed integers in the order of the float scores ``s`` (float32 → int32, float64 → int64), −0.0 and +0.0
    mapped to the same key, and whether any was negative: a non-negative float's bit pattern already sorts like
    its value (the common case, e.g. magnitudes: no work); a negative one's magnitude bits are flipped (and
    shifted by one, so that −0.0 meets +0.0). ``maybe_negative=False`` skips the check."""
    bits = s.view(_INT[s.dtype][0])
    if not maybe_negative or bool(bits.min() >= 0):
        return bits, False
    sign = bits >> (_INT[s.dtype][1] - 1)  # −1 for negative floats, 0 otherwise
    return (bits ^ (sign & torch.iinfo(bits.dtype).max)) - sign, True


def _key_value(key: int, dtype: torch.dtype) -> float:
    """The float whose :func:`_order_keys` key is ``key`` (inverse of the map above)."""
    int_dtype, bits = _INT[dtype]
    raw = key if key >= 0 else (key - 1) ^ ((1 << (bits - 1)) - 1)
    return float(torch.tensor([raw], dtype=int_dtype).view(dtype)[0])


def _digit_histogram(
    stream: ScoreStream, score: ChunkScore | None, level: int, prefix: int, maybe_negative: bool = True
) -> tuple[Tensor, torch.dtype, bool]:
    """Counts of radix digit ``level`` (16 bits, from the top) of the survivors' keys whose higher digits
    equal ``prefix`` (level 0: of all survivors, the signed top digit offset to ``[0, 2^16)``), the scores'
    dtype and whether any score was negative (known not to be when ``maybe_negative`` is False)."""
    hist: Tensor | None = None
    dtype: torch.dtype | None = None
    negative = False
    bins = 1 << _DIGIT
    buffers: Buffers = {}

    def add(counts: Tensor, of: torch.dtype) -> None:
        nonlocal hist, dtype
        dtype = dtype or of
        if of != dtype:
            raise ValueError(f"scores mix {dtype} and {of}; give all tensors of a global unit one dtype")
        hist = counts if hist is None else hist.add_(counts)

    for _pos, t, live in _streamed(stream):
        if _magnitude_kernel(t, live, score) and level < 2:  # magnitudes are never negative
            add(_kernel_digits(t, live, level, prefix), torch.float32)
            continue
        for s, alive in _tensor_chunks(t, live, score, buffers):
            shift = _INT[s.dtype][1] - _DIGIT * (level + 1)
            key, neg = _order_keys(s, maybe_negative)
            negative |= neg
            if level == 0:
                digit = (key >> shift).add_(bins >> 1)  # the signed top digit, from [−2^15, 2^15) to [0, 2^16)
                if alive is not None:
                    digit.masked_fill_(alive.logical_not(), bins)  # counted in a last bin, then dropped
            else:
                match = torch.logical_not((key >> (shift + _DIGIT)) ^ prefix)  # faster than == on this many ints
                if alive is not None:
                    match &= alive
                digit = (key[match] >> shift) & (bins - 1)
            add(torch.bincount(digit, minlength=bins + 1), s.dtype)
    if hist is None or dtype is None:
        raise ValueError("global selection over no tensors")
    return hist[:bins], dtype, negative


def global_threshold(stream: ScoreStream, k: int, score: ChunkScore | None = None) -> Threshold:
    """The :class:`Threshold` of the ``k`` smallest surviving scores over all tensors of ``stream`` concatenated.

    Exact radix selection on the order-preserving integer keys of the float scores (docs/math.md §5): one pass counts
    the top 16 bits of every survivor's key, finds the bucket holding the k-th smallest and carries on with the
    next 16 bits inside that bucket only — two passes for float32 scores, four for float64. Memory: a 65,536-bin
    histogram and a chunk of keys; scores are never concatenated, so ``stream`` may read checkpoint shards one at
    a time. ``score`` (e.g. ``torch.abs`` with ``out``) turns chunks of the streamed tensors into scores.
    """
    if k < 0:
        raise ValueError(f"global: cannot prune {k} survivors")
    if k == 0:
        return Threshold(-math.inf, int(_order_keys(torch.tensor([-math.inf]))[0]), 0, 0, 0, True)
    rank, below, prefix, level, levels = k, 0, 0, 0, 1
    dtype, negative = torch.float32, False
    while level < levels:
        hist, dtype, neg = _digit_histogram(stream, score, level, prefix, level == 0 or negative)
        negative |= neg
        if level == 0:
            seen = int(hist.sum())
            if k > seen:
                raise ValueError(f"global: cannot prune {k} of the {seen} survivors")
            levels = _INT[dtype][1] // _DIGIT
        cum = hist.cumsum(0)
        digit = int(torch.searchsorted(cum, torch.tensor([rank], device=cum.device))[0])
        before = int(cum[digit - 1]) if digit else 0
        rank, below, equal = rank - before, below + before, int(hist[digit])
        prefix = digit - (1 << (_DIGIT - 1)) if level == 0 else (prefix << _DIGIT) | digit
        level += 1
    value = _key_value(prefix, dtype)
    if math.isnan(value):
        raise ValueError(f"global: the {k} smallest survivors include NaN scores")
    return Threshold(value, prefix, below, rank, equal, negative)


def global_masks(stream: ScoreStream, k: int, score: ChunkScore | None = None) -> Iterator[Tensor]:
    """Bool masks of the survivors left when the ``k`` smallest surviving scores of ``stream`` are pruned, one per
    streamed tensor (its shape, True = survives), in order. Ties at the threshold go lowest flat index first.

    Three passes over ``stream`` for float32 scores (:func:`global_threshold`'s two, then one writing the masks
    chunk by chunk); the extra memory is the masks themselves (a quarter of float32 scores) and a few chunks.
    Raises ``ValueError`` if the pruned count would differ from ``k`` (negative NaN scores rank unpredictably).
    """
    th = global_threshold(stream, k, score)
    # Usually every survivor at the threshold goes (continuous scores: there is one), and the mask is one compare
    # per chunk; otherwise the first `ties` of them in flat order are found chunk by chunk.
    ties, take_equal = th.ties, 0 < th.ties == th.equal
    bound = th.key + take_equal  # the smallest key kept
    pruned = 0
    scratch: Buffers = {}
    buffers: Buffers = {}
    for _pos, t, live in _streamed(stream):
        if not th.negative and (take_equal or not ties) and _magnitude_kernel(t, live, score):
            yield _kernel_keep(t, live, bound)
            continue
        keep = torch.empty(t.shape, dtype=torch.bool, device=t.device)
        offset = 0
        for s, alive in _tensor_chunks(t, live, score, buffers):
            out = keep.view(-1)[offset : offset + s.numel()]
            offset += s.numel()
            if th.negative:
                torch.logical_not(s <= th.value if take_equal else s < th.value, out=out)  # NaN is never pruned
            else:
                # All keys are bit patterns of non-negative floats (or NaN): key >= bound in integer arithmetic,
                # about twice as fast as a float compare writing bools.
                int_dtype, width = _INT[s.dtype]
                buf = scratch.get((int_dtype, s.device))
                if buf is None or buf.numel() < s.numel():
                    buf = scratch[(int_dtype, s.device)] = torch.empty(s.numel(), dtype=int_dtype, device=s.device)
                d = torch.sub(s.view(int_dtype), bound, out=buf[: s.numel()])
                out.copy_(d.bitwise_right_shift_(width - 1).bitwise_not_())  # −1 (True) where key >= bound, else 0
            if alive is not None:
                out &= alive
            if ties and not take_equal:
                at = s == th.value
                if alive is not None:
                    at &= alive
                idx = at.nonzero().flatten()[:ties]
                out[idx] = False
                ties -= idx.numel()
            if th.negative:  # a negative NaN was counted among the smallest keys, and is not pruned here
                pruned += (s.numel() if alive is None else int(torch.count_nonzero(alive))) - int(
                    torch.count_nonzero(out)
                )
        yield keep
    if th.negative and pruned != k:
        raise ValueError(f"global selection pruned {pruned} of {k}: the scores contain NaN")


def score_stream(
    scores: Mapping[str, Tensor], alive: Mapping[str, Tensor | None], names: list[str]
) -> tuple[ScoreStream, ChunkScore | None]:
    """A :data:`ScoreStream` over ``scores`` (element-wise :class:`LazyScores` are scored chunk by chunk)."""
    if isinstance(scores, LazyScores) and scores.chunk_score is not None:
        lazy = scores
        return (lambda: ((lazy.source(n), alive.get(n)) for n in names)), lazy.chunk_score
    return (lambda: ((scores[n], alive.get(n)) for n in names)), None


def _global_keep(
    scores: Mapping[str, Tensor], k: int, alive: Mapping[str, Tensor | None] | None = None
) -> dict[str, Tensor]:
    """Survivor masks after pruning the ``k`` smallest surviving scores over all tensors (see :func:`global_masks`)."""
    names = list(scores)
    if not names:
        raise ValueError("global selection over no tensors")
    shapes = {n: scores.source(n).shape if isinstance(scores, LazyScores) else scores[n].shape for n in names}
    live = match_masks(shapes, alive or {}, what="scored tensor")
    stream, score = score_stream(scores, live, names)
    return dict(zip(names, global_masks(stream, k, score)))


def select_keep(
    scores: Mapping[str, Tensor],
    counts: Counts,
    scope: Scope,
    alive: Mapping[str, Tensor | None] | None = None,
) -> dict[str, Tensor]:
    """Survivor masks after pruning, per unit of ``scope``, the ``counts[unit]`` smallest surviving scores.

    ``counts`` follows the scope convention of :mod:`pqprune.measure`: ``{"global": c}``; ``{name: c}`` per
    tensor; or ``{name: int64 tensor [rows]}`` per neuron. Returns name → bool mask, True = survives; each is a
    subset of ``alive[name]`` (all True where absent). The global scope streams (:func:`global_masks`): its only
    large allocation is the returned masks.
    """
    check_scope(scope)
    alive = dict(alive or {})
    if scope == "global":
        unknown = set(counts) - {GLOBAL}
        if unknown:
            raise ValueError(f"global scope takes one count under {GLOBAL!r}, got units {sorted(unknown)}")
        return _global_keep(scores, int(counts.get(GLOBAL, 0)), alive)
    chosen = _select_units(scores, counts, scope, alive)
    return {n: _minus(alive.get(n), c) for n, c in chosen.items()}


def _minus(alive: Tensor | None, chosen: Tensor) -> Tensor:
    """Survivors not in ``chosen`` (all entries survive when ``alive`` is None)."""
    return ~chosen if alive is None else alive & ~chosen


def _select_units(
    scores: Mapping[str, Tensor], counts: Counts, scope: Scope, alive: Mapping[str, Tensor | None]
) -> dict[str, Tensor]:
    """Layer or neuron scope: name → bool mask of the entries to prune now (see :func:`select_keep`)."""
    unknown = set(counts) - set(scores)
    if unknown:
        raise ValueError(f"counts name units that have no scores: {sorted(unknown)}")
    match_names(scores, alive, what="scored tensor")
    out = {}
    for name in scores:
        s = scores[name]
        c = counts.get(name, 0)
        a = alive.get(name)
        if scope == "layer":
            a = None if a is None else check_mask(name, a, s.shape).reshape(1, -1)
            flat = smallest_in_rows(s.reshape(1, -1), int(c), a, name)
            out[name] = flat.reshape(s.shape)
        else:
            out[name] = smallest_in_rows(s, c, a, name)
    return out


def select_prune(
    scores: Mapping[str, Tensor],
    counts: Counts,
    scope: Scope,
    alive: Mapping[str, Tensor | None] | None = None,
) -> dict[str, Tensor]:
    """Which survivors to prune: name → bool mask, True = prune now; the complement among survivors of
    :func:`select_keep`, which takes the same arguments."""
    check_scope(scope)
    alive = dict(alive or {})
    if scope != "global":
        return _select_units(scores, counts, scope, alive)
    keep = select_keep(scores, counts, scope, alive)
    return {n: _minus(alive.get(n), m) for n, m in keep.items()}
