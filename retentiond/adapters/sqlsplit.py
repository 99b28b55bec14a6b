"""Records that fail alone: when a batch's statement raises an integrity-class error nobody
foresaw (a trigger raising, a check constraint, a key in another store), the store rolled the
batch back. :func:`split` then disposes the batch again in one transaction, each record on its
own where the adapter gives a one-record statement: on PostgreSQL in one call of a
session-temporary PL/pgSQL function (an exception block per record), on SQLite and MariaDB/MySQL
as one prepared statement per record on the driver's cursor (both roll back only the failing
statement). Every other record is disposed.

Without a one-record statement (a batch that counts what it cascades to, isolate, anonymize)
the batch is halved under savepoints until the failing records stand alone: halving stops at
:data:`LEAF` keys, below which each key is tried on its own, so a batch where every record
fails costs about ``n + 2n/LEAF`` statements and savepoints, a batch with one failing record
about ``2 log2(n/LEAF) + LEAF`` -- never one transaction per record.

:func:`integrity_reason` says whether an error is of that class and names it without values:
a constraint's name where the driver gives it apart from the message (psycopg), or parsed from
the message's ``CONSTRAINT `name``` (PyMySQL); the error class alone on SQLite.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
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
# A key's components as a one-key statement binds them (``rd_key_0``, ``rd_key_1``, ...).
Bind = Callable[[Any], Sequence[Any]]
# Component types the per-record paths bind directly; any other key takes the halving path.
_PLAIN = (int, str, datetime, date, time, Decimal)


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
          one: Any = None, bind: Bind | None = None) -> tuple[list[Any], Counter[str]]:
    """Dispose ``keys`` with ``attempt`` (one statement over a list of keys that re-checks the
    selection and returns what it disposed) inside ``conn``'s transaction, each part under a
    savepoint; return the disposed keys and the failed ones counted by reason. ``one``: the
    same statement for a single key (its components bound as ``rd_key_0``, ``rd_key_1``, ...,
    no ``RETURNING``), with ``bind`` giving a key's components as bound; then every record
    is tried on its own, without SQLAlchemy's overhead per statement: on PostgreSQL in one
    call of a server-side function, elsewhere on the driver's cursor (:class:`Single`). A
    batch where every record fails then costs little more than a clean one."""
    disposed: list[Any] = []
    failed: Counter[str] = Counter()
    bound = None
    if one is not None and bind is not None:
        bound = [bind(k) for k in keys]
        if not all(type(v) in _PLAIN for parts in bound for v in parts):
            bound = None
    if bound is not None and conn.dialect.name == "postgresql":
        done = _pg_each(conn, one, keys, bound, disposed=disposed, failed=failed)
        if done:
            return disposed, failed
    single = Single.make(conn, one, bound[0] if bound else None)
    if single is not None and bound is not None:
        # One prepared statement per record: cheaper than halving, whose statements over
        # whole parts cost SQLAlchemy's overhead each, when many records fail.
        for k, parts in zip(keys, bound, strict=True):
            reason = single.run(parts)
            if reason is None:
                if single.gone:
                    disposed.append(k)
            else:
                failed[reason] += 1
        return disposed, failed
    _split(conn, list(keys), attempt, disposed, failed, first=True)
    return disposed, failed


def _split(conn: Connection, keys: list[Any], attempt: Attempt, disposed: list[Any],
           failed: Counter[str], *, first: bool) -> None:
    if not keys:
        return
    if len(keys) <= LEAF and not first:
        for k in keys:
            reason = _try(conn, [k], attempt, disposed)
            if reason is not None:
                failed[reason] += 1
        return
    # The whole part first: one statement when none of it fails.
    if not first and _try(conn, keys, attempt, disposed) is None:
        return
    half = len(keys) // 2 or 1
    _split(conn, keys[:half], attempt, disposed, failed, first=False)
    _split(conn, keys[half:], attempt, disposed, failed, first=False)


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
    ledgered), nor on MariaDB/MySQL, where InnoDB rolls back only the failing statement on the
    integrity-class errors caught here (a deadlock, which rolls back the transaction, is not
    one of them: it fails the batch as a whole). Only for keys whose components are plain
    values (:data:`_PLAIN`) and statements without expanding lists."""

    def __init__(self, conn: Connection, sql: str, params: dict[str, Any], *,
                 processors: dict[str, Any], order: Sequence[str] | None,
                 names: Sequence[str]) -> None:
        raw: Any = conn.connection.dbapi_connection
        self.raw = raw
        self.dialect = conn.dialect
        self.cursor = raw.cursor()
        self.sql, self.params, self.processors, self.order = sql, params, processors, order
        self.names = names
        self.savepoints = conn.dialect.name == "postgresql"
        self.gone = False

    @classmethod
    def make(cls, conn: Connection, one: Any, first: Sequence[Any] | None) -> Single | None:
        if one is None or first is None or conn.dialect.name not in (
                "sqlite", "postgresql", "mysql", "mariadb"):
            return None
        compiled = one.compile(dialect=conn.dialect)
        sql = str(compiled)
        names = [f"rd_key_{i}" for i in range(len(first))]
        if "POSTCOMPILE" in sql or not all(n in compiled.binds for n in names):
            return None
        processors = dict(getattr(compiled, "_bind_processors", {}))
        order = list(compiled.positiontup) if compiled.positiontup else None
        return cls(conn, sql, dict(compiled.construct_params(dict.fromkeys(names))),
                   processors=processors, order=order, names=names)

    def _bound(self, parts: Sequence[Any]) -> Any:
        values = {**self.params, **dict(zip(self.names, parts, strict=True))}
        values = {n: self.processors[n](v) if n in self.processors else v
                  for n, v in values.items()}
        return [values[n] for n in self.order] if self.order is not None else values

    def run(self, parts: Sequence[Any]) -> str | None:
        """Dispose one record (its key's components as bound); None when it went or no
        longer matched (:attr:`gone` says which), else why it failed."""
        cur = self.cursor
        self.gone = False
        if self.savepoints:
            cur.execute("SAVEPOINT rd_one")
        try:
            cur.execute(self.sql, self._bound(parts))
            gone = cur.rowcount > 0
        except Exception as exc:
            reason = driver_reason(exc)
            if self.savepoints and reason is not None:
                cur.execute("ROLLBACK TO SAVEPOINT rd_one")
            elif self.dialect.name == "sqlite" and not self.raw.in_transaction:
                reason = None  # the whole transaction is gone: the batch fails as a whole
            if reason is None:
                # As SQLAlchemy would have raised it, for the adapter to map.
                dbapi = self.dialect.loaded_dbapi
                raise DBAPIError.instance(self.sql, None, exc, dbapi.Error,
                                          dialect=self.dialect) from exc
            return reason
        if self.savepoints:
            cur.execute("RELEASE SAVEPOINT rd_one")
        self.gone = gone
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


