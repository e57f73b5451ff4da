"""Checkpoint sources: whatever a user points a command at, as named tensors handed out one at a time, with the
masks that go with them.

:func:`open_source` takes

* one file, whatever its extension (the kind is read from its content, :func:`pqprune.checkpoint.formats.detect`):
  safetensors, a ``torch.save`` state dict (zip or legacy pickle; a ``{"state_dict": ...}`` or ``{"model": ...}``
  checkpoint is unwrapped), or a JSON shard index (``model.safetensors.index.json``);
* a folder: a Hugging Face-style folder (its ``*.index.json``, else its ``*.safetensors`` files, else its one
  ``.bin``/``.pt``), or a pqprune run folder (``settings.json`` + ``round_XXX.{json,safetensors}``);
* pqprune's own files: a round checkpoint (its run folder at that round), a sparse export, a shrunk export.

Masks come with run folders (a round's tensors hold the masks after that round's pruning step: the pruned model
``pqprune export`` writes), with sparse exports (the stored pattern) and shrunk exports (their zeros); a plain
checkpoint gets them from a mask file (``masks=``). Tensors of safetensors files are memory-mapped one at a time,
zip ``torch.save`` files are memory-mapped as a whole, legacy pickles are read into memory.

Tensors are listed in natural order of their names (``layers.2`` before ``layers.10``) for safetensors-based
sources, whose headers keep no order, and in stored order for ``torch.save`` files; global selection breaks ties
in this order.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pqprune.checkpoint.formats import SafetensorsReader, TensorInfo, detect, load_torch
from pqprune.experiment.rundir import ROUND, RunDir
from pqprune.export.shrink import SHRUNK
from pqprune.export.sparse import SPARSE, decode_entry
from pqprune.files import FileFormatError
from pqprune.measure.weights import MEASURED_DTYPES, check_mask, match_names, prunable_by_default
from pqprune.prune.masks import MASKS
from pqprune.prune.methods.base import WeightsOnDemand

_TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def natural_key(name: str) -> list[Any]:
    """Sort key ordering digit runs by value: ``layers.2.x`` before ``layers.10.x``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass
