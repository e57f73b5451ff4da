"""The three phases of iterative pruning with retraining [Diao23] (docs/math.md §9), labelled round by round."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PHASES: tuple[str, ...] = ("regularisation", "compression", "collapse")
UNKNOWN_PHASE = "unknown"
PQI_TOL = 0.005  # a PQI change smaller than this is noise (PQI of trained MLPs moves by ~0.01–0.1 per round)
ACC_TOL = 0.01  # one accuracy point (accuracies are fractions), as in "within 1 point of the dense model"
Z_DROP = 2.0  # standard errors a drop must exceed to count (≈ 2.3% one-sided false alarms per round compared)

PHASE_RULE = (
    "Phases (docs/math.md §9) are labelled round by round from the seed-mean trajectories of the global PQI and of the "
    "retrained validation accuracy (test accuracy when a run has no validation split), causally (round t looks only "
    "at rounds 0…t). The walk starts in regularisation; it moves to compression as soon as the PQI rises more than "
    f"{PQI_TOL} above its running minimum; from compression it moves to collapse once the PQI has fallen more than "
    f"{PQI_TOL} below the compression peak while the accuracy has dropped; from regularisation it moves straight to "
    "collapse when the accuracy drops while the PQI is still not rising. Collapse is final. The accuracy has dropped "
    f"when it is below its best so far by more than {ACC_TOL * 100:g} point and by more than {Z_DROP:g} standard "
    "errors of the difference of two binomial accuracies, sqrt(a(1-a)/N + b(1-b)/N), with N the number of "
    "evaluation examples times the number of seeds: on 450 validation examples and one seed a drop must exceed "
    "about 3 points to count. Missing values (NaN) carry the previous round's value; an all-NaN PQI gives "
    "'unknown'. The PQI peak round is the highest PQI of the compression phase; none (—) without one."
)


def dropped(best: float, now: float, n_examples: float | None, acc_tol: float = ACC_TOL, z: float = Z_DROP) -> bool:
    """Whether accuracy ``now`` is significantly below ``best`` (fractions), as :data:`PHASE_RULE` says: by more
    than ``acc_tol`` and, when the number of evaluation examples (times seeds) is known, by more than ``z``
    standard errors of the difference of two binomial proportions over ``n_examples`` examples each."""
    gap = best - now
    if gap <= acc_tol:
        return False
    if not n_examples:
        return True
    se = math.sqrt(max(best * (1 - best), 0.0) / n_examples + max(now * (1 - now), 0.0) / n_examples)
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


def _phase_walk(
    pqi: Sequence[float | None],
    accuracy: Sequence[float | None],
    pqi_tol: float,
    acc_tol: float,
    n_examples: float | None = None,
) -> tuple[list[str], int | None]:
    """The labels of :func:`phases` and the round of the PQI peak (see :data:`PHASE_RULE`)."""
    n = len(pqi)
    if len(accuracy) != n:
        raise ValueError(f"pqi and accuracy must have the same length, got {n} and {len(accuracy)}")
    if n == 0:
        return [], None
    x = _carry(pqi)
    if x is None:
        return [UNKNOWN_PHASE] * n, None
    a = _carry(accuracy)  # None: no accuracy at all, so accuracy never "drops"
    state, lo, hi, peak = "regularisation", x[0], -math.inf, None
    best_acc = -math.inf
    labels: list[str] = []
    for t in range(n):
        if a is not None:
            best_acc = max(best_acc, a[t])
        drop = a is not None and dropped(best_acc, a[t], n_examples, acc_tol)
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
    n_examples: float | None = None,
) -> list[str]:
    """The phase of docs/math.md §9 of every round: ``regularisation``, ``compression`` or ``collapse``.

    ``pqi`` is the global PQ Index of the retrained model per round, ``accuracy`` its (validation) accuracy
    (fractions; ``acc_tol`` is in the same unit), ``n_examples`` the number of examples each accuracy is measured
    on, times the number of seeds averaged (None: unknown, only ``acc_tol`` applies). An accuracy "drops" as
    :func:`dropped` says: by more than ``acc_tol`` *and* by more than the binomial noise of ``n_examples``. The rule walks the rounds in order, so round t's label depends only on
    rounds 0…t (what one would say at that time):

    1. Start in ``regularisation`` (PQI falling or flat: pruning removes what training would shrink anyway).
    2. ``regularisation`` → ``compression`` when the PQI rises more than ``pqi_tol`` above its running minimum
       (the trough); the compression peak is the highest PQI seen since.
    3. ``compression`` → ``collapse`` when the PQI is more than ``pqi_tol`` below that peak *and* the accuracy has
       dropped below its best so far (a PQI dip with intact accuracy is noise, not collapse).
    4. ``regularisation`` → ``collapse`` directly when the accuracy drops below its best while the PQI is not
       rising (the compression phase was shorter than one round).
    5. ``collapse`` is final.

    Edge cases: an empty input gives ``[]``; one round gives ``["regularisation"]``; a flat PQI with flat
    accuracy stays ``regularisation``; NaN/None values carry the previous round's value (leading ones take the
    first finite value); a PQI with no finite value gives ``"unknown"`` for every round; an accuracy with no
    finite value never counts as dropping.

    Raises:
        ValueError: the two sequences differ in length.
    """
    return _phase_walk(pqi, accuracy, pqi_tol, acc_tol, n_examples)[0]


def pqi_peak_round(
    pqi: Sequence[float | None],
    accuracy: Sequence[float | None],
    *,
    pqi_tol: float = PQI_TOL,
    acc_tol: float = ACC_TOL,
    n_examples: float | None = None,
) -> int | None:
    """The round of the compression peak of :func:`phases` (highest PQI of the compression phase); None when there
    is no compression phase (the PQI never rose above its running minimum by more than ``pqi_tol``)."""
    return _phase_walk(pqi, accuracy, pqi_tol, acc_tol, n_examples)[1]
