"""`pqprune prune`: one-shot pruning of a checkpoint gives the masks of Pruner(model, method, scope).step() on the
loaded model, for every method and scope, from every kind of source; the sparse export written in the same pass;
errors."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from checkpoint_files import fabricate_run, mlp, transformer_state, write_sharded
from pqprune import Pruner
from pqprune.cli.app import app
from pqprune.export import apply_masks, load_sparse
from pqprune.prune.masks import load_masks
from pqprune.prune.methods.base import RunContext
from pqprune.prune.methods.registry import lookup

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.end_to_end]
runner = CliRunner()

CASES = [
    ("sap", {}, ("global", "layer", "neuron")),
    ("sap", {"p": "1", "q": "2", "beta": "0.5"}, ("global", "layer")),
    ("os", {"ratio": "0.3"}, ("global", "layer", "neuron")),
    ("os", {"target_density": "0.25"}, ("global", "layer")),
    ("random", {"ratio": "0.4"}, ("global", "layer", "neuron")),
    ("lq", {"q": "0.5"}, ("global", "neuron")),
    ("lq", {"rule": "bound", "eps": "0.05", "input_bound": "2"}, ("neuron",)),
    ("lt", {"ratio": "0.5"}, ("layer",)),
]


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 20), nn.ReLU(), nn.Linear(20, 5)
    )


def _expected(model: nn.Module, method: str, options: dict, scope: str, seed: int = 7, masks=None) -> dict:
    cls = lookup(method)
    m = cls.from_options(cls.resolve_options(options), RunContext(seed=seed))
    pruner = Pruner(copy.deepcopy(model), m, scope=scope)
    if masks:
        pruner.maskset.update(masks)
    pruner.step()
    return pruner.masks


def _prune(source, out, *args: str) -> dict:
    res = runner.invoke(app, ["prune", str(source), "--out", str(out), "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _flags(options: dict) -> list[str]:
    return [x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", v)]


@pytest.mark.parametrize(("method", "options", "scopes"), CASES)
def test_identical_to_pruner_step(tmp_path, method, options, scopes):
    model = _model()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    for scope in scopes:
        out = tmp_path / f"{scope}.safetensors"
        doc = _prune(path, out, "--method", method, "--scope", scope, "--seed", "7", *_flags(options))
        got, want = load_masks(out), _expected(model, method, options, scope)
        assert list(got) == list(want) == ["0.weight", "3.weight", "5.weight"]
        for n in want:
            assert torch.equal(got[n], want[n]), (method, options, scope, n)
        kept = sum(int(m.sum()) for m in want.values())
        assert doc["kept"] == kept and doc["kept_before"] == doc["numel"] and (kept < doc["numel"] or method == "lq")


@pytest.mark.parametrize("scope", ["global", "layer", "neuron"])
def test_sharded_bf16_source_and_sparse_export_in_the_same_pass(tmp_path, scope):
    state = transformer_state(torch.bfloat16)
    index = write_sharded(tmp_path / "hf", state)
    out, sparse = tmp_path / "m.safetensors", tmp_path / "sparse.safetensors"
    doc = _prune(index, out, "--method", "sap", "--scope", scope, "--sparse-out", str(sparse), "--exclude", "lm_head.*")
    masks = load_masks(out)
    assert len(masks) == 14 and "lm_head.weight" not in masks and doc["kept"] < doc["numel"]
    # the same as the engine on the weights loaded whole, in the source's order
    names = [n for n in sorted(masks, key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")])]
    weights = {n: state[n] for n in names}
    cls = lookup("sap")
    plan = cls().plan(weights, {}, scope, 0)
    from pqprune.prune.select import select_prune

    chosen = select_prune(plan.scores, plan.counts, scope, {})
    for n in names:
        assert torch.equal(masks[n], ~chosen[n]), n
    back = load_sparse(sparse)
    assert list(back) == sorted(state, key=lambda n: [int(p) if p.isdigit() else p for p in n.split(".")])
    pruned = apply_masks(state, masks)
    for n, t in back.items():
        assert torch.equal(t, pruned[n]), n
    header = int.from_bytes(sparse.read_bytes()[:8], "little")
    assert sparse.stat().st_size - 8 - header < sum(t.numel() * 2 for t in state.values())  # tensor data


def test_run_folder_prunes_among_its_survivors(tmp_path):
    folder, weights, masks = fabricate_run(tmp_path / "runs")
    model = mlp()
    model.load_state_dict(weights[-1])
    out = tmp_path / "m.safetensors"
    doc = _prune(folder, out, "--method", "sap", "--scope", "layer")
    want = _expected(model, "sap", {}, "layer", masks=masks[-1])
    got = load_masks(out)
    for n in want:
        assert torch.equal(got[n], want[n]) and bool((got[n] <= masks[-1][n]).all())
    assert doc["kept_before"] == sum(int(m.sum()) for m in masks[-1].values()) > doc["kept"]


def test_prune_errors(tmp_path):
    state = {k: v.float() for k, v in transformer_state().items()}
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    out = tmp_path / "masks.safetensors"

    def fails(*args: str) -> str:
        res = runner.invoke(app, ["prune", str(path), *args])
        assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
        return res.stderr

    assert "is an input" in fails("--method", "sap", "--out", str(path))
    assert "is an input" in fails("--method", "sap", "--out", str(out), "--sparse-out", str(out))
    assert "name it *.safetensors" in fails("--method", "sap", "--out", str(tmp_path / "m.pt"))
    assert "unknown pruning method" in fails("--method", "magic", "--out", str(out))
    assert "takes no option 'ratio'" in fails("--method", "sap", "--ratio", "0.3", "--out", str(out))
    assert "--input-bound" in fails("--method", "lq", "--rule", "bound", "--eps", "0.1", "--out", str(out))
    assert "scope must be 'neuron'" in fails(
        "--method", "lq", "--rule", "bound", "--eps", "0.1", "--input-bound", "1", "--scope", "layer", "--out", str(out)
    )
    name = "model.layers.0.mlp.up_proj.weight"
    state[name][1, 1] = math.inf
    save_file(state, str(path))
    for method in ("sap", "random"):
        err = fails("--method", method, "--out", str(out), "--sparse-out", str(tmp_path / "s.safetensors"))
        assert f"tensor {name!r} has NaN or infinite surviving entries" in err and str(path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # nothing half-written


def test_export_sparse_streams_a_sharded_checkpoint_and_a_run_folder(tmp_path):
    state = transformer_state(torch.bfloat16)
    name = "model.layers.1.mlp.up_proj.weight"
    state[name][state[name].abs() < 0.1] = 0  # pruned elsewhere: its zeros are its masks
    index = write_sharded(tmp_path / "hf", state)
    out = tmp_path / "sparse.safetensors"
    res = runner.invoke(app, ["export", str(tmp_path / "hf"), "--format", "sparse", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert index.exists()
    back = load_sparse(out)
    assert all(torch.equal(back[n], t) for n, t in state.items())
    folder, weights, masks = fabricate_run(tmp_path / "runs")
    res = runner.invoke(app, ["export", str(folder), "--round", "0", "--format", "sparse", "--out", str(out)])
    assert res.exit_code == 0, res.output
    back = load_sparse(out)
    assert all(torch.equal(back[n], t) for n, t in apply_masks(weights[0], masks[0]).items())
