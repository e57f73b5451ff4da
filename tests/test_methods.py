"""Pruning methods: SAP arithmetic (docs/math.md §5), fixed ratios (§6), l_q neuron rules (§7), the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from pqprune import SAP, LotteryTicket, LqNeuron, OneShot, Pruner, RandomMatched, RandomPruning, theory
from pqprune.prune import methods
from pqprune.prune.select import select_prune


def _plan_fraction(method, w: torch.Tensor, scope: str = "layer") -> float:
    plan = method.plan({"w": w}, {}, scope, 0)
    return int(plan.counts["w"]) / w.numel()


def _gauss(d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, d, generator=torch.Generator().manual_seed(seed))


def test_sap_dense_gaussian_fractions():
    fr_05_1 = [_plan_fraction(SAP(0.5, 1.0), _gauss(10_000, s)) for s in range(5)]
    fr_1_2 = [_plan_fraction(SAP(1.0, 2.0), _gauss(10_000, s)) for s in range(5)]
    assert sum(fr_05_1) / 5 == pytest.approx(0.153, abs=0.004)
    assert 0.362 <= sum(fr_1_2) / 5 <= 0.368


def test_sap_record_and_pruned_are_smallest():
    w = _gauss(10_000)
    plan = SAP().plan({"w": w}, {}, "layer", 0)
    (rec,) = plan.records
    assert (
        rec.survivors == 10_000
        and rec.pruned == plan.counts["w"]
        and rec.retained_target + rec.pruned <= rec.survivors + 1
    )
    assert rec.pruned == math.floor(
        rec.survivors * (1 - rec.retained_target / rec.survivors) + 1e-9
    )  # γ = 1, no clip: c = d − r
    assert rec.index == pytest.approx(0.1528, abs=0.01) and not rec.beta_clipped
    sel = select_prune(plan.scores, plan.counts, "layer")["w"]
    assert float(w[sel].abs().max()) <= float(w[~sel].abs().min())


def test_sap_monotone_in_index_eta_gamma():
    # rows of growing sparsity: same magnitudes, more zeros
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2000, generator=g).abs() + 0.5
    counts = []
    for zeros in (0, 200, 500, 1000, 1500):
        w = base.clone()
        w[:zeros] = 0
        counts.append(SAP(beta=1.0).plan({"w": w.reshape(1, -1)}, {}, "layer", 0).counts["w"])
    assert counts == sorted(counts) and counts[0] < counts[-1]
    w = _gauss(5000)
    by_eta = [SAP(eta=e).plan({"w": w}, {}, "layer", 0).counts["w"] for e in (0.0, 0.1, 0.5, 1.0)]
    by_gamma = [SAP(gamma=g_).plan({"w": w}, {}, "layer", 0).counts["w"] for g_ in (0.5, 1.0, 2.0, 4.0)]
    assert by_eta == sorted(by_eta) and by_eta[0] < by_eta[-1]
    assert by_gamma == sorted(by_gamma) and by_gamma[0] < by_gamma[-1]


def test_sap_beta_cap_and_index_zero():
    w = torch.zeros(1, 1000)
    w[0, :10] = 1.0  # very sparse: SAP wants 990
    rec = SAP(beta=0.9).plan({"w": w}, {}, "layer", 0).records[0]
    assert rec.pruned == 900 and rec.beta_clipped and rec.retained_target == 10
    rec = SAP(beta=0.5, gamma=4.0).plan({"w": _gauss(1000)}, {}, "layer", 0).records[0]
    assert rec.pruned == 500 and rec.beta_clipped
    rec = SAP().plan({"w": torch.full((1, 1000), -0.3)}, {}, "layer", 0).records[0]
    assert rec.index == pytest.approx(0.0, abs=1e-5) and rec.pruned == 0
    rec = SAP().plan({"w": torch.zeros(1, 10)}, {}, "layer", 0).records[0]
    assert math.isnan(rec.index) and rec.pruned == 0  # degenerate unit: nothing to prune


@pytest.mark.parametrize(("p", "q"), [(0.5, 1.0), (1.0, 2.0)])
def test_sap_equal_magnitude_k_sparse_prunes_its_zeros(p, q):
    d, k = 1000, 200
    w = torch.zeros(1, d)
    pos = torch.randperm(d, generator=torch.Generator().manual_seed(0))[:k]
    w[0, pos] = torch.where(torch.arange(k) % 2 == 0, 0.7, -0.7)
    plan = SAP(p, q).plan({"w": w}, {}, "layer", 0)
    assert plan.counts["w"] == d - k and plan.records[0].retained_target == k
    sel = select_prune(plan.scores, plan.counts, "layer")["w"]
    assert torch.equal(sel, w == 0)


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 25), nn.ReLU(), nn.Linear(25, 10))


def test_lottery_ticket_and_one_shot_keep_0_8_power_t():
    for method in (LotteryTicket(), OneShot(ratio=0.2)):
        net = _net()
        pr = Pruner(net, method, scope="global")
        g = torch.Generator().manual_seed(1)
        for t in range(1, 16):
            with torch.no_grad():  # "training" changes the weights between rounds
                for p in net.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
            pr.enforce()
            pr.step()
            assert pr.density() == pytest.approx(0.8**t, rel=0.01, abs=2 / 3250), (method, t)
    assert pytest.approx(0.0352, abs=1e-4) == 0.8**15


def test_one_shot_masks_come_from_round0_weights():
    net = _net()
    pr = Pruner(net, OneShot(ratio=0.2), scope="layer")
    ref = {n: p.detach().clone() for n, p in pr.maskset.params().items()}
    g = torch.Generator().manual_seed(2)
    for t in range(1, 6):
        pr.step()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        sparsity = 1 - 0.8**t
        for n, w in ref.items():
            k = math.floor(w.numel() * sparsity + 1e-9)
            want = torch.ones(w.numel(), dtype=torch.bool)
            want[w.reshape(-1).abs().argsort(stable=True)[:k]] = False
            assert torch.equal(pr.masks[n].reshape(-1), want), (t, n)
    # plain one-shot: prune once to the target, then nothing
    pr = Pruner(_net(), OneShot(target_density=0.1), scope="layer")
    pr.step()
    assert pr.density() == pytest.approx(0.1, abs=1e-3)
    assert all(r.pruned == 0 for r in pr.step())


@pytest.mark.parametrize("rounds", [1, 3])
def test_magnitude_masks_match_torch_prune(rounds):
    ours, theirs_l, theirs_g = _net(5), _net(5), _net(5)
    # layer scope == l1_unstructured per tensor (sizes 2000, 1000, 250: 0.2·n is an integer each round)
    pr = Pruner(ours, LotteryTicket(0.2), scope="layer")
    for _ in range(rounds):
        pr.step()
        for m in theirs_l:
            if isinstance(m, nn.Linear):
                prune.l1_unstructured(m, "weight", amount=0.2)
    for i in (0, 2, 4):
        assert torch.equal(pr.masks[f"{i}.weight"], theirs_l[i].weight_mask.bool())
    pr = Pruner(_net(5), LotteryTicket(0.2), scope="global")
    params = [(m, "weight") for m in theirs_g if isinstance(m, nn.Linear)]
    for _ in range(rounds):
        pr.step()
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.2)
    for i in (0, 2, 4):
        assert torch.equal(pr.masks[f"{i}.weight"], theirs_g[i].weight_mask.bool())


def test_random_pruning_reproducible_and_exact():
    def run(seed):
        pr = Pruner(_net(), RandomPruning(0.3, seed=seed), scope="neuron")
        recs = pr.step()
        return pr.masks, recs

    m1, recs = run(7)
    m2, _ = run(7)
    m3, _ = run(8)
    assert all(torch.equal(m1[n], m2[n]) for n in m1)
    assert any(not torch.equal(m1[n], m3[n]) for n in m1)
    for rec in recs:
        assert rec.pruned == math.floor(0.3 * rec.survivors + 1e-9)
    assert (~m1["0.weight"]).sum(1).tolist() == [15] * 40  # floor(0.3 · 50) per row


def test_random_matched_copies_counts_not_positions():
    ref_pr = Pruner(_net(), SAP(), scope="neuron")
    for _ in range(3):
        ref_pr.step()
    ref = ref_pr.masks
    for scope in ("global", "layer", "neuron"):
        pr = Pruner(_net(), RandomMatched(ref, seed=1), scope=scope)
        pr.step()
        assert pr.density() == pytest.approx(ref_pr.density())
        if scope != "global":
            assert all(int(pr.masks[n].sum()) == int(ref[n].sum()) for n in ref)
        if scope == "neuron":
            assert all(torch.equal(pr.masks[n].sum(1), ref[n].sum(1)) for n in ref)
        assert any(not torch.equal(pr.masks[n], ref[n]) for n in ref)
    with pytest.raises(
        ValueError, match=r"random_matched: the reference: no masks or counts for prunable weight\(s\) \['2.weight'"
    ):
        Pruner(_net(), RandomMatched({"0.weight": ref["0.weight"]})).step()
    with pytest.raises(ValueError, match=r"random_matched: the reference: unknown prunable weight name\(s\) \['x'\]"):
        Pruner(_net(), RandomMatched({**ref, "x": ref["0.weight"]})).step()
    with pytest.raises(ValueError, match=r"random_matched: reference: mask for '0.weight' has shape"):
        Pruner(_net(), RandomMatched({**ref, "0.weight": ref["0.weight"].T})).step()


def test_lq_neuron_rules():
    net = _net()
    w = {n: p.detach() for n, p in Pruner(net, "sap").maskset.params().items()}
    # index rule = SAP arithmetic with (p, q) := (q, 1)
    a = LqNeuron(q=0.5, rule="index", gamma=1.5, beta=0.8).plan(w, {}, "neuron", 0)
    b = SAP(0.5, 1.0, gamma=1.5, beta=0.8).plan(w, {}, "neuron", 0)
    assert all(torch.equal(a.counts[n], b.counts[n]) for n in w)
    # bound rule keeps exactly theory.lq_keep_counts per neuron
    lq = LqNeuron(q=0.5, rule="bound", eps=0.05, input_bound=0.2, relative=True)
    plan = lq.plan(w, {}, "neuron", 0)
    for n, t in w.items():
        keep = theory.lq_keep_counts(t, 0.5, 0.05, 0.2, relative=True)
        assert torch.equal(plan.counts[n], t.shape[1] - keep.clamp(max=t.shape[1]))
    sparse_net = _net()
    with torch.no_grad():  # nearly 10%-sparse rows: the bound keeps about 2k of each row's d weights
        for prm in sparse_net.parameters():
            prm.mul_((torch.rand(prm.shape, generator=torch.Generator().manual_seed(0)) < 0.1).float())
    pr = Pruner(sparse_net, LqNeuron(q=0.5, rule="bound", eps=0.5, input_bound=1.0, relative=True))
    assert pr.scope == "neuron"
    pr.step()
    assert 0.05 < pr.density() < 0.5
    with pytest.raises(ValueError, match="scope must be 'neuron'"):
        Pruner(_net(), lq, scope="layer")


def test_registry_and_validation():
    assert methods.available() == ["sap", "lt", "os", "random", "random_matched", "lq"]
    for alias, name in [
        ("lottery_ticket", "lt"),
        ("IMP", "lt"),
        ("one_shot", "os"),
        ("lq_neuron", "lq"),
        ("rm", "random_matched"),
    ]:
        assert methods.lookup(alias).name == name
    assert isinstance(methods.get("sap", p=1.0, q=2.0), SAP)
    assert isinstance(methods.get("lt"), LotteryTicket)
    with pytest.raises(
        ValueError, match="unknown pruning method 'magic'; available: sap, lt \\(lottery_ticket, imp\\)"
    ):
        methods.get("magic")
    with pytest.raises(ValueError, match="unknown pruning method"):
        Pruner(_net(), "magic")
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="ratio must be in \\(0, 1\\)"):
            LotteryTicket(ratio=bad)
        with pytest.raises(ValueError, match="ratio must be in \\(0, 1\\)"):
            RandomPruning(ratio=bad)
    with pytest.raises(ValueError, match="p < q"):
        SAP(p=1.0, q=1.0)
    with pytest.raises(ValueError, match="beta"):
        SAP(beta=0.0)
    with pytest.raises(ValueError, match="gamma"):
        SAP(gamma=0.0)
    with pytest.raises(ValueError, match="eta"):
        SAP(eta=-1.0)
    with pytest.raises(ValueError, match="not both"):
        OneShot(ratio=0.2, target_density=0.5)
    with pytest.raises(ValueError, match="target_density"):
        OneShot(target_density=0.0)
    with pytest.raises(ValueError, match="0 < q < 1"):
        LqNeuron(q=1.0)
    with pytest.raises(ValueError, match="eps > 0"):
        LqNeuron(rule="bound")
    with pytest.raises(ValueError, match="rule must be"):
        LqNeuron(rule="other")
    with pytest.raises(ValueError, match="scope must be one of"):
        Pruner(_net(), "sap", scope="channel")
    with pytest.raises(ValueError, match="already registered"):
        methods.register(SAP)
