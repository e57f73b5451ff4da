"""The runner: settings and identity, the loop's records, checkpoints, resume after SIGKILL and Ctrl-C, reuse."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pqprune.experiment.rundir import RunBusy, RunDir
from pqprune.experiment.runner import run_experiment
from pqprune.experiment.settings import RunSettings, SettingsError, load_config
from pqprune.experiment.sweep import expand_grid
from pqprune.files import load_state_dict
from pqprune.report.summary import summarize
from pqprune.store import Store

# The tiny configuration of the issue: digits + MLP, 3 rounds × 1 epoch (≈1 s).
TINY = RunSettings(data="digits", model="mlp", rounds=3, epochs=1)
TIMING = ("seconds_train", "seconds_evaluate", "seconds_measure", "seconds_prune", "seconds_checkpoint")


def _metrics(rounds: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rounds]


def _final_masks(runs_dir: Path, settings: RunSettings) -> dict[str, torch.Tensor]:
    rd = RunDir(runs_dir, settings.run_id())
    tensors = load_state_dict(rd.tensors(settings.rounds))
    return {k: v for k, v in tensors.items() if k.startswith("pruner/masks/")}


def _units(db: Path, settings: RunSettings) -> list[list[dict]]:
    with Store(db) as s:
        return [s.units(settings.run_id(), t) for t in range(settings.rounds + 1)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One uninterrupted run of TINY, shared by the tests that compare against it."""
    root = tmp_path_factory.mktemp("reference")
    result = run_experiment(TINY, root / "db.sqlite", root / "runs")
    return {
        "root": root,
        "result": result,
        "masks": _final_masks(root / "runs", TINY),
        "units": _units(root / "db.sqlite", TINY),
    }


# --------------------------------------------------------------------------------------------- settings
def test_identity_is_the_hash_of_non_default_settings() -> None:
    assert RunSettings().identity() == {}
    s = RunSettings(method="lottery_ticket", epochs=3)
    assert s.identity() == {"method": "lt", "epochs": 3}
    assert s.run_id().startswith("lt-") and len(s.run_id()) == 13
    # Same computation, same run: explicit defaults, aliases, where-to-compute settings do not matter.
    assert RunSettings(scope="global").run_id() == RunSettings().run_id()
    assert RunSettings(method="lq").resolved().scope == "neuron"
    assert RunSettings(method="lq", scope="neuron").run_id() == RunSettings(method="lq").run_id()
    assert RunSettings(device="cpu", data_root="/x", keep_checkpoints="all").run_id() == RunSettings().run_id()
    assert RunSettings(data="MNIST-5k").run_id() == RunSettings().run_id()
    assert RunSettings(seed=1).run_id() != RunSettings().run_id()
    assert RunSettings(model_options={"hidden": 64}).run_id() != RunSettings().run_id()


def test_settings_from_strings_and_bad_values() -> None:
    s = RunSettings.from_dict({"p": "1", "q": "2", "rounds": "4", "nesterov": "false", "batch-size": 100})
    assert (s.option("p"), s.option("q"), s.rounds, s.nesterov, s.batch_size) == (1.0, 2.0, 4, False, 100)
    with pytest.raises(SettingsError, match="unknown setting 'epoch'.*did you mean 'epochs'"):
        RunSettings.from_dict({"epoch": 3})
    with pytest.raises(SettingsError, match="'rounds' must be a int"):
        RunSettings.from_dict({"rounds": "many"})
    bad = [
        (dict(data="nope"), "unknown data set 'nope'"),
        (dict(model="nope"), "unknown model 'nope'"),
        (dict(method="nope"), "unknown pruning method 'nope'"),
        (dict(p=2.0), "p < q"),
        (dict(scope="everything"), "scope"),
        (dict(method="lt", ratio=1.5), "ratio must be in"),
        (dict(ratio=0.5), r"method 'sap' takes no option 'ratio' \(methods that do: lt, os, random\)"),
        (dict(method="lt", q=2.0), r"takes no option 'q' \(methods that do: sap, lq\)"),
        (dict(select_on="train"), "select_on"),
        (dict(epochs=0), "epochs"),
        (dict(method="lq", q=2.0), "0 < q < 1"),
        (dict(method="lq", eps=0.5), "belongs to lq's bound rule"),
        (dict(method="lq", rule="bound"), "eps > 0"),
        (dict(method="lq", rule="bound", eps=0.5, scope="layer"), "scope must be 'neuron'"),
        (dict(method="lq", rule="bound", eps=0.5, gamma=2.0), "belongs to lq's index rule"),
        (dict(method="lq", rule="exact"), "rule' must be one of index, bound"),
        (dict(method="random_matched"), "needs --reference RUN_ID"),
        (dict(model_options={"width": 3}), "unknown option"),
    ]
    for kw, message in bad:
        with pytest.raises(SettingsError, match=message):
            RunSettings.from_dict(kw).validate()


