"""The ``theory`` table: the cells of the Monte-Carlo study of random and magnitude pruning (docs/math.md §8).

One row per cell, a random-network configuration at one tolerance ε: ``study`` (id shared by the cells of one
``pqprune theory mc`` call), ``created_at``, ``settings`` (JSON: the RandomNetSpec and the estimator's settings),
the cell (``arch``, ``width``, ``depth``, ``density``, ``method``, ``dist``, ``eps``), ``n`` draws of which
``successes`` had gap ≤ ε, ``p_hat`` with its Wilson 95% interval ``ci_low``/``ci_high``, the proven bound's lower
bound ``guaranteed_probability`` on P(gap ≤ ε), ``delta`` and the bound's ε at 1−δ ``bound_eps``, the gap's mean,
(1−δ)-quantile and maximum, and the configuration's wall time ``seconds``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert, select

from pqprune.files import finite_or_none
from pqprune.store.claims import now_iso
from pqprune.store.database import Store
from pqprune.store.schema import THEORY_COLUMNS, theory


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
            {
                "study": str(settings.get("study", "")),
                "created_at": now_iso(),
                "settings": dict(settings),
                **{c: finite_or_none(cell[c]) for c in THEORY_COLUMNS},
            }
        )
    if rows:
        store.transact(lambda conn: conn.execute(insert(theory), rows), "write theory cells")


def theory_cells(store: Store, study: str | None = None) -> list[dict[str, Any]]:
    """The ``theory`` rows (``settings`` decoded), oldest first; only those of ``study`` if given."""
    query = select(theory).order_by(theory.c.id)
    if study is not None:
        query = query.where(theory.c.study == study)
    return store.transact(
        lambda conn: [dict(r._mapping) for r in conn.execute(query)], "read theory cells", write=False
    )
