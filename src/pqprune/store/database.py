"""The results database: the only module of pqprune that reads and writes runs, rounds and units.

One :class:`Store` serves both backends through SQLAlchemy Core, with the same schema (:mod:`pqprune.store.schema`),
the same migrations and the same queries: an SQLite file (``runs/pqprune.db``, the default, embedded, nothing to set
up) or a PostgreSQL server by URL (``postgresql://user@host/db``, shared by the machines of a cluster). Every write
is one transaction; a transient error of the server (a restart, a dropped connection) repeats the transaction with
backoff (:func:`pqprune.store.engine.retrying`). Accessors return plain dicts with JSON columns decoded; accuracies
are fractions in [0, 1]. ``docs/database.md`` describes every column and has example queries for both backends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from pqprune.files import finite_or_none, follow_umask
from pqprune.store import engine as engine_mod
from pqprune.store import schema as tables
from pqprune.store.claims import LEASE_SECONDS, Lease, is_live, now_iso, upsert
from pqprune.store.engine import BUSY_TIMEOUT_MS, RETRY_SECONDS, StoreError, Target
from pqprune.store.schema import MIGRATIONS, ROUND_COLUMNS, SCHEMA_VERSION, UNIT_COLUMNS
from pqprune.store.status import STATUSES

R = TypeVar("R")
DEFAULT_DB = Path("runs") / "pqprune.db"
# Serializes the creation of the schema by processes that open a new PostgreSQL database at the same time (the
# tasks of a sweep); any constant works, this one spells "pqprune".
_SCHEMA_LOCK_KEY = 0x7071_7072_756E_65


def exists(db: str | os.PathLike) -> bool:
    """False only for an SQLite path with no file; a server URL is checked by connecting to it."""
    target = engine_mod.resolve(db)
    return target.path is None or target.path.is_file()


class Store:
    """A connection to the results database ``db``: an SQLite file path or a ``postgresql://`` URL (see the module
    docstring); created with its schema if missing, upgraded in place if older.

    Use as a context manager or call :meth:`close`. One ``Store`` per process; any number of processes (on one
    machine for SQLite, on any for PostgreSQL) may open the same database.

    Raises:
        StoreError: the file or its folder cannot be created or written, the server cannot be reached within
            ``retry_seconds``, or it is not a pqprune database.
    """

    def __init__(
        self,
        db: str | os.PathLike = DEFAULT_DB,
        *,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        retry_seconds: float = RETRY_SECONDS,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.target: Target = engine_mod.resolve(db)
        self.path: Path | None = self.target.path
        self.name = self.target.name
        self.retry_seconds, self.lease_seconds = float(retry_seconds), float(lease_seconds)
        new = self.path is not None and not self.path.exists()
        if self.path is not None:
            _check_writable(self.path)
        self._engine: Engine = engine_mod.create(self.target, busy_timeout_ms)
        try:
            self.transact(self._create_schema, "open the results database")
            if new and self.path is not None:  # SQLite creates its files 0644 less the umask, whatever the umask
                for f in (
                    self.path,
                    self.path.with_name(self.path.name + "-wal"),
                    self.path.with_name(self.path.name + "-shm"),
                ):
                    if f.exists():
                        follow_umask(f)
        except BaseException:
            self._engine.dispose()
            raise

    # ------------------------------------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Close every connection (idempotent)."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.name!r})"

    def transact(self, fn: Callable[[Connection], R], what: str, *, write: bool = True) -> R:
        """``fn(conn)`` in one transaction (committed when it returns, rolled back when it raises), repeated with
        backoff after a transient error of the server; any other database error → :class:`StoreError` naming
        ``what`` and the database."""

        def attempt() -> R:
            with self._engine.connect() as conn:
                conn.execution_options(pqprune_write=write)
                with conn.begin():
                    return fn(conn)

        return engine_mod.retrying(attempt, f"cannot {what} ({self.name})", self.retry_seconds)

    def _create_schema(self, conn: Connection) -> None:
        if conn.dialect.name == "postgresql":  # DDL of concurrent openers would collide on the catalog
            conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
        tables.metadata.create_all(conn, checkfirst=True)
        versions = conn.execute(select(tables.schema_version.c.version)).scalars().all()
        if not versions:
            conn.execute(insert(tables.schema_version).values(version=SCHEMA_VERSION))
            return
        version = versions[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.name}: results database of schema version {version}, newer than this pqprune reads "
                f"({SCHEMA_VERSION}); upgrade pqprune or use another --db"
            )
        # Older databases are upgraded in the same transaction: all steps or none.
        for v in range(version, SCHEMA_VERSION):
            MIGRATIONS[v](conn)
        if version < SCHEMA_VERSION:
            conn.execute(update(tables.schema_version).values(version=SCHEMA_VERSION))

    # ------------------------------------------------------------------------------------------- runs
    def start_run(self, run_id: str, run_hash: str, settings: Mapping[str, Any]) -> None:
        """Insert the run as ``running``, or mark an existing one ``running`` again (a resume); keeps its rounds."""
        now = now_iso()

        def write(conn: Connection) -> None:
            stmt = upsert(conn, tables.runs).values(
                run_id=run_id,
                run_hash=run_hash,
                status="running",
                settings=dict(settings),
                created_at=now,
                updated_at=now,
            )
            excluded = stmt.excluded
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[tables.runs.c.run_id],
                    set_={
                        "status": "running",
                        "run_hash": excluded.run_hash,
                        "settings": excluded.settings,
                        "updated_at": excluded.updated_at,
                        "message": None,
                    },
                )
            )

        self.transact(write, f"start run {run_id}")

    def set_status(self, run_id: str, status: str, *, add_seconds: float = 0.0, message: str | None = None) -> None:
        """Set a run's status, add wall-clock seconds to its total, and record why (for failed/interrupted)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")

        def write(conn: Connection) -> int:
            stmt = (
                update(tables.runs)
                .where(tables.runs.c.run_id == run_id)
                .values(
                    status=status,
                    seconds=tables.runs.c.seconds + float(add_seconds),
                    message=message,
                    updated_at=now_iso(),
                )
            )
            return int(conn.execute(stmt).rowcount)

        if self.transact(write, f"set the status of run {run_id}") == 0:
            raise StoreError(f"{self.name}: no run {run_id!r}")

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run as a dict (``settings`` decoded, plus ``rounds_done``), or None if unknown."""
        found = self.list_runs(run_ids=[run_id])
        return found[0] if found else None

    def list_runs(
        self,
        *,
        status: str | None = None,
        where: Mapping[str, Any] | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Runs, oldest first, optionally filtered by status, by setting values and by id.

        ``where={"method": "sap", "seed": 0}`` keeps runs whose settings have exactly those values (compared as
        the decoded JSON values, so ``1 == 1.0 == True`` as in SQL).
        """
        done = select(func.count()).where(tables.rounds.c.run_id == tables.runs.c.run_id).scalar_subquery()
        query = select(tables.runs, done.label("rounds_done")).order_by(tables.runs.c.created_at, tables.runs.c.run_id)
        if status is not None:
            query = query.where(tables.runs.c.status == status)
        if run_ids is not None:
            query = query.where(tables.runs.c.run_id.in_(list(run_ids)))
        found = self.transact(lambda conn: [dict(r._mapping) for r in conn.execute(query)], "read runs", write=False)
        missing = object()
        wanted = dict(where or {})
        return [run for run in found if all(run["settings"].get(k, missing) == v for k, v in wanted.items())]

    # ------------------------------------------------------------------------------------------- rounds
    def record_round(
        self,
        run_id: str,
        round_index: int,
        metrics: Mapping[str, Any],
        units: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Write one round and its units in one transaction; writing the same round again replaces it.

        ``metrics`` holds any of :data:`ROUND_COLUMNS` plus ``layers`` (dict → JSON); missing columns are NULL,
        unknown keys are an error. ``units`` are dicts with the keys of :data:`UNIT_COLUMNS`, kept in order.
        """
        unknown = sorted(set(metrics) - set(ROUND_COLUMNS) - {"layers"})
        if unknown:
            raise ValueError(f"unknown round metrics {unknown}; known: {(*ROUND_COLUMNS, 'layers')}")
        t = int(round_index)
        row = {c: finite_or_none(metrics.get(c)) for c in ROUND_COLUMNS}
        row.update(run_id=run_id, round=t, layers=dict(metrics.get("layers") or {}))
        unit_rows = [_unit_row(run_id, t, i, u) for i, u in enumerate(units)]

        def write(conn: Connection) -> None:
            # Delete-then-insert, not an upsert per column: a rewritten round must not keep stale units.
            _delete_rounds(conn, run_id, (tables.rounds.c.round == t))
            conn.execute(insert(tables.rounds).values(**row))
            if unit_rows:
                conn.execute(insert(tables.units), unit_rows)
            conn.execute(update(tables.runs).where(tables.runs.c.run_id == run_id).values(updated_at=now_iso()))

        self.transact(write, f"write round {t} of run {run_id}")

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        """All recorded rounds of a run, by round, as dicts (``layers`` decoded)."""
        query = select(tables.rounds).where(tables.rounds.c.run_id == run_id).order_by(tables.rounds.c.round)
        return self.transact(lambda conn: [dict(r._mapping) for r in conn.execute(query)], "read rounds", write=False)

    def units(self, run_id: str, round_index: int) -> list[dict[str, Any]]:
        """The per-unit records of one round's pruning step, in the order written; ``clipped`` as bool."""
        cols = [tables.units.c[c] for c in UNIT_COLUMNS]
        query = (
            select(*cols)
            .where(tables.units.c.run_id == run_id, tables.units.c.round == int(round_index))
            .order_by(tables.units.c.position, tables.units.c.unit)
        )
        found = self.transact(lambda conn: [dict(r._mapping) for r in conn.execute(query)], "read units", write=False)
        return [{**r, "clipped": bool(r["clipped"])} for r in found]

    def truncate_rounds(self, run_id: str, keep_upto: int) -> None:
        """Delete the rounds (and their units) of a run after round ``keep_upto`` (-1: all), in one transaction."""
        self.transact(
            lambda conn: _delete_rounds(conn, run_id, tables.rounds.c.round > int(keep_upto)),
            f"delete rounds of run {run_id}",
        )

    def delete_run(self, run_id: str) -> None:
        """Remove a run with its rounds, units and claim (one transaction)."""

        def write(conn: Connection) -> None:
            _delete_rounds(conn, run_id, tables.rounds.c.round >= 0)
            conn.execute(delete(tables.claims).where(tables.claims.c.run_id == run_id))
            conn.execute(delete(tables.runs).where(tables.runs.c.run_id == run_id))

        self.transact(write, f"delete run {run_id}")

    # ------------------------------------------------------------------------------------------- claims
    def claim(self, run_id: str) -> Lease:
        """The claim of this process on ``run_id``, as a context manager (:class:`~pqprune.store.claims.Lease`):
        raises :class:`~pqprune.store.claims.ClaimHeld` if a live process holds it."""
        return Lease(self, run_id, self.lease_seconds)

    def live_claims(self) -> dict[str, dict[str, Any]]:
        """The runs that a live process computes now → their claims row (host, pid, heartbeat)."""
        rows = self.transact(lambda conn: conn.execute(select(tables.claims)).all(), "read claims", write=False)
        now = time.time()
        return {r.run_id: dict(r._mapping) for r in rows if is_live(r, now)}


def _delete_rounds(conn: Connection, run_id: str, which: Any) -> None:
    """Delete a run's rounds matching ``which`` (a condition on ``rounds.round``) and their units."""
    chosen = select(tables.rounds.c.round).where(tables.rounds.c.run_id == run_id, which)
    conn.execute(delete(tables.units).where(tables.units.c.run_id == run_id, tables.units.c.round.in_(chosen)))
    conn.execute(delete(tables.rounds).where(tables.rounds.c.run_id == run_id, which))


def _unit_row(run_id: str, t: int, position: int, u: Mapping[str, Any]) -> dict[str, Any]:
    missing = [c for c in UNIT_COLUMNS if c not in u]
    if missing:
        raise ValueError(f"unit record {dict(u)} lacks {missing}")
    return {
        "run_id": run_id,
        "round": t,
        "unit": str(u["unit"]),
        "position": position,
        "d": int(u["d"]),
        # None where a round's JSON held a NaN (the rows of an interrupted run are written back from its files)
        "pqi": None if u["pqi"] is None else finite_or_none(float(u["pqi"])),
        "r": int(u["r"]),
        "c": int(u["c"]),
        "clipped": int(bool(u["clipped"])),
    }


def _check_writable(path: Path) -> None:
    """Fail early, naming the path, when the database file cannot be created there (before writing anything)."""
    if path.is_dir():
        raise StoreError(f"the results database path {path} is a folder; give a file name (e.g. {path / 'pqprune.db'})")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise StoreError(f"cannot create the results database {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StoreError(f"cannot write the results database {path}: permission denied")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create the folder of the results database {path}: {err.strerror or err}") from err
