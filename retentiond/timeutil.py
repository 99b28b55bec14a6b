"""Durations and calendar arithmetic. Pure functions, no I/O.

A duration is a number of calendar months plus a fixed number of seconds:
``3y`` is 36 months, ``18mo`` is 18 months, ``2w`` is 14 days, ``12h`` is 12 hours, and the
ISO 8601 forms ``P3Y``, ``P18M``, ``P1Y2M10DT2H30M`` and ``P3W`` combine them. Adding months keeps
the day of month, clamped to the end of the target month (2024-02-29 + 1y = 2025-02-28); the
fixed part is added afterwards. There are never 365-day years.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

# ASCII digits only (\d would accept "٣d"), no blanks inside ("3 y" is not "3y"); fullmatch.
_SHORT = re.compile(r"([0-9]+)(h|d|w|mo|y)")
_ISO = re.compile(
    r"P(?!$)(?:([0-9]+)Y)?(?:([0-9]+)M)?(?:([0-9]+)W)?(?:([0-9]+)D)?"
    r"(?:T(?=[0-9])(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+)S)?)?"
)
_UNIT_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400}
_UNIT_MONTHS = {"mo": 1, "y": 12}
MAX_MONTHS = 12 * 1000


@dataclass(frozen=True)
class Duration:
    """``months`` calendar months plus ``seconds``. Equal when the amounts are equal, however
    they were written (``3y == 36mo == P3Y``); not ordered, because ``1mo`` and ``30d`` cannot be
    ordered (see :func:`never_longer`)."""

    months: int = 0
    seconds: int = 0
    text: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.text or format_duration(self)

    @property
    def is_zero(self) -> bool:
        return self.months == 0 and self.seconds == 0


def parse_duration(text: str) -> Duration:
    """Parse ``3y``, ``18mo``, ``30d``, ``2w``, ``12h`` or ISO 8601 ``P3Y``, ``PT12H``."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as 30d or P3Y, got {text!r}")
    stripped = text.strip()
    if m := _SHORT.fullmatch(stripped):
        n, unit = int(m.group(1)), m.group(2)
        if unit in _UNIT_MONTHS:
            return _checked(Duration(months=n * _UNIT_MONTHS[unit], text=stripped))
        return _checked(Duration(seconds=n * _UNIT_SECONDS[unit], text=stripped))
    if m := _ISO.fullmatch(stripped):
        y, mo, w, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
        seconds = ((w * 7 + d) * 24 + h) * 3600 + mi * 60 + s
        return _checked(Duration(months=y * 12 + mo, seconds=seconds, text=stripped))
    raise ValueError(
        f"unparseable duration {text!r}; use <n>h, <n>d, <n>w, <n>mo, <n>y or ISO 8601 like P3Y"
    )


def _checked(d: Duration) -> Duration:
    if d.months > MAX_MONTHS or d.seconds > MAX_MONTHS * 31 * 86400:
        raise ValueError(f"duration {d.text!r} is longer than 1000 years")
    return d


def format_duration(d: Duration) -> str:
    parts = []
    if d.months:
        parts.append(f"{d.months // 12}y" if d.months % 12 == 0 else f"{d.months}mo")
    if d.seconds:
        s = d.seconds
        parts.append(f"{s // 86400}d" if s % 86400 == 0 else f"{s // 3600}h" if s % 3600 == 0
                     else f"PT{s}S")
    return "+".join(parts) or "0d"


def add_months(value: datetime, months: int) -> datetime:
    """Shift by calendar months, keeping the day of month clamped to the month's end."""
    if months == 0:
        return value
    index = value.year * 12 + (value.month - 1) + months
    year, month = divmod(index, 12)
    day = min(value.day, calendar.monthrange(year, month + 1)[1])
    return value.replace(year=year, month=month + 1, day=day)


def add(value: datetime, d: Duration) -> datetime:
    return add_months(value, d.months) + timedelta(seconds=d.seconds)


def subtract(value: datetime, d: Duration) -> datetime:
    """``value - d``: the fixed part first, then the months (the inverse order of :func:`add`)."""
    return add_months(value - timedelta(seconds=d.seconds), -d.months)


