"""Foreign keys are part of the plan (SPEC 10 "Foreign keys"), on SQLite (foreign keys on),
PostgreSQL and MariaDB.

customers <- rentals (NO ACTION) <- payments (RESTRICT); customers <- notes (CASCADE) and
<- visits (SET NULL); invoices <- invoice_lines through a composite (series, number) key.
Every count below is worked out by hand from the rows ``seed`` writes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import MY_ADMIN
from helpers import ledger

OLD = datetime(2020, 1, 1, 12, 0, 0)
NEW = datetime.now().replace(microsecond=0)

CUSTOMERS = {"id": "closed-customers", "store": "app", "table": "customers", "key": "id",
             "subject": "id", "subject_kind": "customer", "clock": "closed_at",
             "dispose_after": "1y", "action": "delete"}
RENTALS = {"id": "old-rentals", "store": "app", "table": "rentals", "key": "id",
           "clock": "rented_at", "dispose_after": "1y", "action": "delete"}
PAYMENTS = {"id": "old-payments", "store": "app", "table": "payments", "key": "id",
            "clock": "paid_at", "dispose_after": "1y", "action": "delete"}
INVOICES = {"id": "old-invoices", "store": "app", "table": "invoices",
            "key": ["series", "number"], "clock": "issued_at", "dispose_after": "1y",
            "action": "delete"}

PAY_FK = {"constraint": "payments_rental_fk", "table": "payments"}
RENT_FK = {"constraint": "rentals_customer_fk", "table": "rentals"}
NOTES_FK = {"constraint": "notes_customer_fk", "table": "notes", "action": "delete"}
VISITS_FK = {"constraint": "visits_customer_fk", "table": "visits", "action": "set_null"}


def seed(engine: sa.Engine) -> None:
    md = sa.MetaData()
    opts = {"mysql_engine": "InnoDB"}
    customers = sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True,
                                                    autoincrement=False),
                         sa.Column("closed_at", sa.DateTime), **opts)
    rentals = sa.Table("rentals", md, sa.Column("id", sa.Integer, primary_key=True,
                                                autoincrement=False),
                       sa.Column("customer_id", sa.Integer, nullable=False),
                       sa.Column("rented_at", sa.DateTime),
                       sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                               name="rentals_customer_fk"), **opts)
    payments = sa.Table("payments", md, sa.Column("id", sa.Integer, primary_key=True,
                                                  autoincrement=False),
                        sa.Column("rental_id", sa.Integer, nullable=False),
                        sa.Column("paid_at", sa.DateTime),
                        sa.ForeignKeyConstraint(["rental_id"], ["rentals.id"],
                                                name="payments_rental_fk",
                                                ondelete="RESTRICT"), **opts)
    notes = sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True,
                                            autoincrement=False),
                     sa.Column("customer_id", sa.Integer, nullable=False),
                     sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                             name="notes_customer_fk", ondelete="CASCADE"),
                     **opts)
    visits = sa.Table("visits", md, sa.Column("id", sa.Integer, primary_key=True,
                                              autoincrement=False),
                      sa.Column("customer_id", sa.Integer, nullable=True),
                      sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                              name="visits_customer_fk", ondelete="SET NULL"),
                      **opts)
    invoices = sa.Table("invoices", md, sa.Column("series", sa.String(8), primary_key=True),
                        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
                        sa.Column("issued_at", sa.DateTime), **opts)
    lines = sa.Table("invoice_lines", md, sa.Column("id", sa.Integer, primary_key=True,
                                                    autoincrement=False),
                     sa.Column("series", sa.String(8), nullable=False),
                     sa.Column("number", sa.Integer, nullable=False),
                     sa.ForeignKeyConstraint(["series", "number"],
                                             ["invoices.series", "invoices.number"],
                                             name="lines_invoice_fk"), **opts)
    md.create_all(engine)
    with engine.begin() as c:
        # c6 closed recently: not due. The others closed long ago.
        c.execute(customers.insert(), [{"id": i, "closed_at": NEW if i == 6 else OLD}
                                       for i in range(1, 7)])
        c.execute(rentals.insert(), [
            {"id": 1, "customer_id": 1, "rented_at": OLD},
            {"id": 2, "customer_id": 1, "rented_at": OLD},
            {"id": 3, "customer_id": 2, "rented_at": OLD},
            {"id": 4, "customer_id": 3, "rented_at": NEW},
            {"id": 5, "customer_id": 4, "rented_at": OLD},
            {"id": 6, "customer_id": 6, "rented_at": OLD}])
        c.execute(payments.insert(), [{"id": 1, "rental_id": 1, "paid_at": OLD},
                                      {"id": 2, "rental_id": 3, "paid_at": NEW}])
        c.execute(notes.insert(), [{"id": 1, "customer_id": 1}, {"id": 2, "customer_id": 1},
                                   {"id": 3, "customer_id": 5}, {"id": 4, "customer_id": 6},
                                   {"id": 5, "customer_id": 4}])
        c.execute(visits.insert(), [{"id": 1, "customer_id": 2}, {"id": 2, "customer_id": 5},
                                    {"id": 3, "customer_id": 6}])
        c.execute(invoices.insert(), [{"series": s, "number": n, "issued_at": OLD}
                                      for s in ("A", "B") for n in (1, 2)])
        # (A, 1) and (B, 2) are referenced; a key that compared one column would block all.
        c.execute(lines.insert(), [{"id": 1, "series": "A", "number": 1},
                                   {"id": 2, "series": "B", "number": 2}])


@pytest.fixture
def store(store_db: Any, ws: Any) -> Iterator[sa.Engine]:
    engine = store_db.engine()
    seed(engine)
    yield engine
    engine.dispose()


def use(ws: Any, url: str, *rules: dict[str, Any]) -> None:
    ws.policy({"app": {"adapter": "sql", "url": url}}, list(rules), batch_size=2)


def rules_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["rule"]: r for r in doc["rules"]}


def ids(engine: sa.Engine, table: str, col: str = "id") -> list[Any]:
    with engine.connect() as c:
        return sorted(c.execute(sa.text(f"select {col} from {table}")).scalars())


def test_restrict_blocks_and_cascades_count(store: sa.Engine, store_db: Any, ws: Any) -> None:
    use(ws, store_db.url, CUSTOMERS, RENTALS)
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    doc = plan.json()
    # Rentals refer to customers: their rule runs first, whatever the file's order.
    assert [r["rule"] for r in doc["rules"]] == ["old-rentals", "closed-customers"]
    got = rules_of(doc)
    # Rentals 1..3, 5, 6 are old; 1 and 3 have payments.
    assert got["old-rentals"]["due"] == 3
    assert got["old-rentals"]["blocked"] == 2
    assert got["old-rentals"]["blocked_by"] == [{**PAY_FK, "count": 2}]
    # As the data stands, customers 1-4 have rentals: only 5 is free (notes 3, visit 2).
    assert got["closed-customers"]["due"] == 1
    assert got["closed-customers"]["blocked"] == 4
    assert got["closed-customers"]["blocked_by"] == [{**RENT_FK, "count": 4}]
    assert sorted(got["closed-customers"]["cascaded"], key=str) == sorted(
        [{**NOTES_FK, "count": 1}, {**VISITS_FK, "count": 1}], key=str)
    text = ws.invoke("plan")
    assert "old-rentals -> closed-customers" in text.out
    assert "may unblock some" in " ".join(text.out.split())

    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    got = rules_of(run.json())
    assert (got["old-rentals"]["done"], got["old-rentals"]["failed"],
            got["old-rentals"]["blocked"]) == (3, 0, 2)
    # Rentals 2, 5, 6 are gone: customer 4 is free now; 1, 2 and 3 still have rentals.
    assert (got["closed-customers"]["done"], got["closed-customers"]["failed"],
            got["closed-customers"]["blocked"]) == (2, 0, 3)
    assert got["closed-customers"]["blocked_by"] == [{**RENT_FK, "count": 3}]
    assert sorted(got["closed-customers"]["cascaded"], key=str) == sorted(
        [{**NOTES_FK, "count": 2}, {**VISITS_FK, "count": 1}], key=str)
    assert ids(store, "customers") == [1, 2, 3, 6]
    assert ids(store, "rentals") == [1, 3, 4]
    assert ids(store, "notes") == [1, 2, 4]
    with store.connect() as c:
        assert c.execute(sa.text("select id, customer_id from visits order by id")).all() == [
            (1, 2), (2, None), (3, 6)]
    entries = [e for e in ledger(ws.root / "state.db", "dispose")
               if e["rule"] == "closed-customers"]
    cascaded: dict[tuple[str, str, str], int] = {}
    for e in entries:
        for c in json.loads(e["detail"]).get("cascaded", []):
            at = (c["constraint"], c["table"], c["action"])
            cascaded[at] = cascaded.get(at, 0) + c["count"]
    assert cascaded == {("notes_customer_fk", "notes", "delete"): 2,
                        ("visits_customer_fk", "visits", "set_null"): 1}
    assert sum(len(e["record_refs"]) for e in entries) == 2


def test_explain_says_a_referenced_record_is_blocked(store: sa.Engine, store_db: Any,
                                                     ws: Any) -> None:
    use(ws, store_db.url, CUSTOMERS, RENTALS)
    # Rental 1 is old and a payment refers to it (RESTRICT); rental 2 is old and free.
    blocked = ws.invoke("explain", "--rule", "old-rentals", "--key", "1", "--json").json()
    assert (blocked["decision"], blocked["blocked_by"]) == ("blocked", [PAY_FK])
    free = ws.invoke("explain", "--rule", "old-rentals", "--key", "2", "--json").json()
    assert (free["decision"], free["blocked_by"]) == ("dispose", [])
    # Customer 5 has no rentals but notes (CASCADE) and a visit (SET NULL): not blocked.
    c5 = ws.invoke("explain", "--rule", "closed-customers", "--key", "5", "--json").json()
    assert (c5["decision"], c5["blocked_by"]) == ("dispose", [])
    c1 = ws.invoke("explain", "--rule", "closed-customers", "--key", "1", "--json").json()
    assert (c1["decision"], c1["blocked_by"]) == ("blocked", [RENT_FK])


def rentals_trigger(backend: str) -> list[str]:
    """A BEFORE DELETE trigger on rentals raising for rental 5 only."""
    if backend == "sqlite":
        return ["create trigger rentals_guard before delete on rentals when old.id = 5 "
                "begin select raise(abort, 'kept'); end"]
    if backend == "postgresql":
        return ["create function rentals_guard() returns trigger language plpgsql as $$ "
                "begin if old.id = 5 then raise exception 'kept'; end if; return old; end $$",
                "create trigger rentals_guard before delete on rentals for each row "
                "execute function rentals_guard()"]
    return ["create trigger rentals_guard before delete on rentals for each row begin "
            "if old.id = 5 then signal sqlstate '45000' set message_text = 'kept'; end if; end"]


def test_a_trigger_fails_its_rows_alone_beside_blocked_ones(store: sa.Engine, store_db: Any,
                                                            ws: Any) -> None:
    with store.begin() as c:
        for sql in rentals_trigger(store_db.backend):
            c.execute(sa.text(sql))
    use(ws, store_db.url, CUSTOMERS, RENTALS)
    run = ws.invoke("run", "--json")
    assert run.code == 1, run.err  # a failed record
    got = rules_of(run.json())["old-rentals"]
    # Old rentals 1, 2, 3, 5, 6: 1 and 3 blocked by payments (never attempted), 5 refused by
    # the trigger (failed alone), 2 and 6 disposed.
    assert (got["done"], got["failed"], got["blocked"]) == (2, 1, 2)
    assert got["blocked_by"] == [{**PAY_FK, "count": 2}]
    assert ids(store, "rentals") == [1, 3, 4, 5]
    # The customers rule still ran after it: customer 5 (no rentals) went; customer 4's
    # rental is the one that failed, so it stays blocked with customers 1, 2 and 3.
    cust = rules_of(run.json())["closed-customers"]
    assert (cust["done"], cust["failed"], cust["blocked"]) == (1, 0, 4)
    assert ids(store, "customers") == [1, 2, 3, 4, 6]


def test_a_rule_on_payments_runs_first_and_unblocks(store: sa.Engine, store_db: Any,
                                                    ws: Any) -> None:
    use(ws, store_db.url, CUSTOMERS, RENTALS, PAYMENTS)
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    assert [r["rule"] for r in plan.json()["rules"]] == [
        "old-payments", "old-rentals", "closed-customers"]
    assert rules_of(plan.json())["old-rentals"]["blocked"] == 2  # the data as it stands
    assert "old-payments -> old-rentals -> closed-customers" in ws.invoke("plan").out
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    got = rules_of(run.json())
    assert got["old-payments"]["done"] == 1
    # Payment 1 went first: rental 1 is free; rental 3 keeps its recent payment.
    assert (got["old-rentals"]["done"], got["old-rentals"]["blocked"]) == (4, 1)
    assert ids(store, "rentals") == [3, 4]
    assert (got["closed-customers"]["done"], got["closed-customers"]["blocked"]) == (3, 2)
    assert ids(store, "customers") == [2, 3, 6]


def test_composite_key_blocks_only_the_pairs_referenced(store: sa.Engine, store_db: Any,
                                                         ws: Any) -> None:
    use(ws, store_db.url, INVOICES)
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    [got] = run.json()["rules"]
    assert (got["done"], got["failed"], got["blocked"]) == (2, 0, 2)
    assert got["blocked_by"] == [{"constraint": "lines_invoice_fk", "table": "invoice_lines",
                                  "count": 2}]
    with store.connect() as c:
        assert sorted(c.execute(sa.text("select series, number from invoices")).all()) == [
            ("A", 1), ("B", 2)]


def test_validate_names_the_keys(store: sa.Engine, store_db: Any, ws: Any) -> None:
    use(ws, store_db.url, CUSTOMERS, RENTALS)
    res = ws.invoke("config", "validate")
    assert res.code == 0, res.err
    warned = [line for line in res.err.splitlines() if line.startswith("warning:")]
    assert any("rules[0] (closed-customers)" in w and "rentals_customer_fk on rentals" in w
               and "blocks" in w for w in warned), res.err
    assert any("notes_customer_fk on notes" in w and "deletes" in w for w in warned), res.err
    assert any("visits_customer_fk on visits" in w and "NULL" in w for w in warned), res.err
    assert any("rules[1] (old-rentals)" in w and "payments_rental_fk on payments" in w
               for w in warned), res.err


def test_an_erasure_request_with_blocked_records_stays_open(store: sa.Engine, store_db: Any,
                                                            ws: Any) -> None:
    use(ws, store_db.url, {**CUSTOMERS, "dispose_after": None})
    blocked = ws.invoke("request", "erase", "1", "--kind", "customer", "--json").json()["id"]
    free = ws.invoke("request", "erase", "5", "--kind", "customer", "--json").json()["id"]
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    [got] = run.json()["rules"]
    assert (got["done"], got["failed"], got["blocked"]) == (1, 0, 1)
    status = {q["id"]: q["status"] for q in run.json()["requests"]}
    assert status[free] == "done"
    assert status[blocked] == "open"
    listed = ws.invoke("request", "list", "--open")
    assert "1 blocked by foreign keys (rentals_customer_fk on rentals)" in listed.out
    assert ids(store, "customers") == [1, 2, 3, 4, 6]


def test_a_partitioned_referencing_table_is_named_once(pg_schema: Any, ws: Any) -> None:
    """PostgreSQL copies a partitioned table's key onto every partition; the records it
    blocks are named once, by the parent table and its constraint."""
    engine = pg_schema.engine()
    with engine.begin() as c:
        for ddl in (
                "create table rentals (id int primary key, rented_at timestamp)",
                "create table pay_parts (id int, rental_id int not null, paid_at timestamp "
                "not null, constraint pay_parts_rental_fk foreign key (rental_id) references "
                "rentals (id) on delete restrict) partition by range (paid_at)",
                "create table pay_parts_old partition of pay_parts for values from "
                "('2000-01-01') to ('2021-01-01')",
                "create table pay_parts_new partition of pay_parts for values from "
                "('2021-01-01') to (maxvalue)",
                "insert into rentals select i, '2020-01-01' from generate_series(1, 5) i",
                "insert into pay_parts values (1, 1, '2020-06-01'), (2, 1, '2024-06-01'), "
                "(3, 3, '2024-06-01')"):
            c.exec_driver_sql(ddl)
    use(ws, pg_schema.url, RENTALS)
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    [got] = plan.json()["rules"]
    assert (got["due"], got["blocked"]) == (3, 2)
    assert got["blocked_by"] == [{"constraint": "pay_parts_rental_fk", "table": "pay_parts",
                                  "count": 2}]
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    [got] = run.json()["rules"]
    assert (got["done"], got["failed"], got["blocked"]) == (3, 0, 2)
    assert ids(engine, "rentals") == [1, 3]
    engine.dispose()


def test_isolate_is_blocked_and_cascades_like_delete(store: sa.Engine, store_db: Any,
                                                     ws: Any) -> None:
    use(ws, store_db.url, {**CUSTOMERS, "action": "isolate", "isolate": {"for": "30d"}},
        RENTALS)
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    got = rules_of(run.json())["closed-customers"]
    assert (got["done"], got["failed"], got["blocked"]) == (2, 0, 3)
    assert sorted(got["cascaded"], key=str) == sorted(
        [{**NOTES_FK, "count": 2}, {**VISITS_FK, "count": 1}], key=str)
    assert ids(store, "customers") == [1, 2, 3, 6]
    assert ids(store, "customers_isolated") == [4, 5]


# -- CASCADE / SET NULL from a table whose own rules protect rows (SPEC 3.2) -----------------
# rentals 1-5 are old (due), 6 is recent. Payments refer to rentals 1, 2, 3 (twice) and 4:
# p2 and p4 are recent, p5 has no clock. Subjects: the customers 10..40.
LEDGER = {"id": "payment-ledger", "store": "app", "table": "payments", "key": "id",
          "subject": "customer_id", "subject_kind": "customer", "clock": "paid_at",
          "dispose_after": "10y", "action": "delete"}
CASCADE_FK = {"constraint": "payments_rental_fk", "table": "payments"}


def seed_cascading(engine: sa.Engine, ondelete: str) -> None:
    md = sa.MetaData()
    opts = {"mysql_engine": "InnoDB"}
    rentals = sa.Table("rentals", md, sa.Column("id", sa.Integer, primary_key=True,
                                                autoincrement=False),
                       sa.Column("rented_at", sa.DateTime), **opts)
    payments = sa.Table("payments", md, sa.Column("id", sa.Integer, primary_key=True,
                                                  autoincrement=False),
                        sa.Column("rental_id", sa.Integer, nullable=True),
                        sa.Column("customer_id", sa.Integer, nullable=False),
                        sa.Column("paid_at", sa.DateTime, nullable=True),
                        sa.ForeignKeyConstraint(["rental_id"], ["rentals.id"],
                                                name="payments_rental_fk", ondelete=ondelete),
                        **opts)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(rentals.insert(), [{"id": i, "rented_at": NEW if i == 6 else OLD}
                                     for i in range(1, 7)])
        c.execute(payments.insert(), [
            {"id": 1, "rental_id": 1, "customer_id": 10, "paid_at": OLD},
            {"id": 2, "rental_id": 2, "customer_id": 20, "paid_at": NEW},
            {"id": 3, "rental_id": 3, "customer_id": 30, "paid_at": OLD},
            {"id": 4, "rental_id": 3, "customer_id": 30, "paid_at": NEW},
            {"id": 5, "rental_id": 4, "customer_id": 40, "paid_at": None}])


def payments_of(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(
            "select id, rental_id from payments order by id")).all()]


ALL_PAYMENTS = [(1, 1), (2, 2), (3, 3), (4, 3), (5, 4)]


def plan_and_run(ws: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    return rules_of(plan.json())["old-rentals"], rules_of(run.json())["old-rentals"]


@pytest.mark.parametrize("ondelete", ["CASCADE", "SET NULL"])
def test_a_hold_on_the_referencing_rule_blocks_the_cascade(store_db: Any, ws: Any,
                                                           ondelete: str) -> None:
    engine = store_db.engine()
    seed_cascading(engine, ondelete)
    use(ws, store_db.url, RENTALS, LEDGER)
    assert ws.invoke("hold", "add", "--rule", "payment-ledger", "--reason", "audit").code == 0
    plan, run = plan_and_run(ws)
    # Rentals 1-4 are referenced by held payments: blocked; rental 5 is free.
    assert (plan["due"], plan["blocked"]) == (1, 4)
    assert plan["blocked_by"] == [{**CASCADE_FK, "count": 4}]
    assert plan.get("cascaded", []) == []
    assert (run["done"], run["failed"], run["blocked"]) == (1, 0, 4)
    assert run["blocked_by"] == [{**CASCADE_FK, "count": 4}]
    assert run.get("cascaded", []) == []
    assert ids(engine, "rentals") == [1, 2, 3, 4, 6]
    assert payments_of(engine) == ALL_PAYMENTS
    engine.dispose()


@pytest.mark.parametrize("protection", ["hold", "on_erasure_keep"])
def test_a_subject_hold_blocks_only_its_payments_rental(store_db: Any, ws: Any,
                                                        protection: str) -> None:
    engine = store_db.engine()
    seed_cascading(engine, "CASCADE")
    if protection == "hold":
        use(ws, store_db.url, RENTALS, LEDGER)
        done = ws.invoke("hold", "add", "--subject", "20", "--kind", "customer", "--reason",
                         "x")
    else:  # an erasure request for customer 20, whose payments a legal obligation keeps
        use(ws, store_db.url, RENTALS, {**LEDGER, "on_erasure": "keep",
                                        "legal_basis": "tax law"})
        done = ws.invoke("request", "erase", "20", "--kind", "customer")
    assert done.code == 0, done.err
    plan, run = plan_and_run(ws)
    assert (plan["due"], plan["blocked"]) == (4, 1)
    assert plan["blocked_by"] == [{**CASCADE_FK, "count": 1}]
    assert plan["cascaded"] == [{**CASCADE_FK, "action": "delete", "count": 4}]
    assert (run["done"], run["failed"], run["blocked"]) == (4, 0, 1)
    assert run["blocked_by"] == [{**CASCADE_FK, "count": 1}]
    assert run["cascaded"] == [{**CASCADE_FK, "action": "delete", "count": 4}]
    assert ids(engine, "rentals") == [2, 6]
    assert payments_of(engine) == [(2, 2)]
    engine.dispose()


def test_a_floor_on_the_referencing_rule_blocks_the_cascade(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    seed_cascading(engine, "CASCADE")
    use(ws, store_db.url, RENTALS, {**LEDGER, "keep_for": "1y"})
    plan, run = plan_and_run(ws)
    # p2 and p4 are recent and p5 has no clock: inside the floor, rentals 2, 3, 4 blocked.
    # Rentals 1 and 5 go, and p1 (past the floor, not yet due) cascades.
    assert (plan["due"], plan["blocked"]) == (2, 3)
    assert plan["blocked_by"] == [{**CASCADE_FK, "count": 3}]
    assert plan["cascaded"] == [{**CASCADE_FK, "action": "delete", "count": 1}]
    assert (run["done"], run["failed"], run["blocked"]) == (2, 0, 3)
    assert run["blocked_by"] == [{**CASCADE_FK, "count": 3}]
    assert run["cascaded"] == [{**CASCADE_FK, "action": "delete", "count": 1}]
    assert ids(engine, "rentals") == [2, 3, 4, 6]
    assert payments_of(engine) == [(2, 2), (3, 3), (4, 3), (5, 4)]
    engine.dispose()


# -- foreign keys from another schema of the store, and names with or without a schema -------
def test_fk_order_compares_names_in_the_default_schema(store: sa.Engine, store_db: Any,
                                                       ws: Any) -> None:
    """A rule naming ``<default schema>.customers`` still waits for the rule on the bare
    ``rentals`` that refers to it."""
    schema = sa.inspect(store).default_schema_name
    use(ws, store_db.url, {**CUSTOMERS, "table": f"{schema}.customers"}, RENTALS)
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    assert [r["rule"] for r in plan.json()["rules"]] == ["old-rentals", "closed-customers"]


def test_fk_order_normalizes_both_sides() -> None:
    from retentiond.planner import fk_order
    from retentiond.policy.model import Rule

    def rule(i: str, table: str) -> Rule:
        return Rule.model_validate({"id": i, "store": "app", "table": table, "key": "id",
                                    "clock": "at", "dispose_after": "1y", "action": "delete"})

    items, lines = rule("items", "items"), rule("lines", "public.lines")
    refs = {"items": frozenset({"lines"}), "lines": frozenset()}
    assert fk_order([items, lines], refs, {"app": "public"}) == [lines, items]
    refs = {"items": frozenset({"public.lines"}), "lines": frozenset()}
    assert fk_order([items, rule("lines", "lines")], refs, {"app": "public"})[0].id == "lines"
    # Another schema's table of the same name is not the rule's.
    refs = {"items": frozenset({"other.lines"}), "lines": frozenset()}
    assert fk_order([items, lines], refs, {"app": "public"}) == [items, lines]


NODES = {"id": "old-nodes", "store": "app", "table": "nodes", "key": "id",
         "clock": "created_at", "dispose_after": "1y", "action": "delete"}


@pytest.fixture
def pg_other(pg_schema: Any) -> Iterator[tuple[sa.Engine, str]]:
    """The test's schema with nodes 1 and 2 (both due), and a second schema of its own."""
    engine = pg_schema.engine()
    other = f"o_{uuid.uuid4().hex[:12]}"
    with engine.begin() as c:
        c.exec_driver_sql(f'create schema "{other}"')
        c.exec_driver_sql("create table nodes (id int primary key, created_at timestamp)")
        c.exec_driver_sql("insert into nodes values (1, '2020-01-01'), (2, '2020-01-01')")
    try:
        yield engine, other
    finally:
        with engine.begin() as c:
            c.exec_driver_sql(f'drop schema "{other}" cascade')
        engine.dispose()


