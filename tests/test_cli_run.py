"""`pqprune run / sweep / runs / demo` through typer.testing.CliRunner, on tiny configurations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pqprune.cli.app import app
from pqprune.experiment.settings import RunSettings

pytestmark = pytest.mark.end_to_end  # whole commands/runs: in `make test`, not `make test-fast`

runner = CliRunner()
TINY = ["--data", "digits", "--rounds", "1", "--epochs", "1"]


def test_run_json_then_reuse_then_runs(tmp_path: Path, out_args: list[str]) -> None:
    r = runner.invoke(app, ["run", *TINY, *out_args, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["status"] == "finished" and not doc["reused"] and len(doc["rounds"]) == 2
    assert doc["run_id"] == RunSettings(data="digits", rounds=1, epochs=1).run_id()
    r = runner.invoke(app, ["run", *TINY, *out_args, "--quiet"])
    assert r.exit_code == 0 and "reused" in r.stdout
    r = runner.invoke(app, ["runs", "--db", str(tmp_path / "out" / "db.sqlite"), "--json"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.stdout)
    assert row["run_id"] == doc["run_id"] and row["status"] == "finished" and row["rounds_done"] == 2
    assert row["method"] == "SAP(0.5,1)" and row["density"] == doc["rounds"][-1]["density"]
    r = runner.invoke(app, ["runs", "--db", str(tmp_path / "out" / "db.sqlite"), "--status", "failed", "--json"])
    assert json.loads(r.stdout) == []
    r = runner.invoke(app, ["runs", "--db", str(tmp_path / "out" / "db.sqlite")])
    assert r.exit_code == 0 and doc["run_id"][:8] in r.stdout


@pytest.mark.parametrize(
    "suffix, text",
    [
        (".yaml", "data: digits\nrounds: 1\nepochs: 1\nmethod: lt\n"),
        (".toml", 'data = "digits"\nrounds = 1\nepochs = 1\nmethod = "lt"\n'),
    ],
)
def test_run_from_config_with_overrides(tmp_path: Path, suffix: str, text: str, out_args: list[str]) -> None:
    config = tmp_path / f"c{suffix}"
    config.write_text(text)
    r = runner.invoke(app, ["run", "--config", str(config), "--seed", "1", *out_args, "--json"])
    assert r.exit_code == 0, r.output
    settings = json.loads(r.stdout)["settings"]
    assert (settings["data"], settings["method"], settings["seed"], settings["rounds"]) == ("digits", "lt", 1, 1)


def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out_args: list[str]
) -> None:
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("data: digits\nepoch: 1\n")
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = [
        (["--data", "nope"], "unknown data set 'nope'"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--method", "nope"], "unknown pruning method 'nope'"),
        (["--p", "2"], "p < q"),
        (["--config", str(bad_config)], "unknown setting 'epoch'"),
        (["--model-option", "width=3"], "unknown option(s) width"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["run", *TINY, *out_args, *args])
        assert r.exit_code == 2, (args, r.output)
        assert message in r.stderr and r.stderr.count("error:") == 1, r.stderr
    r = runner.invoke(
        app, ["run", *TINY, "--db", str(a_file / "db.sqlite"), "--runs-dir", str(tmp_path / "out" / "runs")]
    )
    assert r.exit_code == 2 and "is a file, not a folder" in r.stderr
    from torch import nn

    monkeypatch.setattr("pqprune.experiment.models.build_model", lambda *a, **k: nn.Linear(3, 10))
    r = runner.invoke(app, ["run", *TINY, *out_args])
    assert r.exit_code == 2 and "cannot take data set 'digits'" in r.stderr
    assert not (tmp_path / "out").exists()
    r = runner.invoke(app, ["runs", "--db", str(tmp_path / "none.db")])
    assert r.exit_code == 2 and "no results database" in r.stderr
    r = runner.invoke(app, ["sweep", *TINY, "--set", "nope=1,2", *out_args])
    assert r.exit_code == 2 and "unknown setting 'nope'" in r.stderr
    r = runner.invoke(app, ["sweep", "--data", "digits", "--model", "mlp,nope", *out_args])
    assert r.exit_code == 2 and "unknown model 'nope'" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(300)
def test_sweep_with_two_workers_then_skips_finished(tmp_path: Path, out_args: list[str]) -> None:
    args = ["sweep", *TINY, "--method", "sap,lt", "--set", "seed=0,1", "--workers", "2", *out_args, "--json"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    items = json.loads(r.stdout)
    assert len(items) == 4 and {i["status"] for i in items} == {"finished"}
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and {i["status"] for i in json.loads(r.stdout)} == {"skipped"}
    r = runner.invoke(app, ["runs", "--db", str(tmp_path / "out" / "db.sqlite"), "--method", "lt", "--json"])
    assert sorted(row["seed"] for row in json.loads(r.stdout)) == [0, 1]
    r = runner.invoke(app, args[:-1])  # the table: the seed tells apart the runs of one method, so it is shown
    header = r.stdout.splitlines()[1].split()
    assert r.exit_code == 0 and header == ["run", "method", "seed", "status", "message"], r.stdout
    assert r.stdout.count("SAP(0.5,1)") == 2 and r.stdout.count("skipped") == 4


def test_sweep_summary_shows_the_settings_that_differ(tmp_path: Path, out_args: list[str]) -> None:
    grid = ["--method", "sap,lt", "--scope", "global,layer", "--set", "q=1,2"]
    r = runner.invoke(app, ["sweep", "--data", "digits", "--rounds", "0", "--epochs", "1", *grid, *out_args])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == "sweep of 6 runs"  # sap × 2 q × 2 scopes, lt × 2 scopes (q is SAP's alone)
    assert lines[1].split() == ["run", "method", "scope", "status", "message"]  # q is in SAP's label already
    rows = [line.split() for line in lines[3:]]
    assert sorted((row[1], row[2]) for row in rows) == sorted(
        (m, scope) for m in ("SAP(0.5,1)", "SAP(0.5,2)", "LT") for scope in ("global", "layer")
    )


def test_varying_settings_are_those_a_method_label_does_not_tell() -> None:
    from pqprune.cli.runs import _varying_settings

    sap = {"method": "sap", "p": 0.5, "q": 1.0, "eta": 0.0, "seed": 0, "device": "cpu"}
    settings = [sap, {**sap, "eta": 0.5, "device": "cuda"}, {"method": "lt", "ratio": 0.2, "seed": 1}]
    assert _varying_settings(settings, ["SAP(0.5,1)", "SAP(0.5,1)", "LT"]) == ["eta"]  # device: where, not what
    assert _varying_settings(settings, ["SAP(0.5,1)", "SAP(0.5,1)x", "LT"]) == []


def test_runs_status_accepts_every_status_the_table_shows(tmp_path: Path) -> None:
    from pqprune.experiment.runner import run_experiment
    from pqprune.store.database import Store

    db, runs_dir = tmp_path / "db.sqlite", tmp_path / "runs"

    def ctrl_c(event: dict) -> None:
        if event["event"] == "epoch":
            raise KeyboardInterrupt

    interrupted = RunSettings(data="digits", rounds=1, epochs=1)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(interrupted, db, runs_dir, progress=ctrl_c)
    with Store(db) as store:  # stored as running, no process holds it: killed, shown "stale"
        store.start_run("sap-killed0000", "0" * 64, RunSettings(data="digits", seed=9).to_dict())
    where = ["--db", str(db), "--runs-dir", str(runs_dir), "--json"]
    found = {}
    for status in ("running", "finished", "failed", "interrupted", "stale"):
        r = runner.invoke(app, ["runs", "--status", status, *where])
        assert r.exit_code == 0, r.output
        found[status] = [row["run_id"] for row in json.loads(r.stdout)]
    assert found == {
        "running": [],
        "finished": [],
        "failed": [],
        "interrupted": [interrupted.run_id()],
        "stale": ["sap-killed0000"],
    }
    r = runner.invoke(app, ["runs", "--status", "dead", *where])
    assert r.exit_code == 2 and "running, finished, failed, interrupted, stale, got 'dead'" in r.stderr


def test_demo_prints_the_summary(tmp_path: Path, out_args: list[str]) -> None:
    r = runner.invoke(
        app,
        ["demo", "--data", "digits", "--rounds", "1", "--epochs", "1", "--workers", "1", *out_args, "--json"],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert [row["method"] for row in doc["summary"]] == ["SAP(0.5,1)", "SAP(1,2)", "LT", "OS", "Random"]
    for row in doc["summary"]:
        assert 0 < row["final_density"] < 1 and 0 <= row["final_test_accuracy"] <= 1
        assert row["phase_at_T"] in ("regularisation", "compression", "collapse")
    assert set(doc["phases"]) == {"train", "evaluate", "measure", "prune", "checkpoint"}
    r = runner.invoke(app, ["demo", "--data", "digits", "--rounds", "1", "--epochs", "1", "--workers", "1", *out_args])
    assert r.exit_code == 0 and "within 1" in r.stdout and "SAP(1,2)" in r.stdout and "time per phase" in r.stdout
    assert "phase at T" in r.stdout


def test_ctrl_c_exits_130_with_a_resume_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out_args: list[str]
) -> None:
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr("pqprune.experiment.run_experiment", interrupted)
    r = runner.invoke(app, ["run", *TINY, *out_args])
    assert r.exit_code == 130 and "rerun the same command to resume" in r.stderr


def test_progress_in_a_log_is_one_readable_line_per_round(tmp_path: Path, out_args: list[str]) -> None:
    import re

    from pqprune.store.database import Store

    r = runner.invoke(app, ["run", "--data", "digits", "--rounds", "2", "--epochs", "1", *out_args])
    assert r.exit_code == 0, r.output
    run_id = RunSettings(data="digits", rounds=2, epochs=1).run_id()
    lines = r.stderr.splitlines()
    assert "━" not in r.stderr and "…" not in r.stderr  # no bars cut to the width of a pretend terminal
    assert lines[0] == f"{run_id}: started (rounds 0–2, 1 epoch per round)" and lines[-1] == f"{run_id}: finished"
    pattern = rf"{run_id} round (\d)/2: density (\S+), test acc (\S+), (\S+) s"
    rounds = [re.fullmatch(pattern, line) for line in lines[1:-1]]
    assert all(rounds) and len(rounds) == 3, lines
    with Store(tmp_path / "out" / "db.sqlite") as store:
        rows = store.rounds(run_id)
    for m, row in zip(rounds, rows):
        assert int(m[1]) == row["round"] and m[2] == f"{row['density']:.4f}" and m[3] == f"{row['test_accuracy']:.4f}"
        assert float(m[4]) == pytest.approx(sum(v for k, v in row.items() if k.startswith("seconds_")), abs=0.06)
    r = runner.invoke(app, ["run", "--data", "digits", "--rounds", "2", "--epochs", "1", *out_args])
    assert r.stderr.splitlines() == [f"{run_id}: finished earlier: reused (rounds 0–2, 1 epoch per round)"]
    r = runner.invoke(app, ["run", "--data", "digits", "--rounds", "2", "--epochs", "1", "--quiet", *out_args])
    assert r.stderr == ""


@pytest.mark.slow
def test_progress_in_a_terminal_is_bars(tmp_path: Path) -> None:
    """Under a real pseudo-terminal the bars are drawn, and no log lines are written."""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    args = ["run", "--data", "digits", "--rounds", "1", "--epochs", "1"]
    out = ["--db", str(tmp_path / "db.sqlite"), "--runs-dir", str(tmp_path / "runs")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pqprune", *args, *out], stdout=subprocess.PIPE, stderr=follower, text=True
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    stdout, _ = proc.communicate(timeout=300)
    os.close(leader)
    assert proc.returncode == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert "━" in text and "rounds" in text and "2/2" in text  # the bar of the run's two rounds, completed
    assert "round 0/1: density" not in text and "finished" in stdout
