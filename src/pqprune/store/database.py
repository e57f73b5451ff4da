"""The results database: the only module of pqprune that speaks SQL.

Default: an SQLite file ``runs/pqprune.db`` (standard-library :mod:`sqlite3`, WAL mode), embedded and with no
set-up. Several processes (the workers of ``pqprune sweep``) may write the same file at once: every write is
one ``BEGIN IMMEDIATE`` transaction and a ``busy_timeout`` makes a writer wait for the lock instead of failing,
so no row is lost. (A SQLAlchemy URL for a shared PostgreSQL server is future work; the schema below is plain
SQL that ports as it is.)

Schema, version 1 (``docs/database.md`` has example queries)::

    schema_version(version INTEGER)                      -- one row: the version of this schema

    runs(                                                -- one row per run (a run = one setting of RunSettings)
      run_id     TEXT PRIMARY KEY,                       -- "<method>-<run_hash[:10]>", also the folder name
      run_hash   TEXT NOT NULL,                          -- sha256 of the non-default settings (run identity)
      status     TEXT NOT NULL,                          -- running | finished | failed | interrupted
      settings   TEXT NOT NULL,                          -- JSON object of *all* settings, defaults included
                                                         -- (+ "launch": {world_size, backend} if multi-process)
      created_at TEXT NOT NULL, updated_at TEXT NOT NULL,-- ISO 8601, UTC
      seconds    REAL NOT NULL DEFAULT 0,                -- wall time spent on the run, summed over resumes
      message    TEXT)                                   -- why it failed or was interrupted, else NULL

    rounds(                                              -- one row per finished round t = 0..T of a run
      run_id, round,                                     -- PRIMARY KEY (run_id, round)
      density,                                           -- surviving fraction of prunable weights (mask m_t)
      test_accuracy, test_loss, val_accuracy, val_loss,  -- the retrained model of the round (best epoch)
      pruned_test_accuracy, pruned_val_accuracy,         -- the previous round's trained weights under m_t,
      pruned_pqi,                                        -- before retraining (NULL in round 0); PQI I_{0.5,1}
      pqi, gini,                                         -- global PQI I_{0.5,1} (the default pair) and Gini
                                                         -- of the retrained weights' survivors
      best_epoch,                                        -- the epoch kept (by val or test accuracy)
      seconds_train, seconds_evaluate, seconds_measure, seconds_prune, seconds_checkpoint,
      layers TEXT)                                       -- JSON {layer: {"pqi":…, "gini":…, "density":…}}

    units(                                               -- the pruning step taken at the end of the round
      run_id, round, unit,                               -- PRIMARY KEY (run_id, round, unit)
      d, pqi, r, c, clipped)                             -- survivors, index, retained bound, pruned, β clipped

Accuracies are fractions in [0, 1]. Accessors return plain dicts with JSON columns decoded.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from pqprune.files import finite_or_none, follow_umask, json_safe

SCHEMA_VERSION = 2
# Statements that take a database of version v to v + 1; applied in order when an older database is opened.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE rounds ADD COLUMN pruned_pqi REAL",),
}
DEFAULT_DB = Path("runs") / "pqprune.db"
STATUSES = ("running", "finished", "failed", "interrupted")
# A writer waits this long for another writer's lock before giving up; a sweep's rounds take milliseconds to
# write, so only a hung process could exhaust it.
BUSY_TIMEOUT_MS = 120_000

ROUND_COLUMNS: tuple[str, ...] = (
    "density",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "val_loss",
    "pruned_test_accuracy",
    "pruned_val_accuracy",
    "pruned_pqi",
    "pqi",
    "gini",
    "best_epoch",
    "seconds_train",
    "seconds_evaluate",
    "seconds_measure",
    "seconds_prune",
    "seconds_checkpoint",
)
UNIT_COLUMNS: tuple[str, ...] = ("unit", "d", "pqi", "r", "c", "clipped")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    run_hash   TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN {STATUSES}),
    settings   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    seconds    REAL NOT NULL DEFAULT 0,
    message    TEXT
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id               TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    round                INTEGER NOT NULL,
    density              REAL,
    test_accuracy        REAL,
    test_loss            REAL,
    val_accuracy         REAL,
    val_loss             REAL,
    pruned_test_accuracy REAL,
    pruned_val_accuracy  REAL,
    pruned_pqi           REAL,
    pqi                  REAL,
    gini                 REAL,
    best_epoch           INTEGER,
    seconds_train        REAL,
    seconds_evaluate     REAL,
    seconds_measure      REAL,
    seconds_prune        REAL,
    seconds_checkpoint   REAL,
    layers               TEXT NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS units (
    run_id  TEXT NOT NULL,
    round   INTEGER NOT NULL,
    unit    TEXT NOT NULL,
    d       INTEGER,
    pqi     REAL,
    r       INTEGER,
    c       INTEGER,
    clipped INTEGER,
    PRIMARY KEY (run_id, round, unit),
    FOREIGN KEY (run_id, round) REFERENCES rounds(run_id, round) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
"""