def test_a_key_from_another_schema_blocks_pg(pg_other: tuple[sa.Engine, str],
                                             pg_schema: Any, ws: Any) -> None:
    engine, other = pg_other
    schema = sa.inspect(engine).default_schema_name
    with engine.begin() as c:
        c.exec_driver_sql(f'create table "{other}".refs (a int references "{schema}".nodes(id))')
        c.exec_driver_sql(f'insert into "{other}".refs values (1)')
    use(ws, pg_schema.url, NODES)
    by = [{"constraint": "refs_a_fkey", "table": f"{other}.refs", "count": 1}]
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    [got] = plan.json()["rules"]
    assert (got["due"], got["blocked"], got["blocked_by"]) == (1, 1, by)
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    [got] = run.json()["rules"]
    assert (got["done"], got["failed"], got["blocked"], got["blocked_by"]) == (1, 0, 1, by)
    assert ids(engine, "nodes") == [1]


def test_a_cascade_from_another_schema_is_counted_pg(pg_other: tuple[sa.Engine, str],
                                                     pg_schema: Any, ws: Any) -> None:
    engine, other = pg_other
    schema = sa.inspect(engine).default_schema_name
    with engine.begin() as c:
        c.exec_driver_sql(f'create table "{other}".refs (id int primary key, a int '
                          f'references "{schema}".nodes(id) on delete cascade)')
        c.exec_driver_sql(f'insert into "{other}".refs values (1, 1), (2, 1), (3, 2)')
    use(ws, pg_schema.url, NODES)
    cascaded = [{"constraint": "refs_a_fkey", "table": f"{other}.refs", "action": "delete",
                 "count": 3}]
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    [got] = plan.json()["rules"]
    assert (got["due"], got["blocked"], got["cascaded"]) == (2, 0, cascaded)
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    [got] = run.json()["rules"]
    assert (got["done"], got["failed"], got["cascaded"]) == (2, 0, cascaded)
    assert ids(engine, "nodes") == []
    assert ids(engine, f'"{other}".refs') == []


