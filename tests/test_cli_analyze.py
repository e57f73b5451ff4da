"""`pqprune analyze`: file formats, masks, output formats, refusal of code-carrying pickles and input errors."""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from pqprune import gini, pq_index
from pqprune.checkpoint.analyze import analyze
from pqprune.cli.app import app

runner = CliRunner()
LAYER_KEYS = {"name", "shape", "numel", "density", "pqi", "gini", "sap_keep_fraction"}
GLOBAL_KEYS = {"numel", "density", "pqi", "gini", "sap_keep_fraction", "gini_exact"}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3)
    )


@pytest.fixture()
def state_dict() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in _model().state_dict().items()}


@pytest.fixture()
def masks(state_dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {n: torch.rand(state_dict[n].shape, generator=g) < 0.5 for n in ("3.weight", "5.weight")}


def _run(*args: str):
    return runner.invoke(app, ["analyze", *map(str, args)])


def _json(*args: str) -> dict:
    res = _run(*args, "--json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _save(sd, path):
    if str(path).endswith(".safetensors"):
        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_each_format_gives_the_library_numbers(tmp_path, state_dict, suffix):
    path = _save(state_dict, tmp_path / f"model{suffix}")
    rep = _json(path)
    assert set(rep) == {"global", "layers"}
    assert set(rep["global"]) == GLOBAL_KEYS
    assert [layer["name"] for layer in rep["layers"]] == ["0.weight", "3.weight", "5.weight"]  # biases excluded
    for layer in rep["layers"]:
        assert set(layer) == LAYER_KEYS
        w = state_dict[layer["name"]]
        assert layer["shape"] == list(w.shape) and layer["numel"] == w.numel() and layer["density"] == 1.0
        assert layer["pqi"] == pytest.approx(pq_index(w), abs=1e-12)
        assert layer["gini"] == pytest.approx(gini(w), abs=1e-12)
    assert rep["global"]["numel"] == 36 + 144 * 16 + 48
    assert rep["global"]["pqi"] == pytest.approx(pq_index(state_dict), abs=1e-12)
    assert rep["global"]["gini"] == pytest.approx(gini(state_dict), abs=1e-12)


def test_checkpoint_dict_is_unwrapped(tmp_path, state_dict):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": state_dict, "epoch": 3}, path)
    assert _json(path)["global"]["numel"] == 36 + 144 * 16 + 48


def test_masks_density_and_survivor_indices(tmp_path, state_dict, masks):
    model = _save(state_dict, tmp_path / "m.safetensors")
    mfile = tmp_path / "masks.safetensors"
    save_file(masks, str(mfile))
    rep = _json(model, "--masks", mfile)
    by_name = {layer["name"]: layer for layer in rep["layers"]}
    for n, m in masks.items():
        assert by_name[n]["density"] == pytest.approx(m.sum().item() / m.numel())
        # float32 weights: block sums in float32 differ from those of the compacted survivors by ~1e-7 relative.
        assert by_name[n]["pqi"] == pytest.approx(pq_index(state_dict[n][m]), rel=1e-5)
        assert by_name[n]["pqi"] == pytest.approx(pq_index({n: state_dict[n]}, masks={n: m}), abs=1e-12)
    assert by_name["0.weight"]["density"] == 1.0
    alive = 36 + sum(int(m.sum()) for m in masks.values())
    assert rep["global"]["density"] == pytest.approx(alive / rep["global"]["numel"])
    assert rep["global"]["gini"] == pytest.approx(gini(state_dict, "global", masks), abs=1e-12)
    # uint8 0/1 masks are accepted too
    save_file({n: m.to(torch.uint8) for n, m in masks.items()}, str(mfile))
    assert _json(model, "--masks", mfile) == rep


def test_engine_mask_file_is_accepted(tmp_path, state_dict, masks):
    mask_mod = importlib.import_module("pqprune.prune.masks")
    model = _model()
    ms = mask_mod.MaskSet(model)
    ms.update(masks)
    mfile = ms.save(tmp_path / "engine_masks.safetensors")
    path = _save(state_dict, tmp_path / "m.safetensors")
    rep = _json(path, "--masks", mfile)
    by_name = {layer["name"]: layer for layer in rep["layers"]}
    assert by_name["3.weight"]["density"] == pytest.approx(masks["3.weight"].float().mean().item())


def test_bad_masks_fail_cleanly(tmp_path, state_dict):
    path = _save(state_dict, tmp_path / "m.safetensors")
    mfile = tmp_path / "bad.safetensors"
    save_file({"3.weight": torch.ones(2, 2, dtype=torch.bool)}, str(mfile))
    res = _run(path, "--masks", mfile)
    assert res.exit_code == 2 and "3.weight" in res.stderr and "shape" in res.stderr
    save_file({"3.weight": torch.full((16, 144), 0.5)}, str(mfile))
    res = _run(path, "--masks", mfile)
    assert res.exit_code == 2 and "bool" in res.stderr


@pytest.mark.parametrize("scope", ["global", "layer", "neuron"])
def test_sap_keep_fraction_per_scope(tmp_path, state_dict, scope):
    path = _save(state_dict, tmp_path / "m.safetensors")
    rep = _json(path, "--scope", scope)
    for layer in rep["layers"]:
        assert 0.1 - 1e-9 <= layer["sap_keep_fraction"] <= 1.0
        assert ("neuron_pqi" in layer) == (scope == "neuron")
    g = rep["global"]
    if scope == "global":
        # (0.5,1), η=0, γ=1: SAP prunes floor-ish d·PQI of the model.
        pruned = g["numel"] - round(g["sap_keep_fraction"] * g["numel"])
        assert abs(pruned - g["numel"] * g["pqi"]) <= 1
    kept = sum(layer["sap_keep_fraction"] * layer["numel"] for layer in rep["layers"])
    assert g["sap_keep_fraction"] == pytest.approx(kept / g["numel"])


def test_neuron_scope_summary(tmp_path, state_dict):
    path = _save(state_dict, tmp_path / "m.safetensors")
    rep = _json(path, "--scope", "neuron", "--p", "1", "--q", "2")
    lin = next(layer for layer in rep["layers"] if layer["name"] == "3.weight")
    rows = pq_index(state_dict["3.weight"], 1.0, 2.0, scope="neuron")["tensor"]
    assert lin["neuron_pqi"]["min"] == pytest.approx(float(rows.min()))
    assert lin["neuron_pqi"]["max"] == pytest.approx(float(rows.max()))
    assert lin["neuron_pqi"]["median"] == pytest.approx(float(rows.double().quantile(0.5)))
    assert lin["pqi"] == pytest.approx(pq_index(state_dict["3.weight"], 1.0, 2.0))


def test_nan_is_null_in_json(tmp_path, state_dict):
    state_dict["5.weight"].zero_()  # degenerate layer
    path = _save(state_dict, tmp_path / "m.safetensors")
    res = _run(path, "--json", "--scope", "neuron")
    assert res.exit_code == 0, res.output
    assert "NaN" not in res.stdout
    last = json.loads(res.stdout)["layers"][-1]
    assert last["pqi"] is None and last["gini"] is None and last["neuron_pqi"]["median"] is None
    assert last["sap_keep_fraction"] == 1.0  # a degenerate unit is "nothing to prune"


def test_csv(tmp_path, state_dict):
    path = _save(state_dict, tmp_path / "m.pt")
    res = _run(path, "--csv", "--scope", "neuron")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["name"] for r in rows] == ["0.weight", "3.weight", "5.weight", "global"]
    assert rows[1]["shape"] == "16x144" and int(rows[1]["numel"]) == 2304
    assert float(rows[1]["pqi"]) == pytest.approx(pq_index(state_dict["3.weight"]), abs=1e-12)
    assert float(rows[3]["pqi"]) == pytest.approx(pq_index(state_dict), abs=1e-12)
    assert {"neuron_pqi_min", "neuron_pqi_median", "neuron_pqi_max"} <= set(rows[0])


def test_table_default(tmp_path, state_dict):
    path = _save(state_dict, tmp_path / "m.safetensors")
    res = _run(path)
    assert res.exit_code == 0, res.output
    assert "3.weight" in res.stdout and "global" in res.stdout and "16x144" in res.stdout
    assert f"{pq_index(state_dict['3.weight']):.4f}" in res.stdout


class NeedsCode:
    def __reduce__(self):  # unpickling would call print: arbitrary code
        return (print, ("pwned",))


def test_pickle_needing_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"fc.weight": torch.ones(2, 2), "x": NeedsCode()}, fh, protocol=2)
    res = _run(path)
    assert res.exit_code == 2
    assert "refused" in res.stderr and "evil.pt" in res.stderr
    assert "pwned" not in res.output


