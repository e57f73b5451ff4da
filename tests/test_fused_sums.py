"""The fused power-sum kernel (pqprune.fused_sums) against the PyTorch path and float64 references."""

from __future__ import annotations

import multiprocessing as mp
from contextlib import contextmanager
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pqprune import fused_sums, sparsity

FAST = settings(max_examples=40, deadline=None)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextmanager
def fused_everywhere():
    """Fused kernel for any size, with tiny blocks so that small tensors exercise row blocks and column slices."""
    with patch.object(fused_sums, "MIN_NUMEL", 0), patch.object(fused_sums, "_BLOCK", 64):
        yield


@pytest.fixture
def fused_always():
    with fused_everywhere():
        yield


def torch_path(weights, exps, masks):
    with patch.object(fused_sums, "MIN_NUMEL", 1 << 62):
        return sparsity.power_sums_of(weights, exps, masks)


def float64_sums(w: torch.Tensor, m: torch.Tensor | None, s: float) -> torch.Tensor:
    a = sparsity.as_rows(w).double().abs()
    if m is not None:
        a = a * sparsity.as_rows(m).double()
    return (a**s).sum(1)


shapes = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 300)), min_size=1, max_size=4)


@FAST
@given(shapes, st.booleans(), st.sampled_from([(0.5, 1.0), (1.0, 2.0), (0.5, 1.0, 2.0)]), st.integers(0, 2**16))
def test_fused_equals_torch_path_and_float64(dims, masked, exps, seed):
    g = gen(seed)
    weights = {f"w{i}": torch.randn(r, c, generator=g) * 3 for i, (r, c) in enumerate(dims)}
    masks = {n: torch.rand(w.shape, generator=g) < 0.6 for n, w in weights.items()} if masked else {}
    with fused_everywhere():
        fused = sparsity.power_sums_of(weights, exps, masks)
    plain = torch_path(weights, exps, masks)
    assert list(fused) == list(weights)
    for n, w in weights.items():
        assert torch.equal(fused[n].count, plain[n].count)  # survivor counts are exact
        for s in exps:
            ref = float64_sums(w, masks.get(n), s)
            assert torch.allclose(fused[n].sums[s], ref, rtol=1e-6, atol=1e-12)
            assert torch.allclose(fused[n].sums[s], plain[n].sums[s], rtol=1e-6, atol=1e-12)


def test_fused_kernel_is_used_only_where_it_applies(monkeypatch):
    calls = []
    real = fused_sums.row_power_sums
    monkeypatch.setattr(fused_sums, "row_power_sums", lambda mats: calls.append(len(mats)) or real(mats))
    big = {"a.weight": torch.randn(600, 500), "b.weight": torch.randn(10, 20)}
    sparsity.power_sums_of(big, (0.5, 1.0))
    assert calls == [2]  # one call for all tensors of a model (small ones ride along)
    sparsity.power_sums_of({"a.weight": torch.randn(10, 20)}, (0.5, 1.0))  # below MIN_NUMEL: PyTorch ops
    sparsity.power_sums_of(big, (0.3, 1.0))  # an exponent the kernel does not take
    sparsity.power_sums_of({n: w.double() for n, w in big.items()}, (0.5, 1.0))  # float64 weights
    sparsity.power_sums_of({"t": torch.randn(500, 600).t()}, (0.5, 1.0))  # not contiguous
    assert calls == [2]


def test_results_do_not_depend_on_the_thread_count():
    w = {"w": torch.randn(800, 3000, generator=gen(1)), "v": torch.randn(3, 400_000, generator=gen(2))}
    m = {"w": torch.rand(800, 3000, generator=gen(3)) < 0.5}
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sparsity.power_sums_of(w, (0.5, 1.0, 2.0), m)
        torch.set_num_threads(2)
        two = sparsity.power_sums_of(w, (0.5, 1.0, 2.0), m)
    finally:
        torch.set_num_threads(old)
    for n in w:
        assert torch.equal(one[n].count, two[n].count)
        for s in (0.5, 1.0, 2.0):
            assert torch.equal(one[n].sums[s], two[n].sums[s])  # same blocks, same arithmetic, bit for bit


def test_pruned_nan_falls_back_and_surviving_nan_raises(fused_always):
    w = torch.randn(6, 50, generator=gen(4))
    m = torch.rand(6, 50, generator=gen(5)) < 0.5
    bad = w.clone()
    bad[~m] = float("nan")  # NaN only where pruned
    got = sparsity.power_sums_of({"layer.weight": bad}, (0.5, 1.0), {"layer.weight": m})["layer.weight"]
    for s in (0.5, 1.0):
        assert torch.allclose(got.sums[s], float64_sums(w, m, s), rtol=1e-6)
    bad[m.nonzero()[0].tolist()] = float("inf")  # now a survivor is infinite
    with pytest.raises(ValueError, match="layer.weight"):
        sparsity.power_sums_of({"layer.weight": bad}, (0.5, 1.0), {"layer.weight": m})
    with pytest.raises(ValueError, match="other.weight"):
        sparsity.power_sums_of({"other.weight": torch.full((3, 4), float("nan"))}, (1.0, 2.0))


def test_large_tensor_fused_agrees_with_float64():
    """> 10M float32 entries through the kernel (rows longer than a block: column slices) vs float64."""
    n_rows, n_cols = 5, 2_100_000
    w = torch.randn(n_rows, n_cols, generator=gen(9))
    x = w.double().abs()
    for p, q in [(0.5, 1.0), (1.0, 2.0)]:
        sp, sq = (x.sqrt() if p == 0.5 else x).sum(1), (x if q == 1.0 else x.square()).sum(1)
        rows_ref = 1 - (sp / n_cols) ** (1 / p) / (sq / n_cols) ** (1 / q)
        glob_ref = 1 - (sp.sum() / x.numel()) ** (1 / p) / (sq.sum() / x.numel()) ** (1 / q)
        assert sparsity.pq_index(w, p, q) == pytest.approx(float(glob_ref), rel=1e-6)
        assert torch.allclose(sparsity.pq_index(w, p, q, "neuron")["tensor"], rows_ref, rtol=1e-6, atol=0)


def _child_pqi(w: torch.Tensor, out: mp.Queue) -> None:
    out.put(sparsity.pq_index(w))


def test_forked_child_after_a_parallel_call():
    """GNU OpenMP aborts a forked child's parallel launch; the kernel runs serially in such a child."""
    w = torch.randn(1000, 2000, generator=gen(6))  # above the threading threshold
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = sparsity.pq_index(w)
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_pqi, args=(w, queue))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert queue.get(timeout=5) == parent
    finally:
        torch.set_num_threads(old)
