"""Export of pruned models: a compact file, a physically smaller model, and the numbers that say by how much.

Three pieces (issue 7; design.md, "What the user does" 4):

* :func:`save_sparse` / :func:`load_sparse` — a safetensors file in which every pruned tensor is stored as
  whichever is smallest of *bitmask* (packed bits of the mask + surviving values), *CSR* over
  ``as_rows(w)`` (row pointers + column indices in the smallest integer type the shape allows + values) or
  *dense*. Loading gives back an ordinary state dict, equal (``torch.equal``) to the pruned model's.
* :func:`shrink` — removes dead neurons / channels from chains of Linear / Conv / BatchNorm layers, giving a
  smaller dense ``nn.Module`` that computes the same function (in eval mode); :func:`save_shrunk` /
  :func:`load_shrunk` store it with its architecture, so it loads without pqprune knowing the original model.
* :func:`model_metrics` — the ShrinkBench-style record: parameters, nonzeros, file sizes, dense and nonzero
  FLOPs (multiply-accumulates), theoretical speedup.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor, nn

from pqprune.files import FileFormatError, load_state_dict, read_format_metadata, save_tensors
from pqprune.sparsity import as_rows, is_prunable_entry

SPARSE_FORMAT = "pqprune.sparse"
SPARSE_FORMAT_VERSION = 1
SHRUNK_FORMAT = "pqprune.shrunk"
SHRUNK_FORMAT_VERSION = 1
ENCODINGS = ("dense", "bitmask", "csr")
# Encoded tensors are stored as several safetensors entries "<name>::<part>"; state dict keys never hold "::".
_SEP = "::"
# Buffers of normalisation layers are not parameters: they are left out of the parameter count of a state dict.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

MaskLike = Union[Mapping[str, Tensor], Any, None]  # a mapping name → bool mask, a MaskSet, or None


def _mask_dict(masks: MaskLike) -> dict[str, Tensor]:
    """Name → bool mask on the CPU from a mapping or a :class:`~pqprune.masks.MaskSet` (``None``: no masks)."""
    if masks is None:
        return {}
    if hasattr(masks, "masks") and not isinstance(masks, Mapping):  # a MaskSet
        masks = masks.masks
    out = {}
    for name, m in masks.items():
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            raise ValueError(f"mask for {name!r} must be a bool tensor, got {getattr(m, 'dtype', type(m).__name__)}")
        out[name] = m.detach().to("cpu")
    return out


def _check_masks(state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    for name, m in masks.items():
        if name not in state:
            raise ValueError(f"mask for {name!r} names no tensor of the state dict")
        if m.shape != state[name].shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(m.shape)}, the tensor has {tuple(state[name].shape)}")


def apply_masks(state: Mapping[str, Tensor], masks: MaskLike) -> dict[str, Tensor]:
    """The pruned state dict: a CPU copy of ``state`` with masked-out entries set to 0."""
    mk = _mask_dict(masks)
    _check_masks(state, mk)
    out = {}
    for name, t in state.items():
        t = t.detach().to("cpu")
        out[name] = t.masked_fill(~mk[name], 0) if name in mk else t.clone()
    return out


def pruned_copy(model: nn.Module, masks: MaskLike) -> nn.Module:
    """A CPU copy of ``model`` with masked-out parameter entries set to 0; ``model`` is not changed.

    Masks naming parameters the model does not have, or of the wrong shape, raise ``ValueError``.
    """
    mk = _mask_dict(masks)
    work = copy.deepcopy(model).cpu()
    params = dict(work.named_parameters())
    unknown = sorted(set(mk) - set(params))
    if unknown:
        raise ValueError(f"masks name parameters the model does not have: {unknown}")
    with torch.no_grad():
        for name, m in mk.items():
            if m.shape != params[name].shape:
                raise ValueError(f"mask for {name!r} has shape {tuple(m.shape)}, the parameter has {tuple(params[name].shape)}")
            params[name].masked_fill_(~m, 0)
    return work


def check_pruned(masks: MaskLike) -> None:
    """Raise ``ValueError`` when the masks prune nothing: exporting an unpruned model is a user error."""
    mk = _mask_dict(masks)
    if not mk or all(bool(m.all()) for m in mk.values()):
        raise ValueError("nothing is pruned: every mask keeps every entry (prune the model first)")


# --------------------------------------------------------------------------------------------- sparse encoding
def _index_dtype(max_value: int) -> torch.dtype:
    """The smallest integer dtype holding ``0..max_value`` (safetensors stores U8, I16, I32, I64)."""
    for dtype, limit in ((torch.uint8, 255), (torch.int16, 2**15 - 1), (torch.int32, 2**31 - 1)):
        if max_value <= limit:
            return dtype
    return torch.int64


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def encoding_sizes(shape: Sequence[int], kept: int, dtype: torch.dtype) -> dict[str, int]:
    """Bytes each encoding needs for a tensor of ``shape`` and ``dtype`` with ``kept`` surviving entries."""
    n = math.prod(shape)
    rows = shape[0] if len(shape) > 1 else 1
    cols = n // rows if rows else 0
    es = _itemsize(dtype)
    return {
        "dense": n * es,
        "bitmask": (n + 7) // 8 + kept * es,
        "csr": (rows + 1) * _itemsize(_index_dtype(kept)) + kept * _itemsize(_index_dtype(max(cols - 1, 0))) + kept * es,
    }


def choose_encoding(shape: Sequence[int], kept: int, dtype: torch.dtype) -> str:
    """The smallest encoding; ties go to the simpler one (dense, then bitmask)."""
    sizes = encoding_sizes(shape, kept, dtype)
    return min(ENCODINGS, key=lambda e: (sizes[e], ENCODINGS.index(e)))


def _encode(w: Tensor, mask: Tensor) -> tuple[str, dict[str, Tensor]]:
    """Parts of ``w`` under ``mask``; values are the survivors in row-major order in both sparse encodings."""
    kept = int(mask.sum())
    enc = choose_encoding(w.shape, kept, w.dtype)
    if enc == "dense":
        return enc, {"": w.masked_fill(~mask, 0)}
    flat = mask.reshape(-1)
    values = w.reshape(-1)[flat].clone()
    if enc == "bitmask":
        bits = np.packbits(flat.numpy().astype(np.uint8))  # big-endian bit order within a byte
        return enc, {"bitmask": torch.from_numpy(bits), "values": values}
    m2 = as_rows(mask)
    counts = m2.sum(dim=1)
    indptr = torch.zeros(m2.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(counts, 0)
    cols = torch.nonzero(m2)[:, 1]  # row-major, the same order as values
    return enc, {
        "indptr": indptr.to(_index_dtype(kept)),
        "indices": cols.to(_index_dtype(max(m2.shape[1] - 1, 0))),
        "values": values,
    }


def compact_nbytes(state: Mapping[str, Tensor], masks: MaskLike = None) -> int:
    """Bytes of tensor data :func:`save_sparse` writes for ``state`` under ``masks`` (the header excluded)."""
    mk = _mask_dict(masks)
    total = 0
    for name, t in state.items():
        if name in mk:
            kept = int(mk[name].sum())
            total += encoding_sizes(t.shape, kept, t.dtype)[choose_encoding(t.shape, kept, t.dtype)]
        else:
            total += t.numel() * t.element_size()
    return total


def save_sparse(state: Mapping[str, Tensor], masks: MaskLike, path: str | os.PathLike) -> Path:
    """Write the pruned ``state`` (entries where ``masks`` is False are 0) compactly as safetensors, atomically.

    Each masked tensor gets the smallest of the dense / bitmask / CSR encodings; unmasked tensors (biases,
    BatchNorm buffers) are stored as they are. The metadata holds the format name and version and, per tensor in
    state-dict order, its encoding, shape and dtype. Raises ``ValueError`` if the masks prune nothing.
    """
    mk = _mask_dict(masks)
    _check_masks(state, mk)
    check_pruned(mk)
    tensors: dict[str, Tensor] = {}
    entries: list[list[Any]] = []
    for name, t in state.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        if _SEP in name:
            raise ValueError(f"state dict key {name!r} contains {_SEP!r}, which the sparse format reserves")
        t = t.detach().to("cpu")
        if name in mk:
            enc, parts = _encode(t, mk[name])
        else:
            enc, parts = "dense", {"": t.clone()}  # clone: tied weights share storage, which safetensors refuses
        for part, tensor in parts.items():
            tensors[f"{name}{_SEP}{part}" if part else name] = tensor
        entries.append([name, {"encoding": enc, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}])
    meta = {"format": SPARSE_FORMAT, "format_version": str(SPARSE_FORMAT_VERSION), "tensors": json.dumps(entries)}
    return save_tensors(tensors, path, meta)


def _dtype(name: str, path: object, key: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise FileFormatError(f"{path}: tensor {key!r} has unknown dtype {name!r}")
    return dtype


def _part(raw: Mapping[str, Tensor], key: str, path: object) -> Tensor:
    if key not in raw:
        raise FileFormatError(f"{path}: missing part {key!r}")
    return raw[key]


def _decode(raw: Mapping[str, Tensor], name: str, info: Mapping[str, Any], path: object) -> Tensor:
    """One dense tensor from its parts; every inconsistency is a ``FileFormatError`` naming file and tensor."""
    try:
        shape = [int(s) for s in info["shape"]]
        enc = info["encoding"]
        dtype = _dtype(info["dtype"], path, name)
    except (KeyError, TypeError, ValueError) as err:
        raise FileFormatError(f"{path}: bad metadata for tensor {name!r} ({err})") from err
    n = math.prod(shape)
    if enc == "dense":
        t = _part(raw, name, path)
        if list(t.shape) != shape or t.dtype != dtype:
            raise FileFormatError(f"{path}: tensor {name!r} is {t.dtype}{list(t.shape)}, metadata says {dtype}{shape}")
        return t
    if enc not in ENCODINGS:
        raise FileFormatError(f"{path}: tensor {name!r} has unknown encoding {enc!r}")
    values = _part(raw, f"{name}{_SEP}values", path)
    if values.dtype != dtype or values.dim() != 1:
        raise FileFormatError(f"{path}: values of {name!r} are {values.dtype}{list(values.shape)}, expected 1-D {dtype}")
    out = torch.zeros(n, dtype=dtype)
    if enc == "bitmask":
        packed = _part(raw, f"{name}{_SEP}bitmask", path)
        if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
            raise FileFormatError(f"{path}: bitmask of {name!r} has {packed.numel()} bytes, expected {(n + 7) // 8}")
        flat = torch.from_numpy(np.unpackbits(packed.numpy(), count=n).astype(bool))
        if int(flat.sum()) != values.numel():
            raise FileFormatError(f"{path}: bitmask of {name!r} marks {int(flat.sum())} entries, {values.numel()} values stored")
        out[flat] = values
        return out.reshape(shape)
    rows = shape[0] if len(shape) > 1 else 1
    cols = n // rows if rows else 0
    indptr = _part(raw, f"{name}{_SEP}indptr", path).to(torch.int64)
    indices = _part(raw, f"{name}{_SEP}indices", path).to(torch.int64)
    counts = torch.diff(indptr)
    ok = (
        indptr.numel() == rows + 1 and int(indptr[0]) == 0 and bool((counts >= 0).all())
        and int(indptr[-1]) == values.numel() == indices.numel()
        and (indices.numel() == 0 or (int(indices.min()) >= 0 and int(indices.max()) < cols))
    )
    if not ok:
        raise FileFormatError(f"{path}: CSR parts of {name!r} are inconsistent with its shape {shape}")
    row_of = torch.repeat_interleave(torch.arange(rows), counts)
    out[row_of * cols + indices] = values
    return out.reshape(shape)


def load_sparse(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a file of :func:`save_sparse`: an ordinary state dict (dense tensors, zeros where pruned).

    A missing, corrupt or foreign file, or one of a newer format version, raises ``FileFormatError``.
    """
    meta = read_format_metadata(path, SPARSE_FORMAT, SPARSE_FORMAT_VERSION, "sparse export")
    try:
        entries = json.loads(meta["tensors"])
    except (KeyError, ValueError) as err:
        raise FileFormatError(f"{path}: bad sparse-export metadata ({err})") from err
    raw = load_state_dict(path)
    out: dict[str, Tensor] = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise FileFormatError(f"{path}: bad tensor entry {entry!r} in the metadata")
        out[str(entry[0])] = _decode(raw, str(entry[0]), entry[1], path)
    return out


