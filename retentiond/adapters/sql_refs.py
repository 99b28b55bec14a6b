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
  (one level deep: rows a cascaded delete cascades to in turn are not counted). When the
  referencing table has rules of its own, a record that a row those rules *protect* refers to
  (a hold, a floor, on_erasure: keep: the selection's :class:`Guard` for that table) is
  blocked like a RESTRICT one, by a ``NOT EXISTS`` on the disposing statement; unprotected
  referencing rows still cascade. Not covered: a table referring to itself, and protected
  rows further down a cascade chain (two levels or more).

A partitioned referencing table (PostgreSQL) is named once, by its parent and the parent's
constraint; the partitions' copies are skipped. Unnamed constraints (SQLite) are named by
their columns, ``rentals(customer_id)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from retentiond.adapters.base import Guard, Problem, Selection

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlalchemy.engine import Connection, Engine

    from retentiond.policy.model import Rule

# ON DELETE as reflected (None: the default, NO ACTION) -> what a disposal meets.
_ON_DELETE = {"CASCADE": "delete", "SET NULL": "set_null"}
REMOVES = ("delete", "isolate")


@dataclass(frozen=True)
class Reference:
    constraint: str
    table: str  # the referencing table, as a rule would name it
    source: Any  # the referencing table (an alias of a lightweight table)
    columns: tuple[str, ...]  # referencing columns
    referred: tuple[str, ...]  # the referred columns of the rule's table, pairwise
    effect: str  # block, delete or set_null

    def joins(self, table: sa.Table) -> list[sa.ColumnElement[bool]]:
        return [self.source.c[c] == table.c[r]
                for c, r in zip(self.columns, self.referred, strict=True)]

    def refers(self, table: sa.Table) -> sa.Exists:
        return sa.exists(sa.select(sa.literal(1)).select_from(self.source)
                         .where(*self.joins(table)))


class SqlRefs:
    """Relies on SqlAdapter's table(), engine, _errors(), predicate(), count()."""

    if TYPE_CHECKING:
        _refs: dict[str, list[Reference]]
        _cascaded: dict[tuple[str, str, str], int]

        @property
        def engine(self) -> Engine: ...
        def table(self, rule: Rule) -> sa.Table: ...
        def _errors(self, doing: str) -> AbstractContextManager[None]: ...
        def predicate(self, sel: Selection, table: sa.Table) -> sa.ColumnElement[bool]: ...
        def count(self, selection: Selection) -> int: ...

    def references(self, table: sa.Table) -> list[Reference]:
        """Foreign keys of the same schema that refer to ``table``."""
        name = table.name if table.schema is None else f"{table.schema}.{table.name}"
        if name not in self._refs:
            with self._errors(f"reading the foreign keys that refer to {table.name}"):
                self._refs[name] = self._reflect(table)
        return self._refs[name]

    def _reflect(self, table: sa.Table) -> list[Reference]:
        insp = sa.inspect(self.engine)
        schema = table.schema
        partitions = self._partitions(schema or insp.default_schema_name)
        out: list[Reference] = []
        every = insp.get_multi_foreign_keys(schema=schema)  # one catalog query where it can
        for (_, other), fks in sorted(every.items(), key=lambda kv: kv[0][1]):
            if other in partitions:
                continue
            for fk in fks:
                if (fk["referred_table"] != table.name
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

    def _partitions(self, schema: str | None) -> set[str]:
        if self.engine.dialect.name != "postgresql":
            return set()
        q = sa.text("select c.relname from pg_class c join pg_namespace n on n.oid = "
                    "c.relnamespace where c.relispartition and n.nspname = :s")
        with self.engine.connect() as conn:
            return set(conn.execute(q, {"s": schema}).scalars())

    def blocking(self, sel: Selection, table: sa.Table) -> list[sa.ColumnElement[bool]]:
        """``NOT EXISTS`` a referencing row, per blocking key, for a disposal that removes
        rows (delete, isolate); nothing otherwise."""
        if not sel.skip_blocked or sel.action not in REMOVES:
            return []
        return [~exists for _, exists in self._blockers(sel, table)]

    def _blockers(self, sel: Selection, table: sa.Table) -> list[tuple[Reference, sa.Exists]]:
        """Per key that blocks records of ``sel``: RESTRICT / NO ACTION keys (any referencing
        row blocks), and CASCADE / SET NULL keys from a table the selection guards (a
        referencing row its rules protect blocks)."""
        out: list[tuple[Reference, sa.Exists]] = []
        for r in self.references(table):
            if r.effect == "block":
                out.append((r, r.refers(table)))
                continue
            guard = _guard_of(r, sel.guards)
            if guard is None or not guard.selections:
                continue
            source = self.table(guard.selections[0].rule)
            if source is table:  # a table referring to itself: not covered
                continue
            joins = [source.c[c] == table.c[p]
                     for c, p in zip(r.columns, r.referred, strict=True)]
            protected = sa.or_(*(self.predicate(s, source) for s in guard.selections))
            out.append((r, sa.exists(sa.select(sa.literal(1)).select_from(source)
                                     .where(*joins, protected))))
        return out

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

    def cascades(self, selection: Selection) -> list[dict[str, Any]]:
        if selection.action not in REMOVES or selection.everything_excluded:
            return []
        table = self.table(selection.rule)
        with self.engine.connect() as conn:
            return self._cascade_counts(conn, table, self.predicate(selection, table))

    def _cascade_counts(self, conn: Connection, table: sa.Table,
                        where: sa.ColumnElement[bool]) -> list[dict[str, Any]]:
        """Referencing rows per CASCADE / SET NULL key of the records ``where`` selects."""
        out = []
        for r in self.references(table):
            if r.effect == "block":
                continue
            chosen = sa.select(sa.literal(1)).select_from(table).where(*r.joins(table), where)
            q = sa.select(sa.func.count()).select_from(r.source).where(sa.exists(chosen))
            with self._errors(f"counting {r.table}"):
                n = int(conn.execute(q).scalar_one())
            if n:
                out.append({"constraint": r.constraint, "table": r.table, "action": r.effect,
                            "count": n})
        return out

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
        table = self.table(rule)
        return frozenset(r.table for r in self.references(table))

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



def _guard_of(ref: Reference, guards: tuple[Guard, ...]) -> Guard | None:
    """The guard of the referencing table: the same name, or the same bare name when one of
    the two has no schema (matching too much only blocks more)."""
    for g in guards:
        if g.table == ref.table:
            return g
    bare = ref.table.rpartition(".")[2]
    for g in guards:
        if g.table.rpartition(".")[2] == bare and ("." not in g.table
                                                   or "." not in ref.table):
            return g
    return None