class Source:
    """Named tensors of a checkpoint, read one at a time, and the masks that go with them.

    ``infos``: name → shape and dtype of every tensor, in source order, known without reading data. ``inputs``:
    every file read (a command must not write over one). ``masks_from``: where the masks come from (None: no
    masks). ``settings``: a run's settings (its model), else None.
    """

    path: Path
    what: str
    infos: dict[str, TensorInfo]
    readers: dict[str, Callable[[], Tensor]]
    inputs: list[Path]
    mask_readers: dict[str, Callable[[], Tensor]] = field(default_factory=dict)
    masks_from: str | None = None
    settings: dict[str, Any] | None = None

    def read(self, name: str) -> Tensor:
        return self.readers[name]()

    def mask(self, name: str) -> Tensor | None:
        """The bool mask of ``name`` (True = survives), checked against its shape; None when it has none."""
        reader = self.mask_readers.get(name)
        if reader is None:
            return None
        try:
            return check_mask(name, reader(), self.infos[name].shape, source=self.masks_from, allow_01=True)
        except ValueError as err:
            raise FileFormatError(str(err)) from err

    def stream(self, names: Sequence[str]) -> Iterator[tuple[str, Tensor, Tensor | None]]:
        """``(name, tensor, mask or None)`` for ``names``, one at a time (each freed when the caller drops it)."""
        for name in names:
            yield name, self.read(name), self.mask(name)

    def select(self, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> list[str]:
        """Names of the tensors to measure or prune, in source order.

        Default: :func:`pqprune.measure.weights.prunable_by_default` (floating ``*weight`` tensors with two or more
        dimensions, embedding tables left out). ``include``: fnmatch patterns replacing that rule (any floating
        tensor whose name matches one; each pattern must match something). ``exclude``: patterns removing names.
        """
        if include:
            for pat in include:
                if not any(fnmatch.fnmatchcase(n, pat) for n in self.infos):
                    raise ValueError(f"--include {pat!r} matches no tensor of {self.what}")
            names = [n for n in self.infos if any(fnmatch.fnmatchcase(n, pat) for pat in include)]
            for n in names:
                if self.infos[n].dtype not in MEASURED_DTYPES:
                    raise ValueError(
                        f"tensor {n!r} of {self.what} is {self.infos[n].dtype}; only float32/64, float16 and "
                        "bfloat16 tensors can be measured or pruned"
                    )
        else:
            names = [n for n, i in self.infos.items() if prunable_by_default(n, len(i.shape), i.dtype)]
        names = [n for n in names if not any(fnmatch.fnmatchcase(n, pat) for pat in exclude or ())]
        if not names:
            rule = "--include/--exclude" if include or exclude else "floating '*weight' tensors with dim() > 1"
            raise ValueError(f"{self.what}: no prunable weights found ({rule}; embeddings excluded by default)")
        return names

    def load(self, names: Sequence[str] | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every tensor (or ``names``) in memory, and the masks of those that have one."""
        names = list(self.infos) if names is None else list(names)
        state = {n: self.read(n) for n in names}
        masks = {n: m for n in names if (m := self.mask(n)) is not None}
        return state, masks


# --------------------------------------------------------------------------------------------- on demand
class SourceWeights(WeightsOnDemand):
    """The tensors ``names`` of a source, read when looked up; the last two read are kept for the next lookups (the
    streaming selection reads one tensor ahead of the mask it hands out)."""

    def __init__(self, source: Source, names: Sequence[str]) -> None:
        self.source, self.names = source, list(names)
        self.shapes = {n: torch.Size(source.infos[n].shape) for n in self.names}
        self._recent: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self.shapes:
            raise KeyError(name)
        if name not in self._recent:
            if len(self._recent) >= 2:
                del self._recent[next(iter(self._recent))]
            self._recent[name] = self.source.read(name)
        return self._recent[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class SourceMasks(Mapping[str, "Tensor | None"]):
    """The source's masks of ``names`` (None where a tensor has none), read when looked up."""

    def __init__(self, source: Source, names: Sequence[str]) -> None:
        self.source, self.names = source, [n for n in names if n in source.mask_readers]
        self._last: tuple[str, Tensor | None] | None = None

    def __getitem__(self, name: str) -> Tensor | None:
        if name not in self.names:
            raise KeyError(name)
        if self._last is None or self._last[0] != name:
            self._last = (name, self.source.mask(name))
        return self._last[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


# --------------------------------------------------------------------------------------------- building sources
def _from_reader(reader: SafetensorsReader, names: Sequence[str] | None = None) -> tuple[dict, dict]:
    names = sorted(reader.infos, key=natural_key) if names is None else names
    return {n: reader.infos[n] for n in names}, {n: partial(reader.read, n) for n in names}


def _from_dict(tensors: Mapping[str, Tensor]) -> tuple[dict, dict]:
    infos = {n: TensorInfo(n, tuple(t.shape), t.dtype) for n, t in tensors.items()}
    return infos, {n: partial(_same, t) for n, t in tensors.items()}


def _shard(path: Path) -> tuple[dict, dict]:
    """Infos and readers of one weight file (safetensors or ``torch.save``), checked by content."""
    kind, found = detect(path)
    if kind == "safetensors":
        return _from_reader(SafetensorsReader(path, found))
    if kind == "index":
        raise FileFormatError(f"{path}: a shard index cannot be a shard")
    return _from_dict(load_torch(path, kind))


def _index_source(path: Path, doc: Mapping[str, Any]) -> Source:
    """A ``save_pretrained`` shard index: ``weight_map`` names the shard (relative to the index) of every tensor."""
    weight_map = doc["weight_map"]
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise FileFormatError(f"{path}: weight_map entry {name!r} is not a file name")
        by_shard.setdefault(shard, []).append(name)
    if not by_shard:
        raise FileFormatError(f"{path}: the shard index lists no tensors")
    infos: dict[str, TensorInfo] = {}
    readers: dict[str, Callable[[], Tensor]] = {}
    inputs = [path]
    for shard, names in by_shard.items():
        file = path.parent / shard
        if not file.is_file():
            raise FileFormatError(f"{path}: shard {shard!r} listed in the index is missing ({file})")
        s_infos, s_readers = _shard(file)
        absent = [n for n in names if n not in s_infos]
        if absent:
            raise FileFormatError(f"{path}: the index places {absent[0]!r} in {shard!r}, which does not hold it")
        infos.update({n: s_infos[n] for n in names})
        readers.update({n: s_readers[n] for n in names})
        inputs.append(file)
    order = sorted(infos, key=natural_key)
    what = f"{path} ({len(by_shard)} shard{'s' if len(by_shard) > 1 else ''})"
    return Source(path, what, {n: infos[n] for n in order}, readers, inputs)


def _files_source(folder: Path, files: Sequence[Path]) -> Source:
    """Several safetensors files of one model without an index: their tensors together."""
    infos: dict[str, TensorInfo] = {}
    readers: dict[str, Callable[[], Tensor]] = {}
    for file in files:
        s_infos, s_readers = _shard(file)
        for n in s_infos:
            if n in infos:
                raise FileFormatError(f"{folder}: tensor {n!r} is in more than one file (found again in {file.name})")
        infos.update(s_infos)
        readers.update(s_readers)
    order = sorted(infos, key=natural_key)
    what = f"{folder} ({len(files)} files)" if len(files) > 1 else str(files[0])
    return Source(folder, what, {n: infos[n] for n in order}, readers, list(files))


def _run_source(folder: Path, round_: int | None) -> Source:
    """Round ``round_`` of a run folder (default: the last finished one that kept its tensors), masks applied."""
    rd = RunDir(folder.parent, folder.name)
    finished = rd.finished_rounds()
    kept = [t for t in finished if rd.tensors(t).exists()]
    if round_ is None:
        if not kept:
            raise FileFormatError(f"{folder}: a run folder with no finished round that kept its tensors")
        round_ = kept[-1]
    elif round_ not in kept:
        why = "is not finished" if round_ not in finished else "did not keep its tensors (keep_checkpoints=last)"
        raise FileFormatError(f"{folder}: round {round_} {why}; rounds with tensors: {kept or 'none'}")
    doc = rd.read_round(round_)
    reader = SafetensorsReader(rd.tensors(round_))
    ROUND.check(reader.metadata, reader.path)
    model = sorted((k for k in reader.infos if k.startswith("model/")), key=natural_key)
    infos = {k.removeprefix("model/"): reader.infos[k] for k in model}
    infos = {n: TensorInfo(n, i.shape, i.dtype) for n, i in infos.items()}
    readers: dict[str, Callable[[], Tensor]] = {n: partial(reader.read, f"model/{n}") for n in infos}
    skeleton = (doc.get("pruner") or {}).get("masks") or {}
    masks: dict[str, Callable[[], Tensor]] = {}
    for name, leaf in skeleton.items():
        key = leaf.get("__tensor__") if isinstance(leaf, Mapping) else None
        if key not in reader.infos or name not in infos:
            raise FileFormatError(f"{reader.path}: the mask of {name!r} named in {rd.json(round_)} is missing")
        masks[name] = partial(reader.read, key)
    src = Source(folder, f"run {folder.name}, round {round_}", infos, readers, [rd.json(round_), reader.path])
    src.mask_readers, src.masks_from, src.settings = masks, str(reader.path), rd.settings()
    return src


def _sparse_source(path: Path, reader: SafetensorsReader) -> Source:
    """A sparse export: each tensor decoded when read, its mask the stored pattern (zeros for dense ones)."""
    SPARSE.check(reader.metadata, path)
    try:
        entries = [(str(e[0]), dict(e[1])) for e in json.loads(reader.metadata["tensors"])]
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise FileFormatError(f"{path}: bad sparse-export metadata ({err})") from err
    raw = _LazyParts(reader)
    infos: dict[str, TensorInfo] = {}
    for name, info in entries:
        dtype = getattr(torch, str(info.get("dtype")), None)
        if not isinstance(dtype, torch.dtype) or not isinstance(info.get("shape"), list):
            raise FileFormatError(f"{path}: bad metadata for tensor {name!r}")
        infos[name] = TensorInfo(name, tuple(int(s) for s in info["shape"]), dtype)
    meta = dict(entries)
    src = Source(path, f"sparse export {path}", infos, {}, [path])
    src.readers = {n: partial(_decoded, raw, n, meta[n], path, False) for n in infos}
    src.mask_readers = {
        n: partial(_decoded, raw, n, meta[n], path, True)
        for n, i in infos.items()
        if prunable_by_default(n, len(i.shape), i.dtype)
    }
    src.masks_from = str(path)
    return src


def _decoded(raw: Mapping[str, Tensor], name: str, info: Mapping[str, Any], path: Path, pattern: bool) -> Tensor:
    """A sparse export's tensor, or (``pattern``) its mask: the stored pattern, or its zeros for a dense entry."""
    tensor, mask = decode_entry(raw, name, info, path)
    if not pattern:
        return tensor
    return tensor != 0 if mask is None else mask


def _same(t: Tensor) -> Tensor:
    return t


def _nonzero(read: Callable[[], Tensor]) -> Tensor:
    return read() != 0


class _LazyParts(Mapping[str, Tensor]):
    """The stored entries of a safetensors file as a mapping, each read when looked up."""

    def __init__(self, reader: SafetensorsReader) -> None:
        self.reader = reader

    def __getitem__(self, key: str) -> Tensor:
        if key not in self.reader.infos:
            raise KeyError(key)
        return self.reader.read(key)

    def __contains__(self, key: object) -> bool:
        return key in self.reader.infos

    def __iter__(self) -> Iterator[str]:
        return iter(self.reader.infos)

    def __len__(self) -> int:
        return len(self.reader.infos)


def memory_source(
    weights: Mapping[str, Tensor], masks: Mapping[str, Tensor | None] | None = None, what: str = "the model"
) -> Source:
    """Tensors already in memory (and their masks) as a :class:`Source`."""
    infos, readers = _from_dict(weights)
    src = Source(Path(what), what, infos, readers, [])
    present = {n: m for n, m in (masks or {}).items() if m is not None}
    src.mask_readers = {n: partial(_same, m) for n, m in present.items()}
    src.masks_from = what if present else None
    return src


def _file_source(path: Path, round_: int | None) -> Source:
    kind, found = detect(path)
    if kind == "index":
        return _index_source(path, found)
    if kind != "safetensors":
        infos, readers = _from_dict(load_torch(path, kind))
        return Source(path, str(path), infos, readers, [path])
    reader = SafetensorsReader(path, found)
    fmt = reader.metadata.get("format")
    if fmt == ROUND.name:  # a round file: its run folder at that round
        m = re.fullmatch(r"round_(\d+)\.safetensors", path.name)
        return _run_source(path.parent, round_ if round_ is not None else int(m.group(1)) if m else None)
    if fmt == MASKS.name:
        raise FileFormatError(f"{path}: a pqprune mask file, not weights (give it with --masks beside the weights)")
    if fmt == SPARSE.name:
        return _sparse_source(path, reader)
    infos, readers = _from_reader(reader)
    src = Source(path, str(path), infos, readers, [path])
    if fmt == SHRUNK.name:  # pruned entries inside the kept neurons are its zeros
        src.what, src.masks_from = f"shrunk export {path}", str(path)
        src.mask_readers = {
            n: partial(_nonzero, readers[n]) for n, i in infos.items() if prunable_by_default(n, len(i.shape), i.dtype)
        }
    return src


def _folder_source(folder: Path, round_: int | None) -> Source:
    if (folder / "settings.json").is_file() or any(folder.glob("round_*.json")):
        return _run_source(folder, round_)
    indexes = sorted(folder.glob("*.index.json"), key=lambda p: (not p.name.endswith(".safetensors.index.json"), p))
    if indexes:
        return _file_source(indexes[0], round_)
    shards = sorted(folder.glob("*.safetensors"), key=lambda p: natural_key(p.name))
    if shards:
        return _files_source(folder, shards)
    pickles = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _TORCH_SUFFIXES)
    if len(pickles) == 1:
        return _file_source(pickles[0], round_)
    if pickles:
        names = ", ".join(p.name for p in pickles)
        raise FileFormatError(f"{folder}: several weight files and no index ({names}); name one of them")
    raise FileFormatError(
        f"{folder}: a folder with no weights (no *.index.json, *.safetensors, .bin/.pt file, nor a pqprune run)"
    )


def open_source(path: str | os.PathLike, round_: int | None = None, masks: str | os.PathLike | None = None) -> Source:
    """The :class:`Source` at ``path`` (a file or a folder, see the module's docstring).

    ``round_``: the round of a run folder (default: its last finished round). ``masks``: a mask file for a plain
    checkpoint (pqprune's mask format, or safetensors / ``torch.save`` of bool or 0/1 tensors keyed by name).

    Raises:
        FileFormatError: one line naming the file: missing, unreadable, of no known kind, or inconsistent.
    """
    p = Path(path)
    if not p.exists():
        raise FileFormatError(f"{p}: no such file or folder")
    src = _folder_source(p, round_) if p.is_dir() else _file_source(p, round_)
    if round_ is not None and not src.what.startswith("run "):
        raise FileFormatError(f"{p}: --round is for a run folder, not {src.what}")
    if masks is not None:
        if src.masks_from is not None:
            raise FileFormatError(f"{src.what} carries its own masks; --masks is for a plain checkpoint")
        _attach_masks(src, Path(masks))
    return src


def _attach_masks(src: Source, path: Path) -> None:
    """Masks of a mask file, matched to ``src`` by name and shape (errors name the mask file)."""
    kind, found = detect(path)
    if kind == "safetensors":
        reader = SafetensorsReader(path, found)
        if reader.metadata.get("format") is not None:
            MASKS.check(reader.metadata, path)
        infos, readers = _from_reader(reader)
    elif kind == "index":
        raise FileFormatError(f"{path}: a shard index, not a mask file")
    else:
        infos, readers = _from_dict(load_torch(path, kind))
    try:
        match_names(src.infos, infos, str(path))
        for n, info in infos.items():  # shapes now, from the header; values when each mask is read (Source.mask)
            check_mask(n, torch.empty(info.shape, dtype=torch.bool, device="meta"), src.infos[n].shape, str(path))
    except ValueError as err:
        raise FileFormatError(str(err)) from err
    src.mask_readers, src.masks_from = readers, str(path)
    src.inputs.append(path)
