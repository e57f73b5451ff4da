"""MaskSet: which parameters are prunable, and which of their entries survive.

Masks are bool tensors kept *beside* the model, keyed by parameter name (True = the entry survives). They are
enforced by zeroing pruned weights after each optimizer step and masking gradients before it: the
model keeps its ``state_dict`` keys, gets no forward hooks, and ``copy.deepcopy``/pickling keep working. The
``weight_orig``/``weight_mask`` form of ``torch.nn.utils.prune`` is read and written for interop only.

A MaskSet refers to parameters by name and looks them up in its model, so a deep copy of a
``(model, MaskSet)`` pair stays consistent.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from pqprune.files import FileFormat, FileFormatError
from pqprune.measure.weights import check_mask, match_masks, prunable_weights

MASKS = FileFormat("pqprune.masks", 1, "mask file")  # MaskSet.save / Pruner.save_masks
_ORIG, _MASK = "_orig", "_mask"
# Tensors below this size get a cached float mask for enforce(); larger ones are multiplied a chunk at a time
# by their bool mask converted to float (see _hot).
_FLOAT_MASK_MAX = 1 << 18
_MASK_CHUNK = 1 << 20


def _as_patterns(p: str | Sequence[str] | None, arg: str) -> list[str] | None:
    if p is None:
        return None
    if isinstance(p, str):
        return [p]
    pats = list(p)
    if not all(isinstance(x, str) for x in pats):
        raise TypeError(f"{arg} must be a pattern string or a list of them, got {p!r}")
    return pats


def _as_types(t: type | Sequence[type] | None, arg: str) -> tuple[type, ...] | None:
    if t is None:
        return None
    types = (t,) if isinstance(t, type) else tuple(t)
    if not all(isinstance(x, type) and issubclass(x, nn.Module) for x in types):
        raise TypeError(f"{arg} must be nn.Module subclasses, got {t!r}")
    return types


def discover(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    include_types: type | Sequence[type] | None = None,
    exclude_types: type | Sequence[type] | None = None,
) -> dict[str, nn.Parameter]:
    """The prunable parameters of ``model``, by full name.

    Default (no ``include*``): :func:`pqprune.measure.prunable_weights` — parameters named ``*weight`` with
    ``dim() > 1`` outside embeddings and normalisation layers (docs/math.md §1).

    * ``include``: fnmatch patterns over *all* parameter names (e.g. ``"fc*.weight"``, ``"*"`` for everything,
      biases included); a pattern that matches nothing is an error.
    * ``include_types``: the ``*weight`` parameters of modules of these types (any dim, e.g. ``nn.Embedding``).
      With both, a parameter must satisfy both.
    * ``exclude`` / ``exclude_types``: remove matching names / parameters owned by modules of these types.

    A parameter shared by several modules is listed once, under its first name.
    """
    inc, exc = _as_patterns(include, "include"), _as_patterns(exclude, "exclude")
    inc_t, exc_t = _as_types(include_types, "include_types"), _as_types(exclude_types, "exclude_types")
    owner: dict[str, nn.Module] = {}
    every: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p_name, param in mod.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            every[full], owner[full] = param, mod
    if inc is None and inc_t is None:
        found = {n: p for n, p in prunable_weights(model).items() if n in every}
    else:
        found = dict(every)
        if inc is not None:
            for pat in inc:
                if not any(fnmatch.fnmatchcase(n, pat) for n in every):
                    raise ValueError(f"include pattern {pat!r} matches no parameter of the model")
            found = {n: p for n, p in found.items() if any(fnmatch.fnmatchcase(n, pat) for pat in inc)}
        if inc_t is not None:
            found = {n: p for n, p in found.items() if isinstance(owner[n], inc_t) and n.endswith("weight")}
    if exc is not None:
        found = {n: p for n, p in found.items() if not any(fnmatch.fnmatchcase(n, pat) for pat in exc)}
    if exc_t is not None:
        found = {n: p for n, p in found.items() if not isinstance(owner[n], exc_t)}
    for n, p in found.items():
        if not p.is_floating_point():
            raise ValueError(f"parameter {n!r} is {p.dtype}, only floating-point parameters can be pruned")
    if not found:
        raise ValueError("no prunable parameters selected (check include/exclude and the model)")
    return found


@dataclass(frozen=True)
class Density:
    """Sparsity accounting of one tensor or of all of them, from the masks."""

    total: int  # entries
    kept: int  # entries the mask keeps
    zero_kept: int  # kept entries that are nevertheless exactly 0 (reported separately, not as pruned)

    @property
    def density(self) -> float:
        return self.kept / self.total if self.total else float("nan")

    @property
    def nonzero_density(self) -> float:
        return (self.kept - self.zero_kept) / self.total if self.total else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "density": self.density, "nonzero_density": self.nonzero_density}


class _Hot(NamedTuple):
    """What :meth:`MaskSet.enforce` needs each step: parameters with pruned entries, detached views, masks."""

    params: list[nn.Parameter]
    views: list[Tensor]
    mults: list[Tensor]
    slots: list[tuple[nn.Module, str]]  # (owning module, attribute): a replaced Parameter invalidates the cache


def _multiply(targets: Sequence[Tensor], mults: Sequence[Tensor]) -> None:
    """``t *= m`` in place for each pair: ``m`` a float mask of ``t``'s dtype, or a uint8 view of a bool one.

    On CPU a uint8 mask is converted to float a chunk at a time (the mixed-type product is several times slower
    than two same-type passes over a chunk in cache); a plain loop measured faster than ``_foreach_mul_`` there
    (``bench/bench_prune.py --only b``). Elsewhere one ``_foreach_mul_`` launch does all.
    """
    if targets[0].device.type != "cpu":
        torch._foreach_mul_(list(targets), list(mults))
        return
    buf: Tensor | None = None
    for t, m in zip(targets, mults):
        if m.dtype == t.dtype or not (t.is_contiguous() and m.is_contiguous()):
            t.mul_(m)
            continue
        flat_t, flat_m = t.view(-1), m.view(-1)
        if buf is None or buf.dtype != t.dtype or buf.numel() < min(_MASK_CHUNK, t.numel()):
            buf = torch.empty(min(_MASK_CHUNK, t.numel()), dtype=t.dtype)
        for i in range(0, t.numel(), _MASK_CHUNK):
            part = flat_t[i : i + _MASK_CHUNK]
            part.mul_(buf[: part.numel()].copy_(flat_m[i : i + _MASK_CHUNK]))


class MaskSet:
    """Bool masks over the prunable parameters of a model (True = survives); see :func:`discover`.

    ``enforce()`` zeroes pruned weights and ``mask_grads()`` their gradients; masks only shrink through
    :meth:`update`. Masks live on the device of their parameter.
    """

    def __init__(
        self,
        model: nn.Module,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        include_types: type | Sequence[type] | None = None,
        exclude_types: type | Sequence[type] | None = None,
    ):
        self.model = model
        params = discover(model, include, exclude, include_types, exclude_types)
        self.names: list[str] = list(params)
        self._masks: dict[str, Tensor] = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
        self._dense: set[str] = set(self.names)  # nothing pruned: enforce() skips these
        self._cache: _Hot | None = None

    # ------------------------------------------------------------------ access
    def params(self) -> dict[str, nn.Parameter]:
        """Name → the model's live parameter."""
        lookup = dict(self.model.named_parameters(remove_duplicate=False))
        return {n: lookup[n] for n in self.names}

    @property
    def masks(self) -> dict[str, Tensor]:
        """Name → bool mask (True = survives). The tensors are the MaskSet's own: do not modify them."""
        return dict(self._masks)

    def __getitem__(self, name: str) -> Tensor:
        return self._masks[self._known(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def _known(self, name: str) -> str:
        if name not in self._masks:
            raise KeyError(f"{name!r} is not a masked parameter; known: {self.names}")
        return name

    # ------------------------------------------------------------------ changing masks
    def validate(self, masks: Mapping[str, Tensor], source: str = "masks", complete: bool = False) -> dict[str, Tensor]:
        """Check ``masks`` against the model (:func:`~pqprune.measure.weights.match_masks`: names, shapes, bool or
        0/1 values; with ``complete``, one for every masked parameter); returns bool masks on the right device."""
        checked = match_masks(self._masks, masks, source, allow_01=True, what="masked parameter", complete=complete)
        return {n: m.to(self._masks[n].device) for n, m in checked.items()}

    def update(
        self, masks: Mapping[str, Tensor], allow_regrow: bool = False, source: str = "masks", complete: bool = False
    ) -> None:
        """Replace masks by name (checked by :meth:`validate`). Masks only shrink unless ``allow_regrow`` (e.g.
        loading a checkpoint)."""
        new = self.validate(masks, source, complete)
        if not allow_regrow:
            for n, m in new.items():
                if bool((m & ~self._masks[n]).any()):
                    raise ValueError(f"mask for {n!r} would revive pruned entries (masks only shrink)")
        self._set({n: m.clone() for n, m in new.items()})

    def prune(self, selected: Mapping[str, Tensor]) -> None:
        """Remove the entries marked True in ``selected`` (name → bool) from the masks."""
        sel = self.validate(selected, "selection")
        # New tensors, not in-place: masks handed out earlier must keep describing the earlier state.
        self._set({n: self._masks[n].clone().masked_fill_(s, False) for n, s in sel.items()})

    def keep_only(self, keep: Mapping[str, Tensor]) -> None:
        """Make ``keep`` (name → bool mask, True = survives) the masks; they are taken over, not copied.

        For masks computed as subsets of the current ones (:func:`pqprune.prune.select.select_keep`): neither
        the subset nor the values are checked, which would cost two passes over the masks; :meth:`update`
        checks both. The tensors replaced stay unchanged for whoever holds them.
        """
        for n, m in keep.items():
            ref = self._masks[self._known(n)]
            if m.shape != ref.shape or m.dtype != torch.bool or m.device != ref.device:
                raise ValueError(f"kept entries of {n!r}: expected a bool {tuple(ref.shape)} mask on {ref.device}")
        self._set(keep)

    def _set(self, masks: Mapping[str, Tensor]) -> None:
        self._cache = None
        for n, m in masks.items():
            self._masks[n] = m
            if m.numel() == 0 or bool(m.view(torch.uint8).min()):  # all True; Tensor.all() is 30x slower
                self._dense.add(n)
            else:
                self._dense.discard(n)

    def pruned_masks(self) -> dict[str, Tensor]:
        """Masks of the parameters that have pruned entries; absent names are fully dense."""
        return {n: m for n, m in self._masks.items() if n not in self._dense}

    # ------------------------------------------------------------------ enforcing
    def _hot(self) -> _Hot:
        """Parameters with pruned entries, detached views of them, and their masks as multipliers.

        Measured: multiplying by a bool (or uint8) mask is ~3-7x slower than by a float one. So small tensors get
        a cached float copy; large ones keep only a uint8 view of the bool mask (no memory), which on CPU is
        converted to float a chunk at a time by :func:`_multiply` (on accelerators the mixed-type product is as
        fast). The detached views let :meth:`enforce` write in place without entering and leaving
        ``torch.no_grad()`` every step. This runs around every optimizer step; the cache is rebuilt when a parameter
        was replaced (``load_state_dict(assign=True)``) or its storage moved or was resized (``model.to(...)``).
        """
        cache = self._cache
        if cache is not None and all(
            owner._parameters.get(leaf) is p and p.data_ptr() == v.data_ptr() and p.shape == v.shape
            for (owner, leaf), p, v in zip(cache.slots, cache.params, cache.views)
        ):
            return cache
        params = self.params()
        names = [n for n in self.names if n not in self._dense]
        ps = [params[n] for n in names]
        mults = []
        for n, p in zip(names, ps):
            m = self._masks[n].to(p.device)
            mults.append(m.to(p.dtype) if m.numel() < _FLOAT_MASK_MAX else m.view(torch.uint8))
        slots = [(self.model.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2]) for n in names]
        views = [p.detach() for p in ps]
        self._cache = _Hot(ps, views, mults, slots)
        return self._cache

    def enforce(self) -> None:
        """Set pruned weights to exactly 0."""
        hot = self._hot()
        if not hot.views:
            return
        _multiply(hot.views, hot.mults)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Set the gradients of pruned weights to 0 (before the optimizer reads them)."""
        hot = self._hot()
        pairs = [(p.grad, m) for p, m in zip(hot.params, hot.mults) if p.grad is not None]
        if pairs:
            _multiply([g for g, _ in pairs], [m for _, m in pairs])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None  # derived; rebuilt on first use
        return state

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero per-entry optimizer state (momentum, Adam moments) of pruned weights, so it cannot leak back."""
        params = self.params()
        for n in self.names:
            if n in self._dense:
                continue
            p = params[n]
            for value in optimizer.state.get(p, {}).values():
                if isinstance(value, Tensor) and value.shape == p.shape:
                    value.mul_(self._masks[n])

    # ------------------------------------------------------------------ accounting
    def density_report(self) -> dict[str, Density]:
        """Per-parameter and ``"total"`` accounting from the masks (zeros among survivors counted apart)."""
        params = self.params()
        out: dict[str, Density] = {}
        for n in self.names:
            m = self._masks[n]
            kept = int(torch.count_nonzero(m))
            zero_kept = int(torch.count_nonzero((params[n].detach() == 0) & m))
            out[n] = Density(m.numel(), kept, zero_kept)
        out["total"] = Density(*(sum(getattr(d, f) for d in out.values()) for f in ("total", "kept", "zero_kept")))
        return out

    def density(self) -> float:
        """Fraction of prunable entries the masks keep."""
        total = sum(m.numel() for m in self._masks.values())
        return sum(int(torch.count_nonzero(m)) for m in self._masks.values()) / total

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the masks as safetensors (bool tensors) with the format and its version in the metadata."""
        return MASKS.save_tensors(self._masks, path)

    def load(self, path: str | os.PathLike) -> None:
        """Replace all masks by those of a file written by :meth:`save`; every masked parameter must be in it."""
        masks = load_masks(path)
        try:
            self.update(masks, allow_regrow=True, source=str(path), complete=True)
        except ValueError as err:
            raise FileFormatError(str(err)) from err

    # ------------------------------------------------------------------ torch.nn.utils.prune interop
    def export_torch_prune(self, state_dict: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """A state dict in ``torch.nn.utils.prune`` form: ``x.weight`` → ``x.weight_orig`` and ``x.weight_mask``.

        Loadable into a model after ``prune.custom_from_mask`` / ``prune.identity`` on the same parameters.
        """
        return to_torch_prune(self.model.state_dict() if state_dict is None else state_dict, self._masks)

    def import_torch_prune(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load a ``weight_orig``/``weight_mask`` state dict: weights (masked) into the model, masks into self."""
        plain, masks = from_torch_prune(state_dict)
        self.model.load_state_dict(plain)
        self.update(masks, allow_regrow=True)
        self.enforce()

    def apply_torch_prune(self) -> None:
        """Hand the masks to ``torch.nn.utils.prune`` (forward hooks and ``weight_orig``) on the live model.

        After this the model is in torch's form and no longer a pqprune model; for users moving to that API.
        """
        from torch.nn.utils import prune

        modules = dict(self.model.named_modules())
        for n in self.names:
            mod_name, _, p_name = n.rpartition(".")
            prune.custom_from_mask(modules[mod_name], p_name, self._masks[n])

    def __repr__(self) -> str:
        return f"MaskSet({len(self.names)} parameters, density={self.density():.4f})"


def load_masks(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read masks written by :meth:`MaskSet.save`.

    A missing file raises ``FileNotFoundError`` naming it (a :class:`pqprune.files.MissingFileError`, which is
    also a ``FileFormatError``); a wrong or corrupt file raises ``FileFormatError``.
    """
    masks = MASKS.load_tensors(path)[0]
    try:
        return {n: check_mask(n, m, source=str(path)) for n, m in masks.items()}
    except ValueError as err:
        raise FileFormatError(str(err)) from err


def to_torch_prune(state_dict: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``name`` → ``name_orig`` (the weights) and ``name_mask`` (float 0/1), as ``torch.nn.utils.prune`` stores them."""
    checked = match_masks(state_dict, masks, allow_01=True, what="state dict entry")
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if k in checked:
            out[k + _ORIG] = v
            out[k + _MASK] = checked[k].to(dtype=v.dtype, device=v.device)
        else:
            out[k] = v
    return out


def from_torch_prune(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a ``torch.nn.utils.prune`` state dict into a plain one (``weight = weight_orig·weight_mask``) and masks."""
    plain: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if k.endswith(_ORIG):
            base = k[: -len(_ORIG)]
            mkey = base + _MASK
            if mkey not in state_dict:
                raise ValueError(f"{k!r} has no matching {mkey!r}")
            mb = check_mask(mkey, state_dict[mkey], v.shape, "torch.nn.utils.prune state dict", allow_01=True)
            plain[base] = v * mb
            masks[base] = mb
        elif k.endswith(_MASK) and (k[: -len(_MASK)] + _ORIG) in state_dict:
            continue
        else:
            plain[k] = v
    return plain, masks
