"""Tests of pqprune.theory: docs/math.md §4 (Theorem 2), §7 (ℓ_q bound) and §8 (moments, high-probability bound, Monte Carlo).

Measured figures quoted in docstrings below (seeded, this machine):
* ℓ_q per-neuron bound B‖w‖_q m^{1−1/q} vs the exact worst case B‖tail‖₁ (Cauchy rows, d=256, q=0.5):
  median factor ≈ 20–30 (the Gao13 tail bound is loose on real rows; the exact tail is attained).
* ℓ_q network bound (3-layer Cauchy teacher) vs the largest output change seen on 40k box inputs incl. corners:
  ≈ 10⁴ with the ℓ_q per-neuron bounds, ≈ 10²–5·10² with the exact tails (same propagation).
* High-probability gap bound vs Monte Carlo (depth 2, density 0.5–0.9, 20 draws): ε the bound needs for
  1−δ = 0.9 over the empirical 90% quantile of the gap: FCN width 16–64 ≈ 6–14× (random, Gaussian),
  ≈ 16–27× (uniform weights or magnitude pruning); CNN (8 channels, 3×3, 1×8×8) ≈ 24–42× (random, Gaussian),
  ≈ 100–140× otherwise. At ε where the Monte-Carlo p̂ is ≈ 0.5 the bound guarantees 0.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pqprune import theory as T

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------- §8 moments
M, N = 256, 512


def _unit_x(gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(N, generator=gen, dtype=torch.float64)
    return x / x.norm()


def _simulate(make_err, draws: int = 60, seed: int = 0) -> tuple[float, float, float]:
    """Mean and standard error of ‖(W − W')x‖² over seeded draws, and the mean pruned fraction."""
    gen = torch.Generator().manual_seed(seed)
    x = _unit_x(gen)
    vals, fracs = [], []
    for _ in range(draws):
        err, frac = make_err(gen)
        vals.append(float((err @ x).square().sum()))
        fracs.append(frac)
    v = torch.tensor(vals, dtype=torch.float64)
    return float(v.mean()), float(v.std() / math.sqrt(draws)), sum(fracs) / draws


def test_moment_closed_forms_match_math_md_values():
    assert T.magnitude_moment_uniform(0.3, K=1.0, m=256, x_norm=1.0).second_moment == pytest.approx(2.304, abs=1e-12)
    assert T.magnitude_moment_uniform(0.3, K=1.0, m=256).pruned_fraction == pytest.approx(0.3)
    g = T.magnitude_moment_normal(0.5, sigma=1.0, m=256, x_norm=1.0)
    assert round(g.second_moment, 2) == 7.90
    assert g.pruned_fraction == pytest.approx(0.382925, abs=1e-6)
    assert T.random_moment(0.7, 1.0, m=256).second_moment == pytest.approx(76.8)
    assert round(T.random_moment(0.7, 1.0, m=256, rescale=True).second_moment, 1) == 109.7
    # Against independent arithmetic: σ²[(2Φ(a)−1) − 2aφ(a)] with scipy's Φ.
    from scipy.stats import norm

    a = 0.5
    assert g.second_moment == pytest.approx(256 * ((2 * norm.cdf(a) - 1) - 2 * a * norm.pdf(a)), rel=1e-12)
    # Scaling: m‖x‖² and σ² enter linearly.
    assert T.magnitude_moment_normal(1.0, 2.0, m=10, x_norm=3.0).second_moment == pytest.approx(
        10 * 9 * 4 * T.magnitude_moment_normal(0.5, 1.0).second_moment
    )


@pytest.mark.parametrize(
    "case",
    ["uniform_magnitude", "normal_magnitude", "random", "random_rescaled"],
)
def test_moments_against_seeded_simulation(case):
    """Closed form vs 60 seeded 256×512 draws: |mean − formula| ≤ 4 standard errors (and ≤ 3% relative)."""
    if case == "uniform_magnitude":
        exact = T.magnitude_moment_uniform(0.3, 1.0, M)

        def make(gen):
            w = torch.rand(M, N, generator=gen, dtype=torch.float64) * 2 - 1
            pruned = w.abs() < 0.3
            return w * pruned, float(pruned.double().mean())

    elif case == "normal_magnitude":
        exact = T.magnitude_moment_normal(0.5, 1.0, M)

        def make(gen):
            w = torch.randn(M, N, generator=gen, dtype=torch.float64)
            pruned = w.abs() < 0.5
            return w * pruned, float(pruned.double().mean())

    else:
        rescale = case == "random_rescaled"
        exact = T.random_moment(0.7, 1.0, M, rescale=rescale)

        def make(gen):
            w = torch.randn(M, N, generator=gen, dtype=torch.float64)
            keep = (torch.rand(M, N, generator=gen, dtype=torch.float64) < 0.7).double()
            kept = w * keep / (0.7 if rescale else 1.0)
            return w - kept, float(1 - keep.mean())

    mean, se, frac = _simulate(make)
    assert abs(mean - exact.second_moment) <= 4 * se
    assert mean == pytest.approx(exact.second_moment, rel=0.03)
    assert frac == pytest.approx(exact.pruned_fraction, abs=0.002)


def test_rescaled_random_error_has_mean_zero():
    gen = torch.Generator().manual_seed(1)
    x = _unit_x(gen)
    errs = []
    for _ in range(100):
        w = torch.rand(M, N, generator=gen, dtype=torch.float64) + 0.5  # not symmetric: E W = 1
        keep = (torch.rand(M, N, generator=gen, dtype=torch.float64) < 0.7).double()
        errs.append((w - w * keep / 0.7) @ x)
    mean = torch.stack(errs).mean(0)
    se = torch.stack(errs).std(0) / math.sqrt(100)
    assert float((mean.abs() / se).max()) < 5.0


def test_magnitude_threshold_inverts_pruned_fraction():
    for rho in (0.1, 0.5, 0.9):
        tau = T.magnitude_threshold(rho, "normal", 2.0)
        assert 1 - T.magnitude_moment_normal(tau, 2.0).pruned_fraction == pytest.approx(rho, abs=1e-9)
        tau = T.magnitude_threshold(rho, "uniform", 3.0)
        assert 1 - T.magnitude_moment_uniform(tau, 3.0).pruned_fraction == pytest.approx(rho, abs=1e-12)


# --------------------------------------------------------------------------------------------- §7 Gao13 facts
def _samples(kind: str, d: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(d, generator=gen, dtype=torch.float64)
    if kind == "cauchy":
        return torch.tan(math.pi * (torch.rand(d, generator=gen, dtype=torch.float64) - 0.5))
    if kind == "laplace":
        u = torch.rand(d, generator=gen, dtype=torch.float64) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs())
    w = torch.zeros(d, dtype=torch.float64)
    w[:20] = torch.randn(20, generator=gen, dtype=torch.float64)
    return w


@pytest.mark.parametrize("kind", ["normal", "cauchy", "laplace", "sparse"])
@pytest.mark.parametrize("q", [0.3, 0.5, 0.8])
def test_gao13_facts_on_random_vectors(kind, q):
    gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        w = _samples(kind, 1000, gen)
        a = torch.sort(w.abs(), descending=True).values
        t = float(a.pow(q).sum() ** (1 / q))
        for m in (1, 2, 5, 17, 50, 200, 999):
            assert int((a > t * m ** (-1 / q)).sum()) < m
            assert float(a[m:].sum()) <= t * m ** (1 - 1 / q) * (1 + 1e-12)


# --------------------------------------------------------------------------------------------- §7 keep counts
def test_lq_keep_counts_hand_computed():
    w = torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [4, 1, 0, 0]])
    # q=1/2: ‖w‖_q = (Σ√|w|)², exponent q/(1−q) = 1  →  m = ceil(B‖w‖_q/ε).
    # rows: ‖·‖_q = 16, 1, 0, 9.
    assert T.lq_keep_counts(w, 0.5, 1.0, 1.0).tolist() == [4, 1, 0, 4]  # min(d, 16), 1, 0, min(4, 9)
    assert T.lq_keep_counts(w, 0.5, 8.0, 1.0).tolist() == [2, 1, 0, 2]  # ceil(2), ceil(1/8), 0, ceil(9/8)
    assert T.lq_keep_counts(w, 0.5, 4.0, 0.5).tolist() == [2, 1, 0, 2]  # B/ε = 1/8 again
    assert T.lq_keep_counts(w, 0.5, 1.0, 0.0).tolist() == [0, 0, 0, 0]  # B = 0: nothing can change
    # q = 2/3: exponent 2; row 0: ‖w‖_q = 4^{3/2} = 8, ε = 4 → m = ceil(2²) = 4; ε = 8 → 1.
    assert T.lq_keep_counts(w[:1], 2 / 3, 4.0, 1.0).tolist() == [4]
    assert T.lq_keep_counts(w[:1], 2 / 3, 8.0, 1.0).tolist() == [1]
    assert T.lq_keep_counts(w, 0.5, 1.0, 1.0).dtype == torch.int64


