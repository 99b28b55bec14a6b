"""Foreign keys that refer to a rule's table, in the same store (mixed into SqlAdapter).

A delete or isolate removes the row from the live table, so every foreign key that refers to
it matters:

* RESTRICT / NO ACTION (and SET DEFAULT, which may fail in the same way): a record referenced
  by a row of the referencing table is *blocked*. :meth:`SqlRefs.blocking` is a ``NOT EXISTS``
  per such key (every column pair of a composite key) that :meth:`SqlAdapter.predicate` puts
  on the disposing statement itself, so it is re-checked by every batch: a referencing row
  an earlier rule of the sweep disposed no longer blocks. A referencing row inserted by a
  concurrent transaction after the statement's snapshot (PostgreSQL does not re-run
  subqueries when it re-checks a locked row) makes the statement fail with a foreign-key
  violation: the store protecting itself; nothing is disposed by that batch.
* CASCADE / SET NULL: the disposal deletes or rewrites referencing rows; they are counted
  per key and table down every chain of CASCADE keys (customers <- rentals CASCADE <- payments
  CASCADE <- receipts SET NULL: rentals, payments and receipts), a row that two chains reach
  through the same key once, up to ``MAX_CASCADE_DEPTH`` keys deep. When the referencing table
  has rules of its own, a record that a row those rules *protect* refers to (a hold, a floor,
  on_erasure: keep: the selection's :class:`Guard` for that table) is blocked like a RESTRICT
  one, by a ``NOT EXISTS`` on the disposing statement; unprotected referencing rows still
  cascade. The same holds down a chain of CASCADE keys (a held payment blocks its rental's
  customer), by nested ``EXISTS``; and a RESTRICT / NO ACTION key that refers to a row the
  chain would delete blocks the record, named by that key (the delete would fail there). A
  SET NULL key ends a chain (the rewritten row survives: only its own protection blocks).
  Not covered: a table referring to itself, and a cycle of keys (the chain stops where it
  would enter a table already on it, adding no blocking or counts there); a self-referencing
  RESTRICT key blocks a row that another due row refers to, until that row is gone (a later
  sweep).

Keys from any schema of the store count (PostgreSQL, MariaDB: one catalog query; SQLite: its
main database): one from another schema than the rule's table is named ``schema.table``.
A partitioned referencing table (PostgreSQL) is named once, by its parent and the parent's
constraint; the partitions' copies are skipped. Unnamed constraints (SQLite) are named by
their columns, ``rentals(customer_id)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from retentiond.adapters.base import Guard, Problem, Selection

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlalchemy.engine import Connection, Engine

    from retentiond.adapters.sqlexpr import Key
    from retentiond.policy.model import Policy, Rule

# ON DELETE as reflected (None: the default, NO ACTION) -> what a disposal meets.
_ON_DELETE = {"CASCADE": "delete", "SET NULL": "set_null"}
REMOVES = ("delete", "isolate")
# How many CASCADE keys deep a chain is followed (SQLite: fewer, its parser's nesting limit),
# and how many keys one disposal's chains visit in all (a lattice of keys is bounded); past
# either, a row that would be deleted blocks its record (blocking) or is not counted (counts).
MAX_CASCADE_DEPTH = 8
SQLITE_CASCADE_DEPTH = 3
MAX_CHAIN_KEYS = 48

# Every foreign key of any schema that refers to the table :s.:n (:s None: as the connection
# resolves the bare name), a row per column pair in key order: constraint, the referencing
# table's schema and name, ON DELETE, referencing column, referred column. PostgreSQL: the
# copies a partition inherits from its parent's key (conparentid <> 0) are skipped, the key is
# named once by its parent. The copies on the referred side (a key to a partitioned table has
# one per partition, on the same referencing table) are kept: for a rule that names one
# partition they are the only keys that point at it.
_PG_REFS = """
select c.conname, n.nspname, t.relname,
       case c.confdeltype when 'c' then 'CASCADE' when 'n' then 'SET NULL'
            when 'd' then 'SET DEFAULT' when 'r' then 'RESTRICT' else 'NO ACTION' end,
       a.attname, fa.attname
