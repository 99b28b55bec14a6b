"""The sql adapter's anonymise, isolate, purge and replay support (mixed into SqlAdapter).

anonymize: one ``UPDATE`` per batch that rewrites the listed columns and sets the marker; when
every strategy is SQL-expressible it is set-based (``UPDATE ... WHERE key IN (...) AND
<selection>``), otherwise the batch's values are read under lock, computed in Python and written
with one ``executemany``. Marked rows never match an anonymize selection again.

isolate: the batch is copied into ``<table>_isolated`` (or ``isolate.table``) with
``retentiond_isolated_at``, ``retentiond_rule`` and ``retentiond_purge_after`` (UTC), and deleted
from the live table, in one transaction. ``scan_isolated``/``purge_isolated`` remove isolated rows
once their purge time has come.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, overload

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, NoSuchTableError

from retentiond import anonymize as anon
from retentiond.adapters.base import Candidate, NextBatch, Problem, Selection
from retentiond.adapters.sqlexpr import Key, bound
from retentiond.adapters.sqlsplit import Attempt, integrity_reason, split
from retentiond.adapters.sqltypes import LISTENERS, domain_problems
from retentiond.log import get_logger

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from retentiond.policy.model import Policy, Rule

log = get_logger(__name__)
EXTRA_COLUMNS = ("retentiond_isolated_at", "retentiond_rule", "retentiond_purge_after")


def isolated_name(rule: Rule) -> str:
    if rule.isolate is not None and rule.isolate.table:
        return rule.isolate.table
    return f"{rule.table}_isolated"


class SqlActions:
    """Mutators beyond delete. Relies on SqlAdapter's table(), predicate(), engine, _errors()."""

    policy: Policy
    store_name: str
    _iso_tables: dict[str, sa.Table]
    _computed_updates: dict[str, _Compiled]  # per rule: its compiled executemany UPDATE

    if TYPE_CHECKING:
        @property
        def engine(self) -> Engine: ...
        def table(self, rule: Rule) -> sa.Table: ...
        def key(self, rule: Rule, table: sa.Table | None = None) -> Key: ...
        def predicate(self, sel: Selection, table: sa.Table) -> sa.ColumnElement[bool]: ...
        def _errors(self, doing: str) -> AbstractContextManager[None]: ...
        def cascading_batch(self, conn: Connection, table: sa.Table,
                            where: sa.ColumnElement[bool]) -> Any: ...
        def pick(self, selection: Selection, table: sa.Table, after: Any, limit: int
                 ) -> sa.Select[Any]: ...
        def run_next(self, doing: str, dml: Any, key: Key, pick: sa.Select[Any],
                     intent: Callable[[list[Any]], None]) -> NextBatch: ...
        def each(self, doing: str, keys: Sequence[Any],
                 attempt: Callable[[Connection, Sequence[Any]], list[Any]]) -> list[Any]: ...

    # -- anonymize ----------------------------------------------------------------------------
    def anonymize(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        if not keys:
            return []
        table = self.table(selection.rule)
        return self.each(f"anonymising {table.name}", keys, self._anonymize_attempt(selection))

    def _anonymize_attempt(self, selection: Selection) -> Attempt:
        """One statement (set-based) or a locked read plus one ``executemany`` (Python
        strategies) over a part of a batch, re-checking the whole selection."""
        rule = selection.rule
        assert rule.anonymize is not None
        table = self.table(rule)
        key = self.key(rule, table)
        selected = self.predicate(selection, table)
        marker = table.c[rule.anonymize.marker]
        computed = _computed(rule, self._secret())
        fixed = {} if computed else ({marker.name: bound(marker, selection.now)}
                                     | self._sql_values(rule, table))
        write = self._computed_writer(selection, table, key) if computed else None

        def attempt(conn: Connection, part: Sequence[Any]) -> list[Any]:
            where = sa.and_(key.in_(self.engine.dialect.name, part), selected)
            _take_write_lock(conn, table, marker)
            if write is None:
                return _update_returning(conn, table, key, where, fixed)
            rows = conn.execute(sa.select(*key.read, *(table.c[c] for c in computed))
                                .where(where).with_for_update()).all()
            if rows:
                write(conn, rows)
            return key.values(rows)

        return attempt

    def anonymize_next(self, selection: Selection, after: Any, limit: int,
                       intent: Callable[[list[Any]], None]) -> NextBatch | None:
        """One store transaction per batch on SQLite and PostgreSQL, the intent written before
        its commit (as ``delete_next``). When every strategy is SQL-expressible: one ``UPDATE
        ... WHERE <selection> AND key IN (<the next keys>) RETURNING key`` (:func:`take_next`).
        Otherwise (:meth:`_computed_next`) the next keys and their values are read under lock
        with the whole selection, computed in Python and written with one ``executemany`` on
        the driver's cursor. None on other dialects (MySQL/MariaDB: no LIMIT subqueries on the
        updated table): they take the scan path."""
        rule = selection.rule
        assert rule.anonymize is not None
        dialect = self.engine.dialect
        if dialect.name not in ("sqlite", "postgresql"):
            return None
        if not all(anon.is_sql(s) for s in rule.anonymize.columns.values()):
            return self._computed_next(selection, after, limit, intent)
        if not dialect.update_returning:
            return None
        table = self.table(rule)
        key = self.key(rule, table)
        marker = table.c[rule.anonymize.marker]
        values = {marker.name: bound(marker, selection.now)} | self._sql_values(rule, table)
        dml = sa.update(table).where(self.predicate(selection, table)).values(**values)
        return self.run_next(f"anonymising {table.name}", dml, key,
                             self.pick(selection, table, after, limit), intent)

    def _computed_next(self, selection: Selection, after: Any, limit: int,
                       intent: Callable[[list[Any]], None]) -> NextBatch:
        """A batch with Python strategies in one transaction: the store's write lock taken
        (SQLite) or the rows locked (``FOR UPDATE``, PostgreSQL re-checks the selection on a
        row changed meanwhile) by the read that picks the next ``limit`` selected keys above
        ``after`` with the columns to compute; the new values written by key with one
        ``executemany``; the intent written before the commit. After an integrity error the
        batch is read again and its records that fail are left alone (:func:`split`)."""
        rule = selection.rule
        assert rule.anonymize is not None
        table = self.table(rule)
        key = self.key(rule, table)
        marker = table.c[rule.anonymize.marker]
        computed = _computed(rule, self._secret())
        read = sa.select(*key.read, *(table.c[c] for c in computed)).where(
            self.predicate(selection, table))
        if after is not None:
            read = read.where(key.after(after))
        read = read.order_by(*key.order).limit(limit).with_for_update()
        write = self._computed_writer(selection, table, key)
        doing = f"anonymising {table.name}"
        written = False
        with self._errors(doing):
            try:
                with self.engine.begin() as conn:
                    _take_write_lock(conn, table, marker)
                    rows = conn.execute(read).all()
                    if not rows:
                        return NextBatch([], None)
                    write(conn, rows)
                    keys = key.values(rows)
                    intent(keys)  # durable before the store commits: a crash rolls back
                    written = True
                    return NextBatch(keys, keys[-1])
            except DBAPIError as exc:
                # Failing at COMMIT leaves an intent behind that reconcile settles.
                if written or integrity_reason(exc) is None:
                    raise
            with self.engine.begin() as conn:
                _take_write_lock(conn, table, marker)
                picked = key.values(conn.execute(read.with_only_columns(*key.read)).all())
                disposed, failed = split(conn, picked, self._anonymize_attempt(selection))
                disposed.sort(key=key.params)
                if disposed:
                    intent(disposed)
        log.warning("records failed", failed=sum(failed.values()), disposed=len(disposed))
        return NextBatch(disposed, picked[-1] if picked else None, failed)

    def _computed_writer(self, selection: Selection, table: sa.Table, key: Key
                         ) -> Callable[[Connection, Sequence[Sequence[Any]]], None]:
        """What writes a batch of Python-computed values: ``UPDATE <table> SET <marker> = ?,
        <SQL strategies>, <column> = ? ... WHERE <key> = ?`` compiled once per rule and run
        with one ``executemany`` on the driver's cursor inside the caller's transaction (on
        psycopg 3 one pipelined round trip), binding each row's values without SQLAlchemy's
        per-row processing. ``rows`` are ``key.read`` columns then the computed columns'
        current values, read under lock with the whole selection."""
        rule = selection.rule
        assert rule.anonymize is not None
        marker = table.c[rule.anonymize.marker]
        computed = _computed(rule, self._secret())
        compiled = self._computed_update(rule, table, key, list(computed))
        now = bound(marker, selection.now)
        fns = list(computed.values())
        n = len(key.columns)

        def write(conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
            if n == 1 and len(fns) == 1:  # the common case, without a generator per row
                fn = fns[0]
                compiled.run(conn, now, [(r[0], fn(r[1])) for r in rows])
                return
            compiled.run(conn, now, [(*r[:n], *(f(v) for f, v in zip(fns, r[n:], strict=True)))
                                     for r in rows])

        return write

    def _computed_update(self, rule: Rule, table: sa.Table, key: Key, columns: list[str]
                         ) -> _Compiled:
        cache = self._computed_updates
        if rule.id not in cache:
            assert rule.anonymize is not None
            marker = table.c[rule.anonymize.marker]
            stmt = sa.update(table).where(*(c == sa.bindparam(f"_key_{i}")
                                            for i, c in enumerate(key.cmp))).values(
                {marker.name: sa.bindparam("_marker", type_=marker.type)}
                | self._sql_values(rule, table)
                | {c: sa.bindparam(f"_new_{i}", type_=table.c[c].type)
                   for i, c in enumerate(columns)})
            cache[rule.id] = _Compiled(stmt, self.engine.dialect,
                                       [f"_key_{i}" for i in range(len(key.columns))]
                                       + [f"_new_{i}" for i in range(len(columns))])
        return cache[rule.id]

    def _secret(self) -> bytes:
        return self.policy.secret_bytes

    def _sql_values(self, rule: Rule, table: sa.Table) -> dict[str, Any]:
        assert rule.anonymize is not None
        dialect = self.engine.dialect.name
        # Reflecting the columns costs a catalog query per batch; only `default` needs it.
        needs = any(s.strategy == "default" for s in rule.anonymize.columns.values())
        defaults = self._server_defaults(table) if needs else {}
        return {c: anon.sql_expression(s, table.c[c], dialect, defaults.get(c))
                for c, s in rule.anonymize.columns.items() if anon.is_sql(s)}

    def _server_defaults(self, table: sa.Table) -> dict[str, str | None]:
        cols = sa.inspect(self.engine).get_columns(table.name, table.schema)
        return {c["name"]: c.get("default") for c in cols}

    # -- isolate ------------------------------------------------------------------------------
    def isolate(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        if not keys:
            return []
        rule = selection.rule
        table = self.table(rule)
        iso = self.isolated_table(rule, create=True)
        key = self.key(rule, table)
        selected = self.predicate(selection, table)
        now = datetime.now(UTC).replace(tzinfo=None)
        purge_after = (selection.purge_after or datetime.now(UTC)).astimezone(UTC).replace(
            tzinfo=None)
        columns = [c.name for c in table.columns]
        copy = sa.select(*table.columns, sa.literal(now, sa.DateTime),
                         sa.literal(rule.id, sa.String), sa.literal(purge_after, sa.DateTime))

        def attempt(conn: Connection, part: Sequence[Any]) -> list[Any]:
            where = sa.and_(key.in_(self.engine.dialect.name, part), selected)
            _take_write_lock(conn, table, key.columns[0])
            locked = key.values(conn.execute(sa.select(*key.read).where(where)
                                             .with_for_update()).all())
            if locked:
                taken = key.in_(conn.dialect.name, locked)
                with self.cascading_batch(conn, table, where):
                    conn.execute(sa.insert(iso).from_select([*columns, *EXTRA_COLUMNS],
                                                            copy.where(taken)))
                    conn.execute(sa.delete(table).where(taken))
            return locked

        return self.each(f"isolating {table.name}", keys, attempt)

    @overload
    def isolated_table(self, rule: Rule, *, create: Literal[True]) -> sa.Table: ...

    @overload
    def isolated_table(self, rule: Rule, *, create: bool = False) -> sa.Table | None: ...

    def isolated_table(self, rule: Rule, *, create: bool = False) -> sa.Table | None:
        """The table isolated records of ``rule`` are moved to; None when it does not exist,
        unless ``create``."""
        name = isolated_name(rule)
        if name in self._iso_tables:
            return self._iso_tables[name]
        schema, _, bare = name.rpartition(".")
        try:
            with self._errors(f"reading table {name}"):
                found = sa.Table(bare, sa.MetaData(), schema=schema or None,
                                 autoload_with=self.engine, listeners=LISTENERS)
        except NoSuchTableError:
            if not create:
                return None
            found = self._create_isolated(rule, bare, schema or None)
        self._iso_tables[name] = found
        return found

    def _create_isolated(self, rule: Rule, name: str, schema: str | None) -> sa.Table:
        live = self.table(rule)
        columns = [sa.Column(c.name, c.type, nullable=True) for c in live.columns]
        iso = sa.Table(name, sa.MetaData(),
                       *columns,
                       sa.Column("retentiond_isolated_at", sa.DateTime, nullable=False),
                       sa.Column("retentiond_rule", sa.String(64), nullable=False),
                       sa.Column("retentiond_purge_after", sa.DateTime, nullable=False),
                       sa.Index(f"ix_{name}_purge", "retentiond_rule", "retentiond_purge_after"),
                       schema=schema)
        with self._errors(f"creating table {name}"):
            iso.create(self.engine, checkfirst=True)
        return iso

    def scan_isolated(self, rule: Rule, now: datetime, batch_size: int
                      ) -> Iterator[list[Candidate]]:
        iso = self.isolated_table(rule)
        if iso is None:
            return
        key = Key(iso, rule.key_columns, self.engine.dialect)
        base = (sa.select(*key.read).distinct().where(*_purgeable(iso, rule, now))
                .order_by(*key.order))
        last: Any = None
        while True:
            q = (base if last is None else base.where(key.after(last))).limit(batch_size)
            with self._errors(f"scanning {iso.name}"), self.engine.connect() as conn:
                keys = key.values(conn.execute(q).all())
            if not keys:
                return
            yield [Candidate(k) for k in keys]
            if len(keys) < batch_size:
                return
            last = keys[-1]

    def purge_isolated(self, rule: Rule, now: datetime, keys: Sequence[Any]) -> list[Any]:
        iso = self.isolated_table(rule)
        if iso is None or not keys:
            return []
        key = Key(iso, rule.key_columns, self.engine.dialect)
        where = sa.and_(key.in_(self.engine.dialect.name, keys), *_purgeable(iso, rule, now))
        with self._errors(f"purging {iso.name}"), self.engine.begin() as conn:
            _take_write_lock(conn, iso, key.columns[0])
            locked = sorted(set(key.values(conn.execute(sa.select(*key.read).where(where)
                                                        .with_for_update()).all())))
            if locked:
                conn.execute(sa.delete(iso).where(where))
            return locked

    # -- reading for replay and reconciliation ------------------------------------------------
    def _present(self, rule: Rule, action: str, refs: set[str],
                 ref_of: Callable[[Any], str]) -> list[Any]:
        table = self.isolated_table(rule) if action == "purge" else self.table(rule)
        if table is None:
            return []
        key = Key(table, rule.key_columns, self.engine.dialect)
        base = sa.select(*key.read).order_by(*key.order)
        if action == "anonymize" and rule.anonymize:
            base = base.where(table.c[rule.anonymize.marker].is_(None))
        found: list[Any] = []
        last: Any = None
        while True:
            q = (base if last is None else base.where(key.after(last))).limit(20_000)
            with self._errors(f"reading {table.name}"), self.engine.connect() as conn:
                keys = key.values(conn.execute(q).all())
            found.extend(k for k in keys if ref_of(k) in refs)
            if len(keys) < 20_000:
                return found
            last = keys[-1]

    def present(self, rule: Rule, action: str, refs: set[str],
                ref_of: Callable[[Any], str]) -> list[Any]:
        return self._present(rule, action, refs, ref_of)

    def remaining(self, rule: Rule, action: str, refs: set[str],
                  ref_of: Callable[[Any], str]) -> set[str]:
        return {ref_of(k) for k in self._present(rule, action, refs, ref_of)}

    # -- validation ---------------------------------------------------------------------------
    def validate_actions(self, rule: Rule, table: sa.Table) -> list[Problem]:
        problems: list[Problem] = []
        if "anonymize" in (rule.action, rule.on_erasure) and rule.anonymize is not None:
            problems += self._validate_anonymize(rule, table)
        if "isolate" in (rule.action, rule.on_erasure):
            problems += self._validate_isolated(rule, table)
        return problems

    def _validate_anonymize(self, rule: Rule, table: sa.Table) -> list[Problem]:
        assert rule.anonymize is not None
        opts = rule.anonymize
        problems: list[Problem] = []
        marker = table.c.get(opts.marker)
        if marker is None:
            problems.append(("anonymize.marker", f"column {table.name}.{opts.marker} does not "
                             "exist; add a nullable timestamp column for retentiond to set"))
        elif not marker.nullable:
            problems.append(("anonymize.marker", f"column {table.name}.{opts.marker} is NOT "
                             "NULL; the marker must be nullable (NULL = not yet anonymised)"))
        infos = self._column_infos(table)
        for name, strategy in opts.columns.items():
            path = f"anonymize.columns.{name}"
            if name not in infos:
                problems.append((path, f"column {table.name}.{name} does not exist"))
            elif name in (*rule.key_columns, opts.marker):
                problems.append((path, f"{table.name}.{name} is the rule's key or marker and "
                                 "cannot be anonymised"))
            else:
                problems += [(path, msg) for msg in anon.check(strategy, infos[name], table.name)]
                problems += [(path, msg) for msg in domain_problems(
                    self.engine, strategy, infos[name], table.name, self._secret())]
        return problems

    def _column_infos(self, table: sa.Table) -> dict[str, anon.ColumnInfo]:
        insp = sa.inspect(self.engine)
        # An expression index names no column: its entry in column_names is None.
        unique: set[tuple[str | None, ...]] = {tuple(u["column_names"]) for u in
                                               insp.get_unique_constraints(table.name,
                                                                           table.schema)}
        unique |= {tuple(i["column_names"]) for i in insp.get_indexes(table.name, table.schema)
                   if i.get("unique")}
        pk = {c.name for c in table.primary_key.columns}
        cols = {c.name: c for c in table.columns}  # reflected: a domain is its base type
        return {c["name"]: anon.ColumnInfo(c["name"], cols[c["name"]].type,
                                           bool(cols[c["name"]].nullable), c.get("default"),
                                           c["name"] in pk, (c["name"],) in unique,
                                           cols[c["name"]].info.get("domain"))
                for c in insp.get_columns(table.name, table.schema)}

    def _validate_isolated(self, rule: Rule, table: sa.Table) -> list[Problem]:
        iso = self.isolated_table(rule)
        if iso is None:
            return []
        missing = [c.name for c in table.columns if c.name not in iso.c]
        missing += [c for c in EXTRA_COLUMNS if c not in iso.c]
        if missing:
            return [("isolate.table", f"table {iso.name} exists but lacks "
                     f"{', '.join(missing)}; it is not {table.name}'s isolation table")]
        return []


def _purgeable(iso: sa.Table, rule: Rule, now: datetime) -> list[sa.ColumnElement[bool]]:
    utc = now.astimezone(UTC).replace(tzinfo=None)
    return [iso.c.retentiond_rule == rule.id, iso.c.retentiond_purge_after <= utc]


def _computed(rule: Rule, secret: bytes) -> dict[str, Callable[[Any], Any]]:
    """The rule's Python-computed strategies (mask, hmac, fake), by column."""
    assert rule.anonymize is not None
    return {c: anon.python_function(s, secret)
            for c, s in rule.anonymize.columns.items() if not anon.is_sql(s)}


class _Compiled:
    """An ``UPDATE`` binding ``_marker`` once per batch and ``names`` (the key's components,
    then the computed values) per row, compiled once and run with one ``executemany`` on the
    DBAPI cursor of the caller's transaction. Values go through the same bind processors
    SQLAlchemy would apply (SQLite's text for a timestamp); a driver error is raised as
    SQLAlchemy raises it, for the adapter to map. A statement with expanding parameters is
    run through SQLAlchemy instead."""

    def __init__(self, stmt: sa.Update, dialect: sa.Dialect, names: list[str]) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.stmt, self.names, self.dialect = stmt, names, dialect
        self.sql = str(compiled)
        wanted = [*names, "_marker"]
        self.plain = ("POSTCOMPILE" not in self.sql
                      and all(n in compiled.binds for n in wanted))
        self.processors: dict[str, Any] = dict(getattr(compiled, "_bind_processors", {}))
        self.base = dict(compiled.construct_params(dict.fromkeys(wanted))) if self.plain else {}
        self.escaped: dict[str, str] = dict(compiled.escaped_bind_names or {})
        self.order = list(compiled.positiontup) if compiled.positiontup else None
        # Per row: where each per-row value goes (a position, or a parameter's name).
        index = {n: i for i, n in enumerate(names)}
        self.at = [(pos, index[n], self.processors.get(n))
                   for pos, n in enumerate(self.order or ()) if n in index]
        self.named = [(self.escaped.get(n, n), index[n], self.processors.get(n))
                      for n in names]

    def run(self, conn: Connection, marker: Any, rows: Sequence[Sequence[Any]]) -> None:
        if not self.plain:
            conn.execute(self.stmt, [{"_marker": marker, **dict(zip(self.names, r, strict=True))}
                                     for r in rows])
            return
        fixed = {n: self.processors[n](v) if n in self.processors else v
                 for n, v in {**self.base, "_marker": marker}.items()}
        params: list[Any]
        if self.order is not None and all(proc is None for _, _, proc in self.at):
            # Each row's parameters picked from the row followed by the fixed values.
            fixed_values = tuple(fixed[n] for n in self.order)
            width = len(self.names)
            at = {pos: i for pos, i, _ in self.at}
            pick = operator.itemgetter(*(at[pos] if pos in at else width + pos
                                         for pos in range(len(self.order))))
            params = [pick((*r, *fixed_values)) for r in rows]
            if len(self.order) == 1:
                params = [(p,) for p in params]
        elif self.order is not None:
            template = [fixed[n] for n in self.order]
            params = []
            for r in rows:
                p = template.copy()
                for pos, i, proc in self.at:
                    p[pos] = r[i] if proc is None else proc(r[i])
                params.append(p)
        else:
            named = {self.escaped.get(n, n): v for n, v in fixed.items()}
            params = []
            for r in rows:
                d = named.copy()
                for name, i, proc in self.named:
                    d[name] = r[i] if proc is None else proc(r[i])
                params.append(d)
        cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.executemany(self.sql, params)
        except self.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(self.sql, None, exc, self.dialect.loaded_dbapi.Error,
                                      dialect=self.dialect) from exc
        finally:
            cur.close()


def _take_write_lock(conn: Connection, table: sa.Table, column: sa.Column[Any]) -> None:
    """On SQLite, take the database's write lock before reading the batch, so nothing can
    change between the read and the write (other backends lock rows with FOR UPDATE)."""
    if conn.dialect.name == "sqlite":
        conn.execute(sa.update(table).where(sa.false()).values({column.name: column}))


def _update_returning(conn: Connection, table: sa.Table, key: Key,
                      where: sa.ColumnElement[bool], values: dict[str, Any]) -> list[Any]:
    if conn.dialect.update_returning:
        return key.values(conn.execute(sa.update(table).where(where).values(**values)
                                       .returning(*key.read)).all())
    locked = key.values(conn.execute(sa.select(*key.read).where(where).with_for_update())
                        .all())
    if locked:
        conn.execute(sa.update(table).where(key.in_(conn.dialect.name, locked))
                     .values(**values))
    return locked
