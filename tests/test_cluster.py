"""Sweeps across machines, with real parts: a local Ray instance of two workers and a PostgreSQL server.

A sweep through Ray into PostgreSQL gives the same run ids, masks and metrics as the local executor into SQLite;
every command reads the server; a killed Ray worker's run resumes from its last round, bit-identical; overlapping
sweeps compute each run once; a server restart in the middle of a sweep is survived.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from postgres_server import PostgresServer, wait_until_down
from pqprune.cli import app
from pqprune.experiment import RunSettings
from pqprune.experiment.rundir import RunDir
from pqprune.experiment.sweep import expand_grid, run_sweep
from pqprune.files import load_state_dict
from pqprune.report import generate
from pqprune.store import Store

pytestmark = [pytest.mark.end_to_end, pytest.mark.timeout(900)]

TINY = {"data": "digits", "model": "mlp", "rounds": 3, "epochs": 1}
GRID = expand_grid(TINY, {"method": ["sap", "lt"], "seed": [0, 1]})
# Rounds long enough (≈1 s each) for a worker to be killed in the middle of one.
LONG = expand_grid({**TINY, "epochs": 3, "batch_size": 16}, {"seed": [0, 1]})
TIMING = ("seconds_train", "seconds_evaluate", "seconds_measure", "seconds_prune", "seconds_checkpoint")
runner = CliRunner()


def _one_thread_sweep(settings: list[RunSettings], db: Any, runs: Path, **kw: Any) -> list:
    """A sweep in this process on one torch thread, as every Ray task and local worker computes."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_sweep(settings, db, runs, **kw)
    finally:
        torch.set_num_threads(old)


def _results(db: Any, runs: Path, settings: list[RunSettings]) -> dict[str, dict]:
    """Per run: its rounds without timings, its units per round and its final masks."""
    out = {}
    with Store(db) as store:
        for s in settings:
            run_id = s.run_id()
            rounds = [{k: v for k, v in r.items() if k not in TIMING} for r in store.rounds(run_id)]
            tensors = load_state_dict(RunDir(runs, run_id).tensors(s.rounds))
            out[run_id] = {
                "rounds": rounds,
                "units": [store.units(run_id, t) for t in range(s.rounds + 1)],
                "masks": {k: v for k, v in tensors.items() if k.startswith("pruner/masks/")},
                "status": store.get_run(run_id)["status"],
            }
    return out


