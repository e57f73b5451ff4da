"""The figures of a report (Diao et al. 2023, Figs. 2–5): accuracy, density, PQI, Gini, per-layer density and
retrained − pruned differences, mean ± std over seeds as a shaded band. One colour and marker per method.
Plotting uses matplotlib's object-oriented :class:`~matplotlib.figure.Figure`, never ``pyplot``, so it runs
headless and leaves no global state behind.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pqprune.files import atomic_write
from pqprune.report.runs import _EXTRA_COLOURS, _EXTRA_MARKERS, METHOD_STYLES, Group, MethodRuns
from pqprune.report.summary import _diff, mean_std


# --------------------------------------------------------------------------------------------- figures
def _layer_density(row: dict[str, Any], name: str) -> Any:
    """The density of layer ``name`` in one round row (None when the round did not record it)."""
    return ((row.get("layers") or {}).get(name) or {}).get("density")


def method_style(label: str) -> tuple[str, str]:
    """(colour, marker) of a method label: fixed for the known methods, a stable hash of the label otherwise."""
    if label in METHOD_STYLES:
        return METHOD_STYLES[label]
    h = int(hashlib.sha256(label.encode()).hexdigest(), 16)
    return _EXTRA_COLOURS[h % len(_EXTRA_COLOURS)], _EXTRA_MARKERS[(h // 7) % len(_EXTRA_MARKERS)]


def _new_figure(ncols: int = 1) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4 * ncols if ncols > 1 else 6.4, 4.0), dpi=110)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, list(axes)


def _band(
    ax: Any,
    x: np.ndarray,
    values: np.ndarray,
    label: str,
    *,
    linestyle: str = "-",
    hollow: bool = False,
    scale: float = 1.0,
) -> None:
    """Mean line with markers and a ±1 std band over seeds, in the method's style."""
    colour, marker = method_style(label)
    mean, std, _ = mean_std(values * scale)
    keep = np.isfinite(mean) & np.isfinite(x)
    if not keep.any():
        return
    x, mean, std = x[keep], mean[keep], std[keep]
    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.18, linewidth=0)
    ax.plot(
        x,
        mean,
        color=colour,
        marker=marker,
        linestyle=linestyle,
        markersize=4,
        markevery=max(1, len(x) // 15),
        markerfacecolor="none" if hollow else colour,
        label=label,
    )


def _legend_below(fig: Any, ax: Any, extra: Sequence[Any] = ()) -> None:
    """Legend under the axes, outside the plotting area, so it never hides data."""
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for h, lab in zip(list(handles) + [e for e in extra], labels + [e.get_label() for e in extra]):
        seen.setdefault(lab, h)
    if seen:
        ncol = len(seen) if len(seen) <= 5 else math.ceil(len(seen) / 2)  # at most two rows for ≤ 10 entries
        ax.legend(
            list(seen.values()),
            list(seen),
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
            ncol=ncol,
            fontsize=8,
            frameon=False,
        )


def _finish(fig: Any, ax_list: Sequence[Any], title: str, *, rounds: int | None = None) -> None:
    """Title and tick sizes; with ``rounds``, an x axis of whole rounds 0…rounds−1, the same in every figure."""
    from matplotlib.ticker import MaxNLocator

    fig.suptitle(title, fontsize=10)
    for ax in ax_list:
        ax.tick_params(labelsize=8)
        if rounds is not None:
            ax.set_xlim(-0.3, max(rounds - 1, 1) + 0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _log_percent(axis: Any) -> None:
    """Plain labels (100, 50, 20, …) on a log-scale percentage axis, as many as its span allows.

    Call after plotting: the tick spacing follows the data range (a run pruned to 72 % needs ticks at 80 and 90,
    one pruned to 0.1 % needs one per decade or the labels collide).
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    decades = math.log10(hi / lo) if lo > 0 and hi > 0 else 3.0
    subs = tuple(range(1, 10)) if decades < 1 else (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _rounds_x(m: MethodRuns) -> np.ndarray:
    return np.arange(m.n_rounds, dtype=float)


def fig_accuracy(g: Group) -> Any:
    from matplotlib.lines import Line2D

    fig, (ax,) = _new_figure()
    for m in g.methods:
        _band(ax, _rounds_x(m), m.column("test_accuracy"), m.label, scale=100)
        _band(ax, _rounds_x(m), m.column("pruned_test_accuracy"), m.label, linestyle="--", hollow=True, scale=100)
    ax.set_xlabel("pruning round t")
    ax.set_ylabel("test accuracy (%)")
    keys = [
        Line2D([], [], color="black", linestyle="-", label="retrained"),
        Line2D([], [], color="black", linestyle="--", label="pruned, before retraining"),
    ]
    _legend_below(fig, ax, keys)
    _finish(fig, [ax], f"Test accuracy — {g.title}", rounds=g.n_rounds)
    return fig


def fig_density(g: Group) -> Any:
    fig, (ax,) = _new_figure()
    for m in g.methods:
        _band(ax, _rounds_x(m), m.column("density"), m.label, scale=100)
    ax.set_yscale("log")
    _log_percent(ax.yaxis)
    ax.set_xlabel("pruning round t")
    ax.set_ylabel("remaining prunable weights (%, log scale)")
    _legend_below(fig, ax)
    _finish(fig, [ax], f"Remaining weights — {g.title}", rounds=g.n_rounds)
    return fig


def fig_metric(g: Group, key: str, ylabel: str, title: str) -> Any:
    fig, (ax,) = _new_figure()
    for m in g.methods:
        _band(ax, _rounds_x(m), m.column(key), m.label)
    ax.set_xlabel("pruning round t")
    ax.set_ylabel(ylabel)
    _legend_below(fig, ax)
    _finish(fig, [ax], f"{title} — {g.title}", rounds=g.n_rounds)
    return fig


def fig_accuracy_vs_density(g: Group) -> Any:
    fig, (ax,) = _new_figure()
    for m in g.methods:
        dens, _, _ = mean_std(m.column("density"))
        _band(ax, dens * 100, m.column("test_accuracy"), m.label, scale=100)
    ax.set_xscale("log")
    _log_percent(ax.xaxis)
    ax.invert_xaxis()  # pruning proceeds left to right, as rounds do in the other figures
    ax.set_xlabel("remaining prunable weights (%, log scale, decreasing)")
    ax.set_ylabel("test accuracy of the retrained model (%)")
    _legend_below(fig, ax)
    _finish(fig, [ax], f"Accuracy vs remaining weights — {g.title}")
    return fig


def layer_method(g: Group) -> MethodRuns | None:
    """The method whose per-layer densities are drawn: the first in the fixed order that recorded layers."""
    return next((m for m in g.methods if m.layer_names()), None)


def fig_layers(g: Group) -> Any:
    from matplotlib import colormaps

    fig, (ax,) = _new_figure()
    m = layer_method(g)
    if m is None:
        ax.text(0.5, 0.5, "no per-layer data recorded", ha="center", va="center", transform=ax.transAxes)
        _finish(fig, [ax], f"Per-layer density — {g.title}")
        return fig
    names = m.layer_names()
    cmap = colormaps["viridis"]
    markers = ("o", "s", "^", "v", "D", "P", "X", "*")
    x = _rounds_x(m)
    for i, name in enumerate(names):
        vals = m.matrix(functools.partial(_layer_density, name=name)) * 100
        mean, std, _ = mean_std(vals)
        keep = np.isfinite(mean)
        colour = cmap(i / max(1, len(names) - 1) * 0.9)
        ax.fill_between(x[keep], (mean - std)[keep], (mean + std)[keep], color=colour, alpha=0.18, linewidth=0)
        ax.plot(
            x[keep],
            mean[keep],
            color=colour,
            marker=markers[i % len(markers)],
            markersize=4,
            markevery=max(1, int(keep.sum()) // 15),
            label=name,
        )
    ax.set_yscale("log")
    _log_percent(ax.yaxis)
    ax.set_xlabel("pruning round t")
    ax.set_ylabel("remaining weights of the layer (%, log scale)")
    _legend_below(fig, ax)
    _finish(fig, [ax], f"Per-layer density of {m.label} — {g.title}", rounds=g.n_rounds)
    return fig


def fig_differences(g: Group) -> Any:
    fig, (ax_pqi, ax_acc) = _new_figure(ncols=2)
    have_pruned_pqi = False
    for m in g.methods:
        x = _rounds_x(m)
        # The pruned model's PQI needs the column ``pruned_pqi``; older databases lack it (see docs/report.md).
        if any(r.get("pruned_pqi") is not None for rs in m.rounds for r in rs):
            have_pruned_pqi = True
            _band(ax_pqi, x, _diff(m, "pqi", "pruned_pqi"), m.label)
        _band(ax_acc, x, _diff(m, "test_accuracy", "pruned_test_accuracy"), m.label, scale=100)
    if not have_pruned_pqi:
        ax_pqi.text(
            0.5,
            0.5,
            "PQI of the pruned model\nnot recorded in this database\n(rounds.pruned_pqi)",
            ha="center",
            va="center",
            transform=ax_pqi.transAxes,
            fontsize=9,
            color="#555555",
        )
    for ax in (ax_pqi, ax_acc):
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel("pruning round t")
    ax_pqi.set_ylabel("ΔPQI = retrained − pruned (PQI units)")
    ax_acc.set_ylabel("Δaccuracy = retrained − pruned (points)")
    _legend_below(fig, ax_acc)
    if have_pruned_pqi:
        _legend_below(fig, ax_pqi)
    _finish(fig, [ax_pqi, ax_acc], f"Retrained minus pruned-before-retraining — {g.title}", rounds=g.n_rounds)
    return fig


# (file stem, caption, builder): the figures of one group, in page order.
FIGURES: tuple[tuple[str, str, Callable[[Group], Any]], ...] = (
    (
        "accuracy",
        "Test accuracy of the retrained model (solid) and of the pruned model before retraining (dashed) per round.",
        fig_accuracy,
    ),
    ("density", "Percent of prunable weights remaining per round.", fig_density),
    (
        "pqi",
        "Global PQ Index I_{0.5,1} of the retrained model's surviving weights.",
        lambda g: fig_metric(g, "pqi", "global PQI I₀.₅,₁ (unitless, 0 = dense-like)", "Global PQ Index"),
    ),
    (
        "gini",
        "Gini index of the retrained model's surviving weights.",
        lambda g: fig_metric(g, "gini", "Gini index (unitless)", "Gini index"),
    ),
    (
        "accuracy_vs_density",
        "Test accuracy of the retrained model against the percent of weights remaining.",
        fig_accuracy_vs_density,
    ),
    ("layers", "Percent of weights remaining in each layer, for one method.", fig_layers),
    (
        "differences",
        "PQI and accuracy of the retrained model minus those of the pruned model before retraining.",
        fig_differences,
    ),
)


def _save_png(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
