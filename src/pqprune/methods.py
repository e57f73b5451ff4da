"""Pruning policies. Each method answers one question: *how many to prune in each unit, ranked by what*.

A method's :meth:`Method.plan` sees the prunable weights, the current masks, the scope and the round number,
and returns a :class:`Plan`: a count per unit, a score per entry (smallest pruned first) and one
:class:`UnitRecord` per unit for reports. Selecting exactly those entries is :mod:`pqprune.select`'s job;
applying them is the :class:`pqprune.pruner.Pruner`'s. Methods know nothing of data or training.

Registry: ``get("sap", p=1.0, q=2.0)`` builds a method by name, :func:`register` adds one, :func:`available`
lists them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from pqprune import theory
from pqprune.select import LazyScores, magnitude_scores
from pqprune.sparsity import (
    GLOBAL,
    RowStats,
    Scope,
    as_rows,
    check_lq,
    check_pq,
    check_scope,
    pq_from_sums,
    reduce_scope,
    power_sums_of,
    sap_prune_count,
)

Weights = Mapping[str, Tensor]
Masks = Mapping[str, Tensor]
Counts = dict[str, "int | Tensor"]

# --------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class UnitRecord:
    """What was decided for one unit in one round (math.md §5: d, I, r, c, whether β clipped)."""

    unit: str  # "global", a parameter name, or "name[row]" at neuron scope
    d: int  # survivors before this round
    index: float  # the sparsity index the decision used; NaN if undefined or if the method uses none
    r: int  # retained count the rule aims for (d − c for fixed-ratio methods)
    c: int  # number pruned this round
    beta_clipped: bool  # the β cap lowered c

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    """A method's decision: ``counts`` per unit (scope convention of :mod:`pqprune.select`), ``scores``."""

    counts: Counts
    scores: Mapping[str, Tensor]
    records: list[UnitRecord]


# --------------------------------------------------------------------------------------------- unit helpers
def unit_stats(weights: Weights, masks: Masks, scope: Scope, exponents: Sequence[float]) -> dict[str, RowStats]:
    """Survivor counts and float64 power sums per unit, from one read of the weights."""
    return reduce_scope(power_sums_of(weights, exponents, masks), scope)


def unit_sizes(weights: Weights, scope: Scope) -> dict[str, Tensor]:
    """Entries per unit when dense (float64, one per unit row), matching :func:`unit_stats`' layout."""
    if scope == "neuron":
        return {n: torch.full((as_rows(w).shape[0],), float(as_rows(w).shape[1]), dtype=torch.float64) for n, w in weights.items()}
    if scope == "layer":
        return {n: torch.tensor([float(w.numel())], dtype=torch.float64) for n, w in weights.items()}
    return {GLOBAL: torch.tensor([float(sum(w.numel() for w in weights.values()))], dtype=torch.float64)}


def unit_counts(weights: Weights, masks: Masks, scope: Scope) -> dict[str, Tensor]:
    """Survivors per unit (float64, one per unit row, :func:`unit_stats`' layout), from the masks alone;
    a tensor without a mask is fully alive and costs nothing to count."""
    per: dict[str, Tensor] = {}
    for n, w in weights.items():
        m = masks.get(n)
        rows, cols = as_rows(w).shape
        if scope == "neuron":
            per[n] = torch.full((rows,), float(cols), dtype=torch.float64) if m is None else torch.count_nonzero(as_rows(m), dim=1).to(torch.float64).cpu()
        else:
            per[n] = torch.tensor([float(w.numel() if m is None else torch.count_nonzero(m))], dtype=torch.float64)
    if scope == "global":
        return {GLOBAL: torch.stack(list(per.values())).sum().reshape(1)}
    return per


def as_counts(per_unit: Mapping[str, Tensor], scope: Scope) -> Counts:
    """Unit tensors (one entry per unit row) → the counts :func:`pqprune.select.select_prune` takes."""
    if scope == "neuron":
        return {n: c.to(torch.int64).cpu() for n, c in per_unit.items()}
    return {n: int(c.reshape(-1)[0]) for n, c in per_unit.items()}


