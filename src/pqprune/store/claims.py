"""Claims on runs: which process computes a run now, as a lease row in the results database.

A sweep's tasks may run on several machines, and two sweeps may overlap, so the claim on a run lives where every
machine sees it: a row of ``claims``, taken in one transaction (insert if absent, or take over a lease that ended),
kept alive by a heartbeat thread and deleted when the run ends. A lease ends when

- its holder stops renewing it for :data:`LEASE_SECONDS` (the process or its machine died, or the network to the
  database is down longer than that), or
- its holder ran on this machine and its process no longer exists (a SIGKILL is noticed at once, as with a file lock).

Expiry compares the holder's clock with the taker's: machines must agree on the time to well within the lease
(NTP does). A holder that finds its lease taken over stops at the next round (:meth:`Lease.check`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from pqprune.store.engine import StoreError
from pqprune.store.schema import claims

if TYPE_CHECKING:
    from pqprune.store.database import Store

# A holder renews its lease every quarter of this, so a lease outlives three missed heartbeats.
LEASE_SECONDS = 60.0


class ClaimHeld(StoreError):
    """Another live process holds the claim on the run; ``holder`` is its claims row."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


class ClaimLost(StoreError):
    """This process's lease on a run ended and another process took the run over."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def upsert(conn: Connection, table: Any) -> Any:
    """``INSERT … ON CONFLICT`` for the connection's backend (SQLite and PostgreSQL spell it the same way)."""
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[conn.dialect.name](table)


@dataclass(frozen=True)
class Claimant:
    """Who claims: a machine, a process on it and a token unique to the claim."""

    host: str
    pid: int
    token: str

    @classmethod
    def here(cls) -> Claimant:
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(4))

    @property
    def owner(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_live(row: Any, now: float) -> bool:
    """Whether a claims row still holds its run (see the module docstring)."""
    if row.expires_at < now:
        return False
    return not (row.host == socket.gethostname() and not process_alive(row.pid))


def _row_dict(row: Any) -> dict[str, Any]:
    return dict(row._mapping)


def try_claim(conn: Connection, run_id: str, claimant: Claimant, seconds: float) -> dict[str, Any] | None:
    """Take the claim on ``run_id`` in the connection's transaction; None if taken, else the live holder's row.

    Taking it again as the same claimant renews it (so a retried transaction whose commit did happen is harmless).
    """
    now = time.time()
    values = {
        "owner": claimant.owner,
        "host": claimant.host,
        "pid": claimant.pid,
        "claimed_at": now_iso(),
        "heartbeat_at": now_iso(),
        "expires_at": now + seconds,
    }
    inserted = conn.execute(upsert(conn, claims).values(run_id=run_id, **values).on_conflict_do_nothing())
    if inserted.rowcount == 1:
        return None
    row = conn.execute(select(claims).where(claims.c.run_id == run_id)).first()
    if row is None:  # released between the two statements: a retry takes it
        raise StoreError(f"the claim on run {run_id} changed hands while being taken")
    if row.owner != claimant.owner and is_live(row, now):
        return _row_dict(row)
    # Ours already, or a lease that ended: take it over, unless another process took it over first.
    taken = conn.execute(update(claims).where(claims.c.run_id == run_id, claims.c.owner == row.owner).values(**values))
    if taken.rowcount == 1:
        return None
    return _row_dict(conn.execute(select(claims).where(claims.c.run_id == run_id)).one())


class Lease:
    """The claim of this process on one run, renewed by a heartbeat thread while the context is open.

    ``with store.claim(run_id) as lease: …`` raises :class:`ClaimHeld` if a live process holds the run; on exit
    the claim is released. :meth:`check` raises :class:`ClaimLost` once another process took the run over.
    """

    def __init__(self, store: Store, run_id: str, seconds: float = LEASE_SECONDS) -> None:
        if seconds <= 0:
            raise ValueError(f"a lease lasts > 0 seconds, got {seconds}")
        self.store, self.run_id, self.seconds = store, run_id, float(seconds)
        self.claimant = Claimant.here()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Lease:
        holder = self.store.transact(
            lambda conn: try_claim(conn, self.run_id, self.claimant, self.seconds), f"claim run {self.run_id}"
        )
        if holder is not None:
            raise ClaimHeld(
                f"run {self.run_id} is being computed by another process ({holder['host']}, pid {holder['pid']}, "
                f"last heartbeat {holder['heartbeat_at']})",
                holder,
            )
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost:
            # Never mask the run's own error; a claim left behind ends with its lease (or its process).
            with contextlib.suppress(StoreError):
                self.store.transact(
                    lambda conn: conn.execute(
                        delete(claims).where(claims.c.run_id == self.run_id, claims.c.owner == self.claimant.owner)
                    ),
                    f"release the claim on run {self.run_id}",
                )

    def renew(self) -> bool:
        """Extend the lease by :attr:`seconds` from now; False (and :attr:`lost` set) if another process has it."""

        def beat(conn: Connection) -> int:
            stmt = (
                update(claims)
                .where(claims.c.run_id == self.run_id, claims.c.owner == self.claimant.owner)
                .values(heartbeat_at=now_iso(), expires_at=time.time() + self.seconds)
            )
            return int(conn.execute(stmt).rowcount)

        if self.store.transact(beat, f"renew the claim on run {self.run_id}") == 0:
            self.lost = True
        return not self.lost

    def check(self) -> None:
        """Raise :class:`ClaimLost` if another process took the run over (this one must stop writing it)."""
        if self.lost:
            raise ClaimLost(f"run {self.run_id}: this process's claim expired and another process took the run over")

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            try:
                if not self.renew():
                    return
            except StoreError:
                continue  # the database is unreachable beyond the retries: try again at the next beat
