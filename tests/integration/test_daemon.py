"""``retentiond serve`` as systemd runs it: the real process, a notify socket bound by the
test, signals, the request pass, metrics, and two replicas failing over on PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families

from retentiond.audit.ledger import Refs
from retentiond.state import cases
from retentiond.state.db import HEAD_REVISION
from retentiond.state.lease import this_host

pytestmark = pytest.mark.slow

START = 90.0  # seconds for a process to start (imports are slow on a loaded machine)
HOST = this_host()
ACCOUNTS = {"id": "accounts", "source": "Privacy policy §6: deletion on request",
            "store": "app", "table": "users", "key": "id", "subject": "id", "action": "delete"}
MESSAGES = {"id": "messages", "source": "Privacy policy §6: deletion on request",
            "store": "app", "table": "messages", "key": "id", "subject": "sender_id",
            "action": "delete"}


# -- the notify socket ------------------------------------------------------------------------
class NotifySocket:
    """The AF_UNIX datagram socket systemd would listen on (``@name`` is abstract), drained by
    a thread as systemd does: the kernel queues only a few datagrams (net.unix.max_dgram_qlen)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[str] = []
        self._read = 0
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                msg = self.sock.recv(4096).decode()
            except OSError:
                return
            with self._cond:
                self.received.append(msg)
                self._cond.notify_all()

    def until(self, done: Callable[[list[str]], bool], timeout: float) -> list[str]:
        """Messages not yet returned, up to the one after which ``done(them)`` holds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = self.received[self._read:]
                for n in range(1, len(got) + 1):
                    if done(got[:n]):
                        self._read += n
                        return got[:n]
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"timed out waiting on {self.address}; received {got}",
                                pytrace=False)
                self._cond.wait(left)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5)


def has(message: str) -> Callable[[list[str]], bool]:
    return lambda got: message in got


def significant(messages: list[str]) -> list[str]:
    """State changes: everything but watchdog pings and STATUS= lines."""
    return [m for m in messages if m != "WATCHDOG=1" and not m.startswith("STATUS=")]


# -- the daemon process -----------------------------------------------------------------------
@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    notify: NotifySocket
    log_path: Path

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        out = [json.loads(line) for line in lines if line.startswith("{")]
        return [e for e in out if name is None or e["event"] == name]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def holder_prefix(self) -> str:
        return f"{HOST}:{self.proc.pid}:"


@contextmanager
def serving(ws: Any, address: str, *args: str, env: dict[str, str] | None = None
            ) -> Iterator[Serve]:
    notify = NotifySocket(address)
    log_path = ws.root / f"serve-{uuid.uuid4().hex[:6]}.log"
    full_env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000",
                "RETENTIOND_LEASE_TTL": "3", "RETENTIOND_LEASE_RENEW": "0.5", **(env or {})}
    full_env.pop("RETENTIOND_CONFIG", None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "retentiond", "--config", str(ws.config), "serve", *args],
            stdout=log, stderr=subprocess.STDOUT, env=full_env)
    try:
        yield Serve(proc, notify, log_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        notify.close()


def abstract_address() -> str:
    return f"@retentiond-test-{uuid.uuid4().hex}"


# -- stores and the state database ------------------------------------------------------------
def build_store(url: str, users: int, messages_per_user: int = 0) -> None:
    engine = sa.create_engine(url)
    md = sa.MetaData()
    users_t = sa.Table("users", md, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("name", sa.String(80), nullable=False))
    messages_t = sa.Table("messages", md, sa.Column("id", sa.Integer, primary_key=True),
                          sa.Column("sender_id", sa.Integer, nullable=False),
                          sa.Column("body", sa.String(200), nullable=False))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(users_t.insert(), [{"id": i, "name": f"Person {i}"}
                                        for i in range(1, users + 1)])
        rows = [{"id": k * users + i, "sender_id": i, "body": f"hello from {i}"}
                for k in range(messages_per_user) for i in range(1, users + 1)]
        if rows:
            conn.execute(messages_t.insert(), rows)
    engine.dispose()


def select_all(url: str, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())
    finally:
        engine.dispose()


def ids(url: str, table: str) -> set[int]:
    return {r[0] for r in select_all(url, f"select id from {table}")}


def ledger_entries(state_url: str, kind: str) -> list[dict[str, Any]]:
    rows = select_all(state_url, "select * from ledger where kind = :k order by seq", k=kind)
    return [{**r._asdict(), "record_refs": json.loads(r.record_refs),
             "detail": json.loads(r.detail)} for r in rows]


def record_ref(secret: Path, store: str, target: str, key: Any) -> str:
    key_bytes = secret.read_bytes().rstrip(b"\r\n")
    return hmac.new(key_bytes, f"{store}\0{target}\0{key}".encode(), hashlib.sha256).hexdigest()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}", pytrace=False)


def refs(ws: Any) -> Refs:
    return Refs(ws.secret.read_bytes().rstrip(b"\r\n"))


def add_request(ws: Any, subject: str, *, due_at: datetime | None = None) -> str:
    """What `request erase` does, without a CLI start-up (the daemon reads the same rows)."""
    engine = sa.create_engine(ws.state_url)
    try:
        return cases.add_request(engine, refs(ws), subject=subject, kind="user", ref=None,
                                 due_at=due_at or datetime.now(UTC) + timedelta(days=30))
    finally:
        engine.dispose()


def request_status(ws: Any, request_id: str) -> str:
    rows = select_all(ws.state_url, "select status from requests where id = :i", i=request_id)
    return str(rows[0][0])


def next_daily_3am(timespec: str = "minutes") -> str:
    now = datetime.now(UTC)
    at = now.replace(hour=3, minute=0, second=0, microsecond=0)
    return (at if at > now else at + timedelta(days=1)).isoformat(timespec=timespec)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def cli_json(ws: Any, *args: str) -> Any:
    result = ws.invoke(*args, "--json")
    assert result.code == 0, result.err
    return result.json()


# -- tests ------------------------------------------------------------------------------------
def test_notify_watchdog_reload_requests_metrics(ws: Any) -> None:
    store = f"sqlite:///{ws.root / 'store.db'}"
    build_store(store, users=10, messages_per_user=3)
    port = free_port()
    stores = {"app": {"adapter": "sql", "url": store}}
    ws.policy(stores, [ACCOUNTS], metrics={"port": port})
    with serving(ws, abstract_address(), env={"RETENTIOND_REQUEST_INTERVAL": "1"}) as d:
        got = d.notify.until(has("READY=1"), START)
        assert significant(got) == ["READY=1"]
        tables = set(sa.inspect(sa.create_engine(ws.state_url)).get_table_names())
        assert {"runs", "ledger", "requests", "holds", "lease"} <= tables
        assert select_all(ws.state_url, "select version_num from alembic_version") == [
                (HEAD_REVISION,)]
        after = d.notify.until(lambda g: g.count("WATCHDOG=1") >= 4, 5)
        assert significant(after) == []
        assert next(m for m in after if m.startswith("STATUS=")) == (
            f"STATUS=active; next sweep {next_daily_3am()}")

        # a valid new policy: RELOADING=1 + MONOTONIC_USEC, READY=1, and the new rule is used
        p2 = ws.policy(stores, [ACCOUNTS, MESSAGES], metrics={"port": port})
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        d.signal(signal.SIGHUP)
        got = significant(d.notify.until(has("READY=1"), 30))
        stamp = int(re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", got[0]).group(1))
        assert got == [f"RELOADING=1\nMONOTONIC_USEC={stamp}", "READY=1"]
        assert before <= stamp <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        r5 = add_request(ws, "5")
        wait_for("request 5 done", lambda: request_status(ws, r5) == "done")
        assert ids(store, "users") == set(range(1, 11)) - {5}
        assert ids(store, "messages") == set(range(1, 31)) - {5, 15, 25}
        disposals = {(e["rule"], frozenset(e["record_refs"]))
                     for e in ledger_entries(ws.state_url, "dispose")}
        assert disposals == {
            ("accounts", frozenset([record_ref(ws.secret, "app", "users", 5)])),
            ("messages", frozenset(record_ref(ws.secret, "app", "messages", k)
                                   for k in (5, 15, 25)))}
        p2_digest = hashlib.sha256(p2.read_bytes()).hexdigest()
        assert ledger_entries(ws.state_url, "policy")[-1]["detail"]["digest"] == p2_digest

        # an invalid policy: logged with its errors, the process stays up on the old policy
        valid = p2.read_text()
        p2.write_text(valid + "bogus: 1\n")
        d.signal(signal.SIGHUP)
        got = significant(d.notify.until(has("READY=1"), 30))
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", got[0])
        assert got == [got[0], "READY=1"]
        status = d.notify.until(lambda g: any(m.startswith("STATUS=") for m in g), 10)[-1]
        assert re.fullmatch(r"STATUS=active; last requests sweep ok at [0-9T:+-]{25}: "
                            r"4 disposed, 0 failed, 0 held, 0 kept; next sweep "
                            + re.escape(next_daily_3am())
                            + "; reload failed, running policy kept", status), status
        assert d.proc.poll() is None
        failed = d.events("policy reload failed")
        assert [e["errors"] for e in failed] == [["bogus: unknown key"]]
        r6 = add_request(ws, "6")
        wait_for("request 6 done", lambda: request_status(ws, r6) == "done")
        assert ids(store, "messages") == set(range(1, 31)) - {5, 15, 25, 6, 16, 26}
        assert ledger_entries(ws.state_url, "policy")[-1]["detail"]["digest"] == p2_digest

        # a held subject's overdue request stays open; the gauges read the state database
        engine = sa.create_engine(ws.state_url)
        cases.add_hold(engine, refs(ws), scope="subject", reason="litigation", ref=None,
                       subject="7", kind="user")
        engine.dispose()
        r7 = add_request(ws, "7", due_at=datetime.now(UTC) - timedelta(seconds=1))
        metrics = scrape(port)
        assert metrics[("retentiond_disposals_total", (("action", "delete"),
                                                       ("rule", "accounts")))] == 2.0
        assert metrics[("retentiond_disposals_total", (("action", "delete"),
                                                       ("rule", "messages")))] == 6.0
        assert metrics[("retentiond_failures_total", (("rule", "accounts"),))] == 0.0
        assert metrics[("retentiond_requests_open", ())] == 1.0
        assert metrics[("retentiond_requests_overdue", ())] == 1.0
        assert metrics[("retentiond_holds_active", ())] == 1.0
        assert metrics[("retentiond_lease_held", ())] == 1.0
        assert metrics[("retentiond_state_up", ())] == 1.0
        assert metrics[("process_resident_memory_bytes", ())] > 10_000_000
        finished = select_all(ws.state_url, "select finished_at from runs where status = 'ok' "
                              "order by finished_at desc limit 1")[0][0]
        last_ok = datetime.fromisoformat(str(finished)).replace(tzinfo=UTC).timestamp()
        assert metrics[("retentiond_last_success_timestamp_seconds", ())] == last_ok
        sweeps = {labels for (name, labels), _ in metrics.items()
                  if name == "retentiond_sweeps_total"}
        assert sweeps == {(("kind", "requests"), ("status", "ok"))}

        d.signal(signal.SIGTERM)
        got = d.notify.until(has("STOPPING=1"), 30)
        assert significant(got) == ["STOPPING=1"]
        assert d.proc.wait(30) == 0
    assert request_status(ws, r7) == "open"
    p2.write_text(valid)
    doc = cli_json(ws, "status")
    seq, head = select_all(ws.state_url, "select seq, hash from ledger_head")[0]
    assert doc["requests"] == {"open": 1, "overdue": 1, "overdue_ids": [r7]}
    assert doc["holds"] == {"active": 1}
    assert doc["ledger"] == {"seq": seq, "hash": head}
    assert doc["lease"] is None
    assert doc["next_sweep"] == next_daily_3am("seconds")


def test_sigterm_during_a_long_sweep_finishes_the_batch(ws: Any) -> None:
    rows, batch = 30_000, 20
    store = f"sqlite:///{ws.root / 'store.db'}"
    engine = sa.create_engine(store)
    with engine.begin() as conn:
        conn.execute(sa.text("create table events (id integer primary key, "
                             "created_at timestamp not null)"))
        conn.execute(sa.text("insert into events values (:id, '2020-01-01 00:00:00')"),
                     [{"id": i} for i in range(1, rows + 1)])
    engine.dispose()
    rule = {"id": "old-events", "source": "Privacy policy §3", "store": "app",
            "table": "events", "key": "id", "clock": "created_at", "dispose_after": "1d",
            "action": "delete"}
    ws.policy({"app": {"adapter": "sql", "url": store}}, [rule], batch_size=batch)
    sock_dir = tempfile.mkdtemp(prefix="rtd-", dir="/tmp")  # AF_UNIX paths are short
    try:
        with serving(ws, f"{sock_dir}/notify", "--sweep-at-start") as d:
            assert significant(d.notify.until(has("READY=1"), START)) == ["READY=1"]
            wait_for("the first batch", lambda: select_all(
                ws.state_url, "select seq from ledger where kind = 'dispose' limit 1"), 60)
            d.signal(signal.SIGTERM)
            got = d.notify.until(has("STOPPING=1"), 30)
            assert significant(got) == ["STOPPING=1"]
            assert d.proc.wait(60) == 0
            finished = d.events("sweep finished")
    finally:
        shutil.rmtree(sock_dir)
    remaining = ids(store, "events")
    deleted = set(range(1, rows + 1)) - remaining
    n = len(deleted)
    assert 0 < n < rows
    assert n % batch == 0
    assert deleted == set(range(1, n + 1))  # keyset batches in key order, none half done
    entries = ledger_entries(ws.state_url, "dispose")
    refs = [r for e in entries for r in e["record_refs"]]
    assert [len(e["record_refs"]) for e in entries] == [batch] * (n // batch)
    assert len(refs) == len(set(refs)) == n
    assert set(refs) == {record_ref(ws.secret, "app", "events", k) for k in deleted}
    run_id, status = select_all(ws.state_url, "select id, status from runs")[0]
    assert len(select_all(ws.state_url, "select id from runs")) == 1
    assert status == "interrupted"
    assert {e["run_id"] for e in entries} == {run_id}
    assert [(e["run_id"], e["status"], e["done"]) for e in finished] == [
        (run_id, "interrupted", n)]
    seq = select_all(ws.state_url, "select max(seq) from ledger")[0][0]
    assert select_all(ws.state_url, "select run_id, seq from checkpoints "
                      "order by id desc limit 1") == [(run_id, seq)]
    assert select_all(ws.state_url, "select count(*) from pending") == [(0,)]
    verify = ws.invoke("audit", "verify")
    assert verify.code == 0, verify.err
    doc = cli_json(ws, "status")
    assert doc["last_sweep"]["run_id"] == run_id
    assert doc["last_sweep"]["status"] == "interrupted"
    assert doc["last_sweep"]["totals"]["done"] == n
    assert doc["ledger"]["seq"] == seq


def test_replica_takes_over_when_the_holder_is_killed(ws: Any, pg_db: Any) -> None:
    store = f"sqlite:///{ws.root / 'store.db'}"
    build_store(store, users=3)
    ws.policy({"app": {"adapter": "sql", "url": store}}, [ACCOUNTS], state=pg_db.url)

    def lease_holder() -> str | None:
        return select_all(pg_db.url, "select holder from lease where name = 'store:app'")[0][0]

    def runs() -> list[Any]:
        return select_all(pg_db.url, "select id, status, started_at, finished_at from runs "
                          "order by started_at")

    with serving(ws, abstract_address(), "--sweep-at-start") as a:
        assert significant(a.notify.until(has("READY=1"), START)) == ["READY=1"]
        first = wait_for("a's sweep", lambda: [r for r in runs() if r.status == "ok"])
        holder_a = lease_holder()
        assert holder_a is not None
        assert holder_a.startswith(a.holder_prefix())
        with serving(ws, abstract_address(), "--sweep-at-start") as b:
            assert significant(b.notify.until(has("READY=1"), START)) == ["READY=1"]
            standby = wait_for("b on standby", lambda: b.events("standby"))
            assert [e["lease_holder"] for e in standby] == [holder_a]
            time.sleep(4.0)  # longer than the TTL: a keeps renewing, b keeps waiting
            assert lease_holder() == holder_a
            assert runs() == first
            assert b.events("sweep started") == []

            a.proc.kill()
            killed = time.monotonic()
            assert a.proc.wait(10) == -signal.SIGKILL
            wait_for("b to hold the lease",
                     lambda: (lease_holder() or "").startswith(b.holder_prefix()), 60)
            took = time.monotonic() - killed
            # a holder on this host whose process is gone is replaced at b's next tick, well
            # before the TTL (a holder on another host waits the TTL: test_lease_run.py)
            assert took < 2.0
            def both_done() -> list[Any] | None:
                rs = runs()
                return rs if [r.status for r in rs] == ["ok", "ok"] else None

            after = wait_for("b's sweep", both_done, 30)
            assert after[0] == first[0]
            assert after[0].finished_at <= after[1].started_at
            assert [e["event"] for e in b.events() if e["event"].startswith("lease")] == [
                "lease taken over"]
            done = wait_for("b's log", lambda: b.events("sweep finished"))
            assert [(e["run_id"], e["kind"]) for e in done] == [(after[1].id, "catch-up")]
            b.signal(signal.SIGTERM)
            assert b.proc.wait(30) == 0
            assert significant(b.notify.received) == ["READY=1", "STOPPING=1"]
    assert lease_holder() is None


def test_serve_with_a_broken_policy_exits_2_before_ready(ws: Any) -> None:
    ws.config.write_text(yaml.safe_dump({
        "version": 1, "state": ws.state_url, "secret_key": {"file": str(ws.secret)},
        "stores": {}, "bogus": 1}))
    with serving(ws, abstract_address()) as d:
        assert d.proc.wait(START) == 2
        assert d.log_path.read_text().splitlines() == ["error: bogus: unknown key"]
        time.sleep(0.2)
        assert d.notify.received == []


# -- the lease, in process, with a clock the test moves ---------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lease_compare_and_set_on_one_clock(tmp_path: Path) -> None:
    from retentiond.state.db import open_state
    from retentiond.state.lease import SweepLease, Timings, read

    engine = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    clock, timings = Clock(), Timings(ttl=30, renew=10)
    a = SweepLease(engine, timings, "host:1:a", clock)
    b = SweepLease(engine, timings, "host:2:b", clock)
    try:
        assert (a.tick(), b.tick()) == ("acquired", "standby")
        assert (a.held(), b.held(), b.other) == (True, False, "host:1:a")
        clock.now += 9.0
        assert (a.tick(), b.tick()) == ("renewed", "standby")  # a new version: b starts over
        clock.now += 19.9
        assert a.held() is True  # ttl - renew after its last renewal began
        clock.now += 0.1
        assert a.held() is False  # a stopped renewing: it stops trusting the lease ...
        clock.now += 9.9
        assert b.tick() == "standby"  # ... before b may take it (same version for 29.9 s)
        clock.now += 0.1
        assert b.tick() == "taken over"
        assert (a.tick(), a.held(), a.other) == ("standby", False, "host:2:b")
        assert read(engine)["holder"] == "host:2:b"
        assert b.release() is True
        assert read(engine) is None
        assert a.tick() == "acquired"  # a released lease is free at once
    finally:
        engine.dispose()


def test_lease_timings_from_the_environment() -> None:
    from retentiond.errors import UsageError
    from retentiond.state.lease import Timings

    assert Timings.from_env({}) == Timings(30.0, 10.0)
    assert Timings.from_env({"RETENTIOND_LEASE_TTL": "3"}) == Timings(3.0, 1.0)
    assert Timings.from_env({"RETENTIOND_LEASE_TTL": "3", "RETENTIOND_LEASE_RENEW": "0.5"}
                            ) == Timings(3.0, 0.5)
    with pytest.raises(UsageError, match=r"RETENTIOND_LEASE_RENEW \(5\) must be shorter"):
        Timings.from_env({"RETENTIOND_LEASE_TTL": "3", "RETENTIOND_LEASE_RENEW": "5"})
    with pytest.raises(UsageError, match="RETENTIOND_LEASE_TTL='soon': expected a positive"):
        Timings.from_env({"RETENTIOND_LEASE_TTL": "soon"})
