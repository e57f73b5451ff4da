"""The l_q bound rule per neuron, per layer and through a chain of layers [Yang22, Gao13], docs/math.md §7.

Keep counts come from :func:`pqprune.prune.methods.lq.lq_keep_counts` (the rule the ``LqNeuron`` method prunes
with); this module bounds the change of each layer's output and, through Lipschitz constants and operator norms of
the later layers, of the network's output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pqprune.measure.indices import check_lq
from pqprune.measure.sums import row_power_sums
from pqprune.measure.weights import check_mask
from pqprune.prune.methods.lq import check_input_bound, lq_keep_counts
from pqprune.prune.select import smallest_in_rows

# ============================================================================ §7: ℓ_q neuron bound


def lq_neuron_bound(w: Tensor, keep: Tensor, q: float, input_bound: float, mask: Tensor | None = None) -> Tensor:
    """Per-neuron bound on the pre-activation change when row i keeps its ``m_i`` largest weights [Gao13, Yang22]:

        |Δz_i| ≤ B · ‖w_i‖_q · m_i^{1 − 1/q}     (inputs |h_j| ≤ B, ‖w_i‖_q over survivors),

    from the ℓ₁ tail bound ``Σ_{j>m}|w|_(j) ≤ ‖w‖_q m^{1−1/q}`` [Gao13]. Conventions: ``m_i ≥ d_i`` → 0 (nothing
    pruned); ``m_i = 0`` → ``B·‖w_i‖₁`` (everything pruned; the q-formula is +∞ there). Float64 [rows].
    """
    check_lq(q)
    check_input_bound(input_bound)
    if mask is not None:
        check_mask("w", mask, w.shape)
    stats = row_power_sums(w, (q, 1.0), mask)
    keep = keep.to(torch.float64)
    if keep.shape != stats.count.shape:
        raise ValueError(f"keep has shape {tuple(keep.shape)}, expected {tuple(stats.count.shape)}")
    t = stats.sums[q].pow(1.0 / q)
    safe_m = torch.clamp(keep, min=1.0)
    out = input_bound * t * safe_m.pow(1.0 - 1.0 / q)
    out = torch.where(keep <= 0, input_bound * stats.sums[1.0], out)
    return torch.where(keep >= stats.count, torch.zeros_like(out), out)


def keep_largest_mask(w: Tensor, keep: Tensor, mask: Tensor | None = None) -> Tensor:
    """Bool mask (shape of ``w``) keeping, in each row of ``w.reshape(out,-1)``, the ``keep[i]`` largest-magnitude
    survivors: the engine's exact selection (:func:`pqprune.prune.select.smallest_in_rows`) prunes the others, so
    the same keep count gives the same mask as a pruning step, ties included (the lower flat index is pruned
    first)."""
    rows = w.detach().reshape(w.shape[0], -1).abs()
    alive = (
        check_mask("w", mask, w.shape).reshape(rows.shape)
        if mask is not None
        else torch.ones_like(rows, dtype=torch.bool)
    )
    survivors = alive.sum(dim=1)
    prune = (survivors - keep.to(survivors.dtype).clamp(min=0)).clamp(min=0)
    pruned = smallest_in_rows(rows, prune, alive, "w")
    return (alive & ~pruned).reshape(w.shape)


@dataclass
class LqLayerBound:
    """The ℓ_q bound rule applied to one layer (docs/math.md §7). All tensors have one entry per output row."""

    name: str
    shape: tuple[int, ...]
    input_bound: float  # B used for this layer (|input| ≤ B)
    survivors: Tensor  # int64 d_i
    keep: Tensor  # int64 m_i
    neuron_bound: Tensor  # float64: B·‖w_i‖_q·m_i^{1−1/q} (≤ ε_i by construction)
    neuron_tail: Tensor  # float64: B·Σ_{pruned}|w_ij| — the exact worst case over the box, ≤ neuron_bound
    keep_mask: Tensor  # bool, shape of the weight
    op_norm: float = math.nan  # spectral norm ‖W‖₂ of the unpruned weight (2-D layers)

    @property
    def linf(self) -> float:
        """ℓ_∞ bound on the layer's pre-activation change: max_i neuron_bound_i."""
        return float(self.neuron_bound.max()) if self.neuron_bound.numel() else 0.0

    @property
    def l2(self) -> float:
        """ℓ₂ bound on the layer's pre-activation change: ‖(neuron_bound_i)_i‖₂."""
        return float(self.neuron_bound.norm())

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @property
    def total(self) -> int:
        return int(self.survivors.sum())


