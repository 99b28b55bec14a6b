"""The sql adapter's checks against silent no-ops and catastrophes (mixed into SqlAdapter).

``preflight`` (``config validate`` and the start of every plan and run; a problem fails the
rule alone): an integer clock without ``clock_format`` (a 0/1 flag read as 1970 makes every
record due), ``clock_format`` on a column that is not an integer, and an anonymisation marker
that something other than retentiond sets (a default, ``ON UPDATE``, a generated value or a
trigger: every row looks anonymised and ``plan`` says due 0).

``warnings`` (``config validate``): clocks that do not parse, clock values before 1971 or more
than a day in the future, and a marker already set on most of a rule's rows while the ledger
holds no anonymisation by that rule.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from retentiond.adapters.base import Problem
from retentiond.adapters.sqlclock import (
    BadClock,
    can_be_bad,
    clock_instant,
    clock_range,
    implausible,
    is_integer,
    marker_problems,
    shown,
)
from retentiond.adapters.sqlexpr import quoted_table
from retentiond.adapters.sqltypes import type_name
from retentiond.errors import StoreError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlalchemy.engine import Engine

    from retentiond.policy.model import Policy, Rule

TEXT_FORM = "YYYY-MM-DD[ HH:MM:SS[.ffffff]]"


class SqlChecks:
    """Relies on SqlAdapter's table(), engine, _errors(), _match_only(), count_bad_clock()."""

    policy: Policy
    store_name: str

    if TYPE_CHECKING:
        @property
        def engine(self) -> Engine: ...
        def table(self, rule: Rule) -> sa.Table: ...
        def _errors(self, doing: str) -> AbstractContextManager[None]: ...
        def _match_only(self, rule: Rule, table: sa.Table, now: datetime) -> list[Any]: ...
        def count_bad_clock(self, rule: Rule) -> int: ...
        def partition_warnings(self, rule: Rule) -> list[Problem]: ...

    def preflight(self, rule: Rule) -> list[Problem]:
        table = self.table(rule)
        return (self._clock_problems(rule, table) + self._match_problems(rule, table)
                + self._marker_problems(rule, table) + self._tree_problems(rule, table))

    def _tree_problems(self, rule: Rule, table: sa.Table) -> list[Problem]:
        """Two rules of the store naming rows of one partitioned table differently (one the
        parent, the other a partition, or two levels of it) would not weigh each other's
        floors, holds and due dates (rules overlap by the table they name): both refused."""
        if self.engine.dialect.name != "postgresql":
            return []
        others = [r for r in self.policy.rules if r.store == rule.store and r.table
                  and r.table != rule.table]
        if not others:
            return []
        root = sa.text("select coalesce(pg_partition_root(to_regclass(:n)), to_regclass(:n))"
                       "::oid")
        with self._errors(f"reading the partition tree of {rule.table}"), \
                self.engine.connect() as conn:
            mine = conn.execute(root, {"n": quoted_table(table)}).scalar()
            for other in others:
                try:
                    theirs = self.table(other)
                except (sa.exc.NoSuchTableError, StoreError):
                    continue  # that rule fails on its own
                if conn.execute(root, {"n": quoted_table(theirs)}).scalar() == mine:
                    return [("table", f"{rule.table} and {other.table} (rule {other.id}) are "
                             "one partitioned table; name it the same way (its parent) in "
                             "every rule, so that their floors, holds and due dates apply to "
                             "each other")]
        return []

    def _match_problems(self, rule: Rule, table: sa.Table) -> list[Problem]:
        """``older_than``/``newer_than`` on an integer column: clock_format does not apply to
        match, and seconds, milliseconds or a year number read as epoch seconds would match
        everything or nothing; retentiond does not guess."""
        out: list[Problem] = []
        for column, cond in rule.match.items():
            col = table.c.get(column)
            if cond.op in ("older_than", "newer_than") and col is not None and is_integer(col):
                out.append((f"match.{column}", f"{cond.op} needs a timestamp, date or ISO 8601 "
                            f"text column; {column} is {type_name(col.type)}"))
        return out

    def _clock_problems(self, rule: Rule, table: sa.Table) -> list[Problem]:
        clock = table.c.get(rule.clock) if rule.clock else None
        if clock is None:
            if rule.clock_format and not rule.clock:
                return [("clock_format", "set without a clock; name the integer clock column")]
            return []  # a missing column is validate's "does not exist"
        where = f"{table.name}.{clock.name}"
        if is_integer(clock) and rule.clock_format is None:
            return [("clock", f"column {where} is an integer ({clock.type}); say what it counts "
                     "with clock_format: epoch_seconds or epoch_millis (retentiond does not "
                     "guess: a 0/1 flag read as seconds is 1970 and every record is due)")]
        if rule.clock_format is not None and not is_integer(clock):
            return [("clock_format", f"column {where} is {clock.type}, not an integer; "
                     "clock_format is only for integer clocks, remove it")]
        return []

    def _marker_problems(self, rule: Rule, table: sa.Table) -> list[Problem]:
        opts = rule.anonymize
        if opts is None or "anonymize" not in (rule.action, rule.on_erasure):
            return []
        if opts.marker not in table.c:
            return []  # validate says it does not exist
        with self._errors(f"reading {table.name}"), self.engine.connect() as conn:
            infos = {c["name"]: c for c in sa.inspect(conn).get_columns(table.name,
                                                                        table.schema)}
            found = marker_problems(conn, table, opts.marker, dict(infos.get(opts.marker, {})))
        return [("anonymize.marker", msg) for msg in found]

    # -- warnings -----------------------------------------------------------------------------
    def warnings(self, rule: Rule, ledgered: Callable[[str], bool], *,
                 count_bad: bool = True) -> list[Problem]:
        if not rule.clock and rule.anonymize is None:
            return []
        table = self.table(rule)
        out: list[Problem] = []
        if rule.clock and rule.clock in table.c:
            out += self._clock_warnings(rule, table, count_bad=count_bad)
        out += self._marker_warnings(rule, table, ledgered)
        if count_bad:  # config validate; plan and run name these per partition themselves
            out += self.partition_warnings(rule)
        return out

    def _clock_warnings(self, rule: Rule, table: sa.Table, *, count_bad: bool
                        ) -> list[Problem]:
        clock = table.c[str(rule.clock)]
        where = f"{table.name}.{clock.name}"
        if is_integer(clock) and rule.clock_format is None:
            return []  # preflight's error
        out: list[Problem] = []
        broken = self.count_bad_clock(rule) if count_bad else 0
        if broken:
            what = (f"does not parse as {TEXT_FORM}" if can_be_bad(clock, self.engine.dialect.name)
                    else "is no real time (a zero date or ±infinity)")
            out.append(("clock", f"{broken} records have a {where} that {what}; they are never "
                        "due by time (plan and run count them bad_clock)"))
        now = datetime.now(UTC)
        local = now.astimezone(self.policy.tz)
        dialect = self.engine.dialect.name
        with self._errors(f"reading {table.name}"), self.engine.connect() as conn:
            lo, hi = clock_range(conn, clock, dialect, self._match_only(rule, table, local),
                                 exact=count_bad)
        shown_values, odd = [], False
        for raw in (lo, hi):
            if raw is None:
                continue
            try:
                value = clock_instant(raw, rule.clock_format, self.policy.tz)
            except BadClock:  # an integer too large for a date, or unparseable text
                if not count_bad and can_be_bad(clock, dialect):
                    continue  # read without the filter: bad text is counted as bad_clock
                shown_values.append(f"{raw} ({rule.clock_format})" if rule.clock_format
                                    else str(raw))
                odd = True
                continue
            assert value is not None
            shown_values.append(shown(value, self.policy.tz))
            odd = odd or implausible(value, now)
        if odd:
            span = " to ".join(shown_values)
            hint = (f" (is clock_format {rule.clock_format} right?)" if rule.clock_format
                    else "")
            out.append(("clock", f"{where} ranges from {span}: values before 1971 or more "
                        f"than a day in the future are implausible{hint}; check that "
                        f"{clock.name} is the time the retention starts"))
        return out

    def _marker_warnings(self, rule: Rule, table: sa.Table,
                         ledgered: Callable[[str], bool]) -> list[Problem]:
        opts = rule.anonymize
        if opts is None or rule.action != "anonymize" or opts.marker not in table.c:
            return []
        marker = table.c[opts.marker]
        local = datetime.now(UTC).astimezone(self.policy.tz)
        q = sa.select(sa.func.count(), sa.func.count(marker)).select_from(table).where(
            *self._match_only(rule, table, local))
        with self._errors(f"counting {table.name}"), self.engine.connect() as conn:
            total, marked = conn.execute(q).one()
        if not total or marked * 2 <= total or ledgered(rule.id):
            return []
        return [("anonymize.marker", f"{marked} of {total} matching rows of {table.name} "
                 f"already have {opts.marker} set, but the ledger holds no anonymisation by "
                 "this rule; if something else sets the marker, those rows count as done and "
                 "are never anonymised")]