def test_a_key_from_another_database_blocks_mariadb(mariadb_db: Any, ws: Any) -> None:
    engine = mariadb_db.engine()
    schema = sa.inspect(engine).default_schema_name
    other = f"rtd_o_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(MY_ADMIN)
    with admin.begin() as c:
        c.exec_driver_sql(f"create database `{other}`")
    try:
        with engine.begin() as c:
            c.exec_driver_sql("create table nodes (id int primary key, created_at datetime) "
                              "engine=InnoDB")
            c.exec_driver_sql("insert into nodes values (1, '2020-01-01'), (2, '2020-01-01')")
            c.exec_driver_sql(f"create table `{other}`.refs (a int, constraint refs_a_fk "
                              f"foreign key (a) references `{schema}`.nodes (id) on delete "
                              "restrict) engine=InnoDB")
            c.exec_driver_sql(f"insert into `{other}`.refs values (1)")
        use(ws, mariadb_db.url, NODES)
        by = [{"constraint": "refs_a_fk", "table": f"{other}.refs", "count": 1}]
        plan = ws.invoke("plan", "--json")
        assert plan.code == 0, plan.err
        [got] = plan.json()["rules"]
        assert (got["due"], got["blocked"], got["blocked_by"]) == (1, 1, by)
        run = ws.invoke("run", "--json")
        assert run.code == 0, run.err
        [got] = run.json()["rules"]
        assert (got["done"], got["failed"], got["blocked"], got["blocked_by"]) == (1, 0, 1, by)
        assert ids(engine, "nodes") == [1]
    finally:
        engine.dispose()
        with admin.begin() as c:
            c.exec_driver_sql(f"drop database if exists `{other}`")
        admin.dispose()


