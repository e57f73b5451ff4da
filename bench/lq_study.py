"""The l_q per-neuron study of docs/reproduction.md: accuracy against density for the l_q bound rule, random
pruning with the same per-neuron counts, the l_q index rule and the global baselines, compared at matched density.

    python bench/lq_study.py [DB] [--figure PATH]        (DB defaults to runs/repro-mnist5k.db)

Reads the database written by bench/reproduce_mnist5k.sh and prints a markdown table: at each round of the bound
rule (its seed-mean density), the mean ± std over seeds of the retrained test accuracy of every method, the
others read at the same density by linear interpolation in log-density along each seed's trajectory ("—" where
a method never reaches that density). Random-matched has exactly the bound rule's counts, so it needs none.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from pqprune.plotting import new_figure, save_png
from pqprune.report.runs import _label, _normalised
from pqprune.store import Store

# (label prefix, scope) of the methods compared, in table order.
METHODS = (
    ("LQ-bound", "neuron"),
    ("RandomMatched", "neuron"),
    ("LQ(", "neuron"),
    ("SAP(0.5,1)", "global"),
    ("LT", "global"),
    ("OS", "global"),
)


def trajectories(db: Path, model: str) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Per method label: one (density, test accuracy) pair of arrays per seed, by round."""
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    with Store(db) as store:
        for run in store.list_runs(where={"model": model}, status="finished"):
            s = _normalised(run["settings"])
            label = _label(s)
            key = next((f"{p}|{sc}" for p, sc in METHODS if label.startswith(p) and s.get("scope") == sc), None)
            if key is None:
                continue
            rounds = store.rounds(run["run_id"])
            dens = np.array([r["density"] for r in rounds], dtype=float)
            acc = np.array([r["test_accuracy"] for r in rounds], dtype=float)
            out[f"{label} ({s['scope']})"].append((dens, acc))
    return out


def accuracy_at(runs: list[tuple[np.ndarray, np.ndarray]], density: float) -> list[float]:
    """Each seed's accuracy at ``density``, interpolated in log-density; NaN outside the seed's range."""
    vals = []
    for dens, acc in runs:
        x, y = np.log(dens[::-1]), acc[::-1]  # densities fall round by round: reverse to increasing x
        lx = math.log(density)
        vals.append(float(np.interp(lx, x, y)) if x[0] - 1e-9 <= lx <= x[-1] + 1e-9 else math.nan)
    return vals


def same_round(runs: list[tuple[np.ndarray, np.ndarray]], t: int) -> list[float]:
    """Each seed's accuracy at round ``t`` (NaN when it has not reached it)."""
    return [float(acc[t]) if t < len(acc) else math.nan for _, acc in runs]


def cell(vals: list[float]) -> str:
    v = [x for x in vals if not math.isnan(x)]
    if len(v) < len(vals) or not v:
        return "—"
    return f"{100 * np.mean(v):.1f} ± {100 * np.std(v, ddof=1) if len(v) > 1 else 0.0:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", nargs="?", default="runs/repro-mnist5k.db")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--figure", default="runs/lq-study.png")
    args = ap.parse_args()
    runs = trajectories(Path(args.db), args.model)
    bound = next((k for k in runs if k.startswith("LQ-bound")), None)
    if bound is None:
        raise SystemExit(f"no finished l_q bound-rule run of model {args.model!r} in {args.db}")
    order = [k for p, sc in METHODS for k in sorted(runs) if k.startswith(p) and k.endswith(f"({sc})")]
    n_rounds = min(len(d) for d, _ in runs[bound])
    matched = {bound} | {k for k in runs if k.startswith("RandomMatched")}  # the bound rule's own counts
    print("| round | density (%) | " + " | ".join(f"{k} [{len(runs[k])} seeds]" for k in order) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in order) + " |")
    for t in range(n_rounds):
        d = float(np.mean([dens[t] for dens, _ in runs[bound]]))
        row = [cell(same_round(runs[k], t) if k in matched else accuracy_at(runs[k], d)) for k in order]
        print(f"| {t} | {100 * d:.2f} | " + " | ".join(row) + " |")
    _figure(runs, order, Path(args.figure))
    print(f"\nfigure: {args.figure}")


def _figure(runs: dict[str, list[tuple[np.ndarray, np.ndarray]]], order: list[str], path: Path) -> None:
    fig, axes = new_figure(figsize=(6.5, 4.2))
    ax = axes[0][0]
    for k in order:
        n = min(len(d) for d, _ in runs[k])
        dens = np.mean([d[:n] for d, _ in runs[k]], axis=0)
        acc = np.array([a[:n] for _, a in runs[k]])
        ax.errorbar(100 * dens, 100 * acc.mean(0), yerr=100 * acc.std(0), marker="o", ms=3, capsize=2, label=k)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("density (%)")
    ax.set_ylabel("test accuracy after retraining (%)")
    ax.legend(fontsize=7)
    save_png(fig, path, dpi=120)


if __name__ == "__main__":
    main()