from pg_constraint c
join pg_class t on t.oid = c.conrelid
join pg_namespace n on n.oid = t.relnamespace
cross join lateral unnest(c.conkey, c.confkey) with ordinality as k(col, ref, i)
join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.col
join pg_attribute fa on fa.attrelid = c.confrelid and fa.attnum = k.ref
where c.contype = 'f' and (c.conparentid = 0 or not t.relispartition)
  and c.confrelid = (case when cast(:s as text) is null then quote_ident(:n)
                     else quote_ident(cast(:s as text)) || '.' || quote_ident(:n)
                     end)::regclass
order by n.nspname, t.relname, c.conname, k.i
"""
_MY_REFS = """
select rc.CONSTRAINT_NAME, k.TABLE_SCHEMA, k.TABLE_NAME, rc.DELETE_RULE, k.COLUMN_NAME,
       k.REFERENCED_COLUMN_NAME
from information_schema.REFERENTIAL_CONSTRAINTS rc
join information_schema.KEY_COLUMN_USAGE k
  on k.CONSTRAINT_SCHEMA = rc.CONSTRAINT_SCHEMA and k.CONSTRAINT_NAME = rc.CONSTRAINT_NAME
 and k.TABLE_NAME = rc.TABLE_NAME
where k.REFERENCED_TABLE_SCHEMA = coalesce(:s, database()) and k.REFERENCED_TABLE_NAME = :n
order by k.TABLE_SCHEMA, k.TABLE_NAME, rc.CONSTRAINT_NAME, k.ORDINAL_POSITION
"""


@dataclass(frozen=True)
class Reference:
    constraint: str
    table: str  # the referencing table, as a rule would name it
    source: Any  # the referencing table (an alias of a lightweight table)
    columns: tuple[str, ...]  # referencing columns
    referred: tuple[str, ...]  # the referred columns of the rule's table, pairwise
    effect: str  # block, delete or set_null

    def pairs(self, row: sa.FromClause, parent: sa.FromClause) -> list[sa.ColumnElement[bool]]:
        """The key's column pairs between a row of its referencing table and a row of the
        table it refers to, either possibly an alias."""
        return [row.c[c] == parent.c[r] for c, r in zip(self.columns, self.referred, strict=True)]

    def refers(self, parent: sa.FromClause) -> sa.Exists:
        """``EXISTS`` a row of the referencing table (a new alias) that refers to the row of
        ``parent``."""
        other = _lite(self.source.element, self.columns)
        return sa.exists(sa.select(sa.literal(1)).select_from(other)
                         .where(*self.pairs(other, parent)))


class SqlRefs:
    """Relies on SqlAdapter's table(), engine, _errors(), predicate(), count()."""

    if TYPE_CHECKING:
        _refs: dict[str, list[Reference]]
        _folds: bool | None
        _default: str | None
        policy: Policy
        store_name: str
        _cascaded: dict[tuple[str, str, str], int]

        @property
        def engine(self) -> Engine: ...
        def table(self, rule: Rule) -> sa.Table: ...
        def _errors(self, doing: str) -> AbstractContextManager[None]: ...
        def predicate(self, sel: Selection, table: sa.Table) -> sa.ColumnElement[bool]: ...
        def count(self, selection: Selection) -> int: ...
        def key(self, rule: Rule, table: sa.Table | None = None) -> Key: ...

    def references(self, table: sa.TableClause) -> list[Reference]:
        """Foreign keys that refer to ``table``: from any schema of the store (PostgreSQL,
        MariaDB), from its own database (SQLite)."""
        name = table.name if table.schema is None else f"{table.schema}.{table.name}"
        if name not in self._refs:
            with self._errors(f"reading the foreign keys that refer to {table.name}"):
                self._refs[name] = self._reflect(table)
        return self._refs[name]

    def _reflect(self, table: sa.TableClause) -> list[Reference]:
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            return self._reflect_catalog(table, _PG_REFS)
        if dialect in ("mysql", "mariadb"):
            return self._reflect_catalog(table, _MY_REFS)
        if dialect == "sqlite":
            return self._reflect_same_schema(table)
        return self._reflect_inspected(table)

    def _reflect_inspected(self, table: sa.TableClause) -> list[Reference]:
        """Any other dialect: SQLAlchemy's reflection of the table's schema."""
        insp = sa.inspect(self.engine)
        schema = table.schema
        out: list[Reference] = []
        every = insp.get_multi_foreign_keys(schema=schema)
        for (_, other), fks in sorted(every.items(), key=lambda kv: kv[0][1]):
            for fk in fks:
                if (str(fk["referred_table"]) != table.name
                        or (fk.get("referred_schema") or schema) != schema):
                    continue
                cols = tuple(fk["constrained_columns"])
                ondelete = str((fk.get("options") or {}).get("ondelete") or "").upper()
                lite = sa.table(other, *(sa.column(c) for c in cols), schema=schema)
                out.append(Reference(
                    fk.get("name") or f"{other}({', '.join(cols)})",
                    other if schema is None else f"{schema}.{other}",
                    lite.alias(f"rtd_ref{len(out)}"), cols, tuple(fk["referred_columns"]),
                    _ON_DELETE.get(ondelete, "block")))
        return out

    def _reflect_catalog(self, table: sa.TableClause, query: str) -> list[Reference]:
        """Every foreign key, in any schema of the store, that refers to ``table``: one
        catalog query. A key from another schema is named ``schema.table``."""
        schema = table.schema
        with self.engine.connect() as conn:
            default = sa.inspect(conn).default_schema_name
            rows = conn.execute(sa.text(query), {"s": schema, "n": table.name}).all()
        keys: dict[tuple[str, str, str], tuple[str, list[str], list[str]]] = {}
        for name, ref_schema, other, rule, col, referred in rows:
            at = (str(ref_schema), str(other), str(name))
            keys.setdefault(at, (str(rule), [], []))
            keys[at][1].append(str(col))
            keys[at][2].append(str(referred))
        mine = schema or default
        out: list[Reference] = []
        for (ref_schema, other, name), (rule, cols, referred) in sorted(
                keys.items(), key=lambda kv: (kv[0][0] != mine, kv[0])):
            if ref_schema == mine:
                source_schema, label = schema, (other if schema is None
                                                else f"{schema}.{other}")
            else:
                source_schema, label = ref_schema, f"{ref_schema}.{other}"
            lite = sa.table(other, *(sa.column(c) for c in cols), schema=source_schema)
            out.append(Reference(name, label, lite.alias(f"rtd_ref{len(out)}"), tuple(cols),
                                 tuple(referred), _ON_DELETE.get(rule.upper(), "block")))
        return out

    def _reflect_same_schema(self, table: sa.TableClause) -> list[Reference]:
        """SQLite: every key of the table's database that refers to it, from ``PRAGMA
        foreign_key_list`` (SQLAlchemy's reflection loses ``ON DELETE`` of a column-level
        ``REFERENCES ... ON DELETE CASCADE``, the usual SQLite style); names from the
        reflected constraints where they have one, else ``table(columns)``."""
        schema = table.schema
        db = f'"{_ident(schema)}".' if schema else ""
        insp = sa.inspect(self.engine)
        out: list[Reference] = []
        with self.engine.connect() as conn:
            names = sorted(conn.exec_driver_sql(
                f"select name from {db}sqlite_master where type = 'table'").scalars())
            for other in names:
                rows = conn.exec_driver_sql(
                    f'PRAGMA {db}foreign_key_list("{_ident(other)}")').all()
                keys: dict[int, list[Any]] = {}
                for row in rows:
                    keys.setdefault(int(row[0]), []).append(row)
                named = None
                for _, parts in sorted(keys.items()):
                    parts.sort(key=lambda r: int(r[1]))
                    if str(parts[0][2]).casefold() != table.name.casefold():
                        continue
                    cols = tuple(str(r[3]) for r in parts)
                    referred = tuple(str(r[4]) for r in parts if r[4] is not None)
                    if len(referred) != len(cols):  # REFERENCES t: its primary key
                        referred = tuple(insp.get_pk_constraint(
                            table.name, schema)["constrained_columns"])
                    if named is None:
                        named = {tuple(fk["constrained_columns"]): fk.get("name")
                                 for fk in insp.get_foreign_keys(other, schema)}
                    lite = sa.table(other, *(sa.column(c) for c in cols), schema=schema)
                    out.append(Reference(
                        named.get(cols) or f"{other}({', '.join(cols)})",
                        other if schema is None else f"{schema}.{other}",
                        lite.alias(f"rtd_ref{len(out)}"), cols, referred,
                        _ON_DELETE.get(str(parts[0][6]).upper(), "block")))
        return out

    def blocking(self, sel: Selection, table: sa.Table) -> list[sa.ColumnElement[bool]]:
        """``NOT EXISTS`` a referencing row, per blocking key, for a disposal that removes
        rows (delete, isolate); nothing otherwise."""
        if not sel.skip_blocked or sel.action not in REMOVES:
            return []
        return [~exists for _, exists in self._blockers(sel, table)]

    def _blockers(self, sel: Selection, table: sa.Table
                  ) -> list[tuple[Reference, sa.ColumnElement[bool]]]:
        """Per key that blocks records of ``sel``: RESTRICT / NO ACTION keys (any referencing
        row blocks), and CASCADE / SET NULL keys through which the disposal would delete or
        rewrite a row the selection's guards protect, at the key's own table or further down a
        chain of CASCADE keys; a RESTRICT / NO ACTION key that refers to a row such a chain
        would delete blocks too, named by itself, and so does a CASCADE key back into a table
        already on the chain (see :meth:`_below`). A key reached by two chains is listed
        once."""
        found: dict[tuple[str, str], tuple[Reference, list[sa.ColumnElement[bool]]]] = {}
        budget = [MAX_CHAIN_KEYS]
        for r in self.references(table):
            if r.effect == "block":
                found.setdefault((r.constraint, r.table), (r, []))[1].append(r.refers(table))
                continue
            for namer, exists in self._below(sel, table, r, frozenset({self._at(table)}),
                                             depth=1, budget=budget):
                by = namer or r
                found.setdefault((by.constraint, by.table), (by, []))[1].append(exists)
        return [(r, _any(conds)) for r, conds in found.values()]

    def _below(self, sel: Selection, parent: sa.FromClause, r: Reference,
               visited: frozenset[tuple[str, str]], *, depth: int, budget: list[int]
               ) -> list[tuple[Reference | None, sa.Exists]]:
        """What blocks a row of ``parent`` through the CASCADE / SET NULL key ``r``: ``EXISTS``
        a row of ``r``'s referencing table, joined by ``r`` to it, that its table's guard
        protects (named None: by the first key of the chain) or, when ``r`` cascades the
        delete, that a RESTRICT / NO ACTION key refers to (named by that key: the delete would
        fail there), or that would in turn cascade to such a row: recursively, for every key
        that refers to that table. SET NULL ends a chain (the rewritten row survives, so only
        its own protection counts).

        Where the chain cannot be followed, a row that ``r`` would delete blocks, named by
        ``r`` (keeping errs on the safe side): a CASCADE key back into a table already on the
        chain (``visited``; a table referring to itself, a cycle of keys: the rows it deletes
        are not checked for what protects them), and a table with keys of its own below the
        last key followed (:data:`MAX_CASCADE_DEPTH` keys deep, or :data:`MAX_CHAIN_KEYS`
        keys in all: ``budget``)."""
        lite = r.source.element
        at = self._at(lite)
        if at in visited:
            return [(r, r.refers(parent))] if r.effect == "delete" else []
        guard = self._guard_of(r, sel.guards)
        real = (self.table(guard.selections[0].rule)
                if guard is not None and guard.selections else None)
        below = self.references(lite) if r.effect == "delete" else []
        budget[0] -= 1
        if below and (depth >= self._max_depth() or budget[0] < 0):
            return [(r, r.refers(parent))]
        row: sa.FromClause
        if real is not None:
            row = real
        elif below:
            row = _lite(lite, [*r.columns, *(c for x in below for c in x.referred)])
        else:
            return []
        found: dict[Reference | None, list[sa.ColumnElement[bool]]] = {}
        if guard is not None and real is not None:
            found[None] = [self.predicate(s, real) for s in guard.selections]
        for x in below:
            if x.effect == "block":
                found.setdefault(x, []).append(x.refers(row))
                continue
            for namer, deeper in self._below(sel, row, x, visited | {at}, depth=depth + 1,
                                             budget=budget):
                found.setdefault(namer, []).append(deeper)
        joins = r.pairs(row, parent)
        return [(namer, sa.exists(sa.select(sa.literal(1)).select_from(row)
                                  .where(*joins, _any(conds))))
                for namer, conds in found.items()]

    def _max_depth(self) -> int:
        """How many keys deep a chain is followed: SQLite's parser gives up on the nesting
        of a longer chain inside the disposing statement and its cascade count."""
        return SQLITE_CASCADE_DEPTH if self.engine.dialect.name == "sqlite" else (
            MAX_CASCADE_DEPTH)

    def _at(self, table: sa.FromClause) -> tuple[str, str]:
        """A table as (schema, name), a bare name in the store's default schema, both folded
        where the server compares names without case."""
        t = table.element if isinstance(table, sa.Alias) else table
        assert isinstance(t, sa.TableClause)
        return self._norm(t.schema, t.name)

    def _norm(self, schema: str | None, name: str) -> tuple[str, str]:
        if self._default is None:
            self._default = self.default_schema() or ""
        at = (schema or self._default, name)
        return (at[0].casefold(), at[1].casefold()) if self.folds_names() else at

    def _guard_of(self, ref: Reference, guards: tuple[Guard, ...]) -> Guard | None:
        """The guard of the referencing table: the same table, a bare name being in the
        store's default schema (``other.payments`` is not the guard of ``payments``)."""
        schema, _, bare = ref.table.rpartition(".")
        want = self._norm(schema or None, bare)
        for g in guards:
            gs, _, gb = g.table.rpartition(".")
            if self._norm(gs or None, gb) == want:
                return g
        return None

    def blocked(self, selection: Selection) -> tuple[int, list[dict[str, Any]]]:
        """Records the blocking keys leave out of the selection (the selection without them,
        minus with them) and, per key, how many of the selection it refers to: a record that
        two keys block counts once in the total and once under each key."""
        if selection.action not in REMOVES or selection.everything_excluded:
            return 0, []
        table = self.table(selection.rule)
        keys = self._blockers(selection, table)
        if not keys:
            return 0, []
        whole = replace(selection, skip_blocked=False)
        total = self.count(whole) - self.count(selection)
        if not total:
            return 0, []
        where = self.predicate(whole, table)
        by = [{"constraint": r.constraint, "table": r.table,
               "count": self._scalar(sa.select(sa.func.count()).select_from(table)
                                     .where(where, exists))} for r, exists in keys]
        return total, [b for b in by if b["count"]]

    def blocking_record(self, selection: Selection, key: Any) -> list[dict[str, str]]:
        """The keys that block the one record ``key`` (as :meth:`Key.value` reads it) of
        ``selection``'s table, ``[{constraint, table}]``: ``explain``."""
        if selection.action not in REMOVES:
            return []
        table = self.table(selection.rule)
        keys = self._blockers(selection, table)
        if not keys:
            return []
        where = self.key(selection.rule, table).in_(self.engine.dialect.name, [key])
        q = sa.select(*(sa.case((e, 1), else_=0) for _, e in keys)).where(where)
        with self._errors("reading the keys that refer to the record"), \
                self.engine.connect() as conn:
            row = conn.execute(q).first()
        return [{"constraint": r.constraint, "table": r.table}
                for (r, _), hit in zip(keys, row or (), strict=False) if hit]

    def cascades(self, selection: Selection) -> list[dict[str, Any]]:
        if selection.action not in REMOVES or selection.everything_excluded:
            return []
        table = self.table(selection.rule)
        with self.engine.connect() as conn:
            return self._cascade_counts(conn, table, self.predicate(selection, table))

    def _cascade_counts(self, conn: Connection, table: sa.Table,
                        where: sa.ColumnElement[bool]) -> list[dict[str, Any]]:
        """Rows that disposing the records ``where`` selects deletes or rewrites, per CASCADE /
        SET NULL key and table, down every chain of CASCADE keys (:meth:`_reached`): a row
        that two chains reach through the same key counts once."""
        out = []
        for r, parents in self._reached(table, where):
            row = _lite(r.source.element, r.columns)
            hit = []
            for parent in parents:
                up, deleted = parent()
                hit.append(_among(row, r, up, deleted))
            q = sa.select(sa.func.count()).select_from(row).where(_any(hit))
            with self._errors(f"counting {r.table}"):
                n = int(conn.execute(q).scalar_one())
            if n:
                out.append({"constraint": r.constraint, "table": r.table, "action": r.effect,
                            "count": n})
        return out

    def _reached(self, table: sa.Table, where: sa.ColumnElement[bool]
                 ) -> list[tuple[Reference, list[_Rows]]]:
        """Every CASCADE / SET NULL key a disposal of the records ``where`` selects reaches:
        the keys that refer to ``table`` and, below a CASCADE key, the keys that refer to the
        rows it deletes, up to :data:`MAX_CASCADE_DEPTH` keys deep, never into a table already
        on the chain, :data:`MAX_CHAIN_KEYS` steps in all. Per key, the rows it refers to that
        are deleted, once per chain that reaches it (built afresh per use: every alias is
        new). The disposed records are one common table expression, written once per
        statement however many chains start from them."""
        found: dict[tuple[str, str], tuple[Reference, list[_Rows]]] = {}
        first = self.references(table)
        cols = dict.fromkeys(c for r in first if r.effect != "block" for c in r.referred)
        gone = sa.select(*(table.c[c] for c in cols)).where(where).cte("rtd_gone")
        steps = [MAX_CHAIN_KEYS]

        def walk(source: sa.TableClause, rows: _Rows,
                 visited: frozenset[tuple[str, str]], depth: int) -> None:
            for r in self.references(source) if source is not table else first:
                if r.effect == "block":
                    continue
                steps[0] -= 1
                found.setdefault((r.constraint, r.table), (r, []))[1].append(rows)
                child = r.source.element
                if (r.effect == "delete" and depth < self._max_depth() and steps[0] > 0
                        and self._at(child) not in visited):
                    below = [c for x in self.references(child) for c in x.referred]
                    walk(child, _deleted_through(r, rows, below), visited | {self._at(child)},
                         depth + 1)

        if cols:
            walk(table, lambda: (gone, sa.true()), frozenset({self._at(table)}), 1)
        return list(found.values())

    @contextmanager
    def cascading_batch(self, conn: Connection, table: sa.Table,
                        where: sa.ColumnElement[bool]) -> Iterator[None]:
        """Around a batch's delete: count, in its transaction and before it, what it will
        cascade to (on SQLite under the database's write lock, taken first); kept for
        :meth:`take_cascaded` once the delete has run without error."""
        if not self.cascading(table):
            yield
            return
        if conn.dialect.name == "sqlite":
            first = next(iter(table.columns))
            conn.execute(sa.update(table).where(sa.false()).values({first.name: first}))
        counts = self._cascade_counts(conn, table, where)
        yield
        for c in counts:
            at = (c["constraint"], c["table"], c["action"])
            self._cascaded[at] = self._cascaded.get(at, 0) + c["count"]

    def cascading(self, table: sa.Table) -> bool:
        return any(r.effect != "block" for r in self.references(table))

    def take_cascaded(self) -> list[dict[str, Any]]:
        out = [{"constraint": c, "table": t, "action": a, "count": n}
               for (c, t, a), n in self._cascaded.items()]
        self._cascaded.clear()
        return out

    def _scalar(self, q: sa.Select[Any]) -> int:
        with self._errors("counting blocked records"), self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def referencing(self, rule: Rule) -> frozenset[str]:
        """The referencing tables' names as the catalog gives them; on a server that folds
        table names (MariaDB/MySQL ``lower_case_table_names`` 1 or 2: ``Payments`` is stored
        and reported as ``payments``), as this store's rules spell them, so that rule order
        compares them (SQLite compares names without case too)."""
        table = self.table(rule)
        names = frozenset(r.table for r in self.references(table))
        if not self.folds_names():
            return names
        spelt = {r.target.casefold(): r.target for r in self.policy.rules
                 if r.store == self.store_name}
        return frozenset(spelt.get(n.casefold(), n) for n in names)

    def folds_names(self) -> bool:
        """Whether the server compares table names without case: SQLite always, MariaDB/MySQL
        with ``lower_case_table_names`` 1 or 2."""
        if self._folds is None:
            self._folds = self.engine.dialect.name == "sqlite"
            if self.engine.dialect.name in ("mysql", "mariadb"):
                with self._errors("reading lower_case_table_names"), \
                        self.engine.connect() as conn:
                    self._folds = bool(int(conn.exec_driver_sql(
                        "select @@lower_case_table_names").scalar_one() or 0))
        return self._folds

    def default_schema(self) -> str | None:
        with self._errors("reading the default schema"):
            return sa.inspect(self.engine).default_schema_name

    def reference_warnings(self, rule: Rule) -> list[Problem]:
        if not ({rule.action, rule.on_erasure} & set(REMOVES)):
            return []
        table = self.table(rule)
        says = {"block": "blocks disposing a record it refers to (RESTRICT / NO ACTION): "
                "such records are counted blocked and never attempted",
                "delete": "cascades: disposing a record deletes the rows referring to it",
                "set_null": "cascades: disposing a record sets the referring column(s) to "
                "NULL"}
        return [("table", f"foreign key {r.constraint} on {r.table}"
                 f"({', '.join(r.columns)}) {says[r.effect]}")
                for r in self.references(table)]




