"""Review of the i13-workers merge (per-store leases, replicas, `workers: N`): the defects a
skeptical review found, each shown by a test that fails on 4e7dfe5."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from retentiond.state import runs
from retentiond.state.db import open_state
from retentiond.state.lease import NAME, LeaseGroup, SweepLease, Timings, store_lease, this_host
from retentiond.state.replicas import Replica
from tests.conftest import Workspace
from tests.integration.helpers import ledger, record_ref, state_exec, state_rows
from tests.integration.slowsql import windows

HOST = this_host()
OLD = datetime(2019, 6, 1, 12, 0, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(tmp_path: Path) -> sa.Engine:
    return open_state(f"sqlite:///{tmp_path / 'state.db'}")


def _store(path: Path, ids: range) -> str:
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("create table invites (id integer primary key, sent_at timestamp)"))
        for i in ids:
            conn.execute(sa.text("insert into invites values (:i, :t)"),
                         {"i": i, "t": OLD + timedelta(seconds=i)})
    engine.dispose()
    return url


def _crashed_intent(ws: Workspace, store: str, keys: list[int]) -> None:
    """A run of another host that crashed after disposing ``keys`` from ``store`` and before
    ledgering them: its run row (already marked crashed) and its intent."""
    refs = [record_ref(ws.secret, store, "invites", k) for k in keys]
    now = datetime.now(UTC).isoformat()
    state_exec(ws.root / "state.db",
               "insert into runs (id, started_at, as_of, dry_run, status, policy_digest, "
               "holder) values ('deadrun0', ?, ?, 0, 'crashed', 'x', "
               "'elsewhere.example:1:dead0001')", now, now)
    state_exec(ws.root / "state.db",
               "insert into pending (created_at, run_id, rule, store, target, action, reason, "
               "subject_ref, record_refs, detail) values (?, 'deadrun0', ?, ?, 'invites', "
               "'delete', 'retention', null, ?, '{}')",
               now, f"{store}-invites", store, json.dumps(refs))


# -- 1. `run --rule` reconciles the intents of stores whose leases it does not hold ---------
def test_run_with_rule_leaves_alone_the_intents_of_a_store_it_does_not_hold(
        ws: Workspace) -> None:
    """`run --rule a-invites` holds only store a's lease, yet its sweep passes stores=None to
    `_reconcile`, which then ledgers the crashed intents of store b, while store b's lease is
    held by another live sweeper (a replica, or another one-shot `run --rule b-...`) that is
    sweeping b and reconciles b itself. The sweep docstring says "another replica reconciles
    its own stores"; two reconcilers of one store race with that store's live disposals."""
    urls = {s: _store(ws.root / f"{s}.db", range(1, 4)) for s in ("a", "b")}
    ws.policy({s: {"adapter": "sql", "url": u} for s, u in urls.items()},
              [{"id": f"{s}-invites", "store": s, "table": "invites", "key": "id",
                "clock": "sent_at", "dispose_after": "1y", "action": "delete"}
               for s in ("a", "b")])
    assert ws.invoke("status").code == 0  # the state database exists, migrated
    # records 1..3 of b are gone (the crashed run deleted them), its intent is left behind
    _crashed_intent(ws, "b", [1, 2, 3])
    engine = sa.create_engine(urls["b"])
    with engine.begin() as conn:
        conn.execute(sa.text("delete from invites"))
    engine.dispose()
    # store b is held by a live sweeper (this test's process, on this host)
    assert state_exec(ws.root / "state.db", "insert into lease (name, holder, version) values "
                      "(?, ?, 1)", store_lease("b"), f"{HOST}:{os.getpid()}:live0001") == 1

    res = ws.invoke("run", "--rule", "a-invites")
    assert res.code == 0, res.err
    assert [e["store"] for e in ledger(ws.root / "state.db", "dispose")] == ["a"]
    left = state_rows(ws.root / "state.db", "select store from pending")
    assert left == [{"store": "b"}], "store b's intent belongs to b's lease holder"


