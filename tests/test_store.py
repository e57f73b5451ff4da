"""The results database on both backends (an SQLite file, a real PostgreSQL server): schema, transactions, idempotent
rounds, queries, migrations, concurrent writers, bad paths and URLs, and surviving a server restart."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from postgres_server import PostgresServer, wait_until_down
from pqprune.files import save_json
from pqprune.store import SCHEMA_VERSION, Store, StoreError, exists
from pqprune.store.engine import resolve
from pqprune.store.schema import ROUND_COLUMNS, STATUSES

DOCS = Path(__file__).resolve().parents[1] / "docs" / "database.md"

# The schema pqprune 0.1.0 created before its first migration (version 1), frozen here on purpose.
V1_SCHEMA = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, run_hash TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN {STATUSES}),
    settings TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, seconds REAL NOT NULL DEFAULT 0,
    message TEXT);
CREATE TABLE rounds (run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, round INTEGER NOT NULL,
    density REAL, test_accuracy REAL, test_loss REAL, val_accuracy REAL, val_loss REAL, pruned_test_accuracy REAL,
    pruned_val_accuracy REAL, pqi REAL, gini REAL, best_epoch INTEGER, seconds_train REAL, seconds_evaluate REAL,
    seconds_measure REAL, seconds_prune REAL, seconds_checkpoint REAL, layers TEXT NOT NULL DEFAULT '{{}}',
    PRIMARY KEY (run_id, round));
CREATE TABLE units (run_id TEXT NOT NULL, round INTEGER NOT NULL, unit TEXT NOT NULL, d INTEGER, pqi REAL,
    r INTEGER, c INTEGER, clipped INTEGER, PRIMARY KEY (run_id, round, unit),
    FOREIGN KEY (run_id, round) REFERENCES rounds(run_id, round) ON DELETE CASCADE);
CREATE INDEX runs_status ON runs(status);
"""


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
def store(db_url: str):
    with Store(db_url) as s:
        yield s


# --------------------------------------------------------------------------------------------- both backends
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
    assert store.list_runs(where={"seed": 0.0}) == store.list_runs(where={"seed": 0})  # numbers compare as numbers
    assert store.list_runs(where={"nothere": 1}) == []
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


def test_units_keep_the_order_written_and_doubles_read_back_exactly(store: Store) -> None:
    store.start_run("r", "h", {"lr": 0.1 + 0.2})
    names = ["fc2.weight[10]", "fc2.weight[2]", "fc1.weight[0]"]  # not sorted by name
    units = [dict(unit=n, d=7, pqi=1 / 3, r=5, c=2, clipped=False) for n in names]
    store.record_round("r", 0, {"density": 2 / 3, "pqi": 1e-300, "best_epoch": 3}, units)
    assert [u["unit"] for u in store.units("r", 0)] == names
    (row,) = store.rounds("r")
    assert (row["density"], row["pqi"], row["best_epoch"]) == (2 / 3, 1e-300, 3)
    assert store.units("r", 0)[0]["pqi"] == 1 / 3 and store.get_run("r")["settings"]["lr"] == 0.1 + 0.2


def test_nan_is_stored_as_null(store: Store) -> None:
    store.start_run("r", "h", {})
    unit = dict(unit="global", d=0, pqi=float("nan"), r=0, c=0, clipped=False)
    store.record_round("r", 0, {"pqi": float("nan"), "layers": {"a": {"pqi": float("nan")}}}, [unit])
    assert store.rounds("r")[0]["pqi"] is None and store.rounds("r")[0]["layers"] == {"a": {"pqi": None}}
    assert store.units("r", 0)[0]["pqi"] is None


def test_a_round_read_back_from_its_json_file_is_recorded(store: Store, tmp_path: Path) -> None:
    # A signal between a round's JSON and its row leaves the row to be written from the file, where NaN is null.
    store.start_run("r", "h", {})
    unit = dict(unit="global", d=9, pqi=float("nan"), r=7, c=2, clipped=False)
    back = json.loads(
        save_json({"metrics": {"pqi": float("nan"), "density": 1.0}, "units": [unit]}, tmp_path / "r.json").read_text()
    )
    assert back["units"][0]["pqi"] is None
    store.record_round("r", 0, back["metrics"], back["units"])
    assert store.units("r", 0)[0]["pqi"] is None and store.units("r", 0)[0]["d"] == 9
    assert store.rounds("r")[0]["pqi"] is None and store.rounds("r")[0]["density"] == 1.0


def test_round_and_units_are_one_transaction(store: Store) -> None:
    store.start_run("r", "h", {})
    store.record_round("r", 0, _metrics(0), _units(2))
    # The second unit has the same name: the insert fails half-way, and neither the new round nor its units
    # nor the deletion of the old units survive.
    dup = _units(1, round_index=5) * 2
    with pytest.raises(StoreError, match=r"write round 0 of run r .*IntegrityError"):
        store.record_round("r", 0, {**_metrics(0), "density": 0.1}, dup)
    assert store.rounds("r")[0]["density"] == 1.0
    assert store.units("r", 0) == _units(2)
    with pytest.raises(StoreError, match="IntegrityError"):  # a round of an unknown run
        store.record_round("ghost", 0, _metrics(0), _units(1))
    assert store.rounds("ghost") == [] and store.units("ghost", 0) == []


