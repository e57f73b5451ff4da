"""Experiment: the prune–retrain loop of a run, its settings and identity, its folder of checkpoints, sweeps of
runs, and what a run trains on (data sets, models, the training loop, distributed training).
"""

from pqprune.experiment.loop import RunResult
from pqprune.experiment.prepare import Prepared, prepare
from pqprune.experiment.rundir import RunBusy, RunDir
from pqprune.experiment.runner import run_experiment
from pqprune.experiment.settings import HELP, RunSettings, SettingsError, build_method, load_config, method_label
from pqprune.experiment.sweep import SweepItem, demo_settings, expand_grid, run_sweep

__all__ = [
    "HELP",
    "Prepared",
    "RunBusy",
    "RunDir",
    "RunResult",
    "RunSettings",
    "SettingsError",
    "SweepItem",
    "build_method",
    "demo_settings",
    "expand_grid",
    "load_config",
    "method_label",
    "prepare",
    "run_experiment",
    "run_sweep",
]
