"""Clocks and markers of the sql adapter: what a clock value means, which ones cannot be
compared, and the checks that catch a rule silently doing nothing (or everything).

* An integer clock counts seconds or milliseconds since the Unix epoch as the rule's
  ``clock_format`` says; without one the rule is refused (a 0/1 flag read as 1970 makes every
  record due).
* Text clocks are compared as text with bounds written ``YYYY-MM-DD HH:MM:SS[.ffffff]``, which
  orders correctly only for values of that form (``YYYY-MM-DD[ HH:MM:SS[.ffffff]]``). Any other
  value (``n/a``, ``''``, ``01/02/2020``, a ``T`` separator, an offset) is a *bad clock*: never
  due by time, always protected by a floor, counted ``bad_clock``. On SQLite, ``DATETIME`` and
  ``DATE`` columns are text too (and may hold anything), so they get the same treatment.
* Typed clocks that hold no real time are bad clocks too: PostgreSQL ``-infinity`` and
  ``infinity``, and MySQL/MariaDB dates before 1000-01-01 (``0000-00-00``, the legacy default
  for "not closed yet") or with a zero month or day (``2019-00-00``). Compared as they are,
  ``-infinity`` and a zero date are before every cutoff: the record would be deleted.
* An anonymisation marker must only ever be set by retentiond: a server default, ``ON UPDATE``
  or a trigger that writes it makes rows look anonymised when they are not.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from retentiond.errors import StoreError

if TYPE_CHECKING:
    from retentiond.adapters.base import Selection
    from retentiond.policy.model import Rule

_DATE = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,6})?"
TEXT_CLOCK = re.compile(f"{_DATE}( {_TIME})?")
_SQL_PATTERN = f"^{_DATE}( {_TIME})?$"
_GLOB_DATE = "[0-9][0-9][0-9][0-9]-[01][0-9]-[0-3][0-9]"
_GLOB_TIME = "[0-2][0-9]:[0-5][0-9]:[0-5][0-9]"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNITS = {"epoch_seconds": timedelta(seconds=1), "epoch_millis": timedelta(milliseconds=1)}
# A clock before this or more than a day after now is implausible (validate warns).
PLAUSIBLE_FROM = datetime(1971, 1, 1, tzinfo=UTC)


def is_integer(column: sa.Column[Any]) -> bool:
    return isinstance(column.type, sa.Integer)


def can_be_bad(column: sa.Column[Any], dialect: str) -> bool:
    """Can this clock column hold values that do not parse? Text always; on SQLite, every
    column (its types are affinities: a DATETIME column stores any text)."""
    if is_integer(column):
        return False
    return isinstance(column.type, sa.String) or dialect == "sqlite"


def real_time(column: sa.Column[Any], dialect: str) -> sa.ColumnElement[bool] | None:
    """SQL true when a typed timestamp or date holds a real time; None when every value of the
    column is one. False for PostgreSQL ``±infinity`` and for MySQL/MariaDB zero dates
    (``0000-00-00``, also ``2019-00-00`` or ``2019-01-00``; before 1000-01-01 in general),
    which MariaDB's default sql_mode accepts. NULL gives true (it is no clock, not a bad one).
    (On MariaDB ``IS NULL`` also matches a zero date in a NOT NULL column: compare, never
    test for NULL.)"""
    if not isinstance(column.type, sa.DateTime | sa.Date):
        return None
    if dialect == "postgresql":
        return sa.func.coalesce(sa.func.isfinite(column), sa.true(), type_=sa.Boolean)
    if dialect in ("mysql", "mariadb"):
        lowest = (datetime(1000, 1, 1) if isinstance(column.type, sa.DateTime)
                  else date(1000, 1, 1))
        zero = sa.or_(column < lowest, sa.func.month(column) == 0,
                      sa.func.dayofmonth(column) == 0)
        return sa.case((zero, 0), else_=1) == 1
    return None


def well_formed(column: sa.Column[Any], dialect: str) -> sa.ColumnElement[bool] | None:
    """SQL true when the clock is text of the form retentiond compares, or a typed time that
    is a real time (:func:`real_time`); None when the column cannot hold anything else
    (integers; timestamps and dates where the database has no placeholder values)."""
    if not can_be_bad(column, dialect):
        return real_time(column, dialect)
    if dialect == "sqlite":
        # GLOB for the shape, datetime() for the ranges (month 13 is NULL), the hour by hand.
        # This runs on every due row (twice a batch) and on every row when bad clocks are
        # counted, and GLOB costs about a microsecond: the length picks the one shape a value
        # can have, so every form costs one GLOB, and datetime() runs last, on well-shaped
        # values only. (A non-text value fails its GLOB: 20190101 is not ``YYYY-MM-DD``.)
        full = f"{_GLOB_DATE} {_GLOB_TIME}"
        length = sa.func.length(column)
        fraction = sa.and_(length.between(21, 26), column.op("GLOB")(f"{full}.[0-9]*"),
                           sa.func.substr(column, 21).op("NOT GLOB")("*[^0-9]*"))
        one_form = sa.case({19: column.op("GLOB")(full), 10: column.op("GLOB")(_GLOB_DATE)},
                           value=length, else_=fraction)
        hour = sa.func.substr(column, 12, 2) < "24"
        checked = sa.and_(one_form, hour, sa.func.datetime(column).is_not(None))
        # First a cheap sufficient test: a value that is its own datetime() (date() for a
        # date), hour below 24 (datetime() keeps 24:00:00 as it is), is of the form and in
        # range. The length excludes negative years (SQLite reads -0001-01-01); a non-text
        # value never equals text. Values it cannot vouch for (other fractions, the 31st of
        # February) take the full test.
        canonical = sa.case(
            (length == 19, sa.and_(sa.func.datetime(column) == column, hour)),
            (length == 10, sa.func.date(column) == column),
            (length == 26, sa.and_(sa.func.datetime(column) == sa.func.substr(column, 1, 19),
                                   hour, sa.func.substr(column, 20, 1) == ".",
                                   sa.func.substr(column, 21).op("NOT GLOB")("*[^0-9]*"))),
            else_=sa.false())
        return sa.case((canonical, sa.true()), else_=checked)
    shaped = column.regexp_match(_SQL_PATTERN)
    if dialect in ("mysql", "mariadb"):
        # REGEXP's $ also matches before a trailing line break ('2010-01-01\n'): no character
        # outside the form may occur anywhere.
        return sa.and_(shaped, sa.not_(column.regexp_match("[^-0-9 :.]")))
    return shaped


def bad(column: sa.Column[Any], dialect: str) -> sa.ColumnElement[bool] | None:
    """SQL true when the clock is set but does not parse (None: it always parses)."""
    ok = well_formed(column, dialect)
    if ok is None:
        return None
    return sa.and_(column.is_not(None), sa.case((ok, 1), else_=0) == 0)


def clock_bound(column: sa.Column[Any], at: datetime, fmt: str | None) -> Any:
    """A cutoff instant (aware) in the clock column's own representation."""
    from retentiond.adapters.sqlexpr import bound

    if is_integer(column):
        if fmt not in _UNITS:
            raise StoreError(f"clock {column.table.name}.{column.name} is an integer; set "
                             "clock_format: epoch_seconds or epoch_millis on the rule")
        return (at - EPOCH) // _UNITS[fmt]
    return bound(column, at)


