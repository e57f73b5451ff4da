"""Models by name, built for a given input shape: ``linear``, ``mlp``, ``cnn``, ``resnet18``, ``wresnet28x8``, ``resnet50``.

Architectures follow the code of Diao et al. (2023), "Pruning deep neural networks from a sparsity perspective"
(ICLR): the MLP (hidden 128, scale 2, 2 layers, ReLU), the conv model (conv3x3-BN-ReLU-maxpool blocks of
[64, 128, 256, 512], global average pool, linear head), the CIFAR pre-activation ResNet18 (3x3 stem) and the
WideResNet-28 of that code, plus a bottleneck ResNet50. Their initialisation is kept: Kaiming-normal (fan_out)
convolutions, BatchNorm weight 1 / bias 0, zero biases.

Input shapes: ``(C, H, W)`` images use 2-D layers; ``(C, L)`` and ``(L,)`` sequences use the same networks with
1-D layers (``(L,)`` is read as one channel). ``linear`` and ``mlp`` flatten any shape. Nothing here knows about
pruning: which weights are prunable is decided by :func:`pqprune.measure.prunable_weights`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def _register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def deco(fn: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_REGISTRY)


def options(name: str) -> dict[str, Any]:
    """The extra keyword options model ``name`` accepts, with their defaults."""
    params = inspect.signature(_REGISTRY[_canonical(name)]).parameters.values()
    return {p.name: p.default for p in params if p.name not in ("input_shape", "num_classes")}


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(available())}")
    return key


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    # A private RNG stream: building a model with a seed leaves the caller's global generator untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, *, seed: int | None = None, **kw: Any
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (without the batch axis) and ``num_classes`` outputs.

    ``seed`` makes the initial weights reproducible without touching the global RNG. Extra keyword arguments
    are the model's options (see :func:`options`); an unknown one, or an input shape the model cannot take,
    raises ``ValueError`` naming it.
    """
    key = _canonical(name)
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be non-empty with positive sizes, got {tuple(input_shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    unknown = sorted(set(kw) - set(options(key)))
    if unknown:
        accepted = ", ".join(options(key)) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for model {key!r}; accepted: {accepted}")
    with _seeded(seed):
        model = _REGISTRY[key](shape, num_classes, **kw)
    return model


# --------------------------------------------------------------------------------------------- helpers
class _Ops:
    """The 1-D or 2-D flavour of the layers a conv net needs."""

    def __init__(self, nd: int) -> None:
        self.nd = nd
        self.conv: type[nn.Module] = nn.Conv1d if nd == 1 else nn.Conv2d
        self.bn: type[nn.Module] = nn.BatchNorm1d if nd == 1 else nn.BatchNorm2d
        self.maxpool: type[nn.Module] = nn.MaxPool1d if nd == 1 else nn.MaxPool2d
        self.avgpool: type[nn.Module] = nn.AdaptiveAvgPool1d if nd == 1 else nn.AdaptiveAvgPool2d


class ToChannels(nn.Module):
    """Reshape a batch of flat ``(N, L)`` sequences to ``(N, 1, L)`` so 1-D conv layers can take them."""

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


def _conv_geometry(model: str, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...], _Ops, bool]:
    """(channels, spatial sizes, ops, needs_unsqueeze) for a conv net on ``shape``."""
    if len(shape) == 1:
        return 1, shape, _Ops(1), True
    if len(shape) in (2, 3):
        return shape[0], shape[1:], _Ops(len(shape) - 1), False
    raise ValueError(f"model {model!r} takes inputs of shape (C, H, W), (C, L) or (L,); got {shape}")


def init_paper(m: nn.Module) -> None:
    """Initialisation of the paper's code: Kaiming-normal (fan_out) convs, BN 1/0, zero biases."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------- linear / MLP
@_register("linear")
def _linear(input_shape: tuple[int, ...], num_classes: int, bias: bool = True) -> nn.Module:
    """A single linear layer on the flattened input (CIFAR10: 3072x10 = 30,720 weights)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, bias=bias))
    model.apply(init_paper)
    return model


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


