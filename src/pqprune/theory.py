"""Theory of pruning: the PQI retained-weight bound, the ℓ_q neuron bound and the probabilistic pruning gap.

math.md §4, §7 and §8; papers [Diao23], [Yang22], [Gao13], [Qian21].

* §4 — :func:`eta_r`, :func:`retained_bound_exact`, :func:`retained_bound_curve`: Theorem 2 of [Diao23] with the
  exact ``η_r`` of a given vector.
* §7 — :func:`lq_keep_counts` (used by the ``LqNeuron`` pruning method), :func:`lq_neuron_bound`,
  :func:`lq_layer_bound`, :func:`lq_network_bound`: the ℓ_q bound rule [Yang22, Gao13] per neuron, per layer and
  propagated to the output of a chain of Linear layers.
* §8 — :func:`magnitude_moment_uniform`, :func:`magnitude_moment_normal`, :func:`random_moment`: exact error
  moments of one pruned layer; :func:`hp_gap_bound` / :func:`guaranteed_probability`: a proven high-probability
  bound on ``sup_x ‖F(x) − F_pruned(x)‖`` for random FCNs/CNNs; :func:`monte_carlo_gap`: its Monte-Carlo check.

Pure maths on tensors: imports :mod:`pqprune.sparsity` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pqprune import sparsity


def _check_finite_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def lq_keep_counts(
    w: Tensor,
    q: float,
    eps: float,
    input_bound: float,
    relative: bool = False,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-neuron keep counts of the ℓ_q bound rule [Yang22, Gao13], math.md §7.

    For row ``i`` of ``w.reshape(out, -1)`` with survivors ``d_i`` (``mask`` True) and ``t_i = ‖w_i‖_q``
    over the survivors, keeping the ``m`` largest magnitudes leaves an ℓ₁ tail ``≤ t_i·m^{1−1/q}`` [Gao13], so
    with inputs ``|h_j| ≤ B`` the pre-activation changes by at most ``B·t_i·m^{1−1/q}``. That is ``≤ ε_i`` as
    soon as ``m ≥ (B·t_i/ε_i)^{q/(1−q)}``, hence

        m_i = min(d_i, ceil((B·‖w_i‖_q/ε_i)^{q/(1−q)})),

    with ``ε_i = eps`` (absolute) or ``ε_i = eps·B·‖w_i‖₁`` (``relative=True``, the tolerance as a fraction of
    the neuron's largest possible pre-activation). Rows without survivors, rows whose survivors are all zero
    and ``B = 0`` keep 0 weights (nothing can change). The power is evaluated in log space in float64 and
    clamped to ``d_i`` before rounding, so huge ratios do not overflow; ``ceil`` carries a 1e−9 relative
    tolerance so that exact integers are not rounded up by floating-point noise.

    Returns an int64 tensor with one entry per output row. Raises ``ValueError`` for ``q ∉ (0,1)``,
    ``eps ≤ 0``, ``input_bound < 0`` or a mask of the wrong shape/dtype.
    """
    sparsity.check_lq(q)
    _check_finite_positive("eps", eps)
    if not (isinstance(input_bound, (int, float)) and math.isfinite(input_bound) and input_bound >= 0):
        raise ValueError(f"input_bound must be a finite number >= 0, got {input_bound!r}")
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise ValueError("w must be a floating-point tensor")
    if mask is not None:
        if mask.shape != w.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, the weight has {tuple(w.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    stats = sparsity.row_power_sums(w, (q, 1.0), mask)
    d = stats.count  # float64 [rows]
    s_q = stats.sums[q]
    s_1 = stats.sums[1.0]
    nz = s_q > 0
    out = torch.zeros_like(d, dtype=torch.int64)
    if input_bound == 0 or not bool(nz.any()):
        return out
    log_t = torch.log(s_q[nz]) / q  # log ‖w_i‖_q
    if relative:
        log_eps = math.log(eps) + math.log(input_bound) + torch.log(s_1[nz])
    else:
        log_eps = torch.full_like(log_t, math.log(eps))
    log_m = (q / (1.0 - q)) * (math.log(input_bound) + log_t - log_eps)
    m = torch.exp(torch.clamp(log_m, max=math.log(float(d.max()) + 1.0)))
    m = torch.ceil(m * (1.0 - 1e-9))
    m = torch.minimum(m, d[nz])
    out[nz] = m.to(torch.int64)
    return out


# ============================================================================ shared helpers
Z95 = 1.959963984540054
"""Two-sided 95% standard-normal quantile (Wilson intervals)."""


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _check_density(rho: float, name: str = "density") -> None:
    if not (isinstance(rho, (int, float)) and 0 < rho <= 1):
        raise ValueError(f"{name} (keep probability) must be in (0, 1], got {rho!r}")


def _phi(x: float) -> float:
    """Standard normal density φ(x)."""
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _Phi(x: float) -> float:
    """Standard normal distribution function Φ(x)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _norm_sf2(a: float) -> float:
    """``P(|Z| > a) = 2(1 − Φ(a)) = erfc(a/√2)`` for a standard normal Z (accurate in the far tail)."""
    return math.erfc(a / math.sqrt(2.0))


def _norm_isf2(p: float) -> float:
    """The ``a ≥ 0`` with ``P(|Z| > a) = p`` (inverse of :func:`_norm_sf2`), by bisection on erfc."""
    if p >= 1.0:
        return 0.0
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _norm_sf2(mid) > p:
            lo = mid
        else:
            hi = mid
    return hi


def _gauss_trunc_m2(a: float) -> float:
    """``E[Z² 1{|Z| < a}] = (2Φ(a) − 1) − 2aφ(a)`` for Z ~ N(0,1), a ≥ 0 (math.md §8)."""
    if a <= 0:
        return 0.0
    if a == math.inf:
        return 1.0
    return max(0.0, math.erf(a / math.sqrt(2.0)) - 2.0 * a * _phi(a))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion [Wilson 1927]:

        (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n).
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p̂ = 0 (or 1) the lower (upper) limit is exactly 0 (1); floating point leaves ~1e-17 otherwise.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


# ============================================================================ §4: Theorem 2 with exact η_r
def _sorted_abs(w: Tensor, mask: Tensor | None = None) -> Tensor:
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise ValueError("w must be a floating-point tensor")
    a = w.detach().reshape(-1).to(torch.float64).abs()
    if mask is not None:
        if mask.shape != w.shape or mask.dtype != torch.bool:
            raise ValueError("mask must be a bool tensor of the weight's shape")
        a = a[mask.reshape(-1)]
    if not bool(torch.isfinite(a).all()):
        raise ValueError("w has NaN or infinite entries")
    return torch.sort(a, descending=True).values


def eta_r(w: Tensor, r: int, p: float = 0.5, mask: Tensor | None = None) -> float:
    """The smallest ``η_r`` of [Diao23, Theorem 2]: ``η_r = Σ_{i∉M_r}|w_i|^p / Σ_{i∈M_r}|w_i|^p``.

    ``M_r`` is the set of the ``r`` largest magnitudes (ties do not matter: the sums depend only on the
    sorted magnitudes). ``1 ≤ r ≤ d`` (d = survivors); ``η_d = 0``. Computed in float64.
    """
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p}")
    a = _sorted_abs(w, mask)
    d = a.numel()
    if not (isinstance(r, int) and 1 <= r <= d):
        raise ValueError(f"r must be an integer in [1, d={d}], got {r!r}")
    ap = a.pow(p)
    head = float(ap[:r].sum())
    if head <= 0:
        raise ValueError("the r largest magnitudes are all zero: η_r is undefined")
    return float(ap[r:].sum()) / head


def retained_bound_curve(w: Tensor, p: float = 0.5, q: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Theorem-2 lower bound for every ``r = 1 … d`` with the exact ``η_r`` [Diao23, Theorem 2], math.md §4:

        bound(r) = d · (1 + η_r)^{−q/(q−p)} · (1 − I_{p,q}(w))^{qp/(q−p)}  ≤  r.

    Returns a float64 tensor of length d (entry ``r−1`` is the bound at ``r``). The theorem says every entry is
    ``≤ r``; the bound is attained (= k) by an equal-magnitude k-sparse vector at r = k. Uses
    :func:`pqprune.sparsity.retained_bound` for the formula.
    """
    sparsity.check_pq(p, q)
    a = _sorted_abs(w, mask)
    d = a.numel()
    if d == 0 or float(a[0]) == 0.0:
        raise ValueError("w has no non-zero surviving entry: the PQ Index is undefined")
    ap = a.pow(p)
    head = torch.cumsum(ap, 0)
    total = head[-1]
    eta = torch.clamp((total - head) / head, min=0.0)  # η_r; +inf where the head is 0 (cannot happen at r≥1)
    index = sparsity.pq_from_sums(
        torch.tensor([float(d)], dtype=torch.float64), ap.sum().reshape(1), a.pow(q).sum().reshape(1), p, q
    )
    i = float(index[0])
    return d * (1.0 + eta) ** (-q / (q - p)) * (1.0 - i) ** (q * p / (q - p))


def retained_bound_exact(w: Tensor, r: int, p: float = 0.5, q: float = 1.0, mask: Tensor | None = None) -> float:
    """Theorem-2 bound at one ``r`` with the exact ``η_r`` [Diao23, Theorem 2]:

        r ≥ d (1 + η_r)^{−q/(q−p)} (1 − I_{p,q}(w))^{qp/(q−p)},  η_r = Σ_{i∉M_r}|w_i|^p / Σ_{i∈M_r}|w_i|^p.

    Returns the right-hand side (a float ≤ r). See :func:`retained_bound_curve`.
    """
    sparsity.check_pq(p, q)
    eta = eta_r(w, r, p, mask)
    a = _sorted_abs(w, mask)
    index = sparsity.pq_from_sums(
        torch.tensor([float(a.numel())], dtype=torch.float64),
        a.pow(p).sum().reshape(1),
        a.pow(q).sum().reshape(1),
        p,
        q,
    )
    return float(sparsity.retained_bound(float(index[0]), float(a.numel()), p, q, eta))


# ============================================================================ §7: ℓ_q neuron bound
def _check_input_bound(b: float) -> None:
    if not (isinstance(b, (int, float)) and math.isfinite(b) and b >= 0):
        raise ValueError(f"input_bound must be a finite number >= 0, got {b!r}")


def lq_neuron_bound(w: Tensor, keep: Tensor, q: float, input_bound: float, mask: Tensor | None = None) -> Tensor:
    """Per-neuron bound on the pre-activation change when row i keeps its ``m_i`` largest weights [Gao13, Yang22]:

        |Δz_i| ≤ B · ‖w_i‖_q · m_i^{1 − 1/q}     (inputs |h_j| ≤ B, ‖w_i‖_q over survivors),

    from the ℓ₁ tail bound ``Σ_{j>m}|w|_(j) ≤ ‖w‖_q m^{1−1/q}`` [Gao13]. Conventions: ``m_i ≥ d_i`` → 0 (nothing
    pruned); ``m_i = 0`` → ``B·‖w_i‖₁`` (everything pruned; the q-formula is +∞ there). Float64 [rows].
    """
    sparsity.check_lq(q)
    _check_input_bound(input_bound)
    stats = sparsity.row_power_sums(w, (q, 1.0), mask)
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
    survivors; ties are broken by the lower flat index (stable sort), so the count kept is exact."""
    rows = w.detach().reshape(w.shape[0], -1).to(torch.float64).abs()
    if mask is not None:
        rows = torch.where(mask.reshape(w.shape[0], -1), rows, torch.full_like(rows, -1.0))
    order = torch.sort(rows, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(rows.shape[1], device=rows.device).expand_as(order))
    kept = ranks < keep.to(ranks.dtype).unsqueeze(1)
    if mask is not None:
        kept &= mask.reshape(w.shape[0], -1)
    return kept.reshape(w.shape)


@dataclass
class LqLayerBound:
    """The ℓ_q bound rule applied to one layer (math.md §7). All tensors have one entry per output row."""

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
    stats = sparsity.row_power_sums(w, (1.0,), mask)
    kmask = keep_largest_mask(w, keep, mask)
    pruned = mask & ~kmask if mask is not None else ~kmask
    tail = input_bound * sparsity.row_power_sums(w, (1.0,), pruned).sums[1.0]
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
                chain.append((f"{mname}.weight" if mname else "weight", mod.weight.detach(),
                              None if mod.bias is None else mod.bias.detach()))
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
    _check_input_bound(input_bound)
    if hidden_bounds == "data":
        if data is None:
            raise ValueError("hidden_bounds='data' needs a data batch")
        if isinstance(model, nn.Module):
            other = [type(m).__name__ for m in model.modules() if isinstance(m, (nn.Tanh, nn.Hardtanh, nn.LeakyReLU))
                     and not isinstance(m, nn.ReLU)]
            if other:
                raise ValueError(f"hidden_bounds='data' replays ReLU activations; the model has {other}")
    h = None
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
            else:
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


# ============================================================================ §8: exact per-layer moments
@dataclass(frozen=True)
class ErrorMoment:
    """Exact moments of the error ``e = (W − W')x`` of one pruned layer (math.md §8)."""

    second_moment: float  # E‖e‖²
    pruned_fraction: float  # expected fraction of weights set to 0
    mean_zero: bool = True  # E e = 0 (true for symmetric weights and for the rescaled random rule)


def _check_layer_args(m: int, x_norm: float) -> None:
    if not (isinstance(m, int) and m >= 1):
        raise ValueError(f"m (output rows) must be an integer >= 1, got {m!r}")
    if not (math.isfinite(x_norm) and x_norm >= 0):
        raise ValueError(f"x_norm must be finite and >= 0, got {x_norm!r}")


def magnitude_moment_uniform(tau: float, K: float = 1.0, m: int = 1, x_norm: float = 1.0) -> ErrorMoment:
    """Magnitude pruning at threshold τ of ``W ~ U[−K, K]`` i.i.d. [Qian21], math.md §8:

        E‖e‖² = m‖x‖² E[W² 1{|W|<τ}] = m‖x‖² τ³/(3K),   pruned fraction τ/K   (τ ≤ K).

    Each ``e_i = Σ_j W_ij 1{|W_ij|<τ} x_j`` is a sum of independent zero-mean terms, so ``E e_i² = ‖x‖² E[W²1{|W|<τ}]``.
    For τ ≥ K everything is pruned (τ is clipped to K). Check: K=1, τ=0.3, ‖x‖=1, m=256 → 2.304.
    """
    _check_layer_args(m, x_norm)
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be finite and >= 0, got {tau!r}")
    _check_finite_positive("K", K)
    t = min(tau, K)
    return ErrorMoment(m * x_norm**2 * t**3 / (3.0 * K), t / K)


def magnitude_moment_normal(tau: float, sigma: float = 1.0, m: int = 1, x_norm: float = 1.0) -> ErrorMoment:
    """Magnitude pruning at threshold τ of ``W ~ N(0, σ²)`` i.i.d. [Qian21], math.md §8, with ``a = τ/σ``:

        E‖e‖² = m‖x‖² σ² [(2Φ(a) − 1) − 2aφ(a)],   pruned fraction 2Φ(a) − 1.

    (``∫_{−τ}^{τ} w² φ_σ(w) dw`` by parts.) Check: σ=1, τ=0.5, ‖x‖=1, m=256 → 7.90.
    """
    _check_layer_args(m, x_norm)
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be finite and >= 0, got {tau!r}")
    _check_finite_positive("sigma", sigma)
    a = tau / sigma
    return ErrorMoment(m * x_norm**2 * sigma**2 * _gauss_trunc_m2(a), math.erf(a / math.sqrt(2.0)))


def random_moment(rho: float, second_moment_w: float = 1.0, m: int = 1, x_norm: float = 1.0, rescale: bool = False) -> ErrorMoment:
    """Random pruning with keep probability ρ (independent Bernoulli mask B) [Qian21], math.md §8:

        W' = W·B:      E‖e‖² = m‖x‖² (1 − ρ) E[W²];
        W' = W·B/ρ:    E‖e‖² = m‖x‖² E[W²] (1 − ρ)/ρ   and  E e = 0 for any W distribution,

    since ``E(1 − B)² = 1 − ρ`` and ``E(1 − B/ρ)² = (1 − ρ)/ρ``. Pruned fraction 1 − ρ. ``second_moment_w`` is
    ``E[W²]`` (σ² for N(0,σ²), K²/3 for U[−K,K]). Check: E[W²]=1, ρ=0.7, m=256 → 76.8 and 109.7.
    """
    _check_layer_args(m, x_norm)
    _check_density(rho, "rho")
    if not (math.isfinite(second_moment_w) and second_moment_w >= 0):
        raise ValueError(f"second_moment_w must be finite and >= 0, got {second_moment_w!r}")
    factor = (1.0 - rho) / rho if rescale else 1.0 - rho
    return ErrorMoment(m * x_norm**2 * second_moment_w * factor, 1.0 - rho)


def magnitude_threshold(density: float, dist: str = "normal", scale: float = 1.0) -> float:
    """Threshold τ with ``P(|W| ≥ τ) = density``: ``σ·Φ^{−1}(1 − ρ/2)`` for N(0,σ²), ``K(1 − ρ)`` for U[−K,K]."""
    _check_density(density)
    _check_finite_positive("scale", scale)
    if dist == "normal":
        return scale * _norm_isf2(density)
    if dist == "uniform":
        return scale * (1.0 - density)
    raise ValueError(f"dist must be 'normal' or 'uniform', got {dist!r}")


# ============================================================================ §8: high-probability gap bound
ARCHS = ("fcn", "cnn")
METHODS = ("random", "magnitude")
DISTS = ("normal", "uniform")


@dataclass(frozen=True)
class RandomNetSpec:
    """A random target network with i.i.d. weights and how it is pruned (math.md §8, [Qian21]).

    * ``arch="fcn"``: ``F(x) = W_L σ(W_{L−1} … σ(W_1 x))``, ``depth = L`` layers, ``W_1: width × in_dim``,
      hidden ``width × width``, ``W_L: out_dim × width`` (``in_dim``/``out_dim`` default to ``width``).
    * ``arch="cnn"``: ``depth − 1`` conv layers with 3×3 kernels, stride 1, zero padding 1 and ``width``
      channels on an ``image = (C, H, W)`` input (default 1×8×8), then a linear read-out ``out_dim × (width·H·W)``
      (``out_dim`` defaults to 10).
    * σ = ReLU, no biases. Weights i.i.d. ``N(0, s²)`` (``dist="normal"``) or ``U[−K, K]`` with ``K = √3·s``
      (same variance), ``s = gain/√fan_in``.
    * ``method="random"``: each weight kept independently with probability ``density`` (no rescaling).
      ``method="magnitude"``: a weight is kept iff ``|w| ≥ τ`` with τ the *distribution's* quantile,
      ``P(|W| ≥ τ) = density`` (so entries stay independent; the realised density is ≈ ``density``).
    """

    arch: str = "fcn"
    width: int = 64
    depth: int = 2
    density: float = 0.5
    method: str = "random"
    dist: str = "normal"
    in_dim: int | None = None
    out_dim: int | None = None
    image: tuple[int, int, int] = (1, 8, 8)
    gain: float = 1.0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.dist not in DISTS:
            raise ValueError(f"dist must be one of {DISTS}, got {self.dist!r}")
        if not (isinstance(self.width, int) and self.width >= 1):
            raise ValueError(f"width must be an integer >= 1, got {self.width!r}")
        min_depth = 2 if self.arch == "cnn" else 1
        if not (isinstance(self.depth, int) and self.depth >= min_depth):
            raise ValueError(f"depth must be an integer >= {min_depth} for arch={self.arch}, got {self.depth!r}")
        _check_density(self.density)
        _check_finite_positive("gain", self.gain)
        for name in ("in_dim", "out_dim"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if len(self.image) != 3 or min(self.image) < 1:
            raise ValueError(f"image must be (C, H, W) with positive sizes, got {self.image!r}")

    @property
    def input_size(self) -> int:
        if self.arch == "fcn":
            return self.in_dim or self.width
        c, h, w = self.image
        return c * h * w

    def weight_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the weight tensors, in order."""
        if self.arch == "fcn":
            dims = [self.in_dim or self.width] + [self.width] * (self.depth - 1) + [self.out_dim or self.width]
            return [(dims[k + 1], dims[k]) for k in range(self.depth)]
        c, h, w = self.image
        shapes: list[tuple[int, ...]] = []
        for _ in range(self.depth - 1):
            shapes.append((self.width, c, 3, 3))
            c = self.width
        shapes.append((self.out_dim or 10, c * h * w))
        return shapes

    def scales(self) -> list[float]:
        """Standard deviation ``s_l = gain/√fan_in`` of each layer's weights."""
        return [self.gain / math.sqrt(math.prod(s[1:])) for s in self.weight_shapes()]


def _layer_matrix(shape: tuple[int, ...]) -> tuple[int, int, float]:
    """``(rows, cols, factor)``: the operator of a layer is bounded by ``factor·‖W.reshape(rows, cols)‖₂``.

    Linear: factor 1. Conv with a ``kh×kw`` kernel, stride ≥ 1, zero padding: ``conv(x) = W_mat · unfold(x)`` and
    every input pixel appears in at most ``kh·kw`` patches, so ``‖unfold(x)‖₂ ≤ √(kh·kw)‖x‖₂``: factor ``√(kh·kw)``.
    """
    rows, cols = shape[0], math.prod(shape[1:])
    factor = math.sqrt(math.prod(shape[2:])) if len(shape) > 2 else 1.0
    return rows, cols, factor


def _entry_law(kind: str, spec: RandomNetSpec, s: float) -> tuple[float | None, float, Callable[[float], float], Callable[[float], float]]:
    """The law of one entry of the full (``kind="full"``), kept (``"kept"``) or error (``"err"``) matrix.

    Returns ``(bound, m2, tail, m2_below)``: an almost-sure bound on ``|X|`` (None if unbounded), ``E X²``,
    ``b ↦ P(|X| > b)`` and ``b ↦ E[X² 1{|X| ≤ b}]``. Every law is symmetric (zero mean, also after truncation).
    """
    rho = spec.density
    if spec.dist == "uniform":
        K = math.sqrt(3.0) * s
        if kind == "full":
            return K, K * K / 3.0, lambda b: 0.0, lambda b: K * K / 3.0
        if spec.method == "random":
            frac = rho if kind == "kept" else 1.0 - rho
            return K, frac * K * K / 3.0, lambda b: 0.0, lambda b: frac * K * K / 3.0
        tau = magnitude_threshold(rho, "uniform", K)
        m2 = (K**3 - tau**3) / (3 * K) if kind == "kept" else tau**3 / (3 * K)
        return (K if kind == "kept" else tau), m2, lambda b: 0.0, lambda b: m2
    # Gaussian weights N(0, s²).
    if kind == "full":
        frac, lo = 1.0, 0.0
    elif spec.method == "random":
        frac, lo = (rho if kind == "kept" else 1.0 - rho), 0.0
    else:
        tau = magnitude_threshold(rho, "normal", s)
        if kind == "err":
            return tau, s * s * _gauss_trunc_m2(tau / s), lambda b: 0.0, lambda b: s * s * _gauss_trunc_m2(tau / s)
        frac, lo = 1.0, tau  # kept entries: W·1{|W| ≥ τ}
    g_lo = _gauss_trunc_m2(lo / s)
    m2 = frac * s * s * (1.0 - g_lo)
    return (
        None,
        m2,
        lambda b: frac * _norm_sf2(max(b, lo) / s),
        lambda b: frac * s * s * max(0.0, _gauss_trunc_m2(b / s) - g_lo) if b >= lo else 0.0,
    )


def random_matrix_norm_bound(kind: str, spec: RandomNetSpec, shape: tuple[int, ...], delta: float) -> float:
    """A bound ``t`` with ``P(factor·‖X‖₂ > t) ≤ δ`` for one layer's full/kept/error matrix (see :func:`hp_gap_bound`).

    Matrix Bernstein [Tropp 2012, Thm 1.6] for ``X = Σ_ij X_ij e_i e_jᵀ`` with independent symmetric entries,
    ``|X_ij| ≤ b``, ``v = E X_ij² · max(m, n)``:  ``P(‖X‖ ≥ t) ≤ (m+n) exp(−(t²/2)/(v + bt/3))``, i.e.
    ``t = bL/3 + √((bL/3)² + 2vL)``, ``L = ln((m+n)/δ)``. Unbounded (Gaussian-based) entries are truncated at
    the b with ``mn·P(|X| > b) ≤ δ/2``; conditionally on no entry exceeding b the entries are i.i.d. symmetric
    with variance ``E[X²1{|X|≤b}]/P(|X|≤b)``, and Bernstein gets the other δ/2.

    For a full Gaussian matrix the Davidson–Szarek bound ``s(√m + √n + √(2 ln(1/δ)))`` is also valid, and so it
    is for ``W∘B`` and ``W∘(1−B)`` under random pruning of Gaussian weights: conditionally on the mask B,
    ``X = W∘B`` is Gaussian and ``‖X‖₂`` is an s-Lipschitz function of a standard Gaussian vector, so
    ``P(‖X‖ ≥ E[‖X‖|B] + s·t | B) ≤ e^{−t²/2}`` (Tsirelson–Ibragimov–Sudakov); and
    ``E[‖X‖ | B] ≤ E‖W‖ ≤ s(√m + √n)`` by Jensen (``W∘(1−B)`` is independent of ``W∘B`` given B and has mean 0)
    and Gordon's inequality. The smaller of the valid bounds is returned. (Magnitude pruning makes ``W'`` and
    ``E`` discontinuous functions of W, so only Bernstein is used there.)
    """
    _check_delta(delta)
    rows, cols, factor = _layer_matrix(shape)
    s = spec.gain / math.sqrt(cols)
    bound, m2, tail, m2_below = _entry_law(kind, spec, s)
    if m2 <= 0:
        return 0.0
    if bound is not None:
        var, L = m2, math.log((rows + cols) / delta)
    else:
        p_entry = delta / (2.0 * rows * cols)
        lo, hi = 0.0, 40.0 * s
        for _ in range(200):  # smallest b with P(|X| > b) ≤ p_entry
            mid = 0.5 * (lo + hi)
            if tail(mid) > p_entry:
                lo = mid
            else:
                hi = mid
        bound = hi
        var = m2_below(bound) / max(1e-300, 1.0 - tail(bound))
        L = math.log((rows + cols) / (delta / 2.0))
    v = var * max(rows, cols)
    a = bound * L / 3.0
    t = a + math.sqrt(a * a + 2.0 * v * L)
    if spec.dist == "normal" and (kind == "full" or spec.method == "random"):
        t = min(t, s * (math.sqrt(rows) + math.sqrt(cols) + math.sqrt(2.0 * math.log(1.0 / delta))))
    return factor * t


def hp_gap_bound(spec: RandomNetSpec, delta: float) -> float:
    """An ε such that ``P(sup_{‖x‖₂≤1} ‖F(x) − F'(x)‖₂ ≤ ε) ≥ 1 − δ`` for the random network of ``spec`` [Qian21 setting].

    **Assumptions.** As in :class:`RandomNetSpec`: no biases; σ = ReLU (1-Lipschitz, σ(0) = 0); weights i.i.d.
    symmetric (Gaussian or uniform) across all entries and layers; the pruning decision of each weight depends
    only on that weight and independent coins (Bernoulli mask, or a fixed threshold τ), so the entries of
    ``E_l = W_l − W'_l`` and of ``W'_l`` are each i.i.d. symmetric. Inputs: the unit ℓ₂ ball (by positive
    homogeneity, the gap over a ball of radius R is R times this).

    **Propagation through depth** (deterministic). With ``h_l = σ(W_l h_{l−1})``, ``h'_l = σ(W'_l h'_{l−1})``,
    ``W'_l h'_{l−1} − W_l h_{l−1} = −E_l h'_{l−1} + W_l (h'_{l−1} − h_{l−1})``, ``‖σ(a) − σ(b)‖ ≤ ‖a − b‖`` and
    ``‖h'_{l−1}‖ ≤ Π_{k<l}‖W'_k‖·‖x‖`` give, for ‖x‖ ≤ 1,

        sup_x ‖F(x) − F'(x)‖ ≤ Σ_{l=1}^{L} ( Π_{k>l} ‖W_k‖ ) · ‖E_l‖ · ( Π_{k<l} ‖W'_k‖ ),

    with ‖·‖ the operator norm of the layer's linear map (for a conv layer ``≤ 3‖W.reshape(out, −1)‖₂``, see
    :func:`_layer_matrix`; the read-out is linear).

    **Concentration per layer.** Each of the ``3L − 2`` operator norms in the sum (``E_1..E_L``, ``W_2..W_L``,
    ``W'_1..W'_{L−1}``) is bounded by :func:`random_matrix_norm_bound` (matrix Bernstein, truncation for
    Gaussian tails, Davidson–Szarek for full Gaussian matrices) with failure probability ``δ/(3L − 2)``.

    **Union bound.** All ``3L − 2`` bounds hold simultaneously with probability ≥ 1 − δ, and then the gap is at
    most the returned value. No independence between layers is needed. The bound is valid but loose (Bernstein's
    log factor; the triangle inequality over layers; operator norms instead of the behaviour on the input set).
    """
    _check_delta(delta)
    shapes = spec.weight_shapes()
    L = len(shapes)
    d_each = delta / (3 * L - 2)
    full = [random_matrix_norm_bound("full", spec, sh, d_each) for sh in shapes]
    kept = [random_matrix_norm_bound("kept", spec, sh, d_each) for sh in shapes]
    err = [random_matrix_norm_bound("err", spec, sh, d_each) for sh in shapes]
    return sum(math.prod(full[l + 1 :]) * err[l] * math.prod(kept[:l]) for l in range(L))


def guaranteed_probability(spec: RandomNetSpec, eps: float) -> float:
    """The largest ``1 − δ`` for which :func:`hp_gap_bound` ``(spec, δ) ≤ ε`` — a valid lower bound on
    ``P(sup_{‖x‖≤1}‖F(x) − F'(x)‖ ≤ ε)`` under the assumptions of :func:`hp_gap_bound` (0 when no δ < 1 works).

    Found by bisection on log δ (the bound decreases in δ); the answer is rounded *down* (conservative).
    """
    _check_finite_positive("eps", eps)
    hi_d = 1.0 - 1e-12
    if hp_gap_bound(spec, hi_d) > eps:
        return 0.0
    lo_l, hi_l = math.log(1e-300), math.log(hi_d)
    if hp_gap_bound(spec, 1e-300) <= eps:
        return 1.0 - 1e-300
    for _ in range(100):
        mid = 0.5 * (lo_l + hi_l)
        if hp_gap_bound(spec, math.exp(mid)) <= eps:
            hi_l = mid
        else:
            lo_l = mid
    return max(0.0, 1.0 - math.exp(hi_l))


# ============================================================================ §8: Monte-Carlo estimator
def sample_network(spec: RandomNetSpec, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> tuple[list[Tensor], list[Tensor]]:
    """One draw of the target weights and of their pruned version, as :class:`RandomNetSpec` describes."""
    dense, pruned = [], []
    for shape, s in zip(spec.weight_shapes(), spec.scales()):
        if spec.dist == "normal":
            w = torch.randn(shape, generator=generator, dtype=dtype) * s
        else:
            K = math.sqrt(3.0) * s
            w = (torch.rand(shape, generator=generator, dtype=dtype) * 2.0 - 1.0) * K
        if spec.method == "random":
            keep = torch.rand(shape, generator=generator, dtype=dtype) < spec.density
        else:
            keep = w.abs() >= magnitude_threshold(spec.density, spec.dist, s if spec.dist == "normal" else math.sqrt(3.0) * s)
        dense.append(w)
        pruned.append(w * keep)
    return dense, pruned


def network_forward(spec: RandomNetSpec, weights: Sequence[Tensor], x: Tensor) -> Tensor:
    """``F(x)`` for a batch ``x`` of shape ``(batch, input_size)`` (ReLU between layers, none after the last)."""
    if spec.arch == "fcn":
        h = x
        for k, w in enumerate(weights):
            h = h @ w.T
            if k < len(weights) - 1:
                h = torch.relu(h)
        return h
    h = x.reshape(x.shape[0], *spec.image)
    for w in weights[:-1]:
        h = torch.relu(torch.nn.functional.conv2d(h, w, padding=1))
    return h.reshape(h.shape[0], -1) @ weights[-1].T


def _unit_rows(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)


def estimate_gap(
    spec: RandomNetSpec,
    dense: Sequence[Tensor],
    pruned: Sequence[Tensor],
    generator: torch.Generator,
    n_inputs: int = 256,
    restarts: int = 4,
    steps: int = 40,
) -> float:
    """Estimate ``sup_{‖x‖≤1}‖F(x) − F'(x)‖``: max over ``n_inputs`` uniform unit-sphere inputs, then projected
    gradient ascent on the sphere from the ``restarts`` best of them and ``restarts`` fresh random points.

    Both networks are positively homogeneous (ReLU, no bias), so the sup over the ball is attained on the sphere.
    The estimate is a *lower* estimate of the true sup (so ``P(gap_est ≤ ε) ≥ P(gap ≤ ε)``).
    """
    dtype = dense[0].dtype
    x = _unit_rows(torch.randn(n_inputs, spec.input_size, generator=generator, dtype=dtype))
    with torch.no_grad():
        g = (network_forward(spec, dense, x) - network_forward(spec, pruned, x)).norm(dim=1)
    best = float(g.max())
    if restarts <= 0 or steps <= 0:
        return best
    top = x[torch.topk(g, min(restarts, n_inputs)).indices]
    fresh = _unit_rows(torch.randn(restarts, spec.input_size, generator=generator, dtype=dtype))
    z = torch.cat([top, fresh]).clone()
    lr = 0.5
    for _ in range(steps):
        z.requires_grad_(True)
        gap = (network_forward(spec, dense, z) - network_forward(spec, pruned, z)).norm(dim=1)
        best = max(best, float(gap.detach().max()))
        (grad,) = torch.autograd.grad(gap.sum(), z)
        with torch.no_grad():
            z = _unit_rows(z + lr * _unit_rows(grad + 1e-300))
        lr *= 0.93
    with torch.no_grad():
        gap = (network_forward(spec, dense, z) - network_forward(spec, pruned, z)).norm(dim=1)
    return max(best, float(gap.max()))


@dataclass
class MonteCarloResult:
    """Result of :func:`monte_carlo_gap`."""

    spec: RandomNetSpec
    eps: float
    n_draws: int
    successes: int  # draws with gap ≤ ε
    p_hat: float  # successes / n_draws
    low: float  # Wilson 95% interval
    high: float
    gaps: Tensor  # float64 [n_draws], estimated sup-gaps
    guaranteed: float  # guaranteed_probability(spec, eps): the bound's lower bound on P(gap ≤ ε)
    seed: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            **{f"spec_{k}": v for k, v in self.spec.__dict__.items()},
            "eps": self.eps,
            "n_draws": self.n_draws,
            "successes": self.successes,
            "p_hat": self.p_hat,
            "low": self.low,
            "high": self.high,
            "guaranteed": self.guaranteed,
            "gap_mean": float(self.gaps.mean()),
            "gap_max": float(self.gaps.max()),
            "seed": self.seed,
        }


def monte_carlo_gap(
    spec: RandomNetSpec,
    eps: float,
    n_draws: int = 100,
    n_inputs: int = 256,
    restarts: int = 4,
    steps: int = 40,
    seed: int = 0,
) -> MonteCarloResult:
    """Monte-Carlo estimate of ``P(sup_{‖x‖≤1}‖F(x) − F'(x)‖ ≤ ε)`` [Qian21], math.md §8.

    ``n_draws`` independent (network, pruning) draws from ``spec`` (seeded by ``seed``; the same seed gives the
    same numbers); each gap by :func:`estimate_gap`; ``p̂ = #{gap ≤ ε}/N`` with its Wilson 95% interval, beside
    the probability :func:`guaranteed_probability` guarantees (which must not exceed the interval's top).
    """
    _check_finite_positive("eps", eps)
    if not (isinstance(n_draws, int) and n_draws >= 1):
        raise ValueError(f"n_draws must be an integer >= 1, got {n_draws!r}")
    if not (isinstance(n_inputs, int) and n_inputs >= 1):
        raise ValueError(f"n_inputs must be an integer >= 1, got {n_inputs!r}")
    gen = torch.Generator().manual_seed(seed)
    gaps = torch.empty(n_draws, dtype=torch.float64)
    for i in range(n_draws):
        dense, pruned = sample_network(spec, gen)
        gaps[i] = estimate_gap(spec, dense, pruned, gen, n_inputs=n_inputs, restarts=restarts, steps=steps)
    k = int((gaps <= eps).sum())
    low, high = wilson_interval(k, n_draws)
    return MonteCarloResult(spec, float(eps), n_draws, k, k / n_draws, low, high, gaps, guaranteed_probability(spec, eps), seed)
