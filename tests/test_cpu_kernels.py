"""The fused power-sum kernel (pqprune.measure.kernels) against the PyTorch path and float64 references."""

from __future__ import annotations

import multiprocessing as mp
from contextlib import contextmanager
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pqprune.measure import kernels as cpu_kernels
from pqprune.measure import power_sums_of, pq_index
from pqprune.measure.weights import as_rows

FAST = settings(max_examples=40, deadline=None)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextmanager
def fused_everywhere():
    """Fused kernel for any size, with tiny blocks so that small tensors exercise row blocks and column slices."""
    with patch.object(cpu_kernels, "MIN_NUMEL", 0), patch.object(cpu_kernels, "_BLOCK", 64):
        yield


@pytest.fixture
def fused_always():
    with fused_everywhere():
        yield


def torch_path(weights, exps, masks):
    with patch.object(cpu_kernels, "MIN_NUMEL", 1 << 62):
        return power_sums_of(weights, exps, masks)


def float64_sums(w: torch.Tensor, m: torch.Tensor | None, s: float) -> torch.Tensor:
    a = as_rows(w).double().abs()
    if m is not None:
        a = a * as_rows(m).double()
    return (a**s).sum(1)


shapes = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 300)), min_size=1, max_size=4)


@FAST
@given(shapes, st.booleans(), st.sampled_from([(0.5, 1.0), (1.0, 2.0), (0.5, 1.0, 2.0)]), st.integers(0, 2**16))
def test_fused_equals_torch_path_and_float64(dims, masked, exps, seed):
    g = gen(seed)
    weights = {f"w{i}": torch.randn(r, c, generator=g) * 3 for i, (r, c) in enumerate(dims)}
    masks = {n: torch.rand(w.shape, generator=g) < 0.6 for n, w in weights.items()} if masked else {}
    with fused_everywhere():
        fused = power_sums_of(weights, exps, masks)
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
    real = cpu_kernels.fused_row_sums
    monkeypatch.setattr(cpu_kernels, "fused_row_sums", lambda mats: calls.append(len(mats)) or real(mats))
    big = {"a.weight": torch.randn(600, 500), "b.weight": torch.randn(10, 20)}
    power_sums_of(big, (0.5, 1.0))
    assert calls == [2]  # one call for all tensors of a model (small ones ride along)
    power_sums_of({"a.weight": torch.randn(10, 20)}, (0.5, 1.0))  # below MIN_NUMEL: PyTorch ops
    power_sums_of(big, (0.3, 1.0))  # an exponent the kernel does not take
    power_sums_of({n: w.double() for n, w in big.items()}, (0.5, 1.0))  # float64 weights
    power_sums_of({"t": torch.randn(500, 600).t()}, (0.5, 1.0))  # not contiguous
    assert calls == [2]


def test_results_do_not_depend_on_the_thread_count():
    w = {"w": torch.randn(800, 3000, generator=gen(1)), "v": torch.randn(3, 400_000, generator=gen(2))}
    m = {"w": torch.rand(800, 3000, generator=gen(3)) < 0.5}
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = power_sums_of(w, (0.5, 1.0, 2.0), m)
        torch.set_num_threads(2)
        two = power_sums_of(w, (0.5, 1.0, 2.0), m)
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
    got = power_sums_of({"layer.weight": bad}, (0.5, 1.0), {"layer.weight": m})["layer.weight"]
    for s in (0.5, 1.0):
        assert torch.allclose(got.sums[s], float64_sums(w, m, s), rtol=1e-6)
    bad[m.nonzero()[0].tolist()] = float("inf")  # now a survivor is infinite
    with pytest.raises(ValueError, match="layer.weight"):
        power_sums_of({"layer.weight": bad}, (0.5, 1.0), {"layer.weight": m})
    with pytest.raises(ValueError, match="other.weight"):
        power_sums_of({"other.weight": torch.full((3, 4), float("nan"))}, (1.0, 2.0))


