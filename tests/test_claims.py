"""Claims on runs as lease rows, on both backends: one holder at a time, heartbeats, expiry, dead processes, races."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pqprune.store import ClaimHeld, ClaimLost, Lease, Store
from pqprune.store.claims import Claimant, try_claim


def _foreign(store: Store, run_id: str, seconds: float) -> Lease:
    """A lease as a process of another machine would hold it (its process cannot be checked from here)."""
    lease = Lease(store, run_id, seconds)
    lease.claimant = Claimant("another-machine", 4242, "f00d")
    return lease


def test_one_holder_at_a_time_and_release(db_url: str) -> None:
    with Store(db_url) as store:
        with store.claim("r") as lease:
            holder = store.live_claims()["r"]
            assert (holder["pid"], holder["owner"]) == (os.getpid(), lease.claimant.owner)
            with pytest.raises(ClaimHeld, match=rf"run r is being computed by another process .*pid {os.getpid()}"):
                store.claim("r").__enter__()
            lease.check()  # still ours
        assert store.live_claims() == {}
        with store.claim("r"):  # released: free again
            pass


def test_claiming_again_as_the_same_claimant_renews(db_url: str) -> None:
    me = Claimant.here()
    with Store(db_url) as store:
        assert store.transact(lambda c: try_claim(c, "r", me, 5.0), "claim") is None
        first = store.live_claims()["r"]["expires_at"]
        time.sleep(0.01)
        assert store.transact(lambda c: try_claim(c, "r", me, 5.0), "claim") is None  # a retried transaction
        assert store.live_claims()["r"]["expires_at"] > first
        other = Claimant.here()
        assert store.transact(lambda c: try_claim(c, "r", other, 5.0), "claim")["owner"] == me.owner


def test_heartbeats_keep_a_lease_that_would_otherwise_expire(db_url: str) -> None:
    with Store(db_url) as store, Lease(store, "r", seconds=0.4):
        for _ in range(6):  # 1.2 s: three lease lengths
            time.sleep(0.2)
            with pytest.raises(ClaimHeld):
                _foreign(store, "r", 0.4).__enter__()


def test_a_lease_of_another_machine_expires_and_its_holder_learns_it_lost(db_url: str) -> None:
    with Store(db_url) as store:
        dead = _foreign(store, "r", 0.5)
        dead.__enter__()
        dead._stop.set()  # its machine died: no more heartbeats
        with pytest.raises(ClaimHeld, match="another-machine"):
            store.claim("r").__enter__()
        time.sleep(0.6)
        assert store.live_claims() == {}
        with store.claim("r") as mine:  # taken over
            assert store.live_claims()["r"]["owner"] == mine.claimant.owner
            assert dead.renew() is False and dead.lost  # the old holder comes back: told it lost the run
            with pytest.raises(ClaimLost, match="another process took the run over"):
                dead.check()
            dead.__exit__(None, None, None)  # and does not delete the new holder's claim
            assert store.live_claims()["r"]["owner"] == mine.claimant.owner


_HOLD = textwrap.dedent(
    """
    import sys, time
    from pqprune.store import Store
    store = Store(sys.argv[1])
    store.claim("r").__enter__()
    print("held", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.slow
def test_a_killed_process_of_this_machine_loses_its_claim_at_once(db_url: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, db_url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with Store(db_url) as store:
            assert store.live_claims()["r"]["pid"] == proc.pid
            with pytest.raises(ClaimHeld):
                store.claim("r").__enter__()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            assert store.live_claims() == {}  # its lease has ~60 s to run, but its process is gone
            with store.claim("r") as lease:
                assert store.live_claims()["r"]["owner"] == lease.claimant.owner
    finally:
        proc.kill()
        proc.wait()


def _race(db: str, start: mp.synchronize.Event, done: mp.synchronize.Event, won: mp.Queue) -> None:
    with Store(db) as store:
        start.wait(60)
        try:
            lease = store.claim("r").__enter__()
        except ClaimHeld:
            won.put(None)
            return
        won.put(lease.claimant.owner)
        done.wait(90)  # hold it until every contender has tried
        lease.__exit__(None, None, None)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_processes_racing_for_a_run_one_wins(db_url: str) -> None:
    Store(db_url).close()
    ctx = mp.get_context("spawn")
    start, done, won = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(db_url, start, done, won)) for _ in range(3)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    start.set()
    results = [won.get(timeout=90) for _ in procs]
    done.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 3
    assert sum(r is not None for r in results) == 1
