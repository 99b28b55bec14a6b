"""The one interface every adapter implements.

An adapter connects retentiond to one kind of data store. The planner and ``plan`` only call
its read-only methods (:meth:`Adapter.count`, :meth:`Adapter.count_null_clock`,
:meth:`Adapter.scan`, :meth:`Adapter.validate`, :meth:`Adapter.remaining`); the executor is the
only caller of the mutators (:meth:`Adapter.delete`, :meth:`Adapter.anonymize`,
:meth:`Adapter.isolate`, :meth:`Adapter.purge_isolated`). An adapter never sees a dry-run flag.

Contract, checked for every adapter by :mod:`retentiond.testing`:

* ``scan`` yields lists of at most ``batch_size`` :class:`Candidate` in ascending key order,
  reading lazily (memory does not grow with the store) and never by OFFSET.
* A mutator disposes the given keys in one transaction where the store has transactions,
  re-checks the selection (a record that stopped matching since the scan is left alone), and
  returns exactly the keys it disposed.
* ``remaining`` answers which of the given record references are still present and not yet
  disposed, for reconciliation after a crash.
* Methods raise :class:`~retentiond.errors.StoreUnreachable` when the store cannot be reached,
  and :class:`~retentiond.errors.StoreError` (without database error text) for anything else.

An adapter class is registered under a name in the ``retentiond.adapters`` entry-point group.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from retentiond.planner import Facts
    from retentiond.policy.model import Policy, Rule, Store

Problem = tuple[str, str]


@dataclass(frozen=True)
class Filter:
    """A resolved ``match`` condition: ``eq``, ``in``, ``is_null``, ``le`` or ``gt``.
    ``le``/``gt`` carry an aware datetime (``older_than``/``newer_than`` resolved by the
    planner)."""

    column: str
    op: str
    value: Any


@dataclass(frozen=True)
class Guard:
    """What the rules of another table of the store protect there (``table``, as those rules
    name it): a row of it that one of ``selections`` covers must stay. A CASCADE / SET NULL
    foreign key from that table blocks a disposal of a record such a row refers to (it would
    delete or rewrite the protected row). ``floors`` (keep_for, with NULL and unparseable
    clocks protected) and ``keeps`` (on_erasure: keep of open requests) are fixed by the plan;
    ``holds`` are brought up to date with the holds in force by ``planner.reapply_holds``."""

    table: str
    rules: tuple[Rule, ...]
    floors: tuple[Selection, ...] = ()
    keeps: tuple[Selection, ...] = ()
    holds: tuple[Selection, ...] = ()

    @property
    def selections(self) -> tuple[Selection, ...]:
        return self.holds + self.floors + self.keeps


@dataclass(frozen=True)
class Selection:
    """What the planner allows one rule to dispose in one sweep. Adapter-neutral.

    A record is selected when it matches the rule (``filters`` and ``where``), and

    * ``clock_cutoff`` is set and its clock is at or before it (time-based disposal), or it is
      None and ``subjects`` names its subject (erasure);
    * its clock is after ``clock_after`` when that is set (used for floors), and strictly
      inside ``clock_within`` when that is set (the not-yet-due gaps of month-end clamping);
    * its subject is not in ``exclude_subjects`` (holds, subjects of open requests);
    * it is covered by none of the ``exclude`` selections (other rules' floors, holds and
      earlier due dates on the same table);
    * it is not already disposed (for anonymize, the marker column is NULL).

    ``action`` ``"match"`` selects by the rule's match, where and clock bounds only (no marker).
    """

    rule: Rule
    action: str
    reason: str
    tz: ZoneInfo
    now: datetime
    clock_cutoff: datetime | None
    filters: tuple[Filter, ...] = ()
    subjects: tuple[str, ...] | None = None
    exclude_subjects: tuple[str, ...] = ()
    clock_after: datetime | None = None
    null_clock: bool = False  # with clock_after: a NULL clock counts as after (protected)
    clock_within: tuple[datetime, datetime] | None = None  # lo < clock < hi (due_gaps)
    exclude: tuple[Selection, ...] = ()
    purge_after: datetime | None = None  # isolate: when the isolated copy is purged
    unconditional: bool = False  # replay: dispose the given keys whatever the rule's filters
    # A protection (a floor, a hold, on_erasure: keep): a record whose older_than/newer_than
    # value does not parse counts as matched, so the protection covers it (filter_expr).
    protects: bool = False
    # Leave out records the store would refuse to dispose (referenced through a RESTRICT / NO
    # ACTION foreign key): on for every disposal; off to count what holds protect, and what
    # the keys block (the selection without it, minus with it).
    skip_blocked: bool = True
    # Per other table of the store with rules: what those rules protect there. A CASCADE /
    # SET NULL key from such a table blocks records a protected row refers to, like RESTRICT.
    guards: tuple[Guard, ...] = ()
    subject_ref: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def everything_excluded(self) -> bool:
        return self.subjects is not None and not self.subjects


#: ``blocked_by``'s constraint for an object under S3 Object Lock (its table is the bucket).
OBJECT_LOCK = "object-lock"


def blocker(b: Mapping[str, Any]) -> str:
    """What blocks, in words: ``foreign key orders_fk on orders``, ``Object Lock in bucket
    media``."""
    if b["constraint"] == OBJECT_LOCK:
        return f"Object Lock in bucket {b['table']}"
    return f"foreign key {b['constraint']} on {b['table']}"


def blockers(by: Sequence[Mapping[str, Any]]) -> str:
    """What blocks a rule's records, in words: ``foreign keys`` or ``Object Lock``."""
    if by and all(b["constraint"] == OBJECT_LOCK for b in by):
        return "Object Lock"
    return "foreign keys"


