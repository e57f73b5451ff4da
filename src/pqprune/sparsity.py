"""Sparsity measures of weights: PQ Index, Gini, Hoyer and the l_q soft-sparsity index.

Pure tensor maths; nothing here knows of training, data or pruning policies.

Every measure is computed over the *surviving* entries of a unit (``masks`` mark survivors with True), at one
of three scopes (math.md §1):

* ``global``: all prunable entries of the model, concatenated;
* ``layer``: one prunable tensor;
* ``neuron``: one output unit, i.e. one row of ``W.reshape(out_features, -1)``.

The PQ Index, Hoyer and l_q index are functions of power sums ``S_s = Σ|w_i|^s``. Per-row power sums are a
sufficient statistic for all three scopes, so :func:`power_sums` reads the weights once, whatever the set of
exponents, and :func:`reduce_scope` sums rows into layers or the whole model. Sums are accumulated in float64:
float32 norms over very large vectors are badly wrong on CPU (design.md, Numerics).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor, nn

from pqprune import cpu_kernels

Scope = Literal["global", "layer", "neuron"]
SCOPES: tuple[str, ...] = ("global", "layer", "neuron")
GLOBAL = "global"
"""Name of the single unit at global scope."""

WeightSource = Union[Tensor, nn.Module, Mapping[str, Tensor]]
Masks = Mapping[str, Tensor]
Result = Union[float, dict[str, float], dict[str, Tensor]]

# Elements handled at once by the one-pass kernel: a block of 256K float32 (1 MB) stays in the L2 cache across
# the few element-wise passes made over it, and is large enough to amortise Python overhead (measured: 1M-entry
# blocks are ~15% slower, 64K-entry blocks ~70% slower on 100M weights).
_CHUNK = 1 << 18
# Module types whose 2-D+ "weight" is not a connection matrix: never pruned by default (math.md §1).
_NOT_PRUNABLE = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)


# --------------------------------------------------------------------------------------------- discovery
def prunable_weights(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters pqprune prunes by default: those named ``*weight`` with ``dim() > 1``.

    This covers ``nn.Linear``, ``nn.Conv{1,2,3}d`` and attention projections (``in_proj_weight``); weights of
    embeddings and normalisation layers are left out (math.md §1).
    """
    found: dict[str, nn.Parameter] = {}
    for mod_name, mod in module.named_modules():
        if isinstance(mod, _NOT_PRUNABLE):
            continue
        for p_name, param in mod.named_parameters(recurse=False):
            if p_name.endswith("weight") and param.dim() > 1:
                found[f"{mod_name}.{p_name}" if mod_name else p_name] = param
    return found


def is_prunable_entry(name: str, tensor: Tensor) -> bool:
    """Rule for state dicts, where module types are unknown: floating ``*weight`` tensors with ``dim() > 1``."""
    return name.endswith("weight") and tensor.dim() > 1 and tensor.is_floating_point()


def named_weights(obj: WeightSource) -> dict[str, Tensor]:
    """Name → tensor for a tensor (named ``"tensor"``), a module or a state dict."""
    if isinstance(obj, Tensor):
        return {"tensor": obj.detach()}
    if isinstance(obj, nn.Module):
        found = {n: p.detach() for n, p in prunable_weights(obj).items()}
    elif isinstance(obj, Mapping):
        found = {}
        for name, t in obj.items():
            if not isinstance(t, Tensor):
                raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
            if is_prunable_entry(name, t):
                found[name] = t.detach()
    else:
        raise TypeError(f"expected a tensor, an nn.Module or a state dict, got {type(obj).__name__}")
    if not found:
        raise ValueError("no prunable weights found (floating tensors named '*weight' with dim() > 1)")
    return found


def as_rows(w: Tensor) -> Tensor:
    """View a weight as ``(out_units, fan_in)``: a conv filter is flattened over ``in_channels × kernel``."""
    return w.reshape(1, -1) if w.dim() <= 1 else w.reshape(w.shape[0], -1)


