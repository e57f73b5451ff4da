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


def test_bound_readme_example_prints_a_probability_that_means_something():
    """The README's example: a probability strictly between 0 and 1, and one line saying how to read it."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (example,) = [line for line in readme.splitlines() if line.startswith("pqprune bound --width")]
    args = example.split("#")[0].split()[1:]
    assert args == [
        "bound",
        "--width",
        "256",
        "--depth",
        "2",
        "--density",
        "0.9",
        "--method",
        "magnitude",
        "--eps",
        "1",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    spec = theory.RandomNetSpec(width=256, depth=2, density=0.9, method="magnitude")
    prob, gap = theory.guaranteed_probability(spec, 1.0), theory.hp_gap_bound(spec, 0.1)
    assert 0.5 < prob < 1 and 1 < gap < 1.1  # P(gap ≤ 1) ≈ 0.835; w.p. 0.9 the gap is ≤ 1.06
    (line,) = [x for x in r.output.splitlines() if x.startswith("how to read it:")]
    assert f"at most 1 with probability >= {prob:.3g}" in line and f"by more than {gap:.3g}" in line
    assert f"`guaranteed P(gap <= 1): {prob:.3f}`" in readme  # the README quotes what the command prints
    # where the bound promises nothing, the line says which ε it would promise (with probability 0.9)
    r = runner.invoke(app, ["bound", "--width", "256", "--depth", "3", "--density", "0.5", "--eps", "1"])
    gap = theory.hp_gap_bound(theory.RandomNetSpec(width=256, depth=3, density=0.5), 0.1)
    assert f"promises nothing (0): try ε >= {gap:.3g}" in r.output


@pytest.mark.end_to_end
def test_bound_of_a_run_folder_counts_its_survivors(tmp_path):
    from pqprune.experiment.rundir import RunDir
    from pqprune.experiment.runner import run_experiment
    from pqprune.experiment.settings import RunSettings

    settings = RunSettings(data="digits", rounds=1, epochs=1)
    run_experiment(settings, tmp_path / "db.sqlite", tmp_path / "runs")
    run_dir = tmp_path / "runs" / settings.run_id()
    _t, state, masks = RunDir(tmp_path / "runs", settings.run_id()).last_checkpoint()
    args = ["bound", "--checkpoint", str(run_dir), "--eps", "1", "--relative"]
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    expect = theory.lq_network_bound(state, 0.5, 1.0, input_bound=1.0, relative=True, masks=masks)
    survivors = sum(int(m.sum()) for m in masks.values())
    assert data["summary"]["total"] == expect.total == survivors < sum(m.numel() for m in masks.values())
    assert data["summary"]["kept"] == expect.kept <= survivors
    # the kept weights are among the survivors: pruned ones are never kept
    assert all(not (lb.keep_mask & ~masks[lb.name]).any() for lb in expect.layers)
    r = runner.invoke(app, args)
    assert f"run {settings.run_id()}, round 1" in r.output and "how to read it: keeping" in r.output
    assert "no more than deleting the neuron" in r.output  # ε = 1 relative: a tolerance as large as the trivial one
    r = runner.invoke(app, ["bound", "--checkpoint", str(tmp_path / "runs"), "--eps", "1"])
    assert r.exit_code == 2 and "a folder with no weights" in r.stderr
