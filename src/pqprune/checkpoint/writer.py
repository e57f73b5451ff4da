"""Safetensors files written one tensor at a time, for outputs as large as the checkpoints they come from.

``safetensors.torch.save_file`` needs every tensor in memory at once. :class:`SafetensorsWriter` writes each
tensor's bytes as it comes, after a space reserved for the header, and writes the header into that space at the
end, padded with spaces (which the format allows): the header may depend on what was written (the encodings of a
sparse export). The space comes from :func:`header_bound`, an upper bound from the names and shapes alone. The
file is written under a temporary name and renamed when complete (:func:`pqprune.files.atomic_path`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pqprune.files import atomic_path

_ST_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_OFFSET_DIGITS = 20  # an int64 offset in decimal


def entry_bound(name: str, ndim: int) -> int:
    """Bytes of one header entry at most: ``"name":{"dtype":"BF16","shape":[...],"data_offsets":[a,b]},``."""
    return len(json.dumps(name)) + 60 + ndim * (_OFFSET_DIGITS + 1) + 2 * _OFFSET_DIGITS


def header_bound(entries: Iterable[tuple[str, int]], metadata: Mapping[str, str] | None = None) -> int:
    """An upper bound on the header of a file holding ``entries`` (name, number of dimensions) and ``metadata``,
    rounded up to a multiple of 8 (the data then starts 8-byte aligned)."""
    size = 2 + sum(entry_bound(n, d) for n, d in entries)
    if metadata:
        size += len(json.dumps({"__metadata__": dict(metadata)})) + 1
    return -(-size // 8) * 8


class SafetensorsWriter:
    """Append tensors to an open safetensors file whose header is written last (see the module's docstring)."""

    def __init__(self, fh: Any, reserve: int, path: Path) -> None:
        self._fh, self._reserve, self.path = fh, reserve, path
        self._entries: dict[str, dict[str, Any]] = {}
        self._offset = 0
        self.finished = False
        fh.seek(8 + reserve)

    def add(self, name: str, tensor: Tensor) -> None:
        """Write ``tensor`` (moved to the CPU, made contiguous) as entry ``name``."""
        if name in self._entries:
            raise ValueError(f"{self.path}: tensor {name!r} written twice")
        t = tensor.detach().to("cpu").contiguous()
        if t.dtype not in _ST_NAMES:
            raise TypeError(f"{self.path}: cannot store tensor {name!r} of dtype {t.dtype}")
        if t.numel():
            self._fh.write(t.reshape(-1).view(torch.uint8).numpy().data)
        n = t.numel() * t.element_size()
        self._entries[name] = {
            "dtype": _ST_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [self._offset, self._offset + n],
        }
        self._offset += n

    def finish(self, metadata: Mapping[str, str] | None = None) -> None:
        """Write the header (with ``metadata``) into the reserved space."""
        head: dict[str, Any] = {"__metadata__": {k: str(v) for k, v in metadata.items()}} if metadata else {}
        raw = json.dumps({**head, **self._entries}, separators=(",", ":")).encode()
        if len(raw) > self._reserve:
            raise RuntimeError(f"{self.path}: header of {len(raw)} bytes exceeds the {self._reserve} reserved")
        self._fh.seek(0)
        self._fh.write(self._reserve.to_bytes(8, "little"))
        self._fh.write(raw.ljust(self._reserve))
        self.finished = True


@contextlib.contextmanager
def safetensors_writer(path: str | os.PathLike, reserve: int) -> Iterator[SafetensorsWriter]:
    """A :class:`SafetensorsWriter` on a temporary file renamed to ``path`` when the block ends without error (the
    block must call :meth:`SafetensorsWriter.finish`); an error leaves no file behind."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = SafetensorsWriter(fh, reserve, Path(path))
        yield writer
        if not writer.finished:
            raise RuntimeError(f"{path}: the header was never written")


def write_tensors(
    path: str | os.PathLike,
    layout: Sequence[tuple[str, int]],
    tensors: Iterable[tuple[str, Tensor]],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` (name, tensor), produced one at a time, as safetensors at ``path`` atomically; ``layout``
    lists (name, number of dimensions) of everything that will come, for the header's space."""
    with safetensors_writer(path, header_bound(layout, metadata)) as writer:
        for name, t in tensors:
            writer.add(name, t)
        writer.finish(metadata)
    return Path(path)
