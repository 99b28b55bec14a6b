"""Concurrent writers against a sweep, as PostgreSQL's isolation tests do it: two real sessions
and an explicit order of steps.

1. Session B changes a due record (so it is no longer due) and holds the row lock.
2. The sweep starts and its disposing statement waits on that lock.
3. B commits; the sweep goes on.

The record must survive (issue 8, defect 1): the statement that disposes carries the whole
selection, which PostgreSQL re-evaluates on the new row version and InnoDB's locking read
evaluates on the latest committed row. A batch that loses a row to a concurrent delete must not
end the sweep (defect 2). SQLite has no row locks: a writer holds the whole database, so a
sweep's statement never sees a half-changed batch; it is not part of these tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import Database, Workspace
from tests.integration.helpers import ledger, now_seconds, person, record_ref

OLD = datetime(2019, 6, 1, 12, 0, 0)


@pytest.fixture(params=("postgresql", "mariadb"))
def locking_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A store whose writers lock rows: PostgreSQL and MariaDB (InnoDB)."""
    yield request.getfixturevalue({"postgresql": "pg_db", "mariadb": "mariadb_db"}[request.param])


def make_invites(engine: sa.Engine, n: int, composite: bool = False) -> sa.Table:
    """``invites`` keyed by ``id``, or with ``composite`` by ``(batch_no, id)``."""
    md = sa.MetaData()
    table = sa.Table(
        "invites", md,
        *([sa.Column("batch_no", sa.Integer, primary_key=True, autoincrement=False)]
          if composite else []),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sent_at", sa.DateTime, nullable=True),
        sa.Column("email", sa.String(120), nullable=False),
        sa.Column("anonymized_at", sa.DateTime, nullable=True),
    )
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "sent_at": OLD + timedelta(minutes=i),
                                       "email": person(i)[1],
                                       **({"batch_no": i % 2} if composite else {})}
                                      for i in range(1, n + 1)])
    return table


def policy(ws: Workspace, db: Database, action: str, batch_size: int = 5000,
           key: str | list[str] = "id") -> None:
    rule: dict[str, Any] = {"id": "invitations", "store": "app", "table": "invites", "key": key,
                            "clock": "sent_at", "dispose_after": "1y", "action": action,
                            "source": "Invitations: sent once, then deleted"}
    if action == "anonymize":
        rule["anonymize"] = {"marker": "anonymized_at",
                             "columns": {"email": {"strategy": "constant",
                                                   "value": "gone@example.invalid"}}}
    if action == "isolate":
        rule["isolate"] = {"for": "30d"}
    ws.policy({"app": {"adapter": "sql", "url": db.url}}, [rule], batch_size=batch_size)


