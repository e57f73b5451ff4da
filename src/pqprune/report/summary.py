"""Seed statistics and the summary table of a report (one row per method and group)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pqprune.experiment.phases import ACC_TOL, PHASE_RULE, PQI_TOL, UNKNOWN_PHASE, _phase_walk
from pqprune.experiment.settings import method_label
from pqprune.files import MISSING, finite_or_none
from pqprune.report.runs import Group, MethodRuns


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


def min_density_within(
    density: Sequence[float | None], accuracy: Sequence[float | None], tolerance: float = ACC_TOL
) -> float | None:
    """The smallest density among the rounds whose accuracy is at least the round-0 (dense) accuracy minus
    ``tolerance`` (a fraction: 0.01 is one point); None when no round qualifies or round 0 has no accuracy.

    An accuracy exactly ``tolerance`` below dense counts as within (a 1e-12 margin absorbs float rounding).
    """
    pairs = [(finite_or_none(d), finite_or_none(a)) for d, a in zip(density, accuracy)]
    if not pairs or pairs[0][1] is None:
        return None
    dense = float(pairs[0][1])
    ok = [float(d) for d, a in pairs if d is not None and a is not None and float(a) >= dense - tolerance - 1e-12]
    return min(ok) if ok else None


def phase_accuracy(m: MethodRuns) -> tuple[np.ndarray, np.ndarray | None]:
    """The seed-mean accuracy the phase rule reads (validation; test when no round has one) and, per round, the
    number of examples behind each mean (examples per seed × seeds with a value in that round; None when the runs
    do not record their split sizes and the accuracies do not reveal them)."""
    split = "val" if np.isfinite(m.column("val_accuracy")).any() else "test"
    values = m.column(f"{split}_accuracy")
    acc, _, seeds = mean_std(values)
    sizes = [e[split] for e in m.examples if e.get(split)]
    per_seed = float(np.median(sizes)) if sizes else examples_behind(values)
    return acc, (seeds * float(per_seed) if per_seed else None)


def examples_behind(accuracies: np.ndarray, largest: int = 100_000) -> int | None:
    """For runs that did not record their split sizes: the smallest n for which every accuracy is a whole number
    of correct answers out of n (accuracies are counts / n, stored as floats). When all counts share a factor with
    the true size this finds a divisor of it, which overstates the noise: the phase rule then calls fewer drops.
    None when no n up to ``largest`` fits (or there are fewer than 3 distinct values to go by)."""
    a = np.unique(accuracies[np.isfinite(accuracies)])
    if len(a) < 3:
        return None
    for start in range(1, largest + 1, 10_000):
        n = np.arange(start, min(start + 10_000, largest + 1), dtype=np.float64)
        k = np.outer(n, a)
        fits = (np.abs(k - np.round(k)) < 1e-6 * np.maximum(n, 1.0)[:, None]).all(axis=1)
        if fits.any():
            return int(n[np.argmax(fits)])
    return None


def chosen_result(m: MethodRuns) -> dict[str, Any]:
    """The result of runs that stopped at a phase (``--stop-at-phase``): each seed's chosen round (its last round
    when it did not stop), and the mean density and test accuracy over seeds at those rounds. Empty values when
    no seed stopped."""
    if all(c is None for c in m.chosen):
        return {"chosen_rounds": [], "chosen_density": None, "chosen_accuracy": None}
    picks = []
    for c, rounds in zip(m.chosen, m.rounds):
        if rounds:
            picks.append(next((r for r in rounds if r["round"] == c), rounds[-1]))
    density = [finite_or_none(r.get("density")) for r in picks]
    accuracy = [finite_or_none(r.get("test_accuracy")) for r in picks]
    return {
        "chosen_rounds": [int(r["round"]) for r in picks],
        "chosen_density": _mean([d for d in density if d is not None]),
        "chosen_accuracy": _mean([a for a in accuracy if a is not None]),
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summary_row(m: MethodRuns, tolerance: float = ACC_TOL) -> dict[str, Any]:
    """One method's line of the summary table, from its seed-mean trajectories.

    ``min_density_within_1pt``: the smallest mean density among the rounds whose mean test accuracy is at least
    the mean round-0 (dense) accuracy minus ``tolerance``. The phase and peak follow :func:`phases`; the chosen
    round of runs that stopped at a phase follows :func:`chosen_result`.
    """
    acc, acc_sd, acc_n = mean_std(m.column("test_accuracy"))
    dens, _, _ = mean_std(m.column("density"))
    pqi, _, _ = mean_std(m.column("pqi"))
    have = np.where(np.isfinite(acc) | np.isfinite(dens))[0]
    last = int(have[-1]) if len(have) else m.n_rounds - 1
    dense = acc[0] if len(acc) else math.nan
    phase_acc, n_examples = phase_accuracy(m)
    sizes = None if n_examples is None else [float(v) for v in n_examples]
    labels, peak = _phase_walk(list(pqi), list(phase_acc), PQI_TOL, ACC_TOL, sizes)
    return {
        "method": m.label,
        "seeds": len(m.rounds),
        # Unfinished runs: the values at T are over the seeds that have reached it.
        "seeds_at_last_round": int(acc_n[last]) if len(acc_n) else 0,
        "last_round": last,
        "dense_accuracy": finite_or_none(dense),
        "final_density": finite_or_none(dens[last]) if len(dens) else None,
        "final_accuracy": finite_or_none(acc[last]) if len(acc) else None,
        "final_accuracy_std": finite_or_none(acc_sd[last]) if len(acc_sd) else None,
        "min_density_within_1pt": min_density_within(list(dens), list(acc), tolerance),
        "pqi_peak_round": peak,
        "final_phase": labels[last] if labels else UNKNOWN_PHASE,
        **chosen_result(m),
    }


def _pct(x: float | None, digits: int = 2) -> str:
    return MISSING if x is None else f"{100 * x:.{digits}f}"


def _pct_sig(x: float | None) -> str:
    """A density in percent to 4 significant digits: 35, 40.96, 0.1238 (late rounds need the small ones)."""
    return MISSING if x is None else f"{100 * x:.4g}"


# Short headers so the table fits a terminal; docs/report.md defines each column.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "method",
    "seeds",
    "T",
    "density at T (%)",
    "accuracy at T (%)",
    "dense accuracy (%)",
    "min density within 1 pt of dense (%)",
    "PQI peak round",
    "phase at T",
    "chosen round (density %, accuracy %)",
)


def summary_cells(row: Mapping[str, Any]) -> list[str]:
    """A :func:`summary_row` as the strings of :data:`SUMMARY_COLUMNS` (percentages, '–' for missing)."""
    acc = _pct(row["final_accuracy"])
    at_last = row["seeds_at_last_round"]
    if row["final_accuracy"] is not None and at_last > 1 and row["final_accuracy_std"] is not None:
        acc += f" ± {_pct(row['final_accuracy_std'])}"
    seeds = str(row["seeds"]) if at_last == row["seeds"] else f"{row['seeds']} ({at_last} at T)"
    return [
        row["method"],
        seeds,
        str(row["last_round"]),
        _pct_sig(row["final_density"]),
        acc,
        _pct(row["dense_accuracy"]),
        _pct_sig(row["min_density_within_1pt"]),
        MISSING if row["pqi_peak_round"] is None else str(row["pqi_peak_round"]),
        row["final_phase"],
        _chosen_cell(row),
    ]


def _chosen_cell(row: Mapping[str, Any]) -> str:
    """``4 (40.96, 93.10)``; the seeds' rounds as ``3/4/4`` when they differ; '–' when no run stopped at a phase."""
    rounds = row["chosen_rounds"]
    if not rounds:
        return MISSING
    which = str(rounds[0]) if len(set(rounds)) == 1 else "/".join(map(str, rounds))
    return f"{which} ({_pct_sig(row['chosen_density'])}, {_pct(row['chosen_accuracy'])})"


