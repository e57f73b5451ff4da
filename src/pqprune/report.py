"""Reports: the figures of Diao et al. (2023, Figs. 2–5) and a summary table, from the results database.

``write_report(db, out_dir)`` reads every run of the store (optionally filtered by settings), groups the runs by
``(data, model, scope)``, averages each method's rounds over its seeds and writes, into ``out_dir``:

- one PNG per figure and group (``<group>_<figure>.png``), mean ± std over seeds as a shaded band;
- ``summary.md``: one Markdown table per group;
- ``index.html``: the tables and the figures, self-contained (images embedded as ``data:`` URIs, inline CSS,
  no script, no network request), readable on a laptop screen.

This module reads the store through :class:`pqprune.store.Store` only; it never writes SQL and never writes the
database. Plotting uses matplotlib's object-oriented :class:`~matplotlib.figure.Figure` (Agg canvas), never
``pyplot``, so it runs headless and leaves no global figure state behind.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pqprune.files import atomic_write

# --------------------------------------------------------------------------------------------- constants
GROUP_KEYS: tuple[str, ...] = ("data", "model", "scope")
# Settings that do not make two runs different *methods*: the group keys, the seed (averaged over) and the
# where-to-compute settings. Runs of one group that agree on everything else are seeds of one method.
_NOT_METHOD = frozenset(GROUP_KEYS) | {"seed", "device", "data_root", "download", "keep_checkpoints", "launch"}

PHASES: tuple[str, ...] = ("regularisation", "compression", "collapse")
UNKNOWN_PHASE = "unknown"
PQI_TOL = 0.005  # a PQI change smaller than this is noise (PQI of trained MLPs moves by ~0.01–0.1 per round)
ACC_TOL = 0.01  # one accuracy point (accuracies are fractions), as in "within 1 point of the dense model"

# One colour and marker per method, the same in every figure and every report. Labels are those of
# pqprune.experiment.method_label; SAP's (p, q) are part of the label so the two SAP variants differ.
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "SAP(0.5,1)": ("#1f77b4", "o"),
    "SAP(1,2)": ("#ff7f0e", "s"),
    "LT": ("#2ca02c", "^"),
    "OS": ("#d62728", "v"),
    "Random": ("#7f7f7f", "x"),
    "LQ(0.5)": ("#8c564b", "P"),
}
# Other labels (SAP(0.5,2), variants of a method) get a style from a stable hash of the label: the same label
# gets the same style in every report, without a global registry.
_EXTRA_COLOURS = ("#9467bd", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39")
_EXTRA_MARKERS = ("D", "*", "h", "<", ">", "p", "X", "d")
_METHOD_ORDER = tuple(METHOD_STYLES)

PHASE_RULE = (
    "Phases (math.md §9) are labelled round by round from the seed-mean trajectories of the global PQI and of the "
    "retrained test accuracy, causally (round t looks only at rounds 0…t). The walk starts in regularisation; "
    f"it moves to compression as soon as the PQI rises more than {PQI_TOL} above its running minimum; from "
    f"compression it moves to collapse once the PQI has fallen more than {PQI_TOL} below the compression peak "
    f"while the accuracy is more than {ACC_TOL * 100:g} point below its best so far; from regularisation it moves "
    "straight to collapse when the accuracy drops by that much while the PQI is still not rising. Collapse is "
    "final. Missing values (NaN) carry the previous round's value; an all-NaN PQI gives 'unknown'. The PQI peak "
    "round is the highest PQI of the compression phase (the overall maximum when there is none)."
)


class ReportError(ValueError):
    """The report cannot be made: no database, no matching runs, or an unusable output folder."""


# --------------------------------------------------------------------------------------------- phases (math.md §9)
def _carry(values: Sequence[float | None]) -> np.ndarray | None:
    """Float array with NaN/None replaced by the previous finite value (leading ones by the first); None if none."""
    x = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    finite = np.isfinite(x)
    if not finite.any():
        return None
    idx = np.where(finite, np.arange(len(x)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = int(np.argmax(finite))  # leading NaNs take the first finite value
    return x[idx]


def _phase_walk(
    pqi: Sequence[float | None], accuracy: Sequence[float | None], pqi_tol: float, acc_tol: float
) -> tuple[list[str], int | None]:
    """The labels of :func:`phases` and the round of the PQI peak (see :data:`PHASE_RULE`)."""
    n = len(pqi)
    if len(accuracy) != n:
        raise ValueError(f"pqi and accuracy must have the same length, got {n} and {len(accuracy)}")
    if n == 0:
        return [], None
    x = _carry(pqi)
    if x is None:
        return [UNKNOWN_PHASE] * n, None
    a = _carry(accuracy)  # None: no accuracy at all, so accuracy never "drops"
    state, lo, hi, peak = "regularisation", x[0], -math.inf, None
    best_acc = -math.inf
    labels: list[str] = []
    for t in range(n):
        if a is not None:
            best_acc = max(best_acc, a[t])
        dropped = a is not None and a[t] < best_acc - acc_tol
        if state == "regularisation":
            if x[t] > lo + pqi_tol:
                state, hi, peak = "compression", x[t], t
            elif dropped:
                state = "collapse"
            lo = min(lo, x[t])
        elif state == "compression":
            if x[t] > hi:
                hi, peak = x[t], t
            elif x[t] < hi - pqi_tol and dropped:
                state = "collapse"
        labels.append(state)
    if peak is None:
        finite = [v for v in pqi if v is not None and math.isfinite(v)]
        peak = int(np.nanargmax(np.array([np.nan if v is None else v for v in pqi], float))) if finite else None
    return labels, peak


def phases(
    pqi: Sequence[float | None],
    accuracy: Sequence[float | None],
    *,
    pqi_tol: float = PQI_TOL,
    acc_tol: float = ACC_TOL,
) -> list[str]:
    """The phase of math.md §9 of every round: ``regularisation``, ``compression`` or ``collapse``.

    ``pqi`` is the global PQ Index of the retrained model per round, ``accuracy`` its test accuracy (fractions;
    ``acc_tol`` is in the same unit). The rule walks the rounds in order, so round t's label depends only on
    rounds 0…t (what one would say at that time):

    1. Start in ``regularisation`` (PQI falling or flat: pruning removes what training would shrink anyway).
    2. ``regularisation`` → ``compression`` when the PQI rises more than ``pqi_tol`` above its running minimum
       (the trough); the compression peak is the highest PQI seen since.
    3. ``compression`` → ``collapse`` when the PQI is more than ``pqi_tol`` below that peak *and* the accuracy is
       more than ``acc_tol`` below its best so far (a PQI dip with intact accuracy is noise, not collapse).
    4. ``regularisation`` → ``collapse`` directly when the accuracy drops by more than ``acc_tol`` below its best
       while the PQI is not rising (the compression phase was shorter than one round).
    5. ``collapse`` is final.

    Edge cases: an empty input gives ``[]``; one round gives ``["regularisation"]``; a flat PQI with flat
    accuracy stays ``regularisation``; NaN/None values carry the previous round's value (leading ones take the
    first finite value); a PQI with no finite value gives ``"unknown"`` for every round; an accuracy with no
    finite value never counts as dropping.

    Raises:
        ValueError: the two sequences differ in length.
    """
    return _phase_walk(pqi, accuracy, pqi_tol, acc_tol)[0]


def pqi_peak_round(
    pqi: Sequence[float | None],
    accuracy: Sequence[float | None],
    *,
    pqi_tol: float = PQI_TOL,
    acc_tol: float = ACC_TOL,
) -> int | None:
    """The round of the compression peak of :func:`phases` (highest PQI of the compression phase); the round of
    the largest PQI when there is no compression phase; None when the PQI has no finite value."""
    return _phase_walk(pqi, accuracy, pqi_tol, acc_tol)[1]


# --------------------------------------------------------------------------------------------- loading
@dataclass
class MethodRuns:
    """The seeds of one method configuration in one group: their settings and recorded rounds."""

    label: str
    settings: dict[str, Any]  # of the first run; equal for all seeds except the seed
    run_ids: list[str] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    rounds: list[list[dict[str, Any]]] = field(default_factory=list)  # per seed, by round

    @property
    def n_rounds(self) -> int:
        return max((r["round"] for rs in self.rounds for r in rs), default=-1) + 1

    def matrix(self, get: Callable[[dict[str, Any]], Any]) -> np.ndarray:
        """(seeds, rounds) array of ``get(round_row)``; NaN where a seed lacks the round or the value is None."""
        out = np.full((len(self.rounds), self.n_rounds), np.nan)
        for i, rs in enumerate(self.rounds):
            for r in rs:
                v = get(r)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    out[i, r["round"]] = float(v)
        return out

    def column(self, key: str) -> np.ndarray:
        return self.matrix(lambda r: r.get(key))

    def layer_names(self) -> list[str]:
        names = {n for rs in self.rounds for r in rs for n in (r.get("layers") or {})}
        return sorted(names, key=_natural_key)


@dataclass
class Group:
    """The runs sharing (data, model, scope), one :class:`MethodRuns` per method configuration, in fixed order."""

    data: str
    model: str
    scope: str
    methods: list[MethodRuns]

    @property
    def title(self) -> str:
        return f"data={self.data}, model={self.model}, scope={self.scope}"

    @property
    def n_rounds(self) -> int:
        """Rounds of the longest method (the common x range of the figures)."""
        return max((m.n_rounds for m in self.methods), default=0)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.data}-{self.model}-{self.scope}")


def _natural_key(name: str) -> list[Any]:
    """'layers.10.weight' after 'layers.2.weight'."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _label(settings: Mapping[str, Any]) -> str:
    # One implementation of a method's human name: the runner's.
    from pqprune.experiment import method_label

    try:
        return method_label(settings)
    except (KeyError, TypeError, ValueError):
        return str(settings.get("method", "?"))


