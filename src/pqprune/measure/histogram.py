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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

HALF_DTYPES = (torch.float16, torch.bfloat16)
HALF_BINS = 1 << 15  # magnitudes of a 16-bit float: its bit patterns without the sign
KEY_SHIFT = 11  # float32 bits of |w| >> 11: 8 exponent + 12 mantissa bits
KEY_BINS = 1 << (31 - KEY_SHIFT)
EXACT_GINI_ERROR = 2.0**-14
"""Largest amount by which the Gini index of a binned (float32/64) histogram can fall short of the exact one."""
_CHUNK = 1 << 20


@functools.lru_cache(maxsize=4)
def half_values(dtype: torch.dtype) -> Tensor:
    """The float64 magnitude of each of the 2^15 sign-less bit patterns of a 16-bit float ``dtype`` (ascending:
    non-negative floats sort like their bit patterns; the last patterns are Inf and NaN)."""
    return torch.arange(HALF_BINS, dtype=torch.int16).view(dtype).to(torch.float64)


def _nonfinite_from(dtype: torch.dtype) -> int:
    """The first bit pattern of a 16-bit float ``dtype`` that is Inf (Inf and NaN follow it)."""
    return int(torch.tensor(math.inf, dtype=dtype).view(torch.int16))


_SIGN_OFF = torch.tensor(0x7FFF, dtype=torch.int16)
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="pqprune-hist")
    return _POOL


def _count_range(bits: Tensor, alive: Tensor | None, start: int, stop: int) -> tuple[Tensor, int]:
    """Counts of the sign-less patterns of ``bits[start:stop]`` (pruned entries counted as 0) and the number pruned."""
    counts = torch.zeros(HALF_BINS, dtype=torch.int64)
    buf = torch.empty(min(_CHUNK, stop - start), dtype=torch.int16)
    pruned = 0
    for i in range(start, stop, _CHUNK):
        part = bits[i : min(i + _CHUNK, stop)]
        keys = torch.bitwise_and(part, _SIGN_OFF, out=buf[: part.numel()])
        if alive is not None:
            dead = alive[i : i + part.numel()].logical_not()
            keys.masked_fill_(dead, 0)  # counted as zeros, taken off by the caller
            pruned += int(torch.count_nonzero(dead))
        counts += torch.bincount(keys, minlength=HALF_BINS)
    return counts, pruned


def half_histogram(w: Tensor, mask: Tensor | None = None, name: str = "tensor") -> Tensor:
    """Counts (int64 [2^15]) of each magnitude among the survivors of the float16/bfloat16 tensor ``w`` (``mask``
    True = survives), in one pass, a chunk at a time, the chunks shared among threads (counting is single-threaded
    in PyTorch). Raises ``ValueError`` naming ``name`` if a survivor is NaN or infinite."""
    if w.dtype not in HALF_DTYPES:
        raise ValueError(f"half_histogram takes float16/bfloat16 tensors, got {w.dtype}")
    bits = w.detach().reshape(-1).view(torch.int16)
    alive = None if mask is None else mask.reshape(-1)
    n = bits.numel()
    workers = max(1, min(torch.get_num_threads(), n // (4 * _CHUNK)))
    if workers == 1:
        counts, pruned = _count_range(bits, alive, 0, n)
    else:
        step = -(-n // workers)
        parts = [_pool().submit(_count_range, bits, alive, a, min(a + step, n)) for a in range(0, n, step)]
        results = [f.result() for f in parts]
        counts = torch.stack([c for c, _ in results]).sum(0)
        pruned = sum(k for _, k in results)
    counts[0] -= pruned
    if bool(counts[_nonfinite_from(w.dtype) :].any()):
        raise ValueError(f"tensor {name!r} has NaN or infinite surviving entries")
    return counts


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
        keys = half_keys(dtype)
        finite = half_values(dtype).isfinite()
        self.counts.index_add_(0, keys[finite], counts[finite])
        self.sums.index_add_(0, keys[finite], counts[finite].to(torch.float64) * half_values(dtype)[finite])

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
