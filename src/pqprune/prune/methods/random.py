"""Random pruning and random pruning matched to reference counts, docs/math.md §6."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from pqprune.measure.weights import Masks, Scope
from pqprune.prune.methods.base import (
    Method,
    Plan,
    Weights,
    _check_ratio,
    _fixed_ratio_plan,
    _random_scores,
    ratio_count,
    register,
    unit_counts,
)


@register("random")
class RandomPruning(Method):
    """Random pruning: ``c = floor(P·d)`` survivors per unit, uniformly at random (math.md §6, [Qian21]).

    Reproducible: the draw depends only on ``(seed, round, tensor)``.
    """

    def __init__(self, ratio: float = 0.2, seed: int = 0):
        self.ratio = _check_ratio(ratio)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.seed = seed

    def hparams(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "seed": self.seed}

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        return _fixed_ratio_plan(
            weights, masks, scope, lambda _u, d: ratio_count(d, self.ratio), _random_scores(weights, self.seed, round_)
        )


@register("random_matched")
class RandomMatched(Method):
    """Random pruning with the per-unit counts of reference masks (math.md §6): the control that separates
    *how many per unit* (an allocation rule) from *which ones* (its ranking).

    Each unit keeps as many entries as the reference masks keep in that unit at the Pruner's scope, at random
    positions among the current survivors. ``reference_masks`` is one name → bool mapping, or a sequence of
    them: round t matches the t-th (the last one once exhausted).
    """

    def __init__(self, reference_masks: Mapping[str, Tensor] | Sequence[Mapping[str, Tensor]], seed: int = 0):
        refs = [reference_masks] if isinstance(reference_masks, Mapping) else list(reference_masks)
        if not refs:
            raise ValueError("random_matched needs at least one set of reference masks")
        for i, ref in enumerate(refs):
            for n, m in ref.items():
                if not isinstance(m, Tensor):
                    raise TypeError(f"reference mask {n!r} (set {i}) is a {type(m).__name__}, not a tensor")
        self.reference = [{n: m != 0 for n, m in ref.items()} for ref in refs]
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.seed = seed

    def hparams(self) -> dict[str, Any]:
        return {"seed": self.seed, "reference_sets": len(self.reference)}

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        ref = self.reference[min(round_, len(self.reference) - 1)]
        missing = sorted(set(weights) - set(ref))
        unknown = sorted(set(ref) - set(weights))
        if missing or unknown:
            raise ValueError(f"random_matched: reference masks lack {missing} and name unknown parameters {unknown}")
        for n, w in weights.items():
            if ref[n].shape != w.shape:
                raise ValueError(
                    f"random_matched: reference mask {n!r} has shape {tuple(ref[n].shape)}, the weight has {tuple(w.shape)}"
                )
        kept = unit_counts(weights, ref, scope)
        kept_now = unit_counts(weights, masks, scope)
        for u in kept:
            if bool((kept[u] > kept_now[u]).any()):
                raise ValueError(f"random_matched: the reference keeps more entries in unit {u!r} than survive now")
        return _fixed_ratio_plan(
            weights, masks, scope, lambda u, d: d - kept[u], _random_scores(weights, self.seed, round_)
        )

    def state_dict(self) -> dict[str, Any]:
        return {"reference": list(self.reference)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "reference" in state:
            self.reference = [dict(r) for r in state["reference"]]
