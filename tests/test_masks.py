"""MaskSet: discovery, enforcing, accounting, files and torch.nn.utils.prune interop."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune

from pqprune import MaskSet, load_masks
from pqprune.files import FileFormatError, read_safetensors_metadata
from pqprune.prune.masks import MASKS, discover, from_torch_prune, to_torch_prune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        h = self.bn(self.conv(x)).mean(dim=(2, 3))
        return self.fc2(self.ln(self.fc1(h)))


def _random_masks(ms: MaskSet, keep: float = 0.6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(m.shape, generator=g) < keep for n, m in ms.masks.items()}


def test_default_discovery_and_filters():
    net = Net()
    assert list(discover(net)) == ["conv.weight", "fc1.weight", "fc2.weight"]
    assert list(discover(net, include="fc*.weight")) == ["fc1.weight", "fc2.weight"]
    assert list(discover(net, exclude=["conv.*"])) == ["fc1.weight", "fc2.weight"]
    assert list(discover(net, include_types=nn.Linear)) == ["fc1.weight", "fc2.weight"]
    assert list(discover(net, include_types=nn.Embedding)) == ["emb.weight"]
    assert list(discover(net, exclude_types=(nn.Conv2d,))) == ["fc1.weight", "fc2.weight"]
    assert "fc1.bias" in discover(net, include="*")
    with pytest.raises(ValueError, match="'nope\\*' matches no parameter"):
        discover(net, include="nope*")
    with pytest.raises(ValueError, match="no prunable parameters"):
        discover(net, exclude="*")


def test_enforce_mask_grads_and_density():
    net = Net()
    ms = MaskSet(net)
    masks = _random_masks(ms)
    ms.update(masks)
    ms.enforce()
    params = ms.params()
    for n, m in masks.items():
        assert (params[n][~m] == 0).all() and torch.equal(params[n] != 0, m | (params[n] != 0) & m)
    net(torch.randn(2, 3, 6, 6)).sum().backward()
    ms.mask_grads()
    for n, m in masks.items():
        assert (params[n].grad[~m] == 0).all()
    # zeros among survivors are reported apart from pruned entries
    with torch.no_grad():
        w = params["fc2.weight"]
        first_kept = masks["fc2.weight"].reshape(-1).nonzero()[0]
        w.view(-1)[first_kept] = 0.0
    rep = ms.density_report()
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert rep["total"].total == total and rep["total"].kept == kept and rep["fc2.weight"].zero_kept >= 1
    assert ms.density() == pytest.approx(kept / total)
    assert rep["total"].nonzero_density < rep["total"].density


def test_masks_only_shrink_and_bad_masks():
    ms = MaskSet(Net())
    masks = _random_masks(ms)
    ms.update(masks)
    with pytest.raises(ValueError, match="revive"):
        ms.update({"fc1.weight": torch.ones(16, 8, dtype=torch.bool)})
    with pytest.raises(ValueError, match="'fc1.weight' has shape \\(8, 16\\)"):
        ms.update({"fc1.weight": torch.ones(8, 16, dtype=torch.bool)})
    with pytest.raises(ValueError, match="unknown masked parameter name.*'fc9.weight'"):
        ms.update({"fc9.weight": torch.ones(16, 8, dtype=torch.bool)})
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        ms.update({"fc1.weight": torch.full((16, 8), 0.5)})


def test_save_load_round_trip(tmp_path):
    ms = MaskSet(Net())
    ms.update(_random_masks(ms))
    path = ms.save(tmp_path / "m.safetensors")
    meta = read_safetensors_metadata(path)
    assert meta["format"] == "pqprune.masks" and int(meta["format_version"]) == MASKS.version
    loaded = load_masks(path)
    assert loaded.keys() == ms.masks.keys() and all(torch.equal(loaded[n], ms[n]) for n in loaded)
    fresh = MaskSet(Net())
    fresh.load(path)
    assert all(torch.equal(fresh[n], ms[n]) for n in ms)


def test_bad_mask_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(FileFormatError, match="junk.safetensors"):
        load_masks(junk)
    with pytest.raises(FileFormatError, match="no such file"):
        load_masks(tmp_path / "missing.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file({"fc1.weight": torch.ones(2, 2, dtype=torch.bool)}, str(plain))
    with pytest.raises(FileFormatError, match="not a pqprune mask file"):
        load_masks(plain)
    ms = MaskSet(Net())
    truncated = tmp_path / "t.safetensors"
    ms.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-20])
    with pytest.raises(FileFormatError):
        load_masks(truncated)
    other = tmp_path / "other.safetensors"
    MaskSet(nn.Sequential(nn.Linear(3, 3))).save(other)
    with pytest.raises(FileFormatError, match=r"other.safetensors: unknown masked parameter name\(s\) \['0.weight'\]"):
        ms.load(other)
    partial = tmp_path / "partial.safetensors"
    MASKS.save_tensors({"fc1.weight": ms["fc1.weight"]}, partial)
    with pytest.raises(
        FileFormatError,
        match=r"partial.safetensors: no masks for masked parameter\(s\) \['conv.weight', 'fc2.weight'\]",
    ):
        ms.load(partial)


def test_torch_prune_export_round_trip():
    net = Net()
    ms = MaskSet(net)
    ms.update(_random_masks(ms))
    ms.enforce()
    sd = ms.export_torch_prune()
    assert "fc1.weight_orig" in sd and "fc1.weight_mask" in sd and "fc1.weight" not in sd
    # a model in torch's form loads it and computes the same function
    theirs = Net()
    for n in ms.names:
        mod, _, p = n.rpartition(".")
        prune.identity(dict(theirs.named_modules())[mod], p)
    theirs.load_state_dict(sd)
    x = torch.randn(2, 3, 6, 6)
    net.eval(), theirs.eval()
    assert torch.allclose(net(x), theirs(x))
    plain, masks = from_torch_prune(sd)
    assert plain.keys() == net.state_dict().keys()
    assert all(torch.equal(masks[n], ms[n]) for n in ms)


def test_torch_prune_import_and_apply():
    theirs = Net()
    prune.l1_unstructured(theirs.fc1, "weight", amount=0.3)
    prune.random_unstructured(theirs.conv, "weight", amount=0.5)
    ours = MaskSet(Net())
    ours.import_torch_prune(theirs.state_dict())
    assert torch.equal(ours["fc1.weight"], theirs.fc1.weight_mask.bool())
    assert torch.equal(ours["conv.weight"], theirs.conv.weight_mask.bool())
    assert ours["fc2.weight"].all()
    assert torch.equal(ours.params()["fc1.weight"], theirs.fc1.weight)
    # and back to hooks on a live model
    ours.apply_torch_prune()
    assert torch.equal(ours.model.fc1.weight_mask.bool(), theirs.fc1.weight_mask.bool())
    with pytest.raises(ValueError, match="no matching"):
        from_torch_prune({"a.weight_orig": torch.ones(2)})
    with pytest.raises(ValueError, match=r"unknown state dict entry name\(s\) \['a.weight'\]"):
        to_torch_prune({}, {"a.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask for 'a.weight_mask' has shape \(3,\), the weight has \(2,\)"):
        from_torch_prune({"a.weight_orig": torch.ones(2), "a.weight_mask": torch.ones(3)})


def test_model_untouched_copy_and_pickle():
    net = Net()
    keys = list(net.state_dict())
    ms = MaskSet(net)
    ms.update(_random_masks(ms))
    ms.enforce()
    assert list(net.state_dict()) == keys
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in net.modules())
    net2, ms2 = copy.deepcopy((net, ms))
    assert ms2.model is net2
    with torch.no_grad():
        for p in net2.parameters():
            p.add_(1.0)
    ms2.enforce()
    assert all((ms2.params()[n][~ms2[n]] == 0).all() for n in ms2)
    assert all((ms.params()[n] != ms2.params()[n]).any() for n in ms)  # the copy is independent
    net3, ms3 = pickle.loads(pickle.dumps((net, ms)))
    assert ms3.model is net3 and all(torch.equal(ms3[n], ms[n]) for n in ms)