def merge_counts(into: list[dict[str, Any]], more: Sequence[dict[str, Any]]) -> None:
    """Add ``more`` to ``into`` (both ``[{..., count}]``, as ``blocked_by`` and ``cascaded``),
    matching entries on everything but the count."""
    for m in more:
        same = next((d for d in into if {k: v for k, v in d.items() if k != "count"}
                     == {k: v for k, v in m.items() if k != "count"}), None)
        if same is None:
            into.append(dict(m))
        else:
            same["count"] += m["count"]


class DropDeclined(Exception):
    """A partition offered for ``partitions: drop`` no longer qualified when checked under
    lock (:meth:`Adapter.drop_partition`); nothing was changed, ``reason`` says why (no
    values)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class NextBatch:
    """What one fast-path statement did: the keys it ``disposed`` (ascending) and the last key
    it *read* (``last_read``), from which the next batch continues; ``last_read`` is None when
    the selection had nothing left above ``after``. The two differ when a concurrent writer
    changed or removed a picked record before the statement could lock it. ``failed`` counts
    the records that failed alone with an integrity error, by reason (no values)."""

    disposed: list[Any]
    last_read: Any
    failed: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Candidate:
    key: Any
    subject: Any = None


class Adapter(abc.ABC):
    """Base class of all adapters; abstract methods fail at construction, not mid-sweep."""

    name: ClassVar[str]
    actions: ClassVar[frozenset[str]]
    #: Whether the adapter can dispose a partition as a unit (``partitions: drop``).
    drops_partitions: ClassVar[bool] = False

    def __init__(self, store_name: str, store: Store, policy: Policy) -> None:
        self.store_name = store_name
        self.store = store
        self.policy = policy

    # -- static checks (no I/O) ---------------------------------------------------------------
    @classmethod
    def check_rule(cls, rule: Rule, policy: Policy) -> list[Problem]:
        """Problems with a rule that need no store access, as ``(sub-path, message)``."""
        problems: list[Problem] = []
        for attr in ("action", "on_erasure"):
            wanted = getattr(rule, attr)
            if wanted not in (None, "keep") and wanted not in cls.actions:
                problems.append((attr, f"adapter {cls.name!r} cannot {wanted}; it supports "
                                 f"{', '.join(sorted(cls.actions))}"))
        if rule.partitions == "drop" and not cls.drops_partitions:
            problems.append(("partitions", f"drop is only for sql stores on PostgreSQL; "
                             f"adapter {cls.name!r} cannot drop partitions"))
        return problems

    # -- lifecycle ----------------------------------------------------------------------------
    @abc.abstractmethod
    def connect(self) -> None:
        """Open connections; raise StoreUnreachable if the store cannot be reached."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- read-only ----------------------------------------------------------------------------
    @abc.abstractmethod
    def validate(self, rule: Rule) -> list[Problem]:
        """Live checks of a rule against the store (tables, columns, types)."""

    @abc.abstractmethod
    def count(self, selection: Selection) -> int:
        """How many records the selection covers now."""

    @abc.abstractmethod
    def count_null_clock(self, rule: Rule) -> int:
        """How many records match the rule but have no clock value (never due by time)."""

    def count_bad_clock(self, rule: Rule) -> int:
        """How many records match the rule but have a clock that does not parse (never due by
        time). Adapters whose clocks always parse keep the default, 0."""
        return 0

    def preflight(self, rule: Rule) -> list[Problem]:
        """Cheap live checks that ``config validate`` and the start of every plan and run make
        (a clock whose meaning is unknown, an anonymisation marker something else sets): a
        sweep fails the rule alone on the first one. Default: none."""
        return []

    def warnings(self, rule: Rule, ledgered: Callable[[str], bool], *,
                 count_bad: bool = True) -> list[Problem]:
        """Live findings that do not stop the rule, for ``config validate`` and the start of
        every plan and run (implausible or unparseable clocks, a marker already set on most
        rows). ``ledgered(rule_id)`` says whether the ledger holds an anonymisation by that
        rule; ``count_bad=False`` skips the unparseable-clock count (a sweep counts those
        itself). Default: none."""
        return []

    def blocked(self, selection: Selection) -> tuple[int, list[dict[str, Any]]]:
        """Records of the selection the store would refuse to dispose (``skip_blocked`` leaves
        them out), and ``[{constraint, table, count}]`` by what. Default: none."""
        return 0, []

    def blocking_record(self, selection: Selection, key: Any) -> list[dict[str, str]]:
        """What blocks the one record ``key`` (as :meth:`facts` read it) that ``selection``
        would dispose, ``[{constraint, table}]`` (``explain``). Default: nothing."""
        return []

    def cascades(self, selection: Selection) -> list[dict[str, Any]]:
        """Rows of other tables that disposing the selection deletes or rewrites,
        ``[{constraint, table, action, count}]``. Default: none."""
        return []

    def take_cascaded(self) -> list[dict[str, Any]]:
        """What the disposals since the last call cascaded to (as :meth:`cascades`), and
        forget it. Default: none."""
        return []

    def referencing(self, rule: Rule) -> frozenset[str]:
        """Targets of the same store that refer to the rule's target (foreign keys): their
        rules run first. Default: none."""
        return frozenset()

    def default_schema(self) -> str | None:
        """The schema a bare table name is in, so that :meth:`referencing`'s names and the
        rules' targets compare (``public.items`` is ``items``). Default: none."""
        return None

    def reference_warnings(self, rule: Rule) -> list[Problem]:
        """What will block or cascade from a rule's disposals, for ``config validate``."""
        return []

    def describe(self) -> dict[str, Any]:
        """What ``config validate`` shows of the store itself, ``{setting: value}`` (an s3
        bucket's versioning and Object Lock). Default: nothing."""
        return {}

    @abc.abstractmethod
    def scan(self, selection: Selection, batch_size: int) -> Iterator[list[Candidate]]:
        """Selected records in ascending key order, in batches."""

    @abc.abstractmethod
    def remaining(self, rule: Rule, action: str, refs: set[str],
                  ref_of: Callable[[Any], str]) -> set[str]:
        """The subset of ``refs`` whose records are still present and not disposed."""

    def partitions(self, selection: Selection, *, count: bool = True
                   ) -> list[dict[str, Any]]:
        """What ``partitions: drop`` would do with a time selection (read-only, ``plan``):
        ``[{partition, rows, drop, reason}]``; ``count=False`` skips counting the rows (the
        drop checks them under lock). Default: nothing (every record row by row)."""
        return []

    def drop_partition(self, selection: Selection, partition: str, limit: int,
                       refresh: Callable[[Selection], Selection | None],
                       intent: Callable[[list[Any]], None], *,
                       confirm: Callable[[], bool] = lambda: True) -> int:
        """Dispose one partition :meth:`partitions` offered as a unit (executor only), calling
        ``intent`` per ``limit`` keys before the store commits, and ``confirm`` just before
        it commits (False: roll back). Only adapters with ``drops_partitions`` are asked."""
        raise NotImplementedError

    def facts(self, rules: Sequence[Rule], key: Any) -> Facts | None:
        """One record as each of ``rules`` (all on one target) sees it, for ``explain``;
        None when there is no such record."""
        from retentiond.errors import StoreError

        raise StoreError(f"adapter {self.name!r} cannot explain single records")

    # -- mutators (executor only) -------------------------------------------------------------
    @abc.abstractmethod
    def delete(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        """Delete these records in one transaction; return the keys deleted."""

    def delete_next(self, selection: Selection, after: Any, limit: int,
                    intent: Callable[[list[Any]], None]) -> NextBatch | None:
        """Optional fast path for delete sweeps: pick the next ``limit`` selected records with
        keys above ``after`` and dispose those that still match the whole selection when they
        are locked, in one transaction, calling ``intent(keys)`` after the records are known
        and before the transaction commits (so the intent is durable first). Returns what was
        disposed and the last key read (the sweep continues from there, so a batch shortened
        by a concurrent writer does not end it), or None when the adapter has no such path
        (the executor then scans and calls :meth:`delete`)."""
        return None

    def anonymize_next(self, selection: Selection, after: Any, limit: int,
                       intent: Callable[[list[Any]], None]) -> NextBatch | None:
        """The same fast path for anonymisation (see :meth:`delete_next`)."""
        return None

    def anonymize(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        from retentiond.errors import StoreError

        raise StoreError(f"adapter {self.name!r} cannot anonymize")

    def isolate(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        from retentiond.errors import StoreError

        raise StoreError(f"adapter {self.name!r} cannot isolate")

    def scan_isolated(self, rule: Rule, now: datetime, batch_size: int
                      ) -> Iterator[list[Candidate]]:
        """Isolated records of ``rule`` whose purge time has come (read-only)."""
        return iter(())

    def purge_isolated(self, rule: Rule, now: datetime, keys: Sequence[Any]) -> list[Any]:
        """Delete these isolated records for good; return the keys purged."""
        from retentiond.errors import StoreError

        raise StoreError(f"adapter {self.name!r} cannot purge isolated records")

    def present(self, rule: Rule, action: str, refs: set[str],
                ref_of: Callable[[Any], str]) -> list[Any]:
        """Keys of records named by ``refs`` that are present and not disposed (for replay
        after a backup restore). Defaults to nothing found."""
        return []

    def dispose(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        """Dispatch to the mutator for ``selection.action``."""
        mutators: dict[str, Callable[[Selection, Sequence[Any]], list[Any]]] = {
            "delete": self.delete, "anonymize": self.anonymize, "isolate": self.isolate,
            "purge": lambda sel, keys: self.purge_isolated(sel.rule, sel.now, keys),
        }
        return mutators[selection.action](selection, keys)
