"""A physically smaller model: :func:`shrink` removes dead neurons / channels from chains of Linear / Conv /
BatchNorm layers, giving a smaller dense ``nn.Module`` that computes the same function (in eval mode);
:func:`save_shrunk` / :func:`load_shrunk` store it with its architecture, so it loads without pqprune knowing the
original model.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from pqprune.export.sparse import MaskLike, pruned_copy
from pqprune.files import FileFormat, FileFormatError
from pqprune.measure.weights import as_rows

SHRUNK = FileFormat("pqprune.shrunk", 1, "shrunk model")


# --------------------------------------------------------------------------------------------- shrink
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Layers that act on each channel separately and map a channel that is constant (over space) to a constant
# (in eval mode): dead channels can be traced through them.
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
)
_IDENTITY_IN_EVAL = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_BN = nn.modules.batchnorm._BatchNorm
_Layer = nn.Linear | nn.modules.conv._ConvNd  # a weighted layer of the chain


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


def _check_between(a_name: str, a: _Layer, b_name: str, b: _Layer, between: list[tuple[str, nn.Module]]) -> _Boundary:
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
            if (
                isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d))
                and mod.count_include_pad
                and any(p != 0 for p in np.atleast_1d(mod.padding))
            ):
                foldable = False  # zero padding is averaged in: a constant channel is not constant at the borders
            continue
        if isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise ValueError(
                    f"cannot shrink: {_describe(name, mod)} must flatten dims 1..-1 to keep channels whole"
                )
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
            raise ValueError(
                f"cannot shrink: {a_name!r} (conv) feeds {b_name!r} (Linear) without a Flatten between them"
            )
        if b.in_features % channels:
            raise ValueError(
                f"cannot shrink: {b_name!r} has {b.in_features} inputs, not a multiple of the {channels} channels of {a_name!r}"
            )
        factor = b.in_features // channels
    else:
        if flattened:
            raise ValueError(
                f"cannot shrink: {a_name!r} feeds the convolution {b_name!r} through a flatten or a Linear layer"
            )
        if b.in_channels != channels:
            raise ValueError(f"cannot shrink: {b_name!r} takes {b.in_channels} channels, {a_name!r} gives {channels}")
        factor = 1
        zero_pad = b.padding == "valid" or (b.padding != "same" and all(p == 0 for p in b.padding))
        # Zero padding breaks a constant channel at the borders: its effect is no longer a bias.
        foldable = foldable and (zero_pad or b.padding_mode != "zeros")
    for name, mod in between:
        if isinstance(mod, _BN) and mod.num_features not in (channels, channels * factor):
            raise ValueError(
                f"cannot shrink: {_describe(name, mod)} has {mod.num_features} features, {a_name!r} gives {channels} channels"
            )
        if isinstance(mod, _BN) and mod.num_features != channels and factor > 1:
            foldable = False  # per-feature BN after a flatten: a dead channel is no longer one constant
    return _Boundary(between, factor, foldable)


def _constants(bias: Tensor, between: list[tuple[str, nn.Module]]) -> Tensor:
    """What each channel of A outputs (in eval mode) after ``between`` when all its incoming weights are 0."""
    x = bias.detach().double().clone()
    for _name, mod in between:
        if isinstance(mod, _BN):
            if mod.running_mean is not None and mod.running_var is not None and mod.num_features == x.numel():
                x = (x - mod.running_mean.double()) / torch.sqrt(mod.running_var.double() + mod.eps)
                if mod.affine:
                    x = x * mod.weight.detach().double() + mod.bias.detach().double()
        elif isinstance(mod, _ELEMENTWISE):
            x = mod(x.clone())  # clone: ReLU(inplace=True) must not change our copy of the bias
    return x


def _weight_view(b: _Layer, channels: int) -> Tensor:
    """B's weight as ``(out, channels of A, taps)``: every entry reading channel j of A sits in ``[:, j, :]``."""
    return b.weight.detach().reshape(b.weight.shape[0], channels, -1)


@torch.no_grad()
def _slice_bn(mod: nn.modules.batchnorm._BatchNorm, keep: Tensor, factor: int) -> None:
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
def _shrink_boundary(a: _Layer, b: _Layer, bd: _Boundary) -> bool:
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


def shrink(model: nn.Module, masks: MaskLike = None) -> nn.Sequential:
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
    leaves = _leaves(cast(nn.Sequential, work))
    weighted = [i for i, (_n, mod) in enumerate(leaves) if isinstance(mod, _WEIGHTED)]
    layers = {i: cast(_Layer, leaves[i][1]) for i in weighted}
    for i in weighted:
        name, layer = leaves[i][0], layers[i]
        if not isinstance(layer, nn.Linear) and layer.groups != 1:
            raise ValueError(
                f"cannot shrink: {_describe(name, layer)} is a grouped convolution (groups={layer.groups})"
            )
    bounds = [
        _check_between(leaves[i][0], layers[i], leaves[j][0], layers[j], leaves[i + 1 : j])
        for i, j in zip(weighted, weighted[1:])
    ]
    changed = True
    while changed:  # to a fixed point: a removal upstream can make a downstream neuron dead, and back
        changed = False
        for k, bd in enumerate(bounds):
            changed |= _shrink_boundary(layers[weighted[k]], layers[weighted[k + 1]], bd)
    out = nn.Sequential(*[mod for _n, mod in leaves])
    out.train(model.training)
    return out


# --------------------------------------------------------------------------------------------- shrunk file
def _spec_types() -> dict[str, type[nn.Module]]:
    from pqprune.experiment.models import ToChannels

    types = (
        *_WEIGHTED,
        *_ELEMENTWISE,
        *_IDENTITY_IN_EVAL,
        *_POOLS,
        nn.Flatten,
        ToChannels,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
    )
    return {t.__name__: t for t in types}


def _module_spec(name: str, mod: nn.Module) -> dict[str, Any]:
    """``{"type", "args"}`` rebuilding ``mod``: its constructor arguments read back from its attributes."""
    types = _spec_types()
    if type(mod).__name__ not in types or types[type(mod).__name__] is not type(mod):
        raise ValueError(f"cannot save {_describe(name, mod)} in a shrunk file: only {', '.join(sorted(types))}")
    args: dict[str, Any] = {}
    for p in inspect.signature(type(mod).__init__).parameters.values():
        if (
            p.name in ("self", "device", "dtype")
            or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            or not hasattr(mod, p.name)
        ):
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
    meta = {"modules": json.dumps(specs), "dtype": ",".join(sorted(dtypes))}
    return SHRUNK.save_tensors(model.state_dict(), path, meta)


def load_shrunk(path: str | os.PathLike) -> nn.Sequential:
    """Rebuild the model saved by :func:`save_shrunk` (in eval mode)."""
    state, meta = SHRUNK.load_tensors(path)
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
    try:
        dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
        if dtype is not None:
            model.to(dtype)
        model.load_state_dict(state)
    except RuntimeError as err:
        raise FileFormatError(
            f"{path}: weights do not fit the saved architecture ({str(err).splitlines()[0]})"
        ) from err
    return model.eval()
