"""pqprune.models: exact prunable-weight counts of the paper's models, shape adaptation, seeding, errors."""

from __future__ import annotations

import pytest
import torch

from pqprune.experiment import models
from pqprune.experiment.models import build_model
from pqprune.measure.weights import prunable_weights


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in prunable_weights(model).values())


@pytest.mark.parametrize(
    ("name", "shape", "classes", "expected"),
    [
        ("mlp", (1, 28, 28), 10, 135_680),  # FashionMNIST: 784-128-256-10
        ("cnn", (3, 32, 32), 10, 1_555_136),  # CIFAR10
        ("resnet18", (3, 32, 32), 10, 11_164_352),  # CIFAR10, incl. 1x1 shortcuts and the head
        ("linear", (3, 32, 32), 10, 30_720),  # CIFAR10
    ],
)
def test_prunable_counts_of_the_paper(name: str, shape: tuple[int, ...], classes: int, expected: int) -> None:
    assert _count(build_model(name, shape, classes)) == expected


@pytest.mark.slow
def test_large_models_build_with_standard_sizes() -> None:
    # Counted, never run forward: these are the CIFAR WideResNet-28-8 (~23.3M) and ResNet50 (~23.5M).
    assert _count(build_model("wresnet28x8", (3, 32, 32), 10)) == 23_340_464
    assert _count(build_model("resnet50", (3, 32, 32), 10)) == 23_467_712


_SHAPES = [(1, 8, 8), (1, 40), (20,)]


@pytest.mark.parametrize(
    ("name", "shape"),
    [(n, s) for n in ("linear", "mlp", "cnn", "resnet18", "wresnet28x8") for s in _SHAPES]
    + [("resnet50", (1, 40))]
    + [pytest.param("resnet50", s, marks=pytest.mark.slow) for s in ((1, 8, 8), (20,))],
)
def test_forward_on_small_and_1d_inputs(name: str, shape: tuple[int, ...]) -> None:
    kw = {"widen_factor": 1, "depth": 10} if name == "wresnet28x8" else {}
    model = build_model(name, shape, 7, seed=0, **kw)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_cnn_uses_1d_layers_for_sequences() -> None:
    model = build_model("cnn", (1, 40), 10)
    assert any(isinstance(m, torch.nn.Conv1d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    # 1-D count mirrors 2-D: kernel 3 instead of 3x3
    assert _count(model) == 1 * 64 * 3 + 64 * 128 * 3 + 128 * 256 * 3 + 256 * 512 * 3 + 512 * 10


def test_seed_is_reproducible_and_private() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model("mlp", (1, 8, 8), 10, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    b = build_model("mlp", (1, 8, 8), 10, seed=5)
    c = build_model("mlp", (1, 8, 8), 10, seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_mlp_options() -> None:
    model = build_model("mlp", (40,), 10, hidden=32, scale=1.0, layers=3)
    assert [tuple(w.shape) for w in prunable_weights(model).values()] == [(32, 40), (32, 32), (32, 32), (10, 32)]


def test_errors_name_the_offender() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg16'.*resnet18"):
        build_model("vgg16", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="unknown option.*width.*'cnn'"):
        build_model("cnn", (3, 32, 32), 10, width=3)
    with pytest.raises(ValueError, match=r"'resnet18' takes inputs of shape"):
        build_model("resnet18", (1, 2, 3, 4), 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (4,), 0)
    assert set(models.available()) == {"linear", "mlp", "cnn", "resnet18", "wresnet28x8", "resnet50"}
