"""Foreign-key shapes where a chain cannot be followed to its end, and the places besides a
sweep that dispose (SPEC 10 "Foreign keys"): retentiond keeps what it cannot check.

* A CASCADE key from a table to itself (a comment thread): deleting a comment would delete its
  replies, which no rule selected; the comment is blocked by that key until its replies are
  gone. The same key met down a chain (customers <- comments <- replies) blocks too.
* Chains longer than retentiond follows (SQLite: 3 keys, its parser's nesting limit) and
  lattices of keys (each level refers to both tables above) block what they cannot check,
  in bounded statements, instead of failing the rule.
* SQLite's column-level ``REFERENCES ... ON DELETE CASCADE`` cascades (SQLAlchemy's
  reflection reports it as NO ACTION).
* A table of the same name in another schema is not guarded by a rule on this one's.
* ``backup restored`` does not CASCADE into rows a hold protects now.
* ``explain`` reports blocking for an erasure too."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

OLD = datetime(2020, 1, 1, 12, 0, 0)
NEW = datetime.now().replace(microsecond=0)
OPTS = {"mysql_engine": "InnoDB"}


def pk() -> sa.Column[int]:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=False)


def fk(cols: list[str], refs: list[str], name: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(cols, refs, name=name, ondelete=ondelete)


def rows(engine: sa.Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql)).all()]


def rule(rid: str, table: str, clock: str = "created_at", **more: Any) -> dict[str, Any]:
    return {"id": rid, "store": "app", "table": table, "key": "id", "clock": clock,
            "dispose_after": "1y", "action": "delete", **more}


def sweep(ws: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    return ({r["rule"]: r for r in plan.json()["rules"]},
            {r["rule"]: r for r in run.json()["rules"]})


@pytest.fixture
def engine(store_db: Any) -> Iterator[sa.Engine]:
    engine = store_db.engine()
    yield engine
    engine.dispose()


def seed_thread(engine: sa.Engine) -> None:
    """Customer 1 (old) wrote comments 1 (old) and 3 (old); customer 2 (new) replied to
    comment 1 with comment 2 (new); comment 4 (old) by customer 2 replies to comment 3."""
    md = sa.MetaData()
    customers = sa.Table("customers", md, pk(), sa.Column("created_at", sa.DateTime), **OPTS)
    comments = sa.Table("comments", md, pk(),
                        sa.Column("customer_id", sa.Integer, nullable=False),
                        sa.Column("parent_id", sa.Integer, nullable=True),
                        sa.Column("created_at", sa.DateTime),
                        fk(["customer_id"], ["customers.id"], "comments_customer_fk", "CASCADE"),
                        fk(["parent_id"], ["comments.id"], "comments_parent_fk", "CASCADE"),
                        **OPTS)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(customers.insert(), [{"id": 1, "created_at": OLD},
                                       {"id": 2, "created_at": NEW}])
        for row in ({"id": 1, "customer_id": 1, "parent_id": None, "created_at": OLD},
                    {"id": 2, "customer_id": 2, "parent_id": 1, "created_at": NEW},
                    {"id": 3, "customer_id": 1, "parent_id": None, "created_at": OLD},
                    {"id": 4, "customer_id": 2, "parent_id": 3, "created_at": OLD}):
            c.execute(comments.insert(), [row])


def test_a_self_referencing_cascade_never_takes_a_reply_along(engine: sa.Engine,
                                                             store_db: Any, ws: Any) -> None:
    seed_thread(engine)
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}},
              [rule("old-comments", "comments")], batch_size=2)
    plan, run = sweep(ws)
    parent_fk = {"constraint": "comments_parent_fk", "table": "comments"}
    # Comments 1 and 3 have replies: blocked by the key to itself. Reply 4 (old, no replies)
    # goes; reply 2 (new) stays.
    assert (plan["old-comments"]["due"], plan["old-comments"]["blocked"]) == (1, 2)
    assert plan["old-comments"]["blocked_by"] == [{**parent_fk, "count": 2}]
    assert (run["old-comments"]["done"], run["old-comments"]["failed"]) == (1, 0)
    assert rows(engine, "select id from comments order by id") == [(1,), (2,), (3,)]
    # The next sweep: comment 3 has no reply left and goes; comment 1 keeps its new reply.
    again = ws.invoke("run", "--json").json()["rules"][0]
    assert (again["done"], again["blocked"]) == (1, 1)
    assert rows(engine, "select id from comments order by id") == [(1,), (2,)]


def test_a_chain_into_a_self_referencing_table_blocks(engine: sa.Engine, store_db: Any,
                                                      ws: Any) -> None:
    seed_thread(engine)
    floor = rule("comment-floor", "comments", keep_for="3y", dispose_after="40y")
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}},
              [rule("old-customers", "customers"), floor])
    plan, run = sweep(ws)
    # Deleting customer 1 deletes comments 1 and 3, and through the self key replies 2 and 4
    # (customer 2's, reply 2 inside the comments' floor): customer 1 is blocked.
    got = plan["old-customers"]
    assert (got["due"], got["blocked"]) == (0, 1)
    assert run["old-customers"].get("done", 0) == 0
    assert rows(engine, "select id from comments order by id") == [(1,), (2,), (3,), (4,)]


def seed_line(engine: sa.Engine, n: int, leaf: str) -> None:
    """t0 <- t1 <- ... <- t{n} CASCADE, and leaf -> t{n} with ``leaf``; every t0 row has one
    row on every level, only t0 row 1's chain reaches a leaf row."""
    md = sa.MetaData()
    tables = [sa.Table("t0", md, pk(), sa.Column("created_at", sa.DateTime), **OPTS)]
    for i in range(1, n + 1):
        tables.append(sa.Table(f"t{i}", md, pk(), sa.Column("up", sa.Integer, nullable=False),
                               fk(["up"], [f"t{i - 1}.id"], f"t{i}_up_fk", "CASCADE"), **OPTS))
    sa.Table("leaf", md, pk(), sa.Column("up", sa.Integer, nullable=False),
             fk(["up"], [f"t{n}.id"], "leaf_up_fk", leaf), **OPTS)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(tables[0].insert(), [{"id": i, "created_at": OLD} for i in (1, 2, 3)])
        for t in tables[1:]:
            c.execute(t.insert(), [{"id": i, "up": i} for i in (1, 2, 3)])
        c.exec_driver_sql("insert into leaf (id, up) values (1, 1)")


