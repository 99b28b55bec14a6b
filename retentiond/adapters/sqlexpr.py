"""SQL building blocks shared by the sql adapter's readers and mutators."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from retentiond.adapters.base import Filter, NextBatch


class Key:
    """The key columns of a table as a rule names them, and the SQL over them. A key value is
    the column's value for one column and a tuple (in the rule's column order) for several;
    batches run in ascending key order (``ORDER BY a, b``), continue with a row-value
    comparison (``(a, b) > (:a, :b)``) and select a batch with ``(a, b) IN (...)``."""

    def __init__(self, table: sa.Table, names: Sequence[str]) -> None:
        self.columns: tuple[sa.Column[Any], ...] = tuple(table.c[n] for n in names)
        self.composite = len(self.columns) > 1

    @property
    def order(self) -> list[sa.Column[Any]]:
        return list(self.columns)

    def after(self, last: Any) -> sa.ColumnElement[bool]:
        """Records with keys above ``last``."""
        if not self.composite:
            above: sa.ColumnElement[bool] = self.columns[0] > last
            return above
        return sa.tuple_(*self.columns) > sa.tuple_(*(
            sa.literal(v, c.type) for c, v in zip(self.columns, last, strict=True)))

    def eq(self, value: Any) -> sa.ColumnElement[bool]:
        if not self.composite:
            same: sa.ColumnElement[bool] = self.columns[0] == value
            return same
        return sa.and_(*(c == v for c, v in zip(self.columns, value, strict=True)))

    def value(self, row: Sequence[Any], at: int = 0) -> Any:
        """The key value in a result row whose key columns start at ``at``."""
        return tuple(row[at:at + len(self.columns)]) if self.composite else row[at]

    def values(self, rows: Sequence[Sequence[Any]]) -> list[Any]:
        return [self.value(r) for r in rows]

    def in_(self, dialect: str, keys: Sequence[Any]) -> sa.ColumnElement[bool]:
        """``key IN (keys)`` for a batch (see :func:`keys_in`). Composite keys: on PostgreSQL
        ``(a, b) IN (SELECT * FROM unnest(:a_values, :b_values))``, one array per column;
        elsewhere a row-value IN, ``(a, b) IN (VALUES (?, ?), ...)`` on SQLite."""
        if not self.composite:
            return keys_in(dialect, self.columns[0], keys)
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            arrays = [sa.bindparam(f"batch_keys_{i}", [k[i] for k in keys], type_=ARRAY(c.type))
                      for i, c in enumerate(self.columns)]
            rows = sa.func.unnest(*arrays).table_valued(
                *(f"k{i}" for i in range(len(self.columns)))).render_derived("batch")
            return sa.tuple_(*self.columns).in_(sa.select(*rows.c))
        return sa.tuple_(*self.columns).in_([tuple(k) for k in keys])


def keys_in(dialect: str, key: sa.Column[Any], keys: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``key IN (keys)`` for a batch. On PostgreSQL one array parameter, ``key = ANY(:keys)``:
    an expanding IN renders, ships, parses and plans a 5000-placeholder statement per batch."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return key == sa.any_(sa.bindparam("batch_keys", list(keys), type_=ARRAY(key.type)))
    return key.in_(list(keys))


def delete_returning(conn: Connection, table: sa.Table, key: Key,
                     where: sa.ColumnElement[bool]) -> list[Any]:
    if conn.dialect.delete_returning:
        return key.values(conn.execute(sa.delete(table).where(where).returning(*key.columns))
                          .all())
    locked = key.values(conn.execute(sa.select(*key.columns).where(where).with_for_update())
                        .all())
    if locked:
        conn.execute(sa.delete(table).where(key.in_(conn.dialect.name, locked)))
    return locked


def take_next(conn: Connection, dml: Any, key: Key, pick: sa.Select[Any]) -> NextBatch:
    """Run one fast-path batch: ``dml`` (a ``DELETE`` or ``UPDATE`` whose WHERE already carries
    the whole selection) restricted to the keys ``pick`` reads, ``RETURNING key``.

    The selection stays on the statement that disposes, not only on ``pick``: when the
    statement waits on a row lock and the other transaction commits a change that makes the
    row no longer due, PostgreSQL re-evaluates the statement's own conditions on the new row
    version (EvalPlanQual) and leaves the row alone; a condition only inside ``pick`` is not
    re-evaluated. The last key *read* comes back with the disposed ones, so a batch that lost
    rows to a concurrent writer does not end the sweep.

    PostgreSQL: one statement, ``WITH picked AS (pick), gone AS (dml WHERE key =
    ANY(ARRAY(SELECT key FROM picked)) RETURNING key) SELECT ... FROM gone UNION ALL <the last
    picked key>`` (``= ANY(ARRAY(...))`` plans as an index range, ``IN (subquery with LIMIT)``
    as a scan of the whole table); a composite key uses ``(a, b) IN (SELECT a, b FROM
    picked)``, the selection still on ``dml``. SQLite: ``dml WHERE key IN (pick)`` (``(a, b)
    IN (pick)``); a SQLite statement holds the database's write lock from its start, so what
    it read is what it disposed."""
    n = len(key.columns)
    if conn.dialect.name == "postgresql":
        picked = pick.cte("picked")
        pcols = list(picked.c)[:n]
        chosen: sa.ColumnElement[bool]
        if key.composite:
            chosen = sa.tuple_(*key.columns).in_(sa.select(*pcols))
        else:
            chosen = key.columns[0] == sa.any_(sa.func.array(sa.select(pcols[0])
                                                             .scalar_subquery()))
        gone = dml.where(chosen).returning(*key.columns).cte("gone")
        last = (sa.select(*pcols).order_by(*(c.desc() for c in pcols)).limit(1)
                .subquery("last"))
        rows = conn.execute(sa.select(*list(gone.c)[:n], sa.literal(1)).union_all(
            sa.select(*list(last.c)[:n], sa.literal(0)))).all()
        disposed = sorted(key.value(r) for r in rows if r[n] == 1)
        return NextBatch(disposed, next((key.value(r) for r in rows if r[n] == 0), None))
    chosen = (sa.tuple_(*key.columns).in_(pick) if key.composite
              else key.columns[0].in_(pick.scalar_subquery()))
    keys = sorted(key.values(conn.execute(dml.where(chosen).returning(*key.columns)).all()))
    return NextBatch(keys, keys[-1] if keys else None)


def is_disconnect(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "args", [None])[0]
    return code in (2003, 2006, 2013) or "connection" in type(exc.orig).__name__.lower()


# A condition of a WHERE clause: an expression, or a rule's own `where:` text.
Clause = sa.ColumnElement[bool] | sa.TextClause


def where_text(where: str) -> sa.TextClause:
    # Colons are escaped so that ``x::date`` or ``'a:b'`` are not taken for bind parameters.
    return sa.text(f"({where.replace(':', chr(92) + ':')})")


def bound(column: sa.Column[Any], at: datetime) -> Any:
    """A cutoff instant (aware, in the policy's zone) in the column's own representation."""
    t = column.type
    if isinstance(t, sa.DateTime):
        return at.astimezone(UTC) if t.timezone else at.replace(tzinfo=None)
    if isinstance(t, sa.Date):
        return at.date()
    if isinstance(t, sa.Integer):
        return int(at.timestamp() // 1)
    return at.replace(tzinfo=None).isoformat(sep=" ")


def as_instant(raw: Any, column: sa.Column[Any] | None, tz: Any) -> datetime | None:
    """A clock value read from the store as an aware datetime (the inverse of _bound)."""
    if raw is None or column is None:
        return None
    if isinstance(raw, datetime):
        return raw.replace(tzinfo=tz) if raw.tzinfo is None else raw
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return datetime.fromtimestamp(raw, UTC)
    if hasattr(raw, "isoformat") and not isinstance(raw, str):
        return datetime.combine(raw, datetime.min.time(), tzinfo=tz)
    value = datetime.fromisoformat(str(raw))
    return value.replace(tzinfo=tz) if value.tzinfo is None else value


def filter_expr(column: sa.Column[Any], f: Filter) -> sa.ColumnElement[bool]:
    ops: dict[str, Callable[[], sa.ColumnElement[bool]]] = {
        "eq": lambda: column == f.value,
        "in": lambda: column.in_(list(f.value)),
        "is_null": lambda: column.is_(None) if f.value else column.is_not(None),
        "le": lambda: column <= bound(column, f.value),
        "gt": lambda: column > bound(column, f.value),
    }
    return ops[f.op]()


_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")


def coerce(column: sa.Column[Any], values: Sequence[str]) -> list[Any]:
    """Subject ids arrive as text (CLI, state database); bind them in the column's type."""
    if isinstance(column.type, sa.Integer):
        # Only the canonical form: "007" is not subject 7 (the planner compares text).
        return [int(v) for v in values if _CANONICAL_INT.fullmatch(str(v))]
    return [str(v) for v in values]


def _datetime_in(column: sa.Column[Any], text: str, tz: Any) -> datetime:
    value = datetime.fromisoformat(text)
    if getattr(column.type, "timezone", False):
        return value.replace(tzinfo=tz) if value.tzinfo is None else value
    return value if value.tzinfo is None else value.astimezone(tz).replace(tzinfo=None)


def _whole(text: str) -> int:
    if not _CANONICAL_INT.fullmatch(text):
        raise ValueError(text)
    return int(text)


# (column type, parser, what the column takes), first match wins: Integer before Numeric.
_KEY_PARSERS: tuple[tuple[type[Any], Callable[[sa.Column[Any], str, Any], Any], str], ...] = (
    (sa.Integer, lambda c, t, tz: _whole(t), "a whole number"),
    (sa.DateTime, _datetime_in, "an ISO 8601 time like 2024-01-03T10:00:00"),
    (sa.Date, lambda c, t, tz: date.fromisoformat(t), "an ISO 8601 date like 2024-01-03"),
    (sa.Float, lambda c, t, tz: float(t), "a number"),
    (sa.Numeric, lambda c, t, tz: Decimal(t), "a number"),
)


def coerce_key(column: sa.Column[Any], text: str, tz: Any) -> Any:
    """One component of a composite key typed on the command line, in the column's type
    (ISO 8601 for times; a naive time on a ``timestamptz`` column is in the policy's zone).
    Raises ValueError saying what the column takes."""
    for kind, parse, what in _KEY_PARSERS:
        if isinstance(column.type, kind):
            try:
                return parse(column, text, tz)
            except (ValueError, InvalidOperation):
                raise ValueError(f"{column.name} takes {what}") from None
    return text