def _pg_each(conn: Connection, one: Any, keys: Sequence[Any], bound: Sequence[Sequence[Any]],
             *, disposed: list[Any], failed: Counter[str]) -> bool:
    """Dispose ``keys`` one by one with ``one`` in one call of a session-temporary function;
    False (nothing done) when the statement cannot be passed to it (expanding lists). Every
    parameter travels as text and is cast back to its type in the statement: a key as one
    JSON array of its components' texts, the selection's values in a text array; no value
    is ever rendered into SQL."""
    compiled = one.compile(dialect=conn.dialect)
    if "POSTCOMPILE" in compiled.string:
        return False
    width = len(bound[0]) if bound else 1
    values = compiled.construct_params({f"rd_key_{i}": None for i in range(width)})
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
        if name.startswith("rd_key_"):
            return f"(($1)::json->>{int(name[7:])})::{cast}"
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
    texts = [json.dumps([None if v is None else _text(v) for v in parts]) for parts in bound]
    rows = conn.exec_driver_sql(
        "SELECT ok, state, cname FROM pg_temp.retentiond_each(%(stmt)s, %(keys)s, %(params)s)",
        {"stmt": stmt, "keys": texts, "params": params}).all()
    for k, (ok, state, cname) in zip(keys, rows, strict=True):
        if ok:
            disposed.append(k)
        elif state is not None:
            failed[_pg_state_reason(state, cname, _pg_class(state)) or state] += 1
    return True


def _text(value: Any) -> str:
    """A key component as PostgreSQL reads it back from text: ISO 8601 for times."""
    return value.isoformat() if isinstance(value, date | time) else str(value)


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
