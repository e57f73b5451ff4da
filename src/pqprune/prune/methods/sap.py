"""Sparsity-informed Adaptive Pruning (SAP) [Diao23, Algorithm 1], docs/math.md §5."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from pqprune.measure.indices import check_pq, pq_from_sums, sap_prune_count
from pqprune.measure.weights import Masks, Scope
from pqprune.prune.methods.base import Method, Option, Plan, Weights
from pqprune.prune.methods.registry import register
from pqprune.prune.methods.units import as_counts, make_records, retained_count, unit_stats
from pqprune.prune.select import magnitude_scores


@register
class SAP(Method):
    """Sparsity-informed Adaptive Pruning [Diao23, Algorithm 1], docs/math.md §5.

    Per unit with ``d`` survivors and PQ Index ``I = I_{p,q}`` of the survivors:

        r = ceil(d · (1+η)^{q/(p−q)} · (1 − I)^{qp/(q−p)})       (the retained-weight bound, [Diao23, Thm 2])
        c = floor(d · clamp(γ·(1 − r/d), 0, β))

    and the ``c`` smallest-magnitude survivors are pruned. With (0.5, 1), η = 0, γ = 1 the fraction pruned is
    the PQI itself. Counts come from :func:`pqprune.measure.sap_prune_count`.
    """

    name: ClassVar[str] = "sap"
    rank: ClassVar[int] = 0
    options: ClassVar[tuple[Option, ...]] = (
        Option("p", float, 0.5, "p of the PQ Index pair (0 < p < q)"),
        Option("q", float, 1.0, "q of the PQ Index pair"),
        Option("eta", float, 0.0, "eta_r >= 0 of the retained-weight bound (larger prunes more)"),
        Option("gamma", float, 1.0, "gamma > 0, scales the pruned fraction"),
        Option("beta", float, 0.9, "cap beta in (0, 1] on the fraction pruned per round"),
    )
    label_format: ClassVar[str] = "SAP({p:g},{q:g})"
    styles: ClassVar[dict[str, tuple[str, str]]] = {"SAP(0.5,1)": ("#1f77b4", "o"), "SAP(1,2)": ("#ff7f0e", "s")}

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
        d: dict[str, Tensor] = {}
        idx: dict[str, Tensor] = {}
        r: dict[str, Tensor] = {}
        c: dict[str, Tensor] = {}
        clipped: dict[str, Tensor] = {}
        for u, st in units.items():
            d[u] = st.count
            idx[u] = pq_from_sums(st.count, st.sums[p], st.sums[q], p, q)
            c[u] = sap_prune_count(idx[u], st.count, p, q, self.eta, self.gamma, self.beta)
            r[u] = retained_count(idx[u], st.count, p, q, self.eta)
            clipped[u] = (self.gamma * (st.count - r[u]) > self.beta * st.count) & ~torch.isnan(idx[u])
        return Plan(as_counts(c, scope), magnitude_scores(weights), make_records(scope, d, idx, r, c, clipped))
