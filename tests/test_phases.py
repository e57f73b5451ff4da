"""The phase rule of docs/math.md §9 (pqprune.experiment.phases) on trajectories whose phases are known: hand-made
ones, simulated noise-only ones (binomial accuracies of a model that does not change) that must not read as
collapse, simulated collapses that must, and the stop point of --stop-at-phase."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pqprune.experiment.phases import PhaseStop, dropped, phases, pqi_peak_round, stop_point

REG, COMP, COLL = "regularisation", "compression", "collapse"


# --------------------------------------------------------------------------------------------- hand-made trajectories
@pytest.mark.parametrize(
    ("pqi", "acc", "expected"),
    [
        ([0.20, 0.18, 0.15, 0.12, 0.10], [0.9] * 5, [REG] * 5),
        ([0.10, 0.12, 0.15, 0.20, 0.25], [0.9] * 5, [REG] + [COMP] * 4),
        ([0.15, 0.12, 0.16, 0.20, 0.17, 0.10], [0.9, 0.9, 0.9, 0.89, 0.85, 0.5], [REG, REG, COMP, COMP, COLL, COLL]),
        # a PQI dip with intact accuracy is not collapse
        ([0.10, 0.15, 0.20, 0.17, 0.22], [0.9] * 5, [REG] + [COMP] * 4),
        # accuracy collapsing while the PQI keeps falling: collapse straight from regularisation
        ([0.20, 0.15, 0.10, 0.05], [0.9, 0.9, 0.7, 0.3], [REG, REG, COLL, COLL]),
        # collapse is final even if the PQI recovers
        ([0.1, 0.2, 0.1, 0.3], [0.9, 0.9, 0.5, 0.5], [REG, COMP, COLL, COLL]),
        # a model that improves with pruning and comes back to its dense accuracy has not collapsed
        ([0.20, 0.15, 0.10, 0.08, 0.06], [0.90, 0.95, 0.96, 0.93, 0.90], [REG] * 5),
    ],
)
def test_phases_synthetic(pqi: list[float], acc: list[float], expected: list[str]) -> None:
    assert phases(pqi, acc) == expected


def test_phases_edge_cases() -> None:
    assert phases([], []) == []
    assert phases([0.3], [0.9]) == [REG]
    assert phases([0.2] * 6, [0.9] * 6) == [REG] * 6  # flat
    assert phases([0.2, 0.2 + 0.004, 0.2], [0.9] * 3) == [REG] * 3  # below the tolerance
    nan = float("nan")
    assert phases([nan, nan], [0.9, 0.9]) == ["unknown", "unknown"]
    # NaN carries the previous value: the NaN round is labelled like its predecessor
    assert phases([0.10, nan, 0.20, nan], [0.9, nan, 0.9, 0.9]) == [REG, REG, COMP, COMP]
    assert phases([None, 0.1, 0.2], [None, None, None]) == [REG, REG, COMP]
    with pytest.raises(ValueError, match="same length"):
        phases([0.1, 0.2], [0.9])
    with pytest.raises(ValueError, match="one value per round"):
        phases([0.1, 0.2], [0.9, 0.9], n_examples=[450])


def test_pqi_peak_round() -> None:
    assert pqi_peak_round([0.15, 0.12, 0.16, 0.20, 0.17], [0.9] * 5) == 3
    assert pqi_peak_round([0.20, 0.15, 0.10], [0.9] * 3) is None  # no compression phase, so no peak
    assert pqi_peak_round([float("nan")] * 3, [0.9] * 3) is None


@pytest.mark.parametrize(
    ("reference", "now", "n", "expected"),
    [
        (0.94, 0.93, None, False),  # one point: never a drop
        (0.94, 0.925, None, True),  # more than a point, noise unknown
        (0.94, 0.90, 450, False),  # 4 points < 3 × 1.79 points of noise
        (0.94, 0.88, 450, True),  # 6 points > 5.5
        (0.94, 0.90, 450 * 3, True),  # three seeds: 4 points > 3.1
        (1.0, 0.975, 450, True),  # a perfect reference has no noise of its own: 2.5 points > 3 × 0.74
        (0.90, 0.95, 450, False),  # a rise is never a drop
    ],
)
def test_dropped(reference: float, now: float, n: int | None, expected: bool) -> None:
    assert dropped(reference, now, n) is expected


def test_the_dense_round_has_its_own_number_of_examples() -> None:
    # 5.5 points below a dense accuracy measured on 3 seeds, the round itself on 1 seed (the others stopped)
    assert dropped(0.93, 0.875, 450, n_reference=1350) is True  # 5.5 > 3 × sqrt(.0651/1350 + .1094/450) = 5.1
    assert dropped(0.93, 0.875, 450) is False  # the dense accuracy on 450 examples too: 5.5 < 5.9


# --------------------------------------------------------------------------------------------- real trajectories
def test_demo_sap_within_a_point_of_dense_is_not_collapse() -> None:
    """SAP(0.5,1) of `pqprune demo --rounds 8 --epochs 3` (seed 0, 450 validation examples): its accuracy wobbles
    by up to 1.6 points below its best round while staying within a point of dense."""
    pqi = [0.1584, 0.1051, 0.0854, 0.0750, 0.0681, 0.0630, 0.0596, 0.0566, 0.0539]
    val = [410, 413, 409, 412, 408, 410, 406, 409, 410]  # correct answers out of 450
    acc = [k / 450 for k in val]
    assert phases(pqi, acc, n_examples=450) == [REG] * 9
    assert pqi_peak_round(pqi, acc, n_examples=450) is None


def test_mnist5k_lt_three_seeds_is_not_collapse() -> None:
    """LT on mnist5k (mean of 3 seeds, 450 validation examples each): 1.1 points below its best round at T = 15
    and 0.97 point below dense, which the earlier best-so-far rule called collapse."""
    pqi = [0.1684, 0.1134, 0.0818, 0.0657, 0.0553, 0.0498, 0.0435, 0.0338]
    pqi += [0.0283, 0.0271, 0.0275, 0.0265, 0.0260, 0.0260, 0.0268, 0.0283]
    acc = [0.9378, 0.9393, 0.9385, 0.9333, 0.9348, 0.9356, 0.9356, 0.9393]
    acc += [0.9370, 0.9385, 0.9393, 0.9378, 0.9326, 0.9311, 0.9311, 0.9281]
    assert phases(pqi, acc, n_examples=1350) == [REG] * 16


# --------------------------------------------------------------------------------------------- simulated noise
def _falling_pqi(rounds: int) -> list[float]:
    return list(0.03 + 0.13 * 0.8 ** np.arange(rounds + 1))


@pytest.mark.parametrize(("n", "seeds", "rounds"), [(450, 1, 30), (450, 3, 30), (1000, 1, 100)])
def test_noise_alone_is_rarely_collapse(n: int, seeds: int, rounds: int) -> None:
    """A model whose true accuracy never changes (0.93), scored each round on n examples per seed: the rule calls
    collapse by round T in at most 5% of such trajectories (about 2.5% at T = 30, 5% at T = 100)."""
    rng = np.random.default_rng(13)
    pqi = _falling_pqi(rounds)
    false_alarms = 0
    for _ in range(400):
        acc = rng.binomial(n, 0.93, size=(seeds, rounds + 1)).mean(axis=0) / n
        false_alarms += phases(pqi, list(acc), n_examples=n * seeds)[-1] == COLL
    assert false_alarms / 400 <= 0.06


def test_without_the_noise_term_noise_reads_as_collapse() -> None:
    """The same noise-only trajectories judged by the one-point tolerance alone: most read as collapse."""
    rng = np.random.default_rng(13)
    pqi = _falling_pqi(30)
    calls = [phases(pqi, list(rng.binomial(450, 0.93, 31) / 450))[-1] == COLL for _ in range(200)]
    assert np.mean(calls) > 0.7


def test_a_simulated_collapse_is_found_within_two_rounds() -> None:
    """True accuracy 0.93 until round 20, then 0.85, 0.70, 0.50…; the PQI falls to round 10, rises to a peak at
    round 20 and falls after it. On 450 examples the collapse is called at round 21 or 22."""
    rng = np.random.default_rng(7)
    p = np.full(31, 0.93)
    p[21:] = [0.85, 0.70, 0.50, 0.30, 0.20, 0.15, 0.12, 0.10, 0.10, 0.10]
    pqi = [0.16 - 0.01 * t for t in range(11)] + [0.06 + 0.012 * k for k in range(1, 11)]
    pqi += [0.18 - 0.02 * k for k in range(1, 11)]
    first = Counter()
    for _ in range(300):
        labels = phases(pqi, list(rng.binomial(450, p) / 450), n_examples=450)
        first[labels.index(COLL) if COLL in labels else None] += 1
    assert first[21] + first[22] >= 0.97 * 300
    assert first[None] == 0


def test_fewer_seeds_in_a_round_means_more_noise() -> None:
    pqi = [0.15, 0.14, 0.13, 0.12]
    acc = [0.93, 0.93, 0.93, 0.89]  # 4 points below dense in the last round
    assert phases(pqi, acc, n_examples=[1350] * 4)[-1] == COLL  # three seeds: beyond 3.3 points
    assert phases(pqi, acc, n_examples=[1350, 1350, 1350, 450])[-1] == REG  # one seed left: within 4.9


# --------------------------------------------------------------------------------------------- --stop-at-phase
THREE_PHASES_PQI = [0.15, 0.12, 0.16, 0.20, 0.17, 0.10, 0.08]
THREE_PHASES_ACC = [0.93, 0.93, 0.93, 0.92, 0.80, 0.50, 0.30]  # labels: REG REG COMP COMP COLL COLL COLL


def test_stop_at_compression_chooses_its_first_round() -> None:
    stop = stop_point("compression", THREE_PHASES_PQI, THREE_PHASES_ACC, 450)
    assert stop == PhaseStop("compression", stop_round=2, chosen_round=2)
    assert stop_point("compression", THREE_PHASES_PQI[:2], THREE_PHASES_ACC[:2], 450) is None  # not yet


def test_stop_at_collapse_chooses_the_round_before() -> None:
    assert stop_point("collapse", THREE_PHASES_PQI, THREE_PHASES_ACC, 450) == PhaseStop("collapse", 4, 3)
    assert stop_point("collapse", THREE_PHASES_PQI[:4], THREE_PHASES_ACC[:4], 450) is None
    assert PhaseStop("collapse", 4, 3).as_dict() == {"stopped_at_phase": "collapse", "stop_round": 4, "chosen_round": 3}


def test_stop_at_compression_also_stops_at_a_collapse_without_compression() -> None:
    pqi, acc = [0.20, 0.15, 0.10, 0.05], [0.93, 0.93, 0.70, 0.30]
    assert stop_point("compression", pqi, acc, 450) == PhaseStop("collapse", 2, 1)


def test_noise_does_not_stop_a_run() -> None:
    acc = [k / 450 for k in [410, 413, 409, 412, 408, 410, 406, 409, 410]]
    pqi = [0.1584, 0.1051, 0.0854, 0.0750, 0.0681, 0.0630, 0.0596, 0.0566, 0.0539]
    assert stop_point("collapse", pqi, acc, 450) is None
    assert stop_point("compression", pqi, acc, 450) is None


def test_stop_point_rejects_other_phases() -> None:
    with pytest.raises(ValueError, match="compression, collapse"):
        stop_point("regularisation", [0.1], [0.9], 450)
