"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from postgres_server import PostgresServer, find_binaries


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tests on tiny tensors: several threads only add overhead on a busy 2-core machine.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the previous count is restored afterwards.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def out_args(tmp_path: Path) -> list[str]:
    """``--db`` and ``--runs-dir`` options that keep a CLI test's results inside its temporary folder."""
    return ["--db", str(tmp_path / "out" / "db.sqlite"), "--runs-dir", str(tmp_path / "out" / "runs")]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (tests/postgres_server.py); skipped only without its binaries."""
    binaries = find_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install PostgreSQL to run these tests")
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed: pip install 'pqprune[postgres]'")
    server = PostgresServer(binaries)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A results database of each backend: an SQLite file path, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "runs" / "pqprune.db")
    return str(request.getfixturevalue("postgres_url"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the real PostgreSQL server are ``slow``: the server's start and a database per test cost seconds."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_server = callspec is not None and callspec.params.get("db_url") == "postgresql"
        if on_server or {"postgres_server", "postgres_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
