"""SQL building blocks shared by the sql adapter's readers and mutators."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from retentiond.adapters.base import Filter, NextBatch


def keys_in(dialect: str, key: sa.Column[Any], keys: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``key IN (keys)`` for a batch. On PostgreSQL one array parameter, ``key = ANY(:keys)``:
    an expanding IN renders, ships, parses and plans a 5000-placeholder statement per batch."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return key == sa.any_(sa.bindparam("batch_keys", list(keys), type_=ARRAY(key.type)))
    return key.in_(list(keys))


def delete_returning(conn: Connection, table: sa.Table, key: sa.Column[Any],
                     where: sa.ColumnElement[bool]) -> list[Any]:
    if conn.dialect.delete_returning:
        return list(conn.execute(sa.delete(table).where(where).returning(key)).scalars())
    locked = conn.execute(sa.select(key).where(where).with_for_update()).scalars().all()
    if locked:
        conn.execute(sa.delete(table).where(keys_in(conn.dialect.name, key, locked)))
    return list(locked)


def take_next(conn: Connection, dml: Any, key: sa.Column[Any], pick: sa.Select[Any]
              ) -> NextBatch:
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
    as a scan of the whole table). SQLite: ``dml WHERE key IN (pick)``; a SQLite statement
    holds the database's write lock from its start, so what it read is what it disposed."""
    if conn.dialect.name == "postgresql":
        picked = pick.cte("picked")
        gone = (dml.where(key == sa.any_(sa.func.array(sa.select(picked.c[0]).scalar_subquery())))
                .returning(key).cte("gone"))
        last = sa.select(picked.c[0]).order_by(picked.c[0].desc()).limit(1).subquery("last")
        rows = conn.execute(sa.select(gone.c[0], sa.literal(1)).union_all(
            sa.select(last.c[0], sa.literal(0)))).all()
        disposed = sorted(r[0] for r in rows if r[1] == 1)
        return NextBatch(disposed, next((r[0] for r in rows if r[1] == 0), None))
    keys = sorted(conn.execute(dml.where(key.in_(pick.scalar_subquery())).returning(key))
                  .scalars())
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