@pytest.mark.parametrize("n", [2, 5])
def test_a_long_chain_with_a_restrict_leaf_blocks_and_never_fails(engine: sa.Engine,
                                                                  store_db: Any, ws: Any,
                                                                  n: int) -> None:
    seed_line(engine, n, "RESTRICT")
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [rule("old", "t0")])
    plan, run = sweep(ws)
    deep = n > 3 and store_db.backend == "sqlite"
    # Followed to the leaf: only row 1 is blocked, by the leaf's key. Past the depth SQLite's
    # parser allows, every row whose chain goes on is blocked by the last key followed.
    want = 3 if deep else 1
    assert (plan["old"]["due"], plan["old"]["blocked"]) == (3 - want, want)
    assert (run["old"].get("done", 0), run["old"]["failed"]) == (3 - want, 0)
    if not deep:
        assert plan["old"]["blocked_by"] == [
            {"constraint": "leaf_up_fk", "table": "leaf", "count": 1}]
        assert {c["table"]: c["count"] for c in run["old"]["cascaded"]} == {
            f"t{i}": 2 for i in range(1, n + 1)}
    assert len(rows(engine, "select id from t0")) == want


def seed_lattice(engine: sa.Engine, depth: int) -> None:
    """l0 <- a1, b1 <- a2, b2 ... (each table of a level refers to both of the level above,
    CASCADE) <- leaf (RESTRICT): the chains from l0 double with every level."""
    md = sa.MetaData()
    l0 = sa.Table("l0", md, pk(), sa.Column("created_at", sa.DateTime), **OPTS)
    above = ["l0"]
    for level in range(1, depth + 1):
        names = [f"{s}{level}" for s in ("a", "b")]
        for name in names:
            sa.Table(name, md, pk(), *(sa.Column(f"{p}_id", sa.Integer) for p in above),
                     *(fk([f"{p}_id"], [f"{p}.id"], f"{name}_{p}_fk", "CASCADE")
                       for p in above), **OPTS)
        above = names
    sa.Table("leaf", md, pk(), *(sa.Column(f"{p}_id", sa.Integer) for p in above),
             *(fk([f"{p}_id"], [f"{p}.id"], f"leaf_{p}_fk", "RESTRICT") for p in above), **OPTS)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(l0.insert(), [{"id": i, "created_at": OLD} for i in range(1, 11)])


