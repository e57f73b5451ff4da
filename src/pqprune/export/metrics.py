"""The ShrinkBench-style record of a model: parameters, nonzeros, sizes, dense and nonzero FLOPs
(multiply-accumulates) and the theoretical speedup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from pqprune.export.shrink import _WEIGHTED
from pqprune.export.sparse import MaskLike, _mask_dict, choose_encoding, encoding_sizes
from pqprune.measure.weights import is_prunable_entry

# Buffers of normalisation layers are not parameters: they are left out of the parameter count of a state dict.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


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
                conv = cast(nn.modules.conv._ConvNd, mod)
                n = out.numel() * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
            macs[name] = macs.get(name, 0) + n

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, _WEIGHTED)]
    was = model.training
    param = next(model.parameters(), None)
    x = torch.zeros(
        1,
        *input_shape,
        dtype=param.dtype if param is not None else torch.float32,
        device=param.device if param is not None else "cpu",
    )
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(x)
    except Exception as err:  # shape errors come as RuntimeError, ValueError, IndexError…
        raise ValueError(
            f"model {type(model).__name__} cannot take inputs of shape {tuple(input_shape)}: {str(err).splitlines()[0]}"
        ) from err
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return macs


class MetricsTally:
    """The record of :func:`model_metrics` built one tensor at a time (:meth:`add`), for checkpoints too large to
    hold: every number is a sum over tensors."""

    def __init__(self) -> None:
        self.parameters = self.nonzeros = self.dense_bytes = self.compact_bytes = 0
        self.masked = self.masked_kept = self.entries = self.entries_nonzero = 0
        self.any_mask = False
        self.chain: list[tuple[int, int, int]] = []  # (dim, numel, nonzeros) of each prunable entry
        self.nonzero_of: dict[str, float] = {}  # name → fraction of nonzero weights, for FLOPs of a model

    def add(
        self,
        name: str,
        t: Tensor,
        mask: Tensor | None = None,
        parameter: bool | None = None,
        nonzeros: int | None = None,
        kept: int | None = None,
    ) -> None:
        """Count tensor ``name`` (masked entries as 0); ``parameter``: whether it is a parameter (default: any
        entry but BatchNorm running statistics). ``nonzeros`` (of the masked tensor) and ``kept`` (survivors of
        ``mask``) may be given when known, saving a pass each."""
        t = t.detach()
        if mask is not None:
            mask = mask.to(t.device)
        if nonzeros is None:
            nonzeros = int(torch.count_nonzero(t if mask is None else t.masked_fill(~mask, 0)))
        nz = nonzeros
        if parameter if parameter is not None else not _is_buffer_name(name):
            self.parameters += t.numel()
            self.nonzeros += nz
        self.dense_bytes += t.numel() * (4 if t.is_floating_point() else t.element_size())
        if mask is not None:
            self.any_mask = True
            kept = int(torch.count_nonzero(mask)) if kept is None else kept
            self.masked += mask.numel()
            self.masked_kept += kept
            self.compact_bytes += encoding_sizes(t.shape, kept, t.dtype)[choose_encoding(t.shape, kept, t.dtype)]
        else:
            self.compact_bytes += t.numel() * t.element_size()
        if is_prunable_entry(name, t):
            self.entries += t.numel()
            self.entries_nonzero += nz
            self.chain.append((t.dim(), t.numel(), nz))
        self.nonzero_of[name] = nz / t.numel() if t.numel() else 0.0

    def merge(self, other: MetricsTally) -> None:
        """Add the tensors counted in ``other`` (e.g. on another thread), after those counted here."""
        for key in ("parameters", "nonzeros", "dense_bytes", "compact_bytes", "masked", "masked_kept", "entries"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.entries_nonzero += other.entries_nonzero
        self.any_mask = self.any_mask or other.any_mask
        self.chain += other.chain
        self.nonzero_of.update(other.nonzero_of)

    def result(self, flops: tuple[int, int] | None = None, chain: bool = False) -> dict[str, Any]:
        """The record; ``flops``: (dense, nonzero) MACs of a model; ``chain``: without a model, those of a chain of
        2-D weights (each applied once per example) when all prunable entries are 2-D; else FLOPs are None."""
        prunable, kept = (self.masked, self.masked_kept) if self.any_mask else (self.entries, self.entries_nonzero)
        flops_dense = flops_nonzero = None
        if flops is not None:
            flops_dense, flops_nonzero = flops
        elif chain and self.chain and all(d == 2 for d, _, _ in self.chain):
            flops_dense = sum(n for _, n, _ in self.chain)
            flops_nonzero = sum(nz for _, _, nz in self.chain)
        speedup = flops_dense / flops_nonzero if flops_dense is not None and flops_nonzero else None
        return {
            "parameters": self.parameters,
            "nonzeros": self.nonzeros,
            "compression": self.parameters / self.nonzeros if self.nonzeros else None,
            "prunable": prunable,
            "prunable_kept": kept,
            "density": kept / prunable if prunable else None,
            "dense_bytes": self.dense_bytes,
            "compact_bytes": self.compact_bytes,
            "size_ratio": self.compact_bytes / self.dense_bytes if self.dense_bytes else None,
            "flops_dense": flops_dense,
            "flops_nonzero": flops_nonzero,
            "speedup": speedup,
        }


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
    if isinstance(model_or_state_dict, nn.Module):
        model = model_or_state_dict
        param_names = {n for n, _ in model.named_parameters()}
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    else:
        model = None
        state = {k: v.detach().cpu() for k, v in model_or_state_dict.items()}
        param_names = {n for n in state if not _is_buffer_name(n)}
    mk = _mask_dict(masks, state)
    tally = MetricsTally()
    for name, t in state.items():
        tally.add(name, t, mk.get(name), parameter=name in param_names)
    if input_shape is None:
        return tally.result()
    if model is None:
        return tally.result(chain=True)
    macs = _count_macs(model, input_shape)
    nonzero = sum(round(v * tally.nonzero_of[f"{n}.weight" if n else "weight"]) for n, v in macs.items())
    return tally.result((sum(macs.values()), nonzero))


def dense_bytes_actual(state: Mapping[str, Tensor]) -> int:
    """Bytes of tensor data of ``state`` stored dense at its own dtypes (what an unmasked tensor costs)."""
    return sum(t.numel() * t.element_size() for t in state.values())