def test_lq_keep_counts_relative_mask_and_conv():
    w = torch.tensor([[1.0, 1, 1, 1], [4, 1, 0, 0]])
    # relative: ε_i = eps·B·‖w_i‖₁ → m = ceil(‖w‖_q/(eps‖w‖₁)) for q=1/2: row0 16/(eps·4), row1 9/(eps·5).
    assert T.lq_keep_counts(w, 0.5, 2.0, 3.0, relative=True).tolist() == [2, 1]
    assert T.lq_keep_counts(w, 0.5, 1.0, 3.0, relative=True).tolist() == [4, 2]
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    # row0 survivors [1,1]: ‖·‖_q = 4, d = 2 → min(2, 4) = 2; ε=4 → 1.
    assert T.lq_keep_counts(w, 0.5, 4.0, 1.0, mask=mask).tolist() == [1, 3]
    assert T.lq_keep_counts(w, 0.5, 1.0, 1.0, mask=torch.zeros_like(mask)).tolist() == [0, 0]
    conv = torch.ones(3, 2, 3, 3)  # rows of 18 ones: ‖·‖_q = 18² = 324 → m = ceil(324/ε)
    assert T.lq_keep_counts(conv, 0.5, 36.0, 1.0).tolist() == [9, 9, 9]


def test_lq_keep_counts_bad_input():
    w = torch.randn(3, 4)
    for kwargs in (
        dict(q=0.0),
        dict(q=1.0),
        dict(q=1.5),
        dict(eps=0.0),
        dict(eps=-1.0),
        dict(input_bound=-1.0),
        dict(eps=math.nan),
    ):
        args = dict(q=0.5, eps=0.1, input_bound=1.0) | kwargs
        with pytest.raises(ValueError):
            T.lq_keep_counts(w, **args)
    with pytest.raises(ValueError):
        T.lq_keep_counts(w, 0.5, 0.1, 1.0, mask=torch.ones(3, 4))  # not bool
    with pytest.raises(ValueError):
        T.lq_keep_counts(w, 0.5, 0.1, 1.0, mask=torch.ones(4, 3, dtype=torch.bool))