def lq_layer_bound(
    w: Tensor,
    q: float,
    eps: float,
    input_bound: float,
    relative: bool = False,
    mask: Tensor | None = None,
    name: str = "tensor",
) -> LqLayerBound:
    """Apply the ℓ_q bound rule to one layer [Yang22, Gao13]: keep counts ``m_i`` (:func:`lq_keep_counts`),
    the per-neuron bound ``B‖w_i‖_q m_i^{1−1/q} ≤ ε_i``, the exact worst case ``B·‖tail_i‖₁`` and the keep mask.

    For a conv weight ``(out, in, kh, kw)`` a "neuron" is one filter; its pre-activation at every spatial
    position is a dot product of the filter with an input patch of entries ``|h| ≤ B``, so the same bound holds
    position-wise (ℓ_∞ over positions).
    """
    keep = lq_keep_counts(w, q, eps, input_bound, relative=relative, mask=mask)
    stats = row_power_sums(w, (1.0,), mask)
    kmask = keep_largest_mask(w, keep, mask)
    pruned = mask & ~kmask if mask is not None else ~kmask
    tail = input_bound * row_power_sums(w, (1.0,), pruned).sums[1.0]
    nb = lq_neuron_bound(w, keep, q, input_bound, mask)
    op = math.nan
    if w.dim() == 2:
        eff = w.detach().to(torch.float64) * (mask if mask is not None else 1.0)
        op = float(torch.linalg.matrix_norm(eff, ord=2))
    return LqLayerBound(
        name=name,
        shape=tuple(w.shape),
        input_bound=float(input_bound),
        survivors=stats.count.to(torch.int64),
        keep=keep,
        neuron_bound=nb,
        neuron_tail=tail,
        keep_mask=kmask,
        op_norm=op,
    )


@dataclass
class LqNetworkBound:
    """The ℓ_q bound rule on a chain of Linear layers with 1-Lipschitz activations (see :func:`lq_network_bound`)."""

    layers: list[LqLayerBound]
    input_bound: float  # B_0
    output_bound: float  # ℓ₂ bound on ‖F(x) − F'(x)‖ from the per-neuron ℓ_q bounds (≤ ε each)
    output_bound_tail: float  # the same propagation from the exact per-neuron tails (tighter, still rigorous)
    contributions: list[float]  # term l of output_bound: Π_{k>l}‖W_k‖₂ · ‖δ_l‖₂
    hidden_bounds: str  # "propagate" (guaranteed on the whole box) or "data" (guaranteed on the batch)

    @property
    def kept(self) -> int:
        return sum(lb.kept for lb in self.layers)

    @property
    def total(self) -> int:
        return sum(lb.total for lb in self.layers)

    def masks(self) -> dict[str, Tensor]:
        return {lb.name: lb.keep_mask for lb in self.layers}


_LIPSCHITZ_1 = (nn.ReLU, nn.Identity, nn.Flatten, nn.Dropout, nn.Tanh, nn.Hardtanh, nn.ReLU6, nn.Sequential)