def check_masks(weights: Mapping[str, Tensor], masks: Masks | Tensor | None) -> dict[str, Tensor | None]:
    """Match masks to weights by name; a mask for an unknown name or of the wrong shape is an error.

    For a single tensor (named ``"tensor"``) the mask may be given as a bool tensor instead of a mapping.
    """
    if isinstance(masks, Tensor):
        if list(weights) != ["tensor"]:
            raise ValueError("a bare mask tensor only goes with a bare weight tensor; pass name → mask otherwise")
        masks = {"tensor": masks}
    masks = dict(masks or {})
    unknown = sorted(set(masks) - set(weights))
    if unknown:
        raise ValueError(f"masks name tensors that are not prunable weights here: {unknown}")
    out: dict[str, Tensor | None] = {}
    for name, w in weights.items():
        m = masks.get(name)
        if m is not None:
            if m.shape != w.shape:
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(m.shape)}, the weight has {tuple(w.shape)}"
                )
            if m.dtype != torch.bool:
                raise ValueError(f"mask for {name!r} must be a bool tensor, got {m.dtype}")
        out[name] = m
    return out


# --------------------------------------------------------------------------------------------- parameters
def check_pq(p: float, q: float) -> None:
    """PQ Index needs ``0 < p < q`` [Diao23, Definition 1]."""
    if not (math.isfinite(p) and math.isfinite(q)):
        raise ValueError(f"p and q must be finite, got p={p}, q={q}")
    if p <= 0:
        raise ValueError(f"p must be > 0, got p={p}")
    if p >= q:
        raise ValueError(f"the PQ Index needs p < q, got p={p}, q={q}")


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


# --------------------------------------------------------------------------------------------- one pass
@dataclass
class RowStats:
    """Per-row statistics of one tensor: survivor counts and float64 power sums ``Σ|w|^s`` for each s."""

    count: Tensor  # float64 [rows]
    sums: dict[float, Tensor]  # exponent -> float64 [rows]

    def total(self) -> "RowStats":
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
    """Row sums of ``a**s`` into ``out[s]``, for one cache-sized block ``a`` of magnitudes.

    The block is summed in its own precision: a pairwise sum over at most ``_CHUNK`` entries, relative error
    ~1e-7. Callers accumulate block sums in float64, so the total is as good as a float64 computation whatever
    the tensor size (a float64 reduction of a float32 block would first convert it and costs 20× more).
    """
    logs: Tensor | None = None
    for s in exps:
        if s == 1.0:
            powered = a
        elif s == 0.5:
            powered = torch.sqrt(a, out=scratch)
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


def _torch_row_power_sums(rows: Tensor, mrows: Tensor | None, exps: Sequence[float], name: str) -> RowStats:
    """The PyTorch path of :func:`power_sums_of` for one matrix (any dtype, device and exponents)."""
    n_rows, n_cols = rows.shape
    compute = torch.float64 if rows.dtype == torch.float64 else torch.float32
    if mrows is None:
        count = torch.full((n_rows,), float(n_cols), dtype=torch.float64, device=rows.device)
    else:
        count = mrows.sum(dim=1, dtype=torch.float64)
    if n_rows == 0 or n_cols == 0:
        return RowStats(count, {s: torch.zeros(n_rows, dtype=torch.float64, device=rows.device) for s in exps})
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
    sums = {s: partial[s].sum(dim=0, dtype=torch.float64) for s in exps}
    if not all(bool(torch.isfinite(v).all()) for v in sums.values()):
        raise ValueError(f"tensor {name!r} has NaN or infinite surviving entries")
    return RowStats(count, sums)


