"""Running one experiment: start, resume or reuse a run (:func:`run_experiment`).

The checkpoint of the last complete round holds the masks and the pruner's state; the weights of the next round
come from the initial weights by rewinding, so a resumed run ends exactly as an uninterrupted one. Under
``torchrun`` with several processes (docs/distributed.md) every process runs the same loop under DDP with the same
global batch; the masks, computed by each from identical weights, are checked to be identical every round; only
rank 0 writes files and the database. The number of processes is not part of the identity.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pqprune.experiment import distributed
from pqprune.experiment.loop import Progress, RunResult, _Loop, _no_progress
from pqprune.experiment.method_context import run_method
from pqprune.experiment.phases import PhaseStop
from pqprune.experiment.prepare import Prepared, prepare
from pqprune.experiment.rundir import RunBusy, RunDir
from pqprune.experiment.settings import RunSettings, SettingsError
from pqprune.experiment.train import choose_threads, resolve_device
from pqprune.files import FileFormatError, NewerFormatError
from pqprune.store import DEFAULT_DB, ClaimHeld, Lease, Store
from pqprune.threads import torch_threads


def _sync_store(store: Store, rd: RunDir, upto: int) -> None:
    """Write rounds 0..upto from their checkpoint JSONs to the database (idempotent; the files are the truth)."""
    have = {r["round"] for r in store.rounds(rd.run_id)}
    for t in range(upto + 1):
        if t not in have:
            doc = rd.read_round(t)
            store.record_round(rd.run_id, t, doc["metrics"], doc.get("units", []))


def _stopped(rd: RunDir, last_done: int | None) -> PhaseStop | None:
    """The stop recorded in the last complete round of a run with ``--stop-at-phase`` (None: not stopped). A stopped
    run is finished at that round: it is reused, never resumed."""
    if last_done is None:
        return None
    stop = rd.read_round(last_done).get("stop")
    if not stop:
        return None
    return PhaseStop(str(stop["stopped_at_phase"]), int(stop["stop_round"]), int(stop["chosen_round"]))


def run_experiment(
    settings: RunSettings,
    db: Store | str | os.PathLike = DEFAULT_DB,
    runs_dir: str | os.PathLike = "runs",
    progress: Progress | None = None,
) -> RunResult:
    """Run (or resume, or reuse) the prune–retrain loop of ``settings``; see the module docstring.

    ``db`` is an open :class:`~pqprune.store.Store`, an SQLite file path or a PostgreSQL URL. ``progress`` receives event dicts
    (``event`` = ``start``, ``round``, ``epoch``, ``round_end``, ``end``) for display.

    Raises :class:`SettingsError`, :class:`pqprune.experiment.data.DatasetNotFound` or :class:`~pqprune.store.StoreError`
    before anything is written; :class:`RunBusy` if another process computes the same run. On Ctrl-C (or SIGTERM
    inside :func:`pqprune.experiment.signals.sigterm_as_interrupt`, as the ``pqprune`` commands run it) the run is
    marked ``interrupted`` (the checkpoint of the last finished round stays) and ``KeyboardInterrupt``
    propagates; on any other error it is marked ``failed``.

    Launched by torchrun with several processes (docs/distributed.md), every process calls this with the same
    arguments: all train together under DDP; only rank 0 opens the database, claims the run, writes files
    and reports progress. The other ranks return a result with the rounds they computed (the database's rows
    are rank 0's). The number of processes is not part of the run's identity.
    """
    progress = progress or _no_progress
    res = settings.validate()  # before any process group: bad input fails alike on every rank
    with distributed.session(resolve_device(res.device)) as ctx:
        prep = prepare(res, device=ctx.device if ctx.active else None)  # validates; writes nothing
        prep.method, prep.input_bounds = run_method(prep, Path(runs_dir))  # e.g. a bad --reference fails here
        res = prep.settings
        run_id, run_hash = res.run_id(), res.run_hash()
        rd = RunDir(Path(runs_dir), run_id)
        with contextlib.ExitStack() as stack:
            stack.enter_context(_threads(prep))
            if not ctx.is_main:
                return _run_follower(prep, rd, ctx)
            try:
                _check_runs_dir(Path(runs_dir))
                store = stack.enter_context(_open_store(db))
                lease = stack.enter_context(_claim(store, rd))
                last_done = _resume_point(rd, res, run_hash)
                stopped = _stopped(rd, last_done)
                load_initial = rd.initial.exists() and last_done is not None
            except BaseException as err:
                distributed.announce_start(ctx, error=f"{type(err).__name__}: {err}")
                raise
            distributed.announce_start(
                ctx, {"last_done": last_done, "load_initial": load_initial, "stopped": stopped is not None}
            )
            return _run_locked(prep, rd, store, lease, run_hash, progress, last_done, load_initial, ctx, stopped)


@contextlib.contextmanager
def _claim(store: Store, rd: RunDir) -> Iterator[Lease]:
    """The claim on the run in the results database (a lease every machine sees), or :class:`RunBusy`."""
    try:
        lease = store.claim(rd.run_id).__enter__()
    except ClaimHeld as err:
        raise RunBusy(str(err)) from None
    try:
        yield lease
    finally:
        lease.__exit__(None, None, None)


@contextlib.contextmanager
def _threads(prep: Prepared) -> Iterator[int]:
    """Run with the settings' CPU thread count (:func:`choose_threads`), restoring the process's afterwards."""
    n = choose_threads(prep.settings.threads, prep.model, prep.data.train.x, prep.train_config.batch_size)
    with torch_threads(n):
        yield n


def environment(device: torch.device) -> dict[str, Any]:
    """Where a run computed: CPU threads, device and library versions (its numbers can differ with any of them in
    the last bits; none is part of the run's identity)."""
    from pqprune import __version__

    return {
        "threads": torch.get_num_threads(),
        "device": str(device),
        "pqprune": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@contextlib.contextmanager
def _open_store(db: Store | str | os.PathLike) -> Iterator[Store]:
    if isinstance(db, Store):
        yield db
        return
    with Store(db) as store:
        yield store


def _check_runs_dir(root: Path) -> None:
    ancestor = root
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise SettingsError(f"cannot write run folders under {root}: {ancestor} is not a writable folder")


def _resume_point(rd: RunDir, res: RunSettings, run_hash: str) -> int | None:
    """The last complete round whose tensors can be read (``res.rounds`` = finished), or None to start afresh.

    Raises :class:`FileFormatError` if the folder holds another run's checkpoints.
    """
    done = rd.finished_rounds()
    if done:
        try:
            saved = rd.settings_document()
        except NewerFormatError:
            raise
        except FileFormatError as err:
            raise FileFormatError(f"{rd.path}: has round checkpoints but no usable settings.json ({err})") from err
        if saved.get("run_hash") != run_hash:
            raise FileFormatError(f"{rd.path}: holds run {saved.get('run_hash')}, not {run_hash}; move the folder away")
    last_done = max((t for t in done if t <= res.rounds), default=None)
    # Only rounds whose tensors are readable can be resumed from (the JSON alone is not enough).
    while last_done is not None and not rd.tensors(last_done).exists() and last_done < res.rounds:
        last_done = last_done - 1 if last_done - 1 in done else None
    return last_done


def _initial_weights(prep: Prepared, rd: RunDir, load: bool) -> dict[str, Tensor]:
    """The run's initial weights: read from ``initial.safetensors`` into the model (``load``), else the model's own."""
    if load:
        initial = rd.load_initial()
        prep.model.load_state_dict(initial)
        return initial
    return {k: v.detach().clone() for k, v in prep.model.state_dict().items()}


def _run_locked(
    prep: Prepared,
    rd: RunDir,
    store: Store,
    lease: Lease,
    run_hash: str,
    progress: Progress,
    last_done: int | None,
    load_initial: bool,
    ctx: distributed.Context,
    stopped: PhaseStop | None = None,
) -> RunResult:
    res = prep.settings
    settings_doc: dict[str, Any] = {
        "run_id": rd.run_id,
        "run_hash": run_hash,
        "identity": res.identity(),
        "settings": res.to_dict(),
    }
    # What the database's settings JSON holds: the settings, where they were computed, the sizes of the data splits
    # (the binomial noise of an accuracy depends on them, docs/math.md §9) and (distributed runs only) how they were
    # launched. A finished run that is reused keeps the environment it was computed in.
    env = _saved_environment(rd) if last_done == res.rounds or stopped is not None else None
    settings_doc["environment"] = env or environment(prep.device)
    examples = {"train": len(prep.data.train), "val": len(prep.data.val), "test": len(prep.data.test)}
    db_settings = {**res.to_dict(), "environment": settings_doc["environment"], "examples": examples}
    if ctx.active:
        settings_doc["launch"] = db_settings["launch"] = ctx.describe()

    if last_done is not None and (last_done == res.rounds or stopped is not None):  # finished: reuse
        run = store.get_run(rd.run_id)
        if stopped is not None:
            db_settings.update(stopped.as_dict())
        # Also refreshed: runs of 0.1.0, whose stored settings lack the split sizes.
        if (
            run is None
            or run["status"] != "finished"
            or run["rounds_done"] != last_done + 1
            or any(run["settings"].get(k) != v for k, v in db_settings.items() if k in ("examples", "chosen_round"))
        ):
            store.start_run(rd.run_id, run_hash, db_settings)
            _sync_store(store, rd, last_done)
            store.set_status(rd.run_id, "finished")
        progress(
            {
                "event": "start",
                "run_id": rd.run_id,
                "rounds": res.rounds + 1,
                "epochs": res.epochs,
                "reused": True,
                "resumed_from": None,
            }
        )
        progress({"event": "end", "run_id": rd.run_id, "status": "finished", "reused": True})
        run = store.get_run(rd.run_id)
        return RunResult(
            rd.run_id,
            "finished",
            rd.path,
            store.rounds(rd.run_id),
            reused=True,
            seconds=run["seconds"] if run else 0.0,
            settings=res.to_dict(),
            stop=stopped,
        )

    start = time.perf_counter()
    rd.save_settings(settings_doc)
    store.start_run(rd.run_id, run_hash, db_settings)
    status, message = "failed", None
    try:
        initial = _initial_weights(prep, rd, load_initial)
        if not load_initial:
            rd.save_initial(initial)
        loop = _Loop(prep, rd, store, progress, ctx)
        first = 0
        if last_done is not None:
            loop.restore(last_done, initial)
            _sync_store(store, rd, last_done)
            first = last_done + 1
        store.truncate_rounds(rd.run_id, first - 1)  # rows of rounds that will be recomputed are stale
        progress(
            {
                "event": "start",
                "run_id": rd.run_id,
                "rounds": res.rounds + 1,
                "epochs": res.epochs,
                "reused": False,
                "resumed_from": last_done,
            }
        )
        for t in range(first, res.rounds + 1):
            lease.check()  # a process that lost the run to another must not write it any further
            loop.round(t)
            if loop.stop is not None:  # the run's result is recorded beside its settings
                store.start_run(rd.run_id, run_hash, {**db_settings, **loop.stop.as_dict()})
                break
        status = "finished"
    except KeyboardInterrupt:
        status, message = "interrupted", "interrupted (Ctrl-C or SIGTERM); rerun the same command to resume"
        # The signal may land between a round's JSON (which completes it) and its database row: write the rows
        # of every complete round now, so the database agrees with the files.
        if not lease.lost:
            with contextlib.suppress(Exception):
                done = rd.finished_rounds()
                if done:
                    _sync_store(store, rd, done[-1])
        raise
    except BaseException as err:
        message = f"{type(err).__name__}: {err}"
        raise
    finally:
        seconds = time.perf_counter() - start
        if not lease.lost:  # the run's status is its new holder's to set
            with contextlib.suppress(Exception):  # never mask the original error with a database one
                store.set_status(rd.run_id, status, add_seconds=seconds, message=message)
        progress({"event": "end", "run_id": rd.run_id, "status": status, "reused": False})
    run = store.get_run(rd.run_id)
    return RunResult(
        rd.run_id,
        status,
        rd.path,
        store.rounds(rd.run_id),
        resumed_from=last_done,
        seconds=run["seconds"] if run else seconds,
        settings=res.to_dict(),
        stop=loop.stop,
    )


def _saved_environment(rd: RunDir) -> dict[str, Any] | None:
    """The environment a run's folder records (None if it records none: runs of pqprune 0.2 and earlier)."""
    try:
        env = rd.settings_document().get("environment")
    except FileFormatError:
        return None
    return env if isinstance(env, dict) else None


def _run_follower(prep: Prepared, rd: RunDir, ctx: distributed.Context) -> RunResult:
    """A rank > 0 of a distributed run: train and prune in step with rank 0, write nothing.

    It starts where rank 0 says (the same last complete round, read from rank 0's checkpoint files, which are
    complete before rank 0 announces them) and returns the metrics it computed itself.
    """
    res = prep.settings
    start = distributed.receive_start(ctx)  # PeerFailed if rank 0 could not start
    last_done = start["last_done"]
    if last_done == res.rounds or start.get("stopped"):
        return RunResult(rd.run_id, "finished", rd.path, [], reused=True, settings=res.to_dict())
    t0 = time.perf_counter()
    initial = _initial_weights(prep, rd, bool(start["load_initial"]))
    loop = _Loop(prep, rd, None, _no_progress, ctx)
    first = 0
    if last_done is not None:
        loop.restore(last_done, initial)
        first = last_done + 1
    rounds = []
    for t in range(first, res.rounds + 1):
        rounds.append({"round": t, **loop.round(t)})
        if loop.stop is not None:  # every rank reads the same metrics, so all stop at the same round
            break
    return RunResult(
        rd.run_id,
        "finished",
        rd.path,
        rounds,
        resumed_from=last_done,
        seconds=time.perf_counter() - t0,
        settings=res.to_dict(),
        stop=loop.stop,
    )
