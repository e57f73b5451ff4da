"""Magnitude histograms: the measures of tensors too many to hold at once, from counts of their magnitudes.

A float16 or bfloat16 weight has one of 2^15 magnitudes, so the count of each magnitude among a tensor's survivors
(:func:`half_histogram`, one pass) is its sorted magnitudes in compressed form: power sums, the PQ Index and the
Gini index of docs/math.md §2–3 follow exactly (:class:`Histogram`), and histograms of several tensors add up to
that of their concatenation — the global Gini index without concatenating or sorting anything.

Float32/64 magnitudes have too many values for that; :func:`key_histogram` counts them (and sums them) in bins
of 2^20 keys, the top 20 bits of the float32 bit pattern of ``|w|`` (8 exponent bits and 12 mantissa bits: a bin
spans a relative width of at most 2^-12). Magnitudes with at most 12 significant mantissa bits (every float16 and
bfloat16 value) have a bin of their own, so a histogram holding only such values is exact. Otherwise the Gini
index takes each bin's values at their mean rank, which can only lower it, by at most 2^-14: the within-bin term
``Σ_j (2j − n − 1)·x_(j)`` is at most ``n²/4`` times the bin's width, i.e. ``≤ 2^-14·n·Σ x`` summed over bins.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from pqprune.measure import sums
from pqprune.measure.sums import _CHUNK as _ROWS_CHUNK
from pqprune.measure.sums import (
    HALF_BINS,
    HALF_DTYPES,
    RowStats,
    _block_sums,
    _nonfinite_from,
    checked_counts,
    half_values,
    kernel_applies,
    kernel_half_rows,
    row_power_sums,
)
from pqprune.measure.weights import as_rows

KEY_SHIFT = 11  # float32 bits of |w| >> 11: 8 exponent + 12 mantissa bits
KEY_BINS = 1 << (31 - KEY_SHIFT)
EXACT_GINI_ERROR = 2.0**-14
"""Largest amount by which the Gini index of a binned (float32/64) histogram can fall short of the exact one."""
_CHUNK = 1 << 20


_SIGN_OFF = torch.tensor(0x7FFF, dtype=torch.int16)


def half_histogram(w: Tensor, mask: Tensor | None = None, name: str = "tensor") -> Tensor:
    """Counts (int64 [2^15]) of each magnitude among the survivors of the float16/bfloat16 tensor ``w`` (``mask``
    True = survives), in one pass, a chunk at a time. Raises ``ValueError`` naming ``name`` if a survivor is NaN or
    infinite."""
    if w.dtype not in HALF_DTYPES:
        raise ValueError(f"half_histogram takes float16/bfloat16 tensors, got {w.dtype}")
    bits = w.detach().reshape(-1).view(torch.int16)
    alive = None if mask is None else mask.reshape(-1)
    if kernel_applies(bits, alive):
        assert sums.kernels is not None
        counts = torch.zeros(HALF_BINS, dtype=torch.int64)
        address = 0 if alive is None else alive.data_ptr()
        counts[0] -= sums.kernels.half_counts(bits.data_ptr(), address, bits.numel(), counts.data_ptr())
        return checked_counts(counts, w.dtype, name)
    counts = torch.zeros(HALF_BINS, dtype=torch.int64)
    buf = torch.empty(min(_CHUNK, bits.numel()), dtype=torch.int16)
    pruned = 0
    for i in range(0, bits.numel(), _CHUNK):
        part = bits[i : i + _CHUNK]
        keys = torch.bitwise_and(part, _SIGN_OFF, out=buf[: part.numel()])
        if alive is not None:
            dead = alive[i : i + _CHUNK].logical_not()
            keys.masked_fill_(dead, 0)  # counted as zeros, taken off below
            pruned += int(torch.count_nonzero(dead))
        counts += torch.bincount(keys, minlength=HALF_BINS)
    counts[0] -= pruned
    return checked_counts(counts, w.dtype, name)


def half_rows(
    w: Tensor, exponents: Sequence[float], mask: Tensor | None = None, name: str = "tensor"
) -> tuple[Tensor, RowStats]:
    """:func:`half_histogram` and :func:`pqprune.measure.sums.row_power_sums` of a float16/bfloat16 tensor in one
    pass, the same numbers as the two functions give: by the compiled kernel that both use (each row widened to
    float32 for √|w|, |w| and w², other powers looked up per magnitude), else each block of rows is counted, then
    widened (its sign-less bit patterns are the magnitudes) and summed with the same blocks and float32 sums as
    ``row_power_sums``. Rows longer than a block take the two functions one after the other."""
    rows = as_rows(w.detach())
    n_rows, n_cols = rows.shape
    if w.dtype not in HALF_DTYPES or n_cols > _ROWS_CHUNK or not n_rows or not rows.is_contiguous():
        return half_histogram(w, mask, name), row_power_sums(w, exponents, mask, name)
    exps = sorted({float(e) for e in exponents})
    mrows = None if mask is None else as_rows(mask)
    if (fast := kernel_half_rows(rows, mrows, w.dtype, exps, name)) is not None:
        return fast
    bits = rows.view(torch.int16)
    step = max(1, _ROWS_CHUNK // n_cols)
    keys_buf = torch.empty((min(step, n_rows), n_cols), dtype=torch.int16)
    mags = torch.empty(keys_buf.shape, dtype=torch.float32)
    scratch = torch.empty_like(mags)
    block = {s: torch.empty(n_rows, dtype=torch.float32) for s in exps}
    counts = torch.zeros(HALF_BINS, dtype=torch.int64)
    pruned = 0
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        keys = torch.bitwise_and(bits[r0:r1], _SIGN_OFF, out=keys_buf[: r1 - r0])
        if mrows is not None:
            dead = mrows[r0:r1].logical_not()
            keys.masked_fill_(dead, 0)
            pruned += int(torch.count_nonzero(dead))
        counts += torch.bincount(keys.view(-1), minlength=HALF_BINS)
        a = mags[: r1 - r0].copy_(keys.view(w.dtype))
        _block_sums(a, exps, {s: v[r0:r1] for s, v in block.items()}, scratch[: r1 - r0])
    counts[0] -= pruned
    checked_counts(counts, w.dtype, name)
    count = (
        torch.full((n_rows,), float(n_cols), dtype=torch.float64)
        if mrows is None
        else mrows.sum(dim=1, dtype=torch.float64)
    )
    return counts, RowStats(count, {s: v.to(torch.float64) for s, v in block.items()})


def key_histogram(w: Tensor, mask: Tensor | None = None, name: str = "tensor") -> tuple[Tensor, Tensor]:
    """Counts (int64) and float64 sums of the survivors' magnitudes in each of the 2^20 key bins (see the module's
    docstring), a chunk at a time. Float64 magnitudes are binned by their float32 value. Raises ``ValueError``
    naming ``name`` if a survivor is NaN or infinite."""
    flat = w.detach().reshape(-1)
    alive = None if mask is None else mask.reshape(-1)
    counts = torch.zeros(KEY_BINS, dtype=torch.int64)
    sums = torch.zeros(KEY_BINS, dtype=torch.float64)
    for i in range(0, flat.numel(), _CHUNK):
        mags = flat[i : i + _CHUNK].abs().to(torch.float64)
        if alive is not None:
            mags = mags[alive[i : i + _CHUNK]]
        if not bool(torch.isfinite(mags).all()):
            raise ValueError(f"tensor {name!r} has NaN or infinite surviving entries")
        keys = mags.to(torch.float32).view(torch.int32) >> KEY_SHIFT
        counts += torch.bincount(keys, minlength=KEY_BINS)
        sums += torch.bincount(keys, weights=mags, minlength=KEY_BINS)
    return counts, sums


@functools.lru_cache(maxsize=4)
def half_keys(dtype: torch.dtype) -> Tensor:
    """The key bin (int64 [2^15]) of each magnitude of a 16-bit float ``dtype`` (each in a bin of its own)."""
    return (half_values(dtype).to(torch.float32).view(torch.int32) >> KEY_SHIFT).to(torch.int64)


@functools.lru_cache(maxsize=4)
def _finite_half(dtype: torch.dtype) -> tuple[int, Tensor, Tensor]:
    """The finite magnitudes of a 16-bit float ``dtype``: how many (they come first), their key bins, their values."""
    finite = _nonfinite_from(dtype)
    return finite, half_keys(dtype)[:finite], half_values(dtype)[:finite]


@dataclass
class Histogram:
    """Survivor counts and magnitude sums per bin, bins in ascending order of magnitude (``values``: each bin's
    magnitude when ``exact``, i.e. every survivor of a bin has the same magnitude)."""

    counts: Tensor  # int64 [bins]
    sums: Tensor  # float64 [bins]
    exact: bool

    @classmethod
    def of_half(cls, counts: Tensor, dtype: torch.dtype) -> Histogram:
        """From :func:`half_histogram` counts of a ``dtype`` tensor."""
        return cls(counts, counts.to(torch.float64) * half_values(dtype).nan_to_num(posinf=0.0), True)

    @classmethod
    def empty_keys(cls) -> Histogram:
        """An empty histogram over the 2^20 key bins, to :meth:`add` tensors' histograms into."""
        return cls(torch.zeros(KEY_BINS, dtype=torch.int64), torch.zeros(KEY_BINS, dtype=torch.float64), True)

    def add_half(self, counts: Tensor, dtype: torch.dtype) -> None:
        """Add a 16-bit tensor's :func:`half_histogram` into this key histogram (exactly)."""
        finite, keys, values = _finite_half(dtype)
        n = counts[:finite]
        self.counts.index_add_(0, keys, n)
        self.sums.index_add_(0, keys, n.to(torch.float64) * values)

    def add_keys(self, counts: Tensor, sums: Tensor, exact: bool) -> None:
        """Add a :func:`key_histogram` into this key histogram; ``exact``: its bins each hold one magnitude."""
        self.counts += counts
        self.sums += sums
        self.exact = self.exact and exact

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def power_sum(self, s: float) -> float:
        """``Σ |w|^s`` over the survivors (exact for an exact histogram)."""
        n = self.counts.to(torch.float64)
        values = torch.where(n > 0, self.sums / n.clamp(min=1), torch.zeros_like(n))
        return float((n * values.pow(s)).sum())

    def gini(self) -> float:
        """Gini index of the survivors [Hurley & Rickard 2009], docs/math.md §3:
        ``Σ_i (2i − N − 1)·x_(i) / (N·Σ x)``; the ranks of bin b are ``c_b + 1 … c_b + n_b`` (``c_b`` survivors in
        lower bins), so the bin adds ``(2c_b + n_b − N)·S_b``. Exact for an exact histogram, else low by at most
        :data:`EXACT_GINI_ERROR`. NaN without survivors or when all are 0."""
        n = self.counts.to(torch.float64)
        total_n = float(n.sum())
        total = float(self.sums.sum())
        if total_n <= 0 or total <= 0:
            return math.nan
        before = torch.cumsum(n, 0) - n
        return float(((2.0 * before + n - total_n) * self.sums).sum()) / (total_n * total)