def power_sums_of(
    weights: Mapping[str, Tensor], exponents: Iterable[float], masks: Mapping[str, Tensor | None] | None = None
) -> Mapping[str, RowStats]:
    """Per-row ``Σ|w_i|^s`` over survivors of every tensor in ``weights`` (name → tensor, taken as given), in one
    read of the weights.

    Each tensor is read in cache-sized blocks; a block's powers are taken and summed in the weight's precision
    (float32 at least; float16/bfloat16 are widened) and block sums are accumulated in float64, so a 100M-entry
    tensor agrees with a float64 computation to ~1e-7 relative error (a float32 norm over the whole tensor is
    off by tens of percent: design.md, Numerics). Contiguous float32 CPU tensors, with exponents among 0.5, 1
    and 2, go through the fused kernel of :mod:`pqprune.cpu_kernels` when there are at least
    ``cpu_kernels.MIN_NUMEL`` such entries: same numerics, one pass, all tensors in one parallel call. Raises
    ``ValueError`` naming the tensor if a surviving entry is NaN or infinite.
    """
    exps = _check_exponents(exponents)
    masks = masks or {}
    rows = {n: (as_rows(w), None if masks.get(n) is None else as_rows(masks[n])) for n, w in weights.items()}
    fusable = [n for n, (r, m) in rows.items() if cpu_kernels.usable(r, m, exps)]
    if sum(rows[n][0].numel() for n in fusable) < cpu_kernels.MIN_NUMEL:
        fusable = []
    out: dict[str, RowStats] = {}
    if fusable:
        fused = cpu_kernels.fused_row_sums([rows[n] for n in fusable])
        units = UnitStats(fusable, fused.rows, RowStats(fused.count, {s: fused.sums[s] for s in exps}))
        if len(fusable) == len(rows) and all(fused.finite):
            return units  # the common case: no per-tensor split, formulas run on the concatenation
        for n, finite in zip(fusable, fused.finite):
            if finite:
                out[n] = units[n]
            elif rows[n][1] is None:
                raise ValueError(f"tensor {n!r} has NaN or infinite surviving entries")
            # else a NaN/Inf may sit in a pruned entry, which the fused kernel cannot tell from a survivor; the
            # PyTorch path masks by selection and raises only for a surviving one.
    return {n: out[n] if n in out else _torch_row_power_sums(*rows[n], exps, n) for n in weights}


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
    # stacked (segment_reduce costs ~25 µs a call; index_add_ ~5 µs).
    joined = units.joined
    segment = torch.repeat_interleave(torch.arange(len(units)), torch.tensor(units.sizes)).to(joined.count.device)
    stacked = torch.stack([joined.count, *joined.sums.values()])
    totals = torch.zeros((stacked.shape[0], len(units)), dtype=stacked.dtype, device=stacked.device)
    totals.index_add_(1, segment, stacked)
    return UnitStats(units.names, [1] * len(units), RowStats(totals[0], dict(zip(joined.sums, totals[1:]))))


def map_units(units: Mapping[str, RowStats], fn: Callable[[RowStats], Tensor]) -> dict[str, Tensor]:
    """``fn`` (a per-row formula such as :func:`pq_from_sums`) applied to all units in one vectorised call."""
    joined = join(units)
    return joined.split(fn(joined.joined))


# --------------------------------------------------------------------------------------------- formulas
def _power_mean(count: Tensor, s_sum: Tensor, s: float) -> Tensor:
    """``M_s = (S_s / d)^{1/s}``: a mean of ``|w_i|^s`` taken back to the scale of ``|w|`` (at most ``max|w|``, so
    it cannot overflow); ``0/0`` gives NaN for a unit without survivors."""
    return (s_sum / count) ** (1.0 / s)


def pq_from_sums(count: Tensor, sum_p: Tensor, sum_q: Tensor, p: float, q: float) -> Tensor:
    """PQ Index from power sums [Diao23, Definition 1].

    ``I_{p,q}(w) = 1 − d^{1/q−1/p} ‖w‖_p / ‖w‖_q = 1 − M_p / M_q`` with power means
    ``M_s = (Σ|w_i|^s / d)^{1/s}``. NaN where the unit is empty or all its survivors are zero (both means are
    then ``0/0`` or ``0``, and ``0/0`` is NaN).
    """
    check_pq(p, q)
    ratio = _power_mean(count, sum_p, p) / _power_mean(count, sum_q, q)
    # M_p ≤ M_q always (power-mean inequality); a ratio above 1 is float32 rounding of the block sums (~1e-7),
    # and a negative index would only confuse reports, so it is clipped to 0 (clamp keeps NaN).
    return 1.0 - ratio.clamp(max=1.0)


