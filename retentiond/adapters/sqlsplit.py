"""Records that fail alone: when a batch's statement raises an integrity-class error nobody
foresaw (a trigger raising, a check constraint, a key in another store), the store rolled the
batch back. :func:`split` then disposes the batch again in one transaction, halving it under
savepoints until the failing records stand alone; every other record is disposed.

Cost: halving stops at :data:`LEAF` keys, below which each key is tried on its own, so a batch
where every record fails costs about ``n + 2n/LEAF`` statements and savepoints, a batch with one
failing record about ``2 log2(n/LEAF) + LEAF`` -- never one transaction per record.

:func:`integrity_reason` says whether an error is of that class and names it without values:
a constraint's name where the driver gives it apart from the message (psycopg), or parsed from
the message's ``CONSTRAINT `name``` (PyMySQL); the error class alone on SQLite.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from retentiond.state import faults

LEAF = 8
# MariaDB/MySQL: SIGNAL (1644), check constraints (3819, 4025), keys (1451, 1452, 1216, 1217),
# NOT NULL / no default (1048, 1364), duplicates (1062).
_MYSQL_CODES = {1644, 3819, 4025, 1451, 1452, 1216, 1217, 1048, 1364, 1062}
_PG_KINDS = {"23514": "check constraint", "23503": "foreign key", "23505": "unique constraint",
             "23502": "not-null constraint", "23P01": "exclusion constraint"}
_MYSQL_CONSTRAINT = re.compile(r"CONSTRAINT [`\"']([A-Za-z0-9_$]{1,64})[`\"']")
_MYSQL_KINDS = {1451: "foreign key", 1452: "foreign key", 1216: "foreign key",
                1217: "foreign key", 3819: "check constraint", 4025: "check constraint"}

Attempt = Callable[[Connection, Sequence[Any]], list[Any]]


def integrity_reason(exc: BaseException) -> str | None:
    """A one-line name for an integrity-class error (no values), None for any other error."""
    if not isinstance(exc, DBAPIError) or faults.is_state_error(exc):
        return None
    return driver_reason(exc.orig) if exc.orig is not None else None


def driver_reason(orig: BaseException) -> str | None:
    """:func:`integrity_reason` of a driver's own exception."""
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # PyMySQL: (code, message)
        return _mysql_reason(orig, args)
    if getattr(orig, "diag", None) is not None:  # psycopg
        return _pg_reason(orig)
    # SQLite: constraints and RAISE(ABORT) in triggers; the class alone.
    cls = type(orig).__name__
    return cls if cls == "IntegrityError" else None


def _pg_reason(orig: Any) -> str | None:
    name = getattr(getattr(orig, "diag", None), "constraint_name", None)
    return _pg_state_reason(orig.sqlstate, name, type(orig).__name__)


def _pg_state_reason(sqlstate: str, name: str | None, cls: str) -> str | None:
    if sqlstate == "P0001":
        return f"error raised by a trigger ({cls})"
    if not sqlstate.startswith("23"):
        return None
    kind = _PG_KINDS.get(sqlstate, "constraint")
    return f"{kind} {name} ({cls})" if name else f"{kind} ({cls})"


def _mysql_reason(orig: Any, args: Sequence[Any]) -> str | None:
    cls, code = type(orig).__name__, args[0]
    if code not in _MYSQL_CODES:
        return None
    if code == 1644:  # SIGNAL: its message is the trigger's own text, which may hold values
        return f"error signalled by a trigger ({cls} {code})"
    found = _MYSQL_CONSTRAINT.search(str(args[1]) if len(args) > 1 else "")
    kind = _MYSQL_KINDS.get(code, "constraint")
    return f"{kind} {found.group(1)} ({cls} {code})" if found else f"{kind} ({cls} {code})"


