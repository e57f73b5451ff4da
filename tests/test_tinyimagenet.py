"""TinyImageNet from its official folder layout, on a tree of a few 64x64 images the tests write with Pillow; the
models on 64x64x3 inputs; a tiny run on the fabricated tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pqprune.cli import app
from pqprune.experiment.data import DatasetNotFound, get_dataset, options
from pqprune.experiment.models import build_model
from pqprune.files import FileFormatError

WNIDS = ["n02124075", "n04067472", "n01443537"]  # label order = wnids.txt order, not sorted
TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 2


def _colour(label: int, k: int) -> tuple[int, int, int]:
    """A flat colour per image: JPEG keeps flat colours within a step or two, so pixels can be checked."""
    return (40 + 60 * label, 200 - 30 * k, 16 * k + 8)


def _write(path: Path, colour: tuple[int, int, int], mode: str = "RGB", size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size, size), colour)
    (img.convert("L") if mode == "L" else img).save(path, "JPEG", quality=95)


def make_tree(root: Path) -> Path:
    """``root/tiny-imagenet-200`` with 3 classes, 4 training and 2 validation images each (one grey-scale)."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    lines = []
    for label, wnid in enumerate(WNIDS):
        for k in range(TRAIN_PER_CLASS):
            mode = "L" if (label, k) == (1, 3) else "RGB"
            _write(base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", _colour(label, k), mode)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")  # in the official tree, not an image
        for k in range(VAL_PER_CLASS):
            name = f"val_{label * VAL_PER_CLASS + k}.JPEG"
            _write(base / "val" / "images" / name, _colour(label, k))
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def _pixels(d, split: str) -> np.ndarray:
    """A split's images back in 0…255 (undoing the scalar normalisation)."""
    x = getattr(d, split).x * d.std[0] + d.mean[0]
    return (x * 255.0).numpy()


def test_reads_the_official_layout(tmp_path: Path) -> None:
    make_tree(tmp_path)
    d = get_dataset("tinyimagenet", tmp_path, val_fraction=0.25, seed=0)
    assert d.input_shape == (3, 64, 64) and d.num_classes == 3 and d.augment == "crop_flip"
    assert (len(d.train), len(d.val), len(d.test)) == (9, 3, 6)
    assert d.test.y.tolist() == [0, 0, 1, 1, 2, 2]  # val_annotations.txt order, labels by wnids.txt order
    test = _pixels(d, "test")
    for i, (label, k) in enumerate((lab, k) for lab in range(3) for k in range(VAL_PER_CLASS)):
        for c, value in enumerate(_colour(label, k)):
            assert np.abs(test[i, c] - value).max() <= 3, (i, c)
    # every training image keeps its class: its colour's first channel is 40 + 60 * label
    xs = np.concatenate([_pixels(d, "train"), _pixels(d, "val")])
    ys = torch.cat([d.train.y, d.val.y]).numpy()
    grey = np.isclose(xs[:, 0], xs[:, 1], atol=1).all(axis=(1, 2))  # the grey-scale image: equal channels
    assert grey.sum() == 1 and ys[grey][0] == 1
    assert (np.abs(xs[~grey, 0].mean(axis=(1, 2)) - (40 + 60 * ys[~grey])) <= 3).all()


def test_the_data_root_may_be_the_folder_itself_and_alias_names_work(tmp_path: Path) -> None:
    base = make_tree(tmp_path)
    d = get_dataset("Tiny-ImageNet", base, val_fraction=0.25)
    assert len(d.test) == 6 and d.name == "tinyimagenet"


def test_train_per_class_keeps_the_first_files(tmp_path: Path) -> None:
    make_tree(tmp_path)
    assert options("tinyimagenet") == {"train_per_class": 0}
    d = get_dataset("tinyimagenet", tmp_path, val_fraction=0.0, train_per_class=2)
    assert len(d.train) == 6 and sorted(d.train.y.tolist()) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="train_per_class must be >= 0"):
        get_dataset("tinyimagenet", tmp_path, train_per_class=-1)


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("wnids.txt", "wnids.txt"),
        ("train/n04067472/images", "train/n04067472/images"),
        ("val/val_annotations.txt", "val/val_annotations.txt"),
        ("val/images/val_3.JPEG", "val/images/val_3.JPEG"),
    ],
)
def test_a_missing_part_is_named(tmp_path: Path, remove: str, named: str) -> None:
    base = make_tree(tmp_path)
    target = base / remove
    if target.is_dir():
        for f in target.iterdir():
            f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(DatasetNotFound) as err:
        get_dataset("tinyimagenet", tmp_path)
    msg = str(err.value)
    assert str((base / named).resolve()) in msg and "\n" not in msg
    assert "tiny-imagenet-200.zip" in msg


def test_bad_contents_are_format_errors_naming_the_file(tmp_path: Path) -> None:
    base = make_tree(tmp_path)
    ann = base / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(FileFormatError, match=r"val_annotations.txt:7: class 'n99999999'"):
        get_dataset("tinyimagenet", tmp_path)
    ann.write_text("val_0.JPEG n02124075\n")
    with pytest.raises(FileFormatError, match=r"val_annotations.txt:1: expected tab-separated"):
        get_dataset("tinyimagenet", tmp_path)

    base = make_tree(tmp_path / "b")
    _write(base / "train" / WNIDS[0] / "images" / "small.JPEG", (1, 2, 3), size=32)
    with pytest.raises(FileFormatError, match=r"small.JPEG: image of 32x32 pixels"):
        get_dataset("tinyimagenet", tmp_path / "b")
    (base / "train" / WNIDS[0] / "images" / "small.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(FileFormatError, match=r"cannot read image .*small.JPEG"):
        get_dataset("tinyimagenet", tmp_path / "b")

    base = make_tree(tmp_path / "c")
    (base / "wnids.txt").write_text(f"{WNIDS[0]}\n{WNIDS[0]}\n")
    with pytest.raises(FileFormatError, match="twice"):
        get_dataset("tinyimagenet", tmp_path / "c")


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18"])
def test_models_take_64x64_colour_images(name: str) -> None:
    model = build_model(name, (3, 64, 64), 200, seed=0)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 200) and torch.isfinite(out).all()
    if name == "mlp":  # 12,288 inputs: 12288-128-256-200
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert first.weight.shape == (128, 3 * 64 * 64)


@pytest.mark.end_to_end
@pytest.mark.usefixtures("one_thread")
def test_a_tiny_run_on_the_fabricated_tree(tmp_path: Path, out_args: list[str]) -> None:
    make_tree(tmp_path / "data")
    args = ["run", "--data", "tinyimagenet", "--data-root", str(tmp_path / "data"), "--model", "cnn"]
    args += ["--model-option", "hidden=[4,8]", "--rounds", "1", "--epochs", "1", "--val-fraction", "0.25"]
    r = CliRunner().invoke(app, [*args, *out_args, "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["status"] == "finished" and len(doc["rounds"]) == 2
    assert doc["rounds"][1]["density"] < 1.0 and 0.0 <= doc["rounds"][1]["test_accuracy"] <= 1.0
