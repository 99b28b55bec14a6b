"""``partitions: drop`` on PostgreSQL (mixed into SqlAdapter): a partition whose whole range
is due, and whose every row the rule's current selection would dispose, is detached and
dropped as a unit instead of being deleted row by row; still ledgered per record.

A partition is dropped only when all of these hold; anything else (or any doubt, or any error)
leaves it to the row sweep, and ``plan`` says why:

* the store is PostgreSQL, the rule's table is partitioned by RANGE on the rule's clock alone,
  and the clock is a ``timestamp``, ``timestamptz`` or ``date`` column;
* no user trigger fires on DELETE or TRUNCATE and no rule rewrites DELETE, on the parent or
  the partition (a drop would silently skip them); no foreign key refers to the parent or
  the partition (the row sweep keeps RESTRICT / CASCADE / SET NULL and their counts); no
  other rule of the table anonymises or isolates (overlapping rules decide row by row);
* the partition is a leaf (not itself partitioned), not the DEFAULT partition, its upper
  bound is at or before the rule's clock cutoff (compared in the clock column's own
  representation, as the selection compares: naive timestamps are wall time in the
  policy's zone), and the connecting role owns it and the parent (member of the owner role);
* inside the disposing transaction, after ``LOCK TABLE <partition> IN SHARE ROW EXCLUSIVE
  MODE`` (writers of the partition wait; readers do not) and with the holds re-read after
  the lock, the number of rows in the partition equals the number the rule's selection
  (the very predicate a batch's DELETE carries: holds, floors of other rules, subjects with
  open requests, match, where, NULL or bad clocks) selects in it, and is not zero.

Then, still in that transaction, the keys are read in one streaming pass, their references
written as intents of ``batch_size`` records each (durable before the store commits), and
the partition detached and dropped; the executor ledgers the intents after the commit. A
crash before the commit leaves the partition attached with every row (the intents are
settled by reconciliation as "nothing gone"); after it, reconciliation ledgers them all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from retentiond.adapters.base import DropDeclined, Problem, Selection
from retentiond.adapters.sqlclock import clock_bound
from retentiond.adapters.sqlexpr import Key, is_disconnect, quoted_table
from retentiond.errors import StoreError, StoreUnreachable
from retentiond.log import get_logger
from retentiond.state import faults

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from retentiond.policy.model import Policy, Rule

log = get_logger(__name__)

#: How long the disposing transaction waits for a lock (the partition's, then the parent's
#: for DETACH) before it gives up and leaves the partition to the row sweep: while DETACH
#: waits, every new query on the table queues behind it.
LOCK_TIMEOUT = "5s"
CLOCK_TYPES = ("timestamp without time zone", "timestamp with time zone", "date")
_BOUND = re.compile(r"^FOR VALUES FROM \((.*)\) TO \((.*)\)$", re.S)
_LITERAL = re.compile(r"^'((?:[^']|'')*)'$", re.S)
# pg_trigger.tgtype bits: 8 DELETE, 32 TRUNCATE.
_TRIGGERS = """select t.tgname from pg_trigger t where t.tgrelid = :oid and not t.tgisinternal
               and (t.tgtype::int & 40) <> 0 order by 1"""
_RULES = "select rulename from pg_rewrite where ev_class = :oid and ev_type = '4' order by 1"
_REFERRED = """select conname, conrelid::regclass::text from pg_constraint
               where contype = 'f' and confrelid = :oid order by 1"""
_PARTS = """select c.oid, n.nspname, c.relname, c.oid::regclass::text,
                   pg_get_expr(c.relpartbound, c.oid), c.relkind, pg_has_role(c.relowner, 'USAGE'),
                   c.relrowsecurity
            from pg_inherits i join pg_class c on c.oid = i.inhrelid
            join pg_namespace n on n.oid = c.relnamespace
            where i.inhparent = :oid{pending} order by c.relname"""
# Publications that carry the table or any of its partitions: DROP is not replicated.
_PUBLISHED = """select pt.pubname from pg_publication_tables pt
                join pg_namespace n on n.nspname = pt.schemaname
                join pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
                where c.oid = :oid or c.oid in (select inhrelid from pg_inherits
                                                 where inhparent = :oid)
                order by 1 limit 1"""
_RLS = "select relrowsecurity from pg_class where oid = :oid"
_STRATEGY = """select pt.partstrat, pt.partnatts, a.attname,
                      format_type(a.atttypid, null), pg_has_role(c.relowner, 'USAGE')
               from pg_partitioned_table pt join pg_class c on c.oid = pt.partrelid
               left join pg_attribute a on a.attrelid = pt.partrelid
                    and a.attnum = pt.partattrs[0] and pt.partattrs[0] <> 0
               where pt.partrelid = :oid"""


@dataclass(frozen=True)
class Part:
    oid: int
    schema: str
    name: str
    qualified: str  # oid::regclass::text: quoted, schema-qualified when off the search_path
    bound: str
    kind: str  # pg_class.relkind: r a plain table, p partitioned, f foreign
    owned: bool
    rls: bool


class SqlPartitions:
    """Relies on SqlAdapter's engine, table(), key(), predicate(), blocking(), _errors()."""

    policy: Policy
    store_name: str

    if TYPE_CHECKING:
        @property
        def engine(self) -> Engine: ...
        def table(self, rule: Rule) -> sa.Table: ...
        def key(self, rule: Rule, table: sa.Table | None = None) -> Key: ...
        def predicate(self, sel: Selection, table: sa.Table) -> sa.ColumnElement[bool]: ...
        def blocking(self, sel: Selection, table: sa.Table) -> list[sa.ColumnElement[bool]]: ...
        def _errors(self, doing: str) -> AbstractContextManager[None]: ...

    # -- config validate ----------------------------------------------------------------------
    def validate_partitions(self, rule: Rule) -> list[Problem]:
        """Errors: the table is not partitioned by RANGE on the clock, or the role cannot
        detach and drop its partitions."""
        if rule.partitions != "drop":
            return []
        if self.engine.dialect.name != "postgresql":
            return [("partitions", "drop works only on PostgreSQL")]
        with self.engine.connect() as conn:
            why = self._strategy(conn, rule, self.table(rule))
        return [("partitions", why)] if why else []

    def partition_warnings(self, rule: Rule) -> list[Problem]:
        """What makes every partition of the rule fall back to the row sweep (triggers,
        foreign keys, overlapping rules), for ``config validate``."""
        if rule.partitions != "drop" or self.engine.dialect.name != "postgresql":
            return []
        table = self.table(rule)
        with self.engine.connect() as conn:
            if self._strategy(conn, rule, table):
                return []
            why = self._table_reasons(conn, rule, table)
        return [("partitions", f"no partition will be dropped: {why}; they are swept row by "
                 "row")] if why else []

    # -- plan and run -------------------------------------------------------------------------
    def partitions(self, selection: Selection, *, count: bool = True
                   ) -> list[dict[str, Any]]:
        """What ``partitions: drop`` does with the selection (read-only): one entry per
        partition whose range is wholly due (and per DEFAULT or sub-partitioned partition),
        ``{partition, rows, drop, reason}``; ``drop`` entries are dropped by a run unless
        something changes before it. A reason that applies to the whole table is one entry
        with ``partition`` None. ``count=False`` (a run) leaves the rows uncounted: the drop
        counts them under its lock, and a plan's count would be a second pass for nothing."""
        rule = selection.rule
        if not self._applies(selection):
            return []
        try:
            with self._errors(f"reading the partitions of {rule.table}"), \
                    self.engine.connect() as conn:
                table = self.table(rule)
                why = (self._strategy(conn, rule, table)
                       or self._table_reasons(conn, rule, table, selection))
                if why:
                    return [_entry(None, 0, why)]
                out = []
                for part in self._parts(conn, table):
                    reason = self._part_reason(conn, selection, table, part)
                    if reason is _NOT_DUE:
                        continue
                    if reason is not None:
                        out.append(_entry(part.qualified, 0, reason))
                        continue
                    if not count:  # a run: the drop counts under its lock anyway
                        out.append(_entry(part.qualified, 0, None))
                        continue
                    total, chosen = self._counts(conn, selection, table, part)
                    out.append(_entry(part.qualified, total, _mismatch(total, chosen)))
                return out
        except StoreUnreachable:
            raise
        except StoreError as exc:  # its text names no value; the rows are swept as usual
            return [_entry(None, 0, f"partitions not read: {exc}")]

    def drop_partition(self, selection: Selection, partition: str, limit: int,
                       refresh: Callable[[Selection], Selection | None],
                       intent: Callable[[list[Any]], None], *,
                       confirm: Callable[[], bool] = lambda: True) -> int:
        """Dispose ``partition`` (as :meth:`partitions` named it) as a unit in one store
        transaction: lock it against writers, check it is still attached (not detached or
        pending detach meanwhile), re-read the holds (``refresh``), check that the selection
        covers every row, read the keys in one streaming pass calling ``intent`` per
        ``limit`` keys, detach it, then check again — holds re-read, a ``where`` reading
        other tables re-evaluated, every row still selected — drop it, check that the
        intents are still this sweep's (``confirm``: no other sweep settled them meanwhile)
        and commit. Returns the rows disposed.

        Raises :class:`DropDeclined` when anything before the commit says no or fails: the
        transaction is rolled back, nothing changed (the caller discards the intents).
        Raises StoreError or StoreUnreachable only when the commit itself failed (its
        outcome unknown: the caller settles the intents against the store) or the
        connection was lost."""
        rule = selection.rule
        with self._errors(f"dropping partition {partition} of {rule.table}"), \
                self.engine.connect() as conn:
            trans = conn.begin()
            try:
                read, part = self._drop_locked(conn, selection, partition, limit=limit,
                                               refresh=refresh, intent=intent,
                                               confirm=confirm)
            except BaseException as exc:
                trans.rollback()
                if isinstance(exc, sa.exc.DBAPIError) and not (
                        faults.is_state_error(exc) or exc.connection_invalidated
                        or (isinstance(exc, sa.exc.OperationalError) and is_disconnect(exc))):
                    raise DropDeclined(f"the drop failed ({type(exc.orig).__name__}) and was "
                                       "rolled back") from None
                raise
            trans.commit()
        log.info("partition dropped", rule=rule.id, store=self.store_name,
                 partition=part.qualified, count=read)
        return read

    def _drop_locked(self, conn: Connection, selection: Selection, partition: str, *,
                     limit: int, refresh: Callable[[Selection], Selection | None],
                     intent: Callable[[list[Any]], None], confirm: Callable[[], bool]
                     ) -> tuple[int, Part]:
        rule = selection.rule
        table = self.table(rule)
        conn.execute(sa.text(f"set local lock_timeout = '{LOCK_TIMEOUT}'"))
        part = self._attached(conn, table, partition)
        conn.execute(sa.text(f"lock table only {part.qualified} in share row exclusive mode"))
        # Looked up again under the lock: a DETACH someone committed while we waited for it
        # (or an interrupted DETACH ... CONCURRENTLY) leaves a table that is no partition.
        part = self._attached(conn, table, partition)
        current = refresh(selection)
        if current is None:
            raise DropDeclined("a hold covers the rule")
        why = (self._strategy(conn, rule, table)
               or self._table_reasons(conn, rule, table, current)
               or self._part_reason(conn, current, table, part))
        if why:
            raise DropDeclined(why if why is not _NOT_DUE else "its range is not all due")
        total, chosen = self._counts(conn, current, table, part)
        why = _mismatch(total, chosen)
        if why:
            raise DropDeclined(why)
        read = 0
        for keys in self._keys(conn, current, table, part, limit):
            intent(keys)
            read += len(keys)
        if read != total:  # cannot happen under the lock; never drop on a doubt
            raise DropDeclined(f"read {read} keys of {total} rows")
        self._detach(conn, table, part)
        # Reading the keys can take minutes: a hold placed meanwhile, or a row a `where`
        # now spares (a flag in another table), must still keep the partition. The rows
        # themselves cannot change under the lock; what decides about them can.
        again = refresh(selection)
        if again is None:
            raise DropDeclined("a hold placed while its keys were read covers the rule")
        total, chosen = self._counts(conn, again, table, part)
        if total != read or chosen != total:
            raise DropDeclined("a hold or the rule's where spares rows of it since its keys "
                               "were read")
        self._drop(conn, part)
        if not confirm():
            raise DropDeclined("another sweep settled its intents meanwhile")
        return read, part

    def _attached(self, conn: Connection, table: sa.Table, partition: str) -> Part:
        part = next((p for p in self._parts(conn, table) if p.qualified == partition), None)
        if part is None:
            raise DropDeclined("no longer a partition of the table")
        return part

    def _detach(self, conn: Connection, table: sa.Table, part: Part) -> None:
        """DETACH (ACCESS EXCLUSIVE on the parent and the partition, held to the commit), in
        the caller's transaction; the table stays, with its rows, until :meth:`_drop`."""
        conn.execute(sa.text(f"alter table {quoted_table(table)} detach partition "
                             f"{part.qualified}"))

    def _drop(self, conn: Connection, part: Part) -> None:
        conn.execute(sa.text(f"drop table {part.qualified}"))

    # -- the checks ---------------------------------------------------------------------------
    def _applies(self, sel: Selection) -> bool:
        return (sel.rule.partitions == "drop" and sel.action == "delete"
                and sel.subjects is None and sel.clock_cutoff is not None
                and not sel.unconditional and self.engine.dialect.name == "postgresql")

    def _oid(self, conn: Connection, table: sa.Table) -> int | None:
        name = sa.text("select to_regclass(:n)::oid")
        found = conn.execute(name, {"n": quoted_table(table)}).scalar()
        return None if found is None else int(found)

    def _strategy(self, conn: Connection, rule: Rule, table: sa.Table) -> str | None:
        """Why the table cannot have partitions dropped for the rule at all (None: it can)."""
        oid = self._oid(conn, table)
        row = None if oid is None else conn.execute(sa.text(_STRATEGY), {"oid": oid}).first()
        if row is None:
            return f"{table.name} is not a partitioned table; remove partitions: drop"
        strat, natts, column, typ, owned = row
        if strat != "r" or natts != 1 or column is None or column != rule.clock:
            return (f"{table.name} is not partitioned by RANGE on the clock column "
                    f"{rule.clock} alone; remove partitions: drop")
        if typ not in CLOCK_TYPES:
            return (f"the clock {table.name}.{rule.clock} is {typ}; partitions: drop needs a "
                    "timestamp, timestamptz or date clock")
        if not owned:
            return (f"the role connecting to store {self.store_name} does not own "
                    f"{table.name} (nor is a member of its owner role); DETACH and DROP "
                    "need it: grant the owner role or remove partitions: drop")
        return None

    def _table_reasons(self, conn: Connection, rule: Rule, table: sa.Table,
                       sel: Selection | None = None) -> str | None:
        """Why no partition of the table may be dropped for the rule, or None."""
        others = [r.id for r in self.policy.rules
                  if r.id != rule.id and r.store == rule.store and r.table == rule.table
                  and ({r.action, r.on_erasure} & {"anonymize", "isolate"})]
        if others:
            return f"rule {others[0]} anonymises or isolates rows of the same table"
        oid = self._oid(conn, table)
        assert oid is not None  # _strategy found it
        why = _relation_reasons(conn, oid, table.name)
        if why:
            return why
        if conn.execute(sa.text(_RLS), {"oid": oid}).scalar():
            return (f"row-level security is enabled on {table.name} (a count may not see "
                    "every row)")
        pub = conn.execute(sa.text(_PUBLISHED), {"oid": oid}).scalar()
        if pub is not None:
            return (f"publication {pub} replicates {table.name}; a dropped partition's rows "
                    "would stay on its subscribers")
        if sel is not None and self.blocking(sel, table):
            return "foreign keys refer to the table"
        return None

    def _part_reason(self, conn: Connection, sel: Selection, table: sa.Table,
                     part: Part) -> str | None:
        """Why this partition may not be dropped, ``_NOT_DUE`` when its range is not wholly
        due (the row sweep's business, not listed), None when only the counts remain."""
        why = _shape(part)
        if why:
            return why
        if not self._wholly_due(conn, sel, table, part):
            return _NOT_DUE
        return _rights(part) or _relation_reasons(conn, part.oid, part.name)

    def _wholly_due(self, conn: Connection, sel: Selection, table: sa.Table,
                    part: Part) -> bool:
        """Whether the partition's upper bound is at or before the cutoff, compared by the
        store in the clock column's type, as the selection compares (``clock_bound``)."""
        upper = _upper(part.bound)
        if upper is None:
            return False
        clock = table.c[sel.rule.clock or ""]
        assert sel.clock_cutoff is not None
        due = conn.execute(sa.select(
            sa.cast(sa.literal(upper, sa.Text), clock.type)
            <= clock_bound(clock, sel.clock_cutoff, sel.rule.clock_format))).scalar()
        return bool(due)

    def _parts(self, conn: Connection, table: sa.Table) -> list[Part]:
        oid = self._oid(conn, table)
        if oid is None:
            return []
        # PostgreSQL 14+: a partition an interrupted DETACH ... CONCURRENTLY left pending is
        # on its way out; its rows are no longer the parent's (never dropped, never ledgered)
        version = conn.dialect.server_version_info or (0,)
        pending = " and not i.inhdetachpending" if version >= (14,) else ""
        return [Part(int(r[0]), r[1], r[2], r[3], r[4] or "", str(r[5]), bool(r[6]),
                     bool(r[7]))
                for r in conn.execute(sa.text(_PARTS.format(pending=pending)), {"oid": oid})]

    def _as(self, table: sa.Table, part: Part) -> sa.Table:
        """The partition under the parent's name (``FROM part AS parent``), with the parent's
        columns and types, so that the selection's SQL (and a ``where`` naming the table)
        applies to it unchanged."""
        lite = sa.table(part.name, *(sa.column(c.name, c.type) for c in table.columns),
                        schema=part.schema)
        return cast(sa.Table, lite.alias(table.name))

    def _counts(self, conn: Connection, sel: Selection, table: sa.Table,
                part: Part) -> tuple[int, int]:
        """Rows in the partition, and rows of it the selection covers. Foreign keys are out
        of the question here (none refers to the table, or it never gets this far), so the
        selection's NOT EXISTS guards are left off."""
        alias = self._as(table, part)
        where = self.predicate(replace(sel, skip_blocked=False), alias)
        q = sa.select(sa.func.count(), sa.func.count().filter(where)).select_from(alias)
        total, chosen = conn.execute(q).one()
        return int(total), int(chosen)

    def _keys(self, conn: Connection, sel: Selection, table: sa.Table, part: Part,
              limit: int) -> Iterator[list[Any]]:
        """The selected keys of the partition, ``limit`` at a time, from a server-side
        cursor (memory does not grow with the partition)."""
        alias = self._as(table, part)
        key = Key(alias, sel.rule.key_columns, self.engine.dialect)
        q = sa.select(*key.read).where(self.predicate(replace(sel, skip_blocked=False), alias))
        # Per statement: Connection.execution_options() would stream the DDL after it too.
        result = conn.execute(q, execution_options={"stream_results": True,
                                                    "max_row_buffer": limit})
        for rows in result.partitions(limit):
            yield key.values(cast(Sequence[Sequence[Any]], rows))


