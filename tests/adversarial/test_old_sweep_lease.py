"""The `sweep` row of releases before per-store leases (state revision 0004) during a rolling
upgrade, and lease rows nobody of this release renews (a removed store's): a live old holder
holds every store; a stale one is cleared; neither keeps a dead run `running` forever."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from retentiond.state import runs
from retentiond.state.db import open_state
from retentiond.state.lease import NAME, SweepLease, Timings, read, store_lease, this_host
from retentiond.state.replicas import Replica
from tests.adversarial.test_lease_run import count, setup_store
from tests.conftest import Database, Workspace
from tests.integration.helpers import error_lines, state_exec, state_rows

HOST = this_host()
FAST = Timings(ttl=3, renew=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(tmp_path: Path) -> sa.Engine:
    return open_state(f"sqlite:///{tmp_path / 'state.db'}")


def _hold_old(ws: Workspace, holder: str) -> None:
    assert ws.invoke("status").code == 0
    assert state_exec(ws.root / "state.db", "update lease set holder = ?, version = 5 "
                      "where name = ?", holder, NAME) == 1


def test_run_refuses_while_a_live_pre_upgrade_sweeper_holds_the_old_sweep_row(
        ws: Workspace, sqlite_db: Database) -> None:
    engine = setup_store(ws, sqlite_db, 5)
    _hold_old(ws, f"{HOST}:{os.getpid()}:old00001")  # this test's process: alive
    res = ws.invoke("run")
    assert res.code == 3
    [line] = error_lines(res.err)
    assert line.startswith("error: another sweeper holds the old sweep lease, which covers "
                           f"every store (of a release before per-store leases) ({HOST}:"), line
    assert count(engine) == 5
    rows = state_rows(ws.root / "state.db", "select holder from lease where name = ?",
                      store_lease("app"))
    assert rows in ([], [{"holder": None}]), "no store lease taken meanwhile"
    engine.dispose()


def test_run_clears_the_old_sweep_row_of_a_dead_process_on_this_host_and_sweeps(
        ws: Workspace, sqlite_db: Database) -> None:
    engine = setup_store(ws, sqlite_db, 5)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    _hold_old(ws, f"{HOST}:{int(dead.stdout)}:old00002")
    res = ws.invoke("run")
    assert res.code == 0, res.err
    assert count(engine) == 0
    assert state_rows(ws.root / "state.db", "select holder, version from lease where name = ?",
                      NAME) == [{"holder": None, "version": 6}]
    engine.dispose()


def test_a_replica_takes_the_stores_once_the_old_daemon_stops_renewing(tmp_path: Path) -> None:
    engine = _state(tmp_path)
    old_clock, clock = Clock(), Clock()
    old = SweepLease(engine, FAST, "elsewhere.example:77:olddaemn", old_clock)
    assert old.tick() == "acquired"
    replica = Replica(engine, FAST, ["app", "files"], clock=clock)
    try:
        replica.tick()
        assert replica.old_alive and not replica.held_stores()
        clock.now += 2.9  # the old daemon is silent, not yet for the TTL
        replica.tick()
        assert not replica.held_stores()
        clock.now += 0.2
        replica.tick()  # unchanged for the TTL: cleared, the stores are taken
        assert not replica.old_alive
        assert replica.held_stores() == ["app", "files"]
        assert read(engine, NAME) is None
    finally:
        replica.stop()
        engine.dispose()


def test_a_replica_gives_its_stores_up_to_a_live_old_daemon(tmp_path: Path) -> None:
    """An old daemon cut off while the row was cleared comes back and takes the free row: it
    sweeps every store, so the new replica stops sweeping them."""
    engine = _state(tmp_path)
    replica = Replica(engine, FAST, ["app", "files"], clock=Clock())
    try:
        replica.tick()
        assert replica.held_stores() == ["app", "files"]
        replica.claim()  # sweeping "files" and "app" now: kept until the sweep ends
        replica.done(["app"])
        old = SweepLease(engine, FAST, "elsewhere.example:77:olddaemn", Clock())
        assert old.tick() == "acquired"
        outcomes = replica.tick()
        assert outcomes["app"] == "released"
        assert replica.held_stores() == ["files"]
        replica.done(["files"])
        replica.tick()
        assert replica.held_stores() == []
    finally:
        replica.stop()
        engine.dispose()


def test_a_removed_store_lease_is_cleared_only_when_nobody_renews_it(tmp_path: Path) -> None:
    engine = _state(tmp_path)
    clock = Clock()
    other = SweepLease(engine, FAST, "elsewhere.example:88:runs0001", Clock(),
                       name=store_lease("renewed"))  # a one-shot run of another policy
    assert other.tick() == "acquired"
    state_exec(tmp_path / "state.db", "insert into lease (name, holder, version) values "
               "(?, 'elsewhere.example:99:gone0001', 3)", store_lease("gone"))
    replica = Replica(engine, FAST, ["app"], clock=clock)
    try:
        for _ in range(6):
            replica.tick()
            assert other.tick() == "renewed"
            clock.now += 1
        assert read(engine, store_lease("gone")) is None
        assert (read(engine, store_lease("renewed")) or {}).get("holder") == other.holder
    finally:
        replica.stop()
        engine.dispose()


def test_a_run_named_by_a_freshly_renewed_old_sweep_row_stays_running(tmp_path: Path) -> None:
    engine = _state(tmp_path)
    old = SweepLease(engine, FAST, "elsewhere.example:77:olddaemn", Clock())
    assert old.tick() == "acquired"
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(sa.text("insert into runs (id, started_at, as_of, dry_run, status, "
                             "policy_digest, holder) values ('oldrun02', :t, :t, false, "
                             "'running', 'x', :h)"), {"t": now, "h": old.holder})
    try:
        assert runs.mark_crashed(engine, stores=["app"]) == []
        assert runs.mark_crashed(engine, stores=["app"],
                                 now=now + timedelta(minutes=11)) == ["oldrun02"]
    finally:
        engine.dispose()
