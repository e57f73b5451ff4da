"""A proven high-probability bound on the pruning gap ``sup_{‖x‖≤1} ‖F(x) − F_pruned(x)‖`` of random FCNs and CNNs
[Qian21], docs/math.md §8: per-layer concentration of operator norms, a union bound over layers, Lipschitz
propagation through depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from pqprune.prune.methods.lq import _check_finite_positive
from pqprune.theory.moments import _check_delta, _check_density, _gauss_trunc_m2, _norm_sf2, magnitude_threshold

# ============================================================================ §8: high-probability gap bound
ARCHS = ("fcn", "cnn")
METHODS = ("random", "magnitude")
DISTS = ("normal", "uniform")


@dataclass(frozen=True)
class RandomNetSpec:
    """A random target network with i.i.d. weights and how it is pruned (docs/math.md §8, [Qian21]).

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


def _entry_law(
    kind: str, spec: RandomNetSpec, s: float
) -> tuple[float | None, float, Callable[[float], float], Callable[[float], float]]:
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
    return sum(math.prod(full[i + 1 :]) * err[i] * math.prod(kept[:i]) for i in range(L))


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