def test_a_lattice_of_keys_stays_bounded(engine: sa.Engine, store_db: Any, ws: Any) -> None:
    seed_lattice(engine, 8)
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [rule("old", "l0")])
    sizes: list[int] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sizes.append(len(statement))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", seen)
    try:
        plan, run = sweep(ws)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", seen)
    # Nothing refers to the l0 rows: all ten go, in statements of bounded size (the chains
    # would make them grow fourfold per level: megabytes at depth 8).
    assert (plan["old"]["due"], run["old"]["done"], run["old"]["failed"]) == (10, 10, 0)
    assert max(sizes) < 40_000


def test_sqlite_column_level_references_cascade(sqlite_db: Any, ws: Any) -> None:
    engine = sqlite_db.engine()
    with engine.begin() as c:
        c.exec_driver_sql("create table customers (id integer primary key, created_at timestamp)")
        c.exec_driver_sql("create table notes (id integer primary key, customer_id integer"
                          " references customers(id) on delete cascade)")
        c.exec_driver_sql("create table visits (id integer primary key, customer_id integer"
                          " references customers on delete set null)")
        c.exec_driver_sql("insert into customers values (1, '2020-01-01 00:00:00')")
        c.exec_driver_sql("insert into notes values (1, 1), (2, 1)")
        c.exec_driver_sql("insert into visits values (1, 1)")
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}},
              [rule("old-customers", "customers")])
    plan, run = sweep(ws)
    want = [{"constraint": "notes(customer_id)", "table": "notes", "action": "delete",
             "count": 2},
            {"constraint": "visits(customer_id)", "table": "visits", "action": "set_null",
             "count": 1}]
    for doc, done in ((plan, "due"), (run, "done")):
        got = doc["old-customers"]
        assert (got[done], got["blocked"]) == (1, 0)
        assert sorted(got["cascaded"], key=str) == sorted(want, key=str)
    assert rows(engine, "select id, customer_id from visits") == [(1, None)]
    engine.dispose()


