"""The SQLite test of a text clock's form (``sqlclock.well_formed``), value by value: what it
accepts is exactly what SQLite's own ``datetime()`` reads in one of the four forms
retentiond compares (``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM:SS`` and either with a fraction of
up to six digits), hour below 24."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from retentiond.adapters.sqlclock import well_formed

GOOD = ["2023-01-31", "2023-01-31 23:59:59", "2023-01-31 23:59:59.1",
        "2023-01-31 23:59:59.123456", "0000-01-01 00:00:00", "9999-12-31 00:00:00.000000",
        "2023-01-31 23:59:59.999999", "2023-02-31 00:00:00.000000",
        "2023-02-31 00:00:00"]  # datetime() rolls the 31st of February over: not bad
BAD = ["2023-13-01", "2023-00-10", "2023-01-00", "2023-01-32 00:00:00", "2023-01-31 24:00:00",
       "2023-01-31 12:60:00", "2023-01-31 12:00:60", "2023-01-31 12:00:00.1234567",
       "2023-01-31 12:00:00.", "2023-01-31 12:00:00.12a", "2023-01-31T12:00:00",
       "2023-01-31 12:00:00Z", "2023-01-31 12:00", "2023-01-31x", "23-01-31", "",
       "2023-01-31 12:00:00\n", "2023-05-15 24:00:00.000000", "-0001-01-01 00:00:00",
       "2023-01-31 23:59:60.000000", "2023-01-31 12:00:00.12345x", "2023-01-31 12:00:00,123456",
       "\uff12\uff10\uff12\uff13-01-31", 20230131, 1.5]


def _accepts(values: list[object]) -> list[bool]:
    table = sa.Table("v", sa.MetaData(), sa.Column("x", sa.DateTime))
    sql = str(well_formed(table.c.x, "sqlite").compile(
        dialect=sa.create_engine("sqlite://").dialect, compile_kwargs={"literal_binds": True}))
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE v (x)")
    con.executemany("INSERT INTO v VALUES (?)", [(v,) for v in values])
    return [bool(r[0]) for r in con.execute(f"SELECT {sql} FROM v ORDER BY rowid")]


@pytest.mark.parametrize(("values", "expected"), [(GOOD, True), (BAD, False)])
def test_sqlite_text_clock_forms(values: list[object], expected: bool) -> None:
    assert _accepts(values) == [expected] * len(values)