def test_a_rule_on_one_partition_of_a_referred_table_sees_its_keys(pg_schema: Any,
                                                                   ws: Any) -> None:
    """A key to a partitioned table has a copy per partition on the referred side (its
    conparentid is the key's); a rule naming one partition must see that copy, or a cascade
    would take rows a hold protects."""
    engine = pg_schema.engine()
    with engine.begin() as c:
        for ddl in (
                "create table events (id int not null, yr int not null, happened_at timestamp, "
                "primary key (id, yr)) partition by list (yr)",
                "create table events_2019 partition of events for values in (2019)",
                "create table notes (id int primary key, ev int, yr int, customer_id int, "
                "noted_at timestamp, constraint notes_event_fk foreign key (ev, yr) "
                "references events (id, yr) on delete cascade)",
                "insert into events values (1, 2019, '2019-05-01'), (2, 2019, '2019-05-01')",
                "insert into notes values (1, 1, 2019, 10, '2019-05-02')"):
            c.exec_driver_sql(ddl)
    use(ws, pg_schema.url,
        {"id": "old-events", "store": "app", "table": "events_2019", "key": ["id", "yr"],
         "clock": "happened_at", "dispose_after": "1y", "action": "delete"},
        {"id": "notes", "store": "app", "table": "notes", "key": "id", "clock": "noted_at",
         "dispose_after": "10y", "action": "delete"})
    assert ws.invoke("hold", "add", "--rule", "notes", "--reason", "case").code == 0
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    got = rules_of(run.json())["old-events"]
    assert (got["done"], got["blocked"]) == (1, 1)
    assert [b["count"] for b in got["blocked_by"]] == [1]
    with engine.connect() as c:
        assert c.exec_driver_sql("select id from notes").scalars().all() == [1]
        assert c.exec_driver_sql("select id from events order by id").scalars().all() == [1]
    engine.dispose()