# --------------------------------------------------------------------------------------------- shrink
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Layers that act on each channel separately and map a channel that is constant (over space) to a constant
# (in eval mode): dead channels can be traced through them.
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
)
_IDENTITY_IN_EVAL = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_BN = nn.modules.batchnorm._BatchNorm


def _leaves(model: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The modules of a (nested) ``nn.Sequential`` in execution order, by full name."""
    out = []
    for name, child in model.named_children():
        full = f"{prefix}{name}"
        if type(child) is nn.Sequential:
            out += _leaves(child, full + ".")
        else:
            out.append((full, child))
    return out


def _describe(name: str, mod: nn.Module) -> str:
    return f"layer {name!r} ({type(mod).__name__})"


@dataclass
class _Boundary:
    """The modules between two weighted layers A → B, and what dead channels of A can do there."""

    between: list[tuple[str, nn.Module]]
    factor: int  # B's inputs per channel of A (> 1 when a Flatten turns channels × positions into features)
    foldable: bool  # a constant channel of A can be folded into B's bias exactly


def _check_between(a_name: str, a: nn.Module, b_name: str, b: nn.Module, between: list[tuple[str, nn.Module]]) -> _Boundary:
    """Check that ``between`` maps channels of A to channels of B one to one; raise ``ValueError`` naming the culprit."""
    channels = a.out_features if isinstance(a, nn.Linear) else a.out_channels
    foldable = True
    flattened = isinstance(a, nn.Linear)
    for name, mod in between:
        if isinstance(mod, _ELEMENTWISE + _IDENTITY_IN_EVAL):
            continue
        if isinstance(mod, _POOLS):
            if getattr(mod, "return_indices", False):
                raise ValueError(f"cannot shrink: {_describe(name, mod)} returns indices")
            if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)) and mod.count_include_pad and any(
                p != 0 for p in np.atleast_1d(mod.padding)
            ):
                foldable = False  # zero padding is averaged in: a constant channel is not constant at the borders
            continue
        if isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise ValueError(f"cannot shrink: {_describe(name, mod)} must flatten dims 1..-1 to keep channels whole")
            flattened = True
            continue
        if isinstance(mod, _BN):
            if not mod.track_running_stats or mod.running_mean is None:
                foldable = False  # without running statistics BN normalises with batch statistics
            continue
        raise ValueError(
            f"cannot shrink: {_describe(name, mod)} sits between {a_name!r} and {b_name!r}; shrink handles chains of "
            "Linear / Conv / BatchNorm layers with element-wise activations, pooling, dropout and flatten between them "
            "(residual blocks and other custom modules tie channels together)"
        )
    if isinstance(b, nn.Linear):
        if not flattened:
            raise ValueError(f"cannot shrink: {a_name!r} (conv) feeds {b_name!r} (Linear) without a Flatten between them")
        if b.in_features % channels:
            raise ValueError(f"cannot shrink: {b_name!r} has {b.in_features} inputs, not a multiple of the {channels} channels of {a_name!r}")
        factor = b.in_features // channels
    else:
        if flattened:
            raise ValueError(f"cannot shrink: {a_name!r} feeds the convolution {b_name!r} through a flatten or a Linear layer")
        if b.in_channels != channels:
            raise ValueError(f"cannot shrink: {b_name!r} takes {b.in_channels} channels, {a_name!r} gives {channels}")
        factor = 1
        zero_pad = b.padding == "valid" or (b.padding != "same" and all(p == 0 for p in b.padding))
        # Zero padding breaks a constant channel at the borders: its effect is no longer a bias.
        foldable = foldable and (zero_pad or b.padding_mode != "zeros")
    for name, mod in between:
        if isinstance(mod, _BN) and mod.num_features not in (channels, channels * factor):
            raise ValueError(f"cannot shrink: {_describe(name, mod)} has {mod.num_features} features, {a_name!r} gives {channels} channels")
        if isinstance(mod, _BN) and mod.num_features != channels and factor > 1:
            foldable = False  # per-feature BN after a flatten: a dead channel is no longer one constant
    return _Boundary(between, factor, foldable)


def _constants(bias: Tensor, between: list[tuple[str, nn.Module]]) -> Tensor:
    """What each channel of A outputs (in eval mode) after ``between`` when all its incoming weights are 0."""
    x = bias.detach().double().clone()
    for _name, mod in between:
        if isinstance(mod, _BN):
            if mod.running_mean is not None and mod.num_features == x.numel():
                x = (x - mod.running_mean.double()) / torch.sqrt(mod.running_var.double() + mod.eps)
                if mod.affine:
                    x = x * mod.weight.detach().double() + mod.bias.detach().double()
        elif isinstance(mod, _ELEMENTWISE):
            x = mod(x.clone())  # clone: ReLU(inplace=True) must not change our copy of the bias
    return x


def _weight_view(b: nn.Module, channels: int) -> Tensor:
    """B's weight as ``(out, channels of A, taps)``: every entry reading channel j of A sits in ``[:, j, :]``."""
    return b.weight.detach().reshape(b.weight.shape[0], channels, -1)


@torch.no_grad()
def _slice_bn(mod: nn.Module, keep: Tensor, factor: int) -> None:
    """Keep the features of BatchNorm ``mod`` that belong to the kept channels (blocks of ``factor`` after a flatten)."""
    if mod.num_features != keep.numel():
        keep = keep.repeat_interleave(factor)
    for attr in ("weight", "bias"):
        p = getattr(mod, attr)
        if p is not None:
            setattr(mod, attr, nn.Parameter(p.detach()[keep].clone(), requires_grad=p.requires_grad))
    for attr in ("running_mean", "running_var"):
        buf = getattr(mod, attr)
        if buf is not None:
            setattr(mod, attr, buf[keep].clone())
    mod.num_features = int(keep.sum())


@torch.no_grad()
def _shrink_boundary(a: nn.Module, b: nn.Module, bd: _Boundary) -> bool:
    """Remove the dead channels between A and B in place; returns whether anything was removed."""
    channels = a.weight.shape[0]
    wb = _weight_view(b, channels)
    out_dead = (wb == 0).all(dim=2).all(dim=0)
    in_dead = (as_rows(a.weight.detach()) == 0).all(dim=1)
    bias = a.bias if a.bias is not None else torch.zeros(channels, dtype=a.weight.dtype)
    const = _constants(bias, bd.between)
    # A channel with no live input is the constant `const`; B sees it as a bias shift, unless B cannot absorb it.
    foldable = in_dead & ((const == 0) | torch.tensor(bd.foldable))
    remove = out_dead | foldable
    if bool(remove.all()):
        remove[0] = False  # keep one channel: zero-width layers are not valid everywhere (e.g. convolutions)
    if not bool(remove.any()):
        return False
    fold = remove & ~out_dead & (const != 0)
    if bool(fold.any()):
        shift = wb[:, fold, :].double().sum(dim=2) @ const[fold]
        old = b.bias.detach().double() if b.bias is not None else torch.zeros(b.weight.shape[0], dtype=torch.float64)
        b.bias = nn.Parameter((old + shift).to(b.weight.dtype))
    keep = ~remove
    a.weight = nn.Parameter(a.weight.detach()[keep].clone())
    if a.bias is not None:
        a.bias = nn.Parameter(a.bias.detach()[keep].clone())
    n = int(keep.sum())
    if isinstance(a, nn.Linear):
        a.out_features = n
    else:
        a.out_channels = n
    new_b = wb[:, keep, :].reshape(b.weight.shape[0], -1, *b.weight.shape[2:]).clone()
    b.weight = nn.Parameter(new_b)
    if isinstance(b, nn.Linear):
        b.in_features = new_b.shape[1]
    else:
        b.in_channels = new_b.shape[1]
    for _name, mod in bd.between:
        if isinstance(mod, _BN):
            _slice_bn(mod, keep, bd.factor)
    return True


def shrink(model: nn.Module, masks: MaskLike = None) -> nn.Module:
    """A smaller dense copy of ``model`` without its dead neurons / channels; ``model`` is not changed.

    ``model`` must be an ``nn.Sequential`` (nested ones are flattened) whose Linear / Conv layers form a chain:
    between two of them only BatchNorm, element-wise activations, pooling, dropout and ``Flatten``. Masks (name
    → bool, or a MaskSet; names as in ``model.named_parameters()``) are applied first. A hidden channel is dead
    when every weight reading it is 0 (removed as is), or when every weight producing it is 0: it then outputs
    a constant (its bias through BatchNorm and the activation, e.g. ``relu(b)``) which is folded into the next
    layer's bias — exact for a Linear next layer or an unpadded convolution; before a zero-padded convolution
    such a channel is removed only when its constant is 0. Removals repeat until nothing changes (removing a
    channel can kill the neurons that only read it). Inputs and outputs of the network are never removed.

    The result is an ``nn.Sequential`` of the same layer types computing the same outputs in eval mode (BatchNorm
    with running statistics). Raises ``ValueError`` naming the layer that breaks the chain (e.g. a residual
    block) or a grouped convolution.
    """
    if type(model) is not nn.Sequential:
        raise ValueError(
            f"cannot shrink a {type(model).__name__}: shrink needs an nn.Sequential chain of Linear / Conv / BatchNorm "
            "layers (a custom forward(), e.g. with residual connections, cannot be traced safely)"
        )
    work = pruned_copy(model, masks)
    leaves = _leaves(work)
    weighted = [i for i, (_n, mod) in enumerate(leaves) if isinstance(mod, _WEIGHTED)]
    for i in weighted:
        name, mod = leaves[i]
        if not isinstance(mod, nn.Linear) and mod.groups != 1:
            raise ValueError(f"cannot shrink: {_describe(name, mod)} is a grouped convolution (groups={mod.groups})")
    bounds = [
        _check_between(leaves[i][0], leaves[i][1], leaves[j][0], leaves[j][1], leaves[i + 1 : j])
        for i, j in zip(weighted, weighted[1:])
    ]
    changed = True
    while changed:  # to a fixed point: a removal upstream can make a downstream neuron dead, and back
        changed = False
        for k, bd in enumerate(bounds):
            changed |= _shrink_boundary(leaves[weighted[k]][1], leaves[weighted[k + 1]][1], bd)
    out = nn.Sequential(*[mod for _n, mod in leaves])
    out.train(model.training)
    return out


# --------------------------------------------------------------------------------------------- shrunk file
def _spec_types() -> dict[str, type[nn.Module]]:
    from pqprune.models import ToChannels

    types = (*_WEIGHTED, *_ELEMENTWISE, *_IDENTITY_IN_EVAL, *_POOLS, nn.Flatten, ToChannels,
             nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return {t.__name__: t for t in types}


def _module_spec(name: str, mod: nn.Module) -> dict[str, Any]:
    """``{"type", "args"}`` rebuilding ``mod``: its constructor arguments read back from its attributes."""
    types = _spec_types()
    if type(mod).__name__ not in types or types[type(mod).__name__] is not type(mod):
        raise ValueError(f"cannot save {_describe(name, mod)} in a shrunk file: only {', '.join(sorted(types))}")
    args: dict[str, Any] = {}
    for p in inspect.signature(type(mod).__init__).parameters.values():
        if p.name in ("self", "device", "dtype") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or not hasattr(mod, p.name):
            continue
        value = getattr(mod, p.name)
        if p.name == "bias":
            value = value is not None  # the attribute is the Parameter; the constructor takes a flag
        args[p.name] = list(value) if isinstance(value, tuple) else value
    return {"type": type(mod).__name__, "args": args}


def save_shrunk(model: nn.Sequential, path: str | os.PathLike) -> Path:
    """Save a shrunk ``nn.Sequential`` (from :func:`shrink`) as safetensors with its architecture in the metadata."""
    specs = [_module_spec(n, m) for n, m in model.named_children()]
    dtypes = {str(p.dtype) for p in model.parameters()}
    meta = {"format": SHRUNK_FORMAT, "format_version": str(SHRUNK_FORMAT_VERSION), "modules": json.dumps(specs),
            "dtype": ",".join(sorted(dtypes))}
    return save_tensors(model.state_dict(), path, meta)


def load_shrunk(path: str | os.PathLike) -> nn.Sequential:
    """Rebuild the model saved by :func:`save_shrunk` (in eval mode)."""
    meta = read_format_metadata(path, SHRUNK_FORMAT, SHRUNK_FORMAT_VERSION, "shrunk model")
    try:
        specs = json.loads(meta["modules"])
    except (KeyError, ValueError) as err:
        raise FileFormatError(f"{path}: bad shrunk-model metadata ({err})") from err
    types = _spec_types()
    mods = []
    for spec in specs:
        try:
            cls = types[spec["type"]]
            args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["args"].items()}
            mods.append(cls(**args))
        except (KeyError, TypeError, ValueError) as err:
            raise FileFormatError(f"{path}: cannot rebuild module {spec!r} ({err})") from err
    model = nn.Sequential(*mods)
    state = load_state_dict(path)
    try:
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
        if dtype is not None:
            model.to(dtype)
        model.load_state_dict(state)
    except RuntimeError as err:
        raise FileFormatError(f"{path}: weights do not fit the saved architecture ({str(err).splitlines()[0]})") from err
    return model.eval()


# --------------------------------------------------------------------------------------------- metrics
def _is_buffer_name(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in _BUFFER_SUFFIXES


def _count_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-accumulates of each Linear / Conv layer for one example, from forward hooks."""
    macs: dict[str, int] = {}

    def hook(name: str):
        def record(mod: nn.Module, _inp: Any, out: Tensor) -> None:
            if isinstance(mod, nn.Linear):
                n = out.numel() * mod.in_features
            else:
                n = out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
            macs[name] = macs.get(name, 0) + n
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, _WEIGHTED)]
    was = model.training
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(x)
    except Exception as err:  # shape errors come as RuntimeError, ValueError, IndexError…
        raise ValueError(f"model {type(model).__name__} cannot take inputs of shape {tuple(input_shape)}: "
                         f"{str(err).splitlines()[0]}") from err
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return macs


def model_metrics(
    model_or_state_dict: nn.Module | Mapping[str, Tensor],
    masks: MaskLike = None,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """ShrinkBench-style record of a (pruned) model; ``masks`` are applied, the model is not changed.

    Keys: ``parameters`` (all parameters; for a state dict, all entries except BatchNorm running statistics),
    ``nonzeros`` (nonzero parameters after masking), ``compression`` (parameters / nonzeros), ``prunable`` and
    ``prunable_kept`` (entries of the masked tensors, and those the masks keep; without masks: the floating
    ``*weight`` tensors with dim > 1 and their nonzeros), ``dense_bytes`` (the state dict stored dense in float32;
    non-float tensors at their own size), ``compact_bytes`` (tensor data of :func:`save_sparse`),
    ``flops_dense`` / ``flops_nonzero`` (multiply-accumulates of Linear / Conv layers for one example; nonzero =
    each layer's MACs × its fraction of nonzero weights) and ``speedup`` (their ratio, theoretical).

    FLOPs need ``input_shape`` (without the batch axis) and a model; for a bare state dict they are given only
    when all prunable weights are 2-D (a Linear chain, each layer applied once per example), else None.
    """
    mk = _mask_dict(masks)
    if isinstance(model_or_state_dict, nn.Module):
        model = model_or_state_dict
        param_names = {n for n, _ in model.named_parameters()}
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    else:
        model = None
        state = {k: v.detach().cpu() for k, v in model_or_state_dict.items()}
        param_names = {n for n in state if not _is_buffer_name(n)}
    pruned = apply_masks(state, mk)
    parameters = sum(state[n].numel() for n in param_names)
    nonzeros = sum(int(torch.count_nonzero(pruned[n])) for n in param_names)
    if mk:
        prunable = sum(m.numel() for m in mk.values())
        kept = sum(int(m.sum()) for m in mk.values())
    else:
        prunable_names = [n for n, t in pruned.items() if is_prunable_entry(n, t)]
        prunable = sum(pruned[n].numel() for n in prunable_names)
        kept = sum(int(torch.count_nonzero(pruned[n])) for n in prunable_names)
    dense_bytes = sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in state.values())
    compact = compact_nbytes(state, mk) if mk else dense_bytes_actual(state)

    def nz_fraction(name: str) -> float:
        w = pruned[name]
        return int(torch.count_nonzero(w)) / w.numel() if w.numel() else 0.0

    flops_dense = flops_nonzero = None
    if input_shape is not None:
        if model is not None:
            macs = _count_macs(model, input_shape)
            flops_dense = sum(macs.values())
            flops_nonzero = sum(round(v * nz_fraction(f"{n}.weight" if n else "weight")) for n, v in macs.items())
        else:
            weights = [n for n, t in state.items() if is_prunable_entry(n, t)]
            if weights and all(state[n].dim() == 2 for n in weights):
                flops_dense = sum(state[n].numel() for n in weights)
                flops_nonzero = sum(int(torch.count_nonzero(pruned[n])) for n in weights)
    speedup = flops_dense / flops_nonzero if flops_dense is not None and flops_nonzero else None
    return {
        "parameters": parameters,
        "nonzeros": nonzeros,
        "compression": parameters / nonzeros if nonzeros else None,
        "prunable": prunable,
        "prunable_kept": kept,
        "density": kept / prunable if prunable else None,
        "dense_bytes": dense_bytes,
        "compact_bytes": compact,
        "size_ratio": compact / dense_bytes if dense_bytes else None,
        "flops_dense": flops_dense,
        "flops_nonzero": flops_nonzero,
        "speedup": speedup,
    }


def dense_bytes_actual(state: Mapping[str, Tensor]) -> int:
    """Bytes of tensor data of ``state`` stored dense at its own dtypes (what an unmasked tensor costs)."""
    return sum(t.numel() * t.element_size() for t in state.values())
