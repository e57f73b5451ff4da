"""Experiment: the prune–retrain loop of a run, its settings and identity, its folder of checkpoints, sweeps of
runs, and what a run trains on (data sets, models, the training loop, distributed training).
"""

from typing import TYPE_CHECKING

from pqprune.lazy import exports

if TYPE_CHECKING:
    from pqprune.experiment.loop import RunResult
    from pqprune.experiment.prepare import Prepared
    from pqprune.experiment.rundir import RunBusy, RunDir
    from pqprune.experiment.runner import run_experiment
    from pqprune.experiment.settings import HELP, RunSettings, SettingsError, build_method, load_config, method_label
    from pqprune.experiment.sweep import SweepItem, demo_settings, expand_grid, run_sweep

# Imported on first use. ``prepare`` (the function) is left out: the name is the submodule once that is imported.
__getattr__ = exports(
    __name__,
    {
        "RunResult": "loop",
        "Prepared": "prepare",
        "RunBusy": "rundir",
        "RunDir": "rundir",
        "run_experiment": "runner",
        "HELP": "settings",
        "RunSettings": "settings",
        "SettingsError": "settings",
        "build_method": "settings",
        "load_config": "settings",
        "method_label": "settings",
        "SweepItem": "sweep",
        "demo_settings": "sweep",
        "expand_grid": "sweep",
        "run_sweep": "sweep",
    },
)

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
    "run_experiment",
    "run_sweep",
]
