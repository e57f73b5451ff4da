"""Checkpoint sources: every input kind gives the same report, tensors one at a time with their masks, the default
selection and --include/--exclude, --group-by suffix, run folders, pqprune's own exports, and the exact 16-bit
magnitude histograms behind the streamed Gini index."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from checkpoint_files import fabricate_run, mlp, transformer_state, write_sharded
from pqprune import gini, pq_index
from pqprune.checkpoint.analyze import _read_layer, _split_by_histograms, analyze_source, role
from pqprune.checkpoint.sources import memory_source, natural_key, open_source
from pqprune.cli.app import app
from pqprune.export import model_metrics, save_shrunk, save_sparse, shrink
from pqprune.measure.histogram import EXACT_GINI_ERROR, Histogram, half_histogram, half_rows
from pqprune.measure.sums import row_power_sums
from pqprune.prune.select import magnitude_scores, select_prune

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.end_to_end]
runner = CliRunner()
DEFAULT = [
    f"model.layers.{i}.{r}.weight"
    for i in range(2)
    for r in (
        "mlp.down_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "self_attn.k_proj",
        "self_attn.o_proj",
        "self_attn.q_proj",
        "self_attn.v_proj",
    )
]


def _report(*args: object) -> dict:
    res = runner.invoke(app, ["analyze", *map(str, args), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def _write(kind: str, folder, state):
    """``state`` written the way ``kind`` names; returns what to point analyze at."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "safetensors":
        save_file(state, str(folder / "model.safetensors"))
        return folder / "model.safetensors"
    if kind == "safetensors named .pt":
        save_file(state, str(folder / "model.pt"))
        return folder / "model.pt"
    if kind == "torch zip":
        torch.save(state, folder / "weights.pth")
        return folder / "weights.pth"
    if kind == "legacy pickle":
        torch.save(state, folder / "weights.bin", _use_new_zipfile_serialization=False)
        return folder / "weights.bin"
    if kind == "nested state_dict":
        torch.save({"state_dict": state, "epoch": 3}, folder / "ckpt.ckpt")
        return folder / "ckpt.ckpt"
    if kind == "index":
        return write_sharded(folder, state)
    if kind == "shard folder":
        write_sharded(folder, state)
        return folder
    if kind == "one-file folder":
        save_file(state, str(folder / "model.safetensors"))
        return folder
    torch.save(state, folder / "pytorch_model.bin")
    return folder


KINDS = [
    "safetensors",
    "safetensors named .pt",
    "torch zip",
    "legacy pickle",
    "nested state_dict",
    "index",
    "shard folder",
    "one-file folder",
    "torch folder",
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_input_kind_gives_the_library_numbers(tmp_path, kind):
    state = transformer_state(torch.bfloat16)
    rep = _report(_write(kind, tmp_path / "ckpt", state))
    by_name = {layer["name"]: layer for layer in rep["layers"]}
    assert sorted(by_name) == sorted([*DEFAULT, "lm_head.weight"])  # embeddings and norms left out
    for name, layer in by_name.items():
        w = state[name]
        assert layer["numel"] == w.numel() and layer["density"] == 1.0
        assert layer["pqi"] == pytest.approx(pq_index(w), rel=1e-6)
        assert layer["gini"] == pytest.approx(gini(w), abs=1e-12)
    weights = {n: state[n] for n in by_name}
    assert rep["global"]["pqi"] == pytest.approx(pq_index(weights), rel=1e-6)
    assert rep["global"]["gini"] == pytest.approx(gini(weights), abs=1e-12) and rep["global"]["gini_exact"]


def test_tensors_stream_one_at_a_time_in_natural_order(tmp_path):
    state = transformer_state(torch.bfloat16)
    state["model.layers.10.mlp.up_proj.weight"] = torch.ones(2, 2, dtype=torch.bfloat16)
    src = open_source(write_sharded(tmp_path / "hf", state))
    assert list(src.infos) == sorted(state, key=natural_key)
    assert src.infos["model.layers.10.mlp.up_proj.weight"].shape == (2, 2)
    assert [n for n in src.infos if ".up_proj" in n][-1] == "model.layers.10.mlp.up_proj.weight"
    for name, t, m in src.stream(list(src.infos)):
        assert torch.equal(t, state[name]) and m is None
    assert len(src.inputs) == 3  # the index and its two shards


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("scope", ["global", "layer", "neuron"])
def test_each_dtype_and_scope_with_masks(tmp_path, dtype, scope):
    state = transformer_state(dtype)
    g = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(state[n].shape, generator=g) < 0.6 for n in DEFAULT}
    save_file(state, str(tmp_path / "m.safetensors"))
    save_file(masks, str(tmp_path / "masks.safetensors"))
    rep = _report(tmp_path / "m.safetensors", "--masks", tmp_path / "masks.safetensors", "--scope", scope)
    weights = {n: state[n] for n in [*DEFAULT, "lm_head.weight"]}
    for layer in rep["layers"]:
        n, m = layer["name"], masks.get(layer["name"])
        assert layer["density"] == pytest.approx(1.0 if m is None else float(m.float().mean()))
        assert layer["pqi"] == pytest.approx(pq_index({n: state[n]}, masks={n: m}), rel=1e-6)
        assert layer["gini"] == pytest.approx(gini({n: state[n]}, "layer", {n: m})[n], abs=1e-9)
    assert rep["global"]["pqi"] == pytest.approx(pq_index(weights, masks=masks), rel=1e-6)
    assert rep["global"]["gini"] == pytest.approx(gini(weights, masks=masks), abs=1e-9)
    if scope == "global":  # the per-layer split is the engine's exact selection over all survivors
        alive = sum(int(m.sum()) for m in masks.values()) + state["lm_head.weight"].numel()
        kept_total = round(rep["global"]["sap_keep_fraction"] * alive)
        scores = {n: w.abs().float() for n, w in weights.items()}  # float16 widened exactly: the same order
        chosen = select_prune(scores, {"global": alive - kept_total}, "global", masks)
        for layer in rep["layers"]:
            n = layer["name"]
            survivors = int(masks[n].sum()) if n in masks else state[n].numel()
            assert round(layer["sap_keep_fraction"] * survivors) == survivors - int(chosen[n].sum())


