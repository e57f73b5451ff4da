"""Sparsity measures against docs/math.md §1–5 and §9: the worked values, the axioms of [Diao23] and the Theorem-2 bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import pqprune
from pqprune.measure import gini, hoyer, lq_index, pq_index, pq_index_grid, retained_bound, sap_prune_count, sums
from pqprune.measure.weights import prunable_weights
from pqprune.threads import torch_threads

PAIRS = [(0.5, 1.0), (1.0, 2.0), (0.5, 2.0), (0.3, 0.7)]
FAST = settings(max_examples=40, deadline=None)


# ------------------------------------------------------------------------------------------------ helpers
def ref_pq(x: np.ndarray | torch.Tensor, p: float, q: float) -> float:
    """Definition 1 of [Diao23] in float64 numpy, written independently of the library."""
    a = np.abs(np.asarray(x, dtype=np.float64)).ravel()
    d = a.size
    return 1.0 - d ** (1 / q - 1 / p) * (a**p).sum() ** (1 / p) / (a**q).sum() ** (1 / q)


def ref_gini(x: np.ndarray) -> float:
    """Gini by the mean absolute difference, Σ_ij |x_i − x_j| / (2 N Σ x): no sort, an independent formula."""
    a = np.abs(np.asarray(x, dtype=np.float64)).ravel()
    return float(np.abs(a[:, None] - a[None, :]).sum() / (2 * a.size * a.sum()))


def k_sparse(d: int, k: int, magnitude: float = 1.0, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(d, dtype=dtype)
    idx = torch.randperm(d, generator=g)[:k]
    signs = torch.where(torch.rand(k, generator=g) < 0.5, -1.0, 1.0).to(dtype)
    w[idx] = magnitude * signs
    return w


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# A vector of float64 magnitudes in a sane range (no subnormal powers), some exact zeros, random signs.
entries = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3))
vectors = st.lists(entries, min_size=2, max_size=60).filter(lambda v: any(x != 0 for x in v))
pairs = st.sampled_from(PAIRS)


def t64(v) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


# ------------------------------------------------------------------------------------- docs/math.md §2 worked values
@pytest.mark.parametrize(
    "p,q,k,expected",
    [
        (0.5, 1.0, 10, 0.99),
        (0.5, 1.0, 100, 0.90),
        (0.5, 1.0, 500, 0.50),
        (1.0, 2.0, 100, 0.683772),
        (1.0, 2.0, 500, 0.292893),
    ],
)
def test_k_sparse_equal_magnitudes(p, q, k, expected):
    for dtype in (torch.float64, torch.float32):
        w = k_sparse(1000, k, magnitude=0.37, dtype=dtype)
        assert pq_index(w, p, q) == pytest.approx(expected, abs=1e-6)
        assert pq_index(w, p, q) == pytest.approx(1 - (k / 1000) ** (1 / p - 1 / q), abs=1e-6)


@pytest.mark.parametrize("p,q,expected", [(0.5, 1.0, 0.999), (1.0, 2.0, 0.968377), (0.5, 2.0, 0.999968)])
def test_one_sparse_is_the_maximum(p, q, expected):
    w = k_sparse(1000, 1, magnitude=-2.5)
    assert pq_index(w, p, q) == pytest.approx(expected, abs=1e-6)
    assert pq_index(w, p, q) == pytest.approx(1 - 1000 ** (1 / q - 1 / p), abs=1e-12)


def test_constant_magnitude_is_zero():
    w = torch.full((777,), 3.0) * torch.where(torch.rand(777, generator=gen(1)) < 0.5, -1.0, 1.0)
    for p, q in PAIRS:
        assert pq_index(w, p, q) == pytest.approx(0.0, abs=1e-6)


N_IID = 2_000_000


@pytest.mark.parametrize(
    "name,sample,i051,i12",
    [
        (
            "normal",
            lambda g: torch.randn(N_IID, generator=g),
            1 - math.gamma(0.75) ** 2 / math.sqrt(math.pi),
            1 - math.sqrt(2 / math.pi),
        ),
        ("uniform", lambda g: torch.rand(N_IID, generator=g) * 2 - 1, 1 / 9, 1 - math.sqrt(3) / 2),
        (
            "laplace",
            lambda g: (
                torch.empty(N_IID).exponential_(generator=g)
                * torch.where(torch.rand(N_IID, generator=g) < 0.5, -1.0, 1.0)
            ),
            1 - math.pi / 4,
            1 - 1 / math.sqrt(2),
        ),
    ],
)
def test_iid_closed_forms(name, sample, i051, i12):
    literal = {"normal": (0.1528, 0.2021), "uniform": (0.1111, 0.1340), "laplace": (0.2146, 0.2929)}[name]
    assert (i051, i12) == pytest.approx(literal, abs=1e-4)  # the closed forms are the ones docs/math.md §2 states
    w = sample(gen(7))
    grid = pq_index_grid(w, [(0.5, 1.0), (1.0, 2.0)])
    assert grid[(0.5, 1.0)] == pytest.approx(i051, abs=0.002)
    assert grid[(1.0, 2.0)] == pytest.approx(i12, abs=0.002)


# ------------------------------------------------------------------------------------- docs/math.md §3 values
def test_gini_values():
    assert gini(torch.full((50,), -2.0)) == pytest.approx(0.0, abs=1e-12)
    assert gini(k_sparse(400, 1)) == pytest.approx(1 - 1 / 400, abs=1e-12)
    assert gini(k_sparse(400, 100)) == pytest.approx(1 - 100 / 400, abs=1e-12)
    # Half-normal magnitudes: G = √2 − 1; uniform magnitudes: G = 1/3.
    assert gini(torch.randn(N_IID // 4, generator=gen(3))) == pytest.approx(math.sqrt(2) - 1, abs=0.002)
    assert gini(torch.rand(N_IID // 4, generator=gen(4))) == pytest.approx(1 / 3, abs=0.002)


@FAST
@given(vectors)
def test_gini_matches_mean_difference_formula(v):
    assert gini(t64(v)) == pytest.approx(ref_gini(np.array(v)), abs=1e-9)


@FAST
@given(vectors, st.sampled_from([0.1, 0.3, 0.5, 0.8]))
def test_lq_index_identity_and_range(v, q):
    w = t64(v)
    d = len(v)
    a = np.abs(np.array(v))
    direct = d ** (1 / q - 1) * a.sum() / (a**q).sum() ** (1 / q)
    si = lq_index(w, q)
    # The index is 1/(1 − I): the subtraction costs ~si rounding errors when si is large (d^(1/q−1) at most).
    tol = max(1e-9, 1e-15 * direct)
    assert si == pytest.approx(direct, rel=tol)
    assert si == pytest.approx(1 / (1 - pq_index(w, q, 1.0)), rel=tol)
    assert 1 - 1e-9 <= si <= d ** (1 / q - 1) * (1 + 1e-9)


def test_lq_index_extremes():
    assert lq_index(torch.full((100,), 0.4), 0.5) == pytest.approx(1.0, abs=1e-6)
    assert lq_index(k_sparse(100, 1), 0.5) == pytest.approx(100.0, rel=1e-9)
    with pytest.raises(ValueError, match="0 < q < 1"):
        lq_index(torch.ones(3), 1.0)


@FAST
@given(vectors)
def test_hoyer_relation(v):
    w = t64(v)
    d = len(v)
    a = np.abs(np.array(v))
    assert hoyer(w) == pytest.approx((math.sqrt(d) - a.sum() / math.sqrt((a**2).sum())) / (math.sqrt(d) - 1), abs=1e-9)
    assert pq_index(w, 1.0, 2.0) == pytest.approx((1 - 1 / math.sqrt(d)) * hoyer(w), abs=1e-9)


# ------------------------------------------------------------------------------------ axioms [Diao23]
@FAST
@given(vectors, pairs, st.floats(1e-3, 1e3))
def test_invariant_under_scaling(v, pq, c):
    w = t64(v)
    assert pq_index(c * w, *pq) == pytest.approx(pq_index(w, *pq), abs=1e-9)
    assert pq_index(w, *pq) == pytest.approx(ref_pq(w, *pq), abs=1e-9)


@FAST
@given(vectors, pairs, st.randoms(use_true_random=False))
def test_invariant_under_permutation_and_signs(v, pq, rnd):
    w = t64(v)
    perm = list(range(len(v)))
    rnd.shuffle(perm)
    signs = t64([rnd.choice([-1.0, 1.0]) for _ in v])
    assert pq_index(w[perm] * signs, *pq) == pytest.approx(pq_index(w, *pq), abs=1e-9)
    assert gini(w[perm] * signs) == pytest.approx(gini(w), abs=1e-9)


@FAST
@given(vectors, pairs)
def test_invariant_under_cloning(v, pq):
    w = t64(v)
    assert pq_index(torch.cat([w, w]), *pq) == pytest.approx(pq_index(w, *pq), abs=1e-9)
    assert pq_index(torch.cat([w, w, w]), *pq) == pytest.approx(pq_index(w, *pq), abs=1e-9)


@FAST
@given(vectors, pairs)
def test_babies_strictly_increase(v, pq):
    w = t64(v)
    with_zero = torch.cat([w, torch.zeros(1, dtype=torch.float64)])
    before = pq_index(w, *pq)
    assert pq_index(with_zero, *pq) > before + 1e-12
    # A zero that the mask excludes is not a survivor: nothing changes.
    mask = torch.ones(len(v) + 1, dtype=torch.bool)
    mask[-1] = False
    assert pq_index(with_zero, *pq, masks=mask) == pytest.approx(before, abs=1e-12)


@FAST
@given(vectors, pairs, st.floats(0.01, 10.0))
def test_rising_tide_strictly_decreases(v, pq, alpha_rel):
    a = np.abs(np.array(v))
    assume(a.max() - a.min() >= 0.05 * a.max())  # not already all equal
    w = t64(v)
    alpha = alpha_rel * float(a.max())
    assert pq_index(w.abs() + alpha, *pq) < pq_index(w, *pq) - 1e-12


@FAST
@given(vectors, pairs, st.floats(0.05, 0.45), st.data())
def test_robin_hood_strictly_decreases(v, pq, share, data):
    a = np.abs(np.array(v, dtype=np.float64))
    i, j = int(a.argmax()), int(a.argmin())
    assume(a[i] - a[j] >= 0.05 * a[i])
    h = share * (a[i] - a[j])  # taken from the rich, given to the poor, never reversing their order
    b = a.copy()
    b[i] -= h
    b[j] += h
    assert pq_index(t64(b), *pq) < pq_index(t64(a), *pq) - 1e-12
    assert gini(t64(b)) < gini(t64(a)) - 1e-12


# --------------------------------------------------------------------------------- Theorem 2, docs/math.md §4
def _sample(kind: str, d: int, g: torch.Generator) -> torch.Tensor:
    if kind == "normal":
        return torch.randn(d, generator=g, dtype=torch.float64)
    if kind == "laplace":
        return torch.empty(d, dtype=torch.float64).exponential_(generator=g) * (
            torch.rand(d, generator=g) < 0.5
        ).double().mul(2).sub(1)
    if kind == "cauchy":
        return torch.empty(d, dtype=torch.float64).cauchy_(generator=g)
    if kind == "uniform":
        return torch.rand(d, generator=g, dtype=torch.float64) * 2 - 1
    w = torch.randn(d, generator=g, dtype=torch.float64)  # sparse: 95% exact zeros
    return w * (torch.rand(d, generator=g) < 0.05).double()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["normal", "laplace", "cauchy", "uniform", "sparse"])
@pytest.mark.parametrize("p,q", [(0.5, 1.0), (1.0, 2.0), (0.3, 1.7)])
def test_theorem2_bound_holds_for_every_r(kind, p, q):
    for seed in range(3):
        w = _sample(kind, 2000, gen(seed))
        d = w.numel()
        index = pq_index(w, p, q)
        powered = torch.sort(w.abs() ** p, descending=True).values
        head = torch.cumsum(powered, 0)  # Σ over M_r, r = 1..d
        eta = ((powered.sum() - head) / head).clamp(min=0.0)  # the smallest η_r of the theorem
        r = torch.arange(1, d + 1, dtype=torch.float64)
        bound = torch.stack([torch.tensor(retained_bound(index, d, p, q, float(e))) for e in eta])
        assert bool((r >= bound - 1e-9 * d).all()), f"{kind}: bound exceeds r at r={int(r[(r < bound).nonzero()[0]])}"
        # The tensor form gives the same numbers as the scalar form.
        as_tensor = retained_bound(torch.tensor(index, dtype=torch.float64), torch.tensor(float(d)), p, q)
        assert float(as_tensor) == pytest.approx(retained_bound(index, d, p, q), rel=1e-12)


@pytest.mark.parametrize("p,q", PAIRS)
@pytest.mark.parametrize("k", [1, 7, 100, 999])
def test_theorem2_tight_for_equal_magnitude_k_sparse(p, q, k):
    w = k_sparse(1000, k, magnitude=0.8)
    assert retained_bound(pq_index(w, p, q), 1000, p, q, eta=0.0) == pytest.approx(k, rel=1e-9)


def test_retained_bound_closed_forms():
    # (0.5,1): d(1+η)^−2(1−I);  (1,2): d(1+η)^−2(1−I)²
    assert retained_bound(0.3, 1000, 0.5, 1.0, eta=0.5) == pytest.approx(1000 / 2.25 * 0.7)
    assert retained_bound(0.3, 1000, 1.0, 2.0, eta=0.5) == pytest.approx(1000 / 2.25 * 0.49)
    with pytest.raises(ValueError, match="eta"):
        retained_bound(0.3, 1000, 0.5, 1.0, eta=-0.1)


# ------------------------------------------------------------------------------------- masks and scopes
@FAST
@given(vectors, pairs, st.data())
def test_masked_index_is_index_of_survivors(v, pq, data):
    w = t64(v)
    keep = data.draw(st.lists(st.booleans(), min_size=len(v), max_size=len(v)))
    m = torch.tensor(keep, dtype=torch.bool)
    assume(bool((w[m] != 0).any()))
    assert pq_index(w, *pq, masks=m) == pytest.approx(pq_index(w[m], *pq), abs=1e-12)
    assert gini(w, masks=m) == pytest.approx(gini(w[m]), abs=1e-12)
    assert hoyer(w, masks=m) == pytest.approx(hoyer(w[m]), abs=1e-12, nan_ok=True)


def test_pruned_entries_do_not_count_even_if_nonzero():
    w = torch.randn(10, 20, dtype=torch.float64, generator=gen(2))
    m = torch.rand(10, 20, generator=gen(3)) < 0.6
    sd = {"fc.weight": w}
    neuron = pq_index(sd, scope="neuron", masks={"fc.weight": m})["fc.weight"]
    expected = [pq_index(w[i][m[i]]) for i in range(10)]
    assert torch.allclose(neuron, torch.tensor(expected, dtype=torch.float64), atol=1e-12, equal_nan=True)
    gn = gini(sd, scope="neuron", masks={"fc.weight": m})["fc.weight"]
    assert torch.allclose(gn, torch.tensor([gini(w[i][m[i]]) for i in range(10)], dtype=torch.float64), atol=1e-12)


def test_neuron_scope_of_conv_is_rows_of_flattened_filters():
    w = torch.randn(8, 3, 5, 5, generator=gen(4))
    rows = w.reshape(8, -1)
    for p, q in PAIRS:
        got = pq_index(w, p, q, scope="neuron")["tensor"]
        assert got.shape == (8,)
        assert torch.allclose(got, torch.tensor([ref_pq(r, p, q) for r in rows], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(
        gini(w, scope="neuron")["tensor"],
        torch.tensor([ref_gini(r.numpy()) for r in rows], dtype=torch.float64),
        atol=1e-6,
    )


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10), nn.Embedding(5, 3)
    )


def test_global_over_a_model_is_index_of_the_concatenation():
    model = _model()
    names = list(prunable_weights(model))
    assert names == ["0.weight", "3.weight"]  # biases, BatchNorm and Embedding are not prunable
    flat = torch.cat([model.get_parameter(n).detach().reshape(-1) for n in names])
    for p, q in PAIRS:
        assert pq_index(model, p, q) == pytest.approx(ref_pq(flat, p, q), abs=1e-6)
    assert gini(model) == pytest.approx(ref_gini(flat.numpy()), abs=1e-6)
    # A state dict gives the same as the module (the BatchNorm running stats are 1-D, the Embedding not '*weight').
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("4.")}
    assert pq_index(sd) == pytest.approx(pq_index(model), abs=1e-12)


def test_return_types_per_scope():
    model = _model()
    for fn in (
        lambda s: pq_index(model, scope=s),
        lambda s: gini(model, scope=s),
        lambda s: hoyer(model, scope=s),
        lambda s: lq_index(model, 0.5, scope=s),
    ):
        assert isinstance(fn("global"), float)
        layer = fn("layer")
        assert set(layer) == {"0.weight", "3.weight"} and all(isinstance(v, float) for v in layer.values())
        neuron = fn("neuron")
        assert {n: tuple(v.shape) for n, v in neuron.items()} == {"0.weight": (4,), "3.weight": (10,)}
        assert all(v.dtype == torch.float64 for v in neuron.values())
    with pytest.raises(ValueError, match="scope"):
        pq_index(model, scope="row")


@pytest.mark.parametrize("scope", ["global", "layer", "neuron"])
def test_grid_equals_separate_calls(scope):
    model = _model()
    pairs_ = [(p, q) for p in (0.1, 0.5, 1.0) for q in (1.0, 1.5, 2.0) if p < q]
    grid = pq_index_grid(model, pairs_, scope=scope)
    assert set(grid) == set(pairs_)
    # Same numbers up to float32 block sums (relative error ~1e-7 in the sums, 1e-6 at most in an index): a
    # single call whose exponents the compiled kernel takes sums with it, the grid's other exponents with PyTorch.
    for pq in pairs_:
        single = pq_index(model, *pq, scope=scope)
        if scope == "global" or scope == "layer":
            assert grid[pq] == pytest.approx(single, abs=1e-6)
        else:
            for n in single:
                assert torch.allclose(grid[pq][n], single[n], rtol=0.0, atol=1e-6)


@FAST
@given(
    st.integers(1, 9),
    st.integers(1, 40),
    st.integers(1, 50),
    st.booleans(),
    st.sampled_from([(0.5, 1.0), (1.0, 2.0), (0.3, 1.7)]),
)
def test_blocked_power_sums_match_reference(rows, cols, chunk, masked, pq):
    """The cache-blocked kernel (row blocks and column slices) against a plain float64 computation."""
    g = gen(rows * 1000 + cols)
    w = torch.randn(rows, cols, generator=g)
    m = torch.rand(rows, cols, generator=g) < 0.7 if masked else None
    old = sums._CHUNK
    sums._CHUNK = chunk
    try:
        stats = sums.row_power_sums(w, pq, m)
    finally:
        sums._CHUNK = old
    a = w.double().abs() * (m.double() if m is not None else 1.0)
    for s in pq:
        assert torch.allclose(stats.sums[s], (a**s).sum(1), rtol=1e-6, atol=0)
    assert torch.equal(stats.count, (m.sum(1) if m is not None else torch.full((rows,), cols)).double())


# ------------------------------------------------------------------------------------- SAP arithmetic (§5)
def test_sap_first_step_on_normal_vector():
    w = torch.randn(10_000, generator=gen(11))
    d = w.numel()
    c051 = sap_prune_count(pq_index(w, 0.5, 1.0), d, 0.5, 1.0)
    c12 = sap_prune_count(pq_index(w, 1.0, 2.0), d, 1.0, 2.0)
    assert c051 / d == pytest.approx(0.153, abs=0.006)
    assert 0.358 <= c12 / d <= 0.372
    # With (0.5,1), η=0, γ=1 the fraction pruned is the PQI of the survivors.
    assert c051 == math.floor(d * pq_index(w, 0.5, 1.0)) or c051 == math.floor(d * pq_index(w, 0.5, 1.0)) + 1


@settings(max_examples=60, deadline=None)
@given(
    st.integers(10, 5000),
    st.data(),
    st.floats(1e-3, 1e3),
    st.sampled_from([(0.5, 1.0), (1.0, 2.0)]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_sap_is_tie_safe_for_k_sparse(d, data, magnitude, pq, dtype):
    k = data.draw(st.integers(1, d))
    w = k_sparse(d, k, magnitude=magnitude, dtype=dtype, seed=d + k)
    c = sap_prune_count(pq_index(w, *pq), d, *pq)
    assert c == min(d - k, math.floor(0.9 * d))


@FAST
@given(
    st.floats(0, 1),
    st.floats(0, 1),
    st.integers(1, 10**7),
    pairs,
    st.floats(0, 3),
    st.floats(0.1, 3),
    st.floats(0.05, 1),
)
def test_sap_monotone_and_clipped(i1, i2, d, pq, eta, gamma, beta):
    lo, hi = sorted((i1, i2))
    p, q = pq
    c_lo = sap_prune_count(lo, d, p, q, eta, gamma, beta)
    assert c_lo <= sap_prune_count(hi, d, p, q, eta, gamma, beta)
    assert c_lo <= sap_prune_count(lo, d, p, q, eta + 0.5, gamma, beta)
    assert c_lo <= sap_prune_count(lo, d, p, q, eta, gamma * 1.5, beta)
    assert 0 <= sap_prune_count(hi, d, p, q, eta, gamma, beta) <= math.floor(beta * d + 1e-9)


def test_sap_edge_cases():
    assert sap_prune_count(0.0, 1000, 0.5, 1.0) == 0
    assert sap_prune_count(float("nan"), 1000, 0.5, 1.0) == 0
    assert sap_prune_count(1.0, 1000, 0.5, 1.0) == 900  # clipped by β = 0.9
    assert sap_prune_count(0.5, 1000, 0.5, 1.0, beta=1.0) == 500
    counts = sap_prune_count(torch.tensor([0.0, 0.5, float("nan")]), torch.tensor([10.0, 10.0, 10.0]), 0.5, 1.0)
    assert counts.dtype == torch.int64 and counts.tolist() == [0, 5, 0]
    with pytest.raises(ValueError, match="gamma"):
        sap_prune_count(0.5, 10, 0.5, 1.0, gamma=0)
    with pytest.raises(ValueError, match="beta"):
        sap_prune_count(0.5, 10, 0.5, 1.0, beta=1.5)


def test_magnitude_pruning_without_retraining_lowers_the_pqi():
    """docs/math.md §9: removing the smallest 20% of a fixed N(0,1) vector's survivors, round after round, makes the
    survivors' I_{0.5,1} fall monotonically (0.153, 0.077, 0.049, 0.034, ...)."""
    w = torch.randn(400_000, generator=gen(19), dtype=torch.float64)
    survivors = w[torch.argsort(w.abs(), descending=True, stable=True)]  # largest magnitudes first
    values = []
    for _ in range(5):
        values.append(pq_index(survivors, 0.5, 1.0))
        survivors = survivors[: survivors.numel() - math.floor(0.2 * survivors.numel())]
    assert values[:4] == pytest.approx([0.153, 0.077, 0.049, 0.034], abs=0.003)
    assert all(a > b for a, b in zip(values, values[1:]))