def _method_order(label: str) -> tuple[int, str]:
    base = label.split(" ")[0]
    return (_METHOD_ORDER.index(base) if base in _METHOD_ORDER else len(_METHOD_ORDER), label)


def load_groups(db_path: str | Path, where: Mapping[str, Any] | None = None) -> list[Group]:
    """Read the runs matching ``where`` (setting → value) and their rounds, grouped by (data, model, scope).

    Runs with no recorded round are left out. Seeds of one method are the runs of a group whose settings agree
    except for the seed (and where-to-compute settings); when two such configurations share a label (e.g. SAP
    with two values of eta), the settings that differ are appended to their labels.

    Raises:
        ReportError: no database at ``db_path``, or no run with rounds matches.
    """
    from pqprune.store import Store, StoreError

    path = Path(db_path)
    if not path.is_file():
        raise ReportError(f"no results database at {path} (run `pqprune run` or `pqprune demo` first, or pass --db)")
    try:
        with Store(path) as store:
            runs = store.list_runs(where=dict(where or {}))
            everything = [run["settings"] for run in store.list_runs()] if not runs else []  # for the error message
            loaded = [(run, store.rounds(run["run_id"])) for run in runs]
    except (StoreError, ValueError) as err:
        raise ReportError(str(err)) from err
    if not runs:
        known = sorted({k for settings in everything for k in settings})
        bad = [k for k in (where or {}) if known and k not in known]
        hint = f"; unknown setting(s) {bad}, known: {', '.join(known)}" if bad else ""
        raise ReportError(f"no runs in {path} match {_where_text(where)} ({len(everything)} runs in the database){hint}")
    loaded = [(run, rounds) for run, rounds in loaded if rounds]
    if not loaded:
        raise ReportError(f"the {len(runs)} runs in {path} matching {_where_text(where)} have no finished round yet")

    groups: dict[tuple[str, str, str], dict[str, MethodRuns]] = {}
    for run, rounds in loaded:
        s = run["settings"]
        gkey = tuple(str(s.get(k)) for k in GROUP_KEYS)
        config = json.dumps({k: v for k, v in s.items() if k not in _NOT_METHOD}, sort_keys=True)
        mr = groups.setdefault(gkey, {}).setdefault(config, MethodRuns(_label(s), dict(s)))  # type: ignore[arg-type]
        mr.run_ids.append(run["run_id"])
        mr.seeds.append(s.get("seed"))
        mr.rounds.append(rounds)
    out = []
    for (data, model, scope), configs in sorted(groups.items()):
        methods = list(configs.values())
        _disambiguate(methods)
        out.append(Group(data, model, scope, sorted(methods, key=lambda m: _method_order(m.label))))
    return out


