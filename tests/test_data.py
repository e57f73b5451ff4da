"""pqprune.data: on-disk readers on fabricated files, built-in sets offline, splits, teacher, errors."""

from __future__ import annotations

import gzip
import os
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pqprune.experiment import data
from pqprune.experiment.data.registry import DatasetNotFound, get_dataset
from pqprune.files import FileFormatError


# --------------------------------------------------------------------------------------------- fabricators
def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    payload = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def _fake_idx_set(
    root: Path, subdir: str, n_train: int = 6, n_test: int = 4, gz: bool = False
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) + 3) % 10,
    }
    for stem, arr in arrays.items():
        _write_idx(root / subdir / "raw" / stem, arr, gz)
    return arrays


def _cifar_pickle(path: Path, x: np.ndarray, labels: list[int], label_key: bytes, old_numpy_name: bool = False) -> None:
    """A CIFAR batch as the real files are: a protocol-2 pickle of a dict with bytes keys."""
    blob = pickle.dumps(
        {b"batch_label": b"fake", label_key: labels, b"data": x, b"filenames": [b"a.png"] * len(x)}, protocol=2
    )
    if old_numpy_name:  # the real files were written with numpy 1.x: numpy.core.multiarray
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)


# --------------------------------------------------------------------------------------------- torchvision layouts
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    arrays = _fake_idx_set(tmp_path, "MNIST", gz=gz)
    d = get_dataset("mnist", tmp_path, val_fraction=0.0)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert d.sizes() == {"train": 6, "val": 0, "test": 4}
    expect = (arrays["train-images-idx3-ubyte"][:, None] / 255.0 - 0.1307) / 0.3081
    assert torch.allclose(d.train.x, torch.from_numpy(expect).float(), atol=1e-5)
    assert d.train.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert d.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert d.train.y.dtype == torch.int64 and d.train.x.dtype == torch.float32


def test_fashionmnist_uses_its_folder_and_stats(tmp_path: Path) -> None:
    arrays = _fake_idx_set(tmp_path, "FashionMNIST")
    d = get_dataset("fashionmnist", tmp_path, val_fraction=0.0)
    expect = (arrays["t10k-images-idx3-ubyte"][:, None] / 255.0 - 0.2860) / 0.3530
    assert torch.allclose(d.test.x, torch.from_numpy(expect).float(), atol=1e-5)
    with pytest.raises(DatasetNotFound):
        get_dataset("mnist", tmp_path)


def test_idx_wrong_size_is_a_format_error(tmp_path: Path) -> None:
    _fake_idx_set(tmp_path, "MNIST")
    p = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(FileFormatError, match="train-images-idx3-ubyte"):
        get_dataset("mnist", tmp_path)


@pytest.mark.parametrize("old_numpy_name", [False, True])
def test_cifar10_batches(tmp_path: Path, old_numpy_name: bool) -> None:
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-10-batches-py"
    batches = []
    for i in range(1, 6):
        x = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = [i % 10, (i + 1) % 10]
        _cifar_pickle(base / f"data_batch_{i}", x, labels, b"labels", old_numpy_name)
        batches.append((x, labels))
    xt = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    _cifar_pickle(base / "test_batch", xt, [7, 8, 9], b"labels", old_numpy_name)
    d = get_dataset("cifar10", tmp_path, val_fraction=0.0)
    assert d.input_shape == (3, 32, 32) and d.num_classes == 10 and d.augment == "crop_flip"
    assert d.sizes() == {"train": 10, "val": 0, "test": 3}
    assert d.train.y.tolist() == [lab for _, labs in batches for lab in labs]
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    expect = (torch.from_numpy(xt.reshape(3, 3, 32, 32)).float() / 255 - mean) / std
    assert torch.allclose(d.test.x, expect, atol=1e-5)


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    base = tmp_path / "cifar-100-python"
    _cifar_pickle(base / "train", rng.integers(0, 256, (4, 3072), dtype=np.uint8), [0, 50, 99, 3], b"fine_labels")
    _cifar_pickle(base / "test", rng.integers(0, 256, (2, 3072), dtype=np.uint8), [98, 1], b"fine_labels")
    d = get_dataset("cifar100", tmp_path, val_fraction=0.0)
    assert d.num_classes == 100 and d.train.y.tolist() == [0, 50, 99, 3] and d.test.y.tolist() == [98, 1]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_reader_refuses_code_in_pickles(tmp_path: Path) -> None:
    base = tmp_path / "cifar-100-python"
    base.mkdir(parents=True)
    (base / "train").write_bytes(pickle.dumps({b"data": _Evil(), b"fine_labels": [0]}, protocol=2))
    (base / "test").write_bytes((base / "train").read_bytes())
    with pytest.raises(FileFormatError, match="not allowed"):
        get_dataset("cifar100", tmp_path)


def test_svhn_mat_files(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)  # SVHN stores (H, W, C, N)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)})
    savemat(tmp_path / "test_32x32.mat", {"X": x[..., :2], "y": np.array([[3], [10]], dtype=np.uint8)})
    d = get_dataset("svhn", tmp_path, val_fraction=0.0)
    assert d.train.y.tolist() == [0, 1, 2, 0, 9] and d.test.y.tolist() == [3, 0]
    assert d.input_shape == (3, 32, 32)
    pixel = (x[4, 7, 2, 1] / 255.0 - 0.4728) / 0.1970  # image 1, channel 2, row 4, col 7
    assert d.train.x[1, 2, 4, 7].item() == pytest.approx(pixel, abs=1e-5)