def test_large_tensor_fused_agrees_with_float64():
    """> 10M float32 entries through the kernel (rows longer than a block: column slices) vs float64."""
    n_rows, n_cols = 5, 2_100_000
    w = torch.randn(n_rows, n_cols, generator=gen(9))
    x = w.double().abs()
    for p, q in [(0.5, 1.0), (1.0, 2.0)]:
        sp, sq = (x.sqrt() if p == 0.5 else x).sum(1), (x if q == 1.0 else x.square()).sum(1)
        rows_ref = 1 - (sp / n_cols) ** (1 / p) / (sq / n_cols) ** (1 / q)
        glob_ref = 1 - (sp.sum() / x.numel()) ** (1 / p) / (sq.sum() / x.numel()) ** (1 / q)
        assert pq_index(w, p, q) == pytest.approx(float(glob_ref), rel=1e-6)
        assert torch.allclose(pq_index(w, p, q, "neuron")["tensor"], rows_ref, rtol=1e-6, atol=0)


def _child_pqi(w: torch.Tensor, out: mp.Queue) -> None:
    out.put(pq_index(w))


def test_forked_child_after_a_parallel_call():
    """GNU OpenMP aborts a forked child's parallel launch; the kernel runs serially in such a child."""
    w = torch.randn(1000, 2000, generator=gen(6))  # above the threading threshold
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        parent = pq_index(w)
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_pqi, args=(w, queue))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert queue.get(timeout=5) == parent
    finally:
        torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------ masking
def test_multiply_by_masks_equals_a_float_mask_multiply_bit_for_bit():
    g = gen(11)
    weights = [torch.randn(s, generator=g) for s in [(7, 5), (64, 3, 3, 3), (1000,)]]
    weights[0][0, 0], weights[0][0, 1], weights[1][0, 0, 0, 0] = float("nan"), -2.5, float("inf")
    masks = [torch.rand(w.shape, generator=g) < 0.6 for w in weights]
    masks[0][0, :2] = torch.tensor([False, False])  # a pruned NaN stays NaN (0·NaN), a pruned negative is -0.0
    expected = [w * m.float() for w, m in zip(weights, masks)]
    table = cpu_kernels.mask_table(weights, masks)
    cpu_kernels.multiply_by_masks(table)
    for got, want in zip(weights, expected):
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
        assert torch.equal(got.signbit(), want.signbit())


def test_mask_table_refuses_what_the_kernel_cannot_take():
    w, m = torch.randn(8, 8), torch.rand(8, 8) < 0.5
    assert cpu_kernels.mask_table([w], [m]) is not None
    assert cpu_kernels.mask_table([w.double()], [m]) is None
    assert cpu_kernels.mask_table([w.t()], [m]) is None  # not contiguous
    assert cpu_kernels.mask_table([w], [m.float()]) is None
    assert cpu_kernels.mask_table([w], [m[:4]]) is None  # shape mismatch
    assert cpu_kernels.mask_table([], []) is None
    with patch.object(cpu_kernels, "MASK_KERNEL_MAX", 63):
        assert cpu_kernels.mask_table([w], [m]) is None


def test_enforce_through_the_kernel_and_through_torch_agree():
    from torch import nn

    from pqprune import LotteryTicket, Pruner

    results = []
    for limit in (cpu_kernels.MASK_KERNEL_MAX, 0):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 5))
        pr = Pruner(model, LotteryTicket(0.3), scope="layer")
        pr.step()
        with patch.object(cpu_kernels, "MASK_KERNEL_MAX", limit):
            pr.maskset._cache = None
            assert (pr.maskset._hot().table is not None) == (limit > 0)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)  # revive everything, then re-zero
            pr.enforce()
        results.append({k: v.clone() for k, v in model.state_dict().items()})
        assert all((p.detach()[~pr.masks[n]] == 0).all() for n, p in pr.maskset.params().items())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
