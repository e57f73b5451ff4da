"""What is measured: the prunable weights of a model, the three scopes, and masks matched to weights.

A unit is the set of entries one statistic and one pruning decision is made over (docs/math.md §1):

* ``global``: all prunable entries of the model, concatenated;
* ``layer``: one prunable tensor;
* ``neuron``: one output unit, i.e. one row of ``W.reshape(out_features, -1)``.

Every measure is computed over the *surviving* entries of a unit (masks mark survivors with True).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

Scope = Literal["global", "layer", "neuron"]
SCOPES: tuple[str, ...] = ("global", "layer", "neuron")
GLOBAL = "global"
"""Name of the single unit at global scope."""

WeightSource = Tensor | nn.Module | Mapping[str, Tensor]
Masks = Mapping[str, "Tensor | None"]  # a missing or None entry: the tensor is dense
Result = float | dict[str, float] | dict[str, Tensor]
# Module types whose 2-D+ "weight" is not a connection matrix: never pruned by default (docs/math.md §1).
_NOT_PRUNABLE = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
)


# --------------------------------------------------------------------------------------------- discovery
def prunable_weights(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters pqprune prunes by default: those named ``*weight`` with ``dim() > 1``.

    This covers ``nn.Linear``, ``nn.Conv{1,2,3}d`` and attention projections (``in_proj_weight``); weights of
    embeddings and normalisation layers are left out (docs/math.md §1).
    """
    found: dict[str, nn.Parameter] = {}
    for mod_name, mod in module.named_modules():
        if isinstance(mod, _NOT_PRUNABLE):
            continue
        for p_name, param in mod.named_parameters(recurse=False):
            if p_name.endswith("weight") and param.dim() > 1:
                found[f"{mod_name}.{p_name}" if mod_name else p_name] = param
    return found


EMBEDDING_PATTERNS: tuple[str, ...] = ("*embed*", "*wte.weight", "*wpe.weight")
"""Names of embedding tables in state dicts (``embed_tokens``, ``word_embeddings``, GPT-2's ``wte``/``wpe``): left
out by default, as :func:`prunable_weights` leaves out ``nn.Embedding`` modules."""
# One regular expression for all patterns: a state dict's names are checked on every measure call.
_EMBEDDING = re.compile("|".join(fnmatch.translate(p) for p in EMBEDDING_PATTERNS))
MEASURED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def prunable_by_default(name: str, ndim: int, dtype: torch.dtype) -> bool:
    """The default rule where module types are unknown (state dicts, checkpoint files): floating ``*weight``
    tensors (float32/64, float16, bfloat16) with ``dim() > 1``, except embedding tables (:data:`EMBEDDING_PATTERNS`)."""
    return name.endswith("weight") and ndim > 1 and dtype in MEASURED_DTYPES and _EMBEDDING.match(name) is None


def is_prunable_entry(name: str, tensor: Tensor) -> bool:
    """Rule for state dicts, where module types are unknown: :func:`prunable_by_default`."""
    return prunable_by_default(name, tensor.dim(), tensor.dtype)


def named_weights(obj: WeightSource) -> dict[str, Tensor]:
    """Name → tensor for a tensor (named ``"tensor"``), a module or a state dict."""
    if isinstance(obj, Tensor):
        return {"tensor": obj.detach()}
    if isinstance(obj, nn.Module):
        found = {n: p.detach() for n, p in prunable_weights(obj).items()}
    elif isinstance(obj, Mapping):
        found = {}
        for name, t in obj.items():
            if not isinstance(t, Tensor):
                raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
            if is_prunable_entry(name, t):
                found[name] = t.detach()
    else:
        raise TypeError(f"expected a tensor, an nn.Module or a state dict, got {type(obj).__name__}")
    if not found:
        raise ValueError(
            "no prunable weights found (floating tensors named '*weight' with dim() > 1, embeddings excluded)"
        )
    return found


def as_rows(w: Tensor) -> Tensor:
    """View a weight as ``(out_units, fan_in)``: a conv filter is flattened over ``in_channels × kernel``."""
    # the fan-in spelled out, not -1: reshape cannot infer it for a tensor without rows
    return w.reshape(1, -1) if w.dim() <= 1 else w.reshape(w.shape[0], math.prod(w.shape[1:]))