# -- 2. the old `sweep` lease row after migration 0005 --------------------------------------
def test_a_crashed_pre_upgrade_run_named_by_the_old_sweep_row_is_marked_crashed(
        tmp_path: Path) -> None:
    """A 0004-era daemon on another host dies (kill -9) mid-sweep: its run stays `running` and
    the `sweep` row still names it. 0005 leaves that row alone and nothing takes or clears it
    any more, but `mark_crashed` now counts *any* lease row's holder as alive: the run is never
    marked crashed, so reconciliation skips its intents forever and what its last batch
    disposed is never ledgered."""
    engine = _state(tmp_path)
    dead = "elsewhere.example:4242:old00001"
    now = datetime.now(UTC)
    with engine.begin() as conn:
        # the row every database has had since 0001, as the dead daemon left it
        conn.execute(sa.text("update lease set holder = :h, version = 7, acquired_at = :t, "
                             "renewed_at = :t, expires_at = :t where name = :n"),
                     {"n": NAME, "h": dead, "t": now - timedelta(days=3)})
        conn.execute(sa.text("insert into runs (id, started_at, as_of, dry_run, status, "
                             "policy_digest, holder) values ('oldrun01', :t, :t, false, "
                             "'running', 'x', :h)"), {"t": now - timedelta(days=3), "h": dead})
    # a replica of the new release runs for a while on this database: it never touches `sweep`
    replica = Replica(engine, Timings(ttl=3, renew=1), ["app"], clock=Clock())
    replica.tick()
    try:
        assert runs.mark_crashed(engine) == ["oldrun01"]
    finally:
        replica.stop()
        engine.dispose()


def test_a_replica_does_not_sweep_beside_a_live_pre_upgrade_daemon(tmp_path: Path) -> None:
    """Rolling upgrade: a 0004-era `serve` still runs (it holds and renews the `sweep` row and
    sweeps every store); a new replica starts, migrates the database to 0005 and takes the free
    `store:*` leases at once: two processes sweep one store. Nothing in README/CHANGELOG says
    to stop every replica first, and the new code never looks at the `sweep` row."""
    engine = _state(tmp_path)
    old_clock, new_clock = Clock(), Clock()
    old = SweepLease(engine, Timings(ttl=3, renew=1), "elsewhere.example:77:olddaemn",
                     old_clock)  # name = "sweep": what 0004's SweepLease ticks
    assert old.tick() == "acquired"
    replica = Replica(engine, Timings(ttl=3, renew=1), ["app", "files"], clock=new_clock)
    try:
        for _ in range(3):  # within the TTL, the old daemon renewing every second
            outcomes = replica.tick()
            assert old.tick() == "renewed"
            old_clock.now += 1
            new_clock.now += 1
            assert not replica.held_stores(), (
                f"took {outcomes} while the old daemon's sweep lease is live")
    finally:
        replica.stop()
        engine.dispose()


# -- 3. one-shot commands take their leases crosswise ----------------------------------------
def test_two_one_shot_commands_over_the_same_stores_never_hold_them_crosswise(
        tmp_path: Path) -> None:
    """LeaseGroup's docstring: "Taken in name order, so two commands never wait on each other
    crosswise". But `tick` tries every lease, not stopping at the first it cannot take: when
    two `run`s start together (timer + manual), one takes `store:a` and the other, refused
    `store:a`, still takes `store:b`. Each then waits for the other's lease (both alive): with
    the default --wait 0 both exit 3, with --wait both time out; neither sweeps."""
    engine = _state(tmp_path)
    timings = Timings(ttl=30, renew=10)
    first = LeaseGroup(engine, timings, [store_lease("b"), store_lease("a")])
    second = LeaseGroup(engine, timings, [store_lease("a"), store_lease("b")])
    try:
        assert first.leases[0].tick() == "acquired"  # first has store:a, about to try store:b
        assert not second.tick()  # second is refused store:a ...
        held_by_second = [lease.name for lease in second.leases if lease.held()]
        assert held_by_second == [], "waiting for store:a, it must not hold store:b meanwhile"
        assert first.tick()  # ... so first gets store:b and sweeps
    finally:
        first.release()
        second.release()
        engine.dispose()



