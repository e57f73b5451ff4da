"""Pruner: invariants over many rounds, optimizers never revive pruned weights, rewind, checkpoints, models."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pqprune import SAP, LotteryTicket, LqNeuron, OneShot, Pruner, RandomPruning, load_masks
from pqprune.measure.weights import as_rows


# ------------------------------------------------------------------------------------------------ models
def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.short(x))


class ResNet18(nn.Module):
    """CIFAR ResNet18 topology ([2, 2, 2, 2] basic blocks); ``width`` 64 is the real one."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            for j in range(2):
                layers.append(Block(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.enc(x.reshape(x.shape[0], -1, 16)).mean(dim=1))


MODELS = {
    "mlp": (mlp, (4, 1, 8, 8)),
    "cnn": (cnn, (4, 3, 8, 8)),
    "resnet18": (ResNet18, (2, 3, 16, 16)),
    "transformer": (Encoder, (4, 4, 16)),
}


def _train(
    model: nn.Module, opt: torch.optim.Optimizer, shape, steps: int, seed: int, pruner: Pruner | None = None
) -> None:
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(shape, generator=g)
        y = torch.randint(0, 10, (shape[0],), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if pruner is not None:
            _assert_pruned_zero(pruner)


def _assert_pruned_zero(pr: Pruner) -> None:
    for n, p in pr.maskset.params().items():
        assert (p.detach()[~pr.masks[n]] == 0).all(), n


# ------------------------------------------------------------------------------------------------ invariants
METHODS = {
    "sap": lambda: SAP(),
    "sap12": lambda: SAP(1.0, 2.0, eta=0.1, gamma=1.5, beta=0.5),
    "lt": lambda: LotteryTicket(0.3),
    "os": lambda: OneShot(0.25),
    "random": lambda: RandomPruning(0.2, seed=3),
    "lq": lambda: LqNeuron(0.5),
}


@pytest.mark.slow
@given(
    method=st.sampled_from(sorted(METHODS)),
    scope=st.sampled_from(["global", "layer", "neuron"]),
    seed=st.integers(0, 1000),
)
@settings(max_examples=40, deadline=None)
def test_invariants_over_many_rounds(method, scope, seed):
    torch.manual_seed(seed)
    model = mlp()
    pr = Pruner(model, METHODS[method](), scope=scope)
    g = torch.Generator().manual_seed(seed)
    prev = pr.masks
    for _ in range(6):
        with torch.no_grad():  # stand-in for training: weights move, with ties now and then
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g).round())
        pr.enforce()
        recs = pr.step()
        now = pr.masks
        pruned = {n: prev[n] & ~now[n] for n in now}
        assert all(not (now[n] & ~prev[n]).any() for n in now)  # masks only shrink
        assert sum(r.pruned for r in recs) == sum(int(v.sum()) for v in pruned.values())  # exact counts
        if scope == "layer":
            assert {r.unit: r.pruned for r in recs} == {n: int(v.sum()) for n, v in pruned.items()}
            assert all(r.survivors == int(prev[r.unit].sum()) for r in recs)
        if scope == "neuron":
            per_row = torch.cat([as_rows(v).sum(1) for v in pruned.values()]).tolist()
            assert [r.pruned for r in recs] == per_row
        if scope == "global":
            (rec,) = recs
            assert rec.survivors == sum(int(m.sum()) for m in prev.values())
        _assert_pruned_zero(pr)
        prev = now


@pytest.mark.slow
@pytest.mark.parametrize("opt_name", ["sgd", "adam", "adamw"])
def test_optimizers_never_revive_pruned_weights(opt_name):
    torch.manual_seed(0)
    model = cnn()
    pr = Pruner(model, LotteryTicket(0.4), scope="layer")
    make = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-3, nesterov=True),
        "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=1e-3),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    }[opt_name]
    opt = pr.wrap(make(model.parameters()))
    assert pr.wrap(opt) is opt  # idempotent
    for rnd in range(3):
        _train(model, opt, MODELS["cnn"][1], steps=5, seed=rnd, pruner=pr)  # momentum / moments are warm
        pr.step()
        _assert_pruned_zero(pr)
        for n, p in pr.maskset.params().items():  # per-entry optimizer state is cleared where pruned
            for v in opt.state[p].values():
                if isinstance(v, torch.Tensor) and v.shape == p.shape:
                    assert (v[~pr.masks[n]] == 0).all()
    _train(model, opt, MODELS["cnn"][1], steps=5, seed=9, pruner=pr)
    pr.unwrap(opt)
    _train(model, opt, MODELS["cnn"][1], steps=1, seed=10)
    assert any((p.detach()[~pr.masks[n]] != 0).any() for n, p in pr.maskset.params().items())


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-3, nesterov=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=1e-3, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_skipping_gradient_masks_changes_nothing_for_elementwise_optimizers(opt_name):
    """wrap() masks gradients only for optimizers that are not element-wise: for these, the model is the same
    bit for bit with or without the gradient pass, over training and pruning rounds."""
    runs = []
    for mask_grads in (None, True):
        torch.manual_seed(0)
        model = cnn()
        pr = Pruner(model, LotteryTicket(0.4), scope="layer")
        opt = pr.wrap(OPTIMIZERS[opt_name](model.parameters()), mask_grads=mask_grads)
        for rnd in range(3):
            _train(model, opt, MODELS["cnn"][1], steps=4, seed=rnd, pruner=pr)
            pr.step()
        _train(model, opt, MODELS["cnn"][1], steps=4, seed=7, pruner=pr)
        grads_masked = all((p.grad[~pr.masks[n]] == 0).all() for n, p in pr.maskset.params().items())
        runs.append((model.state_dict(), grads_masked))
    (skipped, skipped_masked), (full, full_masked) = runs
    assert full_masked and not skipped_masked  # the pass really was skipped, and really runs when asked
    assert all(torch.equal(skipped[k], full[k]) for k in full)