# ------------------------------------------------------------------------------------- errors and dtypes
def test_degenerate_units_are_nan():
    assert math.isnan(pq_index(torch.zeros(10)))
    assert math.isnan(gini(torch.zeros(10)))
    assert math.isnan(pq_index(torch.ones(10), masks=torch.zeros(10, dtype=torch.bool)))
    assert math.isnan(hoyer(torch.ones(1)))  # d = 1: Hoyer's denominator vanishes
    w = torch.randn(3, 4, generator=gen(0))
    w[1] = 0
    rows = pq_index(w, scope="neuron")["tensor"]
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2]]).all()
    assert math.isnan(pq_index(torch.zeros(3, 0)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_raise_naming_the_tensor(bad):
    sd = {"good.weight": torch.randn(3, 3), "encoder.fc1.weight": torch.randn(4, 4)}
    sd["encoder.fc1.weight"][2, 1] = bad
    for fn in (pq_index, gini, hoyer, lambda o, **k: lq_index(o, 0.5, **k)):
        with pytest.raises(ValueError, match="encoder.fc1.weight"):
            fn(sd)
    # A non-finite value in a pruned entry is not a survivor: no error.
    m = torch.ones(4, 4, dtype=torch.bool)
    m[2, 1] = False
    assert math.isfinite(pq_index(sd, masks={"encoder.fc1.weight": m}))
    assert math.isfinite(gini(sd, masks={"encoder.fc1.weight": m}))


@pytest.mark.parametrize(
    "p,q,match",
    [
        (1.0, 1.0, "p < q"),
        (2.0, 1.0, "p < q"),
        (0.0, 1.0, "p must be > 0"),
        (-0.5, 1.0, "p must be > 0"),
        (float("nan"), 1.0, "finite"),
    ],
)
def test_bad_exponents_raise(p, q, match):
    w = torch.randn(10)
    with pytest.raises(ValueError, match=match):
        pq_index(w, p, q)
    with pytest.raises(ValueError, match=match):
        pq_index_grid(w, [(0.5, 1.0), (p, q)])
    with pytest.raises(ValueError, match=match):
        retained_bound(0.1, 10, p, q)


def test_mask_errors():
    with pytest.raises(ValueError, match="shape"):
        pq_index({"a.weight": torch.ones(2, 2)}, masks={"a.weight": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool"):
        pq_index({"a.weight": torch.ones(2, 2)}, masks={"a.weight": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="b.weight"):
        pq_index({"a.weight": torch.ones(2, 2)}, masks={"b.weight": torch.ones(2, 2, dtype=torch.bool)})


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_agrees_with_float64(dtype):
    w = torch.randn(300, 700, generator=gen(5)).to(dtype)
    ref = w.double()
    for p, q in PAIRS:
        for scope in ("global", "layer"):
            got, want = pq_index({"l.weight": w}, p, q, scope), pq_index({"l.weight": ref}, p, q, scope)
            assert got == pytest.approx(want, rel=1e-6)
        # Rows of 700 are summed in float32 blocks (pairwise, ~1e-7 relative), so a row's index is within ~1e-5.
        assert torch.allclose(
            pq_index(w, p, q, "neuron")["tensor"], pq_index(ref, p, q, "neuron")["tensor"], rtol=1e-5, atol=0
        )
    assert gini(w) == pytest.approx(gini(ref), rel=1e-6)


@pytest.mark.slow
def test_large_tensor_agrees_with_float64_reference():
    """> 10M float32 entries: one-pass sums vs a float64 computation (float32 norms are badly off here)."""
    n_rows, n_cols = 5, 2_100_000  # rows longer than a block: exercises the column-sliced path too
    w = torch.randn(n_rows, n_cols, generator=gen(9))
    x = w.double().abs()
    pairs_ = [(0.5, 1.0), (1.0, 2.0), (0.3, 1.7)]
    grid_g = pq_index_grid(w, pairs_, "global")
    grid_n = pq_index_grid(w, pairs_, "neuron")
    for p, q in pairs_:
        sp, sq = (x.sqrt() if p == 0.5 else x**p).sum(1), (x.square() if q == 2.0 else x**q).sum(1)
        rows_ref = 1 - (sp / n_cols) ** (1 / p) / (sq / n_cols) ** (1 / q)
        glob_ref = 1 - (sp.sum() / x.numel()) ** (1 / p) / (sq.sum() / x.numel()) ** (1 / q)
        assert grid_g[(p, q)] == pytest.approx(float(glob_ref), rel=1e-6)
        assert torch.allclose(grid_n[(p, q)]["tensor"], rows_ref, rtol=1e-6, atol=0)


def test_top_level_exports():
    for name in ("pq_index", "pq_index_grid", "gini", "hoyer", "lq_index", "retained_bound", "sap_prune_count"):
        assert callable(getattr(pqprune, name))


def test_gini_layers_and_global_merges_the_layer_sorts(monkeypatch):
    from pqprune.measure import gini_index as gini_mod
    from pqprune.measure import gini_layers_and_global

    monkeypatch.setattr(gini_mod, "_CHUNK", 5)  # blocks end inside every layer
    g = gen(21)
    sd = {
        "a.weight": torch.randn(7, 9, generator=g),
        "b.weight": torch.randn(4, 3, 3, 3, generator=g).double(),  # mixed dtypes: merged in float64
        "c.weight": torch.full((3, 3), 0.5),  # ties across layers
        "d.weight": torch.randn(2, 11, generator=g).half(),
    }
    masks = {"a.weight": torch.rand(7, 9, generator=g) < 0.6, "c.weight": torch.eye(3, dtype=torch.bool)}
    layers, total = gini_layers_and_global(sd, masks)
    flat = []
    for n, w in sd.items():
        kept = w.double()[masks[n]] if n in masks else w.double().reshape(-1)
        flat.append(kept.reshape(-1))
        assert layers[n] == pytest.approx(ref_gini(kept.numpy()), abs=1e-12), n
    assert total == pytest.approx(ref_gini(torch.cat(flat).numpy()), abs=1e-12)
    assert layers == gini(sd, "layer", masks)
    assert total == gini(sd, "global", masks)


@FAST
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 40)), min_size=1, max_size=5),
    st.sampled_from([3, 1000, 10**6]),  # few magnitudes: ties within and across layers
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_gini_of_float32_layers_by_one_radix_sort_equals_the_definition(shapes, levels, masked, split, seed):
    from pqprune.measure import gini_layers_and_global, sums

    g = gen(seed)
    sd = {f"l{i}.weight": torch.randint(-levels, levels, s, generator=g).float() / 8 for i, s in enumerate(shapes)}
    masks = {n: torch.rand(w.shape, generator=g) < 0.7 for n, w in sd.items()} if masked else None
    assert sums.kernels is not None  # the compiled path is the one under test
    with pytest.MonkeyPatch.context() as mp, torch_threads(2 if split else 1):
        # split: every step over two threads at any size (entry ranges that cut tensors, bucket ranges)
        mp.setattr(sums, "_SPLIT_MIN", 1 if split else sums._SPLIT_MIN)
        layers, total = gini_layers_and_global(sd, masks)
    kept = {n: (w[masks[n]] if masks else w).double().reshape(-1).numpy() for n, w in sd.items()}
    for n, v in kept.items():
        want = ref_gini(v) if v.size and np.abs(v).sum() > 0 else math.nan
        assert layers[n] == pytest.approx(want, abs=1e-12, nan_ok=True), n
    everything = np.concatenate(list(kept.values()))
    want = ref_gini(everything) if everything.size and np.abs(everything).sum() > 0 else math.nan
    assert total == pytest.approx(want, abs=1e-12, nan_ok=True)
    assert layers == pytest.approx(gini(sd, "layer", masks), nan_ok=True)


def test_gini_kernel_names_a_surviving_nan_and_ignores_a_pruned_one():
    w = torch.ones(3, 4)
    w[1, 2] = math.nan
    with pytest.raises(ValueError, match="'x.weight' has NaN or infinite"):
        gini({"x.weight": w}, "global")
    m = torch.ones(3, 4, dtype=torch.bool)
    m[1, 2] = False
    assert gini({"x.weight": w}, "global", {"x.weight": m}) == pytest.approx(0.0, abs=1e-12)


def sorted_gini(x: np.ndarray) -> float:
    """Gini by its sorted form in float64, Σ_i (2i − N − 1)·x_(i) / (N·Σ x), for arrays too large for ref_gini."""
    a = np.sort(np.abs(np.asarray(x, dtype=np.float64)).ravel())
    n = a.size
    return float(((2 * np.arange(1, n + 1) - n - 1) * a).sum() / (n * a.sum()))


def test_gini_split_over_threads_equals_the_definition_and_one_thread():
    # Over 2^20 entries the compiled sort splits its steps over threads: entry ranges that cut a layer, bucket ranges
    # whose ranks are offset by the ranges before them.
    from pqprune.measure import gini_layers_and_global

    g = gen(33)
    sd = {
        "a.weight": torch.randn(700, 1100, generator=g) * 0.05,
        "b.weight": (torch.randint(-5, 5, (300, 1000), generator=g) / 4).float(),  # ties within and across layers
        "c.weight": torch.randn(2000, 3, generator=g).bfloat16(),
        "d.weight": torch.randn(50, 50, generator=g) * 1e-39,  # subnormal magnitudes
    }
    masks = {"a.weight": torch.rand(700, 1100, generator=g) < 0.8, "b.weight": torch.rand(300, 1000, generator=g) < 0.5}
    with torch_threads(2):
        layers, total = gini_layers_and_global(sd, masks)
    with torch_threads(1):
        assert gini_layers_and_global(sd, masks) == (layers, total)
    kept = {n: (w[masks[n]] if n in masks else w).double().reshape(-1).numpy() for n, w in sd.items()}
    assert sorted_gini(kept["c.weight"]) == pytest.approx(ref_gini(kept["c.weight"]), abs=1e-12)
    for n, v in kept.items():
        assert layers[n] == pytest.approx(sorted_gini(v), abs=1e-12), n
    assert total == pytest.approx(sorted_gini(np.concatenate(list(kept.values()))), abs=1e-12)


def test_gini_of_more_layers_than_the_compiled_sort_numbers_equals_the_definition():
    from pqprune.measure import gini_index, gini_layers_and_global

    g = gen(34)
    sd = {f"l{i}.weight": torch.randn(2, 2, generator=g) for i in range(gini_index._MAX_UNITS + 1)}
    layers, total = gini_layers_and_global(sd)
    assert layers["l7.weight"] == pytest.approx(ref_gini(sd["l7.weight"].double().reshape(-1).numpy()), abs=1e-12)
    everything = torch.cat([w.reshape(-1) for w in sd.values()]).double().numpy()
    assert total == pytest.approx(sorted_gini(everything), abs=1e-12)


def test_tensors_without_rows_or_columns_measure_as_nan_and_leave_the_rest_alone():
    g = gen(35)
    full = {"a.weight": torch.randn(4, 5, generator=g), "c.weight": torch.randn(3, 3, generator=g)}
    w = {**full, "b.weight": torch.zeros(0, 5), "d.weight": torch.zeros(2, 0, 3)}
    for measure in (pq_index, gini):
        layer, neuron = measure(w, scope="layer"), measure(w, scope="neuron")
        assert math.isnan(layer["b.weight"]) and math.isnan(layer["d.weight"])
        assert neuron["b.weight"].shape == (0,) and bool(neuron["d.weight"].isnan().all())
        assert measure(w) == pytest.approx(measure(full), rel=1e-12)
        assert layer["a.weight"] == pytest.approx(measure(full, scope="layer")["a.weight"], rel=1e-12)
