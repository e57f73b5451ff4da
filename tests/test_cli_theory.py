"""`pqprune bound` through typer.testing.CliRunner."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from pqprune import theory
from pqprune.cli import app

runner = CliRunner()


def test_bound_sizes_table_and_json():
    r = runner.invoke(
        app, ["bound", "--width", "16", "--depth", "3", "--density", "0.8", "--eps", "50", "--delta", "0.1"]
    )
    assert r.exit_code == 0, r.output
    assert "gap bound holding with probability >= 0.9" in r.output and "guaranteed P(gap <= 50)" in r.output
    r = runner.invoke(
        app,
        [
            "bound",
            "--arch",
            "cnn",
            "--width",
            "4",
            "--method",
            "magnitude",
            "--dist",
            "uniform",
            "--delta",
            "0.2",
            "--eps",
            "100",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    spec = theory.RandomNetSpec(arch="cnn", width=4, method="magnitude", dist="uniform")
    assert data["summary"]["gap bound holding with probability >= 0.8"] == pytest.approx(theory.hp_gap_bound(spec, 0.2))
    assert data["summary"]["guaranteed P(gap <= 100)"] == pytest.approx(theory.guaranteed_probability(spec, 100.0))
    assert len(data["layers"]) == 2 and data["layers"][0]["shape"] == "4×1×3×3"


def test_bound_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(0)
    state = {
        "0.weight": torch.tan(torch.pi * (torch.rand(32, 64, generator=gen) - 0.5)),
        "0.bias": torch.zeros(32),
        "2.weight": torch.tan(torch.pi * (torch.rand(4, 32, generator=gen) - 0.5)),
    }
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    r = runner.invoke(app, ["bound", "--checkpoint", str(path), "--eps", "0.5", "--relative", "--q", "0.5", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    expect = theory.lq_network_bound(state, 0.5, 0.5, input_bound=1.0, relative=True)
    assert data["summary"]["kept"] == expect.kept
    assert data["summary"]["output change bound (l2, from l_q bounds)"] == pytest.approx(expect.output_bound)
    assert [row["kept"] for row in data["layers"]] == [lb.kept for lb in expect.layers]
    r = runner.invoke(app, ["bound", "--checkpoint", str(path), "--eps", "2.0", "--input-bound", "0.5"])
    assert r.exit_code == 0, r.output
    assert "output change bound" in r.output and "kept fraction" in r.output
    # conv weights do not chain: per-layer bounds with the same input bound
    conv = tmp_path / "c.pt"
    torch.save({"conv.weight": torch.randn(4, 2, 3, 3), "fc.weight": torch.randn(3, 4)}, conv)
    r = runner.invoke(app, ["bound", "--checkpoint", str(conv), "--eps", "1.0", "--json"])
    assert r.exit_code == 0, r.output
    assert "do not chain" in json.loads(r.output)["summary"]["assumption"]


@pytest.mark.parametrize(
    "args",
    [
        ["bound", "--delta", "1.5"],
        ["bound", "--delta", "0"],
        ["bound", "--eps", "0"],
        ["bound", "--density", "0"],
        ["bound", "--method", "sap"],
        ["bound", "--arch", "cnn", "--depth", "1"],
        ["bound", "--checkpoint", "missing.safetensors", "--eps", "1"],
    ],
)
def test_bound_bad_input_exit_2(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output


def test_bound_checkpoint_needs_eps_and_valid_q(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w.weight": torch.randn(3, 4)}, str(path))
    assert runner.invoke(app, ["bound", "--checkpoint", str(path)]).exit_code == 2
    assert runner.invoke(app, ["bound", "--checkpoint", str(path), "--eps", "1", "--q", "1.0"]).exit_code == 2
    assert runner.invoke(app, ["bound", "--checkpoint", str(path), "--eps", "1", "--input-bound", "-1"]).exit_code == 2