@pytest.mark.parametrize("name", ["mnist", "fashionmnist", "cifar10", "cifar100", "svhn"])
def test_missing_data_set_is_one_clear_line(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFound) as err:
        get_dataset(name, tmp_path / "nowhere")
    msg = str(err.value)
    assert "\n" not in msg and name in msg
    assert str((tmp_path / "nowhere").resolve()) in msg  # the exact path looked at
    assert "--download" in msg and "torchvision" in msg
    assert isinstance(err.value, ValueError)


def test_download_without_torchvision_is_a_clear_error(tmp_path: Path) -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:
        with pytest.raises(DatasetNotFound, match="needs torchvision"):
            get_dataset("mnist", tmp_path, download=True)
    else:
        pytest.skip("torchvision is importable here; a download would use the network")


def test_unknown_name_and_option() -> None:
    with pytest.raises(ValueError, match="unknown data set 'imagenet'.*cifar10"):
        get_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown option.*colour"):
        get_dataset("digits", colour=True)
    with pytest.raises(ValueError, match="val_fraction"):
        get_dataset("digits", val_fraction=1.0)
    names = {"mnist5k", "digits", "mnist1d", "teacher", "mnist", "fashionmnist", "cifar10", "cifar100", "svhn"}
    assert names <= set(data.available())


# --------------------------------------------------------------------------------------------- built in, offline
@pytest.mark.slow
def test_digits_splits_sizes_and_determinism() -> None:
    a = get_dataset("digits", seed=3, val_fraction=0.1)
    b = get_dataset("digits", seed=3, val_fraction=0.1)
    c = get_dataset("digits", seed=4, val_fraction=0.1)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    sizes = a.sizes()
    assert sum(sizes.values()) == 1797 and sizes["test"] == 359 and sizes["val"] == round(0.1 * (1797 - 359))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.val.x, c.val.x)
    assert torch.equal(a.test.x, c.test.x)  # the test split does not depend on the seed
    # standardised with the statistics of the training part (train + val), never of test
    both = torch.cat([a.train.x, a.val.x])
    assert abs(float(both.mean())) < 1e-4 and float(both.std()) == pytest.approx(1.0, abs=1e-4)
    # splits are disjoint: no validation image is also a training image
    tr = {row.numpy().tobytes() for row in a.train.x}
    assert sum(row.numpy().tobytes() in tr for row in a.val.x) <= 2  # digits has a few exact duplicates


@pytest.mark.slow
def test_mnist5k_offline() -> None:
    d = get_dataset("mnist5k", val_fraction=0.1)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert d.sizes() == {"train": 4050, "val": 450, "test": 500}
    assert torch.bincount(d.test.y).tolist() == [50] * 10
    assert d.mean == (0.1307,) and d.std == (0.3081,)
    assert float(d.train.x.min()) == pytest.approx(-0.1307 / 0.3081, abs=1e-5)


@pytest.mark.slow
def test_mnist1d_offline_without_files_or_rng_side_effects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()
    d = get_dataset("mnist1d", val_fraction=0.0, num_samples=1000)  # small: generation is ~1 ms per sample
    assert list(tmp_path.iterdir()) == []  # mnist1d.get_dataset would have written a pickle here
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    assert d.sizes() == {"train": 800, "val": 0, "test": 200}
    assert d.input_shape == (1, 40) and d.num_classes == 10
    assert set(d.train.y.unique().tolist()) == set(range(10))


@pytest.mark.slow
def test_mnist1d_standard_size() -> None:
    d = get_dataset("mnist1d", val_fraction=0.1)
    assert d.sizes() == {"train": 3600, "val": 400, "test": 1000}


# --------------------------------------------------------------------------------------------- teacher
@pytest.mark.parametrize("dist", ["normal", "t", "cauchy"])
def test_teacher_rows_and_targets(dist: str) -> None:
    sizes = {"n_train": 200, "n_test": 50, "input_dim": 12, "hidden": (16,), "output_dim": 3}
    d = get_dataset("teacher", dist=dist, c=2.0, val_fraction=0.0, **sizes)
    teacher = d.extras["teacher"]
    assert [tuple(w.shape) for w in teacher.weights] == [(16, 12), (3, 16)]
    for w in teacher.weights:
        assert torch.allclose(w.abs().sum(dim=1), torch.full((w.shape[0],), 0.5), atol=1e-6)
    assert d.task == "regression" and d.train.y.dtype == torch.float32 and d.input_shape == (12,) and d.num_classes == 3
    assert torch.allclose(teacher(d.test.x), d.test.y, atol=1e-6)
    assert torch.allclose(teacher.as_module()(d.test.x), d.test.y, atol=1e-6)
    assert float(d.train.x.abs().max()) <= 1.0  # input bound B = 1


def test_teacher_classification_and_seeds() -> None:
    d = get_dataset("teacher", task="classification", n_train=100, n_test=20, val_fraction=0.2, seed=1)
    assert d.train.y.dtype == torch.int64 and d.sizes() == {"train": 80, "val": 20, "test": 20}
    assert torch.equal(d.test.y, d.extras["teacher"](d.test.x).argmax(dim=1))
    e = get_dataset("teacher", task="classification", n_train=100, n_test=20, val_fraction=0.2, seed=2)
    assert torch.equal(d.test.x, e.test.x)  # data_seed fixes the data; seed only moves the split
    f = get_dataset("teacher", data_seed=5, n_train=100, n_test=20)
    assert not torch.equal(f.test.x, d.test.x)
    with pytest.raises(ValueError, match="dist"):
        get_dataset("teacher", dist="laplace")
