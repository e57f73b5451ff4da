"""SIGTERM (what `timeout` and cluster schedulers send) sent to live `pqprune run`, `sweep` and `demo` processes:
handled like Ctrl-C — last finished round kept, status `interrupted`, exit code 143, the same command resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pqprune.cli.app import app
from pqprune.experiment.rundir import RunDir
from pqprune.store.database import Store

pytestmark = [pytest.mark.end_to_end, pytest.mark.slow]
runner = CliRunner()

# Enough rounds that a run is still going when its first round's file appears: each round that remains takes
# hundreds of milliseconds, the signal is sent within one poll (50 ms).
LAST = 3
ROUNDS = ["--data", "digits", "--rounds", str(LAST), "--epochs", "1"]


def _start(args: list[str], out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pqprune", *args, "--db", str(out / "db.sqlite"), "--runs-dir", str(out / "runs")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _terminate_after_first_round(proc: subprocess.Popen, runs: Path) -> tuple[int, str]:
    """Wait until some run has finished its round 0 (its JSON is written last), then send SIGTERM."""
    deadline = time.monotonic() + 240
    while not list(runs.glob("*/round_000.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no round finished in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _check_interrupted(out: Path, last: int = LAST) -> list[str]:
    """Every started run: status interrupted, database rows = the finished rounds on disk, no half-written file."""
    with Store(out / "db.sqlite") as store:
        runs = store.list_runs()
        assert runs
        for run in runs:
            assert run["status"] == "interrupted" and "SIGTERM" in run["message"], run
            rd = RunDir(out / "runs", run["run_id"])
            done = rd.finished_rounds()
            # The files are the truth: a signal landing between a round's JSON and its database row (a sweep worker
            # cannot always write it back) leaves that one row missing, which the rerun below restores.
            assert [r["round"] for r in store.rounds(run["run_id"])] in (done, done[:-1])
            assert not done or (done[-1] < last and rd.tensors(done[-1]).exists())  # a run may not have ended round 0
            assert not list(rd.path.glob(".*.tmp"))
        assert any(RunDir(out / "runs", run["run_id"]).finished_rounds() for run in runs)
        return [run["run_id"] for run in runs]


def _rerun_finishes(args: list[str], out: Path, run_ids: list[str], last: int = LAST) -> str:
    """The same command again (in this process: no second start-up), which must resume and finish every run."""
    r = runner.invoke(app, [*args, "--db", str(out / "db.sqlite"), "--runs-dir", str(out / "runs")])
    assert r.exit_code == 0, r.output
    with Store(out / "db.sqlite") as store:
        for run_id in run_ids:
            assert store.get_run(run_id)["status"] == "finished"
            assert [r["round"] for r in store.rounds(run_id)] == list(range(last + 1))
    return r.stdout


def test_sigterm_stops_a_run_like_ctrl_c_and_the_same_command_resumes(tmp_path: Path) -> None:
    args = ["run", *ROUNDS, "--quiet"]
    code, err = _terminate_after_first_round(_start(args, tmp_path), tmp_path / "runs")
    assert code == 143, err
    assert "terminated (SIGTERM)" in err and "rerun the same command to resume" in err
    (run_id,) = _check_interrupted(tmp_path)
    r = runner.invoke(
        app, ["runs", "--db", str(tmp_path / "db.sqlite"), "--runs-dir", str(tmp_path / "runs"), "--json"]
    )
    assert json.loads(r.stdout)[0]["status"] == "interrupted"
    _rerun_finishes(args, tmp_path, [run_id])


def test_sigterm_stops_a_sweep_of_two_workers_and_the_same_command_resumes(tmp_path: Path) -> None:
    args = ["sweep", *ROUNDS, "--method", "sap,lt", "--workers", "2", "--quiet"]
    code, err = _terminate_after_first_round(_start(args, tmp_path), tmp_path / "runs")
    assert code == 143, err
    assert "terminated (SIGTERM)" in err
    run_ids = _check_interrupted(tmp_path)
    _rerun_finishes(args, tmp_path, run_ids)


def test_sigterm_stops_the_demo(tmp_path: Path) -> None:
    args = ["demo", "--data", "digits", "--rounds", "2", "--epochs", "1", "--workers", "1", "--json"]
    code, err = _terminate_after_first_round(_start(args, tmp_path), tmp_path / "runs")
    assert code == 143, err
    assert "rerun `pqprune demo` to resume" in err
    (run_id,) = _check_interrupted(tmp_path, last=2)  # one worker: the first method's run only
    doc = json.loads(_rerun_finishes(args, tmp_path, [run_id], last=2))
    assert [r["status"] for r in doc["runs"]] == ["finished"] * 5 and doc["runs"][0]["run_id"] == run_id
