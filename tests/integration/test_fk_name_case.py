"""Table names that differ only in case between the policy and the catalog: SQLite compares
table names without case, as MariaDB/MySQL do with ``lower_case_table_names`` 1 or 2 (this
machine's MariaDB runs with 0, so the server side is shown on SQLite, which always folds).
A rule on ``Rentals`` and one on ``Customers`` over tables created as ``rentals`` and
``customers``: the keys are found, the rules run in key order, a guard on ``Payments``
protects its rows."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from retentiond.adapters.base import Guard
from retentiond.adapters.sql import SqlAdapter
from retentiond.adapters.sql_refs import Reference
from retentiond.testing import make_policy

OLD = datetime(2020, 1, 1)


def seed(path: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as c:
        c.exec_driver_sql("PRAGMA foreign_keys=ON")
        c.exec_driver_sql("create table customers (id integer primary key, closed_at timestamp)")
        c.exec_driver_sql("create table rentals (id integer primary key, rented_at timestamp,"
                          " customer_id integer not null, constraint rentals_customer_fk"
                          " foreign key (customer_id) references customers(id)"
                          " on delete restrict)")
        c.exec_driver_sql("create table payments (id integer primary key, paid_at timestamp,"
                          " customer_id integer, rental_id integer, constraint"
                          " payments_rental_fk foreign key (rental_id) references rentals(id)"
                          " on delete cascade)")
        c.exec_driver_sql("insert into customers values (1, '2020-01-01 00:00:00'),"
                          " (2, '2020-01-01 00:00:00')")
        c.exec_driver_sql("insert into rentals values (1, '2020-01-01 00:00:00', 1),"
                          " (2, '2020-01-01 00:00:00', 2)")
        c.exec_driver_sql("insert into payments values (1, '2020-01-01 00:00:00', 1, 1)")
    return engine


CUSTOMERS = {"id": "closed-customers", "store": "app", "table": "Customers", "key": "id",
             "clock": "closed_at", "dispose_after": "1y", "action": "delete"}
RENTALS = {"id": "old-rentals", "store": "app", "table": "Rentals", "key": "id",
           "clock": "rented_at", "dispose_after": "1y", "action": "delete"}
PAYMENTS = {"id": "payment-ledger", "store": "app", "table": "Payments", "key": "id",
            "clock": "paid_at", "dispose_after": "10y", "keep_for": "10y", "action": "delete"}


def test_names_that_differ_in_case_still_order_and_guard(tmp_path: Path, ws: Any) -> None:
    engine = seed(tmp_path / "app.db")
    ws.policy({"app": {"adapter": "sql", "url": f"sqlite:///{tmp_path / 'app.db'}"}},
              [CUSTOMERS, RENTALS, PAYMENTS])
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    order = [r["rule"] for r in plan.json()["rules"]]
    # Payments refer to rentals, rentals to customers: whatever the file order.
    assert order.index("old-rentals") < order.index("closed-customers")
    got = {r["rule"]: r for r in plan.json()["rules"]}
    # Rental 1's payment is inside the ledger's 10-year floor: the cascade would delete it.
    assert (got["old-rentals"]["due"], got["old-rentals"]["blocked"]) == (1, 1)
    assert got["old-rentals"]["blocked_by"] == [
        {"constraint": "payments_rental_fk", "table": "payments", "count": 1}]
    assert got["closed-customers"]["blocked"] == 2
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    done = {r["rule"]: r for r in run.json()["rules"]}
    assert (done["old-rentals"]["done"], done["old-rentals"]["failed"]) == (1, 0)
    # Rental 2 went first, so customer 2 is free in the same sweep.
    assert (done["closed-customers"]["done"], done["closed-customers"]["failed"]) == (1, 0)
    with engine.connect() as c:
        assert c.exec_driver_sql("select id from customers").scalars().all() == [1]
        assert c.exec_driver_sql("select id from rentals").scalars().all() == [1]
        assert c.exec_driver_sql("select id from payments").scalars().all() == [1]
    engine.dispose()


def test_a_guard_matches_a_name_that_differs_in_case(tmp_path: Path) -> None:
    seed(tmp_path / "app.db").dispose()
    policy, _ = make_policy("sql", {"url": f"sqlite:///{tmp_path / 'app.db'}"},
                            {"table": "payments", "key": "id", "clock": "paid_at"})
    adapter = SqlAdapter("contract", policy.stores["contract"], policy)
    lite = sa.table("payments", sa.column("rental_id")).alias()
    ref = Reference("payments_rental_fk", "payments", lite, ("rental_id",), ("id",), "delete")
    guard = Guard("Payments", (), (), (), ())
    assert adapter._guard_of(ref, (guard,)) is guard
    main = Guard("main.Payments", (), (), (), ())
    assert adapter._guard_of(ref, (main,)) is main  # a bare name is in the default schema
    schemas = Reference("k", "billing.payments", lite, ("rental_id",), ("id",), "delete")
    assert adapter._guard_of(schemas, (Guard("Payments", (), (), (), ()),)) is None
    assert adapter._guard_of(schemas, (Guard("ledger.Payments", (), (), (), ()),)) is None
    adapter.close()