@pytest.mark.parametrize("prune", [0, 3, 5, 10, 12, 18])
def test_bf16_ties_at_the_global_threshold_follow_flat_order(prune):
    # Few distinct magnitudes: the k-th smallest is tied across layers; ties go to the earlier layer first.
    w = {f"l{i}.weight": torch.tensor([[1.0, 2.0, -2.0], [3.0, 2.0, 1.0]], dtype=torch.bfloat16) for i in range(3)}
    layers = [_read_layer(n, t, None, 0.5, 1.0, "global") for n, t in w.items()]
    everything = Histogram.empty_keys()
    for layer in layers:
        everything.add_half(layer.half, layer.dtype)
    _split_by_histograms(layers, everything, prune)
    chosen = select_prune({n: t.abs().float() for n, t in w.items()}, {"global": prune}, "global")
    assert [layer.kept for layer in layers] == [6 - int(chosen[n].sum()) for n in w]
    if prune == 10:  # the six 1.0s, then four of the nine 2.0s: three from the first layer, one from the second
        assert [layer.kept for layer in layers] == [1, 3, 4]


def test_default_selection_include_exclude_and_errors(tmp_path):
    state = transformer_state(torch.float32)
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    names = [layer["name"] for layer in _report(path, "--exclude", "lm_head.*")["layers"]]
    assert names == sorted(DEFAULT, key=natural_key)
    names = [layer["name"] for layer in _report(path, "--include", "*q_proj*", "--include", "*embed*")["layers"]]
    assert names == ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", *names[2:]]
    assert len(names) == 3
    res = runner.invoke(app, ["analyze", str(path), "--include", "*nothing*"])
    assert res.exit_code == 2 and "--include '*nothing*' matches no tensor" in res.stderr
    res = runner.invoke(app, ["analyze", str(path), "--exclude", "*"])
    assert res.exit_code == 2 and "no prunable weights" in res.stderr