def linear_chain(obj: nn.Module | Mapping[str, Tensor] | Sequence) -> list[tuple[str, Tensor, Tensor | None]]:
    """``[(name, W, b)]`` of a chain of Linear layers, in order of application.

    Accepts an ``nn.Module`` whose sub-modules (in registration order, as in ``nn.Sequential``) are ``nn.Linear``
    and 1-Lipschitz activations fixing 0 in the sense ``|σ(z)| ≤ |z|`` (ReLU, Tanh, Hardtanh, ReLU6, Identity,
    Flatten, Dropout in eval mode; LeakyReLU with slope ≤ 1); a state dict whose 2-D ``*weight`` entries are
    taken in insertion order (bias: the matching ``*bias``); or a sequence of weights or ``(weight, bias)`` pairs.
    Consecutive shapes must chain. Anything else → ``ValueError``.
    """
    chain: list[tuple[str, Tensor, Tensor | None]] = []
    if isinstance(obj, nn.Module):
        for mname, mod in obj.named_modules():
            if isinstance(mod, nn.Linear):
                chain.append(
                    (
                        f"{mname}.weight" if mname else "weight",
                        mod.weight.detach(),
                        None if mod.bias is None else mod.bias.detach(),
                    )
                )
            elif isinstance(mod, nn.LeakyReLU):
                if abs(mod.negative_slope) > 1:
                    raise ValueError(f"{mname}: LeakyReLU slope {mod.negative_slope} is not 1-Lipschitz")
            elif not isinstance(mod, _LIPSCHITZ_1) and mod is not obj:
                raise ValueError(
                    f"{mname or 'model'}: {type(mod).__name__} is not supported by the ℓ_q network bound "
                    "(only Linear layers and 1-Lipschitz activations)"
                )
            elif mod is obj and not isinstance(mod, (nn.Sequential, nn.Linear)) and list(mod.parameters(recurse=False)):
                raise ValueError(f"{type(mod).__name__} holds parameters outside Linear layers")
    elif isinstance(obj, Mapping):
        for name, t in obj.items():
            if isinstance(t, Tensor) and name.endswith("weight") and t.dim() == 2 and t.is_floating_point():
                b = obj.get(name[: -len("weight")] + "bias")
                chain.append((name, t.detach(), b.detach() if isinstance(b, Tensor) else None))
            elif isinstance(t, Tensor) and name.endswith("weight") and t.dim() > 2:
                raise ValueError(f"{name}: a {t.dim()}-D weight cannot be chained by the network bound")
    else:
        for k, item in enumerate(obj):
            w, b = (item, None) if isinstance(item, Tensor) else tuple(item)
            chain.append((f"layer{k}.weight", w.detach(), None if b is None else b.detach()))
    if not chain:
        raise ValueError("no Linear layers found")
    for (n0, w0, _), (n1, w1, _) in zip(chain, chain[1:]):
        if w0.dim() != 2 or w1.dim() != 2 or w1.shape[1] != w0.shape[0]:
            raise ValueError(f"layers do not chain: {n0} {tuple(w0.shape)} → {n1} {tuple(w1.shape)}")
    return chain