CHOSEN_NOTE = (
    "Chosen round: the result of runs that stop at a phase (--stop-at-phase): the first compression round, or the "
    "last round before collapse, by the same rule on each run's own trajectory; its density and test accuracy, "
    "mean over seeds (a seed that never reached the phase counts with its last round). – when no run stopped."
)


def summary_markdown(groups: Sequence[Group]) -> str:
    """The summary tables of all groups as one Markdown document (one section per group)."""
    lines = ["# pqprune summary", "", "Mean over seeds (± sample std of the final accuracy).", ""]
    for g in groups:
        lines += [
            f"## {g.title}",
            "",
            "| " + " | ".join(SUMMARY_COLUMNS) + " |",
            "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(SUMMARY_COLUMNS))) + "|",
        ]
        lines += ["| " + " | ".join(summary_cells(summary_row(m))) + " |" for m in g.methods]
        lines.append("")
    lines += ["## How the phase is decided", "", PHASE_RULE, "", CHOSEN_NOTE, ""]
    return "\n".join(lines)


def summarize(
    runs: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]], tolerance: float = ACC_TOL
) -> list[dict[str, Any]]:
    """One summary row per run from ``(settings, rounds)``: final density and test accuracy, dense (round 0) test
    accuracy, the smallest density whose test accuracy is within ``tolerance`` (1 point) of dense, and the phase
    at the last round with the PQI peak round, as :func:`summary_row` decides them for one seed (the split sizes
    come from the stored settings' ``examples`` when given)."""
    rows = []
    for settings, rounds in runs:
        if not rounds:
            continue
        dense = rounds[0]["test_accuracy"]
        within = min_density_within([r["density"] for r in rounds], [r["test_accuracy"] for r in rounds], tolerance)
        final = rounds[-1]
        one = MethodRuns(
            method_label(settings),
            dict(settings),
            rounds=[[{"round": t, **r} for t, r in enumerate(rounds)]],
            examples=[dict(settings.get("examples") or {})],
            chosen=[settings.get("chosen_round")],
        )
        phase = summary_row(one, tolerance)
        rows.append(
            {
                "method": method_label(settings),
                "rounds": len(rounds) - 1,
                "dense_test_accuracy": dense,
                "final_density": final["density"],
                "final_test_accuracy": final["test_accuracy"],
                "min_density_within_1pt": within,
                "pqi_peak_round": phase["pqi_peak_round"],
                "phase_at_T": phase["final_phase"],
            }
        )
    return rows