# --------------------------------------------------------------------------------------------- §7 bounds
def _cauchy_rows(rows: int, cols: int, gen: torch.Generator, c: float = 1.0) -> torch.Tensor:
    w = torch.tan(math.pi * (torch.rand(rows, cols, generator=gen) - 0.5))
    return w / w.abs().sum(1, keepdim=True) / c


def test_lq_layer_bound_holds_and_tail_is_attained():
    """One layer: the exact worst case over the box (x = B·sign(pruned w_i)) never exceeds the ℓ_q bound ≤ ε.

    Measured: median (ℓ_q bound / exact worst case) over pruned neurons ≈ 20–30 at q = 0.5, d = 256."""
    gen = torch.Generator().manual_seed(3)
    w = _cauchy_rows(64, 256, gen)
    B, eps, q = 2.0, 0.3, 0.5
    lb = T.lq_layer_bound(w, q, eps, B, relative=True)
    eps_i = eps * B * w.abs().sum(1).double()
    assert bool((lb.neuron_bound <= eps_i * (1 + 1e-9)).all())
    assert bool((lb.neuron_tail <= lb.neuron_bound * (1 + 1e-9) + 1e-15).all())
    assert lb.keep_mask.sum(1).tolist() == lb.keep.tolist()
    assert 0 < lb.kept < lb.total
    pruned_w = (w * ~lb.keep_mask).double()
    x = B * torch.sign(pruned_w)  # row i: the worst input for neuron i
    worst = (pruned_w * x).sum(1)
    assert torch.allclose(worst, lb.neuron_tail, rtol=1e-6, atol=1e-12)
    # random inputs never beat it
    xs = (torch.rand(5000, 256, generator=gen, dtype=torch.float64) * 2 - 1) * B
    assert bool(((xs @ pruned_w.T).abs().max(0).values <= lb.neuron_tail * (1 + 1e-9) + 1e-15).all())
    has_pruned = lb.keep < lb.survivors
    factor = float((lb.neuron_bound[has_pruned] / lb.neuron_tail[has_pruned]).median())
    assert 1.0 <= factor < 200.0


