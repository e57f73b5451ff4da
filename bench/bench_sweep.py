"""Throughput of one sweep with the local executor and with Ray, side by side on this machine: the cost of Ray.

The sweep: 8 tiny runs (``digits`` + MLP, 3 rounds × 1 epoch; SAP and lottery ticket × seeds 0-3), each time into
a fresh results database and runs folder, in

  * ``local``: ``pqprune sweep --workers 2`` — two worker processes of one thread each (the baseline);
  * ``ray``: ``pqprune sweep --executor ray --cpus-per-run 1`` on a local Ray instance of two CPUs, timed from
    ``ray.init`` (what a user waits for) and, separately, without the instance's start-up.

    python bench/bench_sweep.py [--runs 8] [--db-url postgresql://…] [--json]

``--db-url`` writes both sweeps to that PostgreSQL database (emptied first) instead of SQLite files. The bench
checks that both executors give the same metrics, and prints wall seconds, runs per minute and the ratio of each
to the local executor.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pqprune.experiment.sweep import expand_grid, run_sweep
from pqprune.store import Store

TIMING = ("seconds_train", "seconds_evaluate", "seconds_measure", "seconds_prune", "seconds_checkpoint")


def grid(n_runs: int) -> list:
    seeds = list(range((n_runs + 1) // 2))
    runs = expand_grid(
        {"data": "digits", "model": "mlp", "rounds": 3, "epochs": 1}, {"method": ["sap", "lt"], "seed": seeds}
    )
    return runs[:n_runs]


def metrics(db: str, runs: list) -> dict[str, list[dict]]:
    with Store(db) as store:
        return {
            s.run_id(): [{k: v for k, v in r.items() if k not in TIMING} for r in store.rounds(s.run_id())]
            for s in runs
        }


def empty(db: str) -> None:
    """Delete every run of ``db`` (a server database reused between the two sweeps)."""
    with Store(db) as store:
        for run in store.list_runs():
            store.delete_run(run["run_id"])


def timed_sweep(runs: list, db: str, root: Path, **kw: Any) -> float:
    t0 = time.perf_counter()
    items = run_sweep(runs, db, root / "runs", **kw)
    seconds = time.perf_counter() - t0
    bad = [(i.run_id, i.status, i.message) for i in items if i.status != "finished"]
    if bad:
        raise SystemExit(f"runs did not finish: {bad}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--db-url", default=None, help="a PostgreSQL URL for both sweeps (default: SQLite files)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import ray

    from pqprune.experiment.ray_sweep import RayOptions

    runs = grid(args.runs)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        local_db = args.db_url or str(root / "local" / "db.sqlite")
        if args.db_url:
            empty(args.db_url)
        local = timed_sweep(runs, local_db, root / "local", workers=2)
        want = metrics(local_db, runs)
        rows.append({"executor": "local, 2 workers", "seconds": local})

        ray_db = args.db_url or str(root / "ray" / "db.sqlite")
        if args.db_url:
            empty(args.db_url)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        startup = time.perf_counter() - t0
        try:
            sweep = timed_sweep(runs, ray_db, root / "ray", executor="ray", ray=RayOptions(cpus_per_run=1))
        finally:
            ray.shutdown()
        same = metrics(ray_db, runs) == want
        rows.append({"executor": "ray, 2 CPUs, from ray.init", "seconds": startup + sweep})
        rows.append({"executor": "ray, 2 CPUs, instance running", "seconds": sweep})
    for row in rows:
        row["runs_per_minute"] = 60 * len(runs) / row["seconds"]
        row["ratio_to_local"] = row["seconds"] / local
    if args.json:
        print(json.dumps({"runs": len(runs), "same_metrics": same, "ray_startup_seconds": startup, "rows": rows}))
        return
    print(
        f"sweep of {len(runs)} tiny runs (digits + MLP, 3 rounds x 1 epoch) into {'PostgreSQL' if args.db_url else 'SQLite files'}"
    )
    print(f"{'executor':<32} {'seconds':>8} {'runs/min':>9} {'time / local':>13}")
    for row in rows:
        print(
            f"{row['executor']:<32} {row['seconds']:8.1f} {row['runs_per_minute']:9.1f} {row['ratio_to_local']:13.2f}"
        )
    print(f"Ray instance start-up: {startup:.1f} s; same metrics from both executors: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
