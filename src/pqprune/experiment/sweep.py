"""Sweeps: the product of lists of settings, skipping finished runs, run by an executor: ``local`` worker processes
(one thread each) or ``ray`` tasks on a Ray cluster (:mod:`pqprune.experiment.ray_sweep`).

A run that another process computes (its claim in the results database is live: another sweep, or a task that
Ray retried) is waited for, not computed twice; once its holder is done the run is found finished and reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue as queue_mod
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pqprune.experiment.loop import Progress, _no_progress
from pqprune.experiment.prepare import prepare
from pqprune.experiment.rundir import RunBusy, RunDir
from pqprune.experiment.runner import _check_runs_dir, run_experiment
from pqprune.experiment.settings import RunSettings, SettingsError
from pqprune.experiment.signals import raise_terminated
from pqprune.prune.methods.registry import lookup, option_names, takers
from pqprune.store import DEFAULT_DB, ClaimLost, Store, StoreError

if TYPE_CHECKING:
    from pqprune.experiment.ray_sweep import RayOptions


# --------------------------------------------------------------------------------------------- sweeps
def expand_grid(base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[RunSettings]:
    """The product of the value lists in ``grid`` over ``base`` settings, in order, duplicates (same run) removed.

    ``expand_grid({"epochs": 5}, {"method": ["sap", "lt"], "seed": [0, 1]})`` → 4 settings. Keys are checked.
    A method option applies to the swept methods that take it (``--method sap,lt --p 1`` sets SAP's p only); an
    option that no swept method takes is an error.
    """
    import itertools

    keys = list(grid)
    for key in keys:
        if not grid[key]:
            raise SettingsError(f"sweep: empty list of values for {key!r}")
    names = [str(m) for m in grid.get("method", [base.get("method", RunSettings().method)])]
    try:
        swept = [lookup(m) for m in names]
    except ValueError as err:
        raise SettingsError(str(err)) from None
    options = {k.replace("-", "_") for k in [*base, *keys]} & set(option_names())
    for opt in sorted(options):
        if not any(opt in {o.name for o in cls.options} for cls in swept):
            raise SettingsError(
                f"sweep: no swept method ({', '.join(c.name for c in swept)}) takes option {opt!r} "
                f"(methods that do: {', '.join(takers(opt))})"
            )
    out: dict[str, RunSettings] = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = {str(k).replace("-", "_"): v for k, v in {**base, **dict(zip(keys, combo))}.items()}
        own = {o.name for o in lookup(str(values.get("method", RunSettings().method))).options}
        settings = RunSettings.from_dict({k: v for k, v in values.items() if k not in options or k in own})
        out.setdefault(settings.run_id(), settings)
    return list(out.values())


@dataclass
class SweepItem:
    """The outcome of one run of a sweep: ``status`` is finished, skipped (already finished), failed or interrupted."""

    run_id: str
    settings: RunSettings
    status: str
    message: str | None = None


def check_sweep(settings_list: Sequence[RunSettings]) -> None:
    """Validate every run of a sweep before any starts: settings, data and model–data compatibility.

    Each distinct (data, model) pair is prepared once, so a bad combination fails the sweep up front.
    """
    seen: set[str] = set()
    for settings in settings_list:
        res = settings.validate()
        key = json.dumps([res.data, res.data_options, res.model, res.model_options, res.data_root], sort_keys=True)
        if key not in seen:
            seen.add(key)
            prepare(res.replace(device="cpu"))


EXECUTORS = ("local", "ray")
# A run claimed by another process is polled for this often at first, backing off to the maximum.
WAIT_FIRST_SECONDS, WAIT_MAX_SECONDS = 0.5, 10.0


def run_sweep(
    settings_list: Sequence[RunSettings],
    db: str | os.PathLike = DEFAULT_DB,
    runs_dir: str | os.PathLike = "runs",
    workers: int = 1,
    progress: Progress | None = None,
    *,
    executor: str = "local",
    ray: RayOptions | None = None,
) -> list[SweepItem]:
    """Run every setting (skipping finished runs) with the ``local`` executor (``workers`` processes of one thread
    each) or the ``ray`` executor (one Ray task per run, placed as ``ray`` says).

    ``db`` is an SQLite file path or a PostgreSQL URL. All runs are checked first (:func:`check_sweep`), so bad
    input fails before anything is written. A run that fails is recorded as failed and the sweep goes on. Progress
    events carry a ``worker`` field. On Ctrl-C (or SIGTERM under :func:`pqprune.experiment.signals.sigterm_as_interrupt`)
    the workers (or tasks) mark their runs interrupted and stop; ``KeyboardInterrupt`` propagates.
    """
    if executor not in EXECUTORS:
        raise SettingsError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers < 1:
        raise SettingsError(f"workers must be >= 1, got {workers}")
    if ray is not None:
        ray.validate()
    progress = progress or _no_progress
    check_sweep(settings_list)
    _check_runs_dir(Path(runs_dir))
    items: dict[str, SweepItem] = {}
    todo: list[RunSettings] = []
    with Store(db) as store:
        for settings in settings_list:
            run_id = settings.run_id()
            run = store.get_run(run_id)
            if (
                run is not None
                and run["status"] == "finished"
                and RunDir(Path(runs_dir), run_id).json(settings.rounds).exists()
            ):
                items[run_id] = SweepItem(run_id, settings, "skipped")
                progress({"event": "skipped", "run_id": run_id})
            else:
                todo.append(settings)
    if executor == "ray":
        from pqprune.experiment.ray_sweep import RayOptions, run_with_ray

        for item in run_with_ray(todo, db, runs_dir, ray or RayOptions(), progress):
            items[item.run_id] = item
    elif workers == 1 or len(todo) <= 1:
        for settings in todo:
            items[settings.run_id()] = _sweep_one(settings, db, runs_dir, progress)
    else:
        for item in _run_parallel(todo, db, runs_dir, min(workers, len(todo)), progress):
            items[item.run_id] = item
    return [items[s.run_id()] for s in settings_list]


def _sweep_one(settings: RunSettings, db: Any, runs_dir: Any, progress: Progress) -> SweepItem:
    """Run one setting of a sweep; a run that another process holds is waited for, then reused."""
    run_id = settings.run_id()
    while True:
        try:
            result = run_experiment(settings, db, runs_dir, progress)
        except (RunBusy, ClaimLost) as err:
            progress({"event": "waiting", "run_id": run_id, "message": str(err)})
            _wait_for_claim(db, run_id)
            continue
        except (KeyboardInterrupt, StoreError):
            raise
        except Exception as err:  # one failed run does not stop the sweep
            return SweepItem(run_id, settings, "failed", f"{type(err).__name__}: {err}")
        return SweepItem(run_id, settings, "skipped" if result.reused else result.status)


def _wait_for_claim(db: Any, run_id: str) -> None:
    """Return once no live process holds the claim on ``run_id`` (it finished, stopped, or its lease ended)."""
    delay = WAIT_FIRST_SECONDS
    with Store(db) as store:
        while run_id in store.live_claims():
            time.sleep(delay)
            delay = min(1.5 * delay, WAIT_MAX_SECONDS)


def _worker_main(index: int, tasks: Any, events: Any, db: str, runs_dir: str) -> None:
    """A sweep worker process: one thread, runs tasks until the sentinel; SIGTERM = one clean Ctrl-C."""
    import signal

    # The parent owns Ctrl-C and SIGTERM and forwards both as SIGTERM, so each worker is interrupted once (a
    # second SIGTERM, e.g. `timeout` signalling the whole process group, is ignored).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, raise_terminated)
    torch.set_num_threads(1)  # small models: N single-thread workers beat one N-thread process
    send = lambda e: events.put({**e, "worker": index})  # noqa: E731
    try:
        while True:
            settings = tasks.get()
            if settings is None:
                break
            item = _sweep_one(settings, db, runs_dir, send)
            events.put(
                {
                    "event": "result",
                    "worker": index,
                    "run_id": item.run_id,
                    "status": item.status,
                    "message": item.message,
                }
            )
    except KeyboardInterrupt:
        events.put({"event": "worker_interrupted", "worker": index})
    except BaseException as err:  # e.g. a database error: report it rather than die silently
        events.put({"event": "worker_error", "worker": index, "message": f"{type(err).__name__}: {err}"})


def _run_parallel(
    todo: Sequence[RunSettings], db: Any, runs_dir: Any, workers: int, progress: Progress
) -> list[SweepItem]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fork after torch has started threads is unsafe
    tasks, events = ctx.Queue(), ctx.Queue()
    by_id = {s.run_id(): s for s in todo}
    for settings in todo:
        tasks.put(settings)
    for _ in range(workers):
        tasks.put(None)
    procs = [
        ctx.Process(target=_worker_main, args=(i, tasks, events, str(db), str(runs_dir)), daemon=True)
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    results: dict[str, SweepItem] = {}
    errors: list[str] = []
    try:
        while len(results) < len(todo):
            try:
                event = events.get(timeout=0.5)
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if event["event"] == "result":
                results[event["run_id"]] = SweepItem(
                    event["run_id"], by_id[event["run_id"]], event["status"], event["message"]
                )
            elif event["event"] == "worker_error":
                errors.append(event["message"])
            progress(event)
    except KeyboardInterrupt:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM → KeyboardInterrupt in the worker → run marked interrupted
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        raise
    for proc in procs:
        proc.join(30)
    if errors and not results:
        raise StoreError("; ".join(errors))
    for run_id, settings in by_id.items():  # a worker that died (e.g. killed) leaves its run unreported
        results.setdefault(run_id, SweepItem(run_id, settings, "failed", "; ".join(errors) or "worker process died"))
    return list(results.values())


# --------------------------------------------------------------------------------------------- demo
def demo_settings(rounds: int = 30, epochs: int = 20, seed: int = 0, data: str = "mnist5k") -> list[RunSettings]:
    """The default comparison: SAP(0.5,1), SAP(1,2), lottery ticket, one-shot and random, global scope, the
    paper's MLP on ``mnist5k``."""
    base = RunSettings(data=data, model="mlp", scope="global", rounds=rounds, epochs=epochs, seed=seed)
    return [
        dataclasses.replace(base, method="sap", method_options={"p": 0.5, "q": 1.0}),
        dataclasses.replace(base, method="sap", method_options={"p": 1.0, "q": 2.0}),
        dataclasses.replace(base, method="lt"),
        dataclasses.replace(base, method="os"),
        dataclasses.replace(base, method="random"),
    ]
