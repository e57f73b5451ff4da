"""The results database: schema, transactions, idempotent rounds, queries, concurrent writers, bad paths."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import sqlite3
from pathlib import Path

import pytest

from pqprune.store import database as store_module
from pqprune.store.database import ROUND_COLUMNS, SCHEMA_VERSION, Store, StoreError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "database.md"


def _units(n: int, round_index: int = 0) -> list[dict]:
    return [
        dict(unit=f"layer{i}.weight", d=100 - round_index, pqi=0.1 * i, r=80, c=20, clipped=i % 2 == 0)
        for i in range(n)
    ]


def _metrics(round_index: int) -> dict:
    return {
        "density": 0.8**round_index,
        "test_accuracy": 0.9,
        "val_accuracy": 0.91,
        "pqi": 0.15,
        "gini": 0.4,
        "layers": {"fc.weight": {"pqi": 0.15, "gini": 0.4, "density": 0.8**round_index}},
    }


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "runs" / "pqprune.db") as s:
        yield s


def test_schema_wal_and_version(store: Store) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "rounds", "units", "schema_version"} <= tables
    cols = {r[1] for r in conn.execute("PRAGMA table_info(rounds)")}
    assert set(ROUND_COLUMNS) | {"run_id", "round", "layers"} <= cols
    conn.close()
    Store(store.path).close()  # reopening an existing database keeps one version row
    assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1


def test_runs_lifecycle_and_filters(store: Store) -> None:
    store.start_run("sap-1", "h1", {"method": "sap", "seed": 0, "scope": "global"})
    store.start_run("lt-2", "h2", {"method": "lt", "seed": 1, "scope": "global"})
    store.set_status("sap-1", "finished", add_seconds=2.5)
    run = store.get_run("sap-1")
    assert run is not None and run["status"] == "finished" and run["seconds"] == 2.5
    assert run["settings"] == {"method": "sap", "seed": 0, "scope": "global"}
    assert store.get_run("nope") is None
    assert [r["run_id"] for r in store.list_runs(status="running")] == ["lt-2"]
    assert [r["run_id"] for r in store.list_runs(where={"method": "sap", "seed": 0})] == ["sap-1"]
    assert [r["run_id"] for r in store.list_runs(where={"scope": "global"})] == ["sap-1", "lt-2"]
    assert store.list_runs(run_ids=[]) == []
    # A resume marks the run running again, keeps its creation time and adds up seconds.
    created = run["created_at"]
    store.start_run("sap-1", "h1", {"method": "sap", "seed": 0, "scope": "global"})
    store.set_status("sap-1", "interrupted", add_seconds=1.0, message="Ctrl-C")
    run = store.get_run("sap-1")
    assert (run["status"], run["seconds"], run["message"], run["created_at"]) == ("interrupted", 3.5, "Ctrl-C", created)
    with pytest.raises(ValueError, match="status"):
        store.set_status("sap-1", "exploded")
    with pytest.raises(StoreError, match="no run"):
        store.set_status("nope", "finished")


def test_round_with_units_and_idempotent_rewrite(store: Store) -> None:
    store.start_run("r", "h", {})
    store.record_round("r", 0, _metrics(0), _units(3))
    store.record_round("r", 0, _metrics(0), _units(3))  # a resume writes the same round again
    rounds = store.rounds("r")
    assert len(rounds) == 1 and rounds[0]["density"] == 1.0
    assert rounds[0]["layers"] == {"fc.weight": {"pqi": 0.15, "gini": 0.4, "density": 1.0}}
    assert store.units("r", 0) == _units(3)
    store.record_round("r", 0, {**_metrics(0), "density": 0.5}, _units(1))  # a rewrite replaces, no stale units
    assert store.rounds("r")[0]["density"] == 0.5 and len(store.units("r", 0)) == 1
    assert store.get_run("r")["rounds_done"] == 1


def test_nan_is_stored_as_null(store: Store) -> None:
    store.start_run("r", "h", {})
    unit = dict(unit="global", d=0, pqi=float("nan"), r=0, c=0, clipped=False)
    store.record_round("r", 0, {"pqi": float("nan"), "layers": {"a": {"pqi": float("nan")}}}, [unit])
    assert store.rounds("r")[0]["pqi"] is None and store.rounds("r")[0]["layers"] == {"a": {"pqi": None}}
    assert store.units("r", 0)[0]["pqi"] is None


def test_round_and_units_are_one_transaction(store: Store) -> None:
    store.start_run("r", "h", {})
    store.record_round("r", 0, _metrics(0), _units(2))
    # The second unit has the same name: the insert fails half-way, and neither the new round nor its units
    # nor the deletion of the old units survive.
    dup = _units(1, round_index=5) * 2
    with pytest.raises(sqlite3.IntegrityError):
        store.record_round("r", 0, {**_metrics(0), "density": 0.1}, dup)
    assert store.rounds("r")[0]["density"] == 1.0
    assert store.units("r", 0) == _units(2)
    with pytest.raises(sqlite3.IntegrityError):  # a round of an unknown run
        store.record_round("ghost", 0, _metrics(0), _units(1))
    assert store.rounds("ghost") == [] and store.units("ghost", 0) == []


def test_bad_records_are_refused_before_writing(store: Store) -> None:
    store.start_run("r", "h", {})
    with pytest.raises(ValueError, match="unknown round metrics"):
        store.record_round("r", 0, {"acc": 1.0})
    with pytest.raises(ValueError, match="lacks"):
        store.record_round("r", 0, _metrics(0), [{"unit": "x"}])
    assert store.rounds("r") == []


def test_delete_run(store: Store) -> None:
    store.start_run("r", "h", {})
    store.record_round("r", 0, _metrics(0), _units(2))
    store.delete_run("r")
    assert store.get_run("r") is None and store.rounds("r") == [] and store.units("r", 0) == []


def test_unwritable_paths_raise_a_clear_error(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(StoreError, match=re.escape(str(a_file / "sub" / "x.db"))):
        Store(a_file / "sub" / "x.db")
    with pytest.raises(StoreError, match="is a folder"):
        Store(tmp_path)
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=re.escape(str(not_a_db))):
        Store(not_a_db)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "junk.db"]  # nothing half-written


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(path)


def test_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    v1_schema = store_module._SCHEMA.replace("    pruned_pqi           REAL,\n", "")
    assert v1_schema != store_module._SCHEMA
    conn.executescript(v1_schema)
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.execute("INSERT INTO runs VALUES ('r1', 'h', 'finished', '{}', 'now', 'now', 1.0, NULL)")
    conn.execute("INSERT INTO rounds (run_id, round, density, pqi) VALUES ('r1', 0, 1.0, 0.15)")
    conn.commit()
    conn.close()
    with Store(path) as s:
        (row,) = s.rounds("r1")
        assert row["density"] == 1.0 and row["pqi"] == 0.15 and row["pruned_pqi"] is None
        s.record_round("r1", 1, {**_metrics(1), "pruned_pqi": 0.07}, [])
        assert s.rounds("r1")[1]["pruned_pqi"] == 0.07
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


def _writer(path: str, run_id: str, n_rounds: int, n_units: int, start: mp.synchronize.Event) -> None:
    with Store(path) as s:
        s.start_run(run_id, run_id, {"writer": run_id})
        start.wait(30)
        for t in range(n_rounds):
            s.record_round(run_id, t, _metrics(t), _units(n_units, t))
        s.set_status(run_id, "finished")


@pytest.mark.timeout(120)
def test_two_processes_writing_at_once_lose_no_row(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    Store(path).close()
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    n_rounds, n_units = 150, 10
    procs = [ctx.Process(target=_writer, args=(path, f"w{i}", n_rounds, n_units, start)) for i in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(100)
    assert [p.exitcode for p in procs] == [0, 0]
    with Store(path) as s:
        for i in range(2):
            assert s.get_run(f"w{i}")["status"] == "finished"
            assert len(s.rounds(f"w{i}")) == n_rounds
            assert sum(len(s.units(f"w{i}", t)) for t in range(n_rounds)) == n_rounds * n_units


def _sql_blocks(text: str) -> list[str]:
    return re.findall(r"```sql\n(.*?)```", text, flags=re.S)


def test_documented_queries_run(store: Store) -> None:
    """Every example query in docs/database.md runs on a populated database (the docs cannot rot)."""
    settings = {"method": "sap", "scope": "global", "seed": 0, "data": "mnist5k", "model": "mlp", "p": 0.5, "q": 1.0}
    store.start_run("sap-abc", "abc", settings)
    for t in range(3):
        store.record_round("sap-abc", t, {**_metrics(t), "pruned_test_accuracy": 0.8 if t else None}, _units(2, t))
    store.set_status("sap-abc", "finished", add_seconds=1.0)
    blocks = _sql_blocks(DOCS.read_text())
    assert len(blocks) >= 4
    conn = sqlite3.connect(store.path)
    for sql in blocks:
        rows = conn.execute(sql).fetchall()
        assert rows, f"documented query returned nothing:\n{sql}"
    json.dumps(rows)