def test_missing_file(tmp_path):
    res = _run(tmp_path / "nope.safetensors")
    assert res.exit_code == 2
    assert "no such file" in res.stderr and "nope.safetensors" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_corrupt_file(tmp_path, state_dict, suffix):
    good = _save(state_dict, tmp_path / f"good{suffix}")
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    for path in (bad, tmp_path / f"junk{suffix}"):
        if path.name.startswith("junk"):
            path.write_bytes(b"\x00garbage" * 10)
        res = _run(path)
        assert res.exit_code == 2, res.output
        assert path.name in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert "Traceback" not in res.output


def test_file_without_prunable_weights(tmp_path):
    path = _save({"bias": torch.ones(3)}, tmp_path / "b.safetensors")
    res = _run(path)
    assert res.exit_code == 2 and "no prunable weights" in res.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--p", "1", "--q", "1"], "p < q"),
        (["--p", "2", "--q", "1"], "p < q"),
        (["--p", "0"], "p must be > 0"),
        (["--p", "-1"], "p must be > 0"),
        (["--p", "abc"], ""),
        (["--scope", "row"], "scope"),
        (["--json", "--csv"], "--json"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, state_dict, args, needle):
    path = _save(state_dict, tmp_path / "m.safetensors")
    res = _run(path, *args)
    assert res.exit_code == 2
    assert needle in res.stderr


def test_library_function_on_a_module():
    model = _model()
    rep = analyze(model, p=1.0, q=2.0, scope="global")
    assert rep["global"]["pqi"] == pytest.approx(pq_index(model, 1.0, 2.0))
    assert all(not math.isnan(layer["pqi"]) for layer in rep["layers"])
    with pytest.raises(ValueError, match="p < q"):
        analyze(model, p=2.0, q=1.0)