def test_load_config_yaml_and_toml(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("data: digits\nepochs: 2\nmodel-options: {hidden: 32}\n")
    (tmp_path / "b.toml").write_text('[run]\ndata = "digits"\np = 1.0\nq = 2.0\n')
    (tmp_path / "c.yaml").write_text("epoch: 2\n")
    (tmp_path / "d.json").write_text("{}")
    assert load_config(tmp_path / "a.yaml") == {"data": "digits", "epochs": 2, "model_options": {"hidden": 32}}
    assert load_config(tmp_path / "b.toml") == {"data": "digits", "p": 1.0, "q": 2.0}
    with pytest.raises(SettingsError, match=r"c\.yaml: unknown setting 'epoch'"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(SettingsError, match="yaml, .yml or .toml"):
        load_config(tmp_path / "d.json")
    with pytest.raises(SettingsError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_expand_grid_and_summary() -> None:
    runs = expand_grid({"epochs": 1}, {"method": ["sap", "lt"], "seed": [0, 1], "scope": ["global", "auto"]})
    assert len(runs) == 4  # scope auto is global for both: duplicates removed
    assert {(r.method, r.seed) for r in runs} == {("sap", 0), ("sap", 1), ("lt", 0), ("lt", 1)}
    rounds = [
        {"density": 1.0, "test_accuracy": 0.90, "pqi": 0.15},
        {"density": 0.5, "test_accuracy": 0.895, "pqi": 0.12},
        {"density": 0.2, "test_accuracy": 0.8, "pqi": 0.10},
    ]
    row = summarize([(RunSettings(method="sap", method_options={"p": 1.0, "q": 2.0}).to_dict(), rounds)])[0]
    assert row == {
        "method": "SAP(1,2)",
        "rounds": 2,
        "dense_test_accuracy": 0.9,
        "final_density": 0.2,
        "final_test_accuracy": 0.8,
        "min_density_within_1pt": 0.5,
        "pqi_peak_round": None,  # the PQI only falls
        # 10 points below dense, but on 200 test examples (read off the accuracies) within 3 standard errors
        "phase_at_T": "regularisation",
    }
    rounds[2]["test_accuracy"] = 0.78  # 12 points: beyond them
    assert summarize([(RunSettings().to_dict(), rounds)])[0]["phase_at_T"] == "collapse"


# --------------------------------------------------------------------------------------------- the loop
@pytest.mark.end_to_end
def test_a_run_records_every_round(reference: dict) -> None:
    result, root = reference["result"], reference["root"]
    assert result.status == "finished" and not result.reused
    rounds = result.rounds
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    densities = [r["density"] for r in rounds]
    assert densities[0] == 1.0 and all(a > b for a, b in zip(densities, densities[1:]))
    assert rounds[0]["pruned_test_accuracy"] is None
    for r in rounds:
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1 and r["test_loss"] > 0
        assert 0 < r["pqi"] < 1 and 0 < r["gini"] < 1 and r["best_epoch"] == 1
        assert set(r["layers"]) == {"1.weight", "3.weight", "5.weight"}
        assert all(set(v) == {"pqi", "gini", "density", "kept"} for v in r["layers"].values())
        dense = rounds[0]["layers"]  # round 0 keeps every entry: its counts are the layers' sizes
        assert all(v["kept"] / dense[n]["kept"] == pytest.approx(v["density"], abs=0) for n, v in r["layers"].items())
        assert all(r[k] is not None and r[k] >= 0 for k in TIMING)
    assert rounds[0]["pruned_pqi"] is None
    for prev, r in zip(rounds, rounds[1:]):
        assert 0 <= r["pruned_test_accuracy"] <= 1
        # Pruning the smallest magnitudes evens out the survivors: their PQI falls below the trained model's.
        assert 0 < r["pruned_pqi"] < prev["pqi"]
    # Units: one global unit per pruning step (rounds 0..T-1), none after the last round; SAP(0.5,1) prunes
    # the PQI fraction of the survivors, so the next density follows from the records.
    units = reference["units"]
    assert [len(u) for u in units] == [1, 1, 1, 0]
    for t, (u,) in enumerate(units[:-1]):
        assert u["unit"] == "global" and u["c"] > 0 and u["d"] - u["c"] == round(densities[t + 1] * 43520)
    # Checkpoints: the last round keeps its tensors, every round its JSON.
    rd = RunDir(root / "runs", TINY.run_id())
    assert rd.finished_rounds() == [0, 1, 2, 3]
    assert [rd.tensors(t).exists() for t in range(4)] == [False, False, False, True]
    masks = reference["masks"]
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(densities[-1] * 43520)
    weights = load_state_dict(rd.tensors(3))
    for name, m in masks.items():  # the saved trained weights are exactly 0 where pruned
        w = weights["model/" + name.removeprefix("pruner/masks/")]
        assert bool((w[~m] == 0).all())


@pytest.mark.end_to_end
def test_finished_run_is_reused_and_database_rebuilt_from_checkpoints(reference: dict) -> None:
    root = reference["root"]
    again = run_experiment(TINY, root / "db.sqlite", root / "runs")
    assert again.reused and _metrics(again.rounds) == _metrics(reference["result"].rounds)
    # The checkpoints are the source of truth: a lost database is rebuilt from them without recomputing.
    fresh_db = root / "other.sqlite"
    rebuilt = run_experiment(TINY, fresh_db, root / "runs")
    assert rebuilt.reused and _metrics(rebuilt.rounds) == _metrics(reference["result"].rounds)
    assert _units(fresh_db, TINY) == reference["units"]
    with Store(fresh_db) as s:
        assert s.get_run(TINY.run_id())["status"] == "finished"


@pytest.mark.end_to_end
def test_ctrl_c_marks_interrupted_and_resume_is_identical(tmp_path: Path, reference: dict) -> None:
    def interrupt(event: dict) -> None:
        if event["event"] == "epoch" and event["round"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY, tmp_path / "db.sqlite", tmp_path / "runs", progress=interrupt)
    with Store(tmp_path / "db.sqlite") as s:
        run = s.get_run(TINY.run_id())
        assert run["status"] == "interrupted" and "resume" in run["message"]
        assert [r["round"] for r in s.rounds(TINY.run_id())] == [0, 1]
    rd = RunDir(tmp_path / "runs", TINY.run_id())
    assert rd.finished_rounds() == [0, 1] and rd.tensors(1).exists()
    assert not list(rd.path.glob("*.tmp"))  # no half-written file

    resumed = run_experiment(TINY, tmp_path / "db.sqlite", tmp_path / "runs")
    assert resumed.status == "finished" and resumed.resumed_from == 1
    assert _metrics(resumed.rounds) == _metrics(reference["result"].rounds)
    assert _units(tmp_path / "db.sqlite", TINY) == reference["units"]
    masks = _final_masks(tmp_path / "runs", TINY)
    assert masks.keys() == reference["masks"].keys()
    assert all(torch.equal(masks[k], reference["masks"][k]) for k in masks)


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pqprune.experiment import RunSettings, run_experiment

    def kill_mid_round(event):
        if event["event"] == "epoch" and event["round"] == 2:  # trained, not yet checkpointed
            os.kill(os.getpid(), signal.SIGKILL)

    settings = RunSettings.from_dict(__import__("json").loads(sys.argv[1]))
    run_experiment(settings, sys.argv[2], sys.argv[3], progress=kill_mid_round)
    """
)


@pytest.mark.slow
def test_sigkill_mid_round_then_resume_is_identical(tmp_path: Path, reference: dict) -> None:
    db, runs = tmp_path / "db.sqlite", tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, json.dumps(TINY.to_dict()), str(db), str(runs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr
    with Store(db) as s:
        assert s.get_run(TINY.run_id())["status"] == "running"  # the process died without a word
        assert len(s.rounds(TINY.run_id())) == 2
        claims = s.live_claims()
    assert TINY.run_id() not in claims  # its claim died with its process: `pqprune runs` says "stale"
    resumed = run_experiment(TINY, db, runs)
    assert resumed.status == "finished" and resumed.resumed_from == 1
    assert _metrics(resumed.rounds) == _metrics(reference["result"].rounds)
    assert _units(db, TINY) == reference["units"]
    masks = _final_masks(runs, TINY)
    assert all(torch.equal(masks[k], reference["masks"][k]) for k in reference["masks"])


@pytest.mark.end_to_end
def test_a_crash_between_checkpoint_and_database_is_repaired(tmp_path: Path, reference: dict) -> None:
    """Round files are written before the database row: a row lost in between is restored from the JSON."""
    db, runs = tmp_path / "db.sqlite", tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY, db, runs, progress=_raise_at_epoch(2))
    with Store(db) as s:
        s.truncate_rounds(TINY.run_id(), 0)  # as if round 1's row had never been written
    resumed = run_experiment(TINY, db, runs)
    assert _metrics(resumed.rounds) == _metrics(reference["result"].rounds)


def _raise_at_epoch(round_index: int):
    def progress(event: dict) -> None:
        if event["event"] == "epoch" and event["round"] == round_index:
            raise KeyboardInterrupt

    return progress


@pytest.mark.end_to_end
@pytest.mark.parametrize(
    "method, scope",
    [("lt", "auto"), ("os", "auto"), ("random", "auto"), ("lq", "auto"), ("sap", "layer"), ("sap", "neuron")],
)
def test_every_method_and_scope_runs(tmp_path: Path, method: str, scope: str) -> None:
    settings = RunSettings(data="digits", model="mlp", rounds=2, epochs=1, method=method, scope=scope)
    result = run_experiment(settings, tmp_path / "db.sqlite", tmp_path / "runs")
    d = [r["density"] for r in result.rounds]
    assert result.status == "finished" and d[0] == 1.0 and d[2] < d[1] < 1.0
    units = _units(tmp_path / "db.sqlite", settings)
    expected = {"global": 1, "layer": 3, "neuron": 128 + 256 + 10}[settings.resolved().scope]
    assert [len(u) for u in units] == [expected, expected, 0]
    if method in ("lt", "os", "random"):  # fixed ratio: 0.8^t of the weights stay, per unit
        assert abs(d[1] - 0.8) < 1e-3 and abs(d[2] - 0.64) < 1e-3


@pytest.mark.end_to_end
def test_select_on_test_and_late_rewinding(tmp_path: Path) -> None:
    s = RunSettings(
        data="digits", model="mlp", rounds=1, epochs=2, select_on="test", method="lt", method_options={"rewind_step": 3}
    )
    result = run_experiment(s, tmp_path / "db.sqlite", tmp_path / "runs")
    assert result.status == "finished"
    # With --select-on test the kept epoch is the one of best test accuracy.
    assert all(r["best_epoch"] in (1, 2) for r in result.rounds)
    state = load_state_dict(RunDir(tmp_path / "runs", s.run_id()).tensors(1))
    assert any(k.startswith("pruner/rewind_point/") for k in state)


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.end_to_end
def test_bad_input_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, runs = tmp_path / "out" / "db.sqlite", tmp_path / "out" / "runs"
    cases = [
        (RunSettings(data="nope"), "unknown data set"),
        (RunSettings(data="digits", method="lt", method_options={"ratio": 0.0}), "ratio"),
        (RunSettings(data="digits", model_options={"hidden": "wide"}), "model 'mlp'"),
    ]
    for settings, message in cases:
        with pytest.raises(SettingsError, match=message):
            run_experiment(settings, db, runs)
    # The built-in models adapt to any input shape; a model that cannot take the data fails before any write.
    from torch import nn

    for model, message in (
        (nn.Linear(10, 10), "cannot take data set 'digits'"),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), "outputs shape"),
    ):
        monkeypatch.setattr("pqprune.experiment.models.build_model", lambda *a, _m=model, **k: _m)
        with pytest.raises(SettingsError, match=message):
            run_experiment(TINY, db, runs)
    monkeypatch.undo()
    assert not (tmp_path / "out").exists()
    a_file = tmp_path / "file"
    a_file.write_text("")
    from pqprune.store import StoreError

    with pytest.raises(StoreError, match="is a file, not a folder"):
        run_experiment(TINY, a_file / "db.sqlite", runs)
    with pytest.raises(SettingsError, match="cannot write run folders"):
        run_experiment(TINY, db, a_file / "runs")
    assert not (tmp_path / "out").exists()


@pytest.mark.end_to_end
def test_a_run_computed_elsewhere_is_busy(tmp_path: Path) -> None:
    with Store(tmp_path / "db.sqlite") as store, store.claim(TINY.run_id()):
        with pytest.raises(RunBusy, match="another process"):
            run_experiment(TINY, tmp_path / "db.sqlite", tmp_path / "runs")
        assert store.get_run(TINY.run_id()) is None  # nothing written
    result = run_experiment(TINY, tmp_path / "db.sqlite", tmp_path / "runs")  # released: it runs
    assert result.status == "finished"


def test_threads_are_recorded_with_library_versions_and_not_in_the_identity(tmp_path: Path) -> None:
    import numpy as np

    one = TINY.replace(rounds=0, threads=1)
    assert one.run_id() == TINY.replace(rounds=0).run_id() == TINY.replace(rounds=0, threads=2).run_id()
    old = torch.get_num_threads()
    result = run_experiment(one, tmp_path / "db.sqlite", tmp_path / "runs")
    assert torch.get_num_threads() == old  # the process's count is restored
    env = json.loads((result.path / "settings.json").read_text())["environment"]
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert {"pqprune", "python", "platform", "device"} <= set(env)
    with Store(tmp_path / "db.sqlite") as s:
        assert s.get_run(one.run_id())["settings"]["environment"] == env
    # Reused with another thread count: the record stays that of the computation.
    again = run_experiment(TINY.replace(rounds=0, threads=2), tmp_path / "db.sqlite", tmp_path / "runs")
    assert again.reused and json.loads((again.path / "settings.json").read_text())["environment"] == env
    with pytest.raises(SettingsError, match="threads"):
        TINY.replace(threads=-1).validate()
