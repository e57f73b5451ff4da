"""A compact file of a pruned model: :func:`save_sparse` / :func:`load_sparse`.

Every pruned tensor is stored as whichever is smallest of *bitmask* (packed bits of the mask + surviving values),
*CSR* over ``as_rows(w)`` (row pointers + column indices in the smallest integer type the shape allows + values)
or *dense*. Loading gives back an ordinary state dict, equal (``torch.equal``) to the pruned model's.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pqprune.files import FileFormat, FileFormatError
from pqprune.measure.weights import as_rows, check_mask, match_masks

SPARSE = FileFormat("pqprune.sparse", 1, "sparse export")
ENCODINGS = ("dense", "bitmask", "csr")
# Encoded tensors are stored as several safetensors entries "<name>::<part>"; state dict keys never hold "::".
_SEP = "::"

MaskLike = Mapping[str, Tensor] | Any | None  # a mapping name → bool mask, a MaskSet, or None


def _mask_dict(
    masks: MaskLike, targets: Mapping[str, Any] | None = None, what: str = "state dict entry"
) -> dict[str, Tensor]:
    """Name → bool mask on the CPU from a mapping or a :class:`~pqprune.prune.masks.MaskSet` (``None``: no masks),
    checked against ``targets`` (name → tensor) when given (:func:`~pqprune.measure.weights.match_masks`)."""
    if masks is None:
        return {}
    if hasattr(masks, "masks") and not isinstance(masks, Mapping):  # a MaskSet
        masks = masks.masks
    if targets is None:
        checked = {name: check_mask(name, m) for name, m in masks.items()}
    else:
        checked = match_masks(targets, masks, what=what)
    return {name: m.detach().to("cpu") for name, m in checked.items()}


def apply_masks(state: Mapping[str, Tensor], masks: MaskLike) -> dict[str, Tensor]:
    """The pruned state dict: a CPU copy of ``state`` with masked-out entries set to 0."""
    mk = _mask_dict(masks, state)
    out = {}
    for name, t in state.items():
        t = t.detach().to("cpu")
        out[name] = t.masked_fill(~mk[name], 0) if name in mk else t.clone()
    return out


def pruned_copy(model: nn.Module, masks: MaskLike) -> nn.Module:
    """A CPU copy of ``model`` with masked-out parameter entries set to 0; ``model`` is not changed.

    Masks naming parameters the model does not have, or of the wrong shape, raise ``ValueError``.
    """
    work = copy.deepcopy(model).cpu()
    params = dict(work.named_parameters())
    mk = _mask_dict(masks, params, "parameter")
    with torch.no_grad():
        for name, m in mk.items():
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
        "csr": (rows + 1) * _itemsize(_index_dtype(kept))
        + kept * _itemsize(_index_dtype(max(cols - 1, 0)))
        + kept * es,
    }


def choose_encoding(shape: Sequence[int], kept: int, dtype: torch.dtype) -> str:
    """The smallest encoding; ties go to the simpler one (dense, then bitmask)."""
    sizes = encoding_sizes(shape, kept, dtype)
    return min(ENCODINGS, key=lambda e: (sizes[e], ENCODINGS.index(e)))


def encode_tensor(w: Tensor, mask: Tensor) -> tuple[str, dict[str, Tensor]]:
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
    mk = _mask_dict(masks, state)
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
    mk = _mask_dict(masks, state)
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
            enc, parts = encode_tensor(t, mk[name])
        else:
            enc, parts = "dense", {"": t.clone()}  # clone: tied weights share storage, which safetensors refuses
        for part, tensor in parts.items():
            tensors[f"{name}{_SEP}{part}" if part else name] = tensor
        entries.append([name, {"encoding": enc, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}])
    return SPARSE.save_tensors(tensors, path, {"tensors": json.dumps(entries)})


def _dtype(name: str, path: object, key: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise FileFormatError(f"{path}: tensor {key!r} has unknown dtype {name!r}")
    return dtype


def _part(raw: Mapping[str, Tensor], key: str, path: object) -> Tensor:
    if key not in raw:
        raise FileFormatError(f"{path}: missing part {key!r}")
    return raw[key]


def decode_entry(
    raw: Mapping[str, Tensor], name: str, info: Mapping[str, Any], path: object
) -> tuple[Tensor, Tensor | None]:
    """One dense tensor from its parts, and its stored pattern (the bool mask of a bitmask or CSR entry; None for a
    dense one); every inconsistency is a ``FileFormatError`` naming file and tensor."""
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
        return t, None
    if enc not in ENCODINGS:
        raise FileFormatError(f"{path}: tensor {name!r} has unknown encoding {enc!r}")
    values = _part(raw, f"{name}{_SEP}values", path)
    if values.dtype != dtype or values.dim() != 1:
        raise FileFormatError(
            f"{path}: values of {name!r} are {values.dtype}{list(values.shape)}, expected 1-D {dtype}"
        )
    out = torch.zeros(n, dtype=dtype)
    if enc == "bitmask":
        packed = _part(raw, f"{name}{_SEP}bitmask", path)
        if packed.dtype != torch.uint8 or packed.numel() != (n + 7) // 8:
            raise FileFormatError(f"{path}: bitmask of {name!r} has {packed.numel()} bytes, expected {(n + 7) // 8}")
        flat = torch.from_numpy(np.unpackbits(packed.numpy(), count=n).astype(bool))
        if int(flat.sum()) != values.numel():
            raise FileFormatError(
                f"{path}: bitmask of {name!r} marks {int(flat.sum())} entries, {values.numel()} values stored"
            )
        out[flat] = values
        return out.reshape(shape), flat.reshape(shape)
    rows = shape[0] if len(shape) > 1 else 1
    cols = n // rows if rows else 0
    indptr = _part(raw, f"{name}{_SEP}indptr", path).to(torch.int64)
    indices = _part(raw, f"{name}{_SEP}indices", path).to(torch.int64)
    counts = torch.diff(indptr)
    ok = (
        indptr.numel() == rows + 1
        and int(indptr[0]) == 0
        and bool((counts >= 0).all())
        and int(indptr[-1]) == values.numel() == indices.numel()
        and (indices.numel() == 0 or (int(indices.min()) >= 0 and int(indices.max()) < cols))
    )
    if not ok:
        raise FileFormatError(f"{path}: CSR parts of {name!r} are inconsistent with its shape {shape}")
    row_of = torch.repeat_interleave(torch.arange(rows), counts)
    flat_index = row_of * cols + indices
    out[flat_index] = values
    mask = torch.zeros(n, dtype=torch.bool)
    mask[flat_index] = True
    return out.reshape(shape), mask.reshape(shape)


def load_sparse(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a file of :func:`save_sparse`: an ordinary state dict (dense tensors, zeros where pruned).

    A missing, corrupt or foreign file, or one of a newer format version, raises ``FileFormatError``.
    """
    raw, meta = SPARSE.load_tensors(path)
    try:
        entries = json.loads(meta["tensors"])
    except (KeyError, ValueError) as err:
        raise FileFormatError(f"{path}: bad sparse-export metadata ({err})") from err
    out: dict[str, Tensor] = {}
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise FileFormatError(f"{path}: bad tensor entry {entry!r} in the metadata")
        out[str(entry[0])] = decode_entry(raw, str(entry[0]), entry[1], path)[0]
    return out