def _assert_same(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert sorted(got) == sorted(want)
    for run_id, w in want.items():
        g = got[run_id]
        assert g["status"] == w["status"] == "finished"
        assert g["rounds"] == w["rounds"], run_id  # every metric, bit for bit
        assert g["units"] == w["units"], run_id
        assert g["masks"].keys() == w["masks"].keys() and g["masks"]
        assert all(torch.equal(g["masks"][k], w["masks"][k]) for k in w["masks"]), run_id


@pytest.fixture(autouse=True)
def _keep_thread_count() -> Iterator[None]:
    """`theory mc` sets the process's torch threads (--threads 1); later tests must find them as they were."""
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    """A real local Ray instance with two worker CPUs, shared by the module (sweeps use it rather than start one)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'pqprune[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """GRID and LONG through the local executor into SQLite."""
    root = tmp_path_factory.mktemp("local")
    _one_thread_sweep(GRID + LONG, root / "db.sqlite", root / "runs")
    return _results(root / "db.sqlite", root / "runs", GRID + LONG)


@pytest.fixture(scope="module")
def ray_sweep(
    ray_instance: Any, postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """GRID through Ray tasks into a PostgreSQL database."""
    from pqprune.experiment.ray_sweep import RayOptions

    url, runs = postgres_server.create_database(), tmp_path_factory.mktemp("ray") / "runs"
    events: list[dict] = []
    items = run_sweep(GRID, url, runs, progress=events.append, executor="ray", ray=RayOptions(cpus_per_run=1))
    return {"url": url, "runs": runs, "items": items, "events": events}


@pytest.mark.slow
def test_ray_into_postgres_equals_local_into_sqlite(ray_sweep: dict, local_reference: dict) -> None:
    assert [(i.run_id, i.status) for i in ray_sweep["items"]] == [(s.run_id(), "finished") for s in GRID]
    _assert_same(
        _results(ray_sweep["url"], ray_sweep["runs"], GRID), {s.run_id(): local_reference[s.run_id()] for s in GRID}
    )
    # The runs were computed by Ray's worker processes, not by this one, and their progress reached it.
    workers = {e["worker"] for e in ray_sweep["events"]}
    assert workers and all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in workers)
    assert sum(e["event"] == "round_end" for e in ray_sweep["events"]) == sum(s.rounds + 1 for s in GRID)
    with Store(ray_sweep["url"]) as store:
        assert store.live_claims() == {}  # every claim released


@pytest.mark.slow
def test_commands_read_the_server(ray_sweep: dict, local_reference: dict, tmp_path: Path) -> None:
    url, runs = ray_sweep["url"], ray_sweep["runs"]
    r = runner.invoke(app, ["runs", "--db", url, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert {row["run_id"]: (row["status"], row["rounds_done"]) for row in rows} == {
        s.run_id(): ("finished", 4) for s in GRID
    }
    report = generate(url, tmp_path / "report")
    labels = sorted(m.label for g in report.groups for m in g.methods)
    assert labels == ["LT", "SAP(0.5,1)"] and all(len(m.run_ids) == 2 for g in report.groups for m in g.methods)
    assert "postgresql" in (tmp_path / "report" / "index.html").read_text()
    out = tmp_path / "model.sparse.safetensors"
    r = runner.invoke(app, ["export", str(runs / GRID[0].run_id()), "--format", "sparse", "--out", str(out)])
    assert r.exit_code == 0 and out.stat().st_size > 0, r.output
    r = runner.invoke(
        app,
        ["theory", "mc", "--db", url, "--widths", "8", "--depths", "2", "--densities", "0.5", "--method", "random",
         "--eps", "1", "--draws", "2", "--inputs", "4", "--restarts", "1", "--steps", "2", "--out", str(tmp_path), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    from pqprune.store import theory_cells

    with Store(url) as store:
        assert [c["width"] for c in theory_cells(store)] == [8]
    # The same sweep again, from the command line through Ray: every run is found finished and skipped.
    r = runner.invoke(
        app,
        ["sweep", "--executor", "ray", "--cpus-per-run", "1", "--method", "sap,lt", "--seed", "0,1", "--data", "digits",
         "--model", "mlp", "--rounds", "3", "--epochs", "1", "--db", url, "--runs-dir", str(runs), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert {i["status"] for i in json.loads(r.stdout)} == {"skipped"}


@pytest.mark.slow
def test_a_killed_ray_worker_resumes_its_run_bit_identical(
    ray_instance: Any, postgres_server: PostgresServer, local_reference: dict, tmp_path: Path
) -> None:
    from pqprune.experiment.ray_sweep import RayOptions

    url, runs = postgres_server.create_database(), tmp_path / "runs"
    events: list[dict] = []
    killed: list[tuple[str, int]] = []

    def kill_first_run_mid_round(event: dict) -> None:
        events.append(event)
        if event["event"] == "round_end" and event["round"] == 0 and not killed:  # now training round 1
            pid = int(event["worker"].rsplit(":", 1)[1])
            killed.append((event["run_id"], pid))
            os.kill(pid, signal.SIGKILL)

    items = run_sweep(LONG, url, runs, progress=kill_first_run_mid_round, executor="ray", ray=RayOptions())
    assert killed and [i.status for i in items] == ["finished"] * len(LONG)
    run_id = killed[0][0]
    starts = [e for e in events if e["event"] == "start" and e["run_id"] == run_id]
    assert len(starts) == 2 and starts[1]["resumed_from"] is not None  # a retried task resumed it
    assert starts[1]["worker"] != starts[0]["worker"]
    _assert_same(_results(url, runs, LONG), {s.run_id(): local_reference[s.run_id()] for s in LONG})


@pytest.mark.slow
def test_overlapping_sweeps_compute_each_run_once(
    ray_instance: Any, postgres_server: PostgresServer, local_reference: dict, tmp_path: Path
) -> None:
    """A Ray sweep of four runs and, at the same time, a local sweep of two of them, into one database."""
    from pqprune.experiment.ray_sweep import RayOptions

    url, runs = postgres_server.create_database(), tmp_path / "runs"
    ray_events: list[dict] = []
    local_events: list[dict] = []
    local_items: list = []
    local = threading.Thread(
        target=lambda: local_items.extend(_one_thread_sweep(GRID[2:], url, runs, progress=local_events.append))
    )
    local.start()
    ray_items = run_sweep(GRID, url, runs, progress=ray_events.append, executor="ray", ray=RayOptions())
    local.join()
    computed = [e["run_id"] for e in ray_events + local_events if e["event"] == "start" and not e["reused"]]
    assert sorted(computed) == sorted(s.run_id() for s in GRID)  # each once, by one sweep or the other
    for s in GRID[2:]:  # the runs of both sweeps: one computed each, the other found it finished
        outcomes = sorted(i.status for i in ray_items + local_items if i.run_id == s.run_id())
        assert outcomes == ["finished", "skipped"], (s.run_id(), outcomes)
    _assert_same(_results(url, runs, GRID), {s.run_id(): local_reference[s.run_id()] for s in GRID})


@pytest.mark.slow
def test_a_server_restart_mid_sweep_is_survived(
    postgres_server: PostgresServer, local_reference: dict, tmp_path: Path
) -> None:
    url, runs = postgres_server.create_database(), tmp_path / "runs"
    restarted: list[float] = []

    def restart_after_first_round(event: dict) -> None:
        if event["event"] == "round_end" and not restarted:
            postgres_server.stop()  # the next writes find no server and retry with backoff
            wait_until_down(postgres_server)
            restarted.append(time.monotonic())
            threading.Timer(2.0, postgres_server.start).start()

    items = _one_thread_sweep(GRID[:2], url, runs, progress=restart_after_first_round)
    assert restarted and [i.status for i in items] == ["finished", "finished"]
    _assert_same(_results(url, runs, GRID[:2]), {s.run_id(): local_reference[s.run_id()] for s in GRID[:2]})


def test_executor_options_are_checked(tmp_path: Path, out_args: list[str]) -> None:
    base = ["sweep", "--data", "digits", "--rounds", "1", "--epochs", "1", *out_args]
    for extra, message in (
        (["--address", "auto"], "--address: options of --executor ray"),
        (["--executor", "ray", "--workers", "2"], "--workers is for the local executor"),
        (["--executor", "slurm"], "executor must be one of local, ray"),
        (["--executor", "ray", "--cpus-per-run", "0"], "--cpus-per-run must be > 0"),
        (["--db", "mysql://u@h/db"], "unsupported database 'mysql'"),
    ):
        r = runner.invoke(app, [*base, *extra])
        assert r.exit_code == 2, (extra, r.output)
        assert message in r.output, (extra, r.output)
    assert not (tmp_path / "out" / "runs").exists()
