"""The three phases of iterative pruning with retraining [Diao23] (docs/math.md §9), labelled round by round.

The rule lives in the experiment layer because a run can stop at a phase (``--stop-at-phase``); reports read the
same rule on their seed-mean trajectories.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PHASES: tuple[str, ...] = ("regularisation", "compression", "collapse")
UNKNOWN_PHASE = "unknown"
STOP_PHASES: tuple[str, ...] = ("compression", "collapse")  # what --stop-at-phase accepts
PQI_TOL = 0.005  # a PQI change smaller than this is noise (PQI of trained MLPs moves by ~0.01–0.1 per round)
ACC_TOL = 0.01  # one accuracy point (accuracies are fractions), as in "within 1 point of the dense model"
# Standard errors a drop must exceed. Every round is compared with the same dense accuracy, so over T rounds the
# chance that pure noise reads as a drop somewhere is far above one comparison's 0.13%: measured on simulated
# noise-only trajectories it is about 2% for T = 30 and 5% for T = 100 (z = 2 would give 23% and 37%).
Z_DROP = 3.0

PHASE_RULE = (
    "Phases (docs/math.md §9) are labelled round by round from the seed-mean trajectories of the global PQI and of "
    "the retrained validation accuracy (test accuracy when a run has no validation split), causally (round t looks "
    "only at rounds 0…t). The walk starts in regularisation; it moves to compression as soon as the PQI rises more "
    f"than {PQI_TOL} above its running minimum; from compression it moves to collapse once the PQI has fallen more "
    f"than {PQI_TOL} below the compression peak while the accuracy has dropped; from regularisation it moves "
    "straight to collapse when the accuracy drops while the PQI is still not rising. Collapse is final. The "
    "accuracy a_t has dropped when it is below the dense (round-0) accuracy a_0 by more than "
    f"{ACC_TOL * 100:g} point and by more than {Z_DROP:g} standard errors of the difference of two binomial "
    "accuracies, sqrt(a_0(1-a_0)/N_0 + a_t(1-a_t)/N_t), with N_t the number of evaluation examples times the "
    "number of seeds averaged at round t: on 450 validation examples a drop must exceed about 5 points with one "
    "seed and 3 points with three. A drop is measured from the dense model, not from the best round so far, "
    "because the best of many noisy rounds is biased upwards. Missing values (NaN) carry the previous round's "
    "value; an all-NaN PQI gives 'unknown'. The PQI peak round is the highest PQI of the compression phase; none "
    "(–) while the PQI has not risen."
)


def dropped(
    reference: float,
    now: float,
    n_examples: float | None,
    acc_tol: float = ACC_TOL,
    z: float = Z_DROP,
    n_reference: float | None = None,
) -> bool:
    """Whether accuracy ``now`` is significantly below ``reference`` (fractions; docs/math.md §9): by more than
    ``acc_tol`` and, when the number of examples behind ``now`` is known, by more than ``z`` standard errors of the
    difference of two binomial proportions, ``sqrt(r(1-r)/n_reference + a(1-a)/n_examples)`` (``n_reference``
    defaults to ``n_examples``). With ``n_examples`` None only ``acc_tol`` applies."""
    gap = reference - now
    if gap <= acc_tol:
        return False
    if not n_examples:
        return True
    n_ref = n_reference or n_examples
    se = math.sqrt(max(reference * (1 - reference), 0.0) / n_ref + max(now * (1 - now), 0.0) / n_examples)
    return gap > z * se


# --------------------------------------------------------------------------------------------- phases (docs/math.md §9)
def _carry(values: Sequence[float | None]) -> np.ndarray | None:
    """Float array with NaN/None replaced by the previous finite value (leading ones by the first); None if none."""
    x = np.array([np.nan if v is None else float(v) for v in values], dtype=float)
    finite = np.isfinite(x)
    if not finite.any():
        return None
    idx = np.where(finite, np.arange(len(x)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = int(np.argmax(finite))  # leading NaNs take the first finite value
    return x[idx]


def _per_round(n_examples: float | Sequence[float | None] | None, n: int) -> list[float | None]:
    """``n_examples`` as one value per round (a scalar applies to every round)."""
    if n_examples is None or isinstance(n_examples, (int, float)):
        return [None if n_examples is None else float(n_examples)] * n
    if len(n_examples) != n:
        raise ValueError(f"n_examples must have one value per round ({n}), got {len(n_examples)}")
    return [float(v) if v else None for v in n_examples]


def _phase_walk(
    pqi: Sequence[float | None],
    accuracy: Sequence[float | None],
    pqi_tol: float,
    acc_tol: float,
    n_examples: float | Sequence[float | None] | None = None,
    z: float = Z_DROP,
) -> tuple[list[str], int | None]:
    """The labels of :func:`phases` and the round of the PQI peak (see :data:`PHASE_RULE`)."""
    n = len(pqi)
    if len(accuracy) != n:
        raise ValueError(f"pqi and accuracy must have the same length, got {n} and {len(accuracy)}")
    if n == 0:
        return [], None
    sizes = _per_round(n_examples, n)
    x = _carry(pqi)
    if x is None:
        return [UNKNOWN_PHASE] * n, None
    a = _carry(accuracy)  # None: no accuracy at all, so accuracy never "drops"
    state, lo, hi, peak = "regularisation", x[0], -math.inf, None
    labels: list[str] = []
    for t in range(n):
        drop = a is not None and dropped(a[0], a[t], sizes[t], acc_tol, z, n_reference=sizes[0])
        if state == "regularisation":
            if x[t] > lo + pqi_tol:
                state, hi, peak = "compression", x[t], t
            elif drop:
                state = "collapse"
            lo = min(lo, x[t])
        elif state == "compression":
            if x[t] > hi:
                hi, peak = x[t], t
            elif x[t] < hi - pqi_tol and drop:
                state = "collapse"
        labels.append(state)
    return labels, peak


def phases(
    pqi: Sequence[float | None],
    accuracy: Sequence[float | None],
    *,
    pqi_tol: float = PQI_TOL,
    acc_tol: float = ACC_TOL,
    n_examples: float | Sequence[float | None] | None = None,
    z: float = Z_DROP,
) -> list[str]:
    """The phase of docs/math.md §9 of every round: ``regularisation``, ``compression`` or ``collapse``.

    ``pqi`` is the global PQ Index of the retrained model per round, ``accuracy`` its (validation) accuracy
    (fractions; ``acc_tol`` is in the same unit), ``n_examples`` the number of examples each accuracy is measured
    on, times the number of seeds averaged: one number, or one per round (None: unknown, only ``acc_tol``
    applies). An accuracy "drops" as :func:`dropped` says, measured from round 0 (the dense model): by more than
    ``acc_tol`` *and* by more than ``z`` standard errors of the binomial noise. The rule walks the rounds in
    order, so round t's label depends only on rounds 0…t (what one would say at that time):

    1. Start in ``regularisation`` (PQI falling or flat: pruning removes what training would shrink anyway).
    2. ``regularisation`` → ``compression`` when the PQI rises more than ``pqi_tol`` above its running minimum
       (the trough); the compression peak is the highest PQI seen since.
    3. ``compression`` → ``collapse`` when the PQI is more than ``pqi_tol`` below that peak *and* the accuracy has
       dropped (a PQI dip with intact accuracy is noise, not collapse).
    4. ``regularisation`` → ``collapse`` directly when the accuracy drops while the PQI is not rising (the
       compression phase was shorter than one round).
    5. ``collapse`` is final.

    Edge cases: an empty input gives ``[]``; one round gives ``["regularisation"]``; a flat PQI with flat
    accuracy stays ``regularisation``; NaN/None values carry the previous round's value (leading ones take the
    first finite value); a PQI with no finite value gives ``"unknown"`` for every round; an accuracy with no
    finite value never counts as dropping.

    Raises:
        ValueError: the sequences differ in length.
    """
    return _phase_walk(pqi, accuracy, pqi_tol, acc_tol, n_examples, z)[0]


def pqi_peak_round(
    pqi: Sequence[float | None],
    accuracy: Sequence[float | None],
    *,
    pqi_tol: float = PQI_TOL,
    acc_tol: float = ACC_TOL,
    n_examples: float | Sequence[float | None] | None = None,
    z: float = Z_DROP,
) -> int | None:
    """The round of the compression peak of :func:`phases` (highest PQI of the compression phase); None when there
    is no compression phase (the PQI never rose above its running minimum by more than ``pqi_tol``)."""
    return _phase_walk(pqi, accuracy, pqi_tol, acc_tol, n_examples, z)[1]


# --------------------------------------------------------------------------------------------- stopping at a phase
@dataclass(frozen=True)
class PhaseStop:
    """Where a run stops under ``--stop-at-phase``: the round ``stop_round`` at which the phase rule reached
    ``phase``, and the round kept as the run's result, ``chosen_round`` (the first compression round; for
    collapse the last round before it)."""

    phase: str
    stop_round: int
    chosen_round: int

    def as_dict(self) -> dict[str, int | str]:
        return {"stopped_at_phase": self.phase, "stop_round": self.stop_round, "chosen_round": self.chosen_round}


def stop_point(
    target: str,
    pqi: Sequence[float | None],
    accuracy: Sequence[float | None],
    n_examples: float | Sequence[float | None] | None,
) -> PhaseStop | None:
    """The first round at which a run stopping at phase ``target`` (``compression`` or ``collapse``) stops, from
    its trajectories so far (as :func:`phases` reads them); None while it goes on.

    A run asked to stop at compression also stops at a collapse that comes without a compression phase (it would
    never reach compression after it: collapse is final); it then reports ``phase = "collapse"``. The chosen round
    is the first compression round, or the round before the first collapse round.

    Raises:
        ValueError: ``target`` is not one of :data:`STOP_PHASES`, or the sequences differ in length.
    """
    if target not in STOP_PHASES:
        raise ValueError(f"the phase to stop at must be one of {', '.join(STOP_PHASES)}, got {target!r}")
    labels = phases(pqi, accuracy, n_examples=n_examples)
    wanted = STOP_PHASES[STOP_PHASES.index(target) :]  # a later phase also ends the wait
    for t, label in enumerate(labels):
        if label in wanted:
            return PhaseStop(label, t, t if label == "compression" else max(t - 1, 0))
    return None
