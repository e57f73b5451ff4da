"""Fixed-ratio magnitude pruning: lottery ticket (iterative) and one-shot, docs/math.md §6."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from pqprune.measure.weights import Masks, Scope
from pqprune.prune.methods.base import Method, Option, Plan, RunContext, Weights, WeightsOnDemand
from pqprune.prune.methods.registry import register
from pqprune.prune.methods.units import check_ratio, fixed_ratio_plan, ratio_count, unit_sizes
from pqprune.prune.select import magnitude_scores


@register
class LotteryTicket(Method):
    """Iterative magnitude pruning with rewinding, the lottery ticket [Frankle & Carbin 2019], docs/math.md §6.

    Each round prunes ``c = floor(P·d)`` of each unit's ``d`` survivors, the smallest magnitudes of this
    round's trained weights; after t rounds ≈ ``(1−P)^t`` of the weights remain. ``rewind_step`` is the
    training step whose weights the loop saves (``Pruner.save_rewind_point()``) and rewinds to: 0 = the
    initial weights, k > 0 = "late rewinding" [Frankle et al. 2020].
    """

    name: ClassVar[str] = "lt"
    rank: ClassVar[int] = 1
    aliases: ClassVar[tuple[str, ...]] = ("lottery_ticket", "imp")
    options: ClassVar[tuple[Option, ...]] = (
        Option("ratio", float, 0.2, "fraction of each unit's survivors pruned per round, in (0, 1)"),
        Option("rewind_step", int, 0, "rewind to the weights after this many training steps of round 0 (0 = initial)"),
    )
    label_format: ClassVar[str] = "LT"
    styles: ClassVar[dict[str, tuple[str, str]]] = {"LT": ("#2ca02c", "^")}

    def __init__(self, ratio: float = 0.2, rewind_step: int = 0):
        self.ratio = check_ratio(ratio)
        if not isinstance(rewind_step, int) or rewind_step < 0:
            raise ValueError(f"rewind_step must be an int >= 0, got {rewind_step!r}")
        self.rewind_step = rewind_step

    def hparams(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "rewind_step": self.rewind_step}

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        return fixed_ratio_plan(
            weights, masks, scope, lambda _u, d: ratio_count(d, self.ratio), magnitude_scores(weights)
        )


@register
class OneShot(Method):
    """One-shot magnitude pruning, in the two forms of docs/math.md §6 [Diao23 code, Frankle & Carbin 2019].

    * ``OneShot(ratio=P)`` — the paper's cumulative form: the mask of round t is the magnitude mask of the
      *round-0 dense trained* weights (captured at the first ``step()``) at cumulative sparsity
      ``1 − (1−P)^t``: each unit of ``D`` entries keeps ``D − floor(D·(1 − (1−P)^t))``. Because the ranking
      is fixed, the masks are nested and each round only prunes among the survivors.
    * ``OneShot(target_density=ρ)`` — prune once, by magnitude of the current weights, to keep
      ``ceil(ρ·D)`` entries per unit; later steps prune nothing.
    """

    name: ClassVar[str] = "os"
    rank: ClassVar[int] = 2
    aliases: ClassVar[tuple[str, ...]] = ("one_shot", "oneshot")
    options: ClassVar[tuple[Option, ...]] = (
        Option("ratio", float, 0.2, "cumulative form: fraction P in (0, 1) pruned per round, round t keeps (1-P)^t"),
        Option("target_density", float, None, "prune once to keep this fraction of each unit, in (0, 1]"),
    )
    styles: ClassVar[dict[str, tuple[str, str]]] = {"OS": ("#d62728", "v")}

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: RunContext) -> OneShot:
        if options.get("target_density") is None:
            return cls(ratio=options["ratio"])
        if options["ratio"] != cls.defaults()["ratio"]:
            raise ValueError("give either ratio (cumulative one-shot) or target_density (prune once), not both")
        return cls(target_density=options["target_density"])

    @classmethod
    def label(cls, options: Mapping[str, Any]) -> str:
        rho = options.get("target_density")
        return "OS" if rho is None else f"OS(density={rho:g})"

    def __init__(self, ratio: float | None = None, target_density: float | None = None):
        if ratio is not None and target_density is not None:
            raise ValueError("give either ratio (cumulative one-shot) or target_density (prune once), not both")
        if target_density is None:
            self.ratio: float | None = check_ratio(0.2 if ratio is None else ratio)
            self.target_density: float | None = None
        else:
            if not isinstance(target_density, (int, float)) or not (0.0 < float(target_density) <= 1.0):
                raise ValueError(f"target_density must be in (0, 1], got {target_density!r}")
            self.ratio, self.target_density = None, float(target_density)
        self.reference: dict[str, Tensor] | None = None

    def hparams(self) -> dict[str, Any]:
        return {"ratio": self.ratio} if self.ratio is not None else {"target_density": self.target_density}

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        sizes = unit_sizes(weights, scope)
        if self.target_density is not None:
            rho: float = self.target_density
            return fixed_ratio_plan(
                weights, masks, scope, lambda u, d: d - torch.ceil(sizes[u] * rho - 1e-9), magnitude_scores(weights)
            )
        if self.reference is None:
            if isinstance(weights, WeightsOnDemand):  # pruned once: round 0's reference is the weights themselves
                self.reference = cast(dict, weights)
            else:
                self.reference = {n: w.detach().clone() for n, w in weights.items()}
        if set(self.reference) != set(weights):
            raise ValueError(f"one_shot: reference weights are for {sorted(self.reference)}, got {sorted(weights)}")
        ratio = self.ratio if self.ratio is not None else 0.0  # set whenever target_density is None
        sparsity = 1.0 - (1.0 - ratio) ** (round_ + 1)
        keep = {u: D - torch.floor(D * sparsity + 1e-9) for u, D in sizes.items()}
        ref: Weights = self.reference  # the selection's flat order is the weights' order
        if not isinstance(ref, WeightsOnDemand):
            ref = {n: self.reference[n] for n in weights}
        return fixed_ratio_plan(weights, masks, scope, lambda u, d: d - keep[u], magnitude_scores(ref))

    def state_dict(self) -> dict[str, Any]:
        return {} if self.reference is None else {"reference": dict(self.reference)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        extra = set(state) - {"reference"}
        if extra:
            raise ValueError(f"one_shot: unexpected state {sorted(extra)}")
        ref = state.get("reference")
        self.reference = None if ref is None else {n: t.clone() for n, t in ref.items()}
