"""The tables of the results database, one SQLAlchemy Core definition for SQLite and PostgreSQL, and its migrations.

Schema version 3 (``docs/database.md`` describes every column and has example queries)::

    schema_version(version)                              -- one row: the version of this schema
    runs(run_id PK, run_hash, status, settings JSON, created_at, updated_at, seconds, message)
    rounds(run_id, round, density, accuracies and losses, pruned_*, pqi, gini, best_epoch, seconds_*, layers JSON)
    units(run_id, round, unit, position, d, pqi, r, c, clipped)     -- the pruning step at the end of a round
    claims(run_id PK, owner, host, pid, claimed_at, heartbeat_at, expires_at)   -- who computes a run now
    theory(id PK, study, created_at, settings JSON, the Monte-Carlo cell's columns)

JSON columns are ``TEXT`` in SQLite (read with ``json_extract``) and ``jsonb`` in PostgreSQL (read with ``->>``);
floats are 8-byte doubles in both, so a number reads back bit-identical from either.

Version history: 1 (pqprune 0.1.0), 2 adds ``rounds.pruned_pqi``, 3 adds ``units.position`` (the order a round's
units were written in, which SQLite kept implicitly as its ``rowid``), the ``claims`` table of run leases and the
``theory`` table (created lazily before). A database of version < 3 can only be an SQLite file: PostgreSQL
databases start at version 3.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Double,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from pqprune.files import json_safe, to_json
from pqprune.store.status import STATUSES

SCHEMA_VERSION = 3

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
_INTEGER_COLUMNS = frozenset({"best_epoch", "width", "depth", "n", "successes"})
_TEXT_COLUMNS = frozenset({"arch", "method", "dist"})
_OPTIONAL_THEORY = frozenset({"delta", "bound_eps", "gap_mean", "gap_q", "gap_max", "seconds"})


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` with NaN/inf as null (NaN is not JSON) and sorted keys, on one line."""
    return to_json(obj, indent=None, sort_keys=True)


class JsonDocument(TypeDecorator[Any]):
    """A JSON value: ``jsonb`` in PostgreSQL, text in SQLite (as pqprune 0.1.0 wrote it); NaN is stored as null."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json_safe(value) if dialect.name == "postgresql" else dumps(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return json.loads(value) if isinstance(value, str) and dialect.name != "postgresql" else value


metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

runs = Table(
    "runs",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("run_hash", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("settings", JsonDocument, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    Column("seconds", Double, nullable=False, server_default=text("0")),
    Column("message", Text),
    CheckConstraint(f"status IN {STATUSES}", name="runs_status_known"),
)
Index("runs_status", runs.c.status)

rounds = Table(
    "rounds",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("round", Integer, nullable=False),
    *(Column(c, Integer if c in _INTEGER_COLUMNS else Double) for c in ROUND_COLUMNS),
    Column("layers", JsonDocument, nullable=False),
    PrimaryKeyConstraint("run_id", "round"),
    ForeignKeyConstraint(["run_id"], ["runs.run_id"], ondelete="CASCADE"),
)

units = Table(
    "units",
    metadata,
    Column("run_id", Text, nullable=False),
    Column("round", Integer, nullable=False),
    Column("unit", Text, nullable=False),
    Column("d", Integer),
    Column("pqi", Double),
    Column("r", Integer),
    Column("c", Integer),
    Column("clipped", Integer),
    Column("position", Integer),
    PrimaryKeyConstraint("run_id", "round", "unit"),
    ForeignKeyConstraint(["run_id", "round"], ["rounds.run_id", "rounds.round"], ondelete="CASCADE"),
)

claims = Table(
    "claims",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("owner", Text, nullable=False),  # unique per claim: host, process id and a random token
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("claimed_at", Text, nullable=False),  # ISO 8601, UTC
    Column("heartbeat_at", Text, nullable=False),
    Column("expires_at", Double, nullable=False),  # seconds since the epoch (the claimant's clock)
)

theory = Table(
    "theory",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("settings", JsonDocument, nullable=False),
    *(
        Column(
            c,
            Integer if c in _INTEGER_COLUMNS else Text if c in _TEXT_COLUMNS else Double,
            nullable=c in _OPTIONAL_THEORY,
        )
        for c in THEORY_COLUMNS
    ),
)


def _add_column(conn: Connection, table: Table, name: str) -> None:
    kind = table.c[name].type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}")


def _to_v2(conn: Connection) -> None:
    _add_column(conn, rounds, "pruned_pqi")


def _to_v3(conn: Connection) -> None:
    # Only SQLite files have a version < 3; their rowid is the order the units were written in.
    _add_column(conn, units, "position")
    conn.exec_driver_sql("UPDATE units SET position = rowid")
    # The claims and theory tables are created by create_all (the theory table may exist already).


# Steps that take a database of version v to v + 1; applied in order, in the transaction that opens it.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _to_v2, 2: _to_v3}