class StoreError(RuntimeError):
    """The results database cannot be opened, written or understood; the message names the file."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json(obj: Any) -> str:
    # allow_nan=False: NaN is not JSON; undefined statistics are written as null.
    return json.dumps(json_safe(obj), sort_keys=True, allow_nan=False)


class Store:
    """A connection to the results database at ``path`` (created with its schema if missing).

    Use as a context manager or call :meth:`close`. One ``Store`` per process (sqlite3 connections are not
    shared across processes); any number of processes may open the same file.

    Raises:
        StoreError: the file or its folder cannot be created or written, or it is not a pqprune database.
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_DB, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = Path(path)
        _check_writable(self.path)
        new = not self.path.exists()
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock is taken up front and
            # the busy timeout applies (a deferred transaction that upgrades can fail at once in WAL mode).
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_ms / 1000, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the results database {self.path}: {err}") from err
        try:
            if new:  # SQLite creates files as 0644 less the umask; its -wal and -shm files copy the database's
                follow_umask(self.path)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch the results database to WAL mode (got {mode!r})")
            self._conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses no committed row
            self._create_schema()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise StoreError(f"cannot use the results database {self.path}: {err}") from err
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as err:
            raise StoreError(f"cannot write the results database {self.path}: {err}") from err
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            try:
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as err:
                self._conn.execute("ROLLBACK")
                raise StoreError(f"cannot write the results database {self.path}: {err}") from err

    def _create_schema(self) -> None:
        # executescript() would COMMIT first; run the statements one by one inside one transaction instead.
        with self.transaction() as conn:
            for stmt in (s.strip() for s in _SCHEMA.split(";")):
                if stmt:
                    conn.execute(stmt)
            rows = conn.execute("SELECT version FROM schema_version").fetchall()
            if not rows:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            version = rows[0][0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: results database of schema version {version}, newer than this pqprune reads "
                    f"({SCHEMA_VERSION}); upgrade pqprune or use another --db file"
                )
            # Older databases are upgraded in the same transaction: all steps or none.
            for v in range(version, SCHEMA_VERSION):
                for stmt in _MIGRATIONS[v]:
                    conn.execute(stmt)
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    # ------------------------------------------------------------------------------------------- runs
    def start_run(self, run_id: str, run_hash: str, settings: Mapping[str, Any]) -> None:
        """Insert the run as ``running``, or mark an existing one ``running`` again (a resume); keeps its rounds."""
        now = _now()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (run_id, run_hash, status, settings, created_at, updated_at) "
                "VALUES (?, ?, 'running', ?, ?, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET status = 'running', run_hash = excluded.run_hash, "
                "settings = excluded.settings, updated_at = excluded.updated_at, message = NULL",
                (run_id, run_hash, _json(settings), now, now),
            )

    def set_status(self, run_id: str, status: str, *, add_seconds: float = 0.0, message: str | None = None) -> None:
        """Set a run's status, add wall-clock seconds to its total, and record why (for failed/interrupted)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, seconds = seconds + ?, message = ?, updated_at = ? WHERE run_id = ?",
                (status, float(add_seconds), message, _now(), run_id),
            )
            if cur.rowcount == 0:
                raise StoreError(f"{self.path}: no run {run_id!r}")

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run as a dict (``settings`` decoded, plus ``rounds_done``), or None if unknown."""
        row = self._conn.execute(_RUNS_SELECT + " WHERE r.run_id = ?", (run_id,)).fetchone()
        return _run_dict(row) if row is not None else None

    def list_runs(
        self,
        *,
        status: str | None = None,
        where: Mapping[str, Any] | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Runs, oldest first, optionally filtered by status, by setting values and by id.

        ``where={"method": "sap", "seed": 0}`` keeps runs whose settings have exactly those values.
        """
        clauses: list[str] = []
        args: list[Any] = []
        if status is not None:
            clauses.append("r.status = ?")
            args.append(status)
        for key, value in (where or {}).items():
            if not str(key).isidentifier():
                raise ValueError(f"setting names are identifiers, got {key!r}")
            clauses.append(f"json_extract(r.settings, '$.{key}') = ?")
            args.append(int(value) if isinstance(value, bool) else value)
        if run_ids is not None:
            clauses.append(f"r.run_id IN ({','.join('?' * len(run_ids))})" if run_ids else "0")
            args.extend(run_ids)
        sql = _RUNS_SELECT + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY r.rowid"
        return [_run_dict(row) for row in self._conn.execute(sql, args).fetchall()]

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
        unknown keys are an error. ``units`` are dicts with the keys of :data:`UNIT_COLUMNS`.
        """
        unknown = sorted(set(metrics) - set(ROUND_COLUMNS) - {"layers"})
        if unknown:
            raise ValueError(f"unknown round metrics {unknown}; known: {(*ROUND_COLUMNS, 'layers')}")
        values = [finite_or_none(metrics.get(c)) for c in ROUND_COLUMNS]
        layers = _json(metrics.get("layers") or {})
        unit_rows = []
        for u in units:
            missing = [c for c in UNIT_COLUMNS if c not in u]
            if missing:
                raise ValueError(f"unit record {dict(u)} lacks {missing}")
            unit_rows.append(
                (
                    run_id,
                    int(round_index),
                    str(u["unit"]),
                    int(u["d"]),
                    finite_or_none(float(u["pqi"])),
                    int(u["r"]),
                    int(u["c"]),
                    int(bool(u["clipped"])),
                )
            )
        cols = ", ".join(ROUND_COLUMNS)
        with self.transaction() as conn:
            # Delete-then-insert, not an upsert per column: a rewritten round must not keep stale units.
            conn.execute("DELETE FROM units WHERE run_id = ? AND round = ?", (run_id, int(round_index)))
            conn.execute(
                f"INSERT OR REPLACE INTO rounds (run_id, round, {cols}, layers) "
                f"VALUES (?, ?, {', '.join('?' * len(ROUND_COLUMNS))}, ?)",
                (run_id, int(round_index), *values, layers),
            )
            conn.executemany(
                "INSERT INTO units (run_id, round, unit, d, pqi, r, c, clipped) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                unit_rows,
            )
            conn.execute("UPDATE runs SET updated_at = ? WHERE run_id = ?", (_now(), run_id))

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        """All recorded rounds of a run, by round, as dicts (``layers`` decoded)."""
        rows = self._conn.execute("SELECT * FROM rounds WHERE run_id = ? ORDER BY round", (run_id,)).fetchall()
        out = []
        for row in rows:
            d = dict(row)
            d["layers"] = json.loads(d["layers"])
            out.append(d)
        return out

    def units(self, run_id: str, round_index: int) -> list[dict[str, Any]]:
        """The per-unit records of one round's pruning step, in the order written; ``clipped`` as bool."""
        rows = self._conn.execute(
            "SELECT unit, d, pqi, r, c, clipped FROM units WHERE run_id = ? AND round = ? ORDER BY rowid",
            (run_id, int(round_index)),
        ).fetchall()
        return [{**dict(r), "clipped": bool(r["clipped"])} for r in rows]

    def truncate_rounds(self, run_id: str, keep_upto: int) -> None:
        """Delete the rounds (and their units) of a run after round ``keep_upto`` (-1: all), in one transaction."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM units WHERE run_id = ? AND round > ?", (run_id, int(keep_upto)))
            conn.execute("DELETE FROM rounds WHERE run_id = ? AND round > ?", (run_id, int(keep_upto)))

    def delete_run(self, run_id: str) -> None:
        """Remove a run with its rounds and units (one transaction)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM units WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM rounds WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))


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


