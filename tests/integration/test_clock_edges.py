"""Typed clock values that compare but mean no time: MariaDB zero dates ('0000-00-00', also a
zero month or day), PostgreSQL ±infinity, and a MariaDB text clock with a trailing newline
(REGEXP's ``$`` matches before it). Each is a bad clock: never due, always inside a floor,
counted ``bad_clock`` (not ``null_clock``), and explain says so; a record must never be
deleted because its clock is a placeholder for "not closed yet".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import ids

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = (NOW - timedelta(days=800)).replace(tzinfo=None)  # due under dispose_after: 1y
YOUNG = (NOW - timedelta(days=30)).replace(tzinfo=None)  # not due


def _rule(**extra: Any) -> dict[str, Any]:
    return {"id": "closed-users", "store": "app", "table": "users", "key": "id",
            "clock": "closed_at", "dispose_after": "1y", "action": "delete", **extra}


def _counts(doc: dict[str, Any]) -> dict[str, Any]:
    [rule] = doc["rules"]
    return {k: rule.get(k) for k in ("due", "done", "null_clock", "bad_clock", "error")}


def _outcome(ws: Any, key: int, rule: str = "closed-users") -> list[tuple[str, str]]:
    explained = ws.invoke("explain", "--rule", rule, "--key", str(key), "--json")
    assert explained.code == 0, (explained.out, explained.err)
    return [(v["rule"], v["outcome"]) for v in explained.json()["rules"]]


def _check_delete(ws: Any, engine: sa.Engine, url: str, *, due: int, null: int,
                  broken: list[int], remaining: set[int], text: bool = False) -> None:
    """Plan, explain, run and what is left, for a delete rule on users.closed_at."""
    ws.policy({"app": {"adapter": "sql", "url": url}}, [_rule()])
    validated = ws.invoke("config", "validate", "--json")
    assert validated.code == 0, (validated.out, validated.err)
    warnings = validated.json()["warnings"]
    assert not any("(None)" in w for w in warnings)
    what = "does not parse as YYYY-MM-DD[ HH:MM:SS[.ffffff]]" if text else (
        "is no real time (a zero date or ±infinity)")
    assert f"rules[0] (closed-users).clock: {len(broken)} records have a users.closed_at that " \
        f"{what}; they are never due by time (plan and run count them bad_clock)" in warnings
    expected = {"due": due, "done": 0, "null_clock": null, "bad_clock": len(broken),
                "error": None}
    planned = ws.invoke("plan", "--json")
    assert planned.code == 0, planned.err
    assert _counts(planned.json()) == expected
    for key in broken:
        assert _outcome(ws, key) == [("closed-users", "bad-clock")], key
    ran = ws.invoke("run", "--json")
    assert ran.code == 0, ran.err
    assert _counts(ran.json()) == {**expected, "done": due}
    assert ids(engine, "users") == remaining


# -- MariaDB zero dates -----------------------------------------------------------------------
@pytest.mark.parametrize(("ddl", "zero", "partial"), [
    ("datetime not null default '0000-00-00 00:00:00'", "0000-00-00 00:00:00",
     "2019-00-00 00:00:00"),
    ("date not null default '0000-00-00'", "0000-00-00", "2019-01-00"),
    ("datetime null", "0000-00-00 00:00:00", "2019-05-00 10:00:00"),
])
def test_mariadb_zero_dates_are_bad_clocks(mariadb_db: Any, ws: Any, ddl: str, zero: str,
                                           partial: str) -> None:
    engine = mariadb_db.engine()
    nullable = "not null" not in ddl
    with engine.begin() as conn:
        conn.execute(sa.text(f"create table users (id int primary key, closed_at {ddl})"))
        conn.execute(sa.text("insert into users (id, closed_at) values (1, :zero), "
                             "(2, :zero), (3, '2010-01-01'), (4, :partial), (5, :young)"),
                     {"zero": zero, "partial": partial, "young": YOUNG})
        if nullable:
            conn.execute(sa.text("insert into users (id, closed_at) values (6, null)"))
    _check_delete(ws, engine, mariadb_db.url, due=1, null=1 if nullable else 0,
                  broken=[1, 2, 4], remaining={1, 2, 4, 5} | ({6} if nullable else set()))
    engine.dispose()


def test_mariadb_zero_timestamp_is_a_bad_clock(mariadb_db: Any, ws: Any) -> None:
    engine = mariadb_db.engine()
    with engine.begin() as conn:
        conn.execute(sa.text("create table users (id int primary key, closed_at timestamp "
                             "not null default '0000-00-00 00:00:00')"))
        conn.execute(sa.text("insert into users (id) values (1), (2)"))
        conn.execute(sa.text("insert into users (id, closed_at) values (3, :old), "
                             "(4, :young)"), {"old": OLD, "young": YOUNG})
    _check_delete(ws, engine, mariadb_db.url, due=1, null=0, broken=[1, 2],
                  remaining={1, 2, 4})
    engine.dispose()


def test_mariadb_zero_date_is_inside_a_floor(mariadb_db: Any, ws: Any) -> None:
    """A floor whose clock is a zero date protects the record from another rule."""
    engine = mariadb_db.engine()
    with engine.begin() as conn:
        conn.execute(sa.text(
            "create table users (id int primary key, created_at datetime not null, "
            "signed date not null default '0000-00-00')"))
        conn.execute(sa.text("insert into users values (1, :old, '0000-00-00'), "
                             "(2, :old, '2010-01-01'), (3, :old, '2019-00-00')"), {"old": OLD})
    ws.policy({"app": {"adapter": "sql", "url": mariadb_db.url}}, [
        _rule(id="old-users", clock="created_at"),
        _rule(id="signed-users", clock="signed", dispose_after=None, keep_for="10y")])
    ran = ws.invoke("run", "--json")
    assert ran.code == 0, ran.err
    assert [(r["rule"], r["done"]) for r in ran.json()["rules"]] == [
        ("old-users", 1), ("signed-users", 0)]
    assert ids(engine, "users") == {1, 3}
    assert _outcome(ws, 1, "old-users") == [("old-users", "protected"),
                                            ("signed-users", "request-only")]
    engine.dispose()


def test_mariadb_text_clock_with_a_trailing_newline_is_bad(mariadb_db: Any, ws: Any) -> None:
    engine = mariadb_db.engine()
    with engine.begin() as conn:
        conn.execute(sa.text("create table users (id int primary key, "
                             "closed_at varchar(40) null)"))
        conn.execute(sa.text("insert into users values (1, :a), (2, '2010-01-01'), (3, :b), "
                             "(4, :c), (5, :d), (6, null)"),
                     {"a": "2010-01-01\n", "b": "2010-01-01 00:00:00\n",
                      "c": "2010-01-01 00:00:00.5\r\n", "d": "2010-01-01\r"})
    _check_delete(ws, engine, mariadb_db.url, due=1, null=1, broken=[1, 3, 4, 5],
                  remaining={1, 3, 4, 5, 6}, text=True)
    engine.dispose()


# -- PostgreSQL ±infinity ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["timestamp", "timestamptz", "date"])
def test_postgresql_infinity_is_a_bad_clock(pg_schema: Any, ws: Any, kind: str) -> None:
    engine = pg_schema.engine()
    with engine.begin() as conn:
        conn.execute(sa.text(f"create table users (id int primary key, closed_at {kind})"))
        conn.execute(sa.text("insert into users values (1, '-infinity'), (2, 'infinity'), "
                             "(3, :old), (4, :young), (5, null)"),
                     {"old": OLD, "young": YOUNG})
    _check_delete(ws, engine, pg_schema.url, due=1, null=1, broken=[1, 2],
                  remaining={1, 2, 4, 5})
    engine.dispose()


def test_postgresql_minus_infinity_is_inside_a_floor(pg_schema: Any, ws: Any) -> None:
    engine = pg_schema.engine()
    with engine.begin() as conn:
        conn.execute(sa.text("create table users (id int primary key, created_at timestamp "
                             "not null, signed timestamptz)"))
        conn.execute(sa.text("insert into users values (1, :old, '-infinity'), "
                             "(2, :old, '2010-01-01'), (3, :old, 'infinity')"), {"old": OLD})
    ws.policy({"app": {"adapter": "sql", "url": pg_schema.url}}, [
        _rule(id="old-users", clock="created_at"),
        _rule(id="signed-users", clock="signed", dispose_after=None, keep_for="10y")])
    validated = ws.invoke("config", "validate", "--json")
    assert validated.code == 0, (validated.out, validated.err)
    ran = ws.invoke("run", "--json")
    assert ran.code == 0, ran.err
    assert [(r["rule"], r["done"]) for r in ran.json()["rules"]] == [
        ("old-users", 1), ("signed-users", 0)]
    assert ids(engine, "users") == {1, 3}
    assert _outcome(ws, 1, "old-users") == [("old-users", "protected"),
                                            ("signed-users", "request-only")]
    engine.dispose()