def test_group_by_suffix_pools_roles_across_layers(tmp_path):
    state = transformer_state(torch.bfloat16)
    index = write_sharded(tmp_path / "hf", state)
    rep = _report(index, "--group-by", "suffix")
    groups = {g["name"]: g for g in rep["groups"]}
    assert set(groups) == {role(n) for n in DEFAULT} | {"lm_head.weight"}
    q = groups["self_attn.q_proj.weight"]
    members = {n: state[n] for n in DEFAULT if n.endswith("q_proj.weight")}
    assert q["layers"] == 2 and q["numel"] == sum(t.numel() for t in members.values())
    assert q["pqi"] == pytest.approx(pq_index(members), rel=1e-6)
    assert q["gini"] == pytest.approx(gini(members), abs=1e-12) and q["gini_exact"]
    assert len(rep["layers"]) == 15  # the layers are still in the JSON
    res = runner.invoke(app, ["analyze", str(index), "--group-by", "suffix"])
    assert res.exit_code == 0 and "self_attn.q_proj.weight" in res.stdout and "2 layers" in res.stdout
    res = runner.invoke(app, ["analyze", str(index), "--group-by", "prefix"])
    assert res.exit_code == 2 and "--group-by" in res.stderr


def test_run_folder_applies_the_masks_of_the_chosen_round(tmp_path):
    folder, weights, masks = fabricate_run(tmp_path / "runs")
    for args, t in (([], 1), (["--round", "0"], 0)):
        rep = _report(folder, *args)
        for layer in rep["layers"]:
            n, m = layer["name"], masks[t][layer["name"]]
            assert layer["density"] == pytest.approx(float(m.float().mean())) and layer["density"] < 1
            assert layer["pqi"] == pytest.approx(pq_index({n: weights[t][n]}, masks={n: m}), rel=1e-6)
    assert [layer["name"] for layer in rep["layers"]] == ["0.weight", "2.weight", "4.weight"]
    assert _report(folder / "round_000.safetensors") == _report(folder, "--round", "0")
    res = runner.invoke(app, ["analyze", str(folder), "--round", "5"])
    assert res.exit_code == 2 and "round 5 is not finished" in res.stderr and "[0, 1]" in res.stderr
    res = runner.invoke(app, ["analyze", str(folder), "--masks", str(folder / "round_000.safetensors")])
    assert res.exit_code == 2 and "carries its own masks" in res.stderr


def test_run_folder_round_without_tensors(tmp_path):
    folder, _, _ = fabricate_run(tmp_path / "runs", rounds=3, keep="last")
    assert open_source(folder).what.endswith("round 2")
    res = runner.invoke(app, ["analyze", str(folder), "--round", "1"])
    assert res.exit_code == 2 and "did not keep its tensors" in res.stderr


def test_sparse_and_shrunk_exports_carry_their_masks(tmp_path):
    model = mlp()
    g = torch.Generator().manual_seed(5)
    state = model.state_dict()
    masks = {n: torch.rand(state[n].shape, generator=g) < d for n, d in (("0.weight", 0.3), ("2.weight", 0.5))}
    masks["4.weight"] = torch.rand(state["4.weight"].shape, generator=g) < 0.8
    masks["2.weight"][3] = False  # a dead neuron for shrink
    save_sparse(state, masks, tmp_path / "sparse.safetensors")
    rep = _report(tmp_path / "sparse.safetensors")
    for layer in rep["layers"]:
        n = layer["name"]
        assert layer["density"] == pytest.approx(float(masks[n].float().mean()))
        assert layer["pqi"] == pytest.approx(pq_index({n: state[n]}, masks={n: masks[n]}), rel=1e-6)
    save_shrunk(shrink(model.eval(), masks), tmp_path / "small.safetensors")
    rep = _report(tmp_path / "small.safetensors")
    small = load_file(str(tmp_path / "small.safetensors"))
    assert rep["layers"][1]["shape"][0] == 15  # the dead neuron is gone
    for layer in rep["layers"]:  # its zeros are its masks
        assert layer["density"] == pytest.approx(float((small[layer["name"]] != 0).float().mean()))
        assert layer["density"] < 1


def test_half_histogram_is_the_sorted_magnitudes():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 70, generator=g).to(torch.bfloat16)
    m = torch.rand(w.shape, generator=g) < 0.7
    counts = half_histogram(w, m)
    assert int(counts.sum()) == int(m.sum())
    h = Histogram.of_half(counts, w.dtype)
    survivors = w[m].abs().double()
    assert h.power_sum(0.5) == pytest.approx(float(survivors.sqrt().sum()), rel=1e-12)
    assert h.gini() == pytest.approx(gini(w, masks=m), abs=1e-12)
    one_sparse = torch.zeros(1000, dtype=torch.float16)
    one_sparse[7] = 3.0
    assert Histogram.of_half(half_histogram(one_sparse), torch.float16).gini() == pytest.approx(1 - 1 / 1000)
    w[5, 5] = math.nan
    with pytest.raises(ValueError, match="'w' has NaN"):
        half_histogram(w, None, "w")
    m[5, 5] = False
    assert int(half_histogram(w, m).sum()) == int(m.sum())  # a pruned NaN does not count


