"""The :class:`~retentiond.adapters.base.Selection` semantics in Python, one record at a time,
for adapters whose stores cannot evaluate a selection themselves (files; objects).

It is the sql adapter's ``predicate`` (``sql.py``, ``sqlclock.clock_parts``) without SQL:

* the record must be one of the rule's (the adapter's ``view`` returns None otherwise);
* ``subjects`` (unless ``unconditional``): its subject is one of them (a record without a
  subject is never one of them); ``exclude_subjects``: its subject is not one of them (a
  record without a subject is not excluded), also when ``unconditional``;
* ``unconditional`` (replay) stops here: clocks and other rules do not matter;
* ``clock_cutoff``: its clock is set, parses and is at or before the cutoff;
* ``clock_after``: its clock is after it, or does not parse (protected), or (with
  ``null_clock``) is empty;
* ``clock_within`` ``(lo, hi)``: ``lo < clock < hi``, or the clock does not parse;
* it is covered by none of the ``exclude`` selections (each evaluated the same way, on the
  record as that selection's rule sees it).

Clocks are aware datetimes in the policy's zone and the bounds are brought into that zone, so
two times compare as wall-clock times, the way the sql adapter compares naive timestamps with
bounds written in the policy's zone. ``filters`` never occur: these adapters refuse ``match``.

For clocks that are instants (a file's mtime), ``Covers(sel, micros=True)`` compares integer
microseconds since the epoch instead of datetimes, when :func:`instants_agree` says that gives
the same answers: no UTC offset change within two days of any bound (then a wall-clock time is
at or before a bound exactly when its instant is; offsets differ by less than 27 hours).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from retentiond.adapters.base import Selection
from retentiond.policy.model import Rule


class Seen(NamedTuple):
    """One record as one rule sees it: its subject, its clock (aware, in the policy's zone;
    None when it has none or it does not parse) and whether its clock does not parse. (A
    named tuple: one is made per record scanned.)"""

    subject: str | None
    clock: datetime | None
    bad_clock: bool = False


View = Callable[[Rule], "Seen | None"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICRO = timedelta(microseconds=1)
_AROUND = [timedelta(minutes=15 * k) for k in range(-4 * 48, 4 * 48 + 1)]


def _micros(at: datetime) -> int:
    """An aware time as integer microseconds since the epoch."""
    return (at - EPOCH) // MICRO


def _bounds(sel: Selection) -> Iterator[datetime]:
    yield from (b for b in (sel.clock_cutoff, sel.clock_after) if b is not None)
    if sel.clock_within is not None:
        yield from sel.clock_within
    for other in sel.exclude:
        yield from _bounds(other)


def instants_agree(sel: Selection) -> bool:
    """Whether comparing instants answers like comparing wall-clock times in ``sel.tz`` for
    every bound of the selection: the zone's offset is the same every 15 minutes from two
    days before each bound to two days after."""
    tz = sel.tz
    for bound in _bounds(sel):
        utc = bound.astimezone(UTC)
        offsets = {(utc + step).astimezone(tz).utcoffset() for step in _AROUND}
        if len(offsets) != 1:
            return False
    return True


def _local(value: datetime | None, tz: ZoneInfo) -> datetime | None:
    return None if value is None else value.astimezone(tz)


class Covers:
    """A selection compiled once, asked per record: ``Covers(sel)(view)``."""

    __slots__ = ("after", "cutoff", "exclude", "excluded", "lo_hi", "null_clock", "rule",
                 "rules", "subjects", "unconditional")

    def __init__(self, sel: Selection, *, micros: bool = False) -> None:
        """``micros``: clocks will be integer microseconds since the epoch (only where
        :func:`instants_agree`)."""
        if sel.filters:
            raise ValueError("match filters cannot be evaluated here")
        tz = sel.tz

        def bound(at: datetime | None) -> Any:
            if at is None:
                return None
            return _micros(at) if micros else at.astimezone(tz)

        self.rule = sel.rule
        self.unconditional = sel.unconditional
        self.subjects = (None if sel.subjects is None or sel.unconditional
                         else frozenset(sel.subjects))
        self.excluded = frozenset(sel.exclude_subjects)
        self.cutoff = bound(sel.clock_cutoff)
        self.after = bound(sel.clock_after)
        self.null_clock = sel.null_clock
        self.lo_hi = (None if sel.clock_within is None else
                      (bound(sel.clock_within[0]), bound(sel.clock_within[1])))
        self.exclude = tuple(Covers(o, micros=micros) for o in sel.exclude)
        #: Every rule the selection involves (its own and those of what it excludes).
        self.rules: tuple[Rule, ...] = (self.rule, *(r for o in self.exclude for r in o.rules))

    @property
    def cutoff_only(self) -> bool:
        """Whether the clock being at or before :attr:`cutoff` decides alone (no subjects,
        holds, floors, gaps or other rules' exclusions)."""
        return (self.cutoff is not None and self.subjects is None and not self.excluded
                and not self.unconditional and self.after is None and self.lo_hi is None
                and not self.exclude)

    def __call__(self, view: View) -> bool:
        seen = view(self.rule)
        if seen is None:
            return False
        if not self._own(seen):
            return False
        return self.unconditional or not any(other(view) for other in self.exclude)

    def same(self, seen: tuple[str | None, Any, bool]) -> bool:
        """:meth:`__call__` for a record every rule of :attr:`rules` sees as ``seen`` (the
        rules of one target share how they read a record). :meth:`_own` inlined: this runs
        once per file scanned."""
        subject, clock = seen[0], seen[1]
        if subject is None:
            wanted = self.subjects is None
        else:
            wanted = ((self.subjects is None or subject in self.subjects)
                      and subject not in self.excluded)
        if not wanted:
            return False
        if self.unconditional:
            return True
        cutoff = self.cutoff
        if (cutoff is not None and (clock is None or clock > cutoff)) or (
                (self.after is not None or self.lo_hi is not None)
                and not self._clock(Seen(*seen))):
            return False
        return not self.exclude or not any(other.same(seen) for other in self.exclude)

    def _own(self, seen: Seen) -> bool:
        """The selection's own conditions, without what it excludes."""
        subject = seen.subject
        if self.subjects is not None and (subject is None or subject not in self.subjects):
            return False
        if subject is not None and subject in self.excluded:
            return False
        return self.unconditional or self._clock(seen)

    def _clock(self, seen: Seen) -> bool:
        clock, bad = seen.clock, seen.bad_clock
        if self.cutoff is not None and (clock is None or clock > self.cutoff):
            return False
        if self.after is not None and not bad:
            if clock is None:
                if not self.null_clock:
                    return False
            elif not clock > self.after:
                return False
        if self.lo_hi is not None and not bad:
            lo, hi = self.lo_hi
            if clock is None or not lo < clock < hi:
                return False
        return True
