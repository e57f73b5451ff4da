"""Per-row power sums ``S_s = Σ|w_i|^s`` of the surviving weights, in one read, accumulated in float64.

The PQ Index, Hoyer and l_q index are functions of power sums. Per-row sums are a sufficient statistic for all
three scopes (docs/math.md §2), so :func:`power_sums` reads the weights once, whatever the set of exponents, and
:func:`reduce_scope` sums rows into layers or the whole model. Sums are accumulated in float64: float32 norms over
very large vectors are badly wrong on CPU.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

from pqprune.measure.weights import GLOBAL, Masks, Scope, WeightSource, as_rows, check_masks, check_scope, named_weights

try:  # compiled at install when a C compiler is there (pyproject.toml); else PyTorch operations do the same sums
    from pqprune.measure import _kernels

    kernels: ModuleType | None = _kernels
except ImportError:  # pragma: no cover - depends on the installation
    kernels = None

KERNEL_EXPONENTS = frozenset({0.5, 1.0, 2.0})
"""Exponents the compiled float32 kernel sums (the PQ Index pairs of the papers, Hoyer's); others use PyTorch."""
# Below this many entries work stays on the calling thread: handing it to another costs more than it saves.
_SPLIT_MIN = 1 << 20

# Elements handled at once: a block of 256K float32 (1 MB) stays in the L2 cache across the few element-wise
# passes made over it, and is large enough to amortise Python overhead (measured: 1M-entry blocks are ~15%
# slower, 64K-entry blocks ~70% slower on 100M weights).
_CHUNK = 1 << 18


# --------------------------------------------------------------------------------------------- one pass
@dataclass
class RowStats:
    """Per-row statistics of one tensor: survivor counts and float64 power sums ``Σ|w|^s`` for each s."""

    count: Tensor  # float64 [rows]
    sums: dict[float, Tensor]  # exponent -> float64 [rows]

    def total(self) -> RowStats:
        """The same statistics with all rows summed into one."""
        return RowStats(self.count.sum().reshape(1), {s: v.sum().reshape(1) for s, v in self.sums.items()})


class UnitStats(Mapping[str, RowStats]):
    """Name → :class:`RowStats` for the units of one scope, held as the rows of all units concatenated.

    Formulas run once over the concatenation (:func:`map_units`) instead of once per unit; a model of 60 layers
    then costs three tensor ops per formula, not 180. Looking a unit up gives views of its rows.
    """

    def __init__(self, names: Sequence[str], sizes: Sequence[int], joined: RowStats) -> None:
        self.names, self.sizes, self.joined = list(names), list(sizes), joined
        self._where: dict[str, tuple[int, int]] | None = None  # name → row range, made on first lookup

    def __getitem__(self, name: str) -> RowStats:
        if self._where is None:
            ends = itertools.accumulate(self.sizes)
            self._where = {n: (end - size, end) for n, size, end in zip(self.names, self.sizes, ends)}
        a, b = self._where[name]
        return RowStats(self.joined.count[a:b], {e: v[a:b] for e, v in self.joined.sums.items()})

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def split(self, values: Tensor) -> dict[str, Tensor]:
        """Per-row ``values`` (one per row of the concatenation) cut back into name → rows of that unit."""
        return dict(zip(self.names, values.split(self.sizes)))


def _block_sums(a: Tensor, exps: Sequence[float], out: Mapping[float, Tensor], scratch: Tensor) -> None:
    """Row sums of ``a**s`` into ``out[s]``, for one cache-sized block ``a`` of magnitudes (overwritten).

    The block is summed in its own precision: a pairwise sum over at most ``_CHUNK`` entries, relative error
    ~1e-7. Callers accumulate block sums in float64, so the total is as good as a float64 computation whatever
    the tensor size (a float64 reduction of a float32 block would first convert it and costs 20× more). The
    square root, the costliest power (about eight reads of the block on CPU), is taken last and in place.
    """
    logs: Tensor | None = None
    for s in sorted(exps, key=lambda e: e == 0.5):
        if s == 1.0:
            powered = a
        elif s == 0.5:
            powered = a.sqrt_()
        elif s == 2.0:
            powered = torch.mul(a, a, out=scratch)
        else:
            # exp(s·log a) is 4× faster than pow (not vectorised on CPU), and log a is shared by all exponents;
            # log 0 = −inf gives exactly 0, NaN and Inf propagate to the sum.
            if logs is None:
                logs = torch.log(a)
            powered = torch.exp(torch.mul(logs, s, out=scratch), out=scratch)
        torch.sum(powered, dim=1, out=out[s])


def _check_exponents(exponents: Iterable[float]) -> list[float]:
    exps = sorted({float(s) for s in exponents})
    for s in exps:
        if not s > 0:
            raise ValueError(f"power-sum exponents must be > 0, got {s}")
    return exps


_pool: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of its parent's threads


if hasattr(os, "register_at_fork"):  # POSIX only; elsewhere nothing forks
    os.register_at_fork(after_in_child=_forget_pool)


def _workers() -> ThreadPoolExecutor:
    """Threads kept for the kernels' calls: starting one per call is a visible part of measuring a ResNet18-sized
    model (bench/bench_measures.py)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="pqprune")
    return _pool


def row_bounds(shapes: Sequence[tuple[int, int]], parts: int) -> list[int]:
    """Row indices cutting the rows of matrices of ``shapes`` (rows, cols), laid end to end, into ``parts`` ranges
    of about equal entries: ``[0, …, total rows]``."""
    numel = sum(r * c for r, c in shapes)
    bounds, first, seen = [0], 0, 0  # first row and first entry of the current matrix
    targets = iter([numel * i // parts for i in range(1, parts)])
    target = next(targets, None)
    for rows, cols in shapes:
        while target is not None and cols and target < seen + rows * cols:
            bounds.append(max(bounds[-1], first + -(-(target - seen) // cols)))
            target = next(targets, None)
        first, seen = first + rows, seen + rows * cols
    bounds += [first] * (parts + 1 - len(bounds))
    return bounds


def on_threads(
    work: Callable[[int, int], None], n_rows: int, numel: int, bounds: Callable[[int], list[int]] | None = None
) -> None:
    """``work(r0, r1)`` over row ranges covering ``n_rows`` rows: split over PyTorch's thread count when the rows
    hold at least ``_SPLIT_MIN`` entries (for work that releases the GIL, as the compiled kernels do), into ranges
    of equal rows, or at ``bounds(parts)`` when given (e.g. :func:`row_bounds`). The calling thread takes the first
    range; an exception in any range is raised here."""
    parts = max(1, min(torch.get_num_threads(), n_rows) if numel >= _SPLIT_MIN else 1)
    cuts = [n_rows * i // parts for i in range(parts + 1)] if bounds is None else bounds(parts)
    others = [_workers().submit(work, a, b) for a, b in itertools.pairwise(cuts[1:]) if a < b]
    try:
        work(cuts[0], cuts[1])
    finally:
        for f in others:
            f.result()


def _kernel_sums(matrices: Sequence[tuple[Tensor, Tensor | None]], exps: Sequence[float]) -> Tensor | None:
    """Per-row survivor counts and sums of √|w|, |w| and w² (float64 [rows, 4]) of all ``matrices`` (matrix, mask)
    with their rows laid end to end, by one call of the float32 kernel per thread; None where it does not apply
    (no kernel, an exponent other than 0.5, 1 and 2, a matrix that is not a contiguous float32 CPU one)."""
    if kernels is None or not set(exps) <= KERNEL_EXPONENTS:
        return None
    for rows, mrows in matrices:
        if rows.dtype != torch.float32 or not kernel_applies(rows, mrows):
            return None
    table = torch.tensor(
        [[w.data_ptr(), 0 if m is None else m.data_ptr(), w.shape[0], w.shape[1]] for w, m in matrices],
        dtype=torch.int64,
    ).reshape(-1, 4)
    shapes = [(w.shape[0], w.shape[1]) for w, _ in matrices]
    n_rows, numel = sum(r for r, _ in shapes), sum(r * c for r, c in shapes)
    out = torch.empty((n_rows, 4), dtype=torch.float64)
    kernel, n = kernels, len(matrices)

    def work(r0: int, r1: int) -> None:
        kernel.f32_many_row_sums(table.data_ptr(), n, r0, r1, out.data_ptr())

    on_threads(work, n_rows, numel, lambda parts: row_bounds(shapes, parts))
    return out


KERNEL_COLUMNS = {0.5: 1, 1.0: 2, 2.0: 3}
"""Column of each exponent's sums in the kernels' [rows, 4] output (column 0: survivor counts)."""


def _from_kernel(out: Tensor, exps: Sequence[float]) -> RowStats:
    return RowStats(out[:, 0], {s: out[:, KERNEL_COLUMNS[s]] for s in exps})


def _row_power_sums(rows: Tensor, mrows: Tensor | None, exps: Sequence[float], name: str) -> RowStats:
    """:func:`power_sums_of` for one matrix (any dtype, device and exponents)."""
    if (fast := _kernel_sums([(rows, mrows)], exps)) is not None:
        return _checked(_from_kernel(fast, exps), name)
    n_rows, n_cols = rows.shape
    if rows.dtype in HALF_DTYPES and (both := kernel_half_rows(rows, mrows, rows.dtype, exps, name)) is not None:
        return both[1]
    count = _row_counts(rows, mrows)
    if n_rows == 0 or n_cols == 0:
        return RowStats(count, {s: torch.zeros(n_rows, dtype=torch.float64, device=rows.device) for s in exps})
    compute = torch.float64 if rows.dtype == torch.float64 else torch.float32
    # Blocks of whole rows, or column slices of one row when a row is longer than a chunk. Scratch buffers are
    # reused for every block: allocating (and first touching) fresh memory per block costs more than the maths.
    row_step = max(1, _CHUNK // n_cols)
    col_step = min(n_cols, _CHUNK)
    n_slices = -(-n_cols // col_step)
    buf = torch.empty((row_step, col_step), dtype=compute, device=rows.device)
    scratch = torch.empty_like(buf)
    # partial[s][slice, row]: the block sums, one float64 summation over slices at the end.
    partial = {s: torch.empty((n_slices, n_rows), dtype=compute, device=rows.device) for s in exps}
    for r0 in range(0, n_rows, row_step):
        r1 = min(n_rows, r0 + row_step)
        for j, c0 in enumerate(range(0, n_cols, col_step)):
            c1 = min(n_cols, c0 + col_step)
            block = rows[r0:r1, c0:c1]
            a = buf[: r1 - r0, : c1 - c0]
            if block.dtype == compute:
                torch.abs(block, out=a)
            else:
                a.copy_(block).abs_()
            if mrows is not None:
                # masked_fill, not a product: a pruned NaN must not poison the sums.
                a.masked_fill_(mrows[r0:r1, c0:c1].logical_not(), 0.0)
            _block_sums(a, exps, {s: partial[s][j, r0:r1] for s in exps}, scratch[: r1 - r0, : c1 - c0])
    return _checked(RowStats(count, {s: partial[s].sum(dim=0, dtype=torch.float64) for s in exps}), name)


def _row_counts(rows: Tensor, mrows: Tensor | None) -> Tensor:
    """float64 survivors per row."""
    if mrows is None:
        return torch.full((rows.shape[0],), float(rows.shape[1]), dtype=torch.float64, device=rows.device)
    return mrows.sum(dim=1, dtype=torch.float64)


def _checked(stats: RowStats, name: str) -> RowStats:
    """``stats`` after checking that no sum is NaN or infinite (a NaN or infinite survivor makes its row's sums so)."""
    if not all(bool(torch.isfinite(v).all()) for v in stats.sums.values()):
        raise ValueError(f"tensor {name!r} has NaN or infinite surviving entries")
    return stats


def power_sums_of(
    weights: Mapping[str, Tensor], exponents: Iterable[float], masks: Mapping[str, Tensor | None] | None = None
) -> Mapping[str, RowStats]:
    """Per-row ``Σ|w_i|^s`` over survivors of every tensor in ``weights`` (name → tensor, taken as given), in one
    read of the weights.

    Each tensor is read in cache-sized blocks; a block's powers are taken and summed in the weight's precision
    (float32 at least; float16/bfloat16 are widened) and block sums are accumulated in float64, so a 100M-entry
    tensor agrees with a float64 computation to ~1e-7 relative error (a float32 norm over the whole tensor is
    off by tens of percent: docs/math.md §2). Raises ``ValueError`` naming the tensor if a surviving entry
    is NaN or infinite.
    """
    exps = _check_exponents(exponents)
    masks = masks or {}
    matrices = {n: (as_rows(w), None if (m := masks.get(n)) is None else as_rows(m)) for n, w in weights.items()}
    if (fast := _kernel_sums(list(matrices.values()), exps)) is not None:
        # all tensors in one kernel call, their rows end to end: no per-tensor calls or concatenation afterwards
        sizes = [rows.shape[0] for rows, _ in matrices.values()]
        units = UnitStats(list(matrices), sizes, _from_kernel(fast, exps))
        # every column sums non-negative terms (counts, powers): the total is finite exactly when each row's is
        if not math.isfinite(float(fast.sum())):
            for n in units:  # raises naming the first tensor with a NaN or infinite survivor
                _checked(units[n], n)
        return units
    return {n: _row_power_sums(rows, mrows, exps, n) for n, (rows, mrows) in matrices.items()}


def row_power_sums(w: Tensor, exponents: Iterable[float], mask: Tensor | None = None, name: str = "tensor") -> RowStats:
    """Per-row ``Σ|w_i|^s`` over survivors of one tensor (see :func:`power_sums_of`)."""
    return power_sums_of({name: w}, exponents, {name: mask})[name]


def power_sums(obj: WeightSource, exponents: Iterable[float], masks: Masks | None = None) -> Mapping[str, RowStats]:
    """Per-row power sums of every prunable tensor of ``obj`` (one read of all weights)."""
    weights = named_weights(obj)
    return power_sums_of(weights, exponents, check_masks(weights, masks))


def join(stats: Mapping[str, RowStats]) -> UnitStats:
    """The units of ``stats`` concatenated, for vectorised formulas (no copy if already a :class:`UnitStats`)."""
    if isinstance(stats, UnitStats):
        return stats
    names = list(stats)
    parts = list(stats.values())
    sizes = [int(s.count.shape[0]) for s in parts]
    if len(parts) == 1:
        return UnitStats(names, sizes, parts[0])
    joined = RowStats(
        torch.cat([s.count for s in parts]), {e: torch.cat([s.sums[e] for s in parts]) for e in parts[0].sums}
    )
    return UnitStats(names, sizes, joined)


def reduce_scope(stats: Mapping[str, RowStats], scope: Scope) -> UnitStats:
    """Unit statistics at a scope: rows as they are (neuron), summed per tensor (layer) or over all (global)."""
    check_scope(scope)
    units = join(stats)
    if scope == "neuron":
        return units
    if scope == "global":
        return UnitStats([GLOBAL], [1], units.joined.total())
    # Per-tensor totals of all tensors at once: one segmented sum over the concatenated rows, all statistics
    # side by side.
    joined = units.joined
    stacked = torch.stack([joined.count, *joined.sums.values()], dim=1)
    lengths = torch.tensor(units.sizes, device=stacked.device)
    totals = torch.segment_reduce(stacked, "sum", lengths=lengths, axis=0, unsafe=True).T
    return UnitStats(units.names, [1] * len(units), RowStats(totals[0], dict(zip(joined.sums, totals[1:]))))


def map_units(units: Mapping[str, RowStats], fn: Callable[[RowStats], Tensor]) -> dict[str, Tensor]:
    """``fn`` (a per-row formula such as :func:`pq_from_sums`) applied to all units in one vectorised call."""
    joined = join(units)
    return joined.split(fn(joined.joined))


# --------------------------------------------------------------------------------------------- 16-bit floats
HALF_DTYPES = (torch.float16, torch.bfloat16)
HALF_BINS = 1 << 15  # magnitudes of a 16-bit float: its bit patterns without the sign


@functools.lru_cache(maxsize=4)
def half_values(dtype: torch.dtype) -> Tensor:
    """The float64 magnitude of each of the 2^15 sign-less bit patterns of a 16-bit float ``dtype`` (ascending:
    non-negative floats sort like their bit patterns; the last patterns are Inf and NaN)."""
    return torch.arange(HALF_BINS, dtype=torch.int16).view(dtype).to(torch.float64)


def _nonfinite_from(dtype: torch.dtype) -> int:
    """The first bit pattern of a 16-bit float ``dtype`` that is Inf (Inf and NaN follow it)."""
    return int(torch.tensor(math.inf, dtype=dtype).view(torch.int16))


def checked_counts(counts: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """``counts`` after checking that no survivor was NaN or infinite (the bit patterns from Inf on)."""
    if bool(counts[_nonfinite_from(dtype) :].any()):
        raise ValueError(f"tensor {name!r} has NaN or infinite surviving entries")
    return counts


def kernel_applies(bits: Tensor, mask: Tensor | None) -> bool:
    """Whether the compiled kernels can read ``bits`` (and ``mask``): on CPU, contiguous, a bool mask."""
    return (
        kernels is not None
        and bits.device.type == "cpu"
        and bits.is_contiguous()
        and (mask is None or (mask.dtype == torch.bool and mask.is_contiguous()))
    )


@functools.lru_cache(maxsize=8)
def _power_tables(dtype: torch.dtype, exps: tuple[float, ...]) -> Tensor:
    """float32 [len(exps), 2^15]: each magnitude of ``dtype`` to each power (Inf and NaN patterns give 0: the
    histogram reports them)."""
    values = half_values(dtype)
    finite = torch.isfinite(values)
    return torch.stack([torch.where(finite, values, 0.0) ** s for s in exps]).to(torch.float32).contiguous()


def kernel_half_rows(
    rows: Tensor, mrows: Tensor | None, dtype: torch.dtype, exps: Sequence[float], name: str
) -> tuple[Tensor, RowStats] | None:
    """:func:`half_rows` by the compiled kernel (√|w|, |w| and w² computed, other powers looked up per magnitude), or
    None where it does not apply."""
    bits = rows.view(torch.int16)
    if not kernel_applies(bits, mrows):
        return None
    assert kernels is not None
    n_rows, n_cols = rows.shape
    computed = set(exps) <= KERNEL_EXPONENTS  # by f32_row_sums; other powers looked up in tables
    tables = None if computed else _power_tables(dtype, tuple(exps))
    out = torch.empty((n_rows, 4 if computed else len(exps)), dtype=torch.float64)
    counts = torch.zeros(HALF_BINS, dtype=torch.int64)
    pruned = kernels.half_row_sums(
        bits.data_ptr(),
        0 if mrows is None else mrows.data_ptr(),
        n_rows,
        n_cols,
        dtype == torch.bfloat16,
        0 if tables is None else tables.data_ptr(),
        0 if tables is None else len(exps),
        out.data_ptr(),
        counts.data_ptr(),
    )
    counts[0] -= pruned
    stats = _from_kernel(out, exps) if computed else RowStats(_row_counts(rows, mrows), dict(zip(exps, out.unbind(1))))
    return checked_counts(counts, dtype, name), _checked(stats, name)
