"""Exact-k selection: prune exactly ``c`` survivors per unit, the ``c`` smallest by score (docs/math.md §5).

Units follow docs/math.md §1: ``global`` (all tensors concatenated in mapping order), ``layer`` (one tensor) and
``neuron`` (one row of ``W.reshape(out, -1)``). Within a unit the ``c`` survivors with the smallest scores are
pruned; equal scores are broken by flat index (lower index pruned first), so the result is deterministic and
the number pruned always equals the number decided — unlike a "prune everything below a threshold" rule,
which prunes nothing or too much on ties.

Algorithm, O(n) per unit: find the c-th smallest surviving score ``v`` by partition (numpy's introselect on
CPU, ``torch.kthvalue`` elsewhere), take every survivor strictly below ``v``, then fill the remaining count
from the survivors equal to ``v`` in flat-index order. No full sort and no ``torch.quantile`` (which refuses
more than 2^24 elements). Memory: the global scope makes one float copy of all scores (partitioned in place)
and frees it before the per-tensor compare pass, so the peak extra is about one copy of the weights plus the
bool masks.

Nothing here knows of models, methods or training: inputs are tensors and counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor

from pqprune.measure.weights import GLOBAL, Scope, as_rows, check_mask, check_scope, match_masks

Counts = Mapping[str, "int | Tensor"]

# Above this row length, ties are filled row by row with nonzero() instead of a vectorised cumsum, so a single
# huge row never needs an int64 cumsum of its full length.
_VECTOR_TIE_ROW = 1 << 16


class LazyScores(Mapping[str, Tensor]):
    """Name → score tensor, computed on access by ``fn(tensors[name])`` and never stored.

    Magnitude scores of 100M weights would otherwise be a second full copy of the model; the global selection
    reads each score tensor twice (partition pass, compare pass), so ``fn`` must be deterministic.
    """

    def __init__(
        self,
        tensors: Mapping[str, Tensor],
        fn: Callable[[str, Tensor], Tensor],
        dtype: torch.dtype | None = None,
        out_fn: Callable[[Tensor, Tensor], object] | None = None,
    ):
        self._tensors = tensors
        self._fn = fn
        self._out_fn = out_fn  # optional fused form: writes fn's result into a given tensor
        self.dtype = dtype  # of the scores; None: float32, or float64 for float64 sources

    def __getitem__(self, name: str) -> Tensor:
        return self._fn(name, self._tensors[name])

    def write(self, name: str, out: Tensor) -> None:
        """Scores of ``name``, flattened, into ``out`` (no temporary when ``out_fn`` was given)."""
        src = self._tensors[name]
        if self._out_fn is not None:
            self._out_fn(src, out.view(src.shape))
        else:
            out.copy_(self[name].reshape(-1))

    def source(self, name: str) -> Tensor:
        """The tensor the scores of ``name`` are computed from (same shape)."""
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def magnitude_scores(weights: Mapping[str, Tensor]) -> LazyScores:
    """``|w|``: the score of magnitude pruning (smallest magnitudes pruned first)."""
    return LazyScores(weights, lambda _name, w: w.detach().abs(), out_fn=lambda w, out: torch.abs(w.detach(), out=out))


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


def _meta(scores: Mapping[str, Tensor], name: str) -> tuple[torch.Size, torch.dtype, torch.device]:
    """Shape, score dtype and device of one score tensor, without computing lazy scores."""
    if isinstance(scores, LazyScores):
        t = scores.source(name)
        return t.shape, scores.dtype or _score_dtype(t), t.device
    t = scores[name]
    return t.shape, _score_dtype(t), t.device


def smallest_global(
    scores: Mapping[str, Tensor], k: int, alive: Mapping[str, Tensor | None] | None = None
) -> dict[str, Tensor]:
    """Bool masks of the ``k`` smallest surviving scores over all tensors concatenated in mapping order.

    Ties are broken by the flat index of the concatenation (earlier tensor first, then lower index). Each
    score tensor is read twice (``scores`` may be a :class:`LazyScores`); one float copy of all scores exists at
    a time and is freed before the compare pass.
    """
    names = list(scores)
    if not names:
        raise ValueError("global selection over no tensors")
    meta = {n: _meta(scores, n) for n in names}
    live = match_masks({n: meta[n][0] for n in names}, alive or {}, what="scored tensor")
    n_alive = sum(int(torch.count_nonzero(a)) if (a := live.get(n)) is not None else meta[n][0].numel() for n in names)
    if not 0 <= k <= n_alive:
        raise ValueError(f"global: cannot prune {k} of the {n_alive} survivors")
    if k == 0:
        return {n: torch.zeros(meta[n][0], dtype=torch.bool, device=meta[n][2]) for n in names}

    # Pass 1: the one concatenated copy, dead entries at +inf, partitioned in place for the k-th value.
    # NaN scores are not checked for (a full extra pass): they compare false with everything, sort last in
    # the partition, and so are never selected, like pruned entries.
    dtype = torch.float64 if any(m[1] == torch.float64 for m in meta.values()) else torch.float32
    device = meta[names[0]][2]
    buf = torch.empty(sum(m[0].numel() for m in meta.values()), dtype=dtype, device=device)
    off = 0
    for n in names:
        size = meta[n][0].numel()
        part = buf[off : off + size]
        if isinstance(scores, LazyScores):
            scores.write(n, part)
        else:
            s = scores[n]
            if s.dtype == torch.float64 and dtype != torch.float64:
                raise ValueError(f"scores of {n!r} are float64 but were declared {dtype}")
            part.copy_(s.reshape(-1))
            del s
        _dead_to_inf(part, None if (a := live.get(n)) is None else a.reshape(-1))
        off += size
    if buf.device.type == "cpu":
        arr = buf.numpy()
        arr.partition(k - 1)
        v = float(arr[k - 1])
        del arr
    else:
        v = float(torch.kthvalue(buf, k).values)
    del buf

    # Pass 2, tensor by tensor: survivors strictly below v; ties at v are kept only for the tensors that
    # hold some (usually one), then taken in flat-index order until k are selected.
    below: dict[str, Tensor] = {}
    ties: dict[str, tuple[Tensor, int]] = {}
    need = k
    for n in names:
        s = scores[n]
        b, e = s < v, s == v
        del s
        a = live.get(n)
        if a is not None:
            b &= a
            e &= a
        below[n] = b
        n_e = int(torch.count_nonzero(e))
        if n_e:
            ties[n] = (e, n_e)
        del e
        need -= int(torch.count_nonzero(b))
    for n, (e, n_e) in ties.items():
        if need <= 0:
            break
        if n_e <= need:
            below[n] |= e
            need -= n_e
        else:
            idx = e.reshape(-1).nonzero().flatten()[:need]
            below[n].view(-1)[idx] = True
            need = 0
    del ties
    if need != 0:  # cannot happen: v is the k-th smallest survivor
        raise RuntimeError(f"global selection left {need} of {k} unselected")
    return below


def select_prune(
    scores: Mapping[str, Tensor],
    counts: Counts,
    scope: Scope,
    alive: Mapping[str, Tensor | None] | None = None,
) -> dict[str, Tensor]:
    """Which survivors to prune: per unit of ``scope``, the ``counts[unit]`` smallest scores.

    ``counts`` follows the scope convention of :mod:`pqprune.measure`: ``{"global": c}``; ``{name: c}`` per
    tensor; or ``{name: int64 tensor [rows]}`` per neuron. Returns name → bool mask, True = prune now.
    """
    check_scope(scope)
    alive = dict(alive or {})
    if scope == "global":
        unknown = set(counts) - {GLOBAL}
        if unknown:
            raise ValueError(f"global scope takes one count under {GLOBAL!r}, got units {sorted(unknown)}")
        return smallest_global(scores, int(counts.get(GLOBAL, 0)), alive)
    unknown = set(counts) - set(scores)
    if unknown:
        raise ValueError(f"counts name units that have no scores: {sorted(unknown)}")
    out = {}
    for name in scores:
        s = scores[name]
        c = counts.get(name, 0)
        if scope == "layer":
            flat = smallest_in_rows(
                s.reshape(1, -1), int(c), None if (a := alive.get(name)) is None else a.reshape(1, -1), name
            )
            out[name] = flat.reshape(s.shape)
        else:
            out[name] = smallest_in_rows(s, c, alive.get(name), name)
    return out
