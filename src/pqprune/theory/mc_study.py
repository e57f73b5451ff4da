"""The Monte-Carlo grid of [Qian21], docs/math.md §8: for every (arch, width, depth, density, method), ``N`` random
networks and their pruned versions, and for every tolerance ε the estimate ``p̂ = P(gap ≤ ε)`` with its Wilson 95%
interval beside the probability the proven bound guarantees. Cells go to the results database as they finish, one
transaction per network configuration; :func:`plot_grid` draws them.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pqprune.files import FileFormat
from pqprune.plotting import new_figure, save_png, series_colors
from pqprune.theory.gap_bound import ARCHS, DISTS, METHODS, RandomNetSpec, guaranteed_probability, hp_gap_bound
from pqprune.theory.moments import _check_delta
from pqprune.theory.monte_carlo import monte_carlo_gap, wilson_interval


# ============================================================================ Monte-Carlo grid [Qian21]
@dataclass(frozen=True)
class GridCell:
    """One cell of :func:`monte_carlo_grid`: a network configuration at one tolerance ε.

    ``p_hat`` estimates ``P(sup_{‖x‖₂≤1}‖F(x) − F'(x)‖₂ ≤ ε)`` from ``n`` draws (Wilson 95% interval
    ``[ci_low, ci_high]``); ``guaranteed_probability`` is the proven lower bound on that probability.
    ``bound_eps`` is the gap the bound guarantees with probability ``1 − delta`` and ``gap_q`` the empirical
    ``(1 − delta)``-quantile of the estimated gaps: ``bound_eps / gap_q`` measures how loose the bound is.
    ``seconds`` is the time of the configuration's draws (shared by all its ε).
    """

    arch: str
    width: int
    depth: int
    density: float
    method: str
    dist: str
    eps: float
    n: int
    successes: int
    p_hat: float
    ci_low: float
    ci_high: float
    guaranteed_probability: float
    delta: float
    bound_eps: float
    gap_mean: float
    gap_q: float
    gap_max: float
    seconds: float
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def looseness(self) -> float:
        """``bound_eps / gap_q``: how many times the empirical gap quantile the bound needs (∞ if the gap is 0)."""
        return self.bound_eps / self.gap_q if self.gap_q > 0 else math.inf

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "settings": dict(self.settings), "looseness": self.looseness}


def _check_positive_ints(name: str, values: Sequence[int], minimum: int = 1) -> None:
    if not values:
        raise ValueError(f"{name}: give at least one value")
    for v in values:
        if not (isinstance(v, int) and v >= minimum):
            raise ValueError(f"{name} must be integers >= {minimum}, got {v!r}")


def _check_choice(name: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    if not values:
        raise ValueError(f"{name}: give at least one value")
    for v in values:
        if v not in allowed:
            raise ValueError(f"{name} must be among {', '.join(allowed)}; got {v!r}")


def _check_eps_values(name: str, values: Sequence[float]) -> None:
    if not values:
        raise ValueError(f"{name}: give at least one value")
    for v in values:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be finite numbers > 0, got {v!r}")


def monte_carlo_grid(
    widths: Sequence[int] = (16, 32, 64),
    depths: Sequence[int] = (2, 3),
    densities: Sequence[float] = (0.9, 0.5),
    methods: Sequence[str] = ("random", "magnitude"),
    eps: Sequence[float] = (1.0, 15.0),
    *,
    archs: Sequence[str] = ("fcn",),
    dist: str = "normal",
    draws: int = 20,
    n_inputs: int = 64,
    restarts: int = 2,
    steps: int = 15,
    seed: int = 0,
    delta: float = 0.1,
    db: str | Path | None = None,
    progress: Callable[[GridCell], None] | None = None,
) -> list[GridCell]:
    """Monte-Carlo study of the pruning gap over a grid [Qian21], docs/math.md §8.

    For each configuration ``(arch, width, depth, density, method)`` (a :class:`pqprune.theory.RandomNetSpec`
    with ``dist``; for ``arch="cnn"`` the width is the number of channels) one call of
    :func:`pqprune.theory.monte_carlo_gap` draws ``draws`` networks and estimates each one's
    ``sup_{‖x‖₂≤1}‖F(x) − F'(x)‖₂`` (``n_inputs`` sphere points, ``restarts`` projected-gradient ascents of
    ``steps`` steps). The same gaps serve every ε:

        p̂(ε) = #{gap ≤ ε} / N,   Wilson 95% interval,   guaranteed(ε) = sup{1 − δ : hp_gap_bound(δ) ≤ ε}.

    Every configuration uses the same ``seed``, so a cell's numbers do not depend on which other cells are in the
    grid (common random numbers across cells). With ``db`` each configuration's cells are written to the ``theory``
    table in one transaction as soon as they are computed (an interrupted study keeps what it finished).
    ``progress`` is called with every cell. Errors (``ValueError``) for empty or invalid lists, ``delta ∉ (0,1)``.
    """
    _check_choice("arch", archs, ARCHS)
    _check_choice("method", methods, METHODS)
    _check_choice("dist", [dist], DISTS)
    _check_positive_ints("widths", widths)
    _check_positive_ints("depths", depths)
    _check_positive_ints("draws", [draws])
    _check_positive_ints("n_inputs", [n_inputs])
    _check_eps_values("eps", eps)
    if not densities:
        raise ValueError("densities: give at least one value")
    _check_delta(delta)
    # Build every spec first so that a bad value (e.g. depth 1 for a CNN, density 0) fails before any work.
    specs = [
        RandomNetSpec(arch=a, width=w, depth=d, density=float(rho), method=m, dist=dist)
        for a in archs
        for w in widths
        for d in depths
        for rho in densities
        for m in methods
    ]
    study = uuid.uuid4().hex[:12]
    cells: list[GridCell] = []
    for spec in specs:
        start = time.perf_counter()
        res = monte_carlo_gap(
            spec, float(eps[0]), n_draws=draws, n_inputs=n_inputs, restarts=restarts, steps=steps, seed=seed
        )
        seconds = time.perf_counter() - start
        bound_eps = hp_gap_bound(spec, delta)
        gap_q = float(torch.quantile(res.gaps, 1.0 - delta))
        settings = {
            "study": study,
            "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.__dict__.items()},
            "draws": draws,
            "n_inputs": n_inputs,
            "restarts": restarts,
            "steps": steps,
            "seed": seed,
            "delta": delta,
        }
        group = []
        for e in eps:
            k = int((res.gaps <= e).sum())
            low, high = wilson_interval(k, draws)
            group.append(
                GridCell(
                    arch=spec.arch,
                    width=spec.width,
                    depth=spec.depth,
                    density=spec.density,
                    method=spec.method,
                    dist=spec.dist,
                    eps=float(e),
                    n=draws,
                    successes=k,
                    p_hat=k / draws,
                    ci_low=low,
                    ci_high=high,
                    guaranteed_probability=guaranteed_probability(spec, float(e)),
                    delta=delta,
                    bound_eps=bound_eps,
                    gap_mean=float(res.gaps.mean()),
                    gap_q=gap_q,
                    gap_max=float(res.gaps.max()),
                    seconds=seconds,
                    settings=settings,
                )
            )
        if db is not None:
            from pqprune.store import Store, record_theory_cells

            with Store(db) as store:
                record_theory_cells(store, [c.as_dict() for c in group])
        for c in group:
            if progress is not None:
                progress(c)
        cells.extend(group)
    return cells


MC_STUDY = FileFormat("pqprune.theory_mc", 1, "Monte-Carlo study")  # theory_mc.json (0.1.0: a bare list)


def save_grid(cells: Sequence[GridCell], path: str | Path) -> Path:
    """Write the cells of :func:`monte_carlo_grid` as a JSON document (``{"cells": [...]}``), atomically."""
    return MC_STUDY.save_json({"cells": [c.as_dict() for c in cells]}, path)


def load_grid(path: str | Path) -> list[dict[str, Any]]:
    """The cells (as dicts) of a file of :func:`save_grid`; a foreign or newer file raises ``FileFormatError``."""
    return list(MC_STUDY.read_json(path).get("cells") or [])


def plot_grid(cells: Sequence[GridCell], path: str | Path) -> Path:
    """Width vs p̂ (Wilson 95% error bars, solid) and the bound's guaranteed probability (dashed, same colour).

    One panel per (arch, depth, ε); one colour per (method, density). Writes a PNG and returns
    its path.
    """

    if not cells:
        raise ValueError("no cells to plot")
    panels = sorted({(c.arch, c.depth, c.eps) for c in cells})
    series = sorted({(c.method, c.density) for c in cells}, key=lambda s: (s[0], -s[1]))
    colors = dict(zip(series, series_colors(len(series))))
    ncols = len({p[2] for p in panels})
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), sharey=True)
    for ax, (arch, depth, e) in zip(axes.flat, panels):
        for s in series:
            pts = sorted(
                (c for c in cells if (c.arch, c.depth, c.eps, c.method, c.density) == (arch, depth, e, *s)),
                key=lambda c: c.width,
            )
            if not pts:
                continue
            w = [c.width for c in pts]
            p = [c.p_hat for c in pts]
            err = [[c.p_hat - c.ci_low for c in pts], [c.ci_high - c.p_hat for c in pts]]
            ax.errorbar(w, p, yerr=err, marker="o", capsize=3, color=colors[s], label=f"{s[0]} ρ={s[1]:g}: p̂")
            ax.plot(
                w,
                [c.guaranteed_probability for c in pts],
                "--",
                marker="x",
                color=colors[s],
                label=f"{s[0]} ρ={s[1]:g}: bound",
            )
        ax.set_xscale("log", base=2)
        ticks = sorted({c.width for c in cells if c.arch == arch})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f"{arch}, depth {depth}, ε = {e:g}", fontsize=10)
        ax.set_xlabel("width" if arch == "fcn" else "channels")
        ax.set_ylabel("P(gap ≤ ε)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle("Random networks: Monte-Carlo p̂ (95% Wilson) vs the proven bound's probability", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * math.ceil(len(labels) / 4), 1, 0.95))
    return save_png(fig, path, dpi=120)