def _teacher(dims, gen, c=1.0):
    layers = []
    for i in range(len(dims) - 1):
        lin = nn.Linear(dims[i], dims[i + 1])
        with torch.no_grad():
            lin.weight.copy_(_cauchy_rows(dims[i + 1], dims[i], gen, c))
            lin.bias.copy_((torch.rand(dims[i + 1], generator=gen) - 0.5) * 0.2)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


@pytest.mark.slow
@pytest.mark.parametrize("relative,eps,q", [(True, 0.5, 0.5), (False, 0.3, 0.5), (True, 0.5, 0.7)])
def test_lq_network_bound_never_violated_on_teacher(relative, eps, q):
    """Gap ≤ bound on 40k inputs (uniform in the box, corners) plus gradient ascent in the box.

    Measured tightness (bound / largest gap seen): ≈ 10⁴ (ℓ_q bounds), ≈ 10²–5·10² (exact tails)."""
    gen = torch.Generator().manual_seed(11)
    net = _teacher([128, 128, 128, 8], gen)
    B = 1.5
    nb = T.lq_network_bound(net, q=q, eps=eps, input_bound=B, relative=relative)
    assert nb.kept < nb.total
    pruned = copy.deepcopy(net)
    masks = nb.masks()
    with torch.no_grad():
        for name, p in pruned.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    xs = torch.cat(
        [
            (torch.rand(20000, 128, generator=gen) * 2 - 1) * B,
            (torch.randint(0, 2, (20000, 128), generator=gen) * 2.0 - 1) * B,
        ]
    )
    with torch.no_grad():
        gaps = (net(xs) - pruned(xs)).norm(dim=1)
    # projected gradient ascent in the box from the 8 worst inputs
    z = xs[torch.topk(gaps, 8).indices].clone()
    for _ in range(30):
        z.requires_grad_(True)
        g = (net(z) - pruned(z)).norm(dim=1)
        (grad,) = torch.autograd.grad(g.sum(), z)
        z = (z.detach() + 0.2 * B * torch.sign(grad)).clamp(-B, B)
    with torch.no_grad():
        worst = max(float(gaps.max()), float((net(z) - pruned(z)).norm(dim=1).max()))
    assert worst <= nb.output_bound_tail <= nb.output_bound + 1e-12
    assert nb.output_bound <= sum(
        math.prod(lb.op_norm for lb in nb.layers[k + 1 :])
        * eps
        * ((lb.input_bound * net[2 * k].weight.abs().sum(1).double()).norm() if relative else math.sqrt(lb.shape[0]))
        for k, lb in enumerate(nb.layers)
    ) * (1 + 1e-9)
    assert nb.output_bound_tail / worst < 1e4


def test_lq_network_bound_data_mode_and_measured_input_bound():
    gen = torch.Generator().manual_seed(5)
    net = _teacher([32, 32, 4], gen)
    data = (torch.rand(500, 32, generator=gen) - 0.5) * 3
    nb = T.lq_network_bound(net, 0.5, 0.5, data=data, relative=True, hidden_bounds="data")
    assert nb.input_bound == pytest.approx(float(data.abs().max()))
    pruned = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in pruned.named_parameters():
            if name in nb.masks():
                p.mul_(nb.masks()[name])
        gap = float((net(data) - pruned(data)).norm(dim=1).max())
    assert gap <= nb.output_bound_tail
    with pytest.raises(ValueError):
        T.lq_network_bound(net, 0.5, 0.5)  # no bound, no data
    with pytest.raises(ValueError):
        T.lq_network_bound(nn.Sequential(nn.Conv2d(1, 2, 3)), 0.5, 0.5, input_bound=1.0)


# --------------------------------------------------------------------------------------------- §4 Theorem 2
@pytest.mark.parametrize("kind", ["normal", "cauchy", "laplace", "sparse", "uniform"])
@pytest.mark.parametrize("pq", [(0.5, 1.0), (1.0, 2.0)])
def test_theorem2_holds_for_every_r(kind, pq):
    gen = torch.Generator().manual_seed(2)
    w = torch.rand(500, generator=gen, dtype=torch.float64) * 2 - 1 if kind == "uniform" else _samples(kind, 500, gen)
    curve = T.retained_bound_curve(w, *pq)
    r = torch.arange(1, w.numel() + 1, dtype=torch.float64)
    assert bool((curve <= r * (1 + 1e-9)).all())
    for rr in (1, 7, 100, 499):
        assert T.retained_bound_exact(w, rr, *pq) == pytest.approx(float(curve[rr - 1]), rel=1e-9)


