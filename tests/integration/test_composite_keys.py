"""Composite keys (SPEC 10 "Keys"): ``key: [a, b]`` on SQLite, PostgreSQL and MariaDB.

Two tables: ``memberships``, a junction table keyed by ``(group_id, member_id)`` (delete), and
``payments`` keyed by ``(payment_date, payment_id)`` with several payments per date
(anonymise). Plan counts, run results, the rows left and the ledger's references are compared
with sets computed by hand; the references with the documented encoding
``HMAC(secret, store \\0 target \\0 ["<component>","<component>"])``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from helpers import ledger, now_seconds, record_ref, state_exec

from retentiond.adapters.base import NextBatch, Selection
from retentiond.adapters.registry import register, unregister
from retentiond.adapters.sql import SqlAdapter

OLD = datetime(2020, 3, 1, 10, 0, 0)
# (group_id, member_id) -> left_at: due when left more than a year ago.
MEMBERS_DUE = {(1, 2), (1, 4), (2, 1), (2, 3), (3, 7)}
MEMBERS_KEPT = {(1, 1), (1, 3), (2, 2), (3, 1)}
# (payment_date, payment_id): ids repeat across dates; the 2020 ones are due.
PAY_DUE = {(OLD, 17), (OLD, 18), (OLD, 40), (OLD + timedelta(days=1), 3),
           (OLD + timedelta(days=1), 17)}

MEMBERS_RULE = {"id": "old-memberships", "store": "app", "table": "memberships",
                "key": ["group_id", "member_id"], "clock": "left_at", "dispose_after": "1y",
                "action": "delete"}
PAY_RULE = {"id": "old-payments", "store": "app", "table": "payments",
            "key": ["payment_date", "payment_id"], "subject": "payer_id",
            "clock": "payment_date", "dispose_after": "1y", "action": "anonymize",
            "anonymize": {"marker": "anonymized_at",
                          "columns": {"email": {"strategy": "hmac", "format": "email"}}}}


def tables(md: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    members = sa.Table(
        "memberships", md,
        sa.Column("group_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("member_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("left_at", sa.DateTime, nullable=True))
    payments = sa.Table(
        "payments", md,
        sa.Column("payment_date", sa.DateTime, primary_key=True),
        sa.Column("payment_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("payer_id", sa.Integer, nullable=True),
        sa.Column("email", sa.String(200), nullable=False),
        sa.Column("anonymized_at", sa.DateTime, nullable=True))
    return members, payments


def seed(engine: sa.Engine) -> set[tuple[datetime, int]]:
    """Create and fill both tables; return the payments that are not due."""
    members, payments = tables(sa.MetaData())
    members.metadata.create_all(engine)
    now = now_seconds()
    recent = {(now - timedelta(days=10), 17), (now - timedelta(days=10), 2),
              (now - timedelta(days=20), 40)}
    with engine.begin() as conn:
        conn.execute(members.insert(), [
            {"group_id": g, "member_id": m,
             "left_at": OLD if (g, m) in MEMBERS_DUE else None if m == 1 else now}
            for g, m in sorted(MEMBERS_DUE | MEMBERS_KEPT)])
        conn.execute(payments.insert(), [
            {"payment_date": d, "payment_id": i, "payer_id": 500 + i,
             "email": f"payer.{d:%Y%m%d}.{i}@mail.example.org", "anonymized_at": None}
            for d, i in sorted(PAY_DUE | recent)])
    return recent


def composite_ref(ws: Any, target: str, *parts: str) -> str:
    """The documented encoding, written out by hand: a compact JSON array of strings."""
    return record_ref(ws.secret, "app", target, json.dumps(list(parts), separators=(",", ":")))


def member_refs(ws: Any, keys: set[tuple[int, int]]) -> set[str]:
    return {composite_ref(ws, "memberships", str(g), str(m)) for g, m in keys}


def pay_refs(ws: Any, keys: set[tuple[datetime, int]]) -> set[str]:
    return {composite_ref(ws, "payments", d.isoformat(), str(i)) for d, i in keys}


def rows(engine: sa.Engine, sql: str) -> set[tuple[Any, ...]]:
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(sa.text(sql))}


@pytest.fixture
def store(store_db: Any, ws: Any) -> Iterator[tuple[sa.Engine, set[tuple[datetime, int]]]]:
    engine = store_db.engine()
    recent = seed(engine)
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [MEMBERS_RULE, PAY_RULE],
              batch_size=2)
    yield engine, recent
    engine.dispose()


def test_plan_run_and_ledger_with_composite_keys(store: Any, ws: Any) -> None:
    engine, recent = store
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    assert {r["rule"]: r["due"] for r in plan.json()["rules"]} == {
        "old-memberships": len(MEMBERS_DUE), "old-payments": len(PAY_DUE)}

    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert {r["rule"]: (r["due"], r["done"], r["failed"]) for r in run.json()["rules"]} == {
        "old-memberships": (5, 5, 0), "old-payments": (5, 5, 0)}
    assert rows(engine, "select group_id, member_id from memberships") == MEMBERS_KEPT
    _, pay = tables(sa.MetaData())
    with engine.connect() as conn:  # typed: SQLite returns text for a raw DATETIME column
        found = conn.execute(sa.select(pay.c.payment_date, pay.c.payment_id, pay.c.email,
                                       pay.c.anonymized_at.is_(None))).all()
    assert {(d, i) for d, i, _, fresh in found if not fresh} == PAY_DUE
    assert {(d, i, e) for d, i, e, fresh in found if fresh} == {
        (d, i, f"payer.{d:%Y%m%d}.{i}@mail.example.org") for d, i in recent}
    assert all(e.endswith("@anonymized.invalid") for _, _, e, fresh in found if not fresh)

    entries = ledger(ws.root / "state.db", "dispose")
    by_rule: dict[str, list[str]] = {}
    for e in entries:
        by_rule.setdefault(e["rule"], []).extend(e["record_refs"])
    assert sorted(by_rule["old-memberships"]) == sorted(member_refs(ws, MEMBERS_DUE))
    assert sorted(by_rule["old-payments"]) == sorted(pay_refs(ws, PAY_DUE))
    assert max(len(e["record_refs"]) for e in entries) == 2  # batch_size 2: keysets crossed
    verify = ws.invoke("audit", "verify")
    assert verify.code == 0, verify.err

    again = ws.invoke("run", "--json")
    assert {r["rule"]: r["done"] for r in again.json()["rules"]} == {
        "old-memberships": 0, "old-payments": 0}


def test_backup_restored_replays_composite_keys(store: Any, ws: Any) -> None:
    engine, _ = store
    members, _payments = tables(sa.MetaData())
    taken = datetime.now().astimezone().isoformat()
    assert ws.invoke("run").code == 0
    with engine.begin() as conn:  # the restore brings two of the deleted memberships back
        conn.execute(members.insert(), [{"group_id": 1, "member_id": 2, "left_at": None},
                                        {"group_id": 3, "member_id": 7, "left_at": None}])
    replay = ws.invoke("backup", "restored", "--store", "app", "--taken-at", taken, "--json")
    assert replay.code == 0, replay.err
    assert {r["rule"]: r["count"] for r in replay.json()["reapplied"]} == {
        "old-memberships": 2, "old-payments": 0}
    assert rows(engine, "select group_id, member_id from memberships") == MEMBERS_KEPT
    [entry] = ledger(ws.root / "state.db", "replay")
    assert set(entry["record_refs"]) == member_refs(ws, {(1, 2), (3, 7)})
    assert ws.invoke("audit", "verify").code == 0


def test_explain_takes_named_and_json_composite_keys(store: Any, ws: Any) -> None:
    named = ws.invoke("explain", "--rule", "old-payments", "--json",
                      "--key", "payment_date=2020-03-01T10:00:00,payment_id=17")
    assert named.code == 0, named.err
    doc = named.json()
    assert (doc["decision"], doc["record_ref"]) == (
        "dispose", composite_ref(ws, "payments", "2020-03-01T10:00:00", "17"))
    reordered = ws.invoke("explain", "--rule", "old-payments", "--json",
                          "--key", "payment_id=17, payment_date=2020-03-01 10:00:00")
    array = ws.invoke("explain", "--rule", "old-payments", "--json",
                      "--key", '["2020-03-01T10:00:00", 17]')
    assert reordered.json()["record_ref"] == array.json()["record_ref"] == doc["record_ref"]
    member = ws.invoke("explain", "--rule", "old-memberships", "--json", "--key", "[2, 2]")
    assert member.json()["decision"] == "nothing"


@pytest.mark.parametrize(("key", "message"), [
    ("17", "--key '17': rule old-payments has the composite key (payment_date, payment_id); "
           "give payment_date=VALUE,payment_id=VALUE or a JSON array of 2 values in that order"),
    ("payment_date=2020-03-01T10:00:00", "--key 'payment_date=2020-03-01T10:00:00': missing "
                                         "payment_id; rule old-payments has the composite key"),
    ('["2020-03-01T10:00:00"]', "or a JSON array of 2 values in that order"),
    ("payment_date=yesterday,payment_id=17", "--key 'payment_date=yesterday,payment_id=17': "
                                             "payment_date takes an ISO 8601 time like "
                                             "2024-01-03T10:00:00"),
    ("payment_date=2020-03-01T10:00:00,payment_id=99", "--key payment_date=2020-03-01T10:00:00,"
                                                       "payment_id=99: no record with "
                                                       "(payment_date, payment_id) = "
                                                       "(2020-03-01T10:00:00, 99)"),
])
def test_explain_composite_key_errors(store: Any, ws: Any, key: str, message: str) -> None:
    result = ws.invoke("explain", "--rule", "old-payments", "--key", key)
    assert result.code == 2
    assert message in result.err


def test_validate_names_the_primary_key(sqlite_db: Any, ws: Any) -> None:
    engine = sqlite_db.engine()
    seed(engine)
    engine.dispose()
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [
        {**MEMBERS_RULE, "key": "member_id"},
        {**PAY_RULE, "key": ["payment_id", "payer_id"]},
        {**MEMBERS_RULE, "id": "reordered", "key": ["member_id", "group_id"]}])
    result = ws.invoke("config", "validate", "--json")
    assert result.code == 2
    text = result.out + result.err
    assert ("column memberships.member_id is neither the primary key nor unique; the primary "
            "key of memberships is (group_id, member_id): use key: [group_id, member_id]"
            ) in text
    assert ("columns payments.payment_id, payments.payer_id are neither the primary key nor a "
            "unique constraint (as a set); the primary key of payments is (payment_date, "
            "payment_id): use key: [payment_date, payment_id]") in text
    assert "reordered" not in text  # the same columns in another order are the primary key


class CrashAfterStoreCommit(SqlAdapter):
    """The sql adapter dying after its first batch is committed in the store and before the
    ledger entry is written (the process would be killed here)."""

    crashed: ClassVar[list[list[Any]]] = []

    def delete(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        return self._die(super().delete(selection, keys))

    def delete_next(self, selection: Selection, after: Any, limit: int,
                    intent: Callable[[list[Any]], None]) -> NextBatch | None:
        batch = super().delete_next(selection, after, limit, intent)
        if batch is not None:
            self._die(batch.disposed)
        return batch

    def _die(self, disposed: list[Any]) -> list[Any]:
        if disposed:
            CrashAfterStoreCommit.crashed.append(sorted(disposed))
            raise KeyboardInterrupt("killed after the store committed")
        return disposed


def test_reconcile_after_crash_mid_batch(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    seed(engine)
    stores = {"app": {"adapter": "sqlcrash", "url": store_db.url}}
    ws.policy(stores, [MEMBERS_RULE], batch_size=2)
    register("sqlcrash", CrashAfterStoreCommit)
    CrashAfterStoreCommit.crashed = []
    try:
        assert ws.invoke("run").code != 0
    finally:
        unregister("sqlcrash")
    [first] = CrashAfterStoreCommit.crashed
    assert first == [(1, 2), (1, 4)]
    assert ledger(ws.root / "state.db", "dispose") == []
    # The process is gone (what runs.mark_crashed concludes from a dead holder; in-process
    # the holder is this live test process, so say it here).
    assert state_exec(ws.root / "state.db",
                      "update runs set status = 'crashed' where status = 'running'") == 1
    assert rows(engine, "select group_id, member_id from memberships") == (
        MEMBERS_KEPT | MEMBERS_DUE) - {(1, 2), (1, 4)}

    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [MEMBERS_RULE], batch_size=2)
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert [r["done"] for r in run.json()["rules"]] == [3]
    entries = ledger(ws.root / "state.db", "dispose")
    reconciled = [e for e in entries if json.loads(e["detail"]).get("reconciled")]
    assert [set(e["record_refs"]) for e in reconciled] == [member_refs(ws, {(1, 2), (1, 4)})]
    every = [ref for e in entries for ref in e["record_refs"]]
    assert sorted(every) == sorted(member_refs(ws, MEMBERS_DUE))  # each exactly once
    assert rows(engine, "select group_id, member_id from memberships") == MEMBERS_KEPT
    assert ws.invoke("audit", "verify").code == 0
    engine.dispose()