def hoyer_from_sums(count: Tensor, sum_1: Tensor, sum_2: Tensor) -> Tensor:
    """Hoyer sparsity ``(√d − ‖w‖₁/‖w‖₂) / (√d − 1)`` [Hoyer 2004]; ``I_{1,2} = (1 − 1/√d)·Hoyer``.

    NaN for degenerate units and for ``d = 1`` (the denominator vanishes).
    """
    sqrt_d = torch.sqrt(count)
    out = (sqrt_d - sum_1 / torch.sqrt(sum_2)) / (sqrt_d - 1.0)
    degenerate = (count <= 1) | (sum_2 <= 0)
    return torch.where(degenerate, torch.full_like(out, math.nan), out)


def lq_from_sums(count: Tensor, sum_q: Tensor, sum_1: Tensor, q: float) -> Tensor:
    """l_q soft-sparsity index ``SI_q(w) = d^{1/q−1} ‖w‖₁/‖w‖_q = 1/(1 − I_{q,1}(w))`` for 0 < q < 1 [Yang22].

    Range ``[1, d^{1/q−1}]``; 1 iff all survivors have equal magnitude.
    """
    check_lq(q)
    return 1.0 / (1.0 - pq_from_sums(count, sum_q, sum_1, q, 1.0))


def check_lq(q: float) -> None:
    if not (0 < q < 1):
        raise ValueError(f"the l_q index needs 0 < q < 1, got q={q}")


# --------------------------------------------------------------------------------------------- public API
def _shape(units: UnitStats, values: Tensor, scope: Scope) -> Result:
    """Public return convention for per-row ``values`` of ``units``: float (global), name → float (layer),
    name → 1-D tensor of its own (neuron)."""
    if scope == "global":
        return float(values[0])
    if scope == "layer":
        return dict(zip(units.names, values.tolist()))
    return {n: v.clone() for n, v in units.split(values).items()}


def pq_index_grid(
    obj: WeightSource,
    pairs: Sequence[tuple[float, float]],
    scope: Scope = "global",
    masks: Masks | None = None,
) -> dict[tuple[float, float], Result]:
    """PQ Index for many ``(p, q)`` pairs from a single read of the weights.

    Returns ``{(p, q): result}`` where each result follows :func:`pq_index`'s convention.
    """
    pairs = [(float(p), float(q)) for p, q in pairs]
    for p, q in pairs:
        check_pq(p, q)
    check_scope(scope)
    units = reduce_scope(power_sums(obj, {e for pq in pairs for e in pq}, masks), scope)
    u = units.joined
    return {(p, q): _shape(units, pq_from_sums(u.count, u.sums[p], u.sums[q], p, q), scope) for p, q in pairs}


def pq_index(obj: WeightSource, p: float = 0.5, q: float = 1.0, scope: Scope = "global", masks: Masks | None = None) -> Result:
    """PQ Index of the surviving weights [Diao23, Definition 1 and Theorem 1].

    ``I_{p,q}(w) = 1 − d^{1/q−1/p}·‖w‖_p/‖w‖_q`` for ``0 < p < q``, ``d`` = number of survivors. It lies in
    ``[0, 1 − d^{1/q−1/p}]``: 0 iff all magnitudes are equal, the maximum iff ``w`` is 1-sparse; larger means
    sparser (more compressible).

    Args:
        obj: a tensor, an ``nn.Module`` or a state dict (name → tensor).
        p, q: the exponents, ``0 < p < q``; ``(0.5, 1.0)`` by default, ``(1.0, 2.0)`` is the paper's other pair.
        scope: ``"global"`` → float; ``"layer"`` → ``{name: float}``; ``"neuron"`` → ``{name: 1-D tensor}``.
        masks: name → bool tensor, True where the entry survives; unnamed tensors are fully alive.

    Degenerate units (no survivors, or all survivors zero) give NaN. NaN/Inf weights raise ``ValueError``.
    """
    return pq_index_grid(obj, [(p, q)], scope, masks)[(float(p), float(q))]


