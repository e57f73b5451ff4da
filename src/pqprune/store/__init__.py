"""The results database: the only package of pqprune that speaks SQL (schema and queries: docs/database.md).

:class:`Store` reads and writes an SQLite file or a PostgreSQL server by URL; claims on runs are lease rows
(:mod:`pqprune.store.claims`); transient server errors are retried with backoff (:mod:`pqprune.store.engine`).
"""

from pqprune.store.claims import LEASE_SECONDS, ClaimHeld, ClaimLost, Lease
from pqprune.store.database import DEFAULT_DB, Store, exists
from pqprune.store.engine import StoreError, describe, is_url
from pqprune.store.schema import SCHEMA_VERSION, STATUSES
from pqprune.store.theory import record_theory_cells, theory_cells

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
