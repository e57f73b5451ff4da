"""Bad checkpoints and bad --out: one line on stderr naming the file, exit code 2, no traceback, nothing lost or
left half-written."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from checkpoint_files import transformer_state, write_sharded
from pqprune.cli.app import app

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.end_to_end]
runner = CliRunner()


def _fails(args: list[str], *needles: str) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output, res.output
    for needle in needles:
        assert needle in res.stderr, res.stderr
    return res.stderr


@pytest.fixture()
def weights(tmp_path):
    state = {k: v.float() for k, v in transformer_state().items()}
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    return path, state


@pytest.mark.parametrize("command", [["analyze"], ["export", "--format", "sparse", "--out", "o.safetensors"]])
def test_unreadable_inputs(tmp_path, command):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(7, 200)))
    _fails([command[0], junk, *command[1:]], "junk.pt: not a checkpoint: neither safetensors")
    text = tmp_path / "notes.bin"
    text.write_text("some notes about a model\n")
    _fails([command[0], text, *command[1:]], "notes.bin: not a checkpoint", "b'some notes a'")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hidden_size": 16, "num_layers": 2}))
    _fails([command[0], config, *command[1:]], "config.json: a JSON file but not a shard index", "hidden_size")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no weights here")
    _fails([command[0], empty, *command[1:]], "empty: a folder with no weights")
    _fails([command[0], tmp_path / "absent", *command[1:]], "absent: no such file or folder")


def test_shard_listed_but_missing(tmp_path):
    index = write_sharded(tmp_path / "hf", transformer_state())
    (tmp_path / "hf" / "model-00002-of-00002.safetensors").unlink()
    for target in (index, tmp_path / "hf"):
        _fails(["analyze", target], "shard 'model-00002-of-00002.safetensors' listed in the index is missing")


def test_truncated_safetensors(weights, tmp_path):
    path, _ = weights
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    _fails(["analyze", cut], "cut.safetensors: not a readable safetensors file", "truncated or corrupt")
    cut.write_bytes(path.read_bytes()[:40])
    _fails(["analyze", cut], "cut.safetensors: not a readable safetensors file", "cut short")


def test_masks_that_do_not_match_name_the_masks_file(weights, tmp_path):
    path, _state = weights
    masks = tmp_path / "masks.safetensors"
    save_file({"model.layers.9.mlp.up_proj.weight": torch.ones(2, 2, dtype=torch.bool)}, str(masks))
    _fails(
        ["analyze", path, "--masks", masks], f"{masks}: unknown tensor name(s) ['model.layers.9.mlp.up_proj.weight']"
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    save_file({name: torch.ones(4, 16, dtype=torch.bool)}, str(masks))
    err = _fails(["analyze", path, "--masks", masks], f"{masks}: mask for {name!r} has shape (4, 16)")
    assert "(16, 16)" in err
    # all-True masks of the wrong shape are a shape error, not "nothing is pruned"
    _fails(["export", path, "--masks", masks, "--format", "sparse", "--out", tmp_path / "o.safetensors"], "shape")
    save_file({name: torch.full((16, 16), 0.5)}, str(masks))
    _fails(["analyze", path, "--masks", masks], str(masks), "bool")
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_among_survivors(weights, tmp_path, bad):
    path, state = weights
    name = "model.layers.1.mlp.down_proj.weight"
    state[name][2, 3] = bad
    save_file(state, str(path))
    for dtype_state in (state, {k: v.bfloat16() for k, v in state.items()}):
        save_file(dtype_state, str(path))
        _fails(["analyze", path], str(path), f"tensor {name!r} has NaN or infinite surviving entries")
    masks = tmp_path / "masks.safetensors"
    keep = torch.rand(state[name].shape) < 0.5
    keep[2, 3] = True
    save_file({name: keep}, str(masks))
    out = tmp_path / "o.safetensors"
    _fails(["export", path, "--masks", masks, "--format", "sparse", "--out", out], "NaN or infinite surviving")
    assert not out.exists()
    keep[2, 3] = False  # pruned: the NaN goes, nothing is wrong
    save_file({name: keep}, str(masks))
    res = runner.invoke(app, ["analyze", str(path), "--masks", str(masks), "--json"])
    assert res.exit_code == 0, res.output


def test_out_may_not_be_an_input(weights, tmp_path):
    path, _state = weights
    before = path.read_bytes()
    masks = tmp_path / "masks.safetensors"
    save_file({"lm_head.weight": torch.rand(50, 16) < 0.5}, str(masks))
    for out in (path, masks, tmp_path / "." / "model.safetensors"):
        _fails(["export", path, "--masks", masks, "--format", "sparse", "--out", out], "is an input of this command")
    assert path.read_bytes() == before
    link = tmp_path / "link.safetensors"
    link.symlink_to(path)
    _fails(["export", path, "--masks", masks, "--format", "sparse", "--out", link], "is an input of this command")
    index = write_sharded(tmp_path / "hf", transformer_state())
    shard = tmp_path / "hf" / "model-00001-of-00002.safetensors"
    _fails(["export", index, "--format", "sparse", "--out", shard], "is an input of this command")


def test_out_folder_unwritable_or_wrong_extension(weights, tmp_path):
    path, _ = weights
    masks = tmp_path / "masks.safetensors"
    save_file({"lm_head.weight": torch.rand(50, 16) < 0.5}, str(masks))
    base = ["export", path, "--masks", masks, "--format", "sparse", "--out"]
    _fails([*base, tmp_path], "is a folder; give a file name ending in .safetensors")
    _fails([*base, tmp_path / "model.pt"], "model.pt: the file written is a safetensors file", "*.safetensors")
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder would be")
    _fails([*base, blocker / "sub" / "o.safetensors"], "cannot write in folder", "file")
    if os.geteuid() != 0:  # root writes anywhere; a read-only file system refuses everyone
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        _fails([*base, ro / "o.safetensors"], "cannot write in folder")
    _fails([*base, "/proc/pqprune/o.safetensors"], "/proc/pqprune/o.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "masks.safetensors", "model.safetensors"]
