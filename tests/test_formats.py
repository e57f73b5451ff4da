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
