"""PostgreSQL declarative partitioning (SPEC 10): a partitioned table is a rule's table like any
other, through its parent, for every action; partitions attached after ``plan`` and dropped
before ``run`` change what the run disposes and nothing else; ``audit verify`` passes.

``payments`` is partitioned by range of its clock, so its primary key must include the clock:
``(payment_id, paid_at)``, a composite key. ``orders`` is partitioned by range of its single
key column (PostgreSQL allows a one-column primary key there), with the clock apart.
Partition bounds and clocks are offsets from now, so every set below is fixed by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import ledger, record_ref

EXTRA = ["retentiond_isolated_at", "retentiond_rule", "retentiond_purge_after"]
COLUMNS = ["payment_id", "paid_at", "customer_id", "email", "amount", "anonymized_at"]

# payment_id -> age in days. Partitions: old [now-5y, now-3y), mid [now-3y, now-1y),
# new [now-1y, now+1y); attached later: ancient [MINVALUE, now-5y). Rule: due after 2y.
OLD = {1: 1500, 2: 1200}            # all due; the partition is dropped before the run
MID = {3: 1000, 4: 900, 5: 700, 6: 400}  # 3 and 4 due
NEW = {7: 100, 8: 10}               # none due
ANCIENT = {9: 2000, 10: 1900}       # due; attached after the plan


def _bound(at: datetime) -> str:
    return f"'{at.isoformat(sep=' ')}'"


@pytest.fixture
def payments(pg_schema: Any) -> Iterator[tuple[sa.Engine, datetime]]:
    engine = pg_schema.engine()
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    y = timedelta(days=365)
    with engine.begin() as conn:
        conn.execute(sa.text("""
            create table payments (
                payment_id integer not null, paid_at timestamp not null,
                customer_id integer not null, email text not null,
                amount numeric(10, 2) not null, anonymized_at timestamp,
                primary key (payment_id, paid_at)
            ) partition by range (paid_at)"""))
        for name, lo, hi in (("old", now - 5 * y, now - 3 * y), ("mid", now - 3 * y, now - y),
                             ("new", now - y, now + y)):
            conn.execute(sa.text(f"create table payments_{name} partition of payments "
                                 f"for values from ({_bound(lo)}) to ({_bound(hi)})"))
        conn.execute(sa.text("insert into payments values (:i, :at, :c, :e, :a, null)"),
                     [row(i, age, now) for i, age in {**OLD, **MID, **NEW}.items()])
    yield engine, now
    engine.dispose()


def row(i: int, age: int, now: datetime) -> dict[str, Any]:
    return {"i": i, "at": now - timedelta(days=age), "c": 100 + i,
            "e": f"payer.{i}@mail.example.org", "a": Decimal(f"{i}0.5{i}")}


def attach_ancient(engine: sa.Engine, now: datetime) -> None:
    """A partition filled on its own, then attached (as an archive restore would)."""
    with engine.begin() as conn:
        conn.execute(sa.text("create table payments_ancient (like payments)"))
        conn.execute(sa.text("insert into payments_ancient values (:i, :at, :c, :e, :a, null)"),
                     [row(i, age, now) for i, age in ANCIENT.items()])
        conn.execute(sa.text("alter table payments attach partition payments_ancient for "
                             f"values from (minvalue) to ({_bound(now - 5 * timedelta(365))})"))


def read(engine: sa.Engine, table: str = "payments") -> dict[int, dict[str, Any]]:
    with engine.connect() as conn:
        return {r["payment_id"]: dict(r) for r in conn.execute(
            sa.text(f"select * from {table} order by payment_id")).mappings()}


def original(now: datetime, ids: set[int]) -> dict[int, dict[str, Any]]:
    every = {**OLD, **MID, **NEW, **ANCIENT}
    out = {}
    for i in sorted(ids):
        r = row(i, every[i], now)
        out[i] = {"payment_id": i, "paid_at": r["at"], "customer_id": r["c"], "email": r["e"],
                  "amount": r["a"], "anonymized_at": None}
    return out


def ref(ws: Any, i: int, now: datetime) -> str:
    """The documented canonical text of a composite key: a compact JSON array of its
    components in key order, times as ISO 8601."""
    age = {**OLD, **MID, **NEW, **ANCIENT}[i]
    text = json.dumps([str(i), (now - timedelta(days=age)).isoformat()], separators=(",", ":"))
    return record_ref(ws.secret, "app", "payments", text)


RULE = {"id": "old-payments", "store": "app", "table": "payments",
        "key": ["payment_id", "paid_at"], "subject": "customer_id", "clock": "paid_at",
        "dispose_after": "2y"}
ACTIONS = {
    "delete": {"action": "delete"},
    "anonymize": {"action": "anonymize", "anonymize": {
        "marker": "anonymized_at", "columns": {"email": {"strategy": "constant",
                                                         "value": "gone@anon.invalid"}}}},
    "isolate": {"action": "isolate", "isolate": {"for": "PT5S"}},
}


def due_done(doc: dict[str, Any]) -> tuple[int, int, int]:
    [r] = doc["rules"]
    assert (r["held"], r["kept"], r["failed"], r["null_clock"]) == (0, 0, 0, 0), r
    return r["due"], r["done"], r["purged"]


@pytest.mark.parametrize("action", list(ACTIONS))
def test_partitioned_by_clock(payments: Any, pg_schema: Any, ws: Any, action: str) -> None:
    engine, now = payments
    ws.policy({"app": {"adapter": "sql", "url": pg_schema.url}}, [{**RULE, **ACTIONS[action]}],
              batch_size=1)  # one record per batch: the keyset walks across partitions
    check = ws.invoke("config", "validate")
    assert check.code == 0, check.out + check.err

    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    assert due_done(plan.json()) == (4, 0, 0)  # 1, 2 (old), 3, 4 (mid)

    attach_ancient(engine, now)
    with engine.begin() as conn:
        conn.execute(sa.text("drop table payments_old"))
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert due_done(run.json()) == (4, 4, 0)  # 3, 4 (mid), 9, 10 (ancient)
    disposed = {3, 4, 9, 10}
    present = set(MID) | set(NEW) | set(ANCIENT)
    before = original(now, present)
    after = read(engine)
    if action == "anonymize":
        marked = {i for i, r in after.items() if r.pop("anonymized_at") is not None}
        assert marked == disposed
        assert after == {i: {k: v for k, v in r.items() if k != "anonymized_at"} | (
            {"email": "gone@anon.invalid"} if i in disposed else {})
            for i, r in before.items()}
    else:
        assert after == {i: r for i, r in before.items() if i not in disposed}
    entries = ledger(ws.root / "state.db", "dispose")  # one per batch of one
    assert {(e["target"], e["action"]) for e in entries} == {("payments", action)}
    refs = sorted(r for e in entries for r in e["record_refs"])
    assert refs == sorted(ref(ws, i, now) for i in disposed)
    if action == "isolate":
        check_isolated(engine, now, disposed)
        time.sleep(5.5)
        purge = ws.invoke("run", "--json")
        assert purge.code == 0, purge.err
        assert due_done(purge.json()) == (0, 0, 4)
        assert read(engine, "payments_isolated") == {}
        purged = ledger(ws.root / "state.db", "purge")
        assert sorted(r for e in purged for r in e["record_refs"]) == refs
    verify = ws.invoke("audit", "verify")
    assert verify.code == 0, verify.out + verify.err


def check_isolated(engine: sa.Engine, now: datetime, ids: set[int]) -> None:
    """``payments_isolated`` is a plain table with the parent's columns, not partitioned."""
    with engine.connect() as conn:
        kind = conn.execute(sa.text("select relkind from pg_class where oid = "
                                    "'payments_isolated'::regclass")).scalar_one()
        children = conn.execute(sa.text("select count(*) from pg_inherits where inhparent = "
                                        "'payments_isolated'::regclass")).scalar_one()
    assert (kind, children) == ("r", 0)
    iso = sa.inspect(engine)
    assert [c["name"] for c in iso.get_columns("payments_isolated")] == COLUMNS + EXTRA
    copies = read(engine, "payments_isolated")
    assert {i: {c: r[c] for c in COLUMNS} for i, r in copies.items()} == original(now, ids)
    assert {r["retentiond_rule"] for r in copies.values()} == {"old-payments"}


