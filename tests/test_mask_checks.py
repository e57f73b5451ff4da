"""One check of masks (pqprune.measure.weights.match_masks / check_mask) behind every entry point that takes them:
the measures, the MaskSet, the selection, the export, theory's masks, random_matched's reference, the pruner's
state, a run folder's checkpoint and the CLI's mask reader refuse the same bad masks with the same message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from pqprune import export
from pqprune.checkpoint.sources import open_source
from pqprune.files import FileFormatError
from pqprune.measure import check_masks, match_masks, pq_index
from pqprune.prune import MaskSet, Pruner
from pqprune.prune.masks import to_torch_prune
from pqprune.prune.methods.random import RandomMatched
from pqprune.prune.select import magnitude_scores, select_prune
from pqprune.theory.lq_bounds import keep_largest_mask

NAME = "0.weight"


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))


def _good(net: nn.Module) -> dict[str, Tensor]:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters() if p.dim() > 1}


# The bad masks, each with the message every entry point gives for it.
BAD: dict[str, tuple[Callable[[dict[str, Tensor]], dict[str, Tensor]], str]] = {
    "shape": (lambda m: {**m, NAME: m[NAME].T}, r"mask for '0.weight' has shape \(6, 4\), the weight has \(4, 6\)"),
    "dtype": (lambda m: {**m, NAME: torch.full((4, 6), 0.5)}, r"mask for '0.weight' must be bool"),
    "name": (
        lambda m: {**m, "9.weight": m[NAME].clone()},
        r"unknown [a-z ]+ name\(s\) \['9.weight'\]; the known names are \[.*'2.weight'",
    ),
}


def _state_entry_points(tmp_path: Path) -> dict[str, Callable[[dict[str, Tensor]], object]]:
    """Entry points that take name → mask for the whole model."""
    net = _net()
    state = net.state_dict()
    weights = {n: p.detach() for n, p in net.named_parameters() if p.dim() > 1}

    def cli_reader(masks: dict[str, Tensor]) -> object:  # `--masks` of analyze, export, prune, bound
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
        save_file({k: v.contiguous() for k, v in masks.items()}, str(tmp_path / "m.safetensors"))
        return open_source(tmp_path / "w.safetensors", masks=tmp_path / "m.safetensors").load()

    def pruner_state(masks: dict[str, Tensor]) -> object:
        pruner = Pruner(_net(), "sap")
        return pruner.load_state_dict({**pruner.state_dict(), "masks": masks})

    def selection(masks: dict[str, Tensor]) -> object:
        return select_prune(magnitude_scores(weights), {"global": 1}, "global", masks)

    def random_reference(masks: dict[str, Tensor]) -> object:
        return Pruner(_net(), RandomMatched(masks), scope="layer").step()

    return {
        "measure": lambda m: pq_index(net, masks=m),
        "check_masks": lambda m: check_masks(weights, m),
        "maskset": lambda m: MaskSet(_net()).update(m, allow_regrow=True),
        "apply_masks": lambda m: export.apply_masks(state, m),
        "pruned_copy": lambda m: export.pruned_copy(net, m),
        "save_sparse": lambda m: export.save_sparse(state, m, tmp_path / "s.safetensors"),
        "model_metrics": lambda m: export.model_metrics(state, m),
        "to_torch_prune": lambda m: to_torch_prune(state, m),
        "selection": selection,
        "pruner_state": pruner_state,
        "random_matched": random_reference,
        "cli_reader": cli_reader,
    }


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize(
    "entry",
    [
        "measure",
        "check_masks",
        "maskset",
        "apply_masks",
        "pruned_copy",
        "save_sparse",
        "model_metrics",
        "to_torch_prune",
        "selection",
        "pruner_state",
        "random_matched",
        "cli_reader",
    ],
)
def test_every_entry_point_refuses_the_same_bad_masks(entry: str, bad: str, tmp_path: Path) -> None:
    spoil, message = BAD[bad]
    masks = spoil(_good(_net()))
    if bad == "dtype" and entry in ("maskset", "to_torch_prune", "cli_reader", "pruner_state", "random_matched"):
        message = r"mask for '0.weight' must be bool \(or 0/1 values\), got torch.float32 with values other than 0"
    with pytest.raises(ValueError, match=message):
        _state_entry_points(tmp_path)[entry](masks)


def test_a_good_mask_passes_every_entry_point(tmp_path: Path) -> None:
    masks = _good(_net())
    masks[NAME] = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.3
    for call in _state_entry_points(tmp_path).values():
        call(dict(masks))  # no exception


def test_single_tensor_entry_points_check_the_mask_the_same_way() -> None:
    w = torch.randn(4, 6)
    for bad, message in ((torch.ones(6, 4, dtype=torch.bool), "has shape"), (torch.ones(4, 6), "must be bool")):
        with pytest.raises(ValueError, match=message):
            keep_largest_mask(w, torch.full((4,), 2), bad)
        with pytest.raises(ValueError, match=message):
            select_prune({"w": w}, {"w": 1}, "layer", {"w": bad})
        with pytest.raises(ValueError, match=message):
            select_prune({"w": w}, {"w": torch.ones(4, dtype=torch.int64)}, "neuron", {"w": bad})


def test_match_masks_returns_bool_masks_and_checks_completeness() -> None:
    tensors = {"a": torch.zeros(2, 3), "b": (3, 1)}
    got = match_masks(tensors, {"b": torch.tensor([[1], [0], [1]], dtype=torch.uint8)}, allow_01=True)
    assert got["b"].dtype == torch.bool and got["b"].flatten().tolist() == [True, False, True]
    with pytest.raises(ValueError, match=r"^f.pt: no masks for tensor\(s\) \['a'\]$"):
        match_masks(tensors, {"b": torch.ones(3, 1, dtype=torch.bool)}, source="f.pt", complete=True)


def test_a_run_folders_last_checkpoint_has_masks_that_fit_its_weights(tmp_path: Path) -> None:
    from pqprune.experiment.rundir import ROUND, RunDir

    rd = RunDir(tmp_path, "sap-0")
    weights = {"model/fc.weight": torch.ones(2, 3), "pruner/masks/fc.weight": torch.ones(3, 2, dtype=torch.bool)}
    ROUND.save_tensors(weights, rd.tensors(1))
    ROUND.save_json({"pruner": {"masks": {"fc.weight": {"__tensor__": "pruner/masks/fc.weight"}}}}, rd.json(1))
    with pytest.raises(FileFormatError, match=r"round_001.safetensors: mask for 'fc.weight' has shape \(3, 2\)"):
        rd.last_checkpoint()
    ROUND.save_tensors({**weights, "pruner/masks/fc.weight": torch.ones(2, 3, dtype=torch.bool)}, rd.tensors(1))
    last = rd.last_checkpoint()
    assert last is not None and last[0] == 1 and torch.equal(last[2]["fc.weight"], torch.ones(2, 3, dtype=torch.bool))
