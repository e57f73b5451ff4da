"""--stop-at-phase on tiny real runs: random pruning of the MLP on `digits` with 2 epochs per round loses accuracy
fast, so the phase rule calls collapse within a few rounds; the run stops there, records the round before as its
result, is reused when rerun and stops at the same round when resumed. (The rule itself: tests/test_phases.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pqprune.cli import app
from pqprune.experiment import RunDir, RunSettings, SettingsError, run_experiment
from pqprune.experiment.loop import PhaseWatch
from pqprune.experiment.phases import PhaseStop, stop_point
from pqprune.store import Store

pytestmark = [pytest.mark.end_to_end, pytest.mark.usefixtures("one_thread")]

runner = CliRunner()
COLLAPSING = dict(data="digits", method="random", rounds=8, epochs=2, stop_at_phase="collapse")
FLAGS = ["--data", "digits", "--method", "random", "--rounds", "8", "--epochs", "2", "--stop-at-phase", "collapse"]


def _stop_of(rounds: list[dict], n_val: int) -> PhaseStop | None:
    """What the rule says on the recorded trajectory (validation accuracy over the run's validation examples)."""
    return stop_point("collapse", [r["pqi"] for r in rounds], [r["val_accuracy"] for r in rounds], n_val)


def test_identity_only_when_set() -> None:
    plain = RunSettings(data="digits", rounds=3)
    assert "stop_at_phase" not in plain.identity()
    assert plain.replace(stop_at_phase="collapse").run_id() != plain.run_id()
    assert plain.replace(stop_at_phase="collapse").identity()["stop_at_phase"] == "collapse"
    with pytest.raises(SettingsError, match="stop_at_phase must be one of compression, collapse"):
        plain.replace(stop_at_phase="regularisation").validate()


def test_a_run_stops_at_collapse_and_keeps_the_round_before(tmp_path: Path) -> None:
    settings = RunSettings(**COLLAPSING, keep_checkpoints="all")
    db, runs = tmp_path / "db.sqlite", tmp_path / "runs"
    result = run_experiment(settings, db, runs)
    stop = result.stop
    assert result.status == "finished" and stop is not None and stop.phase == "collapse"
    assert 1 <= stop.stop_round < settings.rounds and stop.chosen_round == stop.stop_round - 1
    assert [r["round"] for r in result.rounds] == list(range(stop.stop_round + 1))  # nothing after the stop
    n_val = 144  # 10% of digits' 1,437 training images
    assert _stop_of(result.rounds, n_val) == stop  # the rule on what the database holds says the same
    assert _stop_of(result.rounds[:-1], n_val) is None  # …and said nothing a round earlier

    rd = RunDir(runs, result.run_id)
    last = rd.read_round(stop.stop_round)
    assert last["stop"] == stop.as_dict() and last["next"] == {} and last["units"] == []  # no pruning step after it
    with Store(db) as store:
        run = store.get_run(result.run_id)
    assert run is not None and run["status"] == "finished"
    assert run["settings"]["examples"]["val"] == n_val
    assert {k: run["settings"][k] for k in ("stopped_at_phase", "stop_round", "chosen_round")} == stop.as_dict()

    again = run_experiment(settings, db, runs)  # finished at its stop: reused, not resumed
    assert again.reused and again.stop == stop and len(again.rounds) == stop.stop_round + 1

    # Resumed after losing the stop round: the rule replays the rounds before and stops at the same round.
    rd.json(stop.stop_round).unlink()
    rd.tensors(stop.stop_round).unlink()
    resumed = run_experiment(settings, db, runs)
    assert resumed.resumed_from == stop.stop_round - 1 and resumed.stop == stop
    assert resumed.rounds[-1]["val_accuracy"] == result.rounds[-1]["val_accuracy"]


def test_sweep_then_run_runs_and_report_show_the_chosen_round(tmp_path: Path, out_args: list[str]) -> None:
    r = runner.invoke(app, ["sweep", *FLAGS, *out_args, "--quiet", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["status"] == "finished"
    r = runner.invoke(app, ["run", *FLAGS, *out_args, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    stop = doc["stop"]
    assert doc["reused"] and stop["stopped_at_phase"] == "collapse"
    chosen = doc["rounds"][stop["chosen_round"]]

    r = runner.invoke(app, ["run", *FLAGS, *out_args, "--quiet"])
    assert r.exit_code == 0 and f"its result is round {stop['chosen_round']}" in r.stdout

    db = str(tmp_path / "out" / "db.sqlite")
    r = runner.invoke(app, ["runs", "--db", db, "--json"])
    (row,) = json.loads(r.stdout)
    assert row["chosen_round"] == stop["chosen_round"] and row["stopped_at_phase"] == "collapse"
    assert row["result_density"] == chosen["density"] and row["result_test_accuracy"] == chosen["test_accuracy"]
    assert row["density"] == doc["rounds"][-1]["density"]  # the last round stays in the JSON
    r = runner.invoke(app, ["runs", "--db", db])
    assert f"{stop['chosen_round']} (collapse)" in r.stdout

    r = runner.invoke(app, ["report", "--db", db, "--out", str(tmp_path / "report")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "report" / "summary.md").read_text(encoding="utf-8")
    line = next(x for x in md.splitlines() if x.startswith("| Random"))
    cell = line.strip("|").split("|")[-1].strip()
    assert cell == f"{stop['chosen_round']} ({100 * chosen['density']:.4g}, {100 * chosen['test_accuracy']:.2f})"


def test_a_bad_phase_is_an_input_error(out_args: list[str]) -> None:
    r = runner.invoke(app, ["run", *FLAGS[:-1], "collapsed", *out_args])
    assert r.exit_code == 2 and "stop_at_phase must be one of compression, collapse" in r.stderr


def test_the_watch_takes_rounds_in_order() -> None:
    from pqprune.experiment.data import get_dataset

    watch = PhaseWatch("compression", get_dataset("digits"))
    assert watch.split == "val" and watch.n_examples == 144
    assert watch.add(0, {"pqi": 0.10, "val_accuracy": 0.95}) is None
    assert watch.add(1, {"pqi": 0.12, "val_accuracy": 0.95}) == PhaseStop("compression", 1, 1)
    with pytest.raises(ValueError, match="expects round 2, got round 4"):
        watch.add(4, {"pqi": 0.1, "val_accuracy": 0.9})