# The rows of one table that a disposal deletes: a fresh alias of the table and the condition
# on it (at the disposing table: the table itself and the disposal's own condition).
_Rows = Callable[[], tuple[sa.FromClause, sa.ColumnElement[bool]]]


def _deleted_through(r: Reference, parent: _Rows, below: list[str]) -> _Rows:
    """The rows of ``r``'s referencing table that its CASCADE delete removes: those whose key
    columns are among the deleted rows of ``parent`` (an uncorrelated ``IN``, which databases
    drive from the disposed records through the key's index); the alias carries the columns
    keys further down join on (``below``)."""
    def rows() -> tuple[sa.FromClause, sa.ColumnElement[bool]]:
        up, deleted = parent()
        row = _lite(r.source.element, [*r.columns, *below])
        return row, _among(row, r, up, deleted)
    return rows


def _among(row: sa.FromClause, r: Reference, up: sa.FromClause,
           deleted: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """``row``'s ``r`` columns are among the referred columns of the rows of ``up`` that
    ``deleted`` selects."""
    picked = sa.select(*(up.c[c] for c in r.referred)).where(deleted)
    if len(r.columns) == 1:
        return row.c[r.columns[0]].in_(picked)
    return sa.tuple_(*(row.c[c] for c in r.columns)).in_(picked)


def _lite(table: sa.TableClause, columns: Sequence[str]) -> sa.FromClause:
    """A new anonymous alias of ``table`` with just ``columns``: unique within a statement,
    however deep it nests."""
    return sa.table(table.name, *(sa.column(c) for c in dict.fromkeys(columns)),
                    schema=table.schema).alias()


def _any(conds: Sequence[sa.ColumnElement[bool]]) -> sa.ColumnElement[bool]:
    return conds[0] if len(conds) == 1 else sa.or_(*conds)


def _ident(name: str) -> str:
    """A name inside double quotes (SQLite PRAGMA arguments cannot be bound)."""
    return name.replace('"', '""')
