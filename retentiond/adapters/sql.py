"""The ``sql`` adapter: SQLite, PostgreSQL (psycopg 3) and MySQL/MariaDB (PyMySQL) through
SQLAlchemy 2 Core.

Tables are reflected; identifiers from the policy are only ever used to look up reflected
columns, which SQLAlchemy quotes. Batches are keyset ranges (``key > last ORDER BY key LIMIT
n``), never OFFSET. Each disposal is one transaction that re-checks the selection and uses
``DELETE ... RETURNING`` where the dialect has it (SQLite >= 3.35, PostgreSQL, MariaDB >= 10.5);
elsewhere the rows are locked with ``SELECT ... FOR UPDATE`` first.

Clock columns may be timestamps (naive ones are wall-clock time in the policy's ``timezone``,
``timestamptz`` is compared in UTC), dates, ISO 8601 text (``YYYY-MM-DD HH:MM:SS[.ffffff]``,
the form SQLAlchemy and most applications write on SQLite) or integers counting seconds or
milliseconds since the Unix epoch, as the rule's ``clock_format`` says
(:mod:`retentiond.adapters.sqlclock`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, NoSuchTableError, OperationalError

from retentiond.adapters.base import Adapter, Candidate, NextBatch, Problem, Selection
from retentiond.adapters.sql_actions import SqlActions, isolated_name
from retentiond.adapters.sql_checks import SqlChecks
from retentiond.adapters.sql_partitions import SqlPartitions
from retentiond.adapters.sql_refs import Reference, SqlRefs
from retentiond.adapters.sqlclock import BadClock, bad, clock_instant, clock_parts, real_time
from retentiond.adapters.sqlexpr import (
    Clause,
    Key,
    coerce,
    coerce_key,
    delete_returning,
    filter_expr,
    is_disconnect,
    take_next,
    where_text,
)
from retentiond.adapters.sqlsplit import Attempt, Bind, integrity_reason, split
from retentiond.adapters.sqltypes import LISTENERS, is_time_type, is_view, type_name
from retentiond.errors import RecordsFailed, StoreError, StoreUnreachable
from retentiond.log import get_logger, redact_url
from retentiond.state import faults
from retentiond.state.db import make_engine

if TYPE_CHECKING:
    from retentiond.planner import Facts
    from retentiond.policy.model import Policy, Rule, Store

log = get_logger(__name__)
_TIME_TYPES = (sa.DateTime, sa.Date, sa.String, sa.Integer)


class SqlAdapter(SqlChecks, SqlActions, SqlRefs, SqlPartitions, Adapter):
    name: ClassVar[str] = "sql"
    actions: ClassVar[frozenset[str]] = frozenset({"delete", "anonymize", "isolate"})
    drops_partitions: ClassVar[bool] = True

    def __init__(self, store_name: str, store: Store, policy: Policy) -> None:
        super().__init__(store_name, store, policy)
        self._engine: Engine | None = None
        self._tables: dict[str, sa.Table] = {}
        self._iso_tables: dict[str, sa.Table] = {}
        self._computed_updates: dict[str, Any] = {}
        # predicate(): the last selections' SQL, by identity (see there).
        self._predicates: dict[tuple[int, int], tuple[Selection, sa.Table, Any]] = {}
        self._refs: dict[str, list[Reference]] = {}
        self._folds: bool | None = None
        self._default: str | None = None
        self._cascaded: dict[tuple[str, str, str], int] = {}

    # -- static checks ------------------------------------------------------------------------
    @classmethod
    def check_rule(cls, rule: Rule, policy: Policy) -> list[Problem]:
        problems = super().check_rule(rule, policy)
        store = policy.stores[rule.store]
        if not store.url:
            problems.append(("store", f"store {rule.store!r} (sql) needs a url"))
        if not rule.table:
            problems.append(("table", "required for the sql adapter"))
        if rule.path:
            problems.append(("path", "the sql adapter uses table, not path"))
        # Keys of object stores: a subject_tag would give the rule a subject the sql adapter
        # cannot read, and an erasure request would then select every row.
        if rule.prefix:
            problems.append(("prefix", "the sql adapter uses table, not prefix"))
        if rule.subject_tag:
            problems.append(("subject_tag", "subject_tag is for s3 objects; name the subject "
                             "column with subject"))
        if rule.versions != "all":
            problems.append(("versions", "versions is for s3 objects; remove it"))
        if not rule.key:
            problems.append(("key", "required for the sql adapter (the primary key column)"))
        if rule.dispose_after is not None and not rule.clock:
            problems.append(("clock", "required when dispose_after is set"))
        if "isolate" in (rule.action, rule.on_erasure) and not (
                (rule.isolate and rule.isolate.for_) or store.backups):
            problems.append(("isolate", "isolate needs isolate.for, or backups.retention on "
                             f"store {rule.store!r}, to know when to purge"))
        problems += _partition_problems(rule, store)
        problems += _shared_database(rule, store, policy)
        isolated = {isolated_name(r) for r in policy.rules if r.store == rule.store
                    and "isolate" in (r.action, r.on_erasure)}
        if rule.table in isolated:
            problems.append(("table", f"{rule.table} holds isolated records; no rule may "
                             "read it"))
        return problems

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self.connect()
        assert self._engine is not None
        return self._engine

    def connect(self) -> None:
        if self._engine is not None:
            return
        url = str(self.store.url)
        path = sqlite_file(url)
        if path is not None and not path.is_file():
            raise StoreUnreachable(f"store {self.store_name}: SQLite database {path} does not "
                                   "exist; check the store's url")
        engine = make_engine(url, store=True)
        if engine.dialect.name == "postgresql":
            # JIT compiling the nested subplans of a foreign-key chain's EXISTS costs seconds
            # per statement where running them costs milliseconds; retentiond's statements are
            # small and many.
            sa.event.listen(engine, "connect", _no_jit)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
        except DBAPIError:
            engine.dispose()
            raise StoreUnreachable(
                f"store {self.store_name}: cannot connect to {redact_url(url)}") from None
        self._engine = engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        self._tables.clear()
        self._iso_tables.clear()
        self._computed_updates.clear()
        self._predicates.clear()
        self._refs.clear()
        self._default = None
        self._folds = None

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Map driver errors to StoreError without their text (it can echo row values).
        The state database's errors inside a store transaction (the intent of a fast-path
        batch) pass through: they are the state's (exit 3 naming it), not this store's."""
        try:
            yield
        except OperationalError as exc:
            if faults.is_state_error(exc):
                raise
            if exc.connection_invalidated or is_disconnect(exc):
                raise StoreUnreachable(f"store {self.store_name}: connection lost while "
                                       f"{doing}") from None
            raise StoreError(f"store {self.store_name}: {type(exc.orig).__name__} while "
                             f"{doing}") from None
        except DBAPIError as exc:
            if faults.is_state_error(exc):
                raise
            raise StoreError(f"store {self.store_name}: {type(exc.orig).__name__} while "
                             f"{doing}") from None

    # -- reflection ---------------------------------------------------------------------------
    def table(self, rule: Rule) -> sa.Table:
        name = str(rule.table)
        if name not in self._tables:
            schema, _, bare = name.rpartition(".")
            with self._errors(f"reading table {name}"):
                self._tables[name] = sa.Table(bare, sa.MetaData(), schema=schema or None,
                                              autoload_with=self.engine, listeners=LISTENERS)
        return self._tables[name]

    def _col(self, table: sa.Table, name: str) -> sa.Column[Any]:
        return table.c[name]

    def key(self, rule: Rule, table: sa.Table | None = None) -> Key:
        """The rule's key columns in ``table`` (default: the rule's table)."""
        return Key(self.table(rule) if table is None else table, rule.key_columns,
                   self.engine.dialect)

    # -- live validation ----------------------------------------------------------------------
    def validate(self, rule: Rule) -> list[Problem]:
        try:
            table = self.table(rule)
        except NoSuchTableError:
            return [("table", f"table {rule.table} does not exist in store {self.store_name}")]
        if is_view(self.engine, table.name, table.schema):
            return [("table", f"{rule.table} is a view; name the table it reads from")]
        problems: list[Problem] = []
        wanted: list[tuple[str, str | None]] = [
            ("key" if not rule.composite_key else f"key[{i}]", c)
            for i, c in enumerate(rule.key_columns)]
        wanted += [("clock", rule.clock), ("subject", rule.subject)]
        wanted += [(f"match.{c}", c) for c in rule.match]
        for path, column in wanted:
            if column and column not in table.c:
                problems.append((path, f"column {table.name}.{column} does not exist"))
        if problems:
            return problems
        problems += self._check_key(table, rule.key_columns)
        if rule.clock and not is_time_type(table.c[rule.clock].type):
            problems.append(("clock", f"column {table.name}.{rule.clock} is "
                             f"{type_name(table.c[rule.clock].type)}; a clock must be a "
                             "timestamp, date, "
                             "ISO 8601 text or integer epoch seconds"))
        for column, cond in rule.match.items():
            if cond.op in ("older_than", "newer_than") and not is_time_type(
                    table.c[column].type):
                problems.append((f"match.{column}", f"{cond.op} needs a timestamp or date "
                                 f"column; {table.name}.{column} is "
                                 f"{type_name(table.c[column].type)}"))
        if rule.where:
            problems += self._check_where(table, rule.where)
        problems += self.validate_partitions(rule)
        return problems + self.preflight(rule) + self.validate_actions(rule, table)

    def _check_key(self, table: sa.Table, key: Sequence[str]) -> list[Problem]:
        """The key's columns (as a set) must be the primary key or a unique constraint or
        index; a composite key's columns must be NOT NULL (a NULL never compares in a
        row-value keyset)."""
        pk = [c.name for c in table.primary_key.columns]
        problems: list[Problem] = []
        if len(key) > 1:
            problems += [("key", f"column {table.name}.{c} is nullable; the columns of a "
                          "composite key must be NOT NULL") for c in key if table.c[c].nullable]
        if set(pk) == set(key):
            return problems
        insp = sa.inspect(self.engine)
        # An expression index names no column: its entry in column_names is None.
        uniques: list[Sequence[str | None]] = [
            u["column_names"] for u in insp.get_unique_constraints(table.name, table.schema)]
        uniques += [i["column_names"] for i in insp.get_indexes(table.name, table.schema)
                    if i.get("unique")]
        if any(set(u) == set(key) and len(u) == len(key) for u in uniques):
            return problems
        return [*problems, ("key", _not_unique(table, key, pk))]

    def _check_where(self, table: sa.Table, where: str) -> list[Problem]:
        probe = sa.select(sa.literal(1)).select_from(table).where(where_text(where)).limit(1)
        try:
            with self.engine.connect() as conn:
                conn.execute(probe)
                conn.rollback()
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            names = {table.name, *(c.name for c in table.columns)}
            return [("where", f"does not run on store {self.store_name}: "
                     f"{without_values(first, where, names)}")]
        return []

    # -- selection to SQL ---------------------------------------------------------------------
    def predicate(self, sel: Selection, table: sa.Table) -> sa.ColumnElement[bool]:
        """The selection as SQL on ``table``. Built once per selection object: a sweep asks
        for it twice per batch (the pick and the disposing statement), and the executor hands
        the same selection to every batch until the holds change; building the clock's
        well-formedness test and the foreign-key guards costs milliseconds each time. The
        memo holds the selection and table themselves, so an id is never reused while it
        is in there."""
        memo = (id(sel), id(table))
        hit = self._predicates.get(memo)
        if hit is not None and hit[0] is sel and hit[1] is table:
            return cast("sa.ColumnElement[bool]", hit[2])
        if len(self._predicates) >= 64:
            self._predicates.clear()
        expr = self._predicate(sel, table)
        self._predicates[memo] = (sel, table, expr)
        return expr

    def _predicate(self, sel: Selection, table: sa.Table) -> sa.ColumnElement[bool]:
        rule = sel.rule
        parts: list[Clause] = []
        if sel.action == "anonymize" and rule.anonymize:
            parts.append(table.c[rule.anonymize.marker].is_(None))
        if rule.subject:
            parts += _subject_parts(table.c[rule.subject], sel)
        parts += self.blocking(sel, table)  # on the disposing statement: re-checked per batch
        if sel.unconditional:
            return sa.and_(sa.true(), *parts)
        if rule.clock:
            parts += clock_parts(table.c[rule.clock], sel, self.engine.dialect.name)
        dialect = self.engine.dialect.name
        parts += [filter_expr(table.c[f.column], f, dialect, protects=sel.protects)
                  for f in sel.filters]
        if rule.where:
            parts.append(where_text(rule.where))
        for other in sel.exclude:
            # CASE keeps NULL comparisons (a NULL clock) from turning NOT into "unknown".
            parts.append(sa.case((self.predicate(other, table), 1), else_=0) == 0)
        return sa.and_(sa.true(), *parts)

    def _match_only(self, rule: Rule, table: sa.Table, now: datetime, *,
                    protects: bool = False) -> list[Clause]:
        from retentiond.planner import resolve_filters

        dialect = self.engine.dialect.name
        parts: list[Clause] = [filter_expr(table.c[f.column], f, dialect, protects=protects)
                               for f in resolve_filters(rule, now)]
        if rule.where:
            parts.append(where_text(rule.where))
        return parts

    # -- read-only ----------------------------------------------------------------------------
    def count(self, selection: Selection) -> int:
        if selection.everything_excluded:
            return 0
        table = self.table(selection.rule)
        q = sa.select(sa.func.count()).select_from(table).where(self.predicate(selection, table))
        with self._errors(f"counting {table.name}"), self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def count_bad_clock(self, rule: Rule) -> int:
        """Records matching the rule whose clock is set but does not parse (sqlclock)."""
        if not rule.clock:
            return 0
        table = self.table(rule)
        broken = bad(table.c[rule.clock], self.engine.dialect.name)
        if broken is None:
            return 0
        now = datetime.now(UTC).astimezone(self.policy.tz)
        q = sa.select(sa.func.count()).select_from(table).where(
            broken, *self._match_only(rule, table, now))
        with self._errors(f"counting {table.name}"), self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def count_null_clock(self, rule: Rule) -> int:
        if not rule.clock:
            return 0
        table = self.table(rule)
        now = datetime.now(UTC).astimezone(self.policy.tz)
        clock = table.c[rule.clock]
        # Not a bad clock: on MariaDB IS NULL matches a zero date in a NOT NULL column.
        broken = bad(clock, self.engine.dialect.name)
        unbroken = [] if broken is None else [sa.case((broken, 1), else_=0) == 0]
        q = sa.select(sa.func.count()).select_from(table).where(
            clock.is_(None), *unbroken, *self._match_only(rule, table, now))
        with self._errors(f"counting {table.name}"), self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def scan(self, selection: Selection, batch_size: int) -> Iterator[list[Candidate]]:
        if selection.everything_excluded:
            return
        rule = selection.rule
        table = self.table(rule)
        key = self.key(rule, table)
        n = len(key.columns)
        cols = [*key.read] + ([table.c[rule.subject]] if rule.subject else [])
        base = sa.select(*cols).where(self.predicate(selection, table)).order_by(*key.order)
        last: Any = None
        while True:
            q = base if last is None else base.where(key.after(last))
            with self._errors(f"scanning {table.name}"), self.engine.connect() as conn:
                rows = conn.execute(q.limit(batch_size)).all()
            if not rows:
                return
            yield [Candidate(key.value(r), r[n] if rule.subject else None) for r in rows]
            if len(rows) < batch_size:
                return
            last = key.value(rows[-1])

    def facts(self, rules: Sequence[Rule], key: Any) -> Facts | None:
        from retentiond.planner import Facts

        first = rules[0]
        table = self.table(first)
        keys = self.key(first, table)
        now = datetime.now(UTC).astimezone(self.policy.tz)
        cols: list[Any] = [table.c[first.subject] if first.subject else sa.null()]
        flags: list[Any] = []  # per rule: a typed clock that is no real time (sqlclock)
        for rule in rules:
            # Raw text: a clock that does not parse is reported, not a crash in the driver.
            read = (sa.type_coerce(table.c[rule.clock], sa.String) if rule.clock
                    and not isinstance(table.c[rule.clock].type, sa.Integer)
                    and self.engine.dialect.name == "sqlite"
                    else table.c[rule.clock] if rule.clock else sa.null())
            # ±infinity, a zero date: flagged bad and read as NULL (psycopg raises on them).
            real = (real_time(table.c[rule.clock], self.engine.dialect.name) if rule.clock
                    else None)
            flags.append(sa.false() if real is None else sa.not_(real))
            cols.append(read if real is None else sa.case((real, read)))
            # 1: matches; 2: only as a protection (an older_than/newer_than value that does
            # not parse, see filter_expr); 0: does not match.
            cols.append(sa.case(
                (sa.and_(sa.true(), *self._match_only(rule, table, now)), 1),
                (sa.and_(sa.true(), *self._match_only(rule, table, now, protects=True)), 2),
                else_=0))
            anonymizes = rule.anonymize is not None and rule.action == "anonymize"
            marker = rule.anonymize.marker if rule.anonymize and anonymizes else None
            cols.append(table.c[marker].is_not(None) if marker else sa.false())
        if keys.composite:
            # Components as typed (ValueError names a column whose text does not parse).
            value = [tuple(coerce_key(c, str(v), self.policy.tz)
                           for c, v in zip(keys.columns, key, strict=True))]
        else:
            value = coerce(keys.columns[0], [key])
            # A SQLite date/time key: the time given, in any stored form (not a time: the
            # text as given).
            with suppress(ValueError):
                if keys.raw and value:
                    value = [coerce_key(keys.columns[0], str(key), self.policy.tz)]
        if not value:
            return None
        with self._errors(f"reading {table.name}"), self.engine.connect() as conn:
            row = conn.execute(sa.select(*cols, *keys.read, *flags)
                               .where(keys.eq(value[0]))).first()
        if row is None:
            return None
        clocks, matches, marked = {}, {}, {}
        broken: set[str] = set()
        unreadable: set[str] = set()
        unreal = row[len(row) - len(rules):]
        for i, rule in enumerate(rules):
            raw = row[1 + 3 * i]
            try:
                if unreal[i]:
                    raise BadClock("the clock is no real time")
                clocks[rule.id] = clock_instant(raw, rule.clock_format, self.policy.tz)
            except BadClock:
                clocks[rule.id] = None
                broken.add(rule.id)
            matches[rule.id] = row[2 + 3 * i] == 1
            if row[2 + 3 * i] == 2:
                unreadable.add(rule.id)
            marked[rule.id] = bool(row[3 + 3 * i])
        subject = None if row[0] is None else str(row[0])
        return Facts(subject=subject, clocks=clocks, bad_clocks=frozenset(broken),
                     matches=matches, unreadable_matches=frozenset(unreadable), marked=marked,
                     key=keys.value(row, 1 + 3 * len(rules)))

    # -- mutators -----------------------------------------------------------------------------
    def delete(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        if not keys:
            return []
        table = self.table(selection.rule)
        key = self.key(selection.rule, table)
        selected = self.predicate(selection, table)

        def attempt(conn: sa.Connection, part: Sequence[Any]) -> list[Any]:
            where = sa.and_(key.in_(self.engine.dialect.name, part), selected)
            with self.cascading_batch(conn, table, where):
                return delete_returning(conn, table, key, where)

        # Record by record after a failure, unless the batch counts what it cascades to.
        one = (None if self.cascading(table)
               else sa.delete(table).where(selected, key.one()))
        return self.each(f"deleting from {table.name}", keys, attempt, one, key.parts)

    def each(self, doing: str, keys: Sequence[Any], attempt: Attempt, one: Any = None,
             bind: Bind | None = None) -> list[Any]:
        """Dispose ``keys`` with ``attempt`` in one transaction; when it fails with an
        integrity error nobody foresaw, dispose them again record by record where needed
        (:func:`split`, with the one-record statement ``one`` where given) and raise
        :class:`RecordsFailed` naming what was disposed."""
        with self._errors(doing):
            try:
                with self.engine.begin() as conn:
                    return attempt(conn, keys)
            except DBAPIError as exc:
                if integrity_reason(exc) is None:
                    raise
            with self.engine.begin() as conn:
                disposed, failed = split(conn, keys, attempt, one, bind)
        log.warning("records failed", doing=doing, failed=sum(failed.values()),
                    disposed=len(disposed))
        raise RecordsFailed(disposed, failed)

    def delete_next(self, selection: Selection, after: Any, limit: int,
                    intent: Callable[[list[Any]], None]) -> NextBatch | None:
        """The fast path of a delete sweep: one statement per batch that picks the next keys
        above ``after`` and deletes those still selected (:func:`take_next`), the intent
        written between the statement and the commit. MySQL/MariaDB cannot delete with a LIMIT
        subquery on the same table, so they take the scan + delete path (None)."""
        dialect = self.engine.dialect
        if dialect.name not in ("sqlite", "postgresql") or not dialect.delete_returning:
            return None
        table = self.table(selection.rule)
        if self.cascading(table):
            return None  # its batches count what they cascade to (delete) before deleting
        key = self.key(selection.rule, table)
        dml = sa.delete(table).where(self.predicate(selection, table))
        return self.run_next(f"deleting from {table.name}", dml, key,
                             self.pick(selection, table, after, limit), intent)

    def pick(self, selection: Selection, table: sa.Table, after: Any, limit: int
             ) -> sa.Select[Any]:
        """The next ``limit`` selected keys above ``after``, in key order."""
        key = self.key(selection.rule, table)
        pick = sa.select(*key.columns).where(self.predicate(selection, table))
        if after is not None:
            pick = pick.where(key.after(after))
        return pick.order_by(*key.order).limit(limit)

    def run_next(self, doing: str, dml: Any, key: Key, pick: sa.Select[Any],
                 intent: Callable[[list[Any]], None]) -> NextBatch:
        written = False
        with self._errors(doing):
            try:
                with self.engine.begin() as conn:
                    batch = take_next(conn, dml, key, pick)
                    if batch.disposed:
                        # Durable before the store commits: a crash rolls back.
                        intent(batch.disposed)
                        written = True
                    return batch
            except DBAPIError as exc:
                # Failing at COMMIT (a deferred constraint) leaves an intent behind that
                # reconcile settles; disposing again under a second one could ledger twice.
                if written or integrity_reason(exc) is None:
                    raise
            return self._next_alone(dml, key, pick, intent)

    def _next_alone(self, dml: Any, key: Key, pick: sa.Select[Any],
                    intent: Callable[[list[Any]], None]) -> NextBatch:
        """The batch again after an integrity error: its keys read, then disposed with the
        failing records alone (:func:`split`), the intent written before the commit."""
        dialect = self.engine.dialect.name

        def attempt(conn: sa.Connection, part: Sequence[Any]) -> list[Any]:
            return key.values(conn.execute(dml.where(key.in_(dialect, part))
                                           .returning(*key.read)).all())

        with self.engine.begin() as conn:
            picked = key.values(conn.execute(pick.with_only_columns(*key.read)).all())
            disposed, failed = split(conn, picked, attempt, dml.where(key.one()), key.parts)
            disposed.sort(key=key.params)
            if disposed:
                intent(disposed)
        log.warning("records failed", failed=sum(failed.values()), disposed=len(disposed))
        return NextBatch(disposed, picked[-1] if picked else None, failed)


def _partition_problems(rule: Rule, store: Store) -> list[Problem]:
    """``partitions: drop`` needs a delete rule on a PostgreSQL store (a URL kept in a secret
    is checked live, by :meth:`SqlAdapter.validate`)."""
    if rule.partitions != "drop":
        return []
    if rule.action != "delete":
        return [("partitions", f"drop needs action delete (the rule's action is "
                 f"{rule.action}); remove partitions: drop")]
    backend = str(store.url or "").split(":", 1)[0].split("+", 1)[0]
    if backend and backend not in ("postgresql", "postgres"):
        return [("partitions", f"drop works only on PostgreSQL; store {rule.store!r} is "
                 f"{backend}")]
    if rule.dispose_after is None:
        return [("partitions", "drop needs dispose_after (only time-based disposal drops "
                 "partitions)")]
    return []


def _no_jit(dbapi_conn: Any, _: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("SET jit = off")
    except Exception:  # a server without JIT (before 11) has no such setting
        dbapi_conn.rollback()
    else:
        dbapi_conn.commit()
    finally:
        cur.close()


_QUOTED = re.compile(r"""("[^"]*"|'[^']*'|`[^`]*`)""")


def without_values(message: str, where: str, names: set[str]) -> str:
    """A database's error message with every quoted part that is neither a table or column
    name nor a literal written, quoted the same way, in the ``where`` clause replaced by
    ``'…'``: a message about a cast or a comparison can quote a value read from a row."""
    def keep(m: re.Match[str]) -> str:
        quoted = m.group(0)
        return quoted if quoted[1:-1] in names or quoted in where else "'…'"

    return _QUOTED.sub(keep, message)


def _not_unique(table: sa.Table, key: Sequence[str], pk: Sequence[str]) -> str:
    """Why a key is refused, naming the table's actual primary key."""
    what = (f"column {table.name}.{key[0]} is" if len(key) == 1 else
            f"columns {', '.join(f'{table.name}.{c}' for c in key)} are")
    which = "the primary key nor unique" if len(key) == 1 else (
        "the primary key nor a unique constraint (as a set)")
    if not pk:
        return (f"{what} neither {which}; {table.name} has no primary key: name a unique "
                "column, or the columns of a unique constraint as a list")
    fix = f"key: {pk[0]}" if len(pk) == 1 else f"key: [{', '.join(pk)}]"
    return (f"{what} neither {which}; the primary key of {table.name} is "
            f"({', '.join(pk)}): use {fix}")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite"):
        return None
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _subject_parts(subject: sa.Column[Any], sel: Selection) -> list[sa.ColumnElement[bool]]:
    parts: list[sa.ColumnElement[bool]] = []
    if sel.subjects is not None and not sel.unconditional:
        parts.append(subject.in_(coerce(subject, sel.subjects)))
    held = coerce(subject, sel.exclude_subjects) if sel.exclude_subjects else []
    if held:
        parts.append(sa.or_(subject.is_(None), subject.not_in(held)))
    return parts


def _shared_database(rule: Rule, store: Store, policy: Policy) -> list[Problem]:
    """Two sql stores on one database URL would not weigh each other's floors, holds and due
    dates (rules overlap within a store): rules on one database belong to one store. Only
    the same URL is caught (not two spellings of one server); the URL is never printed."""
    mine = _url_key(store)
    for name, other in policy.stores.items():
        if name != rule.store and other.adapter == "sql" and other.url and \
                _url_key(other) == mine:
            return [("store", f"store {rule.store!r} has the same url as store {name!r}; "
                     "rules on one database belong to one store, so that their floors, "
                     "holds and erasure requests apply to each other")]
    return []


def _url_key(store: Store) -> str:
    text = str(store.url or "")
    try:
        return sa.engine.make_url(text).render_as_string(hide_password=False)
    except sa.exc.ArgumentError:
        return text
