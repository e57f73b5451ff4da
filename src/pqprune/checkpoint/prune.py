"""One-shot pruning of a checkpoint without training (``pqprune prune``), one tensor at a time.

The method plans on the source's weights read on demand (:class:`SourceWeights`): counts and power sums add up
tensor by tensor, so nothing is held but one tensor and per-row statistics. The selection is the engine's exact-k
selection: per tensor at layer and neuron scope (:func:`pqprune.prune.select.select_prune` on that tensor), and
at global scope the streaming radix selection (:func:`pqprune.prune.select.global_masks`), which reads the
tensors a few times and never concatenates them. The result is the masks ``Pruner(model, method, scope).step()``
gives on the same weights loaded whole (ties broken by flat index in the source's order), written one tensor at a
time as pqprune's mask file and, optionally, as a sparse export of the whole checkpoint with the masks applied.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from pqprune.checkpoint.sources import Source, SourceMasks, SourceWeights
from pqprune.checkpoint.sparse_stream import check_finite, sparse_export
from pqprune.checkpoint.writer import header_bound, safetensors_writer
from pqprune.files import FileFormatError
from pqprune.measure.weights import GLOBAL, Scope
from pqprune.prune.masks import MASKS
from pqprune.prune.methods.base import Method, UnitRecord
from pqprune.prune.select import global_masks, score_stream, select_prune


@dataclass
class PruneResult:
    """What was pruned: per tensor (name, entries, survivors before, survivors after) and the method's records."""

    tensors: list[tuple[str, int, int, int]] = field(default_factory=list)
    records: list[UnitRecord] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        numel = sum(t[1] for t in self.tensors)
        before, after = sum(t[2] for t in self.tensors), sum(t[3] for t in self.tensors)
        return {
            "tensors": [
                {"name": n, "numel": e, "kept_before": b, "kept": a, "density": a / e if e else None}
                for n, e, b, a in self.tensors
            ],
            "numel": numel,
            "kept_before": before,
            "kept": after,
            "density": after / numel if numel else None,
        }


def _keep_masks(
    weights: SourceWeights,
    alive: SourceMasks,
    counts: Mapping[str, int | Tensor],
    scores: Mapping[str, Tensor],
    scope: Scope,
) -> Iterator[Tensor]:
    """The survivor mask of each tensor after pruning, in order, one at a time."""
    if scope == "global":
        stream, score = score_stream(scores, alive, weights.names)
        yield from global_masks(stream, int(counts.get(GLOBAL, 0)), score)
        return
    for name in weights.names:
        a = alive.get(name)
        chosen = select_prune({name: scores[name]}, {name: counts.get(name, 0)}, scope, {name: a})[name]
        yield ~chosen if a is None else a & ~chosen


def prune_source(
    source: Source,
    names: Sequence[str],
    method: Method,
    scope: Scope,
    out: str | os.PathLike,
    sparse_out: str | os.PathLike | None = None,
) -> PruneResult:
    """Prune the tensors ``names`` of ``source`` once with ``method`` at ``scope`` (the source's masks, if any, are
    the survivors before); write the masks to ``out`` and, given ``sparse_out``, the sparse export of every tensor
    of the source with the masks applied. Both files are written atomically, a tensor at a time.

    Raises:
        FileFormatError: a surviving weight is NaN or infinite (nothing is written).
        ValueError: the method cannot work here, or (``sparse_out``) nothing is pruned.
    """
    method.check_scope(scope)
    weights, alive = SourceWeights(source, names), SourceMasks(source, names)
    try:
        plan = method.plan(weights, alive, scope, 0)
    except ValueError as err:
        if "NaN or infinite" in str(err):  # power sums refuse them, naming the tensor: name the checkpoint too
            raise FileFormatError(f"{source.what}: {err}") from err
        raise
    result = PruneResult(records=plan.records)
    mask_meta = MASKS.stamp()
    selected = set(names)
    with contextlib.ExitStack() as stack:
        masks_w = stack.enter_context(
            safetensors_writer(out, header_bound([(n, len(weights.shapes[n])) for n in names], mask_meta))
        )
        sparse = None if sparse_out is None else stack.enter_context(sparse_export(sparse_out, source))
        keeps = _keep_masks(weights, alive, plan.counts, plan.scores, scope)
        for name in source.infos if sparse is not None else names:
            keep = next(keeps) if name in selected else source.mask(name)
            w = weights[name] if name in selected else source.read(name)
            check_finite(source.what, name, w, keep)
            if name in selected:
                assert keep is not None
                masks_w.add(name, keep)
                before = alive.get(name)
                result.tensors.append(
                    (name, w.numel(), w.numel() if before is None else int(before.sum()), int(keep.sum()))
                )
            if sparse is not None:
                sparse.add(name, w, keep)
        masks_w.finish(mask_meta)
        if sparse is not None:
            sparse.finish()
    return result
