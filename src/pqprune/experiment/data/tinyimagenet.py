"""TinyImageNet (200 classes of 64x64 colour images) read from its official folder layout under ``--data-root``::

    tiny-imagenet-200/                 (or the data root itself)
        wnids.txt                      one class id (WordNet id) per line; its order is the label order
        train/<wnid>/images/*.JPEG     500 training images per class
        val/images/*.JPEG              10,000 images, labelled by
        val/val_annotations.txt        tab-separated: file name, wnid, bounding box (x0, y0, x1, y1)

The official test images carry no labels, so the labelled ``val`` images are the test split (as in the papers that
report TinyImageNet accuracy) and the validation split is carved from ``train`` like every other data set.
Images are decoded with Pillow; grey-scale ones are converted to RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pqprune.experiment.data.registry import DatasetNotFound, _Raw, _register
from pqprune.files import FileFormatError

FOLDER = "tiny-imagenet-200"
SIZE = 64
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_HOW_TO_GET = (
    "download http://cs231n.stanford.edu/tiny-imagenet-200.zip on a machine with a network and extract it "
    "under the data root (pqprune does not download it)"
)


def _base(root: Path) -> Path:
    """The folder holding ``wnids.txt``: ``root/tiny-imagenet-200`` when it exists, else ``root`` itself."""
    nested = root / FOLDER
    return nested if nested.is_dir() else root


def _not_found(root: Path, missing: Sequence[Path]) -> DatasetNotFound:
    shown = ", ".join(str(p.resolve()) for p in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return DatasetNotFound(
        f"data set 'tinyimagenet' not found under --data-root {str(root.resolve())!r}: missing {shown}{more}; "
        f"{_HOW_TO_GET}"
    )


def read_image(path: Path) -> np.ndarray:
    """One 64x64 image as a (3, 64, 64) uint8 array (grey-scale and palette images converted to RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:  # a truncated or non-image file
        raise FileFormatError(f"cannot read image {path}: {exc}") from exc
    if rgb.shape != (SIZE, SIZE, 3):
        raise FileFormatError(f"{path}: image of {rgb.shape[1]}x{rgb.shape[0]} pixels; TinyImageNet's are 64x64")
    return rgb.transpose(2, 0, 1)


def _read_wnids(path: Path) -> list[str]:
    wnids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not wnids:
        raise FileFormatError(f"{path} lists no class")
    seen: set[str] = set()
    for w in wnids:
        if w in seen:
            raise FileFormatError(f"{path} lists class {w!r} twice")
        seen.add(w)
    return wnids


def _images_in(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise FileFormatError(f"{folder} holds no image (.JPEG, .jpg or .png)")
    return files


def _val_annotations(path: Path, classes: dict[str, int]) -> list[tuple[str, int]]:
    """(file name, label) per line of ``val_annotations.txt``."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise FileFormatError(f"{path}:{number}: expected tab-separated file name and class id, got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in classes:
            raise FileFormatError(f"{path}:{number}: class {wnid!r} of {name!r} is not in wnids.txt")
        out.append((name, classes[wnid]))
    if not out:
        raise FileFormatError(f"{path} annotates no image")
    return out


def _stack(paths: Sequence[Path]) -> np.ndarray:
    out = np.empty((len(paths), 3, SIZE, SIZE), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = read_image(p)
    return out


@_register("tinyimagenet", needs_root=True)
def _load_tinyimagenet(root: Path, download: bool = False, train_per_class: int = 0) -> _Raw:
    """TinyImageNet from its official layout (module docstring). ``train_per_class`` > 0 keeps only the first that
    many training images of each class (by file name), for runs that must fit a small machine."""
    if train_per_class < 0:
        raise ValueError(f"tinyimagenet train_per_class must be >= 0 (0: all), got {train_per_class}")
    base = _base(root)
    wnids_path = base / "wnids.txt"
    if not wnids_path.is_file():
        raise _not_found(root, [wnids_path])
    wnids = _read_wnids(wnids_path)
    train_dirs = [base / "train" / w / "images" for w in wnids]
    ann_path, val_dir = base / "val" / "val_annotations.txt", base / "val" / "images"
    missing = [p for p in train_dirs if not p.is_dir()]
    missing += [p for p in (ann_path,) if not p.is_file()] + [p for p in (val_dir,) if not p.is_dir()]
    if missing:
        raise _not_found(root, missing)

    train_files: list[Path] = []
    train_labels: list[int] = []
    for label, folder in enumerate(train_dirs):
        files = _images_in(folder)
        files = files[:train_per_class] if train_per_class else files
        train_files += files
        train_labels += [label] * len(files)
    val = _val_annotations(ann_path, {w: i for i, w in enumerate(wnids)})
    val_files = [val_dir / name for name, _ in val]
    absent = [p for p in val_files if not p.is_file()]
    if absent:
        raise _not_found(root, absent)
    return _Raw(
        _stack(train_files),
        np.asarray(train_labels, dtype=np.int64),
        _stack(val_files),
        np.asarray([label for _, label in val], dtype=np.int64),
        len(wnids),
        scale=255.0,
        augment="crop_flip",
    )
