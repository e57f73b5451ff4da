"""Where the results database lives: an SQLite file (a path) or a PostgreSQL server (a URL), as one SQLAlchemy engine.

``runs/pqprune.db`` or ``sqlite:///runs/pqprune.db`` → an SQLite file in WAL mode: several processes on one
machine may write it at once; every write transaction starts with ``BEGIN IMMEDIATE`` so it takes the write lock up
front and a ``busy_timeout`` makes a writer wait for it instead of failing.

``postgresql://user@host:5432/db`` (or ``postgres://``, ``postgresql+psycopg://``; a Unix socket with
``postgresql://user@/db?host=/run/postgresql``) → a PostgreSQL server through psycopg 3 (``pip install
pqprune[postgres]``), shared by any number of machines. Connections are checked before use (``pool_pre_ping``), so
a server restart costs one reconnect; an error that a restart or a dropped connection causes is *transient* and
:func:`retrying` repeats the whole transaction with exponential backoff until the server is back.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import URL, make_url

T = TypeVar("T")
log = logging.getLogger("pqprune.store")

# A writer waits this long for another SQLite writer's lock before giving up; a sweep's rounds take milliseconds
# to write, so only a hung process could exhaust it.
BUSY_TIMEOUT_MS = 120_000
# How long a transaction is retried while PostgreSQL is unreachable (a restart takes seconds; a failover, minutes).
RETRY_SECONDS = 300.0
_BACKOFF_FIRST, _BACKOFF_MAX = 0.05, 5.0
# PostgreSQL error classes that a retry can cure: connection exceptions (08), operator intervention such as an
# admin or crash shutdown and "the database system is starting up" (57), insufficient resources such as too many
# connections (53), serialization failures and deadlocks (40001, 40P01).
_TRANSIENT_CLASSES = ("08", "57", "53")
_TRANSIENT_STATES = ("40001", "40P01")


class StoreError(RuntimeError):
    """The results database cannot be opened, written or understood; the message names the file or server."""


@dataclass(frozen=True)
class Target:
    """A results database: its SQLAlchemy URL, its SQLite file (None for a server) and a name safe to print."""

    url: URL
    path: Path | None
    name: str

    @property
    def is_sqlite(self) -> bool:
        return self.path is not None


def is_url(db: str | os.PathLike) -> bool:
    """Whether ``db`` names a database by URL (``scheme://…``) rather than an SQLite file path."""
    return "://" in str(db)


def resolve(db: str | os.PathLike) -> Target:
    """The database named by ``db``: a path or ``sqlite:///path`` (SQLite) or a ``postgresql://`` URL.

    Raises:
        StoreError: an unknown scheme, or a URL that cannot be parsed.
    """
    if not is_url(db):
        path = Path(db)
        return Target(URL.create("sqlite", database=str(path)), path, str(path))
    text = str(db)
    try:
        url = make_url(text)
    except exc.ArgumentError as err:
        raise StoreError(f"cannot read the database URL {text!r}: {err}") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database:
            raise StoreError(f"{text}: give an SQLite file (sqlite:///path/to/file.db); in-memory databases vanish")
        path = Path(url.database)
        return Target(URL.create("sqlite", database=str(path)), path, str(path))
    if backend in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
        return Target(url, None, unquote(url.render_as_string(hide_password=True)))
    raise StoreError(
        f"unsupported database {url.drivername!r} in {text!r}: give an SQLite file path or a postgresql:// URL"
    )


def describe(db: str | os.PathLike) -> str:
    """How to name ``db`` in messages and reports: the file path, or the URL without its password."""
    return resolve(db).name


def create(target: Target, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """An engine for ``target``: SQLite with WAL, foreign keys and explicit write transactions; PostgreSQL with
    connections checked before use.

    Raises:
        StoreError: psycopg is missing for a PostgreSQL URL.
    """
    if target.path is None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError(f"{target.name}: PostgreSQL needs psycopg 3: pip install 'pqprune[postgres]'") from None
        return create_engine(
            target.url,
            pool_pre_ping=True,
            pool_size=2,
            connect_args={"connect_timeout": 10, "application_name": "pqprune"},
        )
    engine = create_engine(
        target.url,
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
    )
    _configure_sqlite(engine, busy_timeout_ms)
    return engine


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # isolation_level=None: no implicit BEGIN from the driver; the "begin" hook below issues ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys = ON")
            mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"cannot switch the results database to WAL mode (got {mode!r})")
            cur.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses no committed row
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A write takes the lock up front so the busy timeout applies (a deferred transaction that upgrades to a
        # writer can fail at once in WAL mode); a read does not block writers.
        write = conn.get_execution_options().get("pqprune_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is a database error that retrying the transaction can cure (a lost or refused connection,
    a server shutting down or starting up, a serialization failure); never for SQLite, whose waits are the busy
    timeout's."""
    if not isinstance(err, exc.DBAPIError):
        return False
    if err.connection_invalidated:
        return True
    state = getattr(err.orig, "sqlstate", None)
    module = type(err.orig).__module__ or ""
    if not module.startswith("psycopg"):
        return False
    if state is None:  # raised by the client: connection refused, closed or timed out
        return isinstance(err, (exc.OperationalError, exc.InterfaceError))
    return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES


def retrying(attempt: Callable[[], T], what: str, retry_seconds: float = RETRY_SECONDS) -> T:
    """``attempt()``, repeated after transient errors (:func:`is_transient`) with exponential backoff and jitter
    (0.05 s doubling up to 5 s) for at most ``retry_seconds``; other database errors become :class:`StoreError`
    naming ``what``.

    ``attempt`` must be one whole transaction, so a failed one left nothing behind and repeating it is safe. The
    first retry of an outage is logged as a warning (logger ``pqprune.store``).
    """
    deadline = time.monotonic() + retry_seconds
    delay = _BACKOFF_FIRST
    while True:
        try:
            return attempt()
        except exc.SQLAlchemyError as err:
            if not is_transient(err) or time.monotonic() + delay > deadline:
                detail = getattr(err, "orig", None) or err
                raise StoreError(f"{what}: {type(err).__name__}: {str(detail).strip()}") from err
            if delay == _BACKOFF_FIRST:  # once per outage, not once per attempt
                log.warning(
                    "%s: %s; retrying for up to %.0f s", what, str(getattr(err, "orig", err)).strip(), retry_seconds
                )
            time.sleep(delay * random.uniform(1.0, 1.5))
            delay = min(2 * delay, _BACKOFF_MAX)