OLD_CUSTOMERS = {"id": "old-customers", "store": "app", "table": "customers", "key": "id",
                 "clock": "created_at", "dispose_after": "1y", "action": "delete"}
CHAIN_FK = {"constraint": "rentals_customer_fk", "table": "rentals"}


def seed_chain(engine: sa.Engine) -> None:
    """customers <- rentals (CASCADE) <- payments (CASCADE): c6 is recent, c4 has no
    rentals, c5's rental has no payment; c1, c2, c3 have a payment through a rental."""
    md = sa.MetaData()
    opts = {"mysql_engine": "InnoDB"}
    customers = sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True,
                                                    autoincrement=False),
                         sa.Column("created_at", sa.DateTime), **opts)
    rentals = sa.Table("rentals", md, sa.Column("id", sa.Integer, primary_key=True,
                                                autoincrement=False),
                       sa.Column("customer_id", sa.Integer, nullable=False),
                       sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                               name="rentals_customer_fk",
                                               ondelete="CASCADE"), **opts)
    payments = sa.Table("payments", md, sa.Column("id", sa.Integer, primary_key=True,
                                                  autoincrement=False),
                        sa.Column("rental_id", sa.Integer, nullable=False),
                        sa.Column("customer_id", sa.Integer, nullable=False),
                        sa.Column("paid_at", sa.DateTime, nullable=True),
                        sa.ForeignKeyConstraint(["rental_id"], ["rentals.id"],
                                                name="payments_rental_fk", ondelete="CASCADE"),
                        **opts)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(customers.insert(), [{"id": i, "created_at": NEW if i == 6 else OLD}
                                       for i in range(1, 7)])
        c.execute(rentals.insert(), [
            {"id": 1, "customer_id": 1}, {"id": 2, "customer_id": 1},
            {"id": 3, "customer_id": 2}, {"id": 4, "customer_id": 3},
            {"id": 5, "customer_id": 5}, {"id": 6, "customer_id": 6}])
        c.execute(payments.insert(), [
            {"id": 1, "rental_id": 1, "customer_id": 1, "paid_at": OLD},
            {"id": 2, "rental_id": 3, "customer_id": 2, "paid_at": OLD},
            {"id": 3, "rental_id": 4, "customer_id": 3, "paid_at": OLD}])