def split(conn: Connection, keys: Sequence[Any], attempt: Attempt,
          one: Any = None) -> tuple[list[Any], Counter[str]]:
    """Dispose ``keys`` with ``attempt`` (one statement over a list of keys that re-checks the
    selection and returns what it disposed) inside ``conn``'s transaction, each part under a
    savepoint; return the disposed keys and the failed ones counted by reason. ``one``: the
    same statement for a single key (bound as ``rd_key``, no ``RETURNING``), which the parts
    of one key run on the driver's cursor (:class:`Single`), without SQLAlchemy's overhead
    per statement: a batch where every record fails then costs little more than a clean one."""
    disposed: list[Any] = []
    failed: Counter[str] = Counter()
    if conn.dialect.name == "postgresql" and one is not None:
        done = _pg_each(conn, one, keys, disposed, failed)
        if done:
            return disposed, failed
    single = Single.make(conn, one, keys)
    if single is not None:
        # One prepared statement per record: cheaper than halving, whose statements over
        # whole parts cost SQLAlchemy's overhead each, when many records fail.
        for k in keys:
            reason = single.run(k, disposed)
            if reason is not None:
                failed[reason] += 1
        return disposed, failed
    _split(conn, list(keys), attempt, disposed, failed, first=True, single=single)
    return disposed, failed


def _split(conn: Connection, keys: list[Any], attempt: Attempt, disposed: list[Any],
           failed: Counter[str], *, first: bool, single: Single | None) -> None:
    if not keys:
        return
    if len(keys) <= LEAF and not first:
        for k in keys:
            reason = (single.run(k, disposed) if single is not None
                      else _try(conn, [k], attempt, disposed))
            if reason is not None:
                failed[reason] += 1
        return
    # The whole part first: one statement when none of it fails.
    if not first and _try(conn, keys, attempt, disposed) is None:
        return
    half = len(keys) // 2 or 1
    _split(conn, keys[:half], attempt, disposed, failed, first=False, single=single)
    _split(conn, keys[half:], attempt, disposed, failed, first=False, single=single)


def _try(conn: Connection, keys: list[Any], attempt: Attempt, disposed: list[Any]
         ) -> str | None:
    savepoint = conn.begin_nested()
    try:
        done = attempt(conn, keys)
    except DBAPIError as exc:
        savepoint.rollback()
        reason = integrity_reason(exc)
        if reason is None:
            raise
        return reason
    savepoint.commit()
    disposed.extend(done)
    return None


class Single:
    """A one-key statement compiled once and run on the DBAPI cursor of ``conn``'s
    transaction: a savepoint around it on PostgreSQL (an error aborts the whole transaction
    there); none on SQLite, where a failing statement undoes only itself (a trigger's
    ``RAISE(ROLLBACK)`` ends the transaction: then the batch fails as a whole, nothing is
    ledgered). Only for plain integer or text keys and statements without expanding lists."""

    def __init__(self, conn: Connection, sql: str, params: dict[str, Any],
                 processors: dict[str, Any], order: Sequence[str] | None) -> None:
        raw: Any = conn.connection.dbapi_connection
        self.raw = raw
        self.dialect = conn.dialect
        self.cursor = raw.cursor()
        self.sql, self.params, self.processors, self.order = sql, params, processors, order
        self.savepoints = conn.dialect.name != "sqlite"

    @classmethod
    def make(cls, conn: Connection, one: Any, keys: Sequence[Any]
             ) -> Single | None:
        if one is None or conn.dialect.name not in ("sqlite", "postgresql") or not all(
                type(k) in (int, str) for k in keys):
            return None
        compiled = one.compile(dialect=conn.dialect)
        sql = str(compiled)
        if "POSTCOMPILE" in sql or "rd_key" not in compiled.binds:
            return None
        processors = dict(getattr(compiled, "_bind_processors", {}))
        order = list(compiled.positiontup) if compiled.positiontup else None
        return cls(conn, sql, dict(compiled.construct_params({"rd_key": None})), processors, order)

    def _bound(self, key: Any) -> Any:
        values = {**self.params, "rd_key": key}
        values = {n: self.processors[n](v) if n in self.processors else v
                  for n, v in values.items()}
        return [values[n] for n in self.order] if self.order is not None else values

    def run(self, key: Any, disposed: list[Any]) -> str | None:
        cur = self.cursor
        if self.savepoints:
            cur.execute("SAVEPOINT rd_one")
        try:
            cur.execute(self.sql, self._bound(key))
            gone = cur.rowcount > 0
        except Exception as exc:
            reason = driver_reason(exc)
            if self.savepoints and reason is not None:
                cur.execute("ROLLBACK TO SAVEPOINT rd_one")
            elif not self.savepoints and not self.raw.in_transaction:
                reason = None  # the whole transaction is gone: the batch fails as a whole
            if reason is None:
                # As SQLAlchemy would have raised it, for the adapter to map.
                dbapi = self.dialect.loaded_dbapi
                raise DBAPIError.instance(self.sql, None, exc, dbapi.Error,
                                          dialect=self.dialect) from exc
            return reason
        if self.savepoints:
            cur.execute("RELEASE SAVEPOINT rd_one")
        if gone:
            disposed.append(key)
        return None


