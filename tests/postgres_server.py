"""A real PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` in a temporary folder, reached on a Unix socket.

``initdb`` refuses to run as root, so when the tests run as root the server's files belong to the ``postgres``
system user and every server command runs as that user (``runuser``, else ``su``). Nothing listens on TCP.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin", "/usr/bin", "/usr/local/bin")


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (the newest version first), or None."""
    for pattern in SEARCH:
        for folder in sorted(glob.glob(pattern), reverse=True):
            if all(os.access(Path(folder) / b, os.X_OK) for b in ("initdb", "pg_ctl")):
                return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One server: :meth:`start`, :meth:`stop`, :meth:`create_database` → a URL, :meth:`destroy`."""

    def __init__(self, binaries: Path) -> None:
        self.bin = binaries
        # A short folder: a Unix socket's path is limited to ~100 characters.
        self.root = Path(tempfile.mkdtemp(prefix="pqpg-", dir="/tmp"))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = _free_port()
        self.as_user = "postgres" if os.geteuid() == 0 else None
        if self.as_user is not None:
            entry = pwd.getpwnam(self.as_user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(self.bin / program), *args]
        if self.as_user is not None:
            runner = shutil.which("runuser")
            cmd = [runner, "-u", self.as_user, "--", *cmd] if runner else ["su", self.as_user, "-c", " ".join(cmd)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log}")

    def start(self) -> None:
        options = f"-k {self.root} -p {self.port} -c listen_addresses='' -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}&port={self.port}"

    def create_database(self) -> str:
        """A new empty database → its URL (each test gets its own)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname="postgres") as conn:
            conn.autocommit = True
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def wait_until_down(server: PostgresServer, timeout: float = 30.0) -> None:
    """Wait until the server's socket is gone (``pg_ctl stop -w`` returns once it is)."""
    sock = server.root / f".s.PGSQL.{server.port}"
    deadline = time.monotonic() + timeout
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
