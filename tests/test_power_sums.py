"""Power sums (pqprune.measure.sums): one blocked read, float64 accumulation, masks, NaN handling; mask multiply."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pqprune.measure import power_sums_of, pq_index, sums
from pqprune.measure.weights import as_rows
from pqprune.prune import masks as masks_mod
from pqprune.threads import torch_threads

FAST = settings(max_examples=40, deadline=None)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def float64_sums(w: torch.Tensor, m: torch.Tensor | None, s: float) -> torch.Tensor:
    a = as_rows(w).double().abs()
    if m is not None:
        a = a * as_rows(m).double()
    return (a**s).sum(1)


shapes = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 300)), min_size=1, max_size=4)


@FAST
@given(
    shapes,
    st.booleans(),
    st.sampled_from([(0.5, 1.0), (1.0, 2.0), (0.5, 1.0, 2.0), (0.3, 0.5, 1.5)]),
    st.integers(0, 2**16),
)
def test_blocked_sums_equal_float64(dims, masked, exps, seed):
    g = gen(seed)
    weights = {f"w{i}": torch.randn(r, c, generator=g) * 3 for i, (r, c) in enumerate(dims)}
    masks = {n: torch.rand(w.shape, generator=g) < 0.6 for n, w in weights.items()} if masked else {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sums, "_CHUNK", 64)  # row blocks and column slices on small tensors
        got = power_sums_of(weights, exps, masks)
    assert list(got) == list(weights)
    for n, w in weights.items():
        m = masks.get(n)
        want_count = torch.full((w.shape[0],), float(w.shape[1])) if m is None else m.sum(1).double()
        assert torch.equal(got[n].count, want_count.double())
        for s in exps:
            assert torch.allclose(got[n].sums[s], float64_sums(w, m, s), rtol=1e-6, atol=1e-12)


def test_thread_count_moves_results_by_float32_rounding_only():
    # Block sums are float32 reductions whose order depends on the thread count; the float64 total does not care.
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
            assert torch.allclose(one[n].sums[s], two[n].sums[s], rtol=1e-6, atol=0)


def test_pruned_nan_is_ignored_and_surviving_nan_raises():
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


def test_one_kernel_call_for_many_tensors_names_the_one_with_a_nan():
    weights = {f"block{i}.weight": torch.randn(8, 3, 3, 3, generator=gen(i)) for i in range(5)}
    weights["block3.weight"][2, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="'block3.weight'"):
        power_sums_of(weights, (0.5, 1.0))
    masks = {"block3.weight": torch.ones(8, 3, 3, 3, dtype=torch.bool)}
    masks["block3.weight"][2, 1, 0, 0] = False  # pruned: ignored
    got = power_sums_of(weights, (0.5, 1.0), masks)
    assert got["block3.weight"].count[2] == 26.0 and float(got["block4.weight"].count.sum()) == 8 * 27


@pytest.mark.slow
def test_large_tensor_agrees_with_float64():
    """> 10M float32 entries (rows longer than a block: column slices) vs float64."""
    n_rows, n_cols = 5, 2_100_000
    w = torch.randn(n_rows, n_cols, generator=gen(9))
    x = w.double().abs()
    for p, q in [(0.5, 1.0), (1.0, 2.0)]:
        sp, sq = (x.sqrt() if p == 0.5 else x).sum(1), (x if q == 1.0 else x.square()).sum(1)
        rows_ref = 1 - (sp / n_cols) ** (1 / p) / (sq / n_cols) ** (1 / q)
        glob_ref = 1 - (sp.sum() / x.numel()) ** (1 / p) / (sq.sum() / x.numel()) ** (1 / q)
        assert pq_index(w, p, q) == pytest.approx(float(glob_ref), rel=1e-6)
        assert torch.allclose(pq_index(w, p, q, "neuron")["tensor"], rows_ref, rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------------ masking
def test_chunked_mask_multiply_equals_a_float_mask_multiply_bit_for_bit(monkeypatch):
    monkeypatch.setattr(masks_mod, "_MASK_CHUNK", 7)  # chunks end inside every tensor
    g = gen(11)
    weights = [torch.randn(s, generator=g) for s in [(7, 5), (64, 3, 3, 3), (1000,)]]
    weights[0][0, 0], weights[0][0, 1], weights[1][0, 0, 0, 0] = float("nan"), -2.5, float("inf")
    masks = [torch.rand(w.shape, generator=g) < 0.6 for w in weights]
    masks[0][0, :2] = torch.tensor([False, False])  # a pruned NaN stays NaN (0·NaN), a pruned negative is -0.0
    expected = [w * m.float() for w, m in zip(weights, masks)]
    masks_mod._multiply(weights, [m.view(torch.uint8) for m in masks])
    for got, want in zip(weights, expected):
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want))
        assert torch.equal(got.signbit(), want.signbit())


# --------------------------------------------------------------------------------------------- compiled kernels
def test_the_compiled_kernels_are_built():
    # `make install` compiles them; without them every measure still works, through PyTorch, several times slower.
    assert sums.kernels is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [False, True])
def test_kernels_agree_with_the_pytorch_path(monkeypatch, dtype, masked):
    from pqprune.measure.histogram import half_histogram, half_rows

    g = gen(3)
    w = (torch.randn(37, 5000, generator=g) * 0.05).to(dtype)
    w[0, :100] = 0.0  # zeros among survivors, and runs of one magnitude
    m = torch.rand(37, 5000, generator=g) > 0.4 if masked else None
    exps = (0.5, 1.0, 2.0)
    fast = sums.row_power_sums(w, exps, m)
    half = half_rows(w, exps, m) if dtype != torch.float32 else None
    counts = half_histogram(w, m) if dtype != torch.float32 else None
    monkeypatch.setattr(sums, "kernels", None)
    slow = sums.row_power_sums(w, exps, m)
    assert torch.equal(fast.count, slow.count)
    for s in exps:
        assert torch.allclose(fast.sums[s], slow.sums[s], rtol=1e-6, atol=0.0)
        assert torch.allclose(fast.sums[s], float64_sums(w.float(), m, s), rtol=1e-6, atol=0.0)
    if half is not None:
        assert torch.equal(half[0], counts) and torch.equal(counts, half_histogram(w, m))
        assert all(torch.equal(half[1].sums[s], fast.sums[s]) for s in exps)  # one implementation, one result
        survivors = int(m.sum()) if m is not None else w.numel()
        assert int(counts.sum()) == survivors


def test_kernel_split_over_threads_sums_the_same_rows():
    w = torch.randn(1500, 1000, generator=gen(4))  # 1.5M entries: split over threads
    m = torch.rand(1500, 1000, generator=gen(5)) > 0.5
    with torch_threads(1):
        one = sums.row_power_sums(w, (0.5, 1.0), m)
    with torch_threads(2):
        two = sums.row_power_sums(w, (0.5, 1.0), m)
    assert all(torch.equal(one.sums[s], two.sums[s]) for s in (0.5, 1.0))  # rows are never split


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_kernel_names_a_surviving_inf_and_ignores_a_pruned_one(dtype):
    from pqprune.measure.histogram import half_histogram, half_rows

    w = torch.ones(4, 8, dtype=dtype)
    w[2, 3] = float("inf")
    m = torch.ones(4, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="'layer' has NaN or infinite"):
        half_histogram(w, m, "layer")
    with pytest.raises(ValueError, match="'layer' has NaN or infinite"):
        half_rows(w, (0.5, 1.0), m, "layer")
    m[2, 3] = False
    counts, rows = half_rows(w, (0.5, 1.0), m, "layer")
    assert int(counts.sum()) == 31 and float(rows.sums[1.0].sum()) == 31.0


@FAST
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=6), st.integers(1, 5))
def test_row_bounds_cut_rows_into_ranges_of_about_equal_entries(shapes, parts):
    bounds = sums.row_bounds(shapes, parts)
    n_rows = sum(r for r, _ in shapes)
    assert len(bounds) == parts + 1 and bounds[0] == 0 and bounds[-1] == n_rows
    assert bounds == sorted(bounds)
    row_entries = [c for r, c in shapes for _ in range(r)]
    numel, widest = sum(row_entries), max(c for _, c in shapes)
    for i, b in enumerate(bounds[1:-1], start=1):
        # entries before the cut: the i-th share of the total, give or take one row
        assert abs(sum(row_entries[:b]) - numel * i // parts) <= widest


def test_an_error_in_a_worker_range_is_raised_to_the_caller():
    seen = []

    def work(r0: int, r1: int) -> None:
        seen.append((r0, r1))
        if r0 > 0:
            raise RuntimeError(f"rows {r0}..{r1}")

    with torch_threads(2), pytest.raises(RuntimeError, match="rows 2..4"):
        sums.on_threads(work, 4, 1 << 21)
    assert sorted(seen) == [(0, 2), (2, 4)]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="fork is POSIX-only")
def test_kernel_threads_work_in_a_forked_child():
    # A forked child has none of its parent's threads: a pool inherited as it is would wait forever.
    import os
    import signal

    w = {"w": torch.randn(2000, 1000, generator=gen(7))}
    with torch_threads(2):
        want = power_sums_of(w, (0.5, 1.0))["w"].sums[1.0]
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            signal.alarm(10)  # a hang would kill the child, not the test run
            ok = torch.equal(power_sums_of(w, (0.5, 1.0))["w"].sums[1.0], want)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@FAST
@given(shapes, st.booleans(), st.integers(2, 3), st.integers(0, 2**16))
def test_sums_split_over_threads_at_any_size_equal_float64(dims, masked, threads, seed):
    # With no minimum size the compiled kernel's rows are cut into ranges of about equal entries across tensors.
    g = gen(seed)
    weights = {f"w{i}": torch.randn(r, c, generator=g) for i, (r, c) in enumerate(dims)}
    masks = {n: torch.rand(w.shape, generator=g) < 0.6 for n, w in weights.items()} if masked else {}
    with pytest.MonkeyPatch.context() as mp, torch_threads(threads):
        mp.setattr(sums, "_SPLIT_MIN", 1)
        got = power_sums_of(weights, (0.5, 1.0, 2.0), masks)
    for n, w in weights.items():
        for s in (0.5, 1.0, 2.0):
            assert torch.allclose(got[n].sums[s], float64_sums(w, masks.get(n), s), rtol=1e-6, atol=1e-12)