def _prefix(source: str | None) -> str:
    return f"{source}: " if source else ""


def check_mask(
    name: str, mask: Any, shape: Sequence[int] | None = None, source: str | None = None, allow_01: bool = False
) -> Tensor:
    """The one check of a mask, wherever one comes from (an argument, a file, a run): a tensor, of the weight's
    ``shape`` when given, bool — or, with ``allow_01``, of 0/1 values in any dtype, returned as bool (the form of
    ``torch.nn.utils.prune`` and of many saved masks). Errors name the mask, and ``source`` (e.g. a file) when given.

    Raises:
        ValueError: not a tensor, another shape, or not bool (or not 0/1 with ``allow_01``).
    """
    where = _prefix(source)
    if not isinstance(mask, Tensor):
        raise ValueError(f"{where}mask for {name!r} must be a bool tensor, got a {type(mask).__name__}")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{where}mask for {name!r} has shape {tuple(mask.shape)}, the weight has {tuple(shape)}")
    if mask.dtype == torch.bool:
        return mask
    if allow_01 and bool(((mask == 0) | (mask == 1)).all()):
        return mask != 0
    expected = "bool (or 0/1 values)" if allow_01 else "bool"
    found = f"{mask.dtype} with values other than 0 and 1" if allow_01 else str(mask.dtype)
    raise ValueError(f"{where}mask for {name!r} must be {expected}, got {found}")


def match_names(
    targets: Iterable[str],
    given: Iterable[str],
    source: str | None = None,
    what: str = "tensor",
    complete: bool = False,
    of: str = "masks",
) -> None:
    """Check that every name in ``given`` (of masks, or of per-tensor counts: ``of``) is one of ``targets`` (``what``
    says what they are: "parameter", "prunable weight", …) and, with ``complete``, that every target is given.

    Raises:
        ValueError: naming the unknown names (the known ones listed) or the missing ones, and ``source``.
    """
    known = list(targets)
    given = set(given)
    where = _prefix(source)
    unknown = sorted(given - set(known))
    if unknown:
        listed = ", ".join(map(repr, known[:12])) + (f", … ({len(known)} in all)" if len(known) > 12 else "")
        raise ValueError(f"{where}unknown {what} name(s) {unknown}; the known names are [{listed}]")
    missing = [n for n in known if n not in given] if complete else []
    if missing:
        raise ValueError(f"{where}no {of} for {what}(s) {missing}")


def match_masks(
    targets: Mapping[str, Any],
    masks: Mapping[str, Any],
    source: str | None = None,
    allow_01: bool = False,
    what: str = "tensor",
    complete: bool = False,
) -> dict[str, Tensor]:
    """The one check of a set of masks against the tensors they mask (``targets``: name → tensor or shape): the
    names by :func:`match_names` (every mask names one of them; with ``complete``, every one has a mask), then each
    mask by :func:`check_mask` against its shape. Returns name → bool mask for the masks given (a None entry,
    "dense", is name-checked and left out).

    Raises:
        ValueError: an unknown (or, with ``complete``, missing) name, or a mask :func:`check_mask` refuses.
    """
    match_names(targets, masks, source, what, complete)
    return {n: check_mask(n, m, _shape(targets[n]), source, allow_01) for n, m in masks.items() if m is not None}


def _shape(target: Any) -> tuple[int, ...]:
    return tuple(target.shape) if hasattr(target, "shape") else tuple(target)


def check_masks(weights: Mapping[str, Tensor], masks: Masks | Tensor | None) -> dict[str, Tensor | None]:
    """Masks matched to weights by name (:func:`match_masks`), None for a weight without one.

    For a single tensor (named ``"tensor"``) the mask may be given as a bool tensor instead of a mapping.
    """
    if isinstance(masks, Tensor):
        if list(weights) != ["tensor"]:
            raise ValueError("a bare mask tensor only goes with a bare weight tensor; pass name → mask otherwise")
        masks = {"tensor": masks}
    matched = match_masks(weights, masks or {}, what="prunable weight")
    return {name: matched.get(name) for name in weights}


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
