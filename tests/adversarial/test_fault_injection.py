"""Faults injected while a sweep runs (issue 8, "Must show"): a store's or the state database's
session terminated in the middle of a batch, the state database's disk filling up, and every
command with its store unreachable. Each gives its documented exit code and one ``error:`` line,
``audit verify`` passes afterwards, and once the fault is gone the next run reconciles so that
every disposed record is in the ledger exactly once.

The faults are placed deterministically: an adapter subclass (store) or an engine event
listener in a child process (state) terminates the session at a chosen statement of the second
batch; the disk is a tmpfs filled before the sweep starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from conftest import IN_CI, PG_ADMIN
from helpers import (  # type: ignore[import-not-found]  # tests/integration on sys.path
    Row,
    create,
    ids,
    log_free_lines,
    record_ref,
    users_table,
)

from retentiond.adapters.base import NextBatch, Selection
from retentiond.adapters.registry import register, unregister
from retentiond.adapters.sql import SqlAdapter

OLD = datetime(2019, 5, 1, 12, 0, 0)
RULE = {"id": "old-users", "source": "Privacy policy §3", "store": "app", "table": "users",
        "key": "id", "subject": "user_id", "clock": "created_at", "dispose_after": "3y",
        "action": "delete"}
TESTS = Path(__file__).resolve().parents[1]
TAIL = ("; check `state:` in the policy, that the database is reachable and writable, and run "
        "`retentiond db upgrade`")


def _fill(engine: sa.Engine, n: int) -> None:
    create(engine, users_table(sa.MetaData()), [Row(i, OLD) for i in range(1, n + 1)])
    engine.dispose()


def _admin(url: str) -> sa.Engine:
    return sa.create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")


def terminate(url: str) -> int:
    """Terminate every session on the database of ``url`` (waiting until each has exited);
    returns how many were terminated."""
    admin = _admin(url)
    try:
        with admin.connect() as conn:
            return int(conn.execute(sa.text(
                "select count(*) filter (where pg_terminate_backend(pid, 5000)) "
                "from pg_stat_activity where datname = :db and pid <> pg_backend_pid()"),
                {"db": sa.make_url(url).database}).scalar_one())
    finally:
        admin.dispose()


def disposed_refs(state_url: str) -> Counter[str]:
    """How often each record reference is ledgered as disposed."""
    engine = sa.create_engine(state_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "select record_refs from ledger where kind = 'dispose' order by seq")).scalars()
            return Counter(ref for refs in rows for ref in json.loads(refs))
    finally:
        engine.dispose()


def pending(state_url: str) -> int:
    return len(intents(state_url))


def intents(state_url: str) -> list[set[str]]:
    """The record references of each intent left in ``pending``."""
    engine = sa.create_engine(state_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select record_refs from pending order by id"))
            return [set(json.loads(r)) for r in rows.scalars()]
    finally:
        engine.dispose()


def refs(ws: Any, keys: set[int]) -> Counter[str]:
    return Counter(record_ref(ws.secret, "app", "users", k) for k in keys)


def one_error(result: Any) -> str:
    lines = log_free_lines(result.err)  # structlog JSON lines may come first
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err
    return lines[0]


def recovered(ws: Any, store: sa.Engine, state_url: str, n: int) -> None:
    """After the fault: verify passes, the next run reconciles and disposes the rest, every
    disposed record is ledgered exactly once and no intent is left behind."""
    verify = ws.invoke("audit", "verify")
    assert verify.code == 0, verify.err
    again = ws.invoke("run", "--json")
    assert again.code == 0, again.err
    assert ids(store, "users") == set()
    assert disposed_refs(state_url) == refs(ws, set(range(1, n + 1)))
    assert pending(state_url) == 0
    verify = ws.invoke("audit", "verify")
    assert verify.code == 0, verify.err


# -- 1. the store's session terminated in the middle of a batch ------------------------------
class TerminateStoreInSecondBatch(SqlAdapter):
    """The sql adapter, terminating its store's sessions inside the second batch's store
    transaction: after the DELETE ran and the intent was committed, before the store commits."""

    batches: ClassVar[int] = 0

    def delete_next(self, selection: Selection, after: Any, limit: int,
                    intent: Callable[[list[Any]], None]) -> NextBatch | None:
        def hooked(keys: list[Any]) -> None:
            intent(keys)
            TerminateStoreInSecondBatch.batches += 1
            if TerminateStoreInSecondBatch.batches == 2:
                assert terminate(str(self.store.url)) >= 1

        return super().delete_next(selection, after, limit, hooked)


@pytest.fixture
def store_killer() -> Iterator[None]:
    TerminateStoreInSecondBatch.batches = 0
    register("sqlterm", TerminateStoreInSecondBatch)
    try:
        yield
    finally:
        unregister("sqlterm")


def test_a_store_terminated_mid_batch_is_exit_3_and_reconciled(
        ws: Any, pg_db: Any, store_killer: None) -> None:
    store = pg_db.engine()
    _fill(store, 40)
    ws.policy({"app": {"adapter": "sqlterm", "url": pg_db.url}}, [RULE], batch_size=10)

    result = ws.invoke("run")
    assert result.code == 3, result.err
    assert one_error(result) == ("error: store app: connection lost while deleting from users")
    assert "mail.example.org" not in result.out + result.err
    # batch 1 disposed and ledgered; batch 2 rolled back by the store, its intent left behind
    assert ids(store, "users") == set(range(11, 41))
    assert disposed_refs(ws.state_url) == refs(ws, set(range(1, 11)))
    assert pending(ws.state_url) == 1
    recovered(ws, store, ws.state_url, 40)
    store.dispose()


# -- 2. the state database's sessions terminated in the middle of a batch --------------------
def child() -> None:
    """A ``retentiond`` process whose state sessions are all terminated in the second batch,
    just before the statement ``RTD_TEST_KILL_AT`` names: ``pending`` (the intent, written
    inside the store's transaction) or ``ledger`` (the store has committed the batch, its
    intent is in ``pending``, its ledger entry is not: the window reconciliation exists for)."""
    from sqlalchemy import event

    from retentiond.cli import main

    state = os.environ["RTD_TEST_STATE_URL"]
    kill_at = f"INSERT INTO {os.environ['RTD_TEST_KILL_AT'].upper()} "
    database = sa.make_url(state).database
    intents = [0]

    def before(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if conn.engine.url.database != database:
            return
        text = statement.lstrip().upper()
        intents[0] += text.startswith("INSERT INTO PENDING ")
        if text.startswith(kill_at) and intents[0] == 2:
            assert terminate(state) >= 1

    event.listen(sa.Engine, "before_cursor_execute", before)
    main(sys.argv[1:])


# at which statement -> (keys left in the store, intents left behind)
KILL_AT = {"pending": (set(range(11, 41)), 0), "ledger": (set(range(21, 41)), 1)}


@pytest.mark.parametrize("kill_at", list(KILL_AT))
def test_the_state_database_terminated_mid_batch_is_exit_3_and_reconciled(
        ws: Any, sqlite_db: Any, pg_db: Any, kill_at: str) -> None:
    store = sqlite_db.engine()
    _fill(store, 40)
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE], batch_size=10,
              state=pg_db.url)
    env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
         "from adversarial.test_fault_injection import child; child()",
         "--config", str(ws.config), "run"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**env, "RTD_TEST_STATE_URL": pg_db.url, "RTD_TEST_KILL_AT": kill_at})
    result = SimpleNamespace(code=proc.returncode, out=proc.stdout, err=proc.stderr)
    assert result.code == 3, result.err
    assert one_error(result) == (
        f"error: state database {pg_db.url} failed (OperationalError: its connection was "
        f"terminated by the server){TAIL}")
    assert "[SQL" not in result.err and "parameters" not in result.err
    left, intents = KILL_AT[kill_at]
    assert ids(store, "users") == left
    assert disposed_refs(pg_db.url) == refs(ws, set(range(1, 11)))
    assert pending(pg_db.url) == intents
    recovered(ws, store, pg_db.url, 40)
    store.dispose()


# -- 3. the state database's disk fills up during a sweep ------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "statefs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                           str(mount)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}"
        if IN_CI:
            pytest.fail(f"CI requires it: {why}", pytrace=False)
        pytest.skip(why)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


N_FULL = 3000


def test_a_full_state_disk_is_exit_3_and_nothing_is_disposed_unledgered(
        ws: Any, sqlite_db: Any, small_disk: Path) -> None:
    store = sqlite_db.engine()
    _fill(store, N_FULL)
    state_url = f"sqlite:///{small_disk / 'state.db'}"
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE], batch_size=100,
              state=state_url)
    assert ws.invoke("db", "upgrade").code == 0
    filler = small_disk / "filler"
    free = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 256 * 1024))

    result = ws.cli("run")  # a process of its own: its run row cannot be closed on a full disk
    assert result.code == 3, result.err
    assert one_error(result) == (f"error: state database {state_url} failed (OperationalError: "
                                 f"its disk is full){TAIL}")
    gone = set(range(1, N_FULL + 1)) - ids(store, "users")
    ledgered = disposed_refs(state_url)
    assert 0 < len(gone) < N_FULL, "the disk did not fill up in the middle of the sweep"
    # What the ledger names is gone; what is gone unledgered is covered by an intent.
    assert set(ledgered) <= set(refs(ws, gone))
    assert max(ledgered.values()) == 1
    assert set(refs(ws, gone)) - set(ledgered) <= set().union(*intents(state_url))

    filler.unlink()
    recovered(ws, store, state_url, N_FULL)
    store.dispose()


# -- 4. every command with its store unreachable ---------------------------------------------
UNREACHABLE = {"missing-database": PG_ADMIN.rsplit("/", 1)[0] + "/rtd_no_such_database",
               "port-1": "postgresql+psycopg://postgres@127.0.0.1:1/app"}
TAKEN_AT = "2024-01-01T00:00:00Z"
# command -> (arguments, exit code): 3 where the command must reach the store (SPEC 1).
COMMANDS: dict[str, tuple[tuple[str, ...], int]] = {
    "config validate": (("config", "validate"), 3),
    "plan": (("plan",), 3),
    "run": (("run",), 3),
    "explain": (("explain", "--rule", "old-users", "--key", "1"), 3),
    "backup restored": (("backup", "restored", "--store", "app", "--taken-at", TAKEN_AT), 3),
    "status": (("status",), 0),
    "request erase": (("request", "erase", "4242"), 0),
    "request list": (("request", "list"), 0),
    "hold add": (("hold", "add", "--subject", "4242", "--reason", "litigation"), 0),
    "hold release": (("hold", "release", "{hold}", "--reason", "settled"), 0),
    "hold list": (("hold", "list"), 0),
    "audit verify": (("audit", "verify"), 0),
    "audit export": (("audit", "export", "--format", "json"), 0),
    "audit checkpoint": (("audit", "checkpoint"), 0),
    "audit public-key": (("audit", "public-key"), 0),
    "db upgrade": (("db", "upgrade"), 0),
}


@pytest.fixture
def seeded(ws: Any, sqlite_db: Any) -> str:
    """A state database with a sweep's disposals, a checkpoint and a hold; returns the hold
    id. The store is made unreachable by the test."""
    key = Ed25519PrivateKey.generate()
    pem = ws.root / "signing.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    _fill(sqlite_db.engine(), 3)
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE],
              signing_key={"file": str(pem)})
    assert ws.invoke("run").code == 0
    held = ws.invoke("--json", "hold", "add", "--subject", "77", "--reason", "litigation")
    assert held.code == 0, held.err
    return str(json.loads(held.out)["id"])


@pytest.mark.parametrize("url", list(UNREACHABLE), ids=list(UNREACHABLE))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_with_the_store_unreachable(ws: Any, seeded: str, command: str,
                                                  url: str) -> None:
    doc = yaml.safe_load(ws.config.read_text())
    doc["stores"]["app"]["url"] = UNREACHABLE[url]
    ws.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    args, code = COMMANDS[command]
    result = ws.invoke(*(seeded if a == "{hold}" else a for a in args))
    assert result.code == code, f"{command}: exit {result.code}: {result.err}"
    assert "Traceback" not in result.err
    if code == 0:
        assert log_free_lines(result.err) == [], result.err
        return
    message = f"store app: cannot connect to {UNREACHABLE[url]}"
    assert one_error(result) == f"error: {message}"
    told = [line for line in log_free_lines(result.out + "\n" + result.err) if message in line]
    assert len(told) == 1, result.out  # the table does not repeat it
