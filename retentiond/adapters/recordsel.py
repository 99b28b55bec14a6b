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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from retentiond.adapters.base import Selection
from retentiond.policy.model import Rule


@dataclass(frozen=True, slots=True)
class Seen:
    """One record as one rule sees it: its subject, its clock (aware, in the policy's zone;
    None when it has none or it does not parse) and whether its clock does not parse."""

    subject: str | None
    clock: datetime | None
    bad_clock: bool = False


View = Callable[[Rule], "Seen | None"]


def _local(value: datetime | None, tz: ZoneInfo) -> datetime | None:
    return None if value is None else value.astimezone(tz)


class Covers:
    """A selection compiled once, asked per record: ``Covers(sel)(view)``."""

    __slots__ = ("after", "cutoff", "exclude", "excluded", "lo_hi", "null_clock", "rule",
                 "rules", "subjects", "unconditional")

    def __init__(self, sel: Selection) -> None:
        if sel.filters:
            raise ValueError("match filters cannot be evaluated here")
        tz = sel.tz
        self.rule = sel.rule
        self.unconditional = sel.unconditional
        self.subjects = (None if sel.subjects is None or sel.unconditional
                         else frozenset(sel.subjects))
        self.excluded = frozenset(sel.exclude_subjects)
        self.cutoff = _local(sel.clock_cutoff, tz)
        self.after = _local(sel.clock_after, tz)
        self.null_clock = sel.null_clock
        self.lo_hi = (None if sel.clock_within is None else
                      (sel.clock_within[0].astimezone(tz), sel.clock_within[1].astimezone(tz)))
        self.exclude = tuple(Covers(o) for o in sel.exclude)
        #: Every rule the selection involves (its own and those of what it excludes).
        self.rules: tuple[Rule, ...] = (self.rule, *(r for o in self.exclude for r in o.rules))

    def __call__(self, view: View) -> bool:
        seen = view(self.rule)
        if seen is None:
            return False
        if not self._own(seen):
            return False
        return self.unconditional or not any(other(view) for other in self.exclude)

    def same(self, seen: Seen) -> bool:
        """:meth:`__call__` for a record every rule of :attr:`rules` sees as ``seen`` (the
        rules of one target share how they read a record)."""
        if not self._own(seen):
            return False
        return self.unconditional or not any(other.same(seen) for other in self.exclude)

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