def clock_parts(clock: sa.Column[Any], sel: Selection, dialect: str
                ) -> list[sa.ColumnElement[bool]]:
    """The clock bounds of a selection. A bad clock is never at or before a cutoff (never
    due) and always counts as after a floor or inside a not-yet-due gap (always protected):
    a record whose clock cannot be read is kept."""
    fmt = sel.rule.clock_format
    ok = well_formed(clock, dialect)
    broken = bad(clock, dialect)

    def protect(cond: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
        return cond if broken is None else sa.or_(cond, broken)

    parts: list[sa.ColumnElement[bool]] = []
    if sel.clock_cutoff is not None:
        parts.append(clock <= clock_bound(clock, sel.clock_cutoff, fmt))
        if ok is not None:
            parts.append(ok)
    if sel.clock_after is not None:
        after = clock > clock_bound(clock, sel.clock_after, fmt)
        parts.append(protect(sa.or_(after, clock.is_(None)) if sel.null_clock else after))
    if sel.clock_within is not None:
        lo, hi = sel.clock_within
        parts.append(protect(sa.and_(clock > clock_bound(clock, lo, fmt),
                                     clock < clock_bound(clock, hi, fmt))))
    return parts


class BadClock(ValueError):
    """A clock value that does not parse."""


def clock_instant(raw: Any, fmt: str | None, tz: Any) -> datetime | None:
    """A clock value read from the store as an aware datetime; BadClock when it does not
    parse (text of another form). Naive values are in the policy's zone."""
    if raw is None:
        return None
    if isinstance(raw, datetime):
        return raw.replace(tzinfo=tz) if raw.tzinfo is None else raw
    if isinstance(raw, int) and not isinstance(raw, bool):
        unit = _UNITS.get(fmt or "")
        if unit is None:
            raise BadClock("an integer clock needs clock_format")
        try:
            return EPOCH + raw * unit
        except OverflowError:
            raise BadClock("the clock is out of range") from None
    if isinstance(raw, date):
        return datetime.combine(raw, datetime.min.time(), tzinfo=tz)
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    if not TEXT_CLOCK.fullmatch(text):
        raise BadClock("the clock does not parse")
    try:
        return datetime.fromisoformat(text).replace(tzinfo=tz)
    except ValueError:
        raise BadClock("the clock does not parse") from None  # 2023-02-30


def implausible(value: datetime, now: datetime) -> bool:
    return value < PLAUSIBLE_FROM or value > now + timedelta(days=1)


# -- markers ---------------------------------------------------------------------------------
_NULL_DEFAULT = re.compile(r"\(*\s*null\s*\)*(::[\w\s]+)?", re.IGNORECASE)


def marker_problems(conn: Connection, table: sa.Table, marker: str,
                    info: dict[str, Any]) -> list[str]:
    """Why the marker column may be set by something other than retentiond (a default, ON
    UPDATE, a generated value or a trigger); ``info`` is the column's reflected entry."""
    where = f"{table.name}.{marker}"
    out: list[str] = []
    default = info.get("default")
    if default is not None and not _NULL_DEFAULT.fullmatch(str(default).strip()):
        out.append(f"column {where} has a default ({default}); every new row would look "
                   "anonymised. Drop the default: only retentiond may set the marker")
    if info.get("computed"):
        out.append(f"column {where} is generated; the marker must be a plain nullable "
                   "timestamp column that only retentiond sets")
    checks = {"postgresql": _pg_triggers, "mysql": _my_marker, "mariadb": _my_marker,
              "sqlite": _sqlite_triggers}
    check = checks.get(conn.dialect.name)
    if check is not None:
        out += [f"column {where}: {why}" for why in check(conn, table, marker)]
    return out


def _mentions(text: str | None, column: str) -> bool:
    return bool(text) and re.search(rf"(?<![\w$]){re.escape(column)}(?![\w$])", str(text),
                                    re.IGNORECASE) is not None


def _trigger_text(names: list[str]) -> str:
    return (f"table has a trigger ({', '.join(sorted(names))}) that may set the marker; every "
            "row it touches would look anonymised. Use a marker column no trigger writes")


def _pg_triggers(conn: Connection, table: sa.Table, marker: str) -> list[str]:
    # tgtype bits: 1 row, 2 before, 4 insert, 16 update. Only BEFORE row triggers rewrite NEW.
    # The table and, for a partitioned table, every partition below it: a trigger may be
    # defined on one partition only.
    rows = conn.execute(sa.text(
        "with recursive tree(oid) as ("
        " select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where c.relname = :table and n.nspname = coalesce(:schema, current_schema())"
        " union select i.inhrelid from pg_inherits i join tree on i.inhparent = tree.oid) "
        "select t.tgname, p.prosrc from pg_trigger t join tree on tree.oid = t.tgrelid "
        "join pg_proc p on p.oid = t.tgfoid "
        "where not t.tgisinternal and (t.tgtype & 3) = 3 and (t.tgtype & 20) <> 0"),
        {"table": table.name, "schema": table.schema}).all()
    names = [r[0] for r in rows if _mentions(r[1], marker)]
    return [_trigger_text(names)] if names else []


def _my_marker(conn: Connection, table: sa.Table, marker: str) -> list[str]:
    out = []
    extra = conn.execute(sa.text(
        "select extra from information_schema.columns where table_schema = "
        "coalesce(:schema, database()) and table_name = :table and column_name = :column"),
        {"table": table.name, "schema": table.schema, "column": marker}).scalar()
    if extra and "on update" in str(extra).lower():
        out.append(f"is {extra}; every row an application updates would look anonymised. "
                   "Drop ON UPDATE: only retentiond may set the marker")
    rows = conn.execute(sa.text(
        "select trigger_name, action_statement from information_schema.triggers where "
        "event_object_schema = coalesce(:schema, database()) and event_object_table = :table "
        "and event_manipulation in ('INSERT', 'UPDATE')"),
        {"table": table.name, "schema": table.schema}).all()
    names = [r[0] for r in rows if _mentions(r[1], marker)]
    return out + ([_trigger_text(names)] if names else [])


def _sqlite_triggers(conn: Connection, table: sa.Table, marker: str) -> list[str]:
    rows = conn.execute(sa.text(
        "select name, sql from sqlite_master where type = 'trigger' and tbl_name = :table"),
        {"table": table.name}).all()
    names = [r[0] for r in rows if _mentions(r[1], marker)]
    return [_trigger_text(names)] if names else []


# -- what validate reads --------------------------------------------------------------------
def clock_range(conn: Connection, clock: sa.Column[Any], dialect: str,
                where: list[Any], *, exact: bool = True) -> tuple[Any, Any]:
    """The smallest and largest clock value (of the well-formed ones) of the rule's rows.
    ``exact=False`` (the check at the start of every plan and run) reads them through the
    clock's index: typed times keep only the index-friendly part of :func:`real_time`
    (PostgreSQL ``-infinity < clock < infinity``, MySQL ``clock >= 1000-01-01``) and text
    is not filtered, so an extreme value may be one that does not parse (the caller skips
    it; bad clocks are counted anyway)."""
    ok = well_formed(clock, dialect) if exact else _index_friendly_real(clock, dialect)
    conds = [*where, clock.is_not(None), *([ok] if ok is not None else [])]
    # Text (SQLite DATETIME included) comes back raw and is parsed by clock_instant.
    col = sa.type_coerce(clock, sa.String) if can_be_bad(clock, dialect) else clock
    if dialect == "sqlite":
        # SQLite reads min() and max() through an index only one at a time and without a
        # WHERE: the first and last row in the clock's order (the same comparison) are two
        # index seeks instead of a pass over the whole index (0.3 s on 1M rows).
        first = sa.select(col).where(*conds).order_by(clock).limit(1).scalar_subquery()
        last = sa.select(col).where(*conds).order_by(clock.desc()).limit(1).scalar_subquery()
        row = conn.execute(sa.select(first, last)).one()
    else:
        row = conn.execute(sa.select(sa.func.min(col), sa.func.max(col)).where(*conds)).one()
    return row[0], row[1]


def _index_friendly_real(clock: sa.Column[Any], dialect: str) -> sa.ColumnElement[bool] | None:
    if not isinstance(clock.type, sa.DateTime | sa.Date):
        return None
    if dialect == "postgresql":
        return sa.and_(clock > sa.cast(sa.literal("-infinity"), clock.type),
                       clock < sa.cast(sa.literal("infinity"), clock.type))
    if dialect in ("mysql", "mariadb"):
        lowest = (datetime(1000, 1, 1) if isinstance(clock.type, sa.DateTime)
                  else date(1000, 1, 1))
        return clock >= lowest
    return None


def shown(value: datetime, tz: Any) -> str:
    return value.astimezone(tz).isoformat(sep=" ", timespec="seconds")


def describe_rule(rule: Rule) -> str:
    return f"{rule.store}.{rule.target}.{rule.clock}"