def _where_text(where: Mapping[str, Any] | None) -> str:
    return " and ".join(f"{k}={v}" for k, v in (where or {}).items()) or "(no filter)"


def _disambiguate(methods: list[MethodRuns]) -> None:
    """Append the differing settings to labels that two configurations share."""
    by_label: dict[str, list[MethodRuns]] = {}
    for m in methods:
        by_label.setdefault(m.label, []).append(m)
    for same in by_label.values():
        if len(same) < 2:
            continue
        keys = sorted({k for m in same for k in m.settings if k not in _NOT_METHOD
                       and len({json.dumps(x.settings.get(k), sort_keys=True) for x in same}) > 1})
        for m in same:
            m.label += " " + ",".join(f"{k}={m.settings.get(k)}" for k in keys)


# --------------------------------------------------------------------------------------------- statistics
def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of a (seeds, rounds) array: mean, sample std (0 with one seed) and count, ignoring NaN."""
    n = np.sum(np.isfinite(values), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, as they should
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1])
    std = np.where(n > 1, std, np.where(n == 1, 0.0, np.nan))
    return mean, std, n


def _diff(m: MethodRuns, retrained: str, pruned: str) -> np.ndarray:
    """Per seed and round: retrained minus pruned-before-retraining (NaN where either is missing)."""
    return m.column(retrained) - m.column(pruned)


def summary_row(m: MethodRuns, tolerance: float = ACC_TOL) -> dict[str, Any]:
    """One method's line of the summary table, from its seed-mean trajectories.

    ``min_density_within_1pt``: the smallest mean density among the rounds whose mean test accuracy is at least
    the mean round-0 (dense) accuracy minus ``tolerance``. The phase and peak follow :func:`phases`.
    """
    acc, acc_sd, _ = mean_std(m.column("test_accuracy"))
    dens, _, _ = mean_std(m.column("density"))
    pqi, _, _ = mean_std(m.column("pqi"))
    have = np.where(np.isfinite(acc) | np.isfinite(dens))[0]
    last = int(have[-1]) if len(have) else m.n_rounds - 1
    dense = acc[0] if len(acc) else math.nan
    # 1e-12: an accuracy exactly one point below dense counts as within, whatever the float rounding.
    ok = [dens[t] for t in range(len(acc))
          if np.isfinite(acc[t]) and np.isfinite(dens[t]) and acc[t] >= dense - tolerance - 1e-12]
    labels, peak = _phase_walk(list(pqi), list(acc), PQI_TOL, ACC_TOL)
    return {
        "method": m.label,
        "seeds": len(m.rounds),
        "last_round": last,
        "dense_accuracy": _num(dense),
        "final_density": _num(dens[last]) if len(dens) else None,
        "final_accuracy": _num(acc[last]) if len(acc) else None,
        "final_accuracy_std": _num(acc_sd[last]) if len(acc_sd) else None,
        "min_density_within_1pt": _num(min(ok)) if ok else None,
        "pqi_peak_round": peak,
        "final_phase": labels[last] if labels else UNKNOWN_PHASE,
    }


def _num(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _pct_sig(x: float | None) -> str:
    """A density in percent to 4 significant digits: 35, 40.96, 0.1238 (late rounds need the small ones)."""
    return "–" if x is None else f"{100 * x:.4g}"


# Short headers so the table fits a terminal; docs/report.md defines each column.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "method", "seeds", "T", "density at T (%)", "accuracy at T (%)", "dense accuracy (%)",
    "min density within 1 pt of dense (%)", "PQI peak round", "phase at T",
)


def summary_cells(row: Mapping[str, Any]) -> list[str]:
    """A :func:`summary_row` as the strings of :data:`SUMMARY_COLUMNS` (percentages, '–' for missing)."""
    acc = _pct(row["final_accuracy"])
    if row["final_accuracy"] is not None and row["seeds"] > 1 and row["final_accuracy_std"] is not None:
        acc += f" ± {_pct(row['final_accuracy_std'])}"
    return [
        row["method"], str(row["seeds"]), str(row["last_round"]), _pct_sig(row["final_density"]), acc,
        _pct(row["dense_accuracy"]), _pct_sig(row["min_density_within_1pt"]),
        "–" if row["pqi_peak_round"] is None else str(row["pqi_peak_round"]), row["final_phase"],
    ]


def summary_markdown(groups: Sequence[Group]) -> str:
    """The summary tables of all groups as one Markdown document (one section per group)."""
    lines = ["# pqprune summary", "", "Mean over seeds (± sample std of the final accuracy).", ""]
    for g in groups:
        lines += [f"## {g.title}", "", "| " + " | ".join(SUMMARY_COLUMNS) + " |",
                  "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(SUMMARY_COLUMNS))) + "|"]
        lines += ["| " + " | ".join(summary_cells(summary_row(m))) + " |" for m in g.methods]
        lines.append("")
    lines += ["## How the phase is decided", "", PHASE_RULE, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- figures
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


def _band(ax: Any, x: np.ndarray, values: np.ndarray, label: str, *, linestyle: str = "-",
          hollow: bool = False, scale: float = 1.0) -> None:
    """Mean line with markers and a ±1 std band over seeds, in the method's style."""
    colour, marker = method_style(label)
    mean, std, _ = mean_std(values * scale)
    keep = np.isfinite(mean) & np.isfinite(x)
    if not keep.any():
        return
    x, mean, std = x[keep], mean[keep], std[keep]
    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.18, linewidth=0)
    ax.plot(x, mean, color=colour, marker=marker, linestyle=linestyle, markersize=4,
            markevery=max(1, len(x) // 15), markerfacecolor="none" if hollow else colour, label=label)


def _legend_below(fig: Any, ax: Any, extra: Sequence[Any] = ()) -> None:
    """Legend under the axes, outside the plotting area, so it never hides data."""
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for h, lab in zip(list(handles) + [e for e in extra], labels + [e.get_label() for e in extra]):
        seen.setdefault(lab, h)
    if seen:
        ncol = len(seen) if len(seen) <= 5 else math.ceil(len(seen) / 2)  # at most two rows for ≤ 10 entries
        ax.legend(list(seen.values()), list(seen), loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol,
                  fontsize=8, frameon=False)


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
    keys = [Line2D([], [], color="black", linestyle="-", label="retrained"),
            Line2D([], [], color="black", linestyle="--", label="pruned, before retraining")]
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
        vals = m.matrix(lambda r, n=name: ((r.get("layers") or {}).get(n) or {}).get("density")) * 100
        mean, std, _ = mean_std(vals)
        keep = np.isfinite(mean)
        colour = cmap(i / max(1, len(names) - 1) * 0.9)
        ax.fill_between(x[keep], (mean - std)[keep], (mean + std)[keep], color=colour, alpha=0.18, linewidth=0)
        ax.plot(x[keep], mean[keep], color=colour, marker=markers[i % len(markers)], markersize=4,
                markevery=max(1, int(keep.sum()) // 15), label=name)
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
        ax_pqi.text(0.5, 0.5, "PQI of the pruned model\nnot recorded in this database\n(rounds.pruned_pqi)",
                    ha="center", va="center", transform=ax_pqi.transAxes, fontsize=9, color="#555555")
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
    ("accuracy", "Test accuracy of the retrained model (solid) and of the pruned model before retraining (dashed) "
                 "per round.", fig_accuracy),
    ("density", "Percent of prunable weights remaining per round.", fig_density),
    ("pqi", "Global PQ Index I_{0.5,1} of the retrained model's surviving weights.",
     lambda g: fig_metric(g, "pqi", "global PQI I₀.₅,₁ (unitless, 0 = dense-like)", "Global PQ Index")),
    ("gini", "Gini index of the retrained model's surviving weights.",
     lambda g: fig_metric(g, "gini", "Gini index (unitless)", "Gini index")),
    ("accuracy_vs_density", "Test accuracy of the retrained model against the percent of weights remaining.",
     fig_accuracy_vs_density),
    ("layers", "Percent of weights remaining in each layer, for one method.", fig_layers),
    ("differences", "PQI and accuracy of the retrained model minus those of the pruned model before retraining.",
     fig_differences),
)


def _write(path: Path, write: Callable[[Path], None]) -> Path:
    """Atomic write, then the usual permissions of a shared report (atomic_write's temp files are private)."""
    atomic_write(path, write)
    path.chmod(0o644)
    return path


def _save_png(fig: Any, path: Path) -> Path:
    return _write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


# --------------------------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:1200px;margin:0 auto;padding:1rem 1.5rem 3rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.3rem;margin-top:2.5rem}
.meta{color:#555;font-size:.9rem}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;font-size:.88rem;margin:.5rem 0 1rem;background:#fff}
th,td{border:1px solid #ddd;padding:.3rem .55rem}td{text-align:right}td:first-child{text-align:left;white-space:nowrap}
th{background:#f0f0f0}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:1rem}
figure{margin:0;background:#fff;border:1px solid #e3e3e3;padding:.5rem}
figure img{width:100%;height:auto;display:block}
figure.wide{grid-column:1/-1}
figcaption{font-size:.82rem;color:#444;margin-top:.3rem}
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.35em;border-radius:2px;vertical-align:middle}
"""


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _html_table(g: Group) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in SUMMARY_COLUMNS)
    body = []
    for m in g.methods:
        cells = summary_cells(summary_row(m))
        colour, _ = method_style(m.label)
        first = f'<span class="swatch" style="background:{colour}"></span>{html.escape(cells[0])}'
        body.append("<tr><td>" + first + "</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells[1:]) + "</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def render_html(groups: Sequence[Group], figures: Mapping[str, Sequence[tuple[Path, str]]], *, source: str,
                where: Mapping[str, Any] | None, embed: bool = True) -> str:
    """The page: per group, its summary table and its figures (embedded as data URIs, or linked beside it)."""
    n_runs = sum(len(m.rounds) for g in groups for m in g.methods)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>pqprune report</title>", f"<style>{_CSS}</style></head><body><main>",
        "<h1>pqprune report</h1>",
        f'<p class="meta">{n_runs} runs from <code>{html.escape(source)}</code>, filter: '
        f"{html.escape(_where_text(where))}; generated {stamp}. Curves: mean over seeds, band: ± one sample "
        "standard deviation.</p>",
    ]
    for g in groups:
        parts.append(f'<section id="{html.escape(g.slug)}"><h2>{html.escape(g.title)}</h2>')
        parts.append(_html_table(g))
        parts.append('<div class="figs">')
        for png, caption in figures[g.slug]:
            src = _data_uri(png) if embed else html.escape(png.name)
            wide = ' class="wide"' if png.stem.endswith("_differences") else ""  # two panels: the full row
            parts.append(f'<figure{wide}><img src="{src}" alt="{html.escape(caption)}" loading="eager">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</div></section>")
    parts.append(f"<h2>How the phase is decided</h2><p>{html.escape(PHASE_RULE)}</p>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- entry points
@dataclass
class ReportResult:
    """What :func:`generate` wrote."""

    index: Path
    summary_path: Path
    summary: str
    groups: list[Group]
    figures: dict[str, list[Path]]


def _parse_value(text: str) -> Any:
    """``0`` → 0, ``0.5`` → 0.5, ``true`` → True, anything else stays a string (as settings are stored)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool, str)) else text


def parse_where(items: Sequence[str]) -> dict[str, Any]:
    """``["method=sap", "seed=0"]`` → ``{"method": "sap", "seed": 0}``; dashes in keys read as underscores.

    Raises:
        ReportError: an item is not KEY=VALUE.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ReportError(f"--where takes KEY=VALUE with KEY a setting name, got {item!r}")
        out[key] = _parse_value(value.strip())
    return out


def _prepare_out(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"the report folder {out} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReportError(f"cannot create the report folder {out}: {err.strerror or err}") from err
    return out


def generate(db_path: str | Path, out_dir: str | Path, where: Mapping[str, Any] | None = None) -> ReportResult:
    """Write the figures, ``summary.md`` and ``index.html`` of the runs matching ``where`` into ``out_dir``.

    Raises:
        ReportError: no database, no matching run with rounds, or the folder cannot be written.
    """
    groups = load_groups(db_path, where)
    out = _prepare_out(out_dir)
    figures: dict[str, list[tuple[Path, str]]] = {}
    try:
        for g in groups:
            figures[g.slug] = []
            for stem, caption, build in FIGURES:
                png = _save_png(build(g), out / f"{g.slug}_{stem}.png")
                if stem == "layers" and (m := layer_method(g)) is not None:
                    caption = caption.replace("one method", m.label)
                figures[g.slug].append((png, caption))
        summary = summary_markdown(groups)
        summary_path = _write(out / "summary.md", lambda tmp: tmp.write_text(summary, encoding="utf-8"))
        page = render_html(groups, figures, source=str(db_path), where=where)
        index = _write(out / "index.html", lambda tmp: tmp.write_text(page, encoding="utf-8"))
    except OSError as err:
        raise ReportError(f"cannot write the report into {out}: {err.strerror or err}") from err
    return ReportResult(index, summary_path, summary, groups, {k: [p for p, _ in v] for k, v in figures.items()})


def write_report(db_path: str | Path, out_dir: str | Path, where: Mapping[str, Any] | None = None) -> Path:
    """Write the report of the runs in ``db_path`` matching ``where`` into ``out_dir``; return ``index.html``'s path.

    The entry point for other commands (``pqprune demo`` calls it at its end). Raises :class:`ReportError`.
    """
    return generate(db_path, out_dir, where).index
