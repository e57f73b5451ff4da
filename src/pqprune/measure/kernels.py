"""CPU kernels compiled with Numba: fused power sums (exponents 0.5, 1, 2) and the in-place mask multiply.

Why it exists: the PQ Index of the default pair needs ``Σ|w|^0.5`` and ``Σ|w|`` per row. With PyTorch ops that is
four passes over each cache-sized block (abs, sum, sqrt, sum) and ~1,500 small op calls on 100M weights: 5.7× the
time of one read of the weights (``bench/bench_measures.py``). One fused loop reads each weight once and takes all
three powers on the way. Everything else (other exponents, float16/bfloat16/float64, CUDA, strided tensors, small
inputs) goes through the PyTorch path of :func:`pqprune.measure.power_sums_of`, which stays the reference.

Numerics are those of the PyTorch path: powers in float32, float32 partial sums over at most ``_INNER`` entries of
a row (vectorised, so each SIMD lane sums a few hundred), partial sums accumulated in float64.

Threads: one Numba ``parallel`` call per measurement walks a table of row blocks of all the tensors (by address),
one contiguous group of blocks per thread. Handing blocks to Python threads one call at a time cost ~35 µs per
block (a ResNet18 took 1.7× longer), and one parallel call per tensor is slow under Numba's portable threading
layer (workqueue: 5 ms instead of 2.3 ms for a ResNet18). Numba picks its threading layer (TBB, GNU OpenMP or
workqueue); our calls hold a lock (workqueue aborts on concurrent launches) and a process forked after a parallel
call runs the serial kernel (GNU OpenMP aborts a forked child's parallel launch).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

FUSED_EXPONENTS = frozenset({0.5, 1.0, 2.0})
# Below this many entries (all tensors of one call together) the PyTorch path is as fast, and importing Numba
# (~0.35 s) and loading the compiled kernel from its cache (~0.3 s; ~3 s to compile on a machine's first use) is
# not worth it.
MIN_NUMEL = 1 << 18
# Entries of a row summed in float32 before the float64 accumulation: bounds the float32 rounding (~1e-7 relative).
_INNER = 4096
# Entries per row block (a long row is cut into blocks of this size): the unit by which work is split between
# threads, so small enough to balance them.
_BLOCK = 1 << 18
# Entries per extra thread at least: below ~1M entries the work (~0.2 ms) does not pay for starting a thread.
_THREADED = 1 << 20

# Columns of the block table: address of the block's first weight, of its first mask byte (0: no mask), rows,
# columns, row stride (entries), first output row.
_ADDR, _MASK, _ROWS, _COLS, _STRIDE, _OUT = range(6)
# Rows of the output: survivors, Σ|w|^0.5, Σ|w|, Σ|w|^2.
_SLOT = {0.5: 1, 1.0: 2, 2.0: 3}


def usable(rows: Tensor, mask: Tensor | None, exponents: Iterable[float]) -> bool:
    """Whether the fused kernel can compute these power sums (else the caller uses PyTorch ops).

    Callers also require at least ``MIN_NUMEL`` entries in all the matrices of one call.
    """
    return (
        rows.device.type == "cpu"
        and rows.dtype == torch.float32
        and rows.numel() > 0
        and rows.is_contiguous()
        and (mask is None or (mask.dtype == torch.bool and mask.is_contiguous()))
        and set(exponents) <= FUSED_EXPONENTS
    )


@functools.cache
def _as_pointer() -> Callable[..., Any]:
    """A Numba intrinsic turning an int64 address into a void pointer, for ``numba.carray`` (the documented
    intrinsic pattern): kernels walk tables of tensor addresses instead of taking one array argument each."""
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def as_pointer(typingctx, address):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], cgutils.voidptr_t)

        return types.voidptr(types.int64), codegen

    return as_pointer


@functools.cache
def _kernel() -> tuple[Callable[..., None], Callable[..., None]]:
    """Compile (or load from Numba's on-disk cache) the fused kernel, serial and parallel; Numba is imported
    only here."""
    import numba

    as_pointer = _as_pointer()

    # Reassociation lets LLVM vectorise the reductions; no "nnan"/"ninf", so NaN and Inf still reach the sums.
    flags = {"reassoc", "nsz", "contract", "arcp"}

    @numba.njit(fastmath=flags)
    def row_sums(w, keep, out, r):  # pragma: no cover - compiled
        # One row; loops start at 0 so LLVM knows indices are non-negative (no wrap-around select) and vectorises.
        n = w.shape[0]
        count = 0.0
        acc05 = 0.0
        acc1 = 0.0
        acc2 = 0.0
        for b0 in range(0, n, _INNER):
            b1 = min(n, b0 + _INNER)
            s05 = np.float32(0.0)
            s1 = np.float32(0.0)
            s2 = np.float32(0.0)
            alive = 0
            for j in range(b0, b1):
                x = abs(w[j])
                if keep is not None:  # resolved at compile time: one specialisation each
                    alive += keep[j]
                    x = x * np.float32(keep[j])
                s05 += np.sqrt(x)
                s1 += x
                s2 += x * x
            count += alive
            acc05 += s05
            acc1 += s1
            acc2 += s2
        out[0, r] = count if keep is not None else n
        out[1, r] = acc05
        out[2, r] = acc1
        out[3, r] = acc2

    @numba.njit(fastmath=flags)
    def block(table, k, out):  # pragma: no cover - compiled
        addr, mask, n_rows = table[k, _ADDR], table[k, _MASK], table[k, _ROWS]
        n_cols, stride, first = table[k, _COLS], table[k, _STRIDE], table[k, _OUT]
        for i in range(n_rows):
            w = numba.carray(as_pointer(addr + 4 * i * stride), n_cols, np.float32)
            if mask == 0:
                row_sums(w, None, out, first + i)
            else:
                keep = numba.carray(as_pointer(mask + i * stride), n_cols, np.uint8)
                row_sums(w, keep, out, first + i)

    @numba.njit(nogil=True, cache=True, fastmath=flags)
    def serial(table, out):  # pragma: no cover - compiled
        for k in range(table.shape[0]):
            block(table, k, out)

    @numba.njit(nogil=True, parallel=True, cache=True, fastmath=flags)
    def parallel(table, bounds, out):  # pragma: no cover - compiled
        # One group of blocks per thread; the groups hold about equal numbers of entries.
        for g in numba.prange(bounds.shape[0] - 1):
            for k in range(bounds[g], bounds[g + 1]):
                block(table, k, out)

    return serial, parallel


# Numba's threading layers: workqueue (always there) aborts on concurrent launches from two threads, hence the
# lock; GNU OpenMP aborts a forked child that launches a parallel region after its parent did, hence the pid.
_parallel_lock = threading.Lock()
_parallel_pid: int | None = None


def _run(table: np.ndarray, out: np.ndarray, workers: int) -> None:
    """Run the kernel over the block table on ``workers`` threads (one contiguous group of blocks each)."""
    global _parallel_pid
    import numba

    serial, parallel = _kernel()
    workers = min(workers, numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    forked = _parallel_pid not in (None, os.getpid()) and numba.threading_layer() == "omp"
    if workers <= 1 or forked:
        serial(table, out)
        return
    entries = np.cumsum(table[:, _ROWS] * table[:, _COLS])
    cuts = np.searchsorted(entries, entries[-1] * np.arange(1, workers) / workers)
    bounds = np.concatenate(([0], cuts, [len(table)])).astype(np.int64)
    with _parallel_lock:
        numba.set_num_threads(workers)
        parallel(table, bounds, out)
        _parallel_pid = _parallel_pid or os.getpid()


@dataclass
class FusedSums:
    """Kernel results for several matrices, rows concatenated in order: survivors and float64 ``Σ|w|^s`` for
    s ∈ {0.5, 1, 2} per row, the number of rows of each matrix, and whether each matrix's sums are all finite
    (False: a NaN or infinite entry somewhere in it, maybe a pruned one)."""

    count: Tensor
    sums: dict[float, Tensor]
    rows: list[int]
    finite: list[bool]


def _table(matrices: Sequence[tuple[Tensor, Tensor | None]]) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """The block table of the kernel, and per matrix its (first output row, slices per row, first row of the
    slices' outputs or -1).

    A matrix with rows of at most ``_BLOCK`` entries is cut into blocks of whole rows, written to its rows of the
    output. Longer rows are cut into column slices so that threads get even shares; each slice is summed into an
    output row of its own past the matrices' rows, and the slices are added up afterwards.
    """
    table: list[tuple[int, int, int, int, int, int]] = []
    layout = []
    first = 0
    extra = sum(rows.shape[0] for rows, _ in matrices)
    for rows, mask in matrices:
        n_rows, n_cols = rows.shape
        addr, maddr = rows.data_ptr(), (0 if mask is None else mask.data_ptr())
        width = min(n_cols, _BLOCK)
        per_block = max(1, _BLOCK // n_cols)
        n_slices = -(-n_cols // width)
        target = first if n_slices == 1 else extra
        for j in range(n_slices):
            c0 = j * width
            cols = min(width, n_cols - c0)
            for r0 in range(0, n_rows, per_block):
                offset = r0 * n_cols + c0  # entries; a float32 weight is 4 bytes, a bool mask entry 1
                mask_at = maddr and maddr + offset
                table.append(
                    (addr + 4 * offset, mask_at, min(per_block, n_rows - r0), cols, n_cols, target + j * n_rows + r0)
                )
        layout.append((first, n_slices, -1 if n_slices == 1 else extra))
        first += n_rows
        extra += 0 if n_slices == 1 else n_slices * n_rows
    return np.array(table, dtype=np.int64).reshape(-1, 6), layout


def fused_row_sums(matrices: Sequence[tuple[Tensor, Tensor | None]]) -> FusedSums:
    """Per-row power sums of contiguous float32 CPU matrices with optional bool survivor masks, one pass each.

    The matrices are cut into blocks (:func:`_table`); with more than ``_THREADED`` entries the blocks are split
    into ``torch.get_num_threads()`` contiguous groups of about equal size (the kernel's cost is proportional to
    the entries), one thread each, in one call. A pruned entry that is NaN or infinite poisons its row here (it
    is multiplied by 0): callers check ``finite`` and fall back to PyTorch ops, which mask by selection.
    """
    table, layout = _table(matrices)
    n_rows = [rows.shape[0] for rows, _ in matrices]
    total = sum(n_rows)
    width = total + sum(n_slices * r for (_, n_slices, _), r in zip(layout, n_rows) if n_slices > 1)
    # NaN until written: a block left out by mistake could only show up as a non-finite sum, never a wrong one.
    out = np.full((4, width), np.nan)
    entries = int((table[:, _ROWS] * table[:, _COLS]).sum())
    # The tensors stay referenced by ``matrices`` until the kernel returns, so the addresses stay valid.
    _run(table, out, min(torch.get_num_threads(), len(table), entries // _THREADED + 1))
    for (first, n_slices, slices_at), r in zip(layout, n_rows):
        if n_slices > 1:
            out[:, first : first + r] = out[:, slices_at : slices_at + n_slices * r].reshape(4, n_slices, r).sum(axis=1)
    out = out[:, :total]
    ends = np.cumsum(n_rows)
    finite_rows = np.isfinite(out).all(axis=0)
    finite = [bool(finite_rows[end - r : end].all()) for r, end in zip(n_rows, ends)]
    t = torch.from_numpy(out)
    return FusedSums(t[0], {s: t[slot] for s, slot in _SLOT.items()}, n_rows, finite)


# --------------------------------------------------------------------------------------------- masking
# Masked entries per enforce() at most for the kernel below: it is serial, and above this a multi-threaded
# PyTorch multiply wins (the mask pass is then a small part of a step anyway).
MASK_KERNEL_MAX = 1 << 21


@functools.cache
def _mask_kernel() -> Callable[[np.ndarray], None]:
    """Compile (or load from cache) ``w *= mask`` over a table of (weight address, uint8 mask address, n)."""
    import numba

    as_pointer = _as_pointer()

    @numba.njit(nogil=True, cache=True)
    def multiply(table):  # pragma: no cover - compiled
        for k in range(table.shape[0]):
            n = table[k, 2]
            w = numba.carray(as_pointer(table[k, 0]), n, np.float32)
            keep = numba.carray(as_pointer(table[k, 1]), n, np.uint8)
            for j in range(n):
                w[j] = w[j] * np.float32(keep[j])

    return multiply


def mask_table(weights: Sequence[Tensor], masks: Sequence[Tensor]) -> np.ndarray | None:
    """The table for :func:`multiply_by_masks`, or None where the kernel does not apply (a weight that is not a
    contiguous float32 CPU tensor, a mask that is not a contiguous bool one, or too many entries).

    The caller keeps ``weights`` and ``masks`` alive as long as it uses the table: it holds their addresses.
    """
    if not weights or sum(w.numel() for w in weights) > MASK_KERNEL_MAX:
        return None
    for w, m in zip(weights, masks):
        if not (w.device.type == "cpu" and w.dtype == torch.float32 and w.is_contiguous()):
            return None
        if not (m.dtype == torch.bool and m.is_contiguous() and m.device.type == "cpu" and m.shape == w.shape):
            return None
    return np.array([(w.data_ptr(), m.data_ptr(), w.numel()) for w, m in zip(weights, masks)], dtype=np.int64)


def multiply_by_masks(table: np.ndarray) -> None:
    """``w *= mask`` in place for every (weight, bool mask) of a :func:`mask_table`, in one call.

    Same result as ``torch.mul_`` by a float mask (``w·1`` and ``w·0``, so NaN stays NaN), but it reads one
    byte of mask per weight instead of four: in a training step the masks come from outside the cache, and this
    halved the cost of keeping pruned weights at 0 on a small MLP (``bench/bench_prune.py``).
    """
    _mask_kernel()(table)