def make_records(
    scope: Scope,
    d: Mapping[str, Tensor],
    index: Mapping[str, Tensor],
    r: Mapping[str, Tensor],
    c: Mapping[str, Tensor],
    clipped: Mapping[str, Tensor] | None = None,
) -> list[UnitRecord]:
    """One record per unit; neuron units are named ``"param[row]"``."""
    out = []
    for u in d:
        cols = [d[u].tolist(), index[u].tolist(), r[u].tolist(), c[u].tolist()]
        cl = clipped[u].tolist() if clipped is not None else [False] * len(cols[0])
        for i, (dd, ii, rr, cc, bb) in enumerate(zip(*cols, cl)):
            name = f"{u}[{i}]" if scope == "neuron" else u
            out.append(UnitRecord(name, int(dd), float(ii), int(rr), int(cc), bool(bb)))
    return out


def _retained(index: Tensor, d: Tensor, p: float, q: float, eta: float) -> Tensor:
    """SAP's r for the report: with γ = β = 1, sap_prune_count prunes exactly d − r, so its rounding rule
    (tolerances included) is reused rather than repeated here. A NaN index retains everything."""
    return d - sap_prune_count(index, d, p, q, eta, 1.0, 1.0).to(torch.float64)


def ratio_count(d: Tensor, ratio: float) -> Tensor:
    """``floor(P·d)`` with a tolerance, so that 0.2·1000 is 200 and not 199."""
    return torch.floor(d * ratio + 1e-9)


def _check_ratio(ratio: float, arg: str = "ratio") -> float:
    if not isinstance(ratio, (int, float)) or not (0.0 < float(ratio) < 1.0):
        raise ValueError(f"{arg} must be in (0, 1), got {ratio!r}")
    return float(ratio)


def _random_scores(weights: Weights, seed: int, round_: int) -> LazyScores:
    """Uniform scores, reproducible per (seed, round, tensor), recomputed identically on every access."""
    order = {n: i for i, n in enumerate(weights)}

    def fn(name: str, w: Tensor) -> Tensor:
        state = np.random.SeedSequence([seed, round_, order[name]]).generate_state(2, dtype=np.uint64)
        g = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
        return torch.rand(w.shape, generator=g, dtype=torch.float64).to(w.device)

    return LazyScores(weights, fn, dtype=torch.float64)


# --------------------------------------------------------------------------------------------- base
class Method(ABC):
    """A pruning policy; subclasses implement :meth:`plan` and say which scope they default to."""

    name: ClassVar[str] = ""
    default_scope: ClassVar[str] = "global"

    @abstractmethod
    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        """Counts, scores and records for pruning round ``round_`` (0 = first call of ``Pruner.step``).

        ``masks`` maps names to bool masks (True = survives); a name without a mask is fully dense.
        """

    @abstractmethod
    def hparams(self) -> dict[str, Any]:
        """The constructor arguments (JSON-serialisable), e.g. for run identity."""

    def check_scope(self, scope: str) -> None:
        """Raise if this method cannot work at ``scope``."""
        check_scope(scope)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and numbers needed to resume (nothing for stateless methods)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name}: unexpected state {sorted(state)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, type[Method]] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, *aliases: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available to :func:`get` under ``name`` (and ``aliases``)."""

    def deco(cls: type[Method]) -> type[Method]:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise ValueError(f"pruning method name {key!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        for a in aliases:
            _ALIASES[a] = name
        return cls

    return deco


def available() -> list[str]:
    """Registered method names (aliases not included)."""
    return sorted(_REGISTRY)


def get(name: str, **hparams: Any) -> Method:
    """Build a registered method: ``get("sap", p=1.0, q=2.0)``. Unknown names list the available ones."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown pruning method {name!r}; available: {', '.join(available())}")
    return _REGISTRY[key](**hparams)