def lq_network_bound(
    model: nn.Module | Mapping[str, Tensor] | Sequence,
    q: float,
    eps: float,
    input_bound: float | None = None,
    data: Tensor | None = None,
    relative: bool = False,
    hidden_bounds: str = "propagate",
) -> LqNetworkBound:
    """ℓ_q bound rule on every layer of ``F = W_L∘σ∘W_{L−1}∘…∘σ∘W_1`` and its propagation to the output [Yang22, Gao13].

    **Setting and assumptions.** ``F(x) = W_L σ(W_{L−1} … σ(W_1 x + b_1) …) + b_L`` with activations that are
    1-Lipschitz (ReLU: Lipschitz constant 1) and satisfy ``|σ(z)| ≤ |z|``; inputs in the box ``‖x‖_∞ ≤ B_0``
    (``input_bound``, or ``max |data|`` when only a batch is given). Layer ``l`` keeps, in each row, the ``m_i``
    largest weights (``W'_l``); biases are not pruned. ``h_l, h'_l`` are the dense and pruned activations.

    **Per layer.** With ``B'_{l−1} ≥ ‖h'_{l−1}‖_∞``, row i of ``δ_l = (W'_l − W_l) h'_{l−1}`` satisfies
    ``|δ_{l,i}| ≤ B'_{l−1}·‖tail_i‖₁ ≤ B'_{l−1}‖w_i‖_q m_i^{1−1/q} ≤ ε_i`` [Gao13]; hence
    ``‖δ_l‖_∞ ≤ max_i ε_i`` and ``‖δ_l‖₂ ≤ (Σ_i ε_i²)^{1/2}`` (``LqLayerBound.linf``/``l2``).

    **Through depth.** ``W'_l h'_{l−1} − W_l h_{l−1} = δ_l + W_l(h'_{l−1} − h_{l−1})`` and σ is 1-Lipschitz, so
    ``‖h'_l − h_l‖₂ ≤ ‖δ_l‖₂ + ‖W_l‖₂‖h'_{l−1} − h_{l−1}‖₂``; unrolling (``h'_0 = h_0 = x``):

        ‖F'(x) − F(x)‖₂ ≤ Σ_l ( Π_{k>l} ‖W_k‖₂ ) · ‖δ_l‖₂,

    the perturbation at layer l being amplified by the spectral norms (``torch.linalg.matrix_norm(ord=2)``) of the
    *unpruned* later layers.

    **Input bounds of later layers** (pruning at earlier layers changes them): ``hidden_bounds="propagate"``
    uses ``B'_l = max_i (‖w'_{l,i}‖₁·B'_{l−1} + |b_{l,i}|)`` for the *pruned* rows — a guarantee for every
    input of the box (it may be loose for deep nets; with ``relative=True`` the keep counts do not depend on B).
    ``hidden_bounds="data"`` uses ``B'_l = max |h'_l|`` measured on ``data`` through the pruned layers built so far:
    the guarantee then holds for the inputs of that batch only (an empirical figure elsewhere).

    Returns :class:`LqNetworkBound`; ``output_bound`` uses the ℓ_q per-neuron bounds, ``output_bound_tail`` the
    exact tails ``B'‖tail_i‖₁`` (both rigorous under the assumptions, the latter tighter).
    """
    if hidden_bounds not in ("propagate", "data"):
        raise ValueError(f"hidden_bounds must be 'propagate' or 'data', got {hidden_bounds!r}")
    chain = linear_chain(model)
    if input_bound is None:
        if data is None:
            raise ValueError("give input_bound or a data batch to measure it on")
        input_bound = float(data.detach().abs().max())
    check_input_bound(input_bound)
    if hidden_bounds == "data":
        if data is None:
            raise ValueError("hidden_bounds='data' needs a data batch")
        if isinstance(model, nn.Module):
            other = [
                type(m).__name__
                for m in model.modules()
                if isinstance(m, (nn.Tanh, nn.Hardtanh, nn.LeakyReLU)) and not isinstance(m, nn.ReLU)
            ]
            if other:
                raise ValueError(f"hidden_bounds='data' replays ReLU activations; the model has {other}")
    h: Tensor | None = None
    if data is not None:
        h = data.detach().reshape(data.shape[0], -1).to(torch.float64)
        if h.shape[1] != chain[0][1].shape[1]:
            raise ValueError(f"data has {h.shape[1]} features, the first layer expects {chain[0][1].shape[1]}")
    layers: list[LqLayerBound] = []
    b_prev = float(input_bound)
    for k, (name, w, b) in enumerate(chain):
        lb = lq_layer_bound(w, q, eps, b_prev, relative=relative, name=name)
        layers.append(lb)
        w_pruned = w.detach().to(torch.float64) * lb.keep_mask
        bias = b.detach().to(torch.float64) if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if k < len(chain) - 1:
            if hidden_bounds == "propagate":
                b_prev = float((w_pruned.abs().sum(1) * b_prev + bias.abs()).max())
            elif h is not None:
                h = torch.relu(h @ w_pruned.T + bias)  # |σ(z)| ≤ |z|: ReLU gives the largest such bound
                b_prev = float(h.abs().max())
    norms = [lb.op_norm for lb in layers]
    contributions, contributions_tail = [], []
    for k, lb in enumerate(layers):
        amp = math.prod(norms[k + 1 :])
        contributions.append(amp * lb.l2)
        contributions_tail.append(amp * float(lb.neuron_tail.norm()))
    return LqNetworkBound(
        layers=layers,
        input_bound=float(input_bound),
        output_bound=sum(contributions),
        output_bound_tail=sum(contributions_tail),
        contributions=contributions,
        hidden_bounds=hidden_bounds,
    )
