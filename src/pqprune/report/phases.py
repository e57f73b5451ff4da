"""The three phases of iterative pruning with retraining [Diao23] (docs/math.md §9), labelled round by round."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PHASES: tuple[str, ...] = ("regularisation", "compression", "collapse")
UNKNOWN_PHASE = "unknown"
PQI_TOL = 0.005  # a PQI change smaller than this is noise (PQI of trained MLPs moves by ~0.01–0.1 per round)
ACC_TOL = 0.01  # one accuracy point (accuracies are fractions), as in "within 1 point of the dense model"

PHASE_RULE = (
    "Phases (docs/math.md §9) are labelled round by round from the seed-mean trajectories of the global PQI and of the "
    "retrained test accuracy, causally (round t looks only at rounds 0…t). The walk starts in regularisation; "
    f"it moves to compression as soon as the PQI rises more than {PQI_TOL} above its running minimum; from "
    f"compression it moves to collapse once the PQI has fallen more than {PQI_TOL} below the compression peak "
    f"while the accuracy is more than {ACC_TOL * 100:g} point below its best so far; from regularisation it moves "
    "straight to collapse when the accuracy drops by that much while the PQI is still not rising. Collapse is "
    "final. Missing values (NaN) carry the previous round's value; an all-NaN PQI gives 'unknown'. The PQI peak "
    "round is the highest PQI of the compression phase (the overall maximum when there is none)."
)


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
    pqi: Sequence[float | None], accuracy: Sequence[float | None], pqi_tol: float, acc_tol: float
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
        dropped = a is not None and a[t] < best_acc - acc_tol
        if state == "regularisation":
            if x[t] > lo + pqi_tol:
                state, hi, peak = "compression", x[t], t
            elif dropped:
                state = "collapse"
            lo = min(lo, x[t])
        elif state == "compression":
            if x[t] > hi:
                hi, peak = x[t], t
            elif x[t] < hi - pqi_tol and dropped:
                state = "collapse"
        labels.append(state)
    if peak is None:
        finite = [v for v in pqi if v is not None and math.isfinite(v)]
        peak = int(np.nanargmax(np.array([np.nan if v is None else v for v in pqi], float))) if finite else None
    return labels, peak


def phases(
    pqi: Sequence[float | None],
    accuracy: Sequence[float | None],
    *,
    pqi_tol: float = PQI_TOL,
    acc_tol: float = ACC_TOL,
) -> list[str]:
    """The phase of docs/math.md §9 of every round: ``regularisation``, ``compression`` or ``collapse``.

    ``pqi`` is the global PQ Index of the retrained model per round, ``accuracy`` its test accuracy (fractions;
    ``acc_tol`` is in the same unit). The rule walks the rounds in order, so round t's label depends only on
    rounds 0…t (what one would say at that time):

    1. Start in ``regularisation`` (PQI falling or flat: pruning removes what training would shrink anyway).
    2. ``regularisation`` → ``compression`` when the PQI rises more than ``pqi_tol`` above its running minimum
       (the trough); the compression peak is the highest PQI seen since.
    3. ``compression`` → ``collapse`` when the PQI is more than ``pqi_tol`` below that peak *and* the accuracy is
       more than ``acc_tol`` below its best so far (a PQI dip with intact accuracy is noise, not collapse).
    4. ``regularisation`` → ``collapse`` directly when the accuracy drops by more than ``acc_tol`` below its best
       while the PQI is not rising (the compression phase was shorter than one round).
    5. ``collapse`` is final.

    Edge cases: an empty input gives ``[]``; one round gives ``["regularisation"]``; a flat PQI with flat
    accuracy stays ``regularisation``; NaN/None values carry the previous round's value (leading ones take the
    first finite value); a PQI with no finite value gives ``"unknown"`` for every round; an accuracy with no
    finite value never counts as dropping.

    Raises:
        ValueError: the two sequences differ in length.
    """
    return _phase_walk(pqi, accuracy, pqi_tol, acc_tol)[0]


def pqi_peak_round(
    pqi: Sequence[float | None],
    accuracy: Sequence[float | None],
    *,
    pqi_tol: float = PQI_TOL,
    acc_tol: float = ACC_TOL,
) -> int | None:
    """The round of the compression peak of :func:`phases` (highest PQI of the compression phase); the round of
    the largest PQI when there is no compression phase; None when the PQI has no finite value."""
    return _phase_walk(pqi, accuracy, pqi_tol, acc_tol)[1]