# --------------------------------------------------------------------------------------------- SAP
@register("sap")
class SAP(Method):
    """Sparsity-informed Adaptive Pruning [Diao23, Algorithm 1], math.md §5.

    Per unit with ``d`` survivors and PQ Index ``I = I_{p,q}`` of the survivors:

        r = ceil(d · (1+η)^{q/(p−q)} · (1 − I)^{qp/(q−p)})       (the retained-weight bound, [Diao23, Thm 2])
        c = floor(d · clamp(γ·(1 − r/d), 0, β))

    and the ``c`` smallest-magnitude survivors are pruned. With (0.5, 1), η = 0, γ = 1 the fraction pruned is
    the PQI itself. Counts come from :func:`pqprune.sparsity.sap_prune_count`.
    """

    def __init__(self, p: float = 0.5, q: float = 1.0, eta: float = 0.0, gamma: float = 1.0, beta: float = 0.9):
        check_pq(p, q)
        if not (math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be >= 0, got {eta}")
        if not (math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if not (0 < beta <= 1):
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        self.p, self.q, self.eta, self.gamma, self.beta = float(p), float(q), float(eta), float(gamma), float(beta)

    def hparams(self) -> dict[str, Any]:
        return {"p": self.p, "q": self.q, "eta": self.eta, "gamma": self.gamma, "beta": self.beta}

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        p, q = self.p, self.q
        units = unit_stats(weights, masks, scope, (p, q))
        d, idx, r, c, clipped = {}, {}, {}, {}, {}
        for u, st in units.items():
            d[u] = st.count
            idx[u] = pq_from_sums(st.count, st.sums[p], st.sums[q], p, q)
            c[u] = sap_prune_count(idx[u], st.count, p, q, self.eta, self.gamma, self.beta)
            r[u] = _retained(idx[u], st.count, p, q, self.eta)
            clipped[u] = (self.gamma * (st.count - r[u]) > self.beta * st.count) & ~torch.isnan(idx[u])
        return Plan(as_counts(c, scope), magnitude_scores(weights), make_records(scope, d, idx, r, c, clipped))


# --------------------------------------------------------------------------------------------- fixed ratio
def _fixed_ratio_plan(weights: Weights, masks: Masks, scope: Scope, c_of: Callable[[str, Tensor], Tensor], scores: Mapping[str, Tensor]) -> Plan:
    """Plan with counts ``c_of(unit, d)``. No sparsity index is used, so none is computed (NaN in records):
    the counts come from the masks alone and the weights are read only by the selection."""
    d = unit_counts(weights, masks, scope)
    c = {u: c_of(u, du).clamp(min=0) for u, du in d.items()}
    idx = {u: torch.full_like(du, math.nan) for u, du in d.items()}
    r = {u: d[u] - c[u] for u in d}
    return Plan(as_counts(c, scope), scores, make_records(scope, d, idx, r, c))


@register("lottery_ticket", "lt", "imp")
class LotteryTicket(Method):
    """Iterative magnitude pruning with rewinding, the lottery ticket [Frankle & Carbin 2019], math.md §6.

    Each round prunes ``c = floor(P·d)`` of each unit's ``d`` survivors, the smallest magnitudes of this
    round's trained weights; after t rounds ≈ ``(1−P)^t`` of the weights remain. ``rewind_step`` is the
    training step whose weights the loop saves (``Pruner.save_rewind_point()``) and rewinds to: 0 = the
    initial weights, k > 0 = "late rewinding" [Frankle et al. 2020].
    """

    def __init__(self, ratio: float = 0.2, rewind_step: int = 0):
        self.ratio = _check_ratio(ratio)
        if not isinstance(rewind_step, int) or rewind_step < 0:
            raise ValueError(f"rewind_step must be an int >= 0, got {rewind_step!r}")
        self.rewind_step = rewind_step

    def hparams(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "rewind_step": self.rewind_step}

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        return _fixed_ratio_plan(weights, masks, scope, lambda _u, d: ratio_count(d, self.ratio), magnitude_scores(weights))


@register("one_shot", "os")
class OneShot(Method):
    """One-shot magnitude pruning, in the two forms of math.md §6 [Diao23 code, Frankle & Carbin 2019].

    * ``OneShot(ratio=P)`` — the paper's cumulative form: the mask of round t is the magnitude mask of the
      *round-0 dense trained* weights (captured at the first ``step()``) at cumulative sparsity
      ``1 − (1−P)^t``: each unit of ``D`` entries keeps ``D − floor(D·(1 − (1−P)^t))``. Because the ranking
      is fixed, the masks are nested and each round only prunes among the survivors.
    * ``OneShot(target_density=ρ)`` — prune once, by magnitude of the current weights, to keep
      ``ceil(ρ·D)`` entries per unit; later steps prune nothing.
    """

    def __init__(self, ratio: float | None = None, target_density: float | None = None):
        if ratio is not None and target_density is not None:
            raise ValueError("give either ratio (cumulative one-shot) or target_density (prune once), not both")
        if target_density is None:
            self.ratio: float | None = _check_ratio(0.2 if ratio is None else ratio)
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
            rho = self.target_density
            return _fixed_ratio_plan(
                weights, masks, scope, lambda u, d: d - torch.ceil(sizes[u] * rho - 1e-9), magnitude_scores(weights)
            )
        if self.reference is None:
            self.reference = {n: w.detach().clone() for n, w in weights.items()}
        if set(self.reference) != set(weights):
            raise ValueError(f"one_shot: reference weights are for {sorted(self.reference)}, got {sorted(weights)}")
        sparsity = 1.0 - (1.0 - self.ratio) ** (round_ + 1)
        keep = {u: D - torch.floor(D * sparsity + 1e-9) for u, D in sizes.items()}
        ref = {n: self.reference[n] for n in weights}  # the selection's flat order is the weights' order
        return _fixed_ratio_plan(weights, masks, scope, lambda u, d: d - keep[u], magnitude_scores(ref))

    def state_dict(self) -> dict[str, Any]:
        return {} if self.reference is None else {"reference": dict(self.reference)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        extra = set(state) - {"reference"}
        if extra:
            raise ValueError(f"one_shot: unexpected state {sorted(extra)}")
        ref = state.get("reference")
        self.reference = None if ref is None else {n: t.clone() for n, t in ref.items()}


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
                raise ValueError(f"random_matched: reference mask {n!r} has shape {tuple(ref[n].shape)}, the weight has {tuple(w.shape)}")
        kept = unit_counts(weights, ref, scope)
        kept_now = unit_counts(weights, masks, scope)
        for u in kept:
            if bool((kept[u] > kept_now[u]).any()):
                raise ValueError(f"random_matched: the reference keeps more entries in unit {u!r} than survive now")
        return _fixed_ratio_plan(weights, masks, scope, lambda u, d: d - kept[u], _random_scores(weights, self.seed, round_))

    def state_dict(self) -> dict[str, Any]:
        return {"reference": list(self.reference)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "reference" in state:
            self.reference = [dict(r) for r in state["reference"]]


# --------------------------------------------------------------------------------------------- l_q neuron
@register("lq_neuron", "lq")
class LqNeuron(Method):
    """ℓ_q adaptive pruning per neuron [Yang22], math.md §7, with soft sparsity via the ℓ_q quasi-norm, 0<q<1.

    * ``rule="index"`` (as in the authors' code): retained fraction ``m/d = (1+η)^{−1/(1−q)}·SI_q^{−q/(1−q)}``
      with ``SI_q = 1/(1 − I_{q,1})``, i.e. SAP's arithmetic with ``(p, q) := (q, 1)``; pruned fraction
      ``min(γ·(1 − m/d), β)`` (γ is the code's constant ``c``). Works at any scope.
    * ``rule="bound"`` (guaranteed, [Gao13]): keep ``m_i = min(d_i, ceil((B·‖w_i‖_q/ε)^{q/(1−q)}))`` largest
      weights of neuron i, so that inputs bounded by ``B`` move its pre-activation by at most ε
      (``relative=True``: ε_i = eps·B·‖w_i‖₁). Neuron scope only; counts from
      :func:`pqprune.theory.lq_keep_counts`. ``input_bound`` is a number or name → number (measured on data
      by the caller; methods know nothing of data).
    """

    default_scope: ClassVar[str] = "neuron"

    def __init__(
        self,
        q: float = 0.5,
        rule: str = "index",
        eta: float = 0.0,
        gamma: float = 1.0,
        beta: float = 0.9,
        eps: float | None = None,
        input_bound: float | Mapping[str, float] = 1.0,
        relative: bool = False,
    ):
        check_lq(q)
        if rule not in ("index", "bound"):
            raise ValueError(f"rule must be 'index' or 'bound', got {rule!r}")
        if rule == "index":
            # Same validation as SAP's, with (p, q) := (q, 1).
            SAP(q, 1.0, eta, gamma, beta)
        else:
            if eps is None or not (math.isfinite(eps) and eps > 0):
                raise ValueError(f"the bound rule needs eps > 0, got {eps!r}")
            bounds = input_bound.values() if isinstance(input_bound, Mapping) else [input_bound]
            for b in bounds:
                if not (isinstance(b, (int, float)) and math.isfinite(b) and b >= 0):
                    raise ValueError(f"input_bound must be a finite number >= 0, got {b!r}")
        self.q, self.rule, self.eta, self.gamma, self.beta = float(q), rule, float(eta), float(gamma), float(beta)
        self.eps, self.relative = eps, bool(relative)
        self.input_bound = dict(input_bound) if isinstance(input_bound, Mapping) else float(input_bound)

    def hparams(self) -> dict[str, Any]:
        if self.rule == "index":
            return {"q": self.q, "rule": "index", "eta": self.eta, "gamma": self.gamma, "beta": self.beta}
        return {"q": self.q, "rule": "bound", "eps": self.eps, "input_bound": self.input_bound, "relative": self.relative}

    def check_scope(self, scope: str) -> None:
        check_scope(scope)
        if self.rule == "bound" and scope != "neuron":
            raise ValueError(f"lq_neuron's bound rule works per neuron; scope must be 'neuron', got {scope!r}")

    def _bound(self, name: str) -> float:
        if isinstance(self.input_bound, dict):
            if name not in self.input_bound:
                raise ValueError(f"lq_neuron: no input_bound for {name!r}; given for {sorted(self.input_bound)}")
            return float(self.input_bound[name])
        return self.input_bound

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        self.check_scope(scope)
        q = self.q
        units = unit_stats(weights, masks, scope, (q, 1.0))
        d, idx, r, c, clipped = {}, {}, {}, {}, {}
        for u, st in units.items():
            d[u] = st.count
            idx[u] = pq_from_sums(st.count, st.sums[q], st.sums[1.0], q, 1.0)
            if self.rule == "index":
                c[u] = sap_prune_count(idx[u], st.count, q, 1.0, self.eta, self.gamma, self.beta)
                r[u] = _retained(idx[u], st.count, q, 1.0, self.eta)
                clipped[u] = (self.gamma * (st.count - r[u]) > self.beta * st.count) & ~torch.isnan(idx[u])
            else:
                keep = theory.lq_keep_counts(weights[u], q, self.eps, self._bound(u), self.relative, masks.get(u))
                r[u] = torch.minimum(keep.to(torch.float64).cpu(), st.count)
                c[u] = st.count - r[u]
                clipped[u] = torch.zeros_like(st.count, dtype=torch.bool)
        return Plan(as_counts(c, scope), magnitude_scores(weights), make_records(scope, d, idx, r, c, clipped))


__all__ = [
    "Method",
    "Plan",
    "UnitRecord",
    "SAP",
    "LotteryTicket",
    "OneShot",
    "RandomPruning",
    "RandomMatched",
    "LqNeuron",
    "register",
    "get",
    "available",
]
