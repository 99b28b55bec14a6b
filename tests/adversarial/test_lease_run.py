"""`retentiond run` takes the leases of its stores, as the daemon's replicas hold them: the
timer, a manual run and `serve` never sweep one store at once, and two sweeps never ledger one
batch twice (issue 8, defect 3; per-store leases: issue 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from retentiond.state.lease import store_lease, this_host
from tests.conftest import Database, Workspace
from tests.integration.helpers import error_lines, ledger, person, record_ref, state_exec

HOST = this_host()
NAME = store_lease("app")  # the lease of the one store these tests sweep
OLD = datetime(2019, 6, 1, 12, 0, 0)
FAST_LEASE = {"RETENTIOND_LEASE_TTL": "2", "RETENTIOND_LEASE_RENEW": "0.4"}


def setup_store(ws: Workspace, db: Database, n: int, batch_size: int = 5000) -> sa.Engine:
    engine = db.engine()
    md = sa.MetaData()
    table = sa.Table("invites", md,
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("sent_at", sa.DateTime, nullable=True),
                     sa.Column("email", sa.String(120), nullable=False))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "sent_at": OLD + timedelta(seconds=i),
                                       "email": person(i)[1]} for i in range(1, n + 1)])
    ws.policy({"app": {"adapter": "sql", "url": db.url}},
              [{"id": "invitations", "store": "app", "table": "invites", "key": "id",
                "clock": "sent_at", "dispose_after": "1y", "action": "delete"}],
              batch_size=batch_size)
    return engine


def count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("select count(*) from invites")).scalar_one())


def hold_lease(ws: Workspace, holder: str) -> None:
    """Make the lease row look held by ``holder`` (after the state database exists)."""
    assert ws.invoke("status").code == 0
    assert state_exec(ws.root / "state.db", "insert into lease (name, holder, version) "
                      "values (?, ?, 1)", NAME, holder) == 1


def test_run_refuses_while_a_live_sweeper_holds_the_lease(ws: Workspace,
                                                          sqlite_db: Database) -> None:
    engine = setup_store(ws, sqlite_db, 5)
    hold_lease(ws, f"{HOST}:{os.getpid()}:live0001")  # this test's process: alive
    res = ws.invoke("run")
    assert res.code == 3
    [line] = error_lines(res.err)
    assert line == (f"error: another sweeper holds the lease of store app ({HOST}:{os.getpid()}:"
                    "live0001) and is alive; it never sweeps beside this one. Retry when it "
                    "is done (a running daemon holds it while it lives), or wait for it with "
                    "--wait SECONDS")
    assert count(engine) == 5
    assert ledger(ws.root / "state.db", "dispose") == []
    # a dry run needs no lease
    assert ws.invoke("run", "--dry-run").code == 0
    engine.dispose()


def test_run_takes_the_lease_of_a_dead_process_on_this_host_at_once(
        ws: Workspace, sqlite_db: Database) -> None:
    engine = setup_store(ws, sqlite_db, 5)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    hold_lease(ws, f"{HOST}:{int(dead.stdout)}:dead0001")
    started = time.monotonic()
    res = ws.invoke("run", "--json")
    assert res.code == 0, res.err
    assert time.monotonic() - started < 10
    assert res.json()["totals"]["done"] == 5
    assert count(engine) == 0
    # released at the end: the next run takes it at once
    assert ws.invoke("run").code == 0
    engine.dispose()


def test_run_takes_over_a_silent_holder_on_another_host_after_the_ttl(
        ws: Workspace, sqlite_db: Database) -> None:
    """A holder on another host that never renews (it died there) is taken over after the
    TTL, as a replica would, without --wait."""
    engine = setup_store(ws, sqlite_db, 3)
    hold_lease(ws, "elsewhere.example:4242:gone0001")
    started = time.monotonic()
    res = ws.invoke("run", "--json", env=FAST_LEASE)
    assert res.code == 0, res.err
    assert 2.0 <= time.monotonic() - started < 10  # the TTL (2 s), not at once
    assert res.json()["totals"]["done"] == 3
    engine.dispose()


def test_run_refuses_a_renewing_holder_on_another_host(ws: Workspace,
                                                       sqlite_db: Database) -> None:
    """A holder on another host that renews is alive: refused once a renewal is seen, however
    long it would take to reach the TTL."""
    engine = setup_store(ws, sqlite_db, 3)
    hold_lease(ws, "elsewhere.example:4243:live0003")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.1):
            state_exec(ws.root / "state.db", "update lease set version = version + 1 "
                       "where name = ?", NAME)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        started = time.monotonic()
        res = ws.invoke("run", env=FAST_LEASE)
        took = time.monotonic() - started
    finally:
        stop.set()
        renewer.join()
    assert res.code == 3
    assert took < 2.0  # refused on the first renewal seen, before the TTL
    [line] = error_lines(res.err)
    assert "(elsewhere.example:4243:live0003) and is alive" in line
    assert count(engine) == 3
    engine.dispose()


def test_run_wait_is_a_bounded_number_of_seconds(ws: Workspace, sqlite_db: Database) -> None:
    setup_store(ws, sqlite_db, 1).dispose()
    for bad in ("-1", "abc", "1e9"):
        res = ws.invoke("run", "--wait", bad)
        assert res.code == 2, (bad, res)
        assert len(error_lines(res.err)) == 1


def spawn(ws: Workspace, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    full = {**os.environ, **env}
    full.pop("RETENTIOND_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "retentiond", "--config", str(ws.config),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full)


def test_two_runs_and_serve_never_ledger_a_record_twice(ws: Workspace, pg_db: Database) -> None:
    """Two concurrent `run`s and a `serve` sweeping at start, on one PostgreSQL state database:
    every disposed record is ledgered exactly once (refs compared with recomputed HMACs)."""
    n = 3000
    engine = setup_store(ws, pg_db, n, batch_size=50)
    state = pg_db.url  # the state tables beside the store's, in one PostgreSQL database
    ws.policy({"app": {"adapter": "sql", "url": pg_db.url}},
              [{"id": "invitations", "store": "app", "table": "invites", "key": "id",
                "clock": "sent_at", "dispose_after": "1y", "action": "delete"}],
              batch_size=50, state=state)
    env = {**FAST_LEASE, "RETENTIOND_SWEEP_AT_START": "1"}
    runs = [spawn(ws, "run", "--wait", "90", "--json", env=FAST_LEASE) for _ in range(2)]
    serve = spawn(ws, "serve", env=env)
    try:
        deadline = time.monotonic() + 60
        while count(engine) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        # The daemon holds the lease while it lives; stopping it hands it to a waiting run.
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
    results = [(p.wait(120), p.communicate()) for p in runs]
    for code, (out, err) in results:
        assert code == 0, err
        assert json.loads(out)["totals"]["failed"] == 0
    assert count(engine) == 0
    st = sa.create_engine(state)
    with st.connect() as conn:
        rows = conn.execute(sa.text("select record_refs from ledger where kind = 'dispose'"))
        refs = Counter(r for (doc,) in rows for r in json.loads(doc))
        pending = conn.execute(sa.text("select count(*) from pending")).scalar_one()
    st.dispose()
    expected = {record_ref(ws.secret, "app", "invites", i) for i in range(1, n + 1)}
    assert set(refs) == expected
    assert max(refs.values()) == 1
    assert pending == 0
    engine.dispose()


# -- the intent protocol, step by step (in-process, deterministic) -----------------------------
def _protocol(ws: Workspace, db: Database) -> tuple[Any, Any, Any, Any]:
    from retentiond.adapters.base import Selection
    from retentiond.app import App
    from retentiond.executor import Executor

    setup_store(ws, db, 4).dispose()
    app = App(str(ws.config))
    rule = app.policy.rules[0]
    now = datetime.now(UTC)
    sel = Selection(rule=rule, action="delete", reason="schedule", tz=app.policy.tz, now=now,
                    clock_cutoff=now - timedelta(days=400))
    adapters = {"app": app.adapter("app")}
    live = Executor(app.policy, app.state, adapters, run_id="live")
    other = Executor(app.policy, app.state, adapters, run_id="other")
    return app, sel, live, other


def _refs(ws: Workspace, *keys: int) -> list[str]:
    return [record_ref(ws.secret, "app", "invites", k) for k in keys]


def test_an_intent_is_ledgered_once_when_reconciliation_settles_it_first(
        ws: Workspace, sqlite_db: Database) -> None:
    """The live sweep disposed a batch; before it ledgers it, another sweep's reconciliation
    (which saw only part of it gone) settles the intent. Each record ends up ledgered once."""
    app, sel, live, other = _protocol(ws, sqlite_db)
    adapter = app.adapter("app")
    refs = _refs(ws, 1, 2, 3)
    intent = live._intent(sel, refs)
    assert adapter.delete(sel, [1, 2]) == [1, 2]
    assert other.reconcile() == 2  # 1 and 2 gone, 3 still there: ledgered 1 and 2, claimed
    assert adapter.delete(sel, [3]) == [3]
    live._record(sel, intent, refs)  # the claim fails: only 3 is left to ledger
    entries = ledger(ws.root / "state.db", "dispose")
    assert Counter(r for e in entries for r in e["record_refs"]) == Counter(refs)
    assert [e["run_id"] for e in entries] == ["live", "live"]
    assert state_rows_count(ws, "pending") == 0
    app.close()


def test_reconciliation_leaves_the_intents_of_a_live_run_alone(
        ws: Workspace, sqlite_db: Database) -> None:
    app, sel, live, other = _protocol(ws, sqlite_db)
    state_exec(ws.root / "state.db", "insert into runs (id, started_at, as_of, dry_run, status, "
               "policy_digest, holder) values ('live', '2026-01-01', '2026-01-01', 0, "
               "'running', 'x', ?)", f"{HOST}:{os.getpid()}:live0001")
    refs = _refs(ws, 1, 2)
    intent = live._intent(sel, refs)
    assert other.reconcile() == 0  # in flight: the store has not committed yet
    assert state_rows_count(ws, "pending") == 1
    assert app.adapter("app").delete(sel, [1, 2]) == [1, 2]
    live._record(sel, intent, refs)
    entries = ledger(ws.root / "state.db", "dispose")
    assert [sorted(e["record_refs"]) for e in entries] == [sorted(refs)]
    app.close()


def state_rows_count(ws: Workspace, table: str) -> int:
    from tests.integration.helpers import state_rows

    return int(state_rows(ws.root / "state.db", f"select count(*) as n from {table}")[0]["n"])


def test_backup_restored_refuses_while_a_sweeper_holds_the_lease(
        ws: Workspace, sqlite_db: Database) -> None:
    setup_store(ws, sqlite_db, 2).dispose()
    hold_lease(ws, f"{HOST}:{os.getpid()}:live0002")
    res = ws.invoke("backup", "restored", "--store", "app", "--taken-at", "2020-01-01")
    assert res.code == 3
    [line] = error_lines(res.err)
    assert line.startswith("error: another sweeper holds the lease of store app (")


def test_a_replay_that_loses_the_lease_stops_after_the_batch_in_flight(
        ws: Workspace, sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from retentiond.state.lease import SweepLease

    engine = setup_store(ws, sqlite_db, 5, batch_size=2)
    assert ws.invoke("run").code == 0
    assert count(engine) == 0
    with engine.begin() as conn:  # the backup is restored: the records are back
        conn.execute(sa.text("insert into invites (id, sent_at, email) values (:i, :t, :e)"),
                     [{"i": i, "t": OLD, "e": person(i)[1]} for i in range(1, 6)])
    monkeypatch.setattr(SweepLease, "held", lambda self: False)  # renewals fail from now on
    res = ws.invoke("backup", "restored", "--store", "app", "--taken-at", "2020-01-01",
                    "--json")
    assert res.code == 1, res.err
    doc = res.json()
    assert (doc["stopped"], doc["total"]) == (True, 2)
    assert count(engine) == 3
    runs = state_rows_count(ws, "runs where status = 'interrupted'")
    assert runs == 1
    engine.dispose()