@_register("mlp")
def _mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: int = 128,
    scale: float = 2.0,
    layers: int = 2,
    activation: str = "relu",
) -> nn.Module:
    """The paper's MLP: ``layers`` hidden layers, the first of width ``hidden``, each next one ``scale`` times wider.

    MNIST / FashionMNIST: 784-128-256-10, 135,680 weights.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"mlp activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
    if hidden < 1 or layers < 0 or scale <= 0:
        raise ValueError(
            f"mlp needs hidden >= 1, layers >= 0, scale > 0; got hidden={hidden} layers={layers} scale={scale}"
        )
    blocks: list[nn.Module] = [nn.Flatten()]
    width_in, width = math.prod(input_shape), hidden
    for _ in range(layers):
        blocks += [nn.Linear(width_in, width), _ACTIVATIONS[activation]()]
        width_in, width = width, int(width * scale)
    blocks.append(nn.Linear(width_in, num_classes))
    model = nn.Sequential(*blocks)
    model.apply(init_paper)
    return model


# --------------------------------------------------------------------------------------------- CNN
@_register("cnn")
def _cnn(input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (64, 128, 256, 512)) -> nn.Module:
    """The paper's conv model: [conv3x3-BN-ReLU-maxpool2] per width (no pool after the last), global average
    pool, linear head. CIFAR10: 1,555,136 weights. A pool is skipped once the feature map is smaller than 2.
    """
    if not hidden:
        raise ValueError("cnn needs at least one hidden width")
    channels, spatial, ops, flat = _conv_geometry("cnn", input_shape)
    blocks: list[nn.Module] = [ToChannels()] if flat else []
    sizes = list(spatial)
    for i, width in enumerate(hidden):
        blocks += [ops.conv(channels, width, 3, 1, 1), ops.bn(width), nn.ReLU(inplace=True)]
        if i < len(hidden) - 1 and min(sizes) >= 2:
            blocks.append(ops.maxpool(2))
            sizes = [s // 2 for s in sizes]
        channels = width
    blocks += [ops.avgpool(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    model = nn.Sequential(*blocks)
    model.apply(init_paper)
    return model


# --------------------------------------------------------------------------------------------- ResNet18 (pre-activation)
class PreActBlock(nn.Module):
    """Pre-activation basic block; the 1x1 shortcut conv (when shapes change) reads the activated input."""

    expansion = 1

    def __init__(self, ops: _Ops, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.n1 = ops.bn(in_planes)
        self.conv1 = ops.conv(in_planes, planes, 3, stride, 1, bias=False)
        self.n2 = ops.bn(planes)
        self.conv2 = ops.conv(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = (
            ops.conv(in_planes, planes, 1, stride, bias=False) if stride != 1 or in_planes != planes else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.n1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.n2(out)))
        return out + short


class PreActResNet(nn.Module):
    """CIFAR pre-activation ResNet: 3x3 stem (stride 1, no max-pool), four stages, BN-ReLU, average pool, linear."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int], num_blocks: Sequence[int]
    ) -> None:
        super().__init__()
        channels, _, ops, flat = _conv_geometry("resnet18", input_shape)
        self.to_channels = ToChannels() if flat else nn.Identity()
        self.conv1 = ops.conv(channels, hidden[0], 3, 1, 1, bias=False)
        stages: list[nn.Module] = []
        in_planes = hidden[0]
        for i, (planes, n) in enumerate(zip(hidden, num_blocks)):
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            blocks = []
            for s in strides:
                blocks.append(PreActBlock(ops, in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.n4 = ops.bn(in_planes)
        self.pool = ops.avgpool(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(self.conv1(self.to_channels(x)))
        x = self.pool(torch.relu(self.n4(x))).flatten(1)
        return self.linear(x)


@_register("resnet18")
def _resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Pre-activation ResNet18 of the paper's code (CIFAR10: 11,164,352 weights incl. shortcuts and the head)."""
    model = PreActResNet(input_shape, num_classes, (64, 128, 256, 512), (2, 2, 2, 2))
    model.apply(init_paper)
    return model


# --------------------------------------------------------------------------------------------- WideResNet-28-8
class WideBlock(nn.Module):
    """Pre-activation wide basic block; when shapes change, the shortcut and conv1 both read the activated input."""

    def __init__(self, ops: _Ops, in_planes: int, out_planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.n1 = ops.bn(in_planes)
        self.conv1 = ops.conv(in_planes, out_planes, 3, stride, 1, bias=False)
        self.n2 = ops.bn(out_planes)
        self.conv2 = ops.conv(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        changes = in_planes != out_planes or stride != 1
        self.shortcut = ops.conv(in_planes, out_planes, 1, stride, bias=False) if changes else None

    def forward(self, x: Tensor) -> Tensor:
        act = torch.relu(self.n1(x))
        out = torch.relu(self.n2(self.conv1(act)))
        if self.drop_rate > 0:
            out = nn.functional.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + (self.shortcut(act) if self.shortcut is not None else x)


@_register("wresnet28x8")
def _wresnet28x8(
    input_shape: tuple[int, ...], num_classes: int, depth: int = 28, widen_factor: int = 8, drop_rate: float = 0.0
) -> nn.Module:
    """WideResNet-depth-k (Zagoruyko & Komodakis 2016) as in the paper's code: widths 16, 16k, 32k, 64k."""
    if (depth - 4) % 6 != 0:
        raise ValueError(f"wresnet depth must be 6n + 4, got {depth}")
    n = (depth - 4) // 6
    channels, _, ops, flat = _conv_geometry("wresnet28x8", input_shape)
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    blocks: list[nn.Module] = [ToChannels()] if flat else []
    blocks.append(ops.conv(channels, widths[0], 3, 1, 1, bias=False))
    in_planes = widths[0]
    for stage, out_planes in enumerate(widths[1:]):
        for j in range(n):
            blocks.append(WideBlock(ops, in_planes, out_planes, (1 if stage == 0 else 2) if j == 0 else 1, drop_rate))
            in_planes = out_planes
    blocks += [
        ops.bn(in_planes),
        nn.ReLU(inplace=True),
        ops.avgpool(1),
        nn.Flatten(),
        nn.Linear(in_planes, num_classes),
    ]
    model = nn.Sequential(*blocks)
    model.apply(init_paper)
    return model


# --------------------------------------------------------------------------------------------- ResNet50
class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv), post-activation."""

    expansion = 4

    def __init__(self, ops: _Ops, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = ops.conv(in_planes, planes, 1, bias=False)
        self.bn1 = ops.bn(planes)
        self.conv2 = ops.conv(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = ops.bn(planes)
        self.conv3 = ops.conv(planes, out, 1, bias=False)
        self.bn3 = ops.bn(out)
        changes = stride != 1 or in_planes != out
        self.downsample = (
            nn.Sequential(ops.conv(in_planes, out, 1, stride, bias=False), ops.bn(out)) if changes else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))


@_register("resnet50")
def _resnet50(input_shape: tuple[int, ...], num_classes: int, stem: str = "auto") -> nn.Module:
    """Bottleneck ResNet50 ([3, 4, 6, 3], as torchvision's used by the paper's code).

    ``stem="imagenet"``: 7x7 stride-2 conv + max-pool; ``"cifar"``: 3x3 stride-1 conv, no pool; ``"auto"``
    picks ``cifar`` for inputs no larger than 64 (the ImageNet stem would shrink 32x32 images to 8x8 at once).
    """
    channels, spatial, ops, flat = _conv_geometry("resnet50", input_shape)
    if stem == "auto":
        stem = "cifar" if max(spatial) <= 64 else "imagenet"
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"resnet50 stem must be 'auto', 'cifar' or 'imagenet', got {stem!r}")
    blocks: list[nn.Module] = [ToChannels()] if flat else []
    if stem == "imagenet":
        blocks += [ops.conv(channels, 64, 7, 2, 3, bias=False), ops.bn(64), nn.ReLU(inplace=True), ops.maxpool(3, 2, 1)]
    else:
        blocks += [ops.conv(channels, 64, 3, 1, 1, bias=False), ops.bn(64), nn.ReLU(inplace=True)]
    in_planes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for j in range(n):
            blocks.append(Bottleneck(ops, in_planes, planes, 2 if stage > 0 and j == 0 else 1))
            in_planes = planes * Bottleneck.expansion
    blocks += [ops.avgpool(1), nn.Flatten(), nn.Linear(in_planes, num_classes)]
    model = nn.Sequential(*blocks)
    model.apply(init_paper)
    return model
