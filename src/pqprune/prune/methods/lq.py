"""l_q adaptive per-neuron pruning [Yang22]: the bound rule and the index rule, docs/math.md §7."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from pqprune.measure.indices import check_lq, pq_from_sums, sap_prune_count
from pqprune.measure.sums import row_power_sums
from pqprune.measure.weights import Masks, Scope, check_mask, check_scope
from pqprune.prune.methods.base import Method, Option, Plan, RunContext, Weights
from pqprune.prune.methods.registry import register
from pqprune.prune.methods.sap import SAP
from pqprune.prune.methods.units import as_counts, make_records, retained_count, unit_stats
from pqprune.prune.select import magnitude_scores


@register
class LqNeuron(Method):
    """ℓ_q adaptive pruning per neuron [Yang22], docs/math.md §7, with soft sparsity via the ℓ_q quasi-norm, 0<q<1.

    * ``rule="index"`` (as in the authors' code): retained fraction ``m/d = (1+η)^{−1/(1−q)}·SI_q^{−q/(1−q)}``
      with ``SI_q = 1/(1 − I_{q,1})``, i.e. SAP's arithmetic with ``(p, q) := (q, 1)``; pruned fraction
      ``min(γ·(1 − m/d), β)`` (γ is the code's constant ``c``). Works at any scope.
    * ``rule="bound"`` (guaranteed, [Gao13]): keep ``m_i = min(d_i, ceil((B·‖w_i‖_q/ε)^{q/(1−q)}))`` largest
      weights of neuron i, so that inputs bounded by ``B`` move its pre-activation by at most ε
      (``relative=True``: ε_i = eps·B·‖w_i‖₁). Neuron scope only; counts from
      :func:`pqprune.theory.lq_keep_counts`. ``input_bound`` is a number or name → number (measured on data
      by the caller; methods know nothing of data).
    """

    name: ClassVar[str] = "lq"
    rank: ClassVar[int] = 5
    aliases: ClassVar[tuple[str, ...]] = ("lq_neuron",)
    options: ClassVar[tuple[Option, ...]] = (
        Option("q", float, 0.5, "the l_q exponent, 0 < q < 1"),
        Option("rule", str, "index", "index (SAP's arithmetic with (q, 1)) or bound (guaranteed)", ("index", "bound")),
        Option("eta", float, 0.0, "index rule: eta >= 0 (larger prunes more)"),
        Option("gamma", float, 1.0, "index rule: gamma > 0, scales the pruned fraction"),
        Option("beta", float, 0.9, "index rule: cap in (0, 1] on the fraction pruned per round"),
        Option("eps", float, None, "bound rule: tolerance > 0 on each neuron's pre-activation change"),
        Option("relative", bool, False, "bound rule: eps relative to B·‖w_i‖₁ instead of absolute"),
        Option("input_bound", float, None, "bound rule: input bound B of every layer (unset: measured on the data)"),
    )
    styles: ClassVar[dict[str, tuple[str, str]]] = {"LQ(0.5)": ("#8c564b", "P"), "LQ-bound(0.5)": ("#e377c2", "*")}
    default_scope: ClassVar[str] = "neuron"

    def __init__(
        self,
        q: float = 0.5,
        rule: str = "index",
        eta: float = 0.0,
        gamma: float = 1.0,
        beta: float = 0.9,
        eps: float | None = None,
        input_bound: float | Mapping[str, float] | Callable[[], Mapping[str, float]] = 1.0,
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
            if not callable(input_bound):
                _check_bounds(input_bound)
        self.q, self.rule, self.eta, self.gamma, self.beta = float(q), rule, float(eta), float(gamma), float(beta)
        self.eps, self.relative = eps, bool(relative)
        self.input_bound: float | dict[str, float] | Callable[[], Mapping[str, float]] = (
            input_bound
            if callable(input_bound)
            else dict(input_bound)
            if isinstance(input_bound, Mapping)
            else float(input_bound)
        )
        self.last_bounds: dict[str, float] = {}  # the input bounds the last bound-rule step used, per layer

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: RunContext) -> LqNeuron:
        """The run's method. Options of the other rule are refused; the bound rule without ``input_bound`` uses
        the largest |input| of each layer measured on the training data at each step (``context.input_bounds``)."""
        o = dict(options)
        if o["rule"] == "index":
            wrong = [k for k in ("eps", "input_bound") if o.get(k) is not None] + (
                ["relative"] if o.get("relative") else []
            )
            if wrong:
                raise ValueError(f"option {', '.join(wrong)} belongs to lq's bound rule (--rule bound)")
            return cls(q=o["q"], rule="index", eta=o["eta"], gamma=o["gamma"], beta=o["beta"])
        defaults = cls.defaults()
        wrong = [k for k in ("eta", "gamma", "beta") if o[k] != defaults[k]]
        if wrong:
            raise ValueError(f"option {', '.join(wrong)} belongs to lq's index rule, not --rule bound")
        bound: float | Callable[[], Mapping[str, float]]
        if o.get("input_bound") is not None:
            bound = o["input_bound"]
        elif context.input_bounds is not None:
            bound = context.input_bounds
        else:
            bound = 1.0  # checking options only: the run measures the bounds
        return cls(q=o["q"], rule="bound", eps=o["eps"], relative=o["relative"], input_bound=bound)

    @classmethod
    def label(cls, options: Mapping[str, Any]) -> str:
        q = options.get("q") or cls.defaults()["q"]
        if options.get("rule", "index") == "bound":
            return f"LQ-bound({q:g})"
        return f"LQ({q:g})"

    def hparams(self) -> dict[str, Any]:
        if self.rule == "index":
            return {"q": self.q, "rule": "index", "eta": self.eta, "gamma": self.gamma, "beta": self.beta}
        return {
            "q": self.q,
            "rule": "bound",
            "eps": self.eps,
            "input_bound": "measured" if callable(self.input_bound) else self.input_bound,
            "relative": self.relative,
        }

    def check_scope(self, scope: str) -> None:
        check_scope(scope)
        if self.rule == "bound" and scope != "neuron":
            raise ValueError(f"lq_neuron's bound rule works per neuron; scope must be 'neuron', got {scope!r}")

    def _bounds(self, names: Sequence[str]) -> dict[str, float]:
        given = self.input_bound() if callable(self.input_bound) else self.input_bound
        if not isinstance(given, Mapping):
            return dict.fromkeys(names, float(given))
        _check_bounds(given)
        missing = sorted(set(names) - set(given))
        if missing:
            raise ValueError(f"lq: no input_bound for {missing}; given for {sorted(given)}")
        return {n: float(given[n]) for n in names}

    def plan(self, weights: Weights, masks: Masks, scope: Scope, round_: int) -> Plan:
        self.check_scope(scope)
        q, eps = self.q, float(self.eps or 0.0)
        units = unit_stats(weights, masks, scope, (q, 1.0))
        bounds = self._bounds(list(weights)) if self.rule == "bound" else {}
        self.last_bounds = bounds
        d: dict[str, Tensor] = {}
        idx: dict[str, Tensor] = {}
        r: dict[str, Tensor] = {}
        c: dict[str, Tensor] = {}
        clipped: dict[str, Tensor] = {}
        for u, st in units.items():
            d[u] = st.count
            idx[u] = pq_from_sums(st.count, st.sums[q], st.sums[1.0], q, 1.0)
            if self.rule == "index":
                c[u] = sap_prune_count(idx[u], st.count, q, 1.0, self.eta, self.gamma, self.beta)
                r[u] = retained_count(idx[u], st.count, q, 1.0, self.eta)
                clipped[u] = (self.gamma * (st.count - r[u]) > self.beta * st.count) & ~torch.isnan(idx[u])
            else:
                keep = lq_keep_counts(weights[u], q, eps, bounds[u], self.relative, masks.get(u))
                r[u] = torch.minimum(keep.to(torch.float64).cpu(), st.count)
                c[u] = st.count - r[u]
                clipped[u] = torch.zeros_like(st.count, dtype=torch.bool)
        return Plan(as_counts(c, scope), magnitude_scores(weights), make_records(scope, d, idx, r, c, clipped))


def check_input_bound(b: float) -> None:
    """An input bound ``B`` (``|h_j| ≤ B``) is a finite number ``≥ 0``; raises ``ValueError`` otherwise."""
    if not (isinstance(b, (int, float)) and math.isfinite(b) and b >= 0):
        raise ValueError(f"input_bound must be a finite number >= 0, got {b!r}")


def _check_bounds(bound: float | Mapping[str, float]) -> None:
    for b in bound.values() if isinstance(bound, Mapping) else [bound]:
        check_input_bound(b)


def _check_finite_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def lq_keep_counts(
    w: Tensor,
    q: float,
    eps: float,
    input_bound: float,
    relative: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-neuron keep counts of the ℓ_q bound rule [Yang22, Gao13], docs/math.md §7.

    For row ``i`` of ``w.reshape(out, -1)`` with survivors ``d_i`` (``mask`` True) and ``t_i = ‖w_i‖_q``
    over the survivors, keeping the ``m`` largest magnitudes leaves an ℓ₁ tail ``≤ t_i·m^{1−1/q}`` [Gao13], so
    with inputs ``|h_j| ≤ B`` the pre-activation changes by at most ``B·t_i·m^{1−1/q}``. That is ``≤ ε_i`` as
    soon as ``m ≥ (B·t_i/ε_i)^{q/(1−q)}``, hence

        m_i = min(d_i, ceil((B·‖w_i‖_q/ε_i)^{q/(1−q)})),

    with ``ε_i = eps`` (absolute) or ``ε_i = eps·B·‖w_i‖₁`` (``relative=True``, the tolerance as a fraction of
    the neuron's largest possible pre-activation). Rows without survivors, rows whose survivors are all zero
    and ``B = 0`` keep 0 weights (nothing can change). The power is evaluated in log space in float64 and
    clamped to ``d_i`` before rounding, so huge ratios do not overflow; ``ceil`` carries a 1e−9 relative
    tolerance so that exact integers are not rounded up by floating-point noise.

    Returns an int64 tensor with one entry per output row. Raises ``ValueError`` for ``q ∉ (0,1)``,
    ``eps ≤ 0``, ``input_bound < 0`` or a mask of the wrong shape/dtype.
    """
    check_lq(q)
    _check_finite_positive("eps", eps)
    check_input_bound(input_bound)
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise ValueError("w must be a floating-point tensor")
    if mask is not None:
        check_mask("w", mask, w.shape)
    stats = row_power_sums(w, (q, 1.0), mask)
    d = stats.count  # float64 [rows]
    s_q = stats.sums[q]
    s_1 = stats.sums[1.0]
    nz = s_q > 0
    out = torch.zeros_like(d, dtype=torch.int64)
    if input_bound == 0 or not bool(nz.any()):
        return out
    log_t = torch.log(s_q[nz]) / q  # log ‖w_i‖_q
    if relative:
        log_eps = math.log(eps) + math.log(input_bound) + torch.log(s_1[nz])
    else:
        log_eps = torch.full_like(log_t, math.log(eps))
    log_m = (q / (1.0 - q)) * (math.log(input_bound) + log_t - log_eps)
    m = torch.exp(torch.clamp(log_m, max=math.log(float(d.max()) + 1.0)))
    m = torch.ceil(m * (1.0 - 1e-9))
    m = torch.minimum(m, d[nz])
    out[nz] = m.to(torch.int64)
    return out
