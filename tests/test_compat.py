"""What pqprune 0.1.0 wrote stays readable: its database and runs folder (tests/fixtures/v0_1_runs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pqprune.cli import app
from pqprune.experiment import RunSettings, run_experiment
from pqprune.report import generate
from pqprune.store import Store

pytestmark = pytest.mark.end_to_end  # whole commands/runs: in `make test`, not `make test-fast`

FIXTURE = Path(__file__).parent / "fixtures" / "v0_1_runs"
LABELS = {
    "sap-8411869080": "SAP(0.5,1)",
    "sap-691a203abd": "SAP(1,2)",
    "lt-c70d77cae2": "LT",
    "lq-8febef6243": "LQ(0.5)",
    "os-58f44ac0de": "OS",
}
runner = CliRunner()


@pytest.fixture
def old(tmp_path: Path) -> Path:
    """A copy of the 0.1.0 runs folder (tests may write to it)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "runs"))


def test_run_ids_of_old_runs_are_unchanged(old: Path) -> None:
    with Store(old / "pqprune.db") as store:
        runs = store.list_runs()
    assert {r["run_id"] for r in runs} == set(LABELS)
    for run in runs:
        settings = RunSettings.from_stored(run["settings"])
        assert settings.run_id() == run["run_id"]
        # The runs folder's own copy of the settings names the same run.
        doc = json.loads((old / run["run_id"] / "settings.json").read_text())
        assert RunSettings.from_stored(doc["settings"]).run_hash() == doc["run_hash"]
    lq = next(r for r in runs if r["run_id"].startswith("lq-"))
    assert RunSettings.from_stored(lq["settings"]).option("q") == 0.5  # 0.1.0 stored lq's exponent as p


def test_runs_lists_old_runs_with_their_labels(old: Path) -> None:
    r = runner.invoke(app, ["runs", "--db", str(old / "pqprune.db"), "--runs-dir", str(old), "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["run_id"]: row for row in json.loads(r.stdout)}
    assert {k: v["method"] for k, v in rows.items()} == LABELS
    assert rows["os-58f44ac0de"]["status"] == "interrupted"
    # An alias names the method in filters too.
    r = runner.invoke(app, ["runs", "--db", str(old / "pqprune.db"), "--method", "lottery_ticket", "--json"])
    assert [row["run_id"] for row in json.loads(r.stdout)] == ["lt-c70d77cae2"]


def test_report_of_old_runs(old: Path, tmp_path: Path) -> None:
    result = generate(old / "pqprune.db", tmp_path / "report", {"method": "LT"})
    assert [m.label for g in result.groups for m in g.methods] == ["LT"]
    result = generate(old / "pqprune.db", tmp_path / "report")
    labels = [m.label for g in result.groups for m in g.methods]
    assert sorted(labels) == sorted(LABELS.values())
    assert (tmp_path / "report" / "index.html").exists()


def test_export_of_an_old_run_folder(old: Path, tmp_path: Path) -> None:
    out = tmp_path / "lt.sparse.safetensors"
    r = runner.invoke(app, ["export", str(old / "lt-c70d77cae2"), "--format", "sparse", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 0


def test_an_interrupted_old_run_resumes(old: Path) -> None:
    with Store(old / "pqprune.db") as store:
        stored = store.get_run("os-58f44ac0de")
    assert stored is not None
    settings = RunSettings.from_stored(stored["settings"]).replace(device="cpu")
    result = run_experiment(settings, old / "pqprune.db", old)
    assert result.run_id == "os-58f44ac0de" and result.resumed_from == 2 and result.status == "finished"
    assert [r["round"] for r in result.rounds] == [0, 1, 2, 3]
    # The resumed round prunes on from the old masks: densities keep falling as one-shot's (0.8^t per layer).
    densities = [r["density"] for r in result.rounds]
    assert all(a > b for a, b in zip(densities, densities[1:]))
