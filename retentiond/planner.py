"""Pure decisions: which records of a rule a sweep may dispose at ``now``. No I/O.

The planner turns a rule (and, from later layers, holds and requests) into adapter-neutral
:class:`~retentiond.adapters.base.Selection` objects. Time-based disposal follows SPEC 3.2:
a record is due when ``now >= clock + dispose_after`` and ``now >= clock + keep_for``, which
:func:`retentiond.timeutil.due_cutoff` turns into one comparison ``clock <= cutoff``, computed on
the wall clock of the policy's time zone.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from retentiond.adapters.base import Filter, Selection
from retentiond.policy.model import Rule
from retentiond.timeutil import due_cutoff, subtract


def local(now: datetime, tz: ZoneInfo) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(tz)


def clock_cutoff(rule: Rule, now: datetime, tz: ZoneInfo) -> datetime | None:
    """The latest clock value that is due by time, or None when the rule never disposes by
    time (no ``dispose_after``)."""
    if rule.dispose_after is None:
        return None
    at = local(now, tz)
    cutoff = due_cutoff(at, rule.dispose_after)
    if rule.keep_for is not None:
        cutoff = min(cutoff, due_cutoff(at, rule.keep_for))
    return cutoff


def floor_date(rule: Rule, clock: datetime) -> datetime | None:
    """When the floor (``keep_for``) of a record with this clock value ends."""
    from retentiond.timeutil import add

    return add(clock, rule.keep_for) if rule.keep_for is not None else None


def resolve_filters(rule: Rule, now: datetime) -> tuple[Filter, ...]:
    """``match`` with ``older_than``/``newer_than`` resolved against ``now`` (col <= now - d,
    col > now - d)."""
    out = []
    for column, cond in rule.match.items():
        if cond.op == "older_than":
            out.append(Filter(column, "le", subtract(now, cond.value)))
        elif cond.op == "newer_than":
            out.append(Filter(column, "gt", subtract(now, cond.value)))
        else:
            out.append(Filter(column, cond.op, cond.value))
    return tuple(out)


def time_selection(rule: Rule, now: datetime, tz: ZoneInfo) -> Selection | None:
    """What the rule disposes by time at ``now``; None for a rule without ``dispose_after``."""
    cutoff = clock_cutoff(rule, now, tz)
    if cutoff is None:
        return None
    at = local(now, tz)
    return Selection(rule=rule, action=rule.action, reason="schedule", tz=tz, now=at,
                     clock_cutoff=cutoff, filters=resolve_filters(rule, at))