_NOT_DUE = "not wholly due"


def _entry(partition: str | None, rows: int, reason: str | None) -> dict[str, Any]:
    return {"partition": partition, "rows": rows, "drop": reason is None, "reason": reason}


def _mismatch(total: int, chosen: int) -> str | None:
    if total == 0:
        return "it is empty"
    if chosen != total:
        return (f"{total - chosen} of its {total} rows are not selected (held, protected, "
                "requested, not matched or without a due clock)")
    return None


def _shape(part: Part) -> str | None:
    if part.bound == "DEFAULT":
        return "the DEFAULT partition"
    if part.kind == "p":
        return "it is partitioned itself"
    if part.kind != "r":
        return f"it is not a plain table (relkind {part.kind})"
    return None


def _rights(part: Part) -> str | None:
    if not part.owned:
        return "the role does not own it; DROP needs ownership"
    if part.rls:
        return "row-level security is enabled on it (a count may not see every row)"
    return None


def _relation_reasons(conn: Connection, oid: int, name: str) -> str | None:
    """Triggers on DELETE or TRUNCATE, DELETE rules, foreign keys referring to ``oid``."""
    triggers = list(conn.execute(sa.text(_TRIGGERS), {"oid": oid}).scalars())
    if triggers:
        return f"trigger {triggers[0]} on {name} fires on DELETE or TRUNCATE"
    rules = list(conn.execute(sa.text(_RULES), {"oid": oid}).scalars())
    if rules:
        return f"rule {rules[0]} on {name} rewrites DELETE"
    fk = conn.execute(sa.text(_REFERRED), {"oid": oid}).first()
    if fk is not None:
        return f"foreign key {fk[0]} on {fk[1]} refers to {name}"
    return None


def _upper(bound: str) -> str | None:
    """The upper bound's text of a one-column RANGE partition, None for MAXVALUE/MINVALUE or
    anything unexpected."""
    m = _BOUND.match(bound.strip())
    if m is None:
        return None
    lit = _LITERAL.match(m.group(2).strip())
    return None if lit is None else lit.group(1).replace("''", "'")