def hoyer(obj: WeightSource, scope: Scope = "global", masks: Masks | None = None) -> Result:
    """Hoyer sparsity of the surviving weights: ``(√d − ‖w‖₁/‖w‖₂)/(√d − 1)`` [Hoyer 2004]."""
    units = reduce_scope(power_sums(obj, (1.0, 2.0), masks), scope)
    u = units.joined
    return _shape(units, hoyer_from_sums(u.count, u.sums[1.0], u.sums[2.0]), scope)


def lq_index(obj: WeightSource, q: float, scope: Scope = "global", masks: Masks | None = None) -> Result:
    """l_q soft-sparsity index ``SI_q = d^{1/q−1}‖w‖₁/‖w‖_q = 1/(1 − I_{q,1})``, 0 < q < 1 [Yang22]."""
    check_lq(q)
    units = reduce_scope(power_sums(obj, (q, 1.0), masks), scope)
    u = units.joined
    return _shape(units, lq_from_sums(u.count, u.sums[q], u.sums[1.0], q), scope)


def _sorted_rows(a: Tensor) -> Tensor:
    """Ascending sort along the last dimension, values only (numpy's SIMD sort on CPU: no index tensor)."""
    if a.device.type == "cpu":
        return torch.from_numpy(np.sort(a.numpy(), axis=-1))
    return torch.sort(a, dim=-1).values


def _gini_rows(mags: Tensor, count: Tensor) -> Tensor:
    """Gini index per row of ``mags`` [rows, L] (magnitudes, pruned entries set to 0), ``count`` survivors per row.

    ``G = Σ_i (2i − N − 1)·x_(i) / (N·Σ x_(i))`` over the N survivors sorted ascending [Hurley & Rickard 2009].
    Pruned zeros sort first, so the survivors hold ranks ``L−N+1 … L``; zero survivors add nothing wherever
    they sit. Sums are accumulated in float64, a block of columns at a time. NaN for degenerate rows.
    """
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


def _magnitudes(w: Tensor, m: Tensor | None, name: str) -> Tensor:
    """``|w|`` as float32 (float64 kept) with pruned entries set to 0; NaN/Inf survivors raise, naming ``w``."""
    a = w.abs().to(torch.float64 if w.dtype == torch.float64 else torch.float32)
    if m is not None:
        a = a.masked_fill(m.logical_not(), 0.0)
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"tensor {name!r} has NaN or infinite surviving entries")
    return a


def gini(obj: WeightSource, scope: Scope = "global", masks: Masks | Tensor | None = None) -> Result:
    """Gini index of the surviving magnitudes [Hurley & Rickard 2009], as in math.md §3.

    ``G = Σ_i (2i − N − 1)·x_(i) / (N·Σ_i x_(i))`` over the N survivors sorted ascending. A constant vector gives
    0, a 1-sparse one ``1 − 1/N``. Needs a sort of each unit (O(n log n)), unlike the power-sum measures.
    """
    check_scope(scope)
    weights = named_weights(obj)
    matched = check_masks(weights, masks)
    mags = {n: _magnitudes(w, matched[n], n) for n, w in weights.items()}
    counts = {
        n: (torch.tensor(float(w.numel())) if matched[n] is None else matched[n].sum(dtype=torch.float64))
        for n, w in weights.items()
    }
    if scope == "neuron":
        out = {}
        for n, a in mags.items():
            m = matched[n]
            rows = as_rows(a)
            cnt = torch.full((rows.shape[0],), float(rows.shape[1])) if m is None else as_rows(m).sum(1, dtype=torch.float64)
            out[n] = _gini_rows(rows, cnt).cpu()
        return out
    if scope == "layer":
        return {n: float(_gini_rows(a.reshape(1, -1), counts[n].reshape(1))[0]) for n, a in mags.items()}
    dtype = torch.float64 if any(a.dtype == torch.float64 for a in mags.values()) else torch.float32
    allv = torch.cat([a.reshape(-1).to(dtype) for a in mags.values()])
    total = torch.stack([c.to(torch.float64) for c in counts.values()]).sum()
    return float(_gini_rows(allv.reshape(1, -1), total.reshape(1))[0])