@pytest.mark.parametrize(("hold", "blocked", "rentals", "payments"), [
    # A hold on the whole ledger: c1, c2, c3 have a held payment two keys down.
    (("--rule", "payment-ledger"), [1, 2, 3], [1, 2, 3, 4, 6], [1, 2, 3]),
    # A hold on customer 2's payments: only c2 blocked; c1's and c3's payments cascade.
    (("--subject", "2", "--kind", "customer"), [2], [3, 6], [2]),
])
def test_a_hold_two_cascades_down_blocks_the_parent(store_db: Any, ws: Any,
                                                    hold: tuple[str, ...],
                                                    blocked: list[int], rentals: list[int],
                                                    payments: list[int]) -> None:
    engine = store_db.engine()
    seed_chain(engine)
    use(ws, store_db.url, OLD_CUSTOMERS, LEDGER)
    assert ws.invoke("hold", "add", *hold, "--reason", "audit").code == 0
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    # The rentals of the deleted customers, and their payments two keys down.
    cascaded = [{**CHAIN_FK, "action": "delete", "count": 6 - len(rentals)}]
    if len(payments) < 3:
        cascaded.append({"constraint": "payments_rental_fk", "table": "payments",
                         "action": "delete", "count": 3 - len(payments)})
    for doc, due in ((plan.json(), "due"), (run.json(), "done")):
        got = rules_of(doc)["old-customers"]
        assert (got[due], got["blocked"]) == (5 - len(blocked), len(blocked))
        assert got["blocked_by"] == [{**CHAIN_FK, "count": len(blocked)}]
        assert got["cascaded"] == cascaded
    assert rules_of(run.json())["old-customers"]["failed"] == 0
    assert ids(engine, "customers") == [*blocked, 6]
    assert ids(engine, "rentals") == rentals
    assert ids(engine, "payments") == payments
    # The payments rule disposes nothing (dispose_after 10y): payments left untouched.
    assert rules_of(run.json())["payment-ledger"].get("done", 0) == 0
    engine.dispose()
