"""Random pruning and random pruning matched to reference counts, docs/math.md §6."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from pqprune.measure.weights import GLOBAL, Masks, Scope, as_rows, check_mask, check_scope, match_names
from pqprune.prune.methods.base import Method, Option, Plan, RunContext, Weights
from pqprune.prune.methods.registry import register
from pqprune.prune.methods.units import check_ratio, fixed_ratio_plan, random_scores, ratio_count, unit_counts


@register
class RandomPruning(Method):
    """Random pruning: ``c = floor(P·d)`` survivors per unit, uniformly at random (docs/math.md §6, [Qian21]).

    Reproducible: the draw depends only on ``(seed, round, tensor)``; a run draws with its own seed.
    """

    name: ClassVar[str] = "random"
    rank: ClassVar[int] = 3
    options: ClassVar[tuple[Option, ...]] = (
        Option("ratio", float, 0.2, "fraction of each unit's survivors pruned per round, in (0, 1)"),
    )
    label_format: ClassVar[str] = "Random"
    styles: ClassVar[dict[str, tuple[str, str]]] = {"Random": ("#7f7f7f", "x")}

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: RunContext) -> RandomPruning:
        return cls(ratio=options["ratio"], seed=context.seed)

    def __init__(self, ratio: float = 0.2, seed: int = 0):
        self.ratio = check_ratio(ratio)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.seed = seed

    def hparams(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "seed": self.seed}

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        return fixed_ratio_plan(
            weights, masks, scope, lambda _u, d: ratio_count(d, self.ratio), random_scores(weights, self.seed, round_)
        )


@register
class RandomMatched(Method):
    """Random pruning with the per-unit counts of a reference (docs/math.md §6): the control that separates
    *how many per unit* (an allocation rule) from *which ones* (its ranking).

    Each unit keeps as many entries as the reference keeps in that unit at the Pruner's scope, at random
    positions among the current survivors. ``reference`` is one reference or a sequence of them, round t matching
    the t-th (the last one once exhausted). A reference maps each weight to its masks (bool tensor: any scope),
    its survivor count per row (1-D integer tensor, one entry per output row: any scope) or its survivor count
    (int: layer or global scope). In a run, ``--reference RUN_ID`` names another run of the same model; round t
    matches that run's round t + 1: per layer, or per neuron at neuron scope (the reference must then be a
    neuron-scope run, whose per-neuron decisions are recorded).
    """

    name: ClassVar[str] = "random_matched"
    rank: ClassVar[int] = 4
    aliases: ClassVar[tuple[str, ...]] = ("rm", "random-matched")
    options: ClassVar[tuple[Option, ...]] = (
        Option(
            "reference", str, None, "run id whose survivor counts (per layer or per neuron) are matched round by round"
        ),
    )
    label_format: ClassVar[str] = "RandomMatched"
    default_scope: ClassVar[str] = "layer"
    styles: ClassVar[dict[str, tuple[str, str]]] = {"RandomMatched": ("#9467bd", "D")}

    def __init__(
        self,
        reference_masks: Mapping[str, Tensor | int] | Sequence[Mapping[str, Tensor | int]],
        seed: int = 0,
    ):
        refs = [reference_masks] if isinstance(reference_masks, Mapping) else list(reference_masks)
        if not refs:
            raise ValueError("random_matched needs at least one reference (masks or survivor counts)")
        self.reference: list[dict[str, Tensor | int]] = []
        for i, ref in enumerate(refs):
            clean: dict[str, Tensor | int] = {}
            for n, m in ref.items():
                if isinstance(m, Tensor) and m.dim() == 1 and not m.dtype.is_floating_point and m.dtype != torch.bool:
                    clean[n] = m.to(torch.int64)  # survivors per row: a prunable weight has >= 2 dims, never 1
                elif isinstance(m, Tensor):
                    clean[n] = check_mask(n, m, source="random_matched: reference", allow_01=True)
                elif isinstance(m, int) and not isinstance(m, bool) and m >= 0:
                    clean[n] = m
                else:
                    raise TypeError(
                        f"reference {n!r} (set {i}) is a {type(m).__name__}, not a mask, per-row counts or a count >= 0"
                    )
            self.reference.append(clean)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.seed = seed

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: RunContext) -> RandomMatched:
        run_id = options.get("reference")
        if not run_id:
            raise ValueError("random_matched needs --reference RUN_ID (the run whose counts it matches)")
        if context.reference is None:
            raise ValueError("random_matched: nothing here can look up reference runs")
        return cls(context.reference(run_id), seed=context.seed)

    @classmethod
    def check_options(cls, options: Mapping[str, Any], scope: str) -> None:
        if not options.get("reference"):
            raise ValueError("random_matched needs --reference RUN_ID (the run whose counts it matches)")
        check_scope(scope)

    def hparams(self) -> dict[str, Any]:
        return {"seed": self.seed, "reference_sets": len(self.reference)}

    def check_scope(self, scope: str) -> None:
        super().check_scope(scope)
        if scope == "neuron" and any(not isinstance(v, Tensor) for ref in self.reference for v in ref.values()):
            raise ValueError(
                "random_matched: neuron scope needs reference masks or per-row counts, not per-layer counts"
            )

    def _kept(self, weights: Weights, ref: Mapping[str, Tensor | int], scope: Scope) -> dict[str, Tensor]:
        match_names(
            weights, ref, "random_matched: the reference", "prunable weight", complete=True, of="masks or counts"
        )
        masks: dict[str, Tensor] = {}
        rows: dict[str, Tensor] = {}
        for n, w in weights.items():
            m = ref[n]
            if isinstance(m, Tensor) and m.dtype != torch.bool:
                r = as_rows(w)
                if m.shape != (r.shape[0],) or bool((m < 0).any()) or bool((m > r.shape[1]).any()):
                    raise ValueError(
                        f"random_matched: reference row counts of {n!r} must be {r.shape[0]} values in [0, {r.shape[1]}]"
                    )
                rows[n] = m
            elif isinstance(m, Tensor):
                masks[n] = check_mask(n, m, w.shape, "random_matched: reference")
            elif m > w.numel():
                raise ValueError(f"random_matched: the reference keeps {m} entries of {n!r}, which has {w.numel()}")
        if len(masks) == len(weights):
            return unit_counts(weights, masks, scope)
        if scope == "neuron" and len(masks) + len(rows) == len(weights):
            from_masks = unit_counts({n: weights[n] for n in masks}, masks, scope)
            return {n: from_masks[n] if n in masks else rows[n].to(torch.float64) for n in weights}
        self.check_scope(scope)
        per = {
            n: torch.tensor([float(m.sum()) if isinstance(m, Tensor) else float(m)], dtype=torch.float64)
            for n, m in ref.items()
            if n in weights
        }
        if scope == "global":
            return {GLOBAL: torch.stack(list(per.values())).sum().reshape(1)}
        return {n: per[n] for n in weights}

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        ref = self.reference[min(round_, len(self.reference) - 1)]
        kept = self._kept(weights, ref, scope)
        kept_now = unit_counts(weights, masks, scope)
        for u in kept:
            if bool((kept[u] > kept_now[u]).any()):
                raise ValueError(f"random_matched: the reference keeps more entries in unit {u!r} than survive now")
        return fixed_ratio_plan(
            weights, masks, scope, lambda u, d: d - kept[u], random_scores(weights, self.seed, round_)
        )

    def state_dict(self) -> dict[str, Any]:
        return {"reference": list(self.reference)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "reference" in state:
            self.reference = [dict(r) for r in state["reference"]]