def test_a_same_named_table_in_another_schema_is_not_guarded_by_this_one(pg_schema: Any,
                                                                        ws: Any) -> None:
    engine = pg_schema.engine()
    other = f"o_{uuid.uuid4().hex[:8]}"
    with engine.begin() as c:
        c.exec_driver_sql(f"create schema {other}")
        c.exec_driver_sql("create table customers (id int primary key, created_at timestamp)")
        c.exec_driver_sql("create table payments (id int primary key, paid_at timestamp)")
        c.exec_driver_sql(f"create table {other}.payments (id int primary key, customer_id int"
                          " not null constraint op_customer_fk references customers(id)"
                          " on delete cascade)")
        c.exec_driver_sql(f"create table {other}.receipts (id int primary key, payment_id int"
                          f" not null constraint or_payment_fk references {other}.payments(id)"
                          " on delete cascade, issued_at timestamp)")
        c.exec_driver_sql("insert into customers values (1, '2020-01-01'), (2, '2020-01-01')")
        c.exec_driver_sql(f"insert into {other}.payments values (1, 1), (2, 2)")
        # Receipt 1 is inside the floor of the rule on other.receipts; receipt 2 is old.
        c.exec_driver_sql(f"insert into {other}.receipts values (1, 1, now()),"
                          " (2, 2, '2001-01-01')")
    try:
        ws.policy({"app": {"adapter": "sql", "url": pg_schema.url}}, [
            rule("old-customers", "customers"),
            # A rule on the search path's payments, which nothing refers to: not the guard
            # of other.payments (whose chain goes on to other.receipts).
            rule("local-payments", "payments", "paid_at", keep_for="40y",
                 dispose_after="40y"),
            rule("receipts-floor", f"{other}.receipts", "issued_at", keep_for="3y",
                 dispose_after="40y")])
        plan, run = sweep(ws)
        got = plan["old-customers"]
        assert (got["due"], got["blocked"]) == (1, 1)
        assert (run["old-customers"]["done"], run["old-customers"]["blocked"]) == (1, 1)
        assert got["blocked_by"] == [{"constraint": "op_customer_fk",
                                      "table": f"{other}.payments", "count": 1}]
        assert rows(engine, f"select id from {other}.receipts") == [(1,)]
        assert rows(engine, "select id from customers") == [(1,)]
    finally:
        with engine.begin() as c:
            c.exec_driver_sql(f"drop schema {other} cascade")
        engine.dispose()


def test_backup_replay_keeps_what_a_hold_protects_now(engine: sa.Engine, store_db: Any,
                                                     ws: Any) -> None:
    md = sa.MetaData()
    customers = sa.Table("customers", md, pk(), sa.Column("created_at", sa.DateTime), **OPTS)
    payments = sa.Table("payments", md, pk(),
                        sa.Column("customer_id", sa.Integer, nullable=False),
                        sa.Column("paid_at", sa.DateTime),
                        fk(["customer_id"], ["customers.id"], "payments_customer_fk",
                           "CASCADE"), **OPTS)
    md.create_all(engine)

    def restore() -> None:
        with engine.begin() as c:
            c.execute(customers.insert(), [{"id": 1, "created_at": OLD},
                                           {"id": 2, "created_at": OLD}])
            c.execute(payments.insert(), [{"id": 1, "customer_id": 1, "paid_at": OLD}])

    restore()
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [
        rule("old-customers", "customers"),
        rule("payment-ledger", "payments", "paid_at", dispose_after="40y")])
    taken = datetime.now(UTC).isoformat()
    time.sleep(1.1)
    assert ws.invoke("run").code == 0
    assert rows(engine, "select count(*) from payments") == [(0,)]
    restore()  # the backup brings both customers and the payment back
    held = ws.invoke("hold", "add", "--rule", "payment-ledger", "--reason", "litigation")
    assert held.code == 0, held.err
    replay = ws.invoke("backup", "restored", "--store", "app", "--taken-at", taken)
    assert replay.code == 0, replay.err
    # Customer 2 is deleted again; customer 1 would take the held payment with it: kept.
    assert rows(engine, "select id from customers") == [(1,)]
    assert rows(engine, "select id from payments") == [(1,)]


def test_explain_says_an_erasure_is_blocked(engine: sa.Engine, store_db: Any,
                                            ws: Any) -> None:
    md = sa.MetaData()
    customers = sa.Table("customers", md, pk(), sa.Column("created_at", sa.DateTime), **OPTS)
    rentals = sa.Table("rentals", md, pk(), sa.Column("customer_id", sa.Integer),
                       fk(["customer_id"], ["customers.id"], "rentals_customer_fk",
                          "RESTRICT"), **OPTS)
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(customers.insert(), [{"id": 1, "created_at": NEW}])
        c.execute(rentals.insert(), [{"id": 1, "customer_id": 1}])
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [
        rule("customers", "customers", subject="id", dispose_after="10y")])
    assert ws.invoke("request", "erase", "1").code == 0
    doc = ws.invoke("explain", "--rule", "customers", "--key", "1", "--json").json()
    assert doc["decision"] == "blocked"
    assert doc["blocked_by"] == [{"constraint": "rentals_customer_fk", "table": "rentals"}]
