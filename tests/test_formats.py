"""Every file pqprune writes names its format and version, and every reader checks them through one helper:
a foreign file or one from a newer pqprune is refused naming the file; a file of 0.1.0 (no version) still reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pqprune.experiment.rundir import CHECKPOINT_FORMAT, INITIAL_FORMAT, RUN_FORMAT, RunDir
from pqprune.export import load_sparse, save_sparse
from pqprune.files import FileFormatError, check_format, format_stamp, save_json, save_tensors
from pqprune.prune.masks import MASK_FORMAT, load_masks

W = {"fc.weight": torch.arange(6.0).reshape(2, 3)}


def _rundir(tmp_path: Path) -> RunDir:
    rd = RunDir(tmp_path, "sap-0123456789")
    rd.path.mkdir(parents=True)
    return rd


def test_check_format_accepts_older_and_unversioned_refuses_newer_and_foreign() -> None:
    assert check_format({"format": "x", "format_version": "1"}, "f", "x", 2, "thing") == 1
    assert check_format({"format": "x", "version": 2}, "f", "x", 2, "thing") == 2  # 0.1.0 round JSON key
    assert check_format({}, "f", "x", 2, "thing", unversioned=1) == 1
    with pytest.raises(FileFormatError, match=r"^f: thing format version 3 is newer than this pqprune reads \(2\)"):
        check_format({"format": "x", "format_version": 3}, "f", "x", 2, "thing")
    with pytest.raises(FileFormatError, match=r"^f: not a pqprune thing \(format='y', expected 'x'\)"):
        check_format({"format": "y", "format_version": 1}, "f", "x", 2, "thing", unversioned=1)
    with pytest.raises(FileFormatError, match="bad thing format version 'one'"):
        check_format({"format": "x", "format_version": "one"}, "f", "x", 2, "thing")
    with pytest.raises(FileFormatError, match="not a pqprune thing"):
        check_format({}, "f", "x", 2, "thing")  # a version is required unless the format had an unversioned past


def test_run_folder_files_round_trip_and_newer_ones_are_refused(tmp_path: Path) -> None:
    rd = _rundir(tmp_path)
    rd.save_settings({"run_id": rd.run_id, "settings": {"method": "sap"}})
    rd.save_initial(W)
    assert rd.settings() == {"method": "sap"} and torch.equal(rd.load_initial()["fc.weight"], W["fc.weight"])
    doc = json.loads((rd.path / "settings.json").read_text())
    assert (doc["format"], doc["format_version"]) == (RUN_FORMAT, 1)

    save_json({**doc, "format_version": 9}, rd.path / "settings.json")
    with pytest.raises(FileFormatError, match=r"settings.json: run settings file format version 9 is newer"):
        rd.settings()
    save_tensors(W, rd.initial, format_stamp(INITIAL_FORMAT, 9))
    with pytest.raises(FileFormatError, match=r"initial.safetensors: initial weights file format version 9"):
        rd.load_initial()
    save_tensors(W, rd.tensors(0), format_stamp(CHECKPOINT_FORMAT, 9))
    with pytest.raises(FileFormatError, match=r"round checkpoint format version 9 is newer"):
        rd.load_tensors(0)
    save_json({"format": CHECKPOINT_FORMAT, "format_version": 9}, rd.json(0))
    with pytest.raises(FileFormatError, match=r"round checkpoint format version 9 is newer"):
        rd.read_round(0)
    save_tensors(W, rd.tensors(0), format_stamp(MASK_FORMAT, 1))
    with pytest.raises(FileFormatError, match=r"not a pqprune round checkpoint \(format='pqprune.masks'"):
        rd.load_tensors(0)


def test_files_of_0_1_without_a_version_still_read(tmp_path: Path) -> None:
    rd = _rundir(tmp_path)
    save_json({"run_id": rd.run_id, "settings": {"method": "lt"}}, rd.path / "settings.json")  # 0.1.0: no format
    save_tensors(W, rd.initial, {"format": INITIAL_FORMAT})  # 0.1.0: format, no version
    save_tensors(W, rd.tensors(0), {"format": CHECKPOINT_FORMAT, "round": "0"})
    save_json({"format": CHECKPOINT_FORMAT, "version": 1, "round": 0}, rd.json(0))
    assert rd.settings() == {"method": "lt"}
    assert set(rd.load_initial()) == set(rd.load_tensors(0)) == {"fc.weight"}
    assert rd.read_round(0)["round"] == 0


def test_masks_and_exports_name_the_file_when_refused(tmp_path: Path) -> None:
    save_tensors(
        {"fc.weight": torch.ones(2, 3, dtype=torch.bool)}, tmp_path / "m.safetensors", format_stamp(MASK_FORMAT, 7)
    )
    with pytest.raises(FileFormatError, match=r"m.safetensors: mask file format version 7 is newer"):
        load_masks(tmp_path / "m.safetensors")
    save_tensors({"fc.weight": torch.ones(2, 3)}, tmp_path / "m2.safetensors", format_stamp(MASK_FORMAT, 1))
    with pytest.raises(FileFormatError, match=r"m2.safetensors: mask for 'fc.weight' must be bool, got torch.float32"):
        load_masks(tmp_path / "m2.safetensors")
    out = save_sparse(W, {"fc.weight": W["fc.weight"] > 2}, tmp_path / "w.sparse.safetensors")
    assert torch.equal(load_sparse(out)["fc.weight"], torch.where(W["fc.weight"] > 2, W["fc.weight"], 0.0))
    with pytest.raises(FileFormatError, match=r"not a pqprune sparse export \(format='pqprune.masks'"):
        load_sparse(tmp_path / "m.safetensors")


def test_pruner_state_carries_its_format_and_one_of_0_1_still_loads() -> None:
    from torch import nn

    from pqprune import Pruner
    from pqprune.prune.pruner import STATE_FORMAT

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    pruner = Pruner(model, "lt", scope="layer")
    pruner.step()
    state = pruner.state_dict()
    assert (state["format"], state["format_version"]) == (STATE_FORMAT, 1)

    old = {k: v for k, v in state.items() if k not in ("format", "format_version")} | {"version": 1}  # 0.1.0
    fresh = Pruner(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), "lt", scope="layer")
    fresh.load_state_dict(old)
    assert fresh.round == 1 and all(torch.equal(fresh.masks[n], pruner.masks[n]) for n in pruner.masks)

    with pytest.raises(FileFormatError, match=r"^pruner state: Pruner state format version 2 is newer .* \(1\)"):
        fresh.load_state_dict({**state, "format_version": 2})
    with pytest.raises(FileFormatError, match=r"not a pqprune Pruner state \(format='pqprune.masks'"):
        fresh.load_state_dict({**state, "format": MASK_FORMAT})


def test_resuming_a_run_refuses_a_settings_file_of_a_newer_version(tmp_path: Path) -> None:
    from pqprune.experiment.runner import _resume_point
    from pqprune.experiment.settings import RunSettings

    res = RunSettings(rounds=2)
    rd = RunDir(tmp_path, res.run_id())
    rd.path.mkdir(parents=True)
    save_json({"format": CHECKPOINT_FORMAT, "format_version": 1, "round": 0}, rd.json(0))
    rd.save_settings({"run_id": rd.run_id, "run_hash": "abc", "settings": {}})
    assert _resume_point(rd, res, "abc") is None  # round 0 has no tensors: start afresh
    with pytest.raises(FileFormatError, match=r"holds run abc, not def"):
        _resume_point(rd, res, "def")
    save_json({"format": RUN_FORMAT, "format_version": 5, "run_hash": "abc"}, rd.path / "settings.json")
    with pytest.raises(FileFormatError, match=r"settings.json: run settings file format version 5 is newer"):
        _resume_point(rd, res, "abc")


def test_theory_studies_write_their_format(tmp_path: Path) -> None:
    from pqprune.theory.mc_study import GRID_FORMAT, save_grid
    from pqprune.theory.teacher_study import TEACHER_FORMAT, TeacherStudy, save_teacher

    save_grid([], tmp_path / "mc.json")
    save_teacher([TeacherStudy(points=[], settings={"width": 3}, seconds=float("nan"))], tmp_path / "t.json")
    assert json.loads((tmp_path / "mc.json").read_text()) == {"cells": [], "format": GRID_FORMAT, "format_version": 1}
    teacher = json.loads((tmp_path / "t.json").read_text())
    assert (teacher["format"], teacher["studies"]) == (
        TEACHER_FORMAT,
        [{"settings": {"width": 3}, "seconds": None, "points": []}],
    )


def test_a_run_folders_masks_are_checked_against_its_weights(tmp_path: Path) -> None:
    from pqprune.experiment.rundir import _write_round_json, _write_round_tensors

    rd = _rundir(tmp_path)
    good = {"fc.weight": W["fc.weight"] > 2}
    skeleton = _write_round_tensors(rd, 1, W, {"masks": good})
    _write_round_json(rd, 1, {"round": 1, "pruner": skeleton}, keep="all")
    t, state, masks = rd.last_checkpoint()
    assert (
        t == 1
        and torch.equal(state["fc.weight"], W["fc.weight"])
        and torch.equal(masks["fc.weight"], good["fc.weight"])
    )
    _write_round_tensors(rd, 1, W, {"masks": {"fc.weight": torch.ones(3, 2, dtype=torch.bool)}})
    with pytest.raises(FileFormatError, match=r"round_001.safetensors: mask for 'fc.weight' has shape \(3, 2\)"):
        rd.last_checkpoint()
