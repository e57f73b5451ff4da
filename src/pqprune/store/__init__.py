"""The results database: the only package of pqprune that speaks SQL (schema and queries: docs/database.md).

:class:`Store` reads and writes an SQLite file or a PostgreSQL server by URL; claims on runs are lease rows
(:mod:`pqprune.store.claims`); transient server errors are retried with backoff (:mod:`pqprune.store.engine`).
"""

from typing import TYPE_CHECKING

from pqprune.lazy import exports
from pqprune.store.status import STATUSES

if TYPE_CHECKING:
    from pqprune.store.claims import LEASE_SECONDS, ClaimHeld, ClaimLost, Lease
    from pqprune.store.database import DEFAULT_DB, Store, exists
    from pqprune.store.engine import StoreError, describe, is_url
    from pqprune.store.schema import SCHEMA_VERSION
    from pqprune.store.theory import record_theory_cells, theory_cells

# Imported on first use: SQLAlchemy is loaded by the commands that open a database, not by every command.
__getattr__ = exports(
    __name__,
    {
        "LEASE_SECONDS": "claims",
        "ClaimHeld": "claims",
        "ClaimLost": "claims",
        "Lease": "claims",
        "DEFAULT_DB": "database",
        "Store": "database",
        "exists": "database",
        "StoreError": "engine",
        "describe": "engine",
        "is_url": "engine",
        "SCHEMA_VERSION": "schema",
        "record_theory_cells": "theory",
        "theory_cells": "theory",
    },
)

__all__ = [
    "DEFAULT_DB",
    "LEASE_SECONDS",
    "SCHEMA_VERSION",
    "STATUSES",
    "ClaimHeld",
    "ClaimLost",
    "Lease",
    "Store",
    "StoreError",
    "describe",
    "exists",
    "is_url",
    "record_theory_cells",
    "theory_cells",
]