def test_theorem2_tight_for_equal_magnitude_sparse():
    for k in (1, 10, 100, 500):
        w = torch.zeros(1000, dtype=torch.float64)
        w[torch.randperm(1000, generator=torch.Generator().manual_seed(k))[:k]] = -2.5
        for p, q in ((0.5, 1.0), (1.0, 2.0), (0.5, 2.0)):
            assert T.eta_r(w, k, p) == 0.0
            assert T.retained_bound_exact(w, k, p, q) == pytest.approx(k, rel=1e-9)


def test_eta_r_values_and_errors():
    w = torch.tensor([4.0, 1.0, 1.0])
    assert T.eta_r(w, 1, 0.5) == pytest.approx(2 / 2)  # (1+1)/√4
    assert T.eta_r(w, 2, 1.0) == pytest.approx(1 / 5)
    with pytest.raises(ValueError):
        T.eta_r(w, 0)
    with pytest.raises(ValueError):
        T.eta_r(w, 4)
    with pytest.raises(ValueError):
        T.retained_bound_exact(w, 1, 1.0, 0.5)  # p ≥ q
    with pytest.raises(ValueError):
        T.retained_bound_curve(torch.zeros(5))


# --------------------------------------------------------------------------------------------- §8 bound vs MC
def test_wilson_interval_known_values():
    lo, hi = T.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = T.wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = T.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.2775, abs=1e-4)
    with pytest.raises(ValueError):
        T.wilson_interval(11, 10)


SPECS = [
    T.RandomNetSpec(arch="fcn", width=12, depth=2, density=0.9, method="random"),
    T.RandomNetSpec(arch="fcn", width=12, depth=3, density=0.8, method="magnitude", dist="uniform"),
    T.RandomNetSpec(arch="cnn", width=4, depth=2, density=0.9, method="magnitude", image=(1, 6, 6)),
    T.RandomNetSpec(arch="cnn", width=4, depth=2, density=0.9, method="random", dist="uniform", image=(1, 6, 6)),
]


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.arch}-{s.method}-{s.dist}-d{s.depth}")
def test_guaranteed_probability_never_above_monte_carlo(spec):
    """The bound's probability ≤ the Wilson upper end of p̂ at several ε, incl. ε where it is not trivial."""
    eps_half = T.hp_gap_bound(spec, 0.5)
    assert T.guaranteed_probability(spec, eps_half) == pytest.approx(0.5, abs=1e-6)
    for eps in (eps_half, T.hp_gap_bound(spec, 0.05), 2 * eps_half):
        res = T.monte_carlo_gap(spec, eps, n_draws=25, n_inputs=64, restarts=2, steps=15, seed=0)
        assert res.guaranteed <= res.high + 1e-12
    # looseness: ε the bound needs for 1 − δ = 0.9 against the empirical 90% gap quantile
    res = T.monte_carlo_gap(spec, eps_half, n_draws=25, n_inputs=64, restarts=2, steps=15, seed=1)
    q90 = float(torch.quantile(res.gaps, 0.9))
    assert 1.0 < T.hp_gap_bound(spec, 0.1) / q90 < 1e4
    # at the empirical median the guarantee is (far) below p̂
    med = float(res.gaps.median())
    assert (
        T.guaranteed_probability(spec, med)
        <= T.monte_carlo_gap(spec, med, n_draws=25, n_inputs=64, restarts=2, steps=15, seed=2).high
    )


def test_hp_bound_monotone_and_degenerate():
    s = T.RandomNetSpec(width=16, depth=2, density=0.7)
    assert T.hp_gap_bound(s, 0.01) > T.hp_gap_bound(s, 0.1) > T.hp_gap_bound(s, 0.9)
    dense = T.RandomNetSpec(width=16, depth=2, density=1.0)
    assert T.hp_gap_bound(dense, 0.1) == 0.0
    assert T.guaranteed_probability(dense, 1e-9) == pytest.approx(1.0)
    assert T.guaranteed_probability(s, 1e-9) == 0.0


