"""The phase rule of docs/math.md §9 as reports use it. It is defined in :mod:`pqprune.experiment.phases`, one
layer down, because a run that stops at a phase (``--stop-at-phase``) reads the same rule."""

from pqprune.experiment.phases import (
    ACC_TOL,
    PHASE_RULE,
    PHASES,
    PQI_TOL,
    UNKNOWN_PHASE,
    Z_DROP,
    dropped,
    phases,
    pqi_peak_round,
)

__all__ = [
    "ACC_TOL",
    "PHASES",
    "PHASE_RULE",
    "PQI_TOL",
    "UNKNOWN_PHASE",
    "Z_DROP",
    "dropped",
    "phases",
    "pqi_peak_round",
]