def test_bad_records_are_refused_before_writing(store: Store) -> None:
    store.start_run("r", "h", {})
    with pytest.raises(ValueError, match="unknown round metrics"):
        store.record_round("r", 0, {"acc": 1.0})
    with pytest.raises(ValueError, match="lacks"):
        store.record_round("r", 0, _metrics(0), [{"unit": "x"}])
    assert store.rounds("r") == []


def test_truncate_and_delete_run(store: Store) -> None:
    store.start_run("r", "h", {})
    for t in range(3):
        store.record_round("r", t, _metrics(t), _units(2, t))
    store.truncate_rounds("r", 0)
    assert [x["round"] for x in store.rounds("r")] == [0] and store.units("r", 1) == []
    store.delete_run("r")
    assert store.get_run("r") is None and store.rounds("r") == [] and store.units("r", 0) == []


def test_reopening_keeps_one_version_row_and_a_newer_schema_is_refused(db_url: str) -> None:
    from sqlalchemy import update

    from pqprune.store.schema import schema_version

    with Store(db_url) as s:
        s.start_run("r", "h", {})
    with Store(db_url) as s:
        versions = s.transact(lambda c: c.execute(schema_version.select()).scalars().all(), "read")
        assert versions == [SCHEMA_VERSION] and s.get_run("r") is not None
        s.transact(lambda c: c.execute(update(schema_version).values(version=99)), "bump")
    with pytest.raises(StoreError, match="schema version 99"):
        Store(db_url)


def _writer(db: str, run_id: str, n_rounds: int, n_units: int, start: mp.synchronize.Event) -> None:
    with Store(db) as s:
        s.start_run(run_id, run_id, {"writer": run_id})
        start.wait(30)
        for t in range(n_rounds):
            s.record_round(run_id, t, _metrics(t), _units(n_units, t))
        s.set_status(run_id, "finished")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_several_processes_writing_at_once_lose_no_row(db_url: str) -> None:
    Store(db_url).close()
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    n_writers, n_rounds, n_units = 2, 60, 10
    procs = [ctx.Process(target=_writer, args=(db_url, f"w{i}", n_rounds, n_units, start)) for i in range(n_writers)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(150)
    assert [p.exitcode for p in procs] == [0] * n_writers
    with Store(db_url) as s:
        for i in range(n_writers):
            assert s.get_run(f"w{i}")["status"] == "finished"
            assert len(s.rounds(f"w{i}")) == n_rounds
            assert sum(len(s.units(f"w{i}", t)) for t in range(n_rounds)) == n_rounds * n_units


# --------------------------------------------------------------------------------------------- SQLite files
def test_sqlite_file_is_wal_with_the_documented_tables(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "pqprune.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"runs", "rounds", "units", "claims", "theory", "schema_version"}
    cols = {r[1] for r in conn.execute("PRAGMA table_info(rounds)")}
    assert set(ROUND_COLUMNS) | {"run_id", "round", "layers"} == cols
    conn.close()
    assert exists(path) and not exists(tmp_path / "none.db") and exists("postgresql://u@h/db")


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


def test_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.execute("INSERT INTO runs VALUES ('r1', 'h', 'finished', '{\"seed\": 3}', 'now', 'now', 1.0, NULL)")
    conn.execute("INSERT INTO rounds (run_id, round, density, pqi) VALUES ('r1', 0, 1.0, 0.15)")
    for unit in ("b", "c", "a"):  # written in this order: units keep it after the upgrade
        conn.execute(f"INSERT INTO units VALUES ('r1', 0, '{unit}', 4, 0.5, 3, 1, 0)")
    conn.commit()
    conn.close()
    with Store(path) as s:
        (row,) = s.rounds("r1")
        assert row["density"] == 1.0 and row["pqi"] == 0.15 and row["pruned_pqi"] is None
        assert [u["unit"] for u in s.units("r1", 0)] == ["b", "c", "a"]
        assert s.get_run("r1")["settings"] == {"seed": 3}
        s.record_round("r1", 1, {**_metrics(1), "pruned_pqi": 0.07}, _units(2, 1))
        assert s.rounds("r1")[1]["pruned_pqi"] == 0.07 and s.units("r1", 1) == _units(2, 1)
        with s.claim("r1"):
            assert set(s.live_claims()) == {"r1"}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.close()


def test_a_failed_upgrade_leaves_the_old_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA.replace("pruned_val_accuracy REAL,", "pruned_val_accuracy REAL, pruned_pqi REAL,"))
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")  # claims version 1, has version 2's column
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="duplicate column name: pruned_pqi"):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    assert "claims" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}  # all steps or none
    conn.close()


