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
from pqprune.export.sparse import MaskLike, _mask_dict, apply_masks, compact_nbytes
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
