"""Every file pqprune writes names its format and version, and every reader checks them through one helper
(:class:`pqprune.files.FileFormat`): a foreign file or one from a newer pqprune is refused naming the file and both
versions; a file of 0.1.0 (no version, sometimes no format name) still reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import pqprune.export
import pqprune.theory.mc_study as mc_study
import pqprune.theory.teacher_study as teacher_study
from pqprune.experiment.rundir import INITIAL, ROUND, RUN, RunDir
from pqprune.export import load_sparse, save_sparse
from pqprune.files import FORMATS, FileFormat, FileFormatError, NewerFormatError, save_json
from pqprune.prune import Pruner
from pqprune.prune.masks import MASKS, load_masks
from pqprune.prune.pruner import PRUNER_STATE

W = {"fc.weight": torch.arange(6.0).reshape(2, 3)}
CHANGELOG = Path(__file__).parents[1] / "CHANGELOG.md"


def _rundir(tmp_path: Path) -> RunDir:
    rd = RunDir(tmp_path, "sap-0123456789")
    rd.path.mkdir(parents=True)
    return rd


def _safetensors(tensors: dict, path: Path, metadata: dict[str, str]) -> Path:
    """A file written by other code (or an older pqprune): safetensors with exactly this metadata."""
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_check_reads_older_and_legacy_versions_and_refuses_newer_and_foreign() -> None:
    thing = FileFormat("test.thing", 2, "thing")
    old = FileFormat("test.old", 2, "old thing", legacy=1)
    unnamed = FileFormat("test.unnamed", 2, "unnamed thing", legacy=1, legacy_unnamed=True)
    assert thing.check({"format": "test.thing", "format_version": "1"}, "f") == 1
    assert thing.check({"format": "test.thing", "version": 2}, "f") == 2  # 0.1.0's key in round records
    assert old.check({"format": "test.old"}, "f") == 1  # 0.1.0: a name, no version
    assert unnamed.check({}, "f") == 1 and unnamed.check({"version": 1}, "f") == 1  # 0.1.0: no name either
    with pytest.raises(NewerFormatError, match=r"^f: thing format version 3 is newer than this pqprune reads \(2\)"):
        thing.check({"format": "test.thing", "format_version": 3}, "f")
    with pytest.raises(FileFormatError, match=r"^f: not a pqprune old thing \(format='y', expected 'test.old'\)"):
        old.check({"format": "y", "format_version": 1}, "f")
    with pytest.raises(FileFormatError, match=r"^f: not a pqprune old thing \(format=None"):
        old.check({}, "f")  # only formats that 0.1.0 wrote without a name may lack it
    with pytest.raises(FileFormatError, match="bad thing format version 'one'"):
        thing.check({"format": "test.thing", "format_version": "one"}, "f")
    with pytest.raises(FileFormatError, match="f: thing without a format version"):
        thing.check({"format": "test.thing"}, "f")  # a version is required unless 0.1.0 wrote none


def test_a_format_name_is_declared_once() -> None:
    assert FileFormat("pqprune.masks", 1, "mask file") == MASKS  # the same declaration again is harmless
    with pytest.raises(ValueError, match="'pqprune.masks' is declared twice"):
        FileFormat("pqprune.masks", 2, "mask file")


def test_run_folder_files_round_trip_and_newer_ones_are_refused(tmp_path: Path) -> None:
    rd = _rundir(tmp_path)
    rd.save_settings({"run_id": rd.run_id, "settings": {"method": "sap"}})
    rd.save_initial(W)
    assert rd.settings() == {"method": "sap"} and torch.equal(rd.load_initial()["fc.weight"], W["fc.weight"])
    doc = json.loads(rd.settings_file.read_text())
    assert (doc["format"], doc["format_version"]) == ("pqprune.run", 1)

    save_json({**doc, "format_version": 9}, rd.settings_file)
    with pytest.raises(NewerFormatError, match=r"settings.json: run settings file format version 9 is newer .*\(1\)"):
        rd.settings()
    _safetensors(W, rd.initial, {"format": INITIAL.name, "format_version": "9"})
    with pytest.raises(NewerFormatError, match=r"initial.safetensors: initial weights file format version 9"):
        rd.load_initial()
    _safetensors(W, rd.tensors(0), {"format": ROUND.name, "format_version": "9"})
    with pytest.raises(NewerFormatError, match=r"round_000.safetensors: round checkpoint format version 9 is newer"):
        rd.load_tensors(0)
    save_json({"format": ROUND.name, "format_version": 9}, rd.json(0))
    with pytest.raises(NewerFormatError, match=r"round_000.json: round checkpoint format version 9 is newer"):
        rd.read_round(0)
    MASKS.save_tensors({"fc.weight": torch.ones(2, 3, dtype=torch.bool)}, rd.tensors(0))
    with pytest.raises(FileFormatError, match=r"not a pqprune round checkpoint \(format='pqprune.masks'"):
        rd.load_tensors(0)
    _safetensors(W, rd.initial, {})  # a safetensors file of other code: 0.1.0 always named this format
    with pytest.raises(FileFormatError, match=r"initial.safetensors: not a pqprune initial weights file"):
        rd.load_initial()


def test_files_of_0_1_without_a_version_still_read(tmp_path: Path) -> None:
    rd = _rundir(tmp_path)
    save_json({"run_id": rd.run_id, "settings": {"method": "lt"}}, rd.settings_file)  # 0.1.0: no format
    _safetensors(W, rd.initial, {"format": INITIAL.name})  # 0.1.0: format, no version
    _safetensors(W, rd.tensors(0), {"format": ROUND.name, "round": "0"})
    save_json({"format": ROUND.name, "version": 1, "round": 0}, rd.json(0))
    assert rd.settings() == {"method": "lt"} and rd.settings_document()["run_id"] == rd.run_id
    assert set(rd.load_initial()) == set(rd.load_tensors(0)) == {"fc.weight"}
    assert rd.read_round(0)["round"] == 0


def test_the_pruners_state_names_its_format_and_0_1_states_still_load() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    pruner = Pruner(model, "sap")
    pruner.step()
    state = pruner.state_dict()
    assert (state["format"], state["format_version"]) == ("pqprune.pruner", PRUNER_STATE.version)
    old = {k: v for k, v in state.items() if k not in ("format", "format_version")}
    fresh = Pruner(model, "sap")
    fresh.load_state_dict({**old, "version": 1})  # as 0.1.0 saved it
    assert fresh.round == 1 and all(torch.equal(fresh.masks[n], pruner.masks[n]) for n in pruner.masks)
    with pytest.raises(NewerFormatError, match=r"^ck.pt: pruner state format version 2 is newer .*\(1\)"):
        fresh.load_state_dict({**state, "format_version": 2}, source="ck.pt")
    with pytest.raises(FileFormatError, match=r"not a pqprune pruner state \(format='pqprune.masks'"):
        fresh.load_state_dict({**state, "format": "pqprune.masks"})


def test_masks_and_exports_name_the_file_when_refused(tmp_path: Path) -> None:
    bool_w = {"fc.weight": torch.ones(2, 3, dtype=torch.bool)}
    _safetensors(bool_w, tmp_path / "m.safetensors", {"format": MASKS.name, "format_version": "7"})
    with pytest.raises(NewerFormatError, match=r"m.safetensors: mask file format version 7 is newer .*\(1\)"):
        load_masks(tmp_path / "m.safetensors")
    _safetensors(bool_w, tmp_path / "m0.safetensors", {"format": MASKS.name})
    with pytest.raises(FileFormatError, match=r"m0.safetensors: mask file without a format version"):
        load_masks(tmp_path / "m0.safetensors")  # 0.1.0 wrote mask files with their version
    MASKS.save_tensors({"fc.weight": torch.ones(2, 3)}, tmp_path / "m2.safetensors")
    with pytest.raises(FileFormatError, match=r"m2.safetensors: mask for 'fc.weight' must be bool, got torch.float32"):
        load_masks(tmp_path / "m2.safetensors")
    out = save_sparse(W, {"fc.weight": W["fc.weight"] > 2}, tmp_path / "w.sparse.safetensors")
    assert torch.equal(load_sparse(out)["fc.weight"], torch.where(W["fc.weight"] > 2, W["fc.weight"], 0.0))
    with pytest.raises(FileFormatError, match=r"not a pqprune sparse export \(format='pqprune.masks'"):
        load_sparse(tmp_path / "m.safetensors")
    with pytest.raises(FileFormatError, match=r"not a pqprune shrunk model \(format='pqprune.sparse'"):
        pqprune.export.load_shrunk(out)


def test_theory_studies_round_trip_and_0_1_bare_lists_are_refused(tmp_path: Path) -> None:
    path = mc_study.MC_STUDY.save_json({"cells": [{"eps": 1.0, "p_hat": float("nan")}]}, tmp_path / "theory_mc.json")
    assert mc_study.load_grid(path) == [{"eps": 1.0, "p_hat": None}]
    study = teacher_study.TeacherStudy(points=[], settings={"dist": "normal"}, seconds=0.5)
    path = teacher_study.save_teacher([study], tmp_path / "theory_teacher.json")
    assert teacher_study.load_teacher(path) == [{"settings": {"dist": "normal"}, "seconds": 0.5, "points": []}]
    save_json([{"eps": 1.0}], tmp_path / "old.json")
    with pytest.raises(FileFormatError, match=r"old.json: not a pqprune Monte-Carlo study \(a JSON list"):
        mc_study.load_grid(tmp_path / "old.json")


def test_the_changelog_lists_every_format_with_its_version() -> None:
    """The table of on-disk formats in CHANGELOG.md has one row per declared format, at its current version."""
    names = {"pqprune.round", "pqprune.initial", "pqprune.run", "pqprune.masks", "pqprune.sparse", "pqprune.shrunk"}
    names |= {"pqprune.pruner", "pqprune.theory_mc", "pqprune.theory_teacher"}
    declared = {name: f.version for name, f in FORMATS.items() if name.startswith("pqprune.")}
    assert set(declared) == names  # every file pqprune writes has a FileFormat
    rows = re.findall(r"^\| [^|]+ \| `(pqprune\.[a-z_]+)` \| (\d+) \|", CHANGELOG.read_text(), flags=re.M)
    assert {name: int(v) for name, v in rows} == declared
    assert RUN.legacy == ROUND.legacy == INITIAL.legacy == PRUNER_STATE.legacy == 1 and MASKS.legacy is None


def test_resuming_reads_the_run_folders_settings_through_its_format(tmp_path: Path) -> None:
    from pqprune.experiment import RunSettings
    from pqprune.experiment.runner import _resume_point

    rd = _rundir(tmp_path)
    ROUND.save_json({"round": 0}, rd.json(0))
    ROUND.save_tensors(W, rd.tensors(0), {"round": "0"})
    with pytest.raises(FileFormatError, match=r"has round checkpoints but no usable settings.json .*no such file"):
        _resume_point(rd, RunSettings(rounds=2), "abc")
    save_json({"run_hash": "abc"}, rd.settings_file)  # 0.1.0: no format, no version
    assert _resume_point(rd, RunSettings(rounds=2), "abc") == 0
    with pytest.raises(FileFormatError, match=r"holds run abc, not def"):
        _resume_point(rd, RunSettings(rounds=2), "def")
    save_json({"run_hash": "abc", "format": RUN.name, "format_version": 5}, rd.settings_file)
    with pytest.raises(NewerFormatError, match=r"settings.json: run settings file format version 5 is newer .*\(1\)"):
        _resume_point(rd, RunSettings(rounds=2), "abc")
