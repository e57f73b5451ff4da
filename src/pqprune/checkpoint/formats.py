"""What a checkpoint file is, decided by its content, and readers that hand out one tensor at a time.

* safetensors: an 8-byte little-endian header length, then a JSON header (``{name: {dtype, shape, data_offsets}}``
  and an optional ``__metadata__``), then the data. Read by :class:`SafetensorsReader`: each tensor is a
  memory map of its own bytes, opened when asked for and closed when dropped, so reading a 1 GB shard tensor by
  tensor never holds more than one tensor's pages (``safe_open`` keeps the whole shard mapped while open).
* a PyTorch zip archive (``torch.save``'s format since 1.6: starts with ``PK\\x03\\x04``): ``torch.load`` with
  ``mmap=True, weights_only=True``; tensors are views of one memory map of the file.
* a legacy PyTorch pickle (starts with the pickle opcode ``\\x80``): ``torch.load(weights_only=True)``, in memory.
* a JSON shard index (``{"weight_map": {name: shard file}}``, as ``save_pretrained`` writes it).

Anything else is refused with one line naming the file. Pickles that need arbitrary code are refused
(``weights_only=True`` only, as everywhere in pqprune).
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from pqprune.files import FileFormatError

Kind = Literal["safetensors", "torch-zip", "torch-pickle", "index"]

# safetensors dtype names → torch dtypes (those torch has).
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"), ("U16", "uint16"), ("U32", "uint32")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_OPCODE = 0x80
# A safetensors header larger than this is not a header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000


def _existing_file(path: Path) -> Path:
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    if not path.is_file():
        raise FileFormatError(f"{path}: not a file")
    return path


def _safetensors_header(path: Path, head: bytes, size: int) -> tuple[int, dict[str, Any]] | None:
    """(header length, JSON header) when ``head`` (the first bytes) starts like safetensors, else None.

    Raises:
        FileFormatError: it starts like safetensors (a length, then ``{``) but the header is cut or not JSON.
    """
    if len(head) < 9 or head[8:9] != b"{":
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if not 2 <= n <= _MAX_HEADER:
        return None
    if n > size - 8:
        raise FileFormatError(
            f"{path}: not a readable safetensors file (header of {n} bytes, file of {size}; cut short)"
        )
    with open(path, "rb") as fh:
        fh.seek(8)
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise FileFormatError(f"{path}: not a readable safetensors file (header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{path}: not a readable safetensors file (header is not a JSON object)")
    return n, header


def detect(path: str | os.PathLike) -> tuple[Kind, Any]:
    """The kind of a checkpoint file from its first bytes, and what was read to decide it (the safetensors
    header length and header, the JSON document of an index, or None).

    Raises:
        FileFormatError: missing, a folder, or none of the kinds (a JSON document without ``weight_map`` included).
    """
    path = _existing_file(Path(path))
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        raise FileFormatError(f"{path}: an empty file, not a checkpoint")
    found = _safetensors_header(path, head, size)
    if found is not None:
        return "safetensors", found
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip", None
    if head[0] == _PICKLE_OPCODE:
        return "torch-pickle", None
    if head.lstrip()[:1] in (b"{", b"["):
        try:
            doc = json.loads(path.read_text())
        except (UnicodeDecodeError, ValueError) as err:
            raise FileFormatError(f"{path}: starts like JSON but is not valid JSON ({err})") from err
        if isinstance(doc, dict) and isinstance(doc.get("weight_map"), dict):
            return "index", doc
        keys = ", ".join(list(doc)[:5]) if isinstance(doc, dict) else type(doc).__name__
        raise FileFormatError(
            f'{path}: a JSON file but not a shard index (no "weight_map" object; it holds {keys or "nothing"})'
        )
    raise FileFormatError(
        f"{path}: not a checkpoint: neither safetensors, a PyTorch zip or pickle file, nor a JSON shard index "
        f"(it starts with {head[:12]!r})"
    )


# --------------------------------------------------------------------------------------------- safetensors
@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of a stored tensor, known without reading its data."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class SafetensorsReader:
    """Tensors of one safetensors file, each read as a memory map of its own bytes (no copy).

    The header is checked once (dtypes, shapes against byte ranges, ranges inside the file); a bad one raises
    :class:`FileFormatError` naming the file. Tensors come back read-only in intent: do not write to them.
    """

    def __init__(self, path: str | os.PathLike, found: tuple[int, Mapping[str, Any]] | None = None) -> None:
        self.path = _existing_file(Path(path))
        size = self.path.stat().st_size
        if found is None:
            with open(self.path, "rb") as fh:
                head = fh.read(64)
            found = _safetensors_header(self.path, head, size)
            if found is None:
                raise FileFormatError(f"{self.path}: not a readable safetensors file (no safetensors header)")
        n, header = found
        self._start = 8 + n
        self.metadata: dict[str, str] = dict(header.get("__metadata__") or {})
        self.infos: dict[str, TensorInfo] = {}
        self._ranges: dict[str, tuple[int, int]] = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            self.infos[name], self._ranges[name] = self._check(name, spec, size - self._start)

    def _check(self, name: str, spec: Any, data_size: int) -> tuple[TensorInfo, tuple[int, int]]:
        try:
            dtype = _ST_DTYPES[spec["dtype"]]
            shape = tuple(int(s) for s in spec["shape"])
            begin, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise FileFormatError(f"{self.path}: not a readable safetensors file (entry {name!r}: {err!r})") from None
        info = TensorInfo(name, shape, dtype)
        nbytes = info.numel * torch.empty((), dtype=dtype).element_size()
        if not (0 <= begin <= end <= data_size) or end - begin != nbytes:
            raise FileFormatError(
                f"{self.path}: not a readable safetensors file (tensor {name!r} has bytes {begin}..{end} of "
                f"{data_size}, its shape needs {nbytes}; truncated or corrupt)"
            )
        return info, (begin, end)

    def __contains__(self, name: object) -> bool:
        return name in self.infos

    def read(self, name: str) -> Tensor:
        """Tensor ``name`` as a view of a memory map of its bytes (unmapped when the tensor is freed)."""
        info = self.infos[name]
        begin, end = self._ranges[name]
        if end == begin:
            return torch.empty(info.shape, dtype=info.dtype)
        with open(self.path, "rb") as fh:
            # Map from the page holding the first byte: mmap offsets must be multiples of the allocation size.
            offset = self._start + begin
            page = offset - offset % mmap.ALLOCATIONGRANULARITY
            # Private, copy-on-write: the tensor may be written, the file never is. Not MAP_POPULATE: populating a
            # writable private mapping copies every page.
            mapped = mmap.mmap(fh.fileno(), offset - page + end - begin, access=mmap.ACCESS_COPY, offset=page)
        raw = np.frombuffer(mapped, dtype=np.uint8, count=end - begin, offset=offset - page)
        return torch.from_numpy(raw).view(info.dtype).reshape(info.shape)


# --------------------------------------------------------------------------------------------- torch files
def load_torch(path: Path, kind: Kind) -> dict[str, Tensor]:
    """Name → tensor of a ``torch.save`` file (zip: memory-mapped), unwrapping ``{"state_dict": ...}`` or
    ``{"model": ...}``; only plain tensors are loaded (``weights_only=True``)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=kind == "torch-zip")
    except pickle.UnpicklingError as err:
        raise FileFormatError(
            f"{path}: refused, it needs arbitrary code to unpickle (only plain tensors are loaded, "
            f"weights_only=True); save a state dict instead: torch.save(model.state_dict(), path)"
        ) from err
    except Exception as err:  # torch raises many types (struct.error, RuntimeError, EOFError) on junk
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileFormatError(f"{path}: not a readable PyTorch file ({first})") from err
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors:
            return tensors
    raise FileFormatError(f"{path}: holds no state dict (a mapping of names to tensors)")
