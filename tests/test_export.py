"""Export: sparse files round-trip bit for bit and are small; shrink removes dead neurons exactly;
the metrics record; the `pqprune export` command and its errors."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from pqprune import Pruner
from pqprune.cli.app import app
from pqprune.experiment.models import build_model
from pqprune.export.metrics import model_metrics
from pqprune.export.shrink import load_shrunk, save_shrunk, shrink
from pqprune.export.sparse import apply_masks, choose_encoding, load_sparse, save_sparse
from pqprune.files import FileFormatError, read_safetensors_metadata
from pqprune.prune.masks import MaskSet

runner = CliRunner()


def _random_masks(model: nn.Module, density: float, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < density for n, p in model.named_parameters() if p.dim() > 1}


def _pruned(model: nn.Module, masks) -> nn.Module:
    out = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in out.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    return out.eval()


def _randomise_bn_and_biases(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and biases, so that a dead neuron's constant output is not 0."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.normal_()
                mod.bias.normal_()
            elif isinstance(mod, (nn.Linear, nn.Conv2d, nn.Conv1d)) and mod.bias is not None:
                mod.bias.normal_()


# --------------------------------------------------------------------------------------------- sparse files
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("density", [0.02, 0.1, 0.5, 0.97])
def test_sparse_round_trip_is_bit_identical(tmp_path, dtype, density):
    model = build_model("mlp", (1, 8, 8), 10, seed=0, hidden=32).to(dtype)
    state = model.state_dict()
    masks = _random_masks(model, density)
    path = save_sparse(state, masks, tmp_path / "m.safetensors")
    back = load_sparse(path)
    want = apply_masks(state, masks)
    assert list(back) == list(state)
    for name, t in want.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    # also equal to a model pruned the engine's way (multiplying by the mask)
    ms = MaskSet(model)
    ms.update(masks, allow_regrow=True)
    ms.enforce()
    for name, t in model.state_dict().items():
        assert torch.equal(back[name], t), name


def test_every_encoding_is_used_and_decodes(tmp_path):
    w = torch.randn(4, 300)
    masks = {
        "a.weight": torch.rand(4, 300) < 0.5,
        "b.weight": torch.rand(4, 300) < 0.02,
        "c.weight": torch.rand(4, 300) < 0.99,
    }
    state = {
        "a.weight": w,
        "b.weight": w.clone(),
        "c.weight": w.clone(),
        "a.bias": torch.randn(4),
        "n": torch.tensor(3, dtype=torch.int64),
    }
    path = save_sparse(state, masks, tmp_path / "m.safetensors")
    entries = dict(json.loads(read_safetensors_metadata(path)["tensors"]))
    assert {k: v["encoding"] for k, v in entries.items() if k.endswith("weight")} == {
        "a.weight": "bitmask",
        "b.weight": "csr",
        "c.weight": "dense",
    }
    back = load_sparse(path)
    for name, t in apply_masks(state, masks).items():
        assert torch.equal(back[name], t)


def test_index_types_are_as_small_as_the_shape_allows():
    assert choose_encoding((10, 200), 20, torch.float32) == "csr"  # uint8 columns and row pointers
    assert choose_encoding((10, 200), 1000, torch.float32) == "bitmask"
    assert choose_encoding((10, 200), 2000, torch.float32) == "dense"


def test_ten_percent_density_file_is_at_most_15_percent_of_dense_float32(tmp_path):
    model = build_model("mlp", (1, 28, 28), 10, seed=0)
    state = model.state_dict()
    dense = tmp_path / "dense.safetensors"
    save_file({k: v.float() for k, v in state.items()}, str(dense))
    sparse = save_sparse(state, _random_masks(model, 0.10), tmp_path / "sparse.safetensors")
    ratio = os.path.getsize(sparse) / os.path.getsize(dense)
    assert ratio <= 0.15, ratio


def test_unpruned_and_bad_masks_are_refused(tmp_path):
    model = build_model("mlp", (4,), 2, seed=0, hidden=4)
    full = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1}
    with pytest.raises(ValueError, match="nothing is pruned"):
        save_sparse(model.state_dict(), full, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="nope.weight"):
        save_sparse(
            model.state_dict(), {"nope.weight": torch.zeros(2, 2, dtype=torch.bool)}, tmp_path / "x.safetensors"
        )
    assert not (tmp_path / "x.safetensors").exists()


def test_corrupt_or_foreign_files_raise_file_format_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 50)
    with pytest.raises(FileFormatError, match="junk.safetensors"):
        load_sparse(junk)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(FileFormatError, match="not a pqprune sparse export"):
        load_sparse(plain)
    # a sparse file whose parts were tampered with
    state = {"l.weight": torch.randn(4, 300)}
    path = save_sparse(state, {"l.weight": torch.rand(4, 300) < 0.02}, tmp_path / "s.safetensors")
    from safetensors.torch import load_file

    raw, meta = load_file(str(path)), read_safetensors_metadata(path)
    raw["l.weight::indices"] = raw["l.weight::indices"][:-1]
    save_file(raw, str(path), metadata=meta)
    with pytest.raises(FileFormatError, match="l.weight"):
        load_sparse(path)


# --------------------------------------------------------------------------------------------- shrink
def _check_equivalent(model: nn.Module, masks, small: nn.Module, input_shape, atol=1e-5) -> None:
    ref = _pruned(model, masks)
    small.eval()
    torch.manual_seed(1)
    x = torch.randn(16, *input_shape)
    with torch.no_grad():
        assert (ref(x) - small(x)).abs().max().item() <= atol


def test_shrink_mlp_pruned_at_neuron_scope_with_dead_neurons():
    model = build_model("mlp", (1, 28, 28), 10, seed=0)
    _randomise_bn_and_biases(model)
    pruner = Pruner(model, "sap", scope="neuron")
    pruner.step()  # neuron scope: every row keeps some weights …
    masks = pruner.masks
    # … so kill whole neurons too: incoming (rows of layer 1, bias nonzero → relu(b) folded) and outgoing
    masks["1.weight"][:40] = False
    masks["3.weight"][:, 40:70] = False
    masks["3.weight"][200:] = False
    masks["5.weight"][:, 180:190] = False
    small = shrink(model, masks)
    widths = [m.out_features for m in small if isinstance(m, nn.Linear)]
    assert widths[0] <= 128 - 70 and widths[1] <= 200 - 10 and widths[2] == 10
    _check_equivalent(model, masks, small, (1, 28, 28))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters()) // 2


def test_dead_neuron_with_nonzero_bias_is_folded_into_the_next_bias():
    lin1, lin2 = nn.Linear(3, 2), nn.Linear(2, 1)
    with torch.no_grad():
        lin1.bias.copy_(torch.tensor([0.7, -0.3]))
    model = nn.Sequential(lin1, nn.ReLU(), lin2)
    masks = {"0.weight": torch.tensor([[False] * 3, [True] * 3]), "2.weight": torch.ones(1, 2, dtype=torch.bool)}
    small = shrink(model, masks)
    assert small[0].out_features == 1 and small[2].in_features == 1
    assert torch.allclose(small[2].bias, lin2.bias + lin2.weight[0, 0] * 0.7)
    _check_equivalent(model, masks, small, (3,))


def test_shrink_cnn_with_batchnorm_folding_and_cascades():
    model = build_model("cnn", (3, 16, 16), 10, seed=0, hidden=(8, 16, 32))
    _randomise_bn_and_biases(model)
    masks = {n: m for n, m in _random_masks(model, 0.7).items()}
    names = list(masks)  # 0.weight, 4.weight, 8.weight, 13.weight (head)
    masks[names[1]][:, 3] = False  # channel 3 of conv 0 read by nobody → removed
    masks[names[2]][5] = False  # filter 5 of the last conv dead: its BN-ReLU constant is folded into the head
    masks[names[2]][:, 2] = False
    masks[names[3]][:, 9] = False
    masks[names[1]][:, 6] = False
    small = shrink(model, masks)
    convs = [m for m in small if isinstance(m, nn.Conv2d)]
    bns = [m for m in small if isinstance(m, nn.BatchNorm2d)]
    assert convs[0].out_channels == 6 and bns[0].num_features == 6
    assert convs[2].out_channels == 30 and small[-1].in_features == 30
    _check_equivalent(model, masks, small, (3, 16, 16))


def test_dead_filter_before_a_padded_conv_is_kept_unless_its_constant_is_zero():
    model = build_model("cnn", (1, 8, 8), 3, seed=0, hidden=(4, 4))
    _randomise_bn_and_biases(model, seed=3)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1}
    masks["0.weight"][1] = False
    small = shrink(model, masks)
    _check_equivalent(model, masks, small, (1, 8, 8))


def test_shrink_plain_sequential_with_nested_sequential_and_cascade():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8),
        nn.Tanh(),
        nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.SiLU()),
        nn.Dropout(0.1),
        nn.Linear(8, 4),
    )
    _randomise_bn_and_biases(model)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1}
    masks["2.0.weight"][:, [0, 1]] = False  # outgoing-dead units of layer 0
    masks["4.weight"][:, 5] = False  # unit 5 of the middle layer unread
    masks["2.0.weight"][3] = False  # unit 3 of the middle layer has no input: tanh/BN/SiLU constant folded
    small = shrink(model, masks)
    lin = [m for m in small if isinstance(m, nn.Linear)]
    assert [m.out_features for m in lin] == [6, 6, 4]
    _check_equivalent(model, masks, small, (6,))


def test_shrink_refuses_residual_models_naming_the_layer():
    net = build_model("resnet18", (3, 8, 8), 10)
    with pytest.raises(ValueError, match="PreActResNet"):
        shrink(net)
    wide = build_model("wresnet28x8", (3, 8, 8), 10, depth=10, widen_factor=1)
    with pytest.raises(ValueError, match="WideBlock"):
        shrink(wide)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match="grouped"):
        shrink(grouped)


def test_shrunk_file_round_trip(tmp_path):
    model = build_model("cnn", (1, 8, 8), 3, seed=0, hidden=(4, 6))
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1}
    masks["4.weight"][:, 2] = False
    small = shrink(model, masks).eval()
    back = load_shrunk(save_shrunk(small, tmp_path / "s.safetensors"))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(back(x), small(x))


# --------------------------------------------------------------------------------------------- metrics
def test_metrics_count_flops_and_speedup():
    model = build_model("mlp", (1, 28, 28), 10, seed=0)
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() > 1}
    for m in masks.values():
        m.view(-1)[::4] = True  # exactly one in four kept
    rec = model_metrics(model, masks, (1, 28, 28))
    assert rec["flops_dense"] == 784 * 128 + 128 * 256 + 256 * 10
    assert rec["prunable_kept"] * 4 == rec["prunable"]
    assert rec["speedup"] == pytest.approx(4.0, rel=0.01)
    assert rec["parameters"] == sum(p.numel() for p in model.parameters())
    assert rec["compact_bytes"] < rec["dense_bytes"]
    cnn = build_model("cnn", (3, 8, 8), 10, seed=0, hidden=(4, 8))
    crec = model_metrics(cnn, None, (3, 8, 8))
    assert crec["flops_dense"] == 64 * 4 * 27 + 16 * 8 * 36 + 8 * 10 and crec["speedup"] == pytest.approx(1.0)
    srec = model_metrics(model.state_dict(), masks, (784,))  # a state dict: Linear chain from weight shapes
    assert srec["flops_dense"] == rec["flops_dense"] and srec["parameters"] == rec["parameters"]


# --------------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def pruned_files(tmp_path):
    model = build_model("mlp", (1, 8, 8), 10, seed=0, hidden=16)
    ms = MaskSet(model)
    sel = {n: torch.rand(m.shape, generator=torch.Generator().manual_seed(0)) < 0.8 for n, m in ms.masks.items()}
    sel["1.weight"][:4] = True  # four dead neurons
    ms.prune(sel)
    ms.enforce()
    weights, mask_file = tmp_path / "model.safetensors", tmp_path / "masks.safetensors"
    save_file(model.state_dict(), str(weights))
    ms.save(mask_file)
    return model, ms.masks, weights, mask_file


def test_cli_export_sparse_and_shrunk(tmp_path, pruned_files):
    model, masks, weights, mask_file = pruned_files
    out = tmp_path / "out.safetensors"
    res = runner.invoke(
        app, ["export", str(weights), "--masks", str(mask_file), "--format", "sparse", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert "compact bytes" in res.output and "before" in res.output
    back = load_sparse(out)
    for name, t in model.state_dict().items():
        assert torch.equal(back[name], t)
    out2 = tmp_path / "small.safetensors"
    res = runner.invoke(
        app,
        [
            "export",
            str(weights),
            "--masks",
            str(mask_file),
            "--format",
            "shrunk",
            "--model",
            "mlp",
            "--model-option",
            "hidden=16",
            "--input-shape",
            "1,8,8",
            "--out",
            str(out2),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "theoretical speedup" in res.output
    small = load_shrunk(out2)
    assert small[1].out_features == 12
    _check_equivalent(model, masks, small, (1, 8, 8))


def test_cli_export_from_a_run_directory(tmp_path):
    from pqprune.experiment.runner import run_experiment
    from pqprune.experiment.settings import RunSettings

    settings = RunSettings(
        data="digits",
        model="mlp",
        method="lt",
        method_options={"ratio": 0.5},
        rounds=1,
        epochs=1,
        model_options={"hidden": 8},
        device="cpu",
    )
    result = run_experiment(settings, tmp_path / "db.sqlite", tmp_path / "runs")
    out = tmp_path / "o.safetensors"
    res = runner.invoke(app, ["export", str(result.path), "--format", "sparse", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "round 1" in res.output
    res = runner.invoke(
        app, ["export", str(result.path), "--format", "shrunk", "--out", str(tmp_path / "s.safetensors")]
    )
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("case", ["unpruned", "corrupt", "residual", "bad-format", "no-model"])
def test_cli_export_bad_input_exits_2(tmp_path, pruned_files, case):
    _model, _masks, weights, mask_file = pruned_files
    out = str(tmp_path / "o.safetensors")
    if case == "unpruned":
        dense = build_model("mlp", (4,), 2, seed=0, hidden=4)
        path = tmp_path / "dense.safetensors"
        save_file(dense.state_dict(), str(path))
        args = [str(path), "--format", "sparse"]
        expect = "nothing is pruned"
    elif case == "corrupt":
        path = tmp_path / "bad.safetensors"
        path.write_bytes(b"garbage" * 10)
        args = [str(path), "--masks", str(mask_file), "--format", "sparse"]
        expect = "bad.safetensors"
    elif case == "residual":
        net = build_model("wresnet28x8", (3, 8, 8), 10, seed=0, depth=10, widen_factor=1)
        with torch.no_grad():
            net[0].weight[0] = 0
        path = tmp_path / "res.safetensors"
        save_file(net.state_dict(), str(path))
        args = [
            str(path),
            "--format",
            "shrunk",
            "--model",
            "wresnet28x8",
            "--model-option",
            "depth=10",
            "--model-option",
            "widen_factor=1",
            "--input-shape",
            "3,8,8",
        ]
        expect = "WideBlock"
    elif case == "bad-format":
        args = [str(weights), "--masks", str(mask_file), "--format", "zip"]
        expect = "--format"
    else:
        args = [str(weights), "--masks", str(mask_file), "--format", "shrunk"]
        expect = "--model"
    res = runner.invoke(app, ["export", *args, "--out", out])
    assert res.exit_code == 2, res.output
    assert expect in res.output.replace("\n", "")
    assert not os.path.exists(out)


def test_analyze_shows_the_metrics(pruned_files):
    _model, _masks, weights, mask_file = pruned_files
    res = runner.invoke(app, ["analyze", str(weights), "--masks", str(mask_file)])
    assert res.exit_code == 0, res.output
    assert "nonzeros" in res.output and "compact bytes" in res.output
    res = runner.invoke(app, ["analyze", str(weights), "--masks", str(mask_file), "--json", "--input-shape", "1,8,8"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)["metrics"]
    assert rec["flops_dense"] == 64 * 16 + 16 * 32 + 32 * 10 and rec["speedup"] > 1
