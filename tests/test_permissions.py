"""Every file and folder pqprune writes follows the user's umask (a results folder shared on a cluster stays
readable, or group-writable with umask 002): run folders, checkpoints, the database and its WAL files,
mask files, exports, the report and the theory study's outputs."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pqprune.cli.app import app
from pqprune.experiment.settings import RunSettings

pytestmark = pytest.mark.end_to_end
runner = CliRunner()


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    """Permission bits of every file and folder under ``root`` (``root`` itself excluded), by relative path."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


def test_everything_written_follows_the_umask(tmp_path: Path, umask: int) -> None:
    import torch

    from pqprune import Pruner
    from pqprune.store.database import Store

    out = tmp_path / "shared"  # created by pqprune, like everything under it
    db, runs = out / "results" / "db.sqlite", out / "results" / "runs"
    args = ["--db", str(db), "--runs-dir", str(runs)]
    r = runner.invoke(app, ["run", "--data", "digits", "--rounds", "1", "--epochs", "1", "--quiet", *args])
    assert r.exit_code == 0, r.output
    run_dir = runs / RunSettings(data="digits", rounds=1, epochs=1).run_id()
    for fmt in ("sparse", "shrunk"):
        out_file = out / "exports" / f"model.{fmt}.safetensors"
        r = runner.invoke(app, ["export", str(run_dir), "--format", fmt, "--out", str(out_file)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["report", "--db", str(db), "--out", str(out / "report")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        ["theory", "mc", "--width", "8", "--depth", "2", "--density", "0.5", "--method", "random", "--eps", "1",
         "--draws", "2", "--inputs", "4", "--restarts", "1", "--steps", "2", "--db", str(out / "theory.db"),
         "--out", str(out / "theory")],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    Pruner(torch.nn.Linear(4, 3), "sap").save_masks(out / "masks" / "m.safetensors")

    with Store(out / "live.sqlite") as store:  # an open database has its -wal and -shm files beside it
        store.start_run("sap-0000000000", "0" * 64, {})
        live = {p: m for p, m in _modes(tmp_path).items() if "live.sqlite" in p}
    assert sorted(Path(p).name for p in live) == ["live.sqlite", "live.sqlite-shm", "live.sqlite-wal"]
    assert set(live.values()) == {0o666 & ~umask}

    modes = _modes(tmp_path)
    files = {p for p in modes if (tmp_path / p).is_file()}
    expected = {p: (0o666 if p in files else 0o777) & ~umask for p in modes}
    assert modes == expected
    # what the check covered: every kind of file and folder named in the module docstring
    names = {Path(p).name for p in modes}
    assert {"shared", "results", "runs", run_dir.name, "exports", "report", "theory", "masks"} <= names
    assert {"settings.json", "initial.safetensors", "round_001.json", "round_001.safetensors"} <= names
    assert {"db.sqlite", "model.sparse.safetensors", "model.shrunk.safetensors", "index.html", "m.safetensors"} <= names
    assert {"theory_mc.json", "theory.db"} <= names and any(n.endswith(".png") for n in names)