def due_cutoff(now: datetime, d: Duration) -> datetime:
    """The latest clock value ``c`` with ``add(c, d) <= now``: every clock that is due is at or
    before it, so ``clock <= due_cutoff`` is one indexed comparison.

    It is exact except for the clocks in :func:`due_gaps`. Because of month-end clamping
    ``add(., d)`` is not monotonic: 2024-02-28 12:00 + 1y is 2025-02-28 12:00 but 2024-02-29
    06:00 + 1y is 2025-02-28 06:00. At 2025-02-28 10:00 the cutoff is 2024-02-29 10:00, and
    2024-02-28 after 10:00 is not due yet although it is before the cutoff.
    """
    base = now - timedelta(seconds=d.seconds)
    if d.months == 0:
        return base
    year, month, days = _month_before(base, d.months)
    if base.day > days:  # the whole month is due, its last day included
        cutoff = datetime.combine(date(year, month, days), time.max)
    else:
        day = days if _is_last_day(base) else base.day  # later days clamp to base's day
        cutoff = datetime.combine(date(year, month, day), base.time())
    return cutoff.replace(tzinfo=base.tzinfo, fold=base.fold)


def due_gaps(now: datetime, d: Duration) -> tuple[tuple[datetime, datetime], ...]:
    """The clocks before :func:`due_cutoff` that are not due yet, as open intervals ``(lo, hi)``.

    ``add(c, d) <= now`` holds exactly when ``c <= due_cutoff(now, d)`` and ``c`` is in none of
    these. They exist only when ``now - d.seconds`` falls on the last day of a month that is
    shorter than the month ``d.months`` earlier: the days of that month from the clamped day on
    are due up to ``now``'s time of day only.
    """
    base = now - timedelta(seconds=d.seconds)
    if d.months == 0 or not _is_last_day(base) or base.time() == time.max:
        return ()
    year, month, days = _month_before(base, d.months)
    return tuple(
        (datetime.combine(date(year, month, day), base.time(), tzinfo=base.tzinfo),
         datetime.combine(date(year, month, day) + timedelta(days=1), time(),
                          tzinfo=base.tzinfo))
        for day in range(base.day, days))


def _month_before(value: datetime, months: int) -> tuple[int, int, int]:
    """Year, month and number of days of the month ``months`` before ``value``'s month."""
    year, month0 = divmod(value.year * 12 + value.month - 1 - months, 12)
    return year, month0 + 1, calendar.monthrange(year, month0 + 1)[1]


def _is_last_day(value: datetime) -> bool:
    return value.day == calendar.monthrange(value.year, value.month)[1]


def never_longer(short: Duration, long: Duration) -> bool:
    """True when ``start + short <= start + long`` for every start.

    Exact: the Gregorian calendar repeats every 400 years (146097 days), so the smallest gap
    between ``start + long.months`` and ``start + short.months`` over every start is found by
    trying each month of one cycle; within a month only day 1 and days 29-31 differ (no
    clamping happens below day 29)."""
    if short.months == long.months:
        return short.seconds <= long.seconds
    if short.months <= long.months and short.seconds <= long.seconds:
        return True
    return short.seconds - long.seconds <= _min_month_gap(short.months, long.months)


@cache
def _min_month_gap(short_months: int, long_months: int) -> int:
    """Smallest ``add_months(s, long_months) - add_months(s, short_months)`` over every start
    ``s``, in seconds."""
    firsts, lengths = _month_table()
    return 86400 * min(
        firsts[i + long_months] + min(day, lengths[i + long_months])
        - firsts[i + short_months] - min(day, lengths[i + short_months])
        for i in range(_CYCLE_MONTHS) for day in (1, 29, 30, 31) if day <= lengths[i])


_CYCLE_MONTHS = 400 * 12


@cache
def _month_table() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Day ordinal of the 1st and length of each month from 2000-01 on, one 400-year cycle
    plus the longest duration."""
    firsts, lengths = [], []
    for index in range(2000 * 12, 2000 * 12 + _CYCLE_MONTHS + MAX_MONTHS + 1):
        year, month = divmod(index, 12)
        firsts.append(date(year, month + 1, 1).toordinal())
        lengths.append(calendar.monthrange(year, month + 1)[1])
    return tuple(firsts), tuple(lengths)


def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def utcnow() -> datetime:
    return datetime.now(UTC)


# The instants a sweep may be planned at: durations reach 1000 years either way from them.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


class InstantOutOfRange(ValueError):
    """An ISO 8601 instant that exists but not in UTC (before year 1 or after 9999)."""


def parse_instant(text: str, tz: ZoneInfo) -> datetime:
    """Parse an ISO 8601 instant; a naive value is taken in ``tz``. Returns UTC.
    ValueError (never OverflowError) when it is not one or cannot be expressed in UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InstantOutOfRange(f"{text!r} is outside the years 1-9999 in UTC") from None


def in_planning_range(value: datetime) -> bool:
    """True when ``value`` is between :data:`EARLIEST` and :data:`LATEST` (exclusive)."""
    return EARLIEST <= value < LATEST


def to_utc(value: datetime | date, tz: ZoneInfo) -> datetime:
    """A store's clock value as UTC: naive values are wall-clock time in ``tz``."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def isoformat(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()