def start_sweep(ws: Workspace) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
    return subprocess.Popen([sys.executable, "-m", "retentiond", "--config", str(ws.config),
                             "run", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_for_lock_wait(db: Database, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Until some session of this database waits on a row lock (the sweep's statement)."""
    probe = {
        "postgresql": "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                      "and datname = current_database()",
        "mariadb": "select count(*) from information_schema.innodb_trx "
                   "where trx_state = 'LOCK WAIT'",
    }[db.backend]
    engine = sa.create_engine(db.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(sa.text(probe)).scalar_one():
                    return
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the sweep ended before waiting on the lock: {proc.returncode} "
                            f"{out} {err}")
            # InnoDB refreshes its transaction tables only when read 0.1 s after the last read
            time.sleep(0.2)
        with engine.connect() as conn:
            seen = conn.execute(sa.text(
                {"postgresql": "select state, wait_event_type, query from pg_stat_activity",
                 "mariadb": "select command, state, info from information_schema.processlist"
                 }[db.backend])).all()
        pytest.fail(f"the sweep never waited on the row lock: {seen}")
    finally:
        engine.dispose()


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    import json

    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (proc.returncode, out, err)
    doc: dict[str, Any] = json.loads(out)
    return doc


def remaining(engine: sa.Engine, action: str) -> dict[int, str]:
    """Records still in normal processing: present and, for anonymize, not yet marked."""
    q = "select id, email from invites" + (
        " where anonymized_at is null" if action == "anonymize" else "")
    with engine.connect() as conn:
        return {int(r[0]): str(r[1]) for r in conn.execute(sa.text(q))}


def disposed_refs(ws: Workspace) -> list[str]:
    return [ref for entry in ledger(ws.root / "state.db", "dispose")
            for ref in entry["record_refs"]]


@pytest.mark.parametrize("action", ["delete", "anonymize", "isolate"])
def test_a_record_that_stops_being_due_while_locked_survives(
        ws: Workspace, locking_db: Database, action: str) -> None:
    engine = locking_db.engine()
    try:
        make_invites(engine, 6)
        policy(ws, locking_db, action)
        with engine.connect() as writer:
            writer.execute(sa.text("update invites set sent_at = :now where id = 3"),
                           {"now": now_seconds()})  # B holds row 3's lock, not committed
            proc = start_sweep(ws)
            wait_for_lock_wait(locking_db, proc)
            writer.commit()  # row 3 is no longer due
        doc = finish(proc)
        assert remaining(engine, action) == {3: person(3)[1]}
        [rule] = doc["rules"]
        assert (rule["done"], rule["failed"]) == (5, 0)
        refs = sorted(record_ref(ws.secret, "app", "invites", i) for i in (1, 2, 4, 5, 6))
        assert sorted(disposed_refs(ws)) == refs
    finally:
        engine.dispose()


@pytest.mark.parametrize("action", ["delete", "anonymize"])
def test_a_batch_shortened_by_a_concurrent_delete_does_not_end_the_sweep(
        ws: Workspace, locking_db: Database, action: str) -> None:
    engine = locking_db.engine()
    try:
        make_invites(engine, 12)
        policy(ws, locking_db, action, batch_size=4)
        with engine.connect() as writer:
            writer.execute(sa.text("delete from invites where id = 2"))  # B holds row 2
            proc = start_sweep(ws)
            wait_for_lock_wait(locking_db, proc)
            writer.commit()  # the first batch (1-4) loses row 2
        doc = finish(proc)
        assert remaining(engine, action) == {}
        [rule] = doc["rules"]
        assert (rule["done"], rule["failed"]) == (11, 0)
        refs = sorted(record_ref(ws.secret, "app", "invites", i) for i in range(1, 13) if i != 2)
        assert sorted(disposed_refs(ws)) == refs
    finally:
        engine.dispose()


@pytest.mark.parametrize("action", ["delete", "anonymize", "isolate"])
def test_with_a_composite_key_a_record_that_stops_being_due_while_locked_survives(
        ws: Workspace, locking_db: Database, action: str) -> None:
    """The same choreography with ``key: [batch_no, id]``: the fast path's ``(a, b) IN
    (SELECT ... FROM picked)`` statement carries the selection too."""
    engine = locking_db.engine()
    try:
        make_invites(engine, 6, composite=True)
        policy(ws, locking_db, action, batch_size=4, key=["batch_no", "id"])
        with engine.connect() as writer:
            writer.execute(sa.text("update invites set sent_at = :now where id = 3"),
                           {"now": now_seconds()})
            proc = start_sweep(ws)
            wait_for_lock_wait(locking_db, proc)
            writer.commit()
        doc = finish(proc)
        assert remaining(engine, action) == {3: person(3)[1]}
        [rule] = doc["rules"]
        assert (rule["done"], rule["failed"]) == (5, 0)
        from retentiond.audit.ledger import key_text

        refs = sorted(record_ref(ws.secret, "app", "invites", key_text((i % 2, i)))
                      for i in (1, 2, 4, 5, 6))
        assert sorted(disposed_refs(ws)) == refs
    finally:
        engine.dispose()
