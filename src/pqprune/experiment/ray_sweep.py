"""The ``ray`` executor of a sweep: every run is one Ray task, placed by Ray on the machines of a cluster.

``pqprune sweep --executor ray [--address auto|HOST:PORT] [--cpus-per-run N] [--gpus-per-run N]`` (``pip install
pqprune[ray]``; docs/cluster.md). Without an address a local Ray instance is started for the sweep and stopped after
it; a program that initialised Ray itself keeps its connection. Each task runs the same code as a local worker
(:func:`pqprune.experiment.sweep._sweep_one`): it claims its run in the results database, resumes it from its last
checkpoint if it has one, and writes its round files to ``runs_dir`` — a folder every machine must see at the same
path — and its rows to ``db``, which for more than one machine must be a PostgreSQL URL.

Faults: a task whose worker process dies is run again by Ray (``max_retries``); the new task takes over the claim
(at once on the same machine, where the dead process is seen to be gone; after the lease ends elsewhere) and resumes
from the last complete round, so the run ends bit-identical to an uninterrupted one. Progress events of the tasks
reach the driver through a Ray queue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqprune.experiment.loop import Progress
from pqprune.experiment.settings import RunSettings, SettingsError
from pqprune.experiment.sweep import SweepItem, _sweep_one
from pqprune.store import is_url

# Seconds the driver waits for cancelled tasks to mark their runs interrupted after Ctrl-C.
CANCEL_GRACE_SECONDS = 30.0
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class RayOptions:
    """Where the tasks of a Ray sweep run.

    ``address``: None starts a local Ray instance; ``"auto"`` joins the cluster this machine belongs to;
    ``"HOST:PORT"`` (or ``ray://HOST:PORT``) joins the cluster whose head is there. ``cpus_per_run`` and
    ``gpus_per_run`` are the resources Ray reserves for each run (its torch threads are ``int(cpus_per_run)``).
    ``max_retries``: how often a task whose worker died is run again.
    """

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    max_retries: int = 3

    def validate(self) -> None:
        if not self.cpus_per_run > 0:
            raise SettingsError(f"--cpus-per-run must be > 0, got {self.cpus_per_run}")
        if not self.gpus_per_run >= 0:
            raise SettingsError(f"--gpus-per-run must be >= 0, got {self.gpus_per_run}")
        if self.max_retries < 0:
            raise SettingsError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.address is not None and not self.address.strip():
            raise SettingsError("--address: give auto or HOST:PORT of the Ray head")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SettingsError("the ray executor needs Ray: pip install 'pqprune[ray]'") from None
    return ray


def _task(settings: RunSettings, db: str, runs_dir: str, threads: int, events: Any) -> dict[str, Any]:
    """One run of the sweep inside a Ray worker process."""
    import torch

    torch.set_num_threads(threads)
    where = f"{socket.gethostname()}:{os.getpid()}"

    def send(event: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # progress is for display: a lost event must not stop a run
            events.put_nowait({**event, "worker": where})

    item = _sweep_one(settings, db, runs_dir, send)
    return {"run_id": item.run_id, "status": item.status, "message": item.message}


def _connect(ray: Any, options: RayOptions) -> bool:
    """Connect to Ray as ``options`` says; True if this call started the connection (and must end it)."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if options.address is None:
        ray.init(address="local", include_dashboard=False, **quiet)
    else:
        try:
            ray.init(address=options.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SettingsError(f"--address {options.address}: cannot join the Ray cluster: {err}") from None
    return True


def _check_database(ray: Any, db: str) -> None:
    """An SQLite file cannot be shared by several machines: a cluster of more than one node needs a server."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not is_url(db):
        raise SettingsError(
            f"--db {db}: an SQLite file cannot be shared by the {len(nodes)} machines of this Ray cluster; "
            "use a PostgreSQL server (--db postgresql://user@host/db, docs/cluster.md)"
        )


def run_with_ray(
    todo: Sequence[RunSettings], db: Any, runs_dir: Any, options: RayOptions, progress: Progress
) -> list[SweepItem]:
    """Run ``todo`` as Ray tasks (see the module docstring); one :class:`SweepItem` per run."""
    options.validate()
    ray = _import_ray()
    from ray.util.queue import Queue

    # Tasks may start in another folder or on another machine: give them absolute paths.
    db_arg = str(db) if is_url(db) else str(Path(db).resolve())
    runs_arg = str(Path(runs_dir).resolve())
    started = _connect(ray, options)
    try:
        _check_database(ray, db_arg)
        events = Queue(actor_options={"num_cpus": 0})
        task = ray.remote(_task).options(
            num_cpus=options.cpus_per_run,
            num_gpus=options.gpus_per_run,
            max_retries=options.max_retries,
            retry_exceptions=False,
            name="pqprune-run",
        )
        threads = max(1, int(options.cpus_per_run))
        refs = {task.remote(s, db_arg, runs_arg, threads, events): s for s in todo}
        try:
            return _gather(ray, refs, events, progress)
        finally:
            events.shutdown()
    finally:
        if started:
            ray.shutdown()


def _gather(ray: Any, refs: dict[Any, RunSettings], events: Any, progress: Progress) -> list[SweepItem]:
    pending = list(refs)
    items: list[SweepItem] = []
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=_POLL_SECONDS)
            _drain(events, progress)
            items.extend(_outcome(ray, ref, refs[ref]) for ref in ready)
        _drain(events, progress)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)  # a KeyboardInterrupt in the task: its run is marked interrupted
        ray.wait(pending, num_returns=len(pending), timeout=CANCEL_GRACE_SECONDS)
        raise
    return items


def _drain(events: Any, progress: Progress) -> None:
    n = events.qsize()
    for event in events.get_nowait_batch(n) if n else []:
        progress(event)


def _outcome(ray: Any, ref: Any, settings: RunSettings) -> SweepItem:
    try:
        out = ray.get(ref)
    except ray.exceptions.RayError as err:  # the task raised, or its worker died more often than retried
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return SweepItem(settings.run_id(), settings, "failed", f"{type(err).__name__}: {first}")
    return SweepItem(out["run_id"], settings, out["status"], out["message"])
