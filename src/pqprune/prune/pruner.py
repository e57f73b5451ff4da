"""Pruner: ties a model, its MaskSet, a pruning method and a scope together.

    pruner = Pruner(model, method=SAP(p=0.5, q=1.0), scope="layer")
    opt = pruner.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))
    for rnd in range(rounds):
        train(model, opt)            # pruned weights stay exactly 0 through wrap()
        records = pruner.step()      # measure → counts → exact-k selection → masks shrink → weights zeroed
        pruner.rewind()              # surviving weights and all other state back to the saved initial state

The Pruner knows the round number and the rewind states; it knows nothing of data or of the training loop.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from pqprune.files import FileFormat
from pqprune.measure.weights import Scope
from pqprune.prune import methods as _methods
from pqprune.prune.masks import Density, MaskSet
from pqprune.prune.methods.base import Method, UnitRecord
from pqprune.prune.select import select_keep

# The state is saved inside each round's record of a run, or by the user with torch.save; 0.1.0 named only its
# version, under "version".
PRUNER_STATE = FileFormat("pqprune.pruner", 1, "pruner state", legacy=1, legacy_unnamed=True)
# Optimizers whose update of an entry is a function of that entry's gradient, state and value alone (plus
# scalars): for them, masked gradients and a zeroed weight after the step give the same model as masking both.
_ELEMENTWISE = frozenset(
    {
        torch.optim.SGD,
        torch.optim.Adam,
        torch.optim.AdamW,
        torch.optim.Adamax,
        torch.optim.NAdam,
        torch.optim.RAdam,
        torch.optim.RMSprop,
        torch.optim.Adagrad,
        torch.optim.Adadelta,
    }
)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the whole state (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Pruner:
    """Prune ``model`` with ``method`` at ``scope`` (``"global"``, ``"layer"`` or ``"neuron"``).

    Args:
        model: any ``nn.Module``; its structure and ``state_dict`` keys are never changed.
        method: a :class:`pqprune.prune.methods.Method` or a registered name (``"sap"``, ``"lottery_ticket"``, …).
        scope: the unit of each decision (docs/math.md §1); default: the method's (``"global"``, ``"neuron"`` for
            ``LqNeuron``), as in ``pqprune run``. (``pqprune analyze`` defaults to ``"layer"``: it reports each
            layer's own compressibility, which at layer scope depends on that layer alone.)
        include, exclude, include_types, exclude_types: which parameters are prunable, see
            :func:`pqprune.prune.masks.discover`.

    The model's state at construction is saved as the rewind target; :meth:`save_rewind_point` replaces it
    with the current state (late rewinding).
    """

    def __init__(
        self,
        model: nn.Module,
        method: Method | str = "sap",
        scope: str | None = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        include_types: type | Sequence[type] | None = None,
        exclude_types: type | Sequence[type] | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.method: Method = _methods.get(method) if isinstance(method, str) else method
        if not isinstance(self.method, Method):
            raise TypeError(f"method must be a pqprune Method or a name, got {type(method).__name__}")
        self.scope = scope if scope is not None else self.method.default_scope
        self.model = model
        self.maskset = MaskSet(model, include, exclude, include_types, exclude_types)
        self.round = 0
        self.records: list[UnitRecord] = []
        self._initial = _snapshot(model)
        self._rewind_point: dict[str, Tensor] | None = None
        self._wrapped: dict[int, tuple[weakref.ref, Any, Any]] = {}

    @property
    def scope(self) -> Scope:
        """The unit of each decision; setting it checks it at once (``ValueError`` naming the scope), so a bad
        scope fails where it is set, not at the next :meth:`step`."""
        return self._scope

    @scope.setter
    def scope(self, value: str) -> None:
        self.method.check_scope(value)
        self._scope = cast(Scope, value)

    # ------------------------------------------------------------------ masks
    @property
    def masks(self) -> dict[str, Tensor]:
        """Name → bool mask (True = survives)."""
        return self.maskset.masks

    def density(self) -> float:
        """Fraction of prunable entries kept by the masks."""
        return self.maskset.density()

    def density_report(self) -> dict[str, Density]:
        """Per-parameter and total accounting; zeros among survivors are reported apart from pruned entries."""
        return self.maskset.density_report()

    def enforce(self) -> None:
        """Zero the pruned weights (call after ``optimizer.step()`` unless the optimizer is wrapped)."""
        self.maskset.enforce()

    def save_masks(self, path: str | os.PathLike) -> Path:
        """Write the masks as safetensors with a format version; read back with :func:`pqprune.load_masks`."""
        return self.maskset.save(path)

    def load_masks(self, path: str | os.PathLike) -> None:
        """Replace the masks by those of a file (they may be denser: this is a load, not a pruning step).

        A missing file raises ``FileNotFoundError`` naming it; a file of another kind ``FileFormatError``.
        """
        self.maskset.load(path)
        self.enforce()

    # ------------------------------------------------------------------ pruning
    def step(self) -> list[UnitRecord]:
        """One pruning round: the method decides counts and scores, exactly those entries are pruned.

        Pruned weights become 0, and per-entry optimizer state of wrapped optimizers (momentum, Adam moments)
        is zeroed at the pruned positions. Returns one record per unit.
        """
        weights = {n: p.detach() for n, p in self.maskset.params().items()}
        masks = self.maskset.pruned_masks()  # dense tensors go without a mask: one less pass over them
        plan = self.method.plan(weights, masks, self.scope, self.round)
        self.maskset.keep_only(select_keep(plan.scores, plan.counts, self.scope, masks))
        self.enforce()
        for opt in self._live_optimizers():
            self.maskset.mask_optimizer_state(opt)
        self.round += 1
        self.records = plan.records
        return plan.records

    # ------------------------------------------------------------------ rewinding
    def save_rewind_point(self) -> None:
        """Make the current state (e.g. after k training steps) the target of :meth:`rewind`."""
        self._rewind_point = _snapshot(self.model)

    @torch.no_grad()
    def rewind(self, to: str = "auto") -> None:
        """Restore all parameters and buffers to a saved state, keeping pruned weights at 0.

        ``to``: ``"auto"`` (the rewind point if one was saved, else the initial state), ``"initial"`` or
        ``"point"``. Tensors are copied in place, so optimizers keep pointing at the model's parameters.
        """
        if to not in ("auto", "initial", "point"):
            raise ValueError(f"rewind target must be 'auto', 'initial' or 'point', got {to!r}")
        if to == "point" and self._rewind_point is None:
            raise ValueError("no rewind point saved; call save_rewind_point() first")
        state = self._initial if to == "initial" or self._rewind_point is None else self._rewind_point
        self.model.load_state_dict(state)
        self.enforce()

    # ------------------------------------------------------------------ optimizers
    def wrap(self, optimizer: torch.optim.Optimizer, mask_grads: bool | None = None) -> torch.optim.Optimizer:
        """Zero pruned weights after every ``optimizer.step()`` (and mask gradients before it); returns ``optimizer``.

        Uses the optimizer's step hooks (not forward hooks), so the model is untouched. Together with the
        state masking in :meth:`step`, pruned weights are exactly 0 after every step, whatever the optimizer.

        ``mask_grads``: zero the gradients of pruned weights before each step. By default (``None``) this is
        done only for optimizers not known to be element-wise: for SGD, Adam, AdamW, Adamax, NAdam, RAdam,
        RMSprop, Adagrad and Adadelta (exactly these classes) the update of a surviving weight depends on its own
        gradient and state alone, so masking pruned gradients cannot change it, and the pruned weights a step
        moves are zeroed right after it. Skipping that pass halves the masking cost of a step
        (``bench/bench_prune.py --only b``). Pass ``True`` to mask them anyway, e.g. to read gradient
        norms of the survivors after the step. Wrapping again replaces the earlier wrapping;
        :meth:`unwrap` removes the hooks.
        """
        grads = type(optimizer) not in _ELEMENTWISE if mask_grads is None else bool(mask_grads)
        entry = self._wrapped.get(id(optimizer))
        if entry is not None and entry[0]() is optimizer:
            self.unwrap(optimizer)
        pre = optimizer.register_step_pre_hook(self._pre_step) if grads else None
        post = optimizer.register_step_post_hook(self._post_step)
        self._wrapped[id(optimizer)] = (weakref.ref(optimizer), pre, post)
        self.maskset.mask_optimizer_state(optimizer)
        return optimizer

    def unwrap(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Remove the hooks :meth:`wrap` added."""
        entry = self._wrapped.pop(id(optimizer), None)
        if entry is not None:
            for handle in entry[1:]:
                if handle is not None:
                    handle.remove()
        return optimizer

    def _pre_step(self, _opt: Any, _args: Any, _kwargs: Any) -> None:
        self.maskset.mask_grads()

    def _post_step(self, _opt: Any, _args: Any, _kwargs: Any) -> None:
        self.maskset.enforce()

    def _live_optimizers(self) -> list[torch.optim.Optimizer]:
        live = []
        for key, (ref, _pre, _post) in list(self._wrapped.items()):
            opt = ref()
            if opt is None:
                del self._wrapped[key]
            else:
                live.append(opt)
        return live

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Masks, round, method state (e.g. OneShot's reference weights) and rewind states.

        Only tensors, numbers and strings: ``torch.save`` it and load with ``weights_only=True``. The model's own
        weights are not included (save ``model.state_dict()`` beside it).
        """
        return {
            **PRUNER_STATE.tag(),
            "method": self.method.name,
            "hparams": self.method.hparams(),
            "scope": self.scope,
            "round": self.round,
            "masks": self.maskset.masks,
            "method_state": self.method.state_dict(),
            "initial": dict(self._initial),
            "rewind_point": None if self._rewind_point is None else dict(self._rewind_point),
        }

    def load_state_dict(self, state: Mapping[str, Any], source: str = "pruner state") -> None:
        """Restore what :meth:`state_dict` saved; the method and scope must match this Pruner's. ``source`` names
        where the state comes from (a file) in errors.

        Raises:
            FileFormatError: (a ``ValueError``) the state is of another format or a newer version; a state of
                pqprune 0.1.0 (``"version"`` only) is read as version 1.
            ValueError: it lacks entries, or is for another method, scope or model.
        """
        PRUNER_STATE.check(state, source)
        missing = {"method", "scope", "round", "masks", "method_state", "initial"} - set(state)
        if missing:
            raise ValueError(f"pruner state lacks {sorted(missing)}")
        if _methods.canonical(str(state["method"])) != _methods.canonical(self.method.name):  # older names are aliases
            raise ValueError(f"pruner state is for method {state['method']!r}, this pruner uses {self.method.name!r}")
        if state["scope"] != self.scope:
            raise ValueError(f"pruner state is for scope {state['scope']!r}, this pruner uses {self.scope!r}")
        keys = set(self.model.state_dict())
        for key in ("initial", "rewind_point"):
            snap = state.get(key)
            if snap is not None and set(snap) != keys:
                raise ValueError(f"pruner state {key!r} does not match the model's state_dict keys")
        self.maskset.update(dict(state["masks"]), allow_regrow=True, source=source, complete=True)
        self.method.load_state_dict(state["method_state"])
        self.round = int(state["round"])
        self._initial = {k: v.clone() for k, v in state["initial"].items()}
        rp = state.get("rewind_point")
        self._rewind_point = None if rp is None else {k: v.clone() for k, v in rp.items()}
        self.enforce()

    # ------------------------------------------------------------------ copying
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_wrapped"] = {}  # optimizer hooks belong to the live objects, not to a copy
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "scope" in state:  # pickled before the scope was checked on assignment
            state["_scope"] = state.pop("scope")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Pruner({self.method!r}, scope={self.scope!r}, round={self.round}, density={self.density():.4f})"