# -- 4. Ctrl-C / SIGINT of `run` with workers > 1 --------------------------------------------
def _slow_run(ws: Workspace, workers: int, rows: int) -> subprocess.Popen[bytes]:
    root = Path(__file__).resolve().parents[2]
    urls = {s: _store(ws.root / f"{s}.db", range(1, rows + 1)) for s in ("a", "b")}
    ws.policy({s: {"adapter": "slowsql", "url": u} for s, u in urls.items()},
              [{"id": f"{s}-invites", "store": s, "table": "invites", "key": "id",
                "clock": "sent_at", "dispose_after": "1y", "action": "delete"}
               for s in ("a", "b")], batch_size=1, workers=workers)
    env = {**os.environ, "PYTHONPATH": str(root),
           "RETENTIOND_TEST_WINDOWS": str(ws.root / "windows.txt")}
    env.pop("RETENTIOND_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "tests.integration.slowsql", "--config",
                             str(ws.config), "run"], env=env, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigint_stops_a_run_with_workers_after_the_batch_in_flight(ws: Workspace,
                                                                 workers: int) -> None:
    """With `workers: 1` a Ctrl-C ends `run` at once (KeyboardInterrupt in the sweeping
    thread). With `workers: 2` the main thread only waits on the pool: KeyboardInterrupt
    leaves the `with ThreadPoolExecutor` block, whose exit *joins* the workers, which never
    see a stop (`run`'s should_stop is only "lease lost"): every store is swept to its end
    before the process reacts. A second Ctrl-C interrupts that join; `one_shot` then releases
    the store leases (free: anyone takes them at once) while the non-daemon worker threads
    are still disposing their batch in flight."""
    proc = _slow_run(ws, workers=workers, rows=120)  # 120 batches of >= 50 ms per store: >= 6 s
    try:
        trace = ws.root / "windows.txt"
        deadline = time.monotonic() + 60
        while len(windows(trace)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(windows(trace)) >= 4, "the run never started sweeping"
        proc.send_signal(signal.SIGINT)
        sent = time.time()
        proc.wait(60)
        late = [w for w in windows(trace) if w[2] > sent + 0.5]
        assert len(late) <= 2, f"{len(late)} batches started after SIGINT"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_a_dead_holder_named_only_by_the_lease_of_a_removed_store_is_marked_crashed(
        tmp_path: Path) -> None:
    """The same root cause as the `sweep` row: a replica on another host dies mid-sweep holding
    store `gone`, which the policy then drops. No replica ticks `store:gone` any more, so the
    row names the dead holder forever; `mark_crashed` takes any lease row's holder for alive,
    so the dead run's intents (of every store) are never reconciled."""
    engine = _state(tmp_path)
    dead = "elsewhere.example:4343:gone0001"
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(sa.text("insert into lease (name, holder, version) values (:n, :h, 9)"),
                     {"n": store_lease("gone"), "h": dead})
        conn.execute(sa.text("insert into runs (id, started_at, as_of, dry_run, status, "
                             "policy_digest, holder) values ('deadrun2', :t, :t, false, "
                             "'running', 'x', :h)"), {"t": now, "h": dead})
    clock = Clock()
    replica = Replica(engine, Timings(ttl=3, renew=1), ["app"], clock=clock)
    try:
        for _ in range(10):  # well past the TTL: the survivor holds every store of the policy
            replica.tick()
            clock.now += 1
        assert replica.held_stores() == ["app"]
        assert runs.mark_crashed(engine) == ["deadrun2"]
    finally:
        replica.stop()
        engine.dispose()
