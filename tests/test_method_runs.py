"""Every registered method runs as an experiment, from the command line and from a config file, with its own options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pqprune.cli import app
from pqprune.experiment import RunDir, RunSettings, SettingsError, expand_grid
from pqprune.experiment.method_context import max_abs_inputs
from pqprune.prune.methods import available, lookup

pytestmark = pytest.mark.end_to_end  # whole commands/runs: in `make test`, not `make test-fast`

runner = CliRunner()
TINY = ["--data", "digits", "--model-option", "hidden=16", "--rounds", "2", "--epochs", "1"]


def _paths(tmp_path: Path) -> list[str]:
    return ["--db", str(tmp_path / "db.sqlite"), "--runs-dir", str(tmp_path / "runs")]


def _run(tmp_path: Path, *args: str) -> dict:
    r = runner.invoke(app, ["run", *TINY, *_paths(tmp_path), "--json", *args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_lq_bound_rule_prunes_round_after_round_with_measured_input_bounds(tmp_path: Path) -> None:
    # An absolute tolerance: the keep counts scale with the measured bounds (with --relative they cancel out).
    doc = _run(tmp_path, "--method", "lq", "--rule", "bound", "--eps", "20")
    assert doc["status"] == "finished" and doc["settings"]["scope"] == "neuron"
    assert (doc["settings"]["q"], doc["settings"]["rule"], doc["settings"]["eps"]) == (0.5, "bound", 20.0)
    densities = [r["density"] for r in doc["rounds"]]
    assert densities[0] == 1.0 and densities[1] < 1.0 and densities[2] <= densities[1]
    # The bounds the rule used are recorded per layer for every pruning step; the first layer's is the largest
    # |pixel| of the (normalised) training images, measured independently here.
    from pqprune.experiment.prepare import prepare

    prep = prepare(RunSettings.from_dict({**doc["settings"], "device": "cpu"}))
    first = next(iter(doc["rounds"][0]["layers"]))
    want = float(prep.data.train.x.abs().max())
    for r in doc["rounds"][:-1]:
        assert all(v["input_bound"] >= 0 for v in r["layers"].values())
    assert doc["rounds"][0]["layers"][first]["input_bound"] == pytest.approx(want, rel=1e-6)
    assert "input_bound" not in doc["rounds"][-1]["layers"][first]  # the last round does not prune


def test_lq_index_rule_with_its_own_exponent(tmp_path: Path) -> None:
    doc = _run(tmp_path, "--method", "lq_neuron", "--q", "0.3")
    assert doc["settings"]["method"] == "lq" and doc["settings"]["q"] == 0.3 and doc["settings"]["rule"] == "index"
    assert doc["run_id"].startswith("lq-")
    assert doc["rounds"][-1]["density"] < 1.0


def test_os_target_density_prunes_once(tmp_path: Path) -> None:
    doc = _run(tmp_path, "--method", "os", "--target-density", "0.3", "--scope", "layer")
    d = [r["density"] for r in doc["rounds"]]
    assert d[0] == 1.0 and d[1] == pytest.approx(0.3, abs=0.01) and d[2] == d[1]


def test_random_matched_copies_the_reference_counts_per_layer_and_round(tmp_path: Path) -> None:
    ref = _run(tmp_path, "--method", "sap", "--scope", "layer")
    doc = _run(tmp_path, "--method", "random_matched", "--reference", ref["run_id"])
    assert doc["settings"]["scope"] == "layer" and doc["settings"]["reference"] == ref["run_id"]
    for mine, theirs in zip(doc["rounds"], ref["rounds"]):
        assert {n: v["kept"] for n, v in mine["layers"].items()} == {n: v["kept"] for n, v in theirs["layers"].items()}
    # Same counts, other places: the final masks differ from the reference's.
    _, _, m_ref = RunDir(tmp_path / "runs", ref["run_id"]).last_checkpoint()  # type: ignore[misc]
    _, _, m_rm = RunDir(tmp_path / "runs", doc["run_id"]).last_checkpoint()  # type: ignore[misc]
    assert any(not torch.equal(m_ref[n], m_rm[n]) for n in m_ref)


def test_random_matched_at_neuron_scope_copies_the_reference_counts_per_row(tmp_path: Path) -> None:
    ref = _run(tmp_path, "--method", "lq", "--rule", "bound", "--eps", "1.5", "--relative")
    assert ref["settings"]["scope"] == "neuron" and ref["rounds"][-1]["density"] < 1.0
    doc = _run(tmp_path, "--method", "random_matched", "--reference", ref["run_id"], "--scope", "neuron")
    _, _, m_ref = RunDir(tmp_path / "runs", ref["run_id"]).last_checkpoint()  # type: ignore[misc]
    _, _, m_rm = RunDir(tmp_path / "runs", doc["run_id"]).last_checkpoint()  # type: ignore[misc]
    for n in m_ref:
        rows = lambda m: m.reshape(m.shape[0], -1).sum(1)  # noqa: E731
        assert torch.equal(rows(m_ref[n]), rows(m_rm[n])), n
    assert any(not torch.equal(m_ref[n], m_rm[n]) for n in m_ref)
    # A layer-scope run records no per-neuron decisions: it cannot be matched per neuron.
    lt = _run(tmp_path, "--method", "lt", "--scope", "layer")
    r = runner.invoke(
        app,
        [
            "run",
            *TINY,
            *_paths(tmp_path),
            "--method",
            "random_matched",
            "--reference",
            lt["run_id"],
            "--scope",
            "neuron",
        ],
    )
    assert r.exit_code == 2 and "needs a neuron-scope run" in r.stderr


def test_random_matched_refuses_bad_references(tmp_path: Path) -> None:
    ref = _run(tmp_path, "--method", "lt")
    cases = [
        (["--reference", "lt-0000000000"], "no such run"),
        (["--reference", ref["run_id"], "--rounds", "3"], "has not finished the rounds this run needs"),
        (["--reference", ref["run_id"], "--model-option", "hidden=32"], "is of another model"),
        ([], "needs --reference RUN_ID"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["run", *TINY, *_paths(tmp_path), "--method", "random_matched", *args])
        assert r.exit_code == 2 and message in r.stderr, (args, r.stderr)
        assert r.stderr.count("error:") == 1


def test_an_option_the_method_does_not_take_names_the_methods_that_do(tmp_path: Path) -> None:
    r = runner.invoke(app, ["run", *TINY, *_paths(tmp_path), "--method", "lt", "--q", "2"])
    assert r.exit_code == 2 and "method 'lt' takes no option 'q' (methods that do: sap, lq)" in r.stderr
    r = runner.invoke(app, ["run", *TINY, *_paths(tmp_path), "--method", "lq", "--eps", "0.1"])
    assert r.exit_code == 2 and "eps belongs to lq's bound rule (--rule bound)" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_method_options_as_config_keys(tmp_path: Path) -> None:
    config = tmp_path / "lq.yaml"
    config.write_text("data: digits\nrounds: 1\nepochs: 1\nmethod: lq\nrule: bound\neps: 0.4\nrelative: true\n")
    r = runner.invoke(app, ["run", "--config", str(config), *_paths(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    settings = json.loads(r.stdout)["settings"]
    assert (settings["rule"], settings["eps"], settings["relative"]) == ("bound", 0.4, True)
    nested = tmp_path / "nested.toml"
    nested.write_text(
        'data = "digits"\nrounds = 1\nepochs = 1\nmethod = "lq"\n[method_options]\nrule = "bound"\neps = 0.4\nrelative = true\n'
    )
    r2 = runner.invoke(app, ["run", "--config", str(nested), *_paths(tmp_path), "--json"])
    assert r2.exit_code == 0 and json.loads(r2.stdout)["run_id"] == json.loads(r.stdout)["run_id"]


def test_every_registered_method_builds_from_its_declared_options() -> None:
    for name in available():
        cls = lookup(name)
        assert cls.name == name and cls.options and cls.label(cls.defaults())
        flags = {o.flag for o in cls.options}
        assert all(f.startswith("--") for f in flags)
    r = runner.invoke(app, ["run", "-h"])
    assert r.exit_code == 0
    for name in available():
        for opt in lookup(name).options:
            assert opt.flag in r.stdout and f"{name}: {opt.help}" in " ".join(r.stdout.split())
    assert "<bool>" not in r.stdout


def test_sweep_applies_an_option_to_the_methods_that_take_it() -> None:
    runs = expand_grid({"data": "digits"}, {"method": ["sap", "lt"], "p": [1.0]})
    assert [(s.method, s.method_options) for s in runs] == [("sap", {"p": 1.0}), ("lt", {})]
    with pytest.raises(SettingsError, match="no swept method \\(lt, os\\) takes option 'eps'"):
        expand_grid({"data": "digits"}, {"method": ["lt", "os"], "eps": [0.1]})


def test_max_abs_inputs_sees_each_layer_input() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.tensor([[1.0, -5.0, 2.0], [0.5, 0.0, -1.0]])
    got = max_abs_inputs(net, x, ["0.weight", "2.weight"], batch_size=1)
    assert got["0.weight"] == 5.0
    with torch.no_grad():
        assert got["2.weight"] == pytest.approx(float(torch.relu(net[0](x)).abs().max()))
