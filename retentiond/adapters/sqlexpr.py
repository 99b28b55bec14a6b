"""SQL building blocks shared by the sql adapter's readers and mutators."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import OperationalError

from retentiond.adapters.base import Filter, NextBatch
from retentiond.adapters.sqlclock import bad, well_formed


class StoredDatetime(datetime):
    """A datetime key component read raw from SQLite, with ``stored``, the text the row holds
    (``2010-01-01 00:00:00`` or ``2010-01-01 00:00:00.000000``): it is bound back as that text,
    byte for byte, while it compares, hashes, prints and is referenced as the datetime."""

    __slots__ = ("stored",)
    stored: str


class StoredDate(date):
    """A date key component read raw from SQLite (see :class:`StoredDatetime`)."""

    __slots__ = ("stored",)
    stored: str


class StoredTime(time):
    """A time key component read raw from SQLite (see :class:`StoredDatetime`)."""

    __slots__ = ("stored",)
    stored: str


def _stored(value: Any, raw: str) -> Any:
    """``value`` (what the column's type made of ``raw``) carrying ``raw``."""
    out: Any
    if isinstance(value, datetime):
        out = StoredDatetime(value.year, value.month, value.day, value.hour, value.minute,
                             value.second, value.microsecond, value.tzinfo, fold=value.fold)
    elif isinstance(value, date):
        out = StoredDate(value.year, value.month, value.day)
    elif isinstance(value, time):
        out = StoredTime(value.hour, value.minute, value.second, value.microsecond,
                         value.tzinfo, fold=value.fold)
    else:
        return value
    out.stored = raw
    return out


def text_forms(value: Any) -> list[str]:
    """The texts a SQLite date/time column may hold for ``value`` (a key typed on the command
    line): ``YYYY-MM-DD HH:MM:SS`` (raw SQL, ``CURRENT_TIMESTAMP``, Django), with ``.ffffff``
    (SQLAlchemy), ``.fff`` (milliseconds), or a ``T`` separator; a date as ``YYYY-MM-DD``; a
    time as ``HH:MM:SS[.ffffff]``. Any other value: its own text."""
    if isinstance(value, datetime):
        days, clock = value.strftime("%Y-%m-%d"), value.strftime("%H:%M:%S")
        return [f"{days}{sep}{clock}{frac}" for sep in (" ", "T")
                for frac in _fractions(value.microsecond)]
    if isinstance(value, date):
        return [value.isoformat()]
    if isinstance(value, time):
        return [value.strftime("%H:%M:%S") + frac for frac in _fractions(value.microsecond)]
    return [str(value)]


def _fractions(micro: int) -> list[str]:
    forms = [f".{micro:06d}"]
    if micro % 1000 == 0:
        forms.append(f".{micro // 1000:03d}")
    if micro == 0:
        forms.append("")
    return forms


class Key:
    """The key columns of a table as a rule names them, and the SQL over them. A key value is
    the column's value for one column and a tuple (in the rule's column order) for several;
    batches run in ascending key order (``ORDER BY a, b``), continue with a row-value
    comparison (``(a, b) > (:a, :b)``) and select a batch with ``(a, b) IN (...)``.

    On SQLite a date, time or timestamp key column is read raw (the text the row holds) and
    bound back raw: SQLite compares the text, and the same instant is stored as ``2010-01-01
    00:00:00`` by raw SQL, ``CURRENT_TIMESTAMP`` or Django and as ``2010-01-01 00:00:00.000000``
    by SQLAlchemy. Typed, a key read back would be re-bound in SQLAlchemy's form and no longer
    equal the row it was read from (``IN`` misses it, ``(a, b) > (last)`` skips every later
    row of its date). The value handed out is still the column type's value (the datetime a
    typed read gave, so references do not change) as a :class:`StoredDatetime` (``Date``,
    ``Time``) carrying the stored text; a text the type cannot parse stays the text."""

    def __init__(self, table: sa.Table, names: Sequence[str],
                 dialect: Dialect | None = None) -> None:
        self.columns: tuple[sa.Column[Any], ...] = tuple(table.c[n] for n in names)
        self.composite = len(self.columns) > 1
        raw = dialect is not None and dialect.name == "sqlite"
        self._parse: tuple[Callable[[Any], Any] | None, ...] = tuple(
            (c.type.dialect_impl(dialect).result_processor(dialect, None) or (lambda v: v))
            if raw and dialect is not None and isinstance(c.type, sa.DateTime | sa.Date | sa.Time)
            else None for c in self.columns)
        self.raw = any(p is not None for p in self._parse)
        # The key columns to select (RETURNING) and compare with bound key values: a raw one
        # as text (type_coerce renders the bare column; SQLite's comparisons are unchanged).
        self.read: tuple[sa.ColumnElement[Any], ...] = tuple(
            sa.type_coerce(c, sa.String).label(c.name) if p is not None else c
            for c, p in zip(self.columns, self._parse, strict=True))
        self.cmp: tuple[sa.ColumnElement[Any], ...] = tuple(
            sa.type_coerce(c, sa.String) if p is not None else c
            for c, p in zip(self.columns, self._parse, strict=True))

    @property
    def order(self) -> list[sa.Column[Any]]:
        return list(self.columns)

    def _load(self, i: int, raw: Any) -> Any:
        parse = self._parse[i]
        if parse is None or not isinstance(raw, str):
            return raw
        try:
            return _stored(parse(raw), raw)
        except ValueError:
            return raw

    def _bind(self, i: int, value: Any) -> Any:
        """A component as bound: a raw column's stored text (a value not read from the store,
        a plain datetime, in the column type's own form, as a typed bind would give)."""
        if self._parse[i] is None or not isinstance(value, date | time):
            return value
        stored = getattr(value, "stored", None)
        if stored is not None:
            return stored
        return _typed_text(self.columns[i], value)

    def params(self, key: Any) -> Any:
        """A key value as bound against :attr:`read`'s columns."""
        if not self.raw:
            return key
        if not self.composite:
            return self._bind(0, key)
        return tuple(self._bind(i, v) for i, v in enumerate(key))

    def one(self) -> sa.ColumnElement[bool]:
        """The record whose key components are bound as ``rd_key_0``, ``rd_key_1``, ...
        (:meth:`parts` gives them): a one-record statement of the per-record paths."""
        conds: list[sa.ColumnElement[bool]] = [
            c == sa.bindparam(f"rd_key_{i}") for i, c in enumerate(self.cmp)]
        return sa.and_(*conds)

    def parts(self, key: Any) -> list[Any]:
        """A key's components as :meth:`one` binds them."""
        bound = self.params(key)
        return list(bound) if self.composite else [bound]

    def after(self, last: Any) -> sa.ColumnElement[bool]:
        """Records with keys above ``last``."""
        last = self.params(last)
        if not self.composite:
            above: sa.ColumnElement[bool] = self.cmp[0] > last
            return above
        return sa.tuple_(*self.columns) > sa.tuple_(*(
            sa.literal(v, sa.String() if p is not None else c.type)
            for c, p, v in zip(self.columns, self._parse, last, strict=True)))

    def eq(self, value: Any) -> sa.ColumnElement[bool]:
        """The record with key ``value`` (typed, as :func:`coerce_key` gives it): a raw
        column's component matches any of its :func:`text_forms`."""
        parts = [value] if not self.composite else list(value)
        conds: list[sa.ColumnElement[bool]] = [
            cmp.in_(text_forms(v)) if p is not None and not isinstance(v, str) else cmp == v
            for cmp, p, v in zip(self.cmp, self._parse, parts, strict=True)]
        return sa.and_(*conds)

    def value(self, row: Sequence[Any], at: int = 0) -> Any:
        """The key value in a result row whose key columns (:attr:`read`) start at ``at``."""
        if not self.raw:
            return tuple(row[at:at + len(self.columns)]) if self.composite else row[at]
        if not self.composite:
            return self._load(0, row[at])
        return tuple(self._load(i, row[at + i]) for i in range(len(self.columns)))

    def values(self, rows: Sequence[Sequence[Any]]) -> list[Any]:
        return [self.value(r) for r in rows]

    def in_(self, dialect: str, keys: Sequence[Any]) -> sa.ColumnElement[bool]:
        """``key IN (keys)`` for a batch (see :func:`keys_in`). Composite keys: on PostgreSQL
        ``(a, b) IN (SELECT * FROM unnest(:a_values, :b_values))``, one array per column;
        elsewhere a row-value IN, ``(a, b) IN (VALUES (?, ?), ...)`` on SQLite."""
        if not self.composite:
            return keys_in(dialect, self.cmp[0], [self.params(k) for k in keys])
        if len(keys) == 1:
            # Column by column: MariaDB plans a one-row ``(a, b) IN ((1, 2))`` as a full scan.
            first = self.params(keys[0])
            return sa.and_(*(c == v for c, v in zip(self.cmp, first, strict=True)))
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            arrays = [sa.bindparam(f"batch_keys_{i}", [k[i] for k in keys], type_=ARRAY(c.type))
                      for i, c in enumerate(self.columns)]
            rows = sa.func.unnest(*arrays).table_valued(
                *(f"k{i}" for i in range(len(self.columns)))).render_derived("batch")
            return sa.tuple_(*self.columns).in_(sa.select(*rows.c))
        return sa.tuple_(*self.cmp).in_([tuple(self.params(k)) for k in keys])


def _typed_text(column: sa.Column[Any], value: Any) -> Any:
    """``value`` as SQLAlchemy's type for ``column`` writes it on SQLite."""
    from sqlalchemy.dialects import sqlite

    dialect = sqlite.dialect()
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process is not None else value


def keys_in(dialect: str, key: sa.ColumnElement[Any], keys: Sequence[Any]
            ) -> sa.ColumnElement[bool]:
    """``key IN (keys)`` for a batch. On PostgreSQL one array parameter, ``key = ANY(:keys)``:
    an expanding IN renders, ships, parses and plans a 5000-placeholder statement per batch."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return key == sa.any_(sa.bindparam("batch_keys", list(keys), type_=ARRAY(key.type)))
    return key.in_(list(keys))


def delete_returning(conn: Connection, table: sa.Table, key: Key,
                     where: sa.ColumnElement[bool]) -> list[Any]:
    if conn.dialect.delete_returning:
        return key.values(conn.execute(sa.delete(table).where(where).returning(*key.read))
                          .all())
    locked = key.values(conn.execute(sa.select(*key.read).where(where).with_for_update())
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
        if key.raw or key.composite:
            disposed = sorted(key.value(r) for r in rows if r[n] == 1)
        else:  # key.value(r) is r[0]: the commonest case, without a call per row
            disposed = sorted([r[0] for r in rows if r[1] == 1])
        return NextBatch(disposed, next((key.value(r) for r in rows if r[n] == 0), None))
    chosen = (sa.tuple_(*key.columns).in_(pick) if key.composite
              else key.columns[0].in_(pick.scalar_subquery()))
    # In the store's order (a raw key's stored text), so the last is where the pick stopped.
    keys = sorted(key.values(conn.execute(dml.where(chosen).returning(*key.read)).all()),
                  key=key.params)
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


def filter_expr(column: sa.Column[Any], f: Filter, dialect: str, *,
                protects: bool = False) -> sa.ColumnElement[bool]:
    """A resolved ``match`` condition in SQL.

    ``older_than``/``newer_than`` (``le``/``gt``) follow the clock rules (:mod:`sqlclock`): a
    text value that does not parse (``unknown``, ``01/02/2008``, a ``T`` separator) compares
    as text and would land on either side of the bound by accident (``'u' > '2…'`` made every
    ``unknown`` birth date a minor). Such a value's condition is *unknown*, and is read on the
    safe side of what the selection is for:

    * selecting records to dispose (and counting, explaining what a rule matches): unknown is
      no match, the rule does not apply to the record, it is never disposed by it;
    * ``protects`` (a selection that keeps records from another rule: a floor, a hold on the
      rule, ``on_erasure: keep``): unknown is a match, the record stays protected as if the
      rule applied. A record whose value cannot be read is kept, never disposed by a guess.

    NULL stays no match either way (it is a known value: no date). Typed timestamps and dates
    (``well_formed`` is None) cannot hold bad values and compare as they are."""
    ops: dict[str, Callable[[], sa.ColumnElement[bool]]] = {
        "eq": lambda: column == f.value,
        "in": lambda: column.in_(list(f.value)),
        "is_null": lambda: column.is_(None) if f.value else column.is_not(None),
        "le": lambda: column <= bound(column, f.value),
        "gt": lambda: column > bound(column, f.value),
    }
    cond = ops[f.op]()
    ok = well_formed(column, dialect) if f.op in ("le", "gt") else None
    if ok is None:
        return cond
    if protects:
        broken = bad(column, dialect)
        assert broken is not None
        return sa.or_(sa.and_(cond, ok), broken)
    return sa.and_(cond, ok)


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


def quoted_table(table: sa.Table) -> str:
    """The table's name in double quotes, schema-qualified when it has one: for SQL text and
    ``to_regclass`` (PostgreSQL)."""
    def quote(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'
    return quote(table.name) if table.schema is None else \
        f"{quote(table.schema)}.{quote(table.name)}"