# PostgreSQL: one call per batch tries every record under its own subtransaction, server-side
# (an exception block per record), instead of three round trips per record.
_PG_EACH = """CREATE OR REPLACE FUNCTION pg_temp.retentiond_each(stmt text, keys text[],
    params text[]) RETURNS TABLE(ok boolean, state text, cname text) LANGUAGE plpgsql AS $f$
DECLARE x text; n bigint;
BEGIN
  FOREACH x IN ARRAY keys LOOP
    BEGIN
      EXECUTE stmt USING x, params;
      GET DIAGNOSTICS n = ROW_COUNT;
      ok := n > 0; state := NULL; cname := NULL; RETURN NEXT;
    EXCEPTION WHEN integrity_constraint_violation OR raise_exception THEN
      GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, cname = CONSTRAINT_NAME;
      ok := false; RETURN NEXT;
    END;
  END LOOP;
END $f$"""
_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


def _pg_each(conn: Connection, one: Any, keys: Sequence[Any], disposed: list[Any],
             failed: Counter[str]) -> bool:
    """Dispose ``keys`` one by one with ``one`` in one call of a session-temporary function;
    False (nothing done) when the statement cannot be passed to it (expanding lists, keys
    that are not plain integers or text). Every parameter travels as text in an array and
    is cast back to its type in the statement: no value is ever rendered into SQL."""
    if not all(type(k) in (int, str) for k in keys):
        return False
    compiled = one.compile(dialect=conn.dialect)
    if "POSTCOMPILE" in compiled.string:
        return False
    values = compiled.construct_params({"rd_key": None})
    processors = dict(getattr(compiled, "_bind_processors", {}))
    escaped = {v: k for k, v in (compiled.escaped_bind_names or {}).items()}
    params: list[str | None] = []
    names: dict[str, int] = {}

    def placeholder(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return "%"
        bind = compiled.binds[escaped.get(name, name)]
        cast = _unbounded(conn, bind.type)
        if name == "rd_key":
            return f"($1)::{cast}"
        if name not in names:
            value = values[name]
            value = processors[name](value) if name in processors else value
            params.append(None if value is None else str(value))
            names[name] = len(params)
        return f"($2[{names[name]}])::{cast}"

    try:
        stmt = _PLACEHOLDER.sub(placeholder, compiled.string)
    except (KeyError, sa_exc.CompileError, sa_exc.UnsupportedCompilationError):
        return False
    try:
        with conn.begin_nested():  # a role without TEMP on the database cannot create it
            conn.exec_driver_sql(_PG_EACH)
    except DBAPIError:
        return False
    rows = conn.exec_driver_sql(
        "SELECT ok, state, cname FROM pg_temp.retentiond_each(%(stmt)s, %(keys)s, %(params)s)",
        {"stmt": stmt, "keys": [str(k) for k in keys], "params": params}).all()
    for k, (ok, state, cname) in zip(keys, rows, strict=True):
        if ok:
            disposed.append(k)
        elif state is not None:
            failed[_pg_state_reason(state, cname, _pg_class(state)) or state] += 1
    return True


def _pg_class(sqlstate: str) -> str:
    from psycopg import errors

    return errors.lookup(sqlstate).__name__


def _unbounded(conn: Connection, t: Any) -> str:
    """The PostgreSQL type a parameter passed as text is cast back to, without the length or
    precision of the column it is compared with: ``varchar(8)`` would truncate a value and
    ``timestamp(0)`` round a cutoff up, loosening the selection the statement re-checks."""
    if isinstance(t, sa.Enum):
        return str(conn.dialect.type_compiler_instance.process(t))
    if isinstance(t, sa.String):
        return "text"
    if isinstance(t, sa.Numeric) and not isinstance(t, sa.Float):
        return "numeric"
    if isinstance(t, sa.DateTime):
        return "timestamptz" if t.timezone else "timestamp"
    if isinstance(t, sa.Time):
        return "timetz" if t.timezone else "time"
    return str(conn.dialect.type_compiler_instance.process(t))