# --------------------------------------------------------------------------------------------- SAP arithmetic
# Relative tolerance of SAP's ceil: larger than the ~1e-7 relative error of float32-based power sums.
_TIE_RTOL = 1e-6


def _as_float_tensor(x: float | Tensor) -> Tensor:
    return x.to(torch.float64) if isinstance(x, Tensor) else torch.tensor(float(x), dtype=torch.float64)


def retained_bound(index: float | Tensor, d: float | Tensor, p: float, q: float, eta: float = 0.0) -> float | Tensor:
    """Lower bound on the number ``r`` of retained weights [Diao23, Theorem 2].

    If the ``r`` largest magnitudes ``M_r`` satisfy ``Σ_{i∉M_r}|w_i|^p ≤ η_r Σ_{i∈M_r}|w_i|^p``, then

        r ≥ d · (1 + η_r)^{−q/(q−p)} · (1 − I_{p,q}(w))^{qp/(q−p)}.

    Tight for an equal-magnitude k-sparse vector at ``r = k``, ``η_r = 0``. Returns a float for float inputs.
    """
    check_pq(p, q)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    i, dd = _as_float_tensor(index), _as_float_tensor(d)
    out = dd * (1.0 + eta) ** (-q / (q - p)) * (1.0 - i) ** (q * p / (q - p))
    return out if isinstance(index, Tensor) or isinstance(d, Tensor) else float(out)


def sap_prune_count(
    index: float | Tensor,
    d: int | Tensor,
    p: float,
    q: float,
    eta: float = 0.0,
    gamma: float = 1.0,
    beta: float = 0.9,
) -> int | Tensor:
    """How many survivors SAP prunes from a unit this round [Diao23, Algorithm 1], math.md §5.

        r = ceil(d · (1+η)^{q/(p−q)} · (1 − I)^{qp/(q−p)})
        c = floor(d · clamp(γ·(1 − r/d), 0, β))

    ``r`` carries a tolerance (``ceil(x − 1e−9 − 1e−6·x)``, relative because the index of float32 weights is
    accurate to ~1e-7 relative) so that an equal-magnitude k-sparse unit gives ``r = k``; ``c`` likewise
    (``floor(x + 1e−9 + 1e−12·x)``) so that ``β·d`` does not lose a weight to rounding. A NaN index (a
    degenerate unit) prunes nothing. Returns an int for scalar inputs, an int64 tensor otherwise.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not (0 < beta <= 1):
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    dd = _as_float_tensor(d)
    bound = _as_float_tensor(retained_bound(_as_float_tensor(index), dd, p, q, eta))
    # The tolerance is relative: power sums of float32 weights carry ~1e-7 relative error, so d·(1−I) of an
    # equal-magnitude k-sparse unit lands within ~1e-7·k of k, on either side; ceil(x − 1e−9) would give k+1.
    r = torch.ceil(bound - (1e-9 + _TIE_RTOL * bound.abs())).clamp(min=0)
    r = torch.minimum(r, dd)
    c_real = torch.minimum(gamma * (dd - r), beta * dd).clamp(min=0.0)
    c = torch.floor(c_real + (1e-9 + 1e-12 * c_real)).to(torch.int64)
    c = torch.where(torch.isnan(bound) | (dd <= 0), torch.zeros_like(c), c)
    if isinstance(index, Tensor) or isinstance(d, Tensor):
        return c
    return int(c)
