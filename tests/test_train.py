"""pqprune.train: determinism, learning, hook order around clipping, evaluate, interruption."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pqprune.experiment.data.registry import get_dataset
from pqprune.experiment.models import build_model
from pqprune.experiment.train import (
    Metrics,
    TrainConfig,
    augment_crop_flip,
    cosine_lr,
    evaluate,
    resolve_device,
    train_epochs,
)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", seed=0)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights(digits) -> None:
    sub = (digits.train.x[:300], digits.train.y[:300])
    runs = []
    for _ in range(2):
        model = build_model("cnn", digits.input_shape, 10, seed=0, hidden=(8, 16))
        train_epochs(model, sub, 2, TrainConfig(batch_size=100), seed=7)
        runs.append(_state(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    other = build_model("cnn", digits.input_shape, 10, seed=0, hidden=(8, 16))
    train_epochs(other, sub, 2, TrainConfig(batch_size=100), seed=8)
    assert not all(torch.equal(runs[0][k], other.state_dict()[k]) for k in runs[0])


def test_mlp_learns_digits(digits) -> None:
    model = build_model("mlp", digits.input_shape, 10, seed=0)
    before = evaluate(model, digits.val)
    result = train_epochs(model, digits.train, 3, seed=0)
    after = evaluate(model, digits.val)
    assert result.epochs[-1].loss < result.epochs[0].loss
    assert after.loss < before.loss and after.accuracy > 0.85
    assert [e.epoch for e in result.epochs] == [0, 1, 2] and result.steps == 3 * math.ceil(len(digits.train) / 250)


def test_cosine_restarts_each_call(digits) -> None:
    lrs: list[float] = []
    model = build_model("linear", digits.input_shape, 10, seed=0)
    for _ in range(2):
        train_epochs(model, digits.train, 4, on_epoch=lambda e: lrs.append(e.lr))
    expect = [cosine_lr(0.1, e, 4) for e in range(4)]
    assert lrs == expect * 2 and lrs[0] == 0.1 and lrs[2] == pytest.approx(0.05)


def test_hook_order_and_masked_weights_stay_put() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    model = nn.Sequential(nn.Linear(6, 3))
    frozen = torch.zeros_like(model[0].weight, dtype=torch.bool)
    frozen[:, :3] = True
    start = model[0].weight.detach().clone()
    events: list[str] = []
    norms: list[float] = []

    def before_step() -> None:
        events.append("before")
        model[0].weight.grad[frozen] = 1e6  # huge grads: clipping would shrink the others if it ran first...
        model[0].weight.grad[frozen] = 0.0  # ...but masking comes first, so only surviving grads are clipped

    def after_step() -> None:
        events.append("after")
        norms.append(float(torch.linalg.norm(model[0].weight.grad)))

    cfg = TrainConfig(lr=0.5, momentum=0.0, nesterov=False, weight_decay=0.0, batch_size=10, clip_norm=1.0)
    on_step = lambda s: events.append("on_step")  # noqa: E731
    train_epochs(model, (x, y), 2, cfg, before_step=before_step, after_step=after_step, on_step=on_step)
    assert events == ["before", "after", "on_step"] * 8
    assert torch.equal(model[0].weight[frozen], start[frozen])  # zeroed grads → unchanged by plain SGD
    assert not torch.equal(model[0].weight[~frozen], start[~frozen])
    assert all(n <= 1.0 + 1e-5 for n in norms)  # clipped after masking, to the surviving grads' norm


def test_clipping_happens_after_before_step() -> None:
    # A before_step that scales grads up is undone by the clip that follows it.
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    model = nn.Linear(4, 2)
    seen: list[float] = []

    def before_step() -> None:
        for p in model.parameters():
            p.grad.mul_(1e3)

    def after_step() -> None:
        seen.append(float(torch.linalg.norm(torch.cat([p.grad.flatten() for p in model.parameters()]))))

    cfg = TrainConfig(momentum=0.0, nesterov=False, batch_size=8, clip_norm=1.0)
    train_epochs(model, (x, y), 1, cfg, before_step=before_step, after_step=after_step)
    assert seen and seen[0] == pytest.approx(1.0, rel=1e-4)


def test_evaluate_hand_made() -> None:
    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x  # the inputs are the logits

    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 0])
    m = evaluate(Fixed(), (logits, y), batch_size=3)
    assert isinstance(m, Metrics) and m.accuracy == 0.5
    assert m.loss == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    model = Fixed().train()
    evaluate(model, (logits, y))
    assert model.training  # mode restored


def test_regression_reports_mse_and_r2() -> None:
    data = get_dataset("teacher", n_train=300, n_test=100, input_dim=5, hidden=(8,), output_dim=2, val_fraction=0.0)
    teacher = data.extras["teacher"].as_module()
    perfect = evaluate(teacher, data.test)
    assert perfect.loss == pytest.approx(0.0, abs=1e-10) and perfect.accuracy == pytest.approx(1.0)
    model = build_model("mlp", data.input_shape, data.num_classes, seed=0, hidden=16, layers=1)
    res = train_epochs(model, data.train, 3, TrainConfig(lr=0.05, batch_size=50))
    assert all(math.isfinite(e.loss) for e in res.epochs)
    assert (
        evaluate(model, data.test).loss
        < evaluate(build_model("mlp", (5,), 2, seed=0, hidden=16, layers=1), data.test).loss
    )


def test_keyboard_interrupt_still_enforces_after_step(digits) -> None:
    model = build_model("linear", digits.input_shape, 10, seed=0)
    calls = {"after": 0}

    def after_step() -> None:
        calls["after"] += 1

    def stop(info) -> None:
        if info.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_epochs(model, digits.train, 5, after_step=after_step, on_step=stop)
    assert calls["after"] == 3 and model.training


def test_crop_flip_is_seeded_and_shape_preserving() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = augment_crop_flip(x, torch.Generator().manual_seed(0))
    b = augment_crop_flip(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    same = augment_crop_flip(x, torch.Generator().manual_seed(0), pad=0)
    assert all(torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(-1)) for i in range(2))


def test_config_and_device_errors() -> None:
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="mixup")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_masked_gradients_keep_pruned_weights_zero_without_rezeroing(digits) -> None:
    """The loop masks gradients and does not re-zero after each step: with the paper's SGD (Nesterov momentum,
    weight decay, clipping) that gives bit for bit the weights of re-zeroing after every step."""
    from pqprune import LotteryTicket, Pruner

    states = []
    for rezero in (True, False):
        model = build_model("mlp", digits.input_shape, digits.num_classes, seed=0)
        pruner = Pruner(model, LotteryTicket(0.5), scope="layer")
        pruner.step()
        pruner.rewind()
        after = pruner.enforce if rezero else None
        train_epochs(model, digits.train, 2, seed=3, before_step=pruner.maskset.mask_grads, after_step=after)
        for n, p in pruner.maskset.params().items():
            assert bool((p.detach()[~pruner.masks[n]] == 0).all()), n
        states.append(_state(model))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_choose_threads_by_work_per_batch() -> None:
    from pqprune.experiment.train import SMALL_WORK, choose_threads, multiply_adds

    x = torch.randn(4, 1, 8, 8)
    conv = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.Flatten(), nn.Linear(6 * 64, 10))
    assert multiply_adds(conv, x[:1]) == 64 * 6 * 9 + 10 * 384  # 3×3 kernels over 64 positions, then the head
    assert multiply_adds(conv, x) == 4 * multiply_adds(conv, x[:1])
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert choose_threads(0, conv, x, batch_size=250) == 1  # 1.6e6 multiply-adds a batch: small
        assert choose_threads(0, conv, x, batch_size=SMALL_WORK) == 2  # large: the process's own count
        assert choose_threads(3, conv, x, batch_size=250) == 3  # asked for
        assert torch.get_num_threads() == 2  # choosing changes nothing
    finally:
        torch.set_num_threads(old)