def test_gradients_are_masked_for_unknown_optimizers():
    class ScaledSGD(torch.optim.SGD):  # a subclass may couple entries: not trusted to be element-wise
        pass

    torch.manual_seed(0)
    model = mlp()
    pr = Pruner(model, LotteryTicket(0.5), scope="layer")
    pr.step()
    opt = pr.wrap(ScaledSGD(model.parameters(), lr=0.1, momentum=0.9))
    _train(model, opt, MODELS["mlp"][1], steps=3, seed=0, pruner=pr)
    assert all((p.grad[~pr.masks[n]] == 0).all() for n, p in pr.maskset.params().items())
    sgd = pr.wrap(torch.optim.SGD(model.parameters(), lr=0.1), mask_grads=True)
    pr.wrap(sgd)  # wrapping again replaces the earlier hooks: no gradient pass any more
    _train(model, sgd, MODELS["mlp"][1], steps=1, seed=1, pruner=pr)
    assert any((p.grad[~pr.masks[n]] != 0).any() for n, p in pr.maskset.params().items())


def test_enforce_follows_parameters_to_new_storage():
    """The cached detached views are rebuilt when a parameter's storage changes (load_state_dict(assign=True))."""
    torch.manual_seed(0)
    model = mlp()
    pr = Pruner(model, LotteryTicket(0.5), scope="layer")
    pr.step()
    fresh = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(fresh, assign=True)
    pr.enforce()
    _assert_pruned_zero(pr)
    assert any((p.detach()[pr.masks[n]] != 0).any() for n, p in pr.maskset.params().items())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_prune_train_rewind(name):
    make, shape = MODELS[name]
    torch.manual_seed(1)
    model = make()
    keys = list(model.state_dict())
    init = copy.deepcopy(model.state_dict())
    pr = Pruner(model, SAP(), scope="layer")
    if name == "transformer":
        assert set(pr.masks) == {
            "enc.self_attn.in_proj_weight",
            "enc.self_attn.out_proj.weight",
            "enc.linear1.weight",
            "enc.linear2.weight",
            "head.weight",
        }
    if name in ("cnn", "resnet18"):
        assert not any("bn" in n or (n.endswith("1.weight") and pr.masks[n].dim() == 1) for n in pr.masks)
    opt = pr.wrap(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4))
    for rnd in range(2):
        _train(model, opt, shape, steps=2, seed=rnd, pruner=pr)
        pr.step()
        pr.rewind()
        masks = pr.masks
        for k, v in model.state_dict().items():  # survivors and every other tensor back to init, pruned 0
            want = init[k] * masks[k] if k in masks else init[k]
            assert torch.equal(v, want), k
    assert pr.density() < 0.95
    assert list(model.state_dict()) == keys
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    model.eval()
    x = torch.randn(shape)
    out = model(x)
    clone = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    assert torch.equal(clone(x), out) and torch.equal(restored(x), out)


