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
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_SHORT = re.compile(r"^\s*(\d+)\s*(h|d|w|mo|y)\s*$")
_ISO = re.compile(
    r"^P(?!$)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    r"(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$"
)
_UNIT_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400}
_UNIT_MONTHS = {"mo": 1, "y": 12}
MAX_MONTHS = 12 * 1000


@dataclass(frozen=True, order=True)
class Duration:
    months: int = 0
    seconds: int = 0
    text: str = ""

    def __str__(self) -> str:
        return self.text or format_duration(self)

    @property
    def is_zero(self) -> bool:
        return self.months == 0 and self.seconds == 0


def parse_duration(text: str) -> Duration:
    """Parse ``3y``, ``18mo``, ``30d``, ``2w``, ``12h`` or ISO 8601 ``P3Y``, ``PT12H``."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as 30d or P3Y, got {text!r}")
    if m := _SHORT.match(text):
        n, unit = int(m.group(1)), m.group(2)
        if unit in _UNIT_MONTHS:
            return _checked(Duration(months=n * _UNIT_MONTHS[unit], text=text.strip()))
        return _checked(Duration(seconds=n * _UNIT_SECONDS[unit], text=text.strip()))
    if m := _ISO.match(text.strip().upper()):
        y, mo, w, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
        seconds = ((w * 7 + d) * 24 + h) * 3600 + mi * 60 + s
        return _checked(Duration(months=y * 12 + mo, seconds=seconds, text=text.strip()))
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
    """The latest clock value ``c`` with ``add(c, d) <= now``.

    ``add(., d)`` is monotonic, so ``c + d <= now`` holds exactly for ``c <= due_cutoff(now, d)``;
    this turns the per-record rule into one indexed comparison. Because of month-end clamping the
    cutoff can lie up to three days after ``subtract(now, d)`` (every day from Jan 28 to Jan 31
    plus one month is Feb 28).
    """
    base = now - timedelta(seconds=d.seconds)
    if d.months == 0:
        return base
    start = add_months(base, -d.months).date()
    best = start
    for k in range(1, 5):
        day = start + timedelta(days=k)
        if add_months(datetime.combine(day, time()), d.months).date() <= base.date():
            best = day
    shifted = add_months(datetime.combine(best, time()), d.months).date()
    if shifted == base.date():
        cutoff = datetime.combine(best, base.time())
    else:
        cutoff = datetime.combine(best, time.max)
    cutoff = cutoff.replace(tzinfo=base.tzinfo, fold=base.fold)
    return cutoff


def never_longer(short: Duration, long: Duration) -> bool:
    """True when ``start + short <= start + long`` for every start (checked over 400 years'
    worth of month-end and leap-year cases)."""
    if short.months == long.months:
        return short.seconds <= long.seconds
    if short.months <= long.months and short.seconds <= long.seconds:
        return True
    for start in _probe_dates():
        if add(start, short) > add(start, long):
            return False
    return True


def _probe_dates() -> list[datetime]:
    out = []
    for year in (1999, 2000, 2023, 2024):
        day = datetime(year, 1, 1)
        while day.year == year:
            out.append(day)
            day += timedelta(days=1)
    return out


def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_instant(text: str, tz: ZoneInfo) -> datetime:
    """Parse an ISO 8601 instant; a naive value is taken in ``tz``. Returns UTC."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def to_utc(value: datetime | date, tz: ZoneInfo) -> datetime:
    """A store's clock value as UTC: naive values are wall-clock time in ``tz``."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC)


def isoformat(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()