# -- one-column key: partitioned by range of the key -----------------------------------------
@pytest.fixture
def orders(pg_schema: Any) -> Iterator[tuple[sa.Engine, datetime]]:
    engine = pg_schema.engine()
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    with engine.begin() as conn:
        conn.execute(sa.text("""
            create table orders (id integer primary key, placed_at timestamp,
                                 note text, anonymized_at timestamp) partition by range (id)"""))
        for lo in (0, 100, 200):
            conn.execute(sa.text(f"create table orders_{lo} partition of orders "
                                 f"for values from ({lo}) to ({lo + 100})"))
        conn.execute(sa.text("insert into orders values (:i, :at, :n, null)"), [
            {"i": i, "at": None if age is None else now - timedelta(days=age), "n": f"n{i}"}
            for i, age in ORDERS.items()])
    yield engine, now
    engine.dispose()


# id -> age in days (None: no clock); rule: due after 90d.
ORDERS = {1: 400, 2: 10, 101: 200, 102: 100, 103: 30, 104: None, 201: 500, 202: 1}


@pytest.mark.parametrize("action", ["delete", "anonymize"])
def test_partitioned_by_key(orders: Any, pg_schema: Any, ws: Any, action: str) -> None:
    """The fast paths (one statement per batch, ``WITH picked ... RETURNING``) on a
    partitioned parent, with a partition added between plan and run and one dropped."""
    engine, now = orders
    extra = ({"anonymize": {"marker": "anonymized_at",
                            "columns": {"note": {"strategy": "null"}}}}
             if action == "anonymize" else {})
    ws.policy({"app": {"adapter": "sql", "url": pg_schema.url}},
              [{"id": "old-orders", "store": "app", "table": "orders", "key": "id",
                "clock": "placed_at", "dispose_after": "90d", "action": action, **extra}],
              batch_size=2)
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    [r] = plan.json()["rules"]
    assert (r["due"], r["null_clock"]) == (4, 1)  # 1, 101, 102, 201
    with engine.begin() as conn:
        conn.execute(sa.text("create table orders_300 partition of orders "
                             "for values from (300) to (400)"))
        conn.execute(sa.text("insert into orders values (301, :at, 'n301', null)"),
                     {"at": now - timedelta(days=95)})
        conn.execute(sa.text("drop table orders_200"))
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    [r] = run.json()["rules"]
    assert (r["due"], r["done"]) == (4, 4)  # 1, 101, 102, 301
    with engine.connect() as conn:
        left = {x.id: (x.note, x.anonymized_at is not None)
                for x in conn.execute(sa.text("select * from orders"))}
    disposed = {1, 101, 102, 301}
    kept = {2: "n2", 103: "n103", 104: "n104"}
    if action == "delete":
        assert left == {i: (n, False) for i, n in kept.items()}
    else:
        assert left == {**{i: (n, False) for i, n in kept.items()},
                        **dict.fromkeys(disposed, (None, True))}
    entries = ledger(ws.root / "state.db", "dispose")
    assert sorted(r for e in entries for r in e["record_refs"]) == sorted(
        record_ref(ws.secret, "app", "orders", i) for i in disposed)
    assert ws.invoke("audit", "verify").code == 0