# --------------------------------------------------------------------------------------------- URLs
def test_urls_name_the_backend_and_hide_passwords(tmp_path: Path) -> None:
    pg = resolve("postgres://alice:secret@db.lab:5433/pqprune")
    assert pg.path is None and pg.url.drivername == "postgresql+psycopg" and pg.url.port == 5433
    assert "secret" not in pg.name and "alice" in pg.name
    assert resolve("postgresql+psycopg://u@/x?host=/tmp").url.query == {"host": "/tmp"}
    assert resolve(f"sqlite:///{tmp_path}/a.db").path == tmp_path / "a.db"
    assert resolve(tmp_path / "a.db").path == tmp_path / "a.db"
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        resolve("mysql://u@h/db")
    with pytest.raises(StoreError, match="in-memory"):
        resolve("sqlite://")


def test_an_unreachable_server_is_a_clear_error_after_the_retries(tmp_path: Path) -> None:
    url = f"postgresql://nobody@/none?host={tmp_path}&port=1"
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"cannot open the results database \(postgresql\+psycopg://nobody@/none"):
        Store(url, retry_seconds=1.0)
    # It retried with backoff (0.05 + 0.1 + 0.2 s at least) and gave up at the deadline, not much later (a loaded
    # machine can add seconds to each failed connection attempt).
    assert 0.35 < time.monotonic() - start < 60


# --------------------------------------------------------------------------------------------- PostgreSQL
def test_a_server_restart_is_survived_by_retrying(postgres_server: PostgresServer, postgres_url: str) -> None:
    with Store(postgres_url) as s:
        s.start_run("r", "h", {})
        s.record_round("r", 0, _metrics(0), _units(2))
        postgres_server.stop()  # the pool's connections are now dead, and no new one can be made
        wait_until_down(postgres_server)
        restart = threading.Timer(2.0, postgres_server.start)
        restart.start()
        began = time.monotonic()
        try:
            s.record_round("r", 1, _metrics(1), _units(2, 1))  # retried with backoff until the server is back
        finally:
            restart.join()
        assert time.monotonic() - began >= 1.5
        s.set_status("r", "finished")
        assert [x["round"] for x in s.rounds("r")] == [0, 1] and s.units("r", 1) == _units(2, 1)
        assert s.get_run("r")["status"] == "finished"


def test_postgres_tables_use_jsonb_and_doubles(postgres_url: str) -> None:
    from sqlalchemy import text

    with Store(postgres_url) as s:
        kinds = s.transact(
            lambda c: dict(
                c.execute(
                    text(
                        "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                        "WHERE table_name IN ('runs', 'rounds', 'units')"
                    )
                ).all()
            ),
            "read the catalog",
        )
    assert kinds["runs.settings"] == kinds["rounds.layers"] == "jsonb"
    assert kinds["rounds.density"] == kinds["units.pqi"] == "double precision"


# --------------------------------------------------------------------------------------------- documented queries
def _populate(store: Store) -> None:
    settings = {"method": "sap", "scope": "global", "seed": 0, "data": "mnist5k", "model": "mlp", "p": 0.5, "q": 1.0}
    store.start_run("sap-abc", "abc", settings)
    for t in range(3):
        store.record_round("sap-abc", t, {**_metrics(t), "pruned_test_accuracy": 0.8 if t else None}, _units(2, t))
    store.set_status("sap-abc", "finished", add_seconds=1.0)


def _sql_blocks(text: str, info: str) -> list[str]:
    return re.findall(rf"```{info}\n(.*?)```", text, flags=re.S)


def test_documented_sqlite_queries_run(tmp_path: Path) -> None:
    """Every SQLite example query in docs/database.md runs on a populated database (the docs cannot rot)."""
    with Store(tmp_path / "db.sqlite") as store:
        _populate(store)
    blocks = _sql_blocks(DOCS.read_text(), "sql")
    assert len(blocks) >= 4
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    for sql in blocks:
        rows = conn.execute(sql).fetchall()
        assert rows, f"documented query returned nothing:\n{sql}"
        json.dumps(rows)


def test_documented_postgres_queries_run(postgres_url: str) -> None:
    """Every PostgreSQL example query in docs/database.md runs on a populated server database."""
    import psycopg

    blocks = _sql_blocks(DOCS.read_text(), "sql postgresql")
    assert len(blocks) >= 4
    with Store(postgres_url) as store, store.claim("sap-abc"):  # a run being computed, for the claims query
        _populate(store)
        url = store.target.url
        with psycopg.connect(dbname=url.database, user=url.username, **url.query) as conn:  # type: ignore[arg-type]
            for sql in blocks:
                rows = conn.execute(sql).fetchall()
                assert rows, f"documented query returned nothing:\n{sql}"