def test_monte_carlo_is_seeded_and_gap_estimate_is_sensible():
    spec = T.RandomNetSpec(width=8, depth=2, density=0.5)
    a = T.monte_carlo_gap(spec, 0.5, n_draws=5, n_inputs=32, restarts=2, steps=10, seed=3)
    b = T.monte_carlo_gap(spec, 0.5, n_draws=5, n_inputs=32, restarts=2, steps=10, seed=3)
    assert torch.equal(a.gaps, b.gaps) and a.p_hat == b.p_hat
    assert a.low <= a.p_hat <= a.high
    # A depth-1 FCN: the sup-gap is ‖E‖₂ exactly; the estimate must be close below it.
    lin = T.RandomNetSpec(width=10, depth=1, density=0.5)
    gen = torch.Generator().manual_seed(0)
    dense, pruned = T.sample_network(lin, gen)
    exact = float(torch.linalg.matrix_norm(dense[0] - pruned[0], ord=2))
    est = T.estimate_gap(lin, dense, pruned, gen, n_inputs=64, restarts=2, steps=40)
    assert exact * 0.98 <= est <= exact * (1 + 1e-9)


def test_bad_inputs_raise():
    spec = T.RandomNetSpec()
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="delta"):
            T.hp_gap_bound(spec, bad)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="eps"):
            T.guaranteed_probability(spec, bad)
        with pytest.raises(ValueError, match="eps"):
            T.monte_carlo_gap(spec, bad)
    for bad in (0.0, 1.2):
        with pytest.raises(ValueError, match="rho"):
            T.random_moment(bad)
        with pytest.raises(ValueError):
            T.RandomNetSpec(density=bad)
    with pytest.raises(ValueError, match="tau"):
        T.magnitude_moment_uniform(-0.1)
    with pytest.raises(ValueError, match="tau"):
        T.magnitude_moment_normal(-0.1)
    with pytest.raises(ValueError):
        T.RandomNetSpec(arch="rnn")
    with pytest.raises(ValueError):
        T.RandomNetSpec(method="sap")
    with pytest.raises(ValueError):
        T.RandomNetSpec(arch="cnn", depth=1)
    with pytest.raises(ValueError, match="q"):
        T.lq_layer_bound(torch.randn(2, 3), 1.0, 0.1, 1.0)


def test_keep_largest_mask_is_the_engines_selection_ties_included() -> None:
    from pqprune.prune.select import magnitude_scores, select_prune
    from pqprune.theory.lq_bounds import keep_largest_mask

    g = torch.Generator().manual_seed(3)
    w = torch.randint(-3, 4, (6, 10), generator=g).float()  # few distinct magnitudes: many ties
    alive = torch.rand(6, 10, generator=g) > 0.2
    keep = torch.tensor([0, 1, 3, 5, 8, 10])
    kept = keep_largest_mask(w, keep, alive)
    survivors = alive.sum(1)
    assert torch.equal(kept.sum(1), torch.minimum(keep, survivors)) and not bool((kept & ~alive).any())
    c = (survivors - keep).clamp(min=0)
    pruned = select_prune(magnitude_scores({"w": w}), {"w": c}, "neuron", {"w": alive})["w"]
    assert torch.equal(kept, alive & ~pruned)


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan, "1"])
def test_every_input_bound_is_checked_the_same_way(bad: object) -> None:
    from pqprune.prune.methods.lq import LqNeuron
    from pqprune.theory.teacher_study import teacher_study

    w = torch.randn(3, 4)
    message = r"^input_bound must be a finite number >= 0, got "
    calls = [
        lambda: T.lq_keep_counts(w, 0.5, 0.1, bad),
        lambda: T.lq_neuron_bound(w, torch.ones(3, dtype=torch.int64), 0.5, bad),
        lambda: T.lq_layer_bound(w, 0.5, 0.1, bad),
        lambda: LqNeuron(q=0.5, rule="bound", eps=0.1, input_bound=bad),
        lambda: LqNeuron(q=0.5, rule="bound", eps=0.1, input_bound={"w": bad}),
        lambda: teacher_study("normal", input_bound=bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match=r"input_bound must be > 0: the test inputs fill the box"):
        teacher_study("normal", input_bound=0.0)  # a bound of 0 is a valid rule input, not a box to test in