def test_rewind_to_saved_step_and_errors():
    torch.manual_seed(0)
    model = cnn()
    pr = Pruner(model, LotteryTicket(0.2, rewind_step=2))
    opt = pr.wrap(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    with pytest.raises(ValueError, match="no rewind point"):
        pr.rewind("point")
    _train(model, opt, MODELS["cnn"][1], steps=2, seed=0)
    pr.save_rewind_point()
    at_k = copy.deepcopy(model.state_dict())
    _train(model, opt, MODELS["cnn"][1], steps=3, seed=1)
    pr.step()
    pr.rewind()
    for k, v in model.state_dict().items():
        assert torch.equal(v, at_k[k] * pr.masks[k] if k in pr.masks else at_k[k]), k
    pr.rewind("initial")
    assert not torch.equal(model.state_dict()["1.running_mean"], at_k["1.running_mean"])
    with pytest.raises(ValueError, match="rewind target"):
        pr.rewind("somewhere")


@pytest.mark.parametrize("method", ["os", "random", "sap"])
def test_checkpoint_resume_equals_uninterrupted(method, tmp_path):
    def make():
        torch.manual_seed(4)
        m = mlp()
        return m, Pruner(m, METHODS[method](), scope="global")

    def perturb(m, t):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(t)))

    m1, p1 = make()
    for t in range(4):
        perturb(m1, t)
        p1.step()
    m2, p2 = make()
    for t in range(2):
        perturb(m2, t)
        p2.step()
    buf = io.BytesIO()
    torch.save({"model": m2.state_dict(), "pruner": p2.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m3, p3 = make()
    m3.load_state_dict(ck["model"])
    p3.load_state_dict(ck["pruner"])
    assert p3.round == 2
    for t in range(2, 4):
        perturb(m3, t)
        p3.step()
    assert all(torch.equal(p1.masks[n], p3.masks[n]) for n in p1.masks)
    with pytest.raises(ValueError, match="method 'os'|method 'random'|method 'sap'"):
        Pruner(mlp(), LotteryTicket()).load_state_dict(p1.state_dict())
    # masks alone: save, load_masks, load into a fresh pruner
    path = p1.save_masks(tmp_path / "m.safetensors")
    assert set(load_masks(path)) == set(p1.masks)
    _, p4 = make()
    p4.load_masks(path)
    assert p4.density() == pytest.approx(p1.density())


def test_pruner_copy_pickle_and_bad_input():
    torch.manual_seed(0)
    model = mlp()
    pr = Pruner(model, "sap", scope="neuron")
    opt = pr.wrap(torch.optim.Adam(model.parameters()))
    pr.step()
    pr2 = copy.deepcopy(pr)
    pr3 = pickle.loads(pickle.dumps(pr))
    for other in (pr2, pr3):
        assert other.maskset.model is other.model and other.model is not model
        other.step()
        assert other.density() < pr.density()
        assert not other._wrapped
    assert opt.state_dict() is not None
    with pytest.raises(TypeError, match="nn.Module"):
        Pruner("model", "sap")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Method"):
        Pruner(model, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="include pattern 'x\\*'"):
        Pruner(model, "sap", include="x*")
    state = pr.state_dict()
    state["masks"] = {k: v for k, v in list(state["masks"].items())[:1]}
    with pytest.raises(ValueError, match="no masks for"):
        Pruner(mlp(), "sap", scope="neuron").load_state_dict(state)


@pytest.mark.slow
def test_full_width_resnet18_step():
    torch.manual_seed(0)
    model = ResNet18(width=64)
    n = sum(p.numel() for p in Pruner(model, "lt").maskset.params().values())
    assert n > 11_000_000
    pr = Pruner(model, SAP(), scope="global")
    (rec,) = pr.step()
    assert rec.survivors == n and int(sum((~m).sum() for m in pr.masks.values())) == rec.pruned


def test_unit_record_names_and_deprecated_aliases():
    torch.manual_seed(0)
    pr = Pruner(mlp(), RandomPruning(0.25), scope="layer")
    pr.step()
    rec = pr.step()[0]  # second round of the 64×32 layer: 1,536 survive, a quarter of them go
    assert (rec.unit, rec.survivors, rec.pruned, rec.retained_target) == ("1.weight", 1536, 384, 1152)
    assert not rec.beta_clipped
    assert set(rec.to_dict()) == {"unit", "survivors", "index", "retained_target", "pruned", "beta_clipped"}
    for old, new in (("d", "survivors"), ("r", "retained_target"), ("c", "pruned")):
        with pytest.warns(DeprecationWarning, match=f"UnitRecord.{old} is deprecated.*UnitRecord.{new}"):
            assert getattr(rec, old) == getattr(rec, new)


def test_a_bad_scope_fails_where_it_is_set():
    pr = Pruner(mlp(), "sap")
    assert pr.scope == "global"  # the method's default, as in `pqprune run`
    with pytest.raises(ValueError, match="scope must be one of .* got 'layers'"):
        pr.scope = "layers"
    assert pr.scope == "global" and pr.step()  # the bad value was never taken
    pr.scope = "neuron"
    assert pr.step()[0].unit.endswith("[0]")
    with pytest.raises(ValueError, match="got 'row'"):
        Pruner(mlp(), "sap", scope="row")
    assert Pruner(mlp(), "lq").scope == "neuron"
    old = pickle.loads(pickle.dumps(pr))
    assert old.scope == "neuron"


def test_load_masks_of_a_missing_file_names_it(tmp_path):
    from pqprune.files import FileFormatError

    missing = tmp_path / "nope.safetensors"
    for load in (load_masks, Pruner(mlp(), "sap").load_masks):
        with pytest.raises(FileNotFoundError, match="nope.safetensors: no such file") as info:
            load(missing)
        assert info.value.filename == str(missing) and isinstance(info.value, FileFormatError)
