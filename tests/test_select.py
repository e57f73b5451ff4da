"""Exact-k selection (select.py): exact counts, the c smallest, deterministic ties, O(n) at scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pqprune.measure.weights import as_rows
from pqprune.prune import select
from pqprune.prune.select import LazyScores, magnitude_scores, select_prune, smallest_in_rows


def smallest_global(scores, k, alive=None):
    return select_prune(scores, {"global": k}, "global", alive)


def _reference(scores: list[torch.Tensor], alive: list[torch.Tensor], c: int) -> list[torch.Tensor]:
    """Brute force: stable sort of (score, flat index) over survivors of the concatenation, first c."""
    s = torch.cat([x.reshape(-1).double() for x in scores])
    a = torch.cat([m.reshape(-1) for m in alive])
    idx = torch.nonzero(a).flatten()
    order = idx[torch.from_numpy(np.lexsort((idx.numpy(), s[idx].numpy())))]
    chosen = torch.zeros_like(a)
    chosen[order[:c]] = True
    out, off = [], 0
    for x in scores:
        out.append(chosen[off : off + x.numel()].reshape(x.shape))
        off += x.numel()
    return out


@st.composite
def _case(draw):
    n_t = draw(st.integers(1, 3))
    shapes = [(draw(st.integers(1, 6)), draw(st.integers(1, 9))) for _ in range(n_t)]
    seed = draw(st.integers(0, 2**16))
    levels = draw(st.sampled_from([3, 50, 10_000]))  # few levels = many ties
    g = torch.Generator().manual_seed(seed)
    scores = [torch.randint(0, levels, s, generator=g).float() for s in shapes]
    alive = [torch.rand(s, generator=g) < draw(st.floats(0.2, 1.0)) for s in shapes]
    return scores, alive, draw(st.floats(0, 1))


@pytest.mark.slow
@given(_case())
@settings(max_examples=150, deadline=None)
def test_global_equals_stable_sort(case):
    scores, alive, frac = case
    n_alive = int(sum(int(a.sum()) for a in alive))
    c = int(frac * n_alive)
    names = [f"t{i}" for i in range(len(scores))]
    got = smallest_global(dict(zip(names, scores)), c, dict(zip(names, alive)))
    want = _reference(scores, alive, c)
    assert sum(int(g.sum()) for g in got.values()) == c
    for n, w in zip(names, want):
        assert torch.equal(got[n], w)


@given(_case())
@settings(max_examples=150, deadline=None)
def test_layer_and_neuron_equal_stable_sort(case):
    scores, alive, frac = case
    names = [f"t{i}" for i in range(len(scores))]
    # layer scope
    counts = {n: int(frac * int(a.sum())) for n, a in zip(names, alive)}
    got = select_prune(dict(zip(names, scores)), counts, "layer", dict(zip(names, alive)))
    for n, s, a in zip(names, scores, alive):
        assert torch.equal(got[n], _reference([s], [a], counts[n])[0])
    # neuron scope: a different count for every row
    g = torch.Generator().manual_seed(1)
    ncounts = {
        n: (torch.rand(s.shape[0], generator=g) * as_rows(a).sum(1)).floor().long()
        for n, s, a in zip(names, scores, alive)
    }
    got = select_prune(dict(zip(names, scores)), ncounts, "neuron", dict(zip(names, alive)))
    for n, s, a in zip(names, scores, alive):
        for i in range(s.shape[0]):
            want = _reference([s[i]], [a[i]], int(ncounts[n][i]))[0]
            assert torch.equal(got[n][i], want), (n, i)


def test_equal_weights_lowest_index_first():
    w = torch.ones(2, 5)
    got = select_prune(magnitude_scores({"a": w, "b": w.clone()}), {"global": 12}, "global")
    assert got["a"].all() and got["b"].reshape(-1).tolist() == [
        True,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        False,
        False,
    ]
    got = select_prune(magnitude_scores({"a": w}), {"a": torch.tensor([1, 3])}, "neuron")
    assert got["a"].tolist() == [[True, False, False, False, False], [True, True, True, False, False]]


def test_dead_entries_never_selected_and_counts_checked():
    s = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    alive = torch.tensor([[False, True, False, True]])
    assert smallest_in_rows(s, 2, alive).tolist() == [[False, True, False, True]]
    with pytest.raises(ValueError, match="cannot prune 3 of the 2 survivors"):
        smallest_in_rows(s, 3, alive, name="fc.weight")
    with pytest.raises(ValueError, match="global: cannot prune"):
        smallest_global({"s": s}, 3, {"s": alive})
    with pytest.raises(ValueError, match="shape"):
        smallest_global({"s": s}, 1, {"s": alive.reshape(2, 2)})
    with pytest.raises(ValueError, match="NaN"):
        smallest_in_rows(torch.tensor([float("nan"), 1.0]), 1)
    # global scope skips the extra NaN pass: NaN ranks last, like a pruned entry
    assert smallest_global({"s": torch.tensor([float("nan"), 1.0, 0.5])}, 2)["s"].tolist() == [False, True, True]


def test_lazy_scores_not_stored():
    calls = []
    w = {"a": torch.randn(10, 10)}
    lazy = LazyScores(w, lambda n, t: (calls.append(n), t.abs())[1])
    select_prune(lazy, {"global": 30}, "global")
    assert calls == ["a", "a", "a"]  # two radix passes + the mask pass, nothing cached


@pytest.mark.slow
def test_global_above_quantile_limit():
    # torch.quantile refuses inputs above 2^24 entries; selection must not care.
    n = (1 << 24) + 1000
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(n // 2, generator=g).reshape(-1, 1), "b": torch.randn(n - n // 2, generator=g)}
    k = int(0.2 * n)
    got = smallest_global(magnitude_scores(w), k)
    assert sum(int(m.sum()) for m in got.values()) == k
    thr = max(float(w[n_][got[n_]].abs().max()) for n_ in w)
    assert all(float(w[n_][~got[n_]].abs().min()) >= thr for n_ in w)


# ------------------------------------------------------------------------------------------ global radix selection
_SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 3.4e38, -3.4e38, float("inf"), float("-inf"), 0.5, 2.0]


@st.composite
def _wide_case(draw):
    """Scores of any sign and scale, float32 or float64, many ties, chunks a few entries long."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    n_t = draw(st.integers(1, 4))
    shapes = [(draw(st.integers(1, 5)), draw(st.integers(1, 7))) for _ in range(n_t)]
    pool = draw(st.lists(st.one_of(st.sampled_from(_SPECIAL), st.floats(-1e6, 1e6, width=32)), min_size=1, max_size=6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scores = [torch.tensor(pool, dtype=dtype)[torch.randint(0, len(pool), s, generator=g)] for s in shapes]
    alive = [torch.rand(s, generator=g) < draw(st.floats(0.2, 1.0)) for s in shapes]
    return scores, alive, draw(st.floats(0, 1)), draw(st.integers(1, 9))


@pytest.mark.slow
@given(_wide_case())
@settings(max_examples=200, deadline=None)
def test_global_radix_equals_stable_sort_any_floats(case):
    scores, alive, frac, chunk = case
    n_alive = int(sum(int(a.sum()) for a in alive))
    c = int(frac * n_alive)
    names = [f"t{i}" for i in range(len(scores))]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(select, "_CHUNK", chunk)  # chunks end inside tensors and inside runs of ties
        got = smallest_global(dict(zip(names, scores)), c, dict(zip(names, alive)))
        keep = select.select_keep(dict(zip(names, scores)), {"global": c}, "global", dict(zip(names, alive)))
    want = _reference(scores, alive, c)
    assert sum(int(g.sum()) for g in got.values()) == c
    for n, w, a in zip(names, want, alive):
        assert torch.equal(got[n], w), n
        assert torch.equal(keep[n], a & ~w), n


def test_global_threshold_reports_value_and_ties():
    s = torch.tensor([3.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    th = select.global_threshold(lambda: [(s, None)], 3)
    assert (th.value, th.below, th.ties) == (2.0, 1, 2)
    assert select.global_threshold(lambda: [(s, None)], 0).ties == 0
    masks = list(select.global_masks(lambda: [(s, None)], 3))
    assert masks[0].tolist() == [True, False, False, False, True, True]


def test_global_streams_tensors_from_shards(tmp_path):
    """The stream is called once per pass and may read each tensor afresh from a file, one at a time."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    weights = {f"l{i}.weight": torch.randn(37, 11, generator=g) for i in range(3)}
    for i, (n, w) in enumerate(weights.items()):
        save_file({n: w}, str(tmp_path / f"shard{i}.safetensors"))
    passes = []

    def stream():
        passes.append(1)
        for i, n in enumerate(weights):
            with safe_open(str(tmp_path / f"shard{i}.safetensors"), "pt") as f:
                yield f.get_tensor(n), None

    k = 500
    got = list(select.global_masks(stream, k, score=lambda w, out: torch.abs(w, out=out)))
    assert len(passes) == 3
    want = select.select_keep(magnitude_scores(weights), {"global": k}, "global")
    assert all(torch.equal(m, want[n]) for m, n in zip(got, weights))
    assert sum(int((~m).sum()) for m in got) == k


def test_global_nan_scores_fail_clearly():
    s = torch.tensor([float("nan"), 1.0, 0.5])
    assert smallest_global({"s": s}, 2)["s"].tolist() == [False, True, True]  # a positive NaN ranks last
    with pytest.raises(ValueError, match="NaN"):
        smallest_global({"s": s}, 3)
    with pytest.raises(ValueError, match="NaN"):  # a negative NaN would rank first: the count check catches it
        smallest_global({"s": torch.tensor([1.0, 0.5]).neg().sqrt().neg()}, 1)
    with pytest.raises(ValueError, match="one dtype"):
        smallest_global({"a": torch.ones(3), "b": torch.ones(3, dtype=torch.float64)}, 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_global_selection_of_16_bit_weights(dtype):
    # Scores of 16-bit weights are widened to float32 (exactly): the same selection as of the widened weights.
    g = torch.Generator().manual_seed(0)
    w = {n: torch.randn(s, generator=g).to(dtype) for n, s in (("a", (40, 30)), ("b", (25, 50)))}
    alive = {"b": torch.rand((25, 50), generator=g) < 0.7}
    out = select_prune(magnitude_scores(w), {"global": 900}, "global", alive)
    ref = select_prune({n: t.float().abs() for n, t in w.items()}, {"global": 900}, "global", alive)
    assert all(torch.equal(out[n], ref[n]) for n in w)
    assert sum(int(m.sum()) for m in out.values()) == 900


@st.composite
def _weights_case(draw):
    n_t = draw(st.integers(1, 3))
    shapes = [(draw(st.integers(1, 6)), draw(st.integers(1, 9))) for _ in range(n_t)]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    levels = draw(st.sampled_from([3, 50, 10_000]))  # few levels = many ties, of both signs
    weights = [(torch.randint(-levels, levels, s, generator=g).float() / 7) for s in shapes]
    alive = [torch.rand(s, generator=g) < draw(st.floats(0.2, 1.0)) for s in shapes]
    return weights, alive, draw(st.floats(0, 1))


@given(_weights_case(), st.booleans())
@settings(max_examples=100, deadline=None)
def test_global_magnitude_selection_equals_stable_sort_with_and_without_kernels(case, compiled):
    # Magnitude scores of float32 CPU weights take the compiled kernels' passes; the PyTorch passes must agree.
    weights, alive, frac = case
    names = [f"t{i}" for i in range(len(weights))]
    c = int(frac * sum(int(a.sum()) for a in alive))
    kernels = select.sums.kernels
    try:
        select.sums.kernels = kernels if compiled else None
        got = smallest_global(magnitude_scores(dict(zip(names, weights))), c, dict(zip(names, alive)))
    finally:
        select.sums.kernels = kernels
    want = _reference([w.abs() for w in weights], alive, c)
    assert all(torch.equal(got[n], w) for n, w in zip(names, want))


def test_global_magnitude_kernel_split_over_threads_equals_pytorch_passes(monkeypatch):
    from pqprune.threads import torch_threads

    g = torch.Generator().manual_seed(1)
    weights = {"a": torch.randn(1200, 1000, generator=g), "b": torch.randn(300, 7, generator=g)}
    weights["a"][0, :5000] = 0.25  # a run of ties
    alive = {"a": torch.rand(1200, 1000, generator=g) < 0.7, "b": None}
    k = 400_000
    with torch_threads(2):
        fast = smallest_global(magnitude_scores(weights), k, alive)
    monkeypatch.setattr(select.sums, "kernels", None)
    slow = smallest_global(magnitude_scores(weights), k, alive)
    assert all(torch.equal(fast[n], slow[n]) for n in weights)
    assert sum(int(m.sum()) for m in fast.values()) == k
