"""Two ``serve`` replicas on one PostgreSQL state database share four stores (issue 13 part 2):
each store is swept by one replica at a time (every batch's window is recorded by the
``slowsql`` adapter in both processes), the stores split 2/2, an erasure request whose rules
span both replicas' stores closes once all four are served, and ``kill -9`` of one replica
hands its stores to the other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from retentiond.adapters.registry import register, unregister
from retentiond.audit.ledger import Refs
from retentiond.state import cases
from tests.integration.helpers import record_ref
from tests.integration.slowsql import SlowSql, windows

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STORES = ("s1", "s2", "s3", "s4")
ROWS, DUE = 20, 8  # ids 1..DUE are past retention; user_id = id % 5
FAST = {"RETENTIOND_LEASE_TTL": "3", "RETENTIOND_LEASE_RENEW": "0.5",
        "RETENTIOND_REQUEST_INTERVAL": "0.5", "RETENTIOND_SWEEP_AT_START": "1"}


@pytest.fixture
def slowsql() -> Iterator[None]:
    register("slowsql", SlowSql)  # for the commands this test runs in process
    try:
        yield
    finally:
        unregister("slowsql")


def make_store(url: str) -> None:
    engine = sa.create_engine(url)
    md = sa.MetaData()
    table = sa.Table("events", md,
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("user_id", sa.String(20), nullable=False),
                     sa.Column("created_at", sa.DateTime, nullable=False))
    md.create_all(engine)
    now = datetime.now()
    with engine.begin() as conn:
        conn.execute(table.insert(), [
            {"id": i, "user_id": str(i % 5),
             "created_at": now - timedelta(days=400 if i <= DUE else 3)}
            for i in range(1, ROWS + 1)])
    engine.dispose()


def ids(url: str) -> set[int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = {r[0] for r in conn.execute(sa.text("select id from events"))}
    engine.dispose()
    return found


def select_all(url: str, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())
    finally:
        engine.dispose()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}", pytrace=False)


@contextmanager
def serving(ws: Any, log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    full = {**os.environ, **FAST, **env, "PYTHONPATH": str(ROOT)}
    full.pop("RETENTIOND_CONFIG", None)
    full.pop("NOTIFY_SOCKET", None)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.integration.slowsql",
                                 "--config", str(ws.config), "serve"],
                                stdout=out, stderr=subprocess.STDOUT, env=full, cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def holders(state: str) -> dict[str, str | None]:
    return {name[len("store:"):]: holder for name, holder in select_all(
        state, "select name, holder from lease where name like 'store:%'")}


def split(state: str, *procs: subprocess.Popen[bytes]) -> dict[int, list[str]] | None:
    """Which stores each process holds, once every store is held by one of them."""
    by_pid: dict[int, list[str]] = {p.pid: [] for p in procs}
    for store, holder in sorted(holders(state).items()):
        pid = int(holder.split(":")[1]) if holder else None
        if pid not in by_pid:
            return None
        by_pid[pid].append(store)
    return by_pid if sum(map(len, by_pid.values())) == len(STORES) else None


def request(ws: Any, state: str, subject: str) -> str:
    engine = sa.create_engine(state)
    try:
        return cases.add_request(engine, Refs(ws.secret.read_bytes().rstrip(b"\r\n")),
                                 subject=subject, kind="user", ref=None,
                                 due_at=datetime.now(UTC) + timedelta(days=30))
    finally:
        engine.dispose()


def closed(state: str, request_id: str) -> Any:
    rows = select_all(state, "select status, outcome from requests where id = :i", i=request_id)
    return rows[0] if rows and rows[0].status != "open" else None


def overlaps(found: list[tuple[str, int, float, float]]) -> list[Any]:
    """Pairs of windows of one store, of two processes, that overlap in time."""
    return [(a, b) for i, a in enumerate(found) for b in found[i + 1:]
            if a[0] == b[0] and a[1] != b[1] and a[2] < b[3] and b[2] < a[3]]


def test_two_replicas_share_four_stores_and_fail_over(ws: Any, pg_db: Any,
                                                      slowsql: None) -> None:
    urls = {s: f"sqlite:///{ws.root / f'{s}.db'}" for s in STORES}
    for url in urls.values():
        make_store(url)
    ws.policy({s: {"adapter": "slowsql", "url": u} for s, u in urls.items()},
              [{"id": f"{s}-events", "store": s, "table": "events", "key": "id",
                "clock": "created_at", "subject": "user_id", "dispose_after": "1y",
                "action": "delete"} for s in STORES],
              batch_size=2, state=pg_db.url)
    state, trace = pg_db.url, ws.root / "windows.txt"
    env = {"RETENTIOND_TEST_WINDOWS": str(trace)}
    assert ws.invoke("status").code == 0  # the state database migrated before both start

    with serving(ws, ws.root / "a.log", env) as a, serving(ws, ws.root / "b.log", env) as b:
        # -- the split: 2/2 once both run (whoever came first gives up what is beyond its share)
        shares = wait_for("a 2/2 split", lambda: (s := split(state, a, b)) and all(
            len(v) == 2 for v in s.values()) and s)
        wait_for("the time-based sweeps", lambda: all(ids(u) == set(range(DUE + 1, ROWS + 1))
                                                       for u in urls.values()))
        status = ws.invoke("status", "--json")
        assert status.code == 0, status.err
        doc = status.json()["leases"]
        assert {s: int(v["holder"].split(":")[1]) for s, v in doc["stores"].items()} == {
            s: pid for pid, stores in shares.items() for s in stores}
        assert len(doc["replicas"]) == 2
        text = ws.invoke("status")
        for s in STORES:
            assert f"lease store:{s}: held by " in text.out

        # -- an erasure request spanning both replicas' stores: served by each on its own
        # stores, closed once the stored outcome shows all four rules served
        mark = time.time()
        first = request(ws, state, "3")
        status_row = wait_for("the request to close", lambda: closed(state, first))
        assert status_row.status == "done"
        outcome = json.loads(status_row.outcome)
        assert sorted(outcome) == [f"{s}-events" for s in STORES]
        assert all(outcome[f"{s}-events"]["disposed"] == 2 for s in STORES)  # ids 13 and 18
        served = {(w[0], w[1]) for w in windows(trace) if w[2] >= mark}
        for pid, stores in shares.items():  # each replica swept its own stores only
            assert {s for s, p in served if p == pid} <= set(stores)
        assert {s for s, _ in served} == set(STORES)

        # -- kill -9 one replica: the other takes its stores over and serves them
        b.kill()
        assert b.wait(10) == -signal.SIGKILL
        wait_for("a to hold all four stores",
                 lambda: (s := split(state, a)) and s[a.pid] == list(STORES))
        second = request(ws, state, "4")
        assert wait_for("the second request to close", lambda: closed(state, second)
                        ).status == "done"
        a.send_signal(signal.SIGTERM)
        assert a.wait(30) == 0

    assert overlaps(windows(trace)) == []  # never two replicas in one store at once
    assert holders(state) == dict.fromkeys(STORES)  # a clean stop releases
    for url in urls.values():
        assert ids(url) == set(range(DUE + 1, ROWS + 1)) - {13, 18, 9, 14, 19}
    refs = Counter(r for (doc_refs,) in select_all(
        state, "select record_refs from ledger where kind = 'dispose'")
        for r in json.loads(doc_refs))
    expected = {record_ref(ws.secret, s, "events", i) for s in STORES
                for i in (*range(1, DUE + 1), 13, 18, 9, 14, 19)}
    assert set(refs) == expected
    assert max(refs.values()) == 1  # every disposed record ledgered exactly once
    verify = ws.invoke("audit", "verify")
    assert verify.code == 0, verify.err


# -- the fair share, in process, with a clock the test moves ------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fair_share_rebalance_and_failover_on_one_clock(tmp_path: Path) -> None:
    from retentiond.state.db import open_state
    from retentiond.state.lease import Timings
    from retentiond.state.replicas import Replica, read_all

    engine = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    clock, timings = Clock(), Timings(ttl=30, renew=10)
    a = Replica(engine, timings, STORES, "far-a.example:1:a", clock)
    b = Replica(engine, timings, STORES, "far-b.example:2:b", clock)
    try:
        assert a.tick() == dict.fromkeys(STORES, "acquired")  # alone: all four
        assert b.tick() == dict.fromkeys(STORES, "standby")  # a counts, b's share is 2
        assert (b.live, b.share) == (2, 2)
        assert a.claim() == list(STORES)  # a sweeps all four: nothing released meanwhile
        clock.now += 5
        assert a.tick() == dict.fromkeys(STORES, "renewed")
        a.done(STORES)
        clock.now += 5
        assert a.tick() == {"s1": "renewed", "s2": "renewed", "s3": "released",
                            "s4": "released"}
        assert b.tick() == {"s1": "standby", "s2": "standby", "s3": "acquired",
                            "s4": "acquired"}
        doc = read_all(engine, STORES)
        assert {s: v["holder"][:5] for s, v in doc["stores"].items()} == {
            "s1": "far-a", "s2": "far-a", "s3": "far-b", "s4": "far-b"}
        assert doc["replicas"] == ["far-a.example:1:a", "far-b.example:2:b"]
        # a goes silent (another host: judged by the TTL on b's clock)
        clock.now += 10
        assert b.tick() == {"s1": "standby", "s2": "standby", "s3": "renewed",
                            "s4": "renewed"}
        clock.now += 9.9
        assert (a.held("s1"), b.tick()["s1"]) == (True, "standby")
        clock.now += 0.1
        assert a.held("s1") is False  # a stops trusting its leases (ttl - renew) ...
        clock.now += 9.9
        assert b.tick()["s1"] == "standby"
        clock.now += 0.1  # ... before b takes them over (same version for the ttl)
        assert b.tick() == {"s1": "taken over", "s2": "taken over", "s3": "renewed",
                            "s4": "renewed"}
        assert (b.live, b.share) == (1, 4)
        assert read_all(engine, STORES)["replicas"] == ["far-b.example:2:b"]
        b.stop()
        assert read_all(engine, STORES) == {"stores": dict.fromkeys(STORES), "replicas": []}
    finally:
        engine.dispose()