def test_binned_float32_gini_is_within_its_bound():
    g = torch.Generator().manual_seed(1)
    w = {f"l{i}.weight": torch.randn(200, 300, generator=g) * (i + 1) for i in range(3)}
    exact = gini(w)
    rep = analyze_source(memory_source(w), list(w), exact_limit=1000)
    assert not rep["global"]["gini_exact"]
    assert exact - EXACT_GINI_ERROR <= rep["global"]["gini"] <= exact + 1e-12
    assert rep["global"]["gini"] != exact
    rep = analyze_source(memory_source(w), list(w))
    assert rep["global"]["gini_exact"] and rep["global"]["gini"] == pytest.approx(exact, abs=1e-12)


def test_pickle_needing_code_is_still_refused(tmp_path):
    class NeedsCode:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps({"fc.weight": torch.ones(2, 2), "x": NeedsCode()}, protocol=2))
    res = runner.invoke(app, ["analyze", str(tmp_path)])
    assert res.exit_code == 2 and "refused" in res.stderr and "pwned" not in res.output


def test_global_split_of_float32_beyond_the_exact_limit_streams(tmp_path):
    g = torch.Generator().manual_seed(2)
    w = {f"l{i}.weight": torch.randn(60, 70, generator=g) * (1 + i) for i in range(3)}
    masks = {"l1.weight": torch.rand(60, 70, generator=g) < 0.5}
    small = analyze_source(memory_source(w, masks), list(w), scope="global")
    big = analyze_source(memory_source(w, masks), list(w), scope="global", exact_limit=100)
    assert [r["sap_keep_fraction"] for r in big["layers"]] == [r["sap_keep_fraction"] for r in small["layers"]]
    alive = 2 * 4200 + int(masks["l1.weight"].sum())
    pruned = alive - round(small["global"]["sap_keep_fraction"] * alive)
    chosen = select_prune(magnitude_scores(w), {"global": pruned}, "global", masks)
    survivors = {n: int(masks[n].sum()) if n in masks else 4200 for n in w}
    assert [round(r["sap_keep_fraction"] * survivors[r["name"]]) for r in big["layers"]] == [
        survivors[n] - int(chosen[n].sum()) for n in w
    ]


@pytest.mark.parametrize("scope", ["global", "neuron"])
def test_tensors_measured_on_several_threads_give_the_same_report(scope):
    state = {**transformer_state(torch.bfloat16), **{f"f{i}.weight": torch.randn(30, 40) for i in range(3)}}
    src = memory_source(state)
    torch.set_num_threads(3)  # the one_thread fixture restores it
    threaded = analyze_source(src, scope=scope, metrics=True)
    assert torch.get_num_threads() == 3
    torch.set_num_threads(1)
    single = analyze_source(src, scope=scope, metrics=True)
    # equal but for the last bits of the global Gini, whose float64 sums PyTorch splits by thread count
    assert single["global"].pop("gini") == pytest.approx(threaded["global"].pop("gini"), rel=1e-12)
    assert single == threaded


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_rows_is_the_histogram_and_the_row_sums_in_one_pass(dtype):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(700, 500, generator=g).to(dtype)  # several blocks of rows
    m = torch.rand(w.shape, generator=g) < 0.8
    for mask in (None, m):
        counts, rows = half_rows(w, (0.5, 1.0), mask)
        assert torch.equal(counts, half_histogram(w, mask))
        ref = row_power_sums(w, (0.5, 1.0), mask)
        assert torch.equal(rows.count, ref.count)
        assert all(torch.equal(rows.sums[s], ref.sums[s]) for s in (0.5, 1.0))


def test_metrics_in_the_same_pass_are_model_metrics():
    state = transformer_state(torch.bfloat16)
    state["model.layers.0.mlp.up_proj.weight"][:3] = 0  # zero survivors: not counted as nonzeros
    g = torch.Generator().manual_seed(6)
    masks = {n: torch.rand(state[n].shape, generator=g) < 0.7 for n in DEFAULT[:5]}
    rep = analyze_source(memory_source(state, masks), metrics=True, chain_flops=True)
    assert rep["metrics"] == model_metrics(state, masks, input_shape=(16,))
