"""Sparse exports (the format of :func:`pqprune.export.save_sparse`) written a tensor at a time, for checkpoints
too large to hold: ``pqprune export --format sparse`` and ``pqprune prune --sparse-out``."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from pqprune.checkpoint.sources import Source
from pqprune.checkpoint.writer import SafetensorsWriter, header_bound, safetensors_writer
from pqprune.export.metrics import MetricsTally
from pqprune.export.sparse import SPARSE, encode_tensor
from pqprune.files import FileFormatError

_SEP = "::"


def check_finite(what: str, name: str, w: Tensor, keep: Tensor | None) -> None:
    """Refuse NaN or infinite surviving weights: exported, they make every output NaN."""
    if w.is_floating_point() and not bool(torch.isfinite(w if keep is None else w[keep]).all()):
        raise FileFormatError(f"{what}: tensor {name!r} has NaN or infinite surviving entries")


class SparseExport:
    """Tensors appended one at a time, each masked one in its smallest encoding; :meth:`finish` writes the
    metadata (format, version and every tensor's encoding, shape and dtype, in order)."""

    def __init__(self, writer: SafetensorsWriter) -> None:
        self.writer = writer
        self.entries: list[list[Any]] = []
        self.pruned = False

    @staticmethod
    def reserve(source: Source) -> int:
        """Header space for ``source``: each tensor dense or as up to three 1-D parts, and metadata listing every
        tensor with the longest encoding and dtype names."""
        parts = [(f"{n}{_SEP}indices", 1) for n in source.infos for _ in range(3)]
        dense = [(n, len(i.shape)) for n, i in source.infos.items()]
        worst = [
            [n, {"encoding": "bitmask", "shape": list(i.shape), "dtype": "bfloat16"}] for n, i in source.infos.items()
        ]
        meta = {**SPARSE.stamp(), "tensors": json.dumps(worst)}
        return header_bound([*parts, *dense], meta)

    def add(self, name: str, w: Tensor, keep: Tensor | None) -> None:
        if _SEP in name:
            raise ValueError(f"tensor {name!r} contains {_SEP!r}, which the sparse format reserves")
        w = w.detach().to("cpu")
        enc, parts = encode_tensor(w, keep) if keep is not None else ("dense", {"": w})
        for part, tensor in parts.items():
            self.writer.add(f"{name}{_SEP}{part}" if part else name, tensor)
        self.entries.append(
            [name, {"encoding": enc, "shape": list(w.shape), "dtype": str(w.dtype).removeprefix("torch.")}]
        )
        self.pruned = self.pruned or (keep is not None and not bool(keep.all()))

    def finish(self) -> None:
        if not self.pruned:
            raise ValueError("nothing is pruned: every mask keeps every entry (prune the model first)")
        self.writer.finish({**SPARSE.stamp(), "tensors": json.dumps(self.entries)})


@contextlib.contextmanager
def sparse_export(path: str | os.PathLike, source: Source) -> Iterator[SparseExport]:
    """A :class:`SparseExport` of ``source``'s tensors into ``path``, atomic (nothing is left if the block raises)."""
    with safetensors_writer(path, SparseExport.reserve(source)) as writer:
        yield SparseExport(writer)


def export_sparse(source: Source, names: Sequence[str], out: str | os.PathLike, zeros_as_masks: bool) -> MetricsTally:
    """Every tensor of ``source`` into the sparse export ``out``, masked by the source's masks (or, with
    ``zeros_as_masks``, by the zeros of the tensors ``names``); returns the metrics of the pruned model.

    Raises:
        FileFormatError: a surviving weight is NaN or infinite. ValueError: nothing is pruned.
    """
    selected = set(names)
    tally = MetricsTally()
    with sparse_export(out, source) as sx:
        for name, w, m in source.stream(list(source.infos)):
            if zeros_as_masks and name in selected:
                m = w != 0
            check_finite(source.what, name, w, m)
            tally.add(name, w, m)
            sx.add(name, w, m)
        sx.finish()
    return tally
