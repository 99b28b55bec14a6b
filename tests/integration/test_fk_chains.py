"""Foreign keys more than one key deep (SPEC 10 "Foreign keys"), on SQLite (foreign keys on),
PostgreSQL and MariaDB: what a CASCADE chain deletes or rewrites is counted at every level,
once per row however many chains reach it, and a RESTRICT key below a CASCADE chain blocks.

customers <- rentals (CASCADE) <- payments (CASCADE) <- receipts (SET NULL), and
payments -> customers (CASCADE) directly as well: a payment is reached through its rental and
through its customer, and its receipts through both. Every count is worked out by hand from
the rows ``seed`` writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import ledger

OLD = datetime(2020, 1, 1, 12, 0, 0)
NEW = datetime.now().replace(microsecond=0)
OLD_CUSTOMERS = {"id": "old-customers", "store": "app", "table": "customers", "key": "id",
                 "clock": "created_at", "dispose_after": "1y", "action": "delete"}


def seed(engine: sa.Engine, receipts_on_delete: str) -> None:
    """c1: rentals 1, 2; payments 1 (rental 1), 2 (rental 2); receipts 1, 2 on payment 1,
    3 on payment 2. c2: rental 3, payment 3, receipt 4. c3: no rentals. c4 is recent:
    rental 4, payment 4, receipt 5."""
    md = sa.MetaData()
    opts = {"mysql_engine": "InnoDB"}

    def pk() -> sa.Column[int]:
        return sa.Column("id", sa.Integer, primary_key=True, autoincrement=False)

    customers = sa.Table("customers", md, pk(), sa.Column("created_at", sa.DateTime), **opts)
    rentals = sa.Table("rentals", md, pk(),
                       sa.Column("customer_id", sa.Integer, nullable=False),
                       sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                               name="rentals_customer_fk",
                                               ondelete="CASCADE"), **opts)
    payments = sa.Table("payments", md, pk(),
                        sa.Column("rental_id", sa.Integer, nullable=False),
                        sa.Column("customer_id", sa.Integer, nullable=False),
                        sa.ForeignKeyConstraint(["rental_id"], ["rentals.id"],
                                                name="payments_rental_fk", ondelete="CASCADE"),
                        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                                name="payments_customer_fk",
                                                ondelete="CASCADE"), **opts)
    receipts = sa.Table("receipts", md, pk(),
                        sa.Column("payment_id", sa.Integer, nullable=True),
                        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"],
                                                name="receipts_payment_fk",
                                                ondelete=receipts_on_delete), **opts)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(customers.insert(), [{"id": i, "created_at": NEW if i == 4 else OLD}
                                       for i in range(1, 5)])
        c.execute(rentals.insert(), [{"id": 1, "customer_id": 1}, {"id": 2, "customer_id": 1},
                                     {"id": 3, "customer_id": 2}, {"id": 4, "customer_id": 4}])
        c.execute(payments.insert(), [
            {"id": 1, "rental_id": 1, "customer_id": 1},
            {"id": 2, "rental_id": 2, "customer_id": 1},
            {"id": 3, "rental_id": 3, "customer_id": 2},
            {"id": 4, "rental_id": 4, "customer_id": 4}])
        c.execute(receipts.insert(), [{"id": 1, "payment_id": 1}, {"id": 2, "payment_id": 1},
                                      {"id": 3, "payment_id": 2}, {"id": 4, "payment_id": 3},
                                      {"id": 5, "payment_id": 4}])


@pytest.fixture
def engine(store_db: Any, ws: Any) -> Iterator[sa.Engine]:
    engine = store_db.engine()
    yield engine
    engine.dispose()


def sweep(ws: Any, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    ws.policy({"app": {"adapter": "sql", "url": url}}, [OLD_CUSTOMERS], batch_size=2)
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    return plan.json()["rules"][0], run.json()["rules"][0]


def rows(engine: sa.Engine, sql: str) -> list[Any]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql)).all()]


def by_key(items: list[dict[str, Any]]) -> dict[tuple[str, str, str], int]:
    return {(c["constraint"], c["table"], c["action"]): c["count"] for c in items}


def test_every_level_of_a_cascade_chain_is_counted_once(engine: sa.Engine, store_db: Any,
                                                        ws: Any) -> None:
    seed(engine, "SET NULL")
    plan, run = sweep(ws, store_db.url)
    # c1, c2, c3 deleted: rentals 1-3; payments 1-3 (each through its rental and through its
    # customer: once per key); receipts 1-4 rewritten, each once although two chains reach it.
    want = {("rentals_customer_fk", "rentals", "delete"): 3,
            ("payments_rental_fk", "payments", "delete"): 3,
            ("payments_customer_fk", "payments", "delete"): 3,
            ("receipts_payment_fk", "receipts", "set_null"): 4}
    assert (plan["due"], plan["blocked"]) == (3, 0)
    assert by_key(plan["cascaded"]) == want
    assert (run["done"], run["failed"], run["blocked"]) == (3, 0, 0)
    assert by_key(run["cascaded"]) == want
    got: dict[tuple[str, str, str], int] = {}
    for e in ledger(ws.root / "state.db", "dispose"):
        for c in json.loads(e["detail"]).get("cascaded", []):
            at = (c["constraint"], c["table"], c["action"])
            got[at] = got.get(at, 0) + c["count"]
    assert got == want
    assert rows(engine, "select id from customers order by id") == [(4,)]
    assert rows(engine, "select id from rentals order by id") == [(4,)]
    assert rows(engine, "select id from payments order by id") == [(4,)]
    assert rows(engine, "select id, payment_id from receipts order by id") == [
        (1, None), (2, None), (3, None), (4, None), (5, 4)]


def test_a_restrict_key_below_a_cascade_chain_blocks(engine: sa.Engine, store_db: Any,
                                                     ws: Any) -> None:
    seed(engine, "RESTRICT")
    plan, run = sweep(ws, store_db.url)
    # Deleting c1 or c2 would cascade to payments that receipts refer to (RESTRICT): both
    # blocked, by the receipts key (reached by two chains, named once); c3 goes.
    receipts_fk = {"constraint": "receipts_payment_fk", "table": "receipts"}
    for doc, done in ((plan, "due"), (run, "done")):
        assert (doc[done], doc["blocked"]) == (1, 2)
        assert doc["blocked_by"] == [{**receipts_fk, "count": 2}]
        assert doc.get("cascaded", []) == []
    assert run["failed"] == 0
    assert rows(engine, "select id from customers order by id") == [(1,), (2,), (4,)]
    assert rows(engine, "select id from payments order by id") == [(1,), (2,), (3,), (4,)]
    # Once the receipts of c2's payment are gone, c2 is free.
    with engine.begin() as c:
        c.execute(sa.text("delete from receipts where payment_id = 3"))
    again = ws.invoke("run", "--json")
    assert again.code == 0, again.err
    doc = again.json()["rules"][0]
    assert (doc["done"], doc["blocked"], doc["failed"]) == (1, 1, 0)
    assert by_key(doc["cascaded"]) == {("rentals_customer_fk", "rentals", "delete"): 1,
                                       ("payments_rental_fk", "payments", "delete"): 1,
                                       ("payments_customer_fk", "payments", "delete"): 1}
    assert rows(engine, "select id from customers order by id") == [(1,), (4,)]


def test_explain_names_the_key_that_blocks_a_record(engine: sa.Engine, store_db: Any,
                                                    ws: Any) -> None:
    seed(engine, "RESTRICT")
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [OLD_CUSTOMERS])
    got = ws.invoke("explain", "--rule", "old-customers", "--key", "1", "--json")
    assert got.code == 0, got.err
    doc = got.json()
    assert doc["decision"] == "blocked"
    assert doc["blocked_by"] == [{"constraint": "receipts_payment_fk", "table": "receipts"}]
    assert "receipts_payment_fk" in doc["why"]
    free = ws.invoke("explain", "--rule", "old-customers", "--key", "3", "--json").json()
    assert (free["decision"], free["blocked_by"]) == ("dispose", [])
    text = ws.invoke("explain", "--rule", "old-customers", "--key", "2")
    assert text.code == 0, text.err
    assert "blocked by: foreign key receipts_payment_fk on receipts" in text.out
    # Nothing changed.
    assert rows(engine, "select count(*) from customers") == [(4,)]
