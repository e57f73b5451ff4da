"""The worked example of docs/methods.md works as written: one file, registered through the entry point group,
runs from the command line with its own option, label and report."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parents[1] / "docs" / "methods.md"


def _example_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "class HoyerPruning" in b]
    return code


@pytest.mark.end_to_end
def test_the_documented_method_runs_from_the_command_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "my_methods").mkdir(parents=True)
    (site / "my_methods" / "__init__.py").write_text("")
    (site / "my_methods" / "hoyer.py").write_text(_example_code())
    dist = site / "my_methods-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-methods\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pqprune.methods]\nhoyer = my_methods.hoyer\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pqprune", *args], capture_output=True, text=True, env=env, timeout=300
        )

    listed = json.loads(cli("methods", "--json").stdout)
    hoyer = next(m for m in listed if m["name"] == "hoyer")
    assert hoyer["options"][0]["name"] == "gamma" and hoyer["label"] == "Hoyer(0.5)"
    paths = ["--db", str(tmp_path / "db.sqlite"), "--runs-dir", str(tmp_path / "runs")]
    r = cli(
        "run",
        "--data",
        "digits",
        "--rounds",
        "2",
        "--epochs",
        "1",
        "--method",
        "hoyer",
        "--gamma",
        "0.4",
        *paths,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["run_id"].startswith("hoyer-") and doc["settings"]["gamma"] == 0.4
    d = [x["density"] for x in doc["rounds"]]
    assert d[0] == 1.0 and 0.7 < d[1] < 1.0 and d[2] < d[1]
    r = cli("runs", "--db", str(tmp_path / "db.sqlite"), "--json")
    assert json.loads(r.stdout)[0]["method"] == "Hoyer(0.4)"
    r = cli("run", "--data", "digits", "--method", "hoyer", "--gamma", "2", *paths)
    assert r.returncode == 2 and "gamma must be in (0, 1]" in r.stderr