_RUNS_SELECT = "SELECT r.*, (SELECT COUNT(*) FROM rounds x WHERE x.run_id = r.run_id) AS rounds_done FROM runs r"


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["settings"] = json.loads(d["settings"])
    return d


# ================================================================================================ theory studies
# Section owned by the theory study (pqprune.theory). Kept apart from the runs/rounds schema above:
# the table is created lazily by the first write (CREATE TABLE IF NOT EXISTS inside that write's transaction), so
# databases without it stay valid and the schema version is unchanged (a new table alters no existing one).
#
#   theory(                                              -- one row per Monte-Carlo cell: a random-network
#     id INTEGER PRIMARY KEY,                            -- configuration at one tolerance ε (docs/math.md §8)
#     study TEXT,                                        -- id shared by the cells of one `pqprune theory mc` call
#     created_at TEXT,                                   -- ISO 8601, UTC
#     settings TEXT,                                     -- JSON: the RandomNetSpec and the estimator's settings
#     arch, width, depth, density, method, dist, eps,    -- the cell
#     n, successes, p_hat, ci_low, ci_high,              -- draws, draws with gap ≤ ε, p̂ and its Wilson 95% interval
#     guaranteed_probability,                            -- the proven bound's lower bound on P(gap ≤ ε)
#     delta, bound_eps, gap_mean, gap_q, gap_max,        -- bound's ε at 1−δ; gap mean, (1−δ)-quantile, max
#     seconds)                                           -- wall time of the configuration's draws
THEORY_COLUMNS: tuple[str, ...] = (
    "arch",
    "width",
    "depth",
    "density",
    "method",
    "dist",
    "eps",
    "n",
    "successes",
    "p_hat",
    "ci_low",
    "ci_high",
    "guaranteed_probability",
    "delta",
    "bound_eps",
    "gap_mean",
    "gap_q",
    "gap_max",
    "seconds",
)

_THEORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS theory (
    id                     INTEGER PRIMARY KEY,
    study                  TEXT NOT NULL,
    created_at             TEXT NOT NULL,
    settings               TEXT NOT NULL,
    arch                   TEXT NOT NULL,
    width                  INTEGER NOT NULL,
    depth                  INTEGER NOT NULL,
    density                REAL NOT NULL,
    method                 TEXT NOT NULL,
    dist                   TEXT NOT NULL,
    eps                    REAL NOT NULL,
    n                      INTEGER NOT NULL,
    successes              INTEGER NOT NULL,
    p_hat                  REAL NOT NULL,
    ci_low                 REAL NOT NULL,
    ci_high                REAL NOT NULL,
    guaranteed_probability REAL NOT NULL,
    delta                  REAL,
    bound_eps              REAL,
    gap_mean               REAL,
    gap_q                  REAL,
    gap_max                REAL,
    seconds                REAL
)
"""


def record_theory_cells(store: Store, cells: Sequence[Mapping[str, Any]]) -> None:
    """Write Monte-Carlo cells to the ``theory`` table in one transaction (all or none).

    Each cell holds the keys of :data:`THEORY_COLUMNS` and ``settings`` (a dict, stored as JSON, whose ``study``
    entry, if any, also fills the ``study`` column). Missing keys or non-dict settings → ``ValueError``.
    """
    rows = []
    for cell in cells:
        missing = [c for c in THEORY_COLUMNS if c not in cell]
        if missing:
            raise ValueError(f"theory cell lacks {missing}")
        settings = cell.get("settings") or {}
        if not isinstance(settings, Mapping):
            raise ValueError(f"theory cell settings must be a dict, got {type(settings).__name__}")
        rows.append(
            (
                str(settings.get("study", "")),
                _now(),
                _json(settings),
                *(finite_or_none(cell[c]) for c in THEORY_COLUMNS),
            )
        )
    cols = ", ".join(("study", "created_at", "settings", *THEORY_COLUMNS))
    with store.transaction() as conn:
        conn.execute(_THEORY_SCHEMA)
        conn.executemany(f"INSERT INTO theory ({cols}) VALUES ({', '.join('?' * (len(THEORY_COLUMNS) + 3))})", rows)


def theory_cells(store: Store, study: str | None = None) -> list[dict[str, Any]]:
    """The ``theory`` rows (``settings`` decoded), oldest first; only those of ``study`` if given; [] if none yet."""
    exists = store._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'theory'").fetchone()
    if exists is None:
        return []
    sql, args = "SELECT * FROM theory", cast(tuple[str, ...], ())
    if study is not None:
        sql, args = sql + " WHERE study = ?", (study,)
    return [_run_dict(row) for row in store._conn.execute(sql + " ORDER BY id", args).fetchall()]
