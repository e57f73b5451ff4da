"""The results database: the only package of pqprune that speaks SQL (schema and queries: docs/database.md)."""

from pqprune.store.database import (
    DEFAULT_DB,
    SCHEMA_VERSION,
    STATUSES,
    Store,
    StoreError,
    record_theory_cells,
    theory_cells,
)

__all__ = ["DEFAULT_DB", "SCHEMA_VERSION", "STATUSES", "Store", "StoreError", "record_theory_cells", "theory_cells"]
