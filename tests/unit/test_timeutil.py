"""Durations and calendar arithmetic (SPEC 3.1): exact values and hypothesis properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retentiond.timeutil import (
    Duration,
    add,
    add_months,
    due_cutoff,
    due_gaps,
    format_duration,
    isoformat,
    never_longer,
    parse_duration,
    parse_instant,
    subtract,
    to_utc,
)

DAY = 86400
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def d(text: str) -> Duration:
    return parse_duration(text)


# -- parse_duration ---------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "months", "seconds"), [
    ("3y", 36, 0),
    ("18mo", 18, 0),
    ("1mo", 1, 0),
    ("30d", 0, 30 * DAY),
    ("2w", 0, 14 * DAY),
    ("12h", 0, 12 * 3600),
    ("0d", 0, 0),
    ("1000y", 12000, 0),
    ("P3Y", 36, 0),
    ("P18M", 18, 0),
    ("P30D", 0, 30 * DAY),
    ("PT12H", 0, 12 * 3600),
    ("P1Y2M10DT2H30M", 14, 10 * DAY + 2 * 3600 + 30 * 60),
    ("P3W", 0, 21 * DAY),
    ("P1W2D", 0, 9 * DAY),
    ("PT1M", 0, 60),  # M after T is minutes
    ("P1M", 1, 0),  # M before T is months
    ("PT30S", 0, 30),
    ("PT1H1S", 0, 3601),
    ("P0D", 0, 0),
    (" 3y ", 36, 0),
])
def test_parse_duration_values(text: str, months: int, seconds: int) -> None:
    got = parse_duration(text)
    assert (got.months, got.seconds) == (months, seconds)
    assert str(got) == text.strip()


@pytest.mark.parametrize("text", [
    "3 years", "", "   ", "P", "PT", "-1d", "1.5y", "3 y", "3Y", "3D", "3m", "3", "y", "d3",
    "P1YT", "P-1D", "PT1D", "P1H", "3d3h", "+3d", "p3y", "P3y", "1001y", "P1001Y",
    "\u0663d",  # ARABIC-INDIC DIGIT THREE: only ASCII digits are numbers here
    "P\u0663Y", "3y;", "3yy", "PT1H\n2M",
])
def test_parse_duration_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [None, 3, 3.0, ["3y"], {"y": 3}])
def test_parse_duration_rejects_non_strings(value: object) -> None:
    with pytest.raises(ValueError, match=r"expected a duration such as 30d or P3Y"):
        parse_duration(value)  # type: ignore[arg-type]  # a wrong type on purpose


def test_unparseable_message_says_how_to_fix() -> None:
    with pytest.raises(ValueError) as exc:
        parse_duration("3 years")
    assert str(exc.value) == ("unparseable duration '3 years'; use <n>h, <n>d, <n>w, <n>mo, "
                              "<n>y or ISO 8601 like P3Y")


def test_durations_are_equal_by_amount_not_by_spelling() -> None:
    assert d("3y") == d("36mo") == d("P3Y") == d("P36M") == Duration(months=36)
    assert hash(d("3y")) == hash(d("P3Y"))
    assert d("2w") == d("14d") == d("P2W") == d("336h")
    assert d("1mo") != d("30d")
    assert d("1y") != d("365d")
    assert len({d("3y"), d("P3Y"), d("36mo")}) == 1


@given(st.integers(0, 1000), st.sampled_from(["h", "d", "w", "mo", "y"]))
def test_short_form_property(n: int, unit: str) -> None:
    got = parse_duration(f"{n}{unit}")
    expected = {"h": (0, n * 3600), "d": (0, n * DAY), "w": (0, n * 7 * DAY),
                "mo": (n, 0), "y": (12 * n, 0)}[unit]
    assert (got.months, got.seconds) == expected


@given(st.lists(st.one_of(st.none(), st.integers(0, 99)), min_size=7, max_size=7))
def test_iso_form_property(parts: list[int | None]) -> None:
    y, mo, w, dd, h, mi, s = parts
    date_part = "".join(f"{v}{u}" for v, u in zip((y, mo, w, dd), "YMWD", strict=True)
                        if v is not None)
    time_part = "".join(f"{v}{u}" for v, u in zip((h, mi, s), "HMS", strict=True)
                        if v is not None)
    text = "P" + date_part + (f"T{time_part}" if time_part else "")
    if text == "P":
        with pytest.raises(ValueError):
            parse_duration(text)
        return
    got = parse_duration(text)
    assert got.months == 12 * (y or 0) + (mo or 0)
    assert got.seconds == ((7 * (w or 0) + (dd or 0)) * DAY + (h or 0) * 3600
                           + (mi or 0) * 60 + (s or 0))


def test_format_duration() -> None:
    assert format_duration(Duration(months=36)) == "3y"
    assert format_duration(Duration(months=18)) == "18mo"
    assert format_duration(Duration(seconds=30 * DAY)) == "30d"
    assert format_duration(Duration(seconds=7200)) == "2h"
    assert format_duration(Duration(seconds=90)) == "PT90S"
    assert format_duration(Duration()) == "0d"
    assert format_duration(Duration(months=12, seconds=DAY)) == "1y+1d"
    assert str(Duration(months=24)) == "2y"
    assert Duration().is_zero and d("0d").is_zero and not d("1h").is_zero


# -- add / add_months -------------------------------------------------------------------------
@pytest.mark.parametrize(("start", "duration", "expected"), [
    (datetime(2024, 2, 29), "1y", datetime(2025, 2, 28)),
    (datetime(2024, 2, 29), "4y", datetime(2028, 2, 29)),
    (datetime(2024, 2, 29), "P1Y", datetime(2025, 2, 28)),
    (datetime(2024, 1, 31), "1mo", datetime(2024, 2, 29)),
    (datetime(2023, 1, 31), "1mo", datetime(2023, 2, 28)),
    (datetime(2024, 1, 31), "2mo", datetime(2024, 3, 31)),
    (datetime(2024, 3, 31), "1mo", datetime(2024, 4, 30)),
    (datetime(2024, 12, 15), "1mo", datetime(2025, 1, 15)),
    (datetime(2024, 8, 31), "18mo", datetime(2026, 2, 28)),
    (datetime(2023, 3, 1), "1y", datetime(2024, 3, 1)),  # 366 days later, not 365
    (datetime(2024, 3, 1), "1y", datetime(2025, 3, 1)),
    (datetime(2021, 6, 30, 13, 45, 7, 123), "3y", datetime(2024, 6, 30, 13, 45, 7, 123)),
    (datetime(2024, 1, 31, 23, 59, 59), "P1MT1S", datetime(2024, 3, 1)),  # months, then time
    (datetime(2024, 1, 31, 23), "P1MT1H", datetime(2024, 3, 1)),
    (datetime(2024, 1, 1), "30d", datetime(2024, 1, 31)),
    (datetime(2024, 2, 28, 12), "12h", datetime(2024, 2, 29)),
    (datetime(2024, 2, 28), "0d", datetime(2024, 2, 28)),
])
def test_add_exact(start: datetime, duration: str, expected: datetime) -> None:
    assert add(start, d(duration)) == expected


@pytest.mark.parametrize(("start", "months", "expected"), [
    (datetime(2025, 1, 15), -1, datetime(2024, 12, 15)),
    (datetime(2024, 3, 31), -1, datetime(2024, 2, 29)),
    (datetime(2025, 3, 31), -13, datetime(2024, 2, 29)),
    (datetime(2024, 5, 31), 0, datetime(2024, 5, 31)),
    (datetime(2024, 5, 31), 1, datetime(2024, 6, 30)),
    (datetime(2024, 5, 31), 12000, datetime(3024, 5, 31)),
])
def test_add_months_exact(start: datetime, months: int, expected: datetime) -> None:
    assert add_months(start, months) == expected


def test_add_keeps_the_time_zone() -> None:
    start = datetime(2024, 1, 31, 9, tzinfo=BERLIN)
    got = add(start, d("1mo"))
    assert got == datetime(2024, 2, 29, 9, tzinfo=BERLIN)
    assert got.tzinfo is BERLIN


naive = st.datetimes(min_value=datetime(1600, 1, 1), max_value=datetime(2600, 12, 31))
durations = st.builds(Duration, months=st.integers(0, 1200),
                      seconds=st.integers(0, 3 * 366 * DAY))


@given(naive, st.integers(0, 12000))
def test_add_months_keeps_day_clamped_to_month_end(start: datetime, months: int) -> None:
    got = add_months(start, months)
    index = start.year * 12 + start.month - 1 + months
    assert got.year * 12 + got.month - 1 == index
    last = (date(got.year + got.month // 12, got.month % 12 + 1, 1) - timedelta(days=1)).day
    assert got.day == min(start.day, last)
    assert got.time() == start.time()


@given(naive, st.integers(0, 200))
def test_years_are_calendar_years_never_365_days(start: datetime, years: int) -> None:
    got = add(start, d(f"{years}y"))
    assert got.year == start.year + years
    if (start.month, start.day) == (2, 29) and got.day != 29:
        assert (got.month, got.day) == (2, 28)
    else:
        assert (got.month, got.day) == (start.month, start.day)


def test_add_is_not_monotonic_because_of_clamping() -> None:
    """A later clock can end earlier: Feb 29 clamps to Feb 28 but keeps its time of day."""
    assert add(datetime(2024, 2, 28, 12), d("1y")) == datetime(2025, 2, 28, 12)
    assert add(datetime(2024, 2, 29, 6), d("1y")) == datetime(2025, 2, 28, 6)
    assert add(datetime(2023, 1, 29, 9), d("1mo")) < add(datetime(2023, 1, 28, 10), d("1mo"))


@given(naive, naive, durations)
def test_add_is_monotonic_for_equal_times_of_day(a: datetime, b: datetime,
                                                 dur: Duration) -> None:
    lo, hi = sorted((a, b.replace(hour=a.hour, minute=a.minute, second=a.second,
                                  microsecond=a.microsecond)))
    assert add(lo, dur) <= add(hi, dur)


@given(naive, naive, st.integers(0, 10 * 366 * DAY))
def test_add_is_monotonic_for_fixed_durations(a: datetime, b: datetime, seconds: int) -> None:
    lo, hi = sorted((a, b))
    assert add(lo, Duration(seconds=seconds)) <= add(hi, Duration(seconds=seconds))


# -- due_cutoff and due_gaps -----------------------------------------------------------------
# Because add(., d) is not monotonic, "add(c, d) <= now iff c <= due_cutoff(now, d)" cannot hold
# for any single cutoff: at 2025-02-28 10:00 with d = 1y, 2024-02-29 06:00 is due and
# 2024-02-28 12:00 (earlier) is not. What holds is: every due clock is at or before the cutoff,
# and the due clocks are exactly those at or before it and outside due_gaps(now, d).
def is_due_by_cutoff(clock: datetime, now: datetime, dur: Duration) -> bool:
    return clock <= due_cutoff(now, dur) and not any(
        lo < clock < hi for lo, hi in due_gaps(now, dur))


def test_no_single_cutoff_is_exact() -> None:
    now, year = datetime(2025, 2, 28, 10), d("1y")
    assert add(datetime(2024, 2, 29, 6), year) <= now  # due
    assert not add(datetime(2024, 2, 28, 12), year) <= now  # earlier, but not due
    assert due_cutoff(now, year) == datetime(2024, 2, 29, 10)
    assert due_gaps(now, year) == ((datetime(2024, 2, 28, 10), datetime(2024, 2, 29)),)
    assert not is_due_by_cutoff(datetime(2024, 2, 28, 12), now, year)
    assert is_due_by_cutoff(datetime(2024, 2, 29, 6), now, year)
    assert is_due_by_cutoff(datetime(2024, 2, 28, 10), now, year)  # exactly one year


@st.composite
def month_ends(draw: st.DrawFn, tz: ZoneInfo | None = None) -> datetime:
    """Instants on the last (or second to last) day of a month, where the gaps are."""
    year, month = draw(st.integers(1601, 2599)), draw(st.integers(1, 12))
    last = (date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day
    day = draw(st.sampled_from([last, last, last - 1]))
    return datetime(year, month, day, draw(st.integers(0, 23)), draw(st.sampled_from([0, 59])),
                    draw(st.sampled_from([0, 1, 59])), tzinfo=tz)


@settings(max_examples=300)
@given(naive, naive, durations)
def test_due_clocks_are_never_after_the_cutoff(clock: datetime, now: datetime,
                                               dur: Duration) -> None:
    assert (add(clock, dur) <= now) == is_due_by_cutoff(clock, now, dur)
    if add(clock, dur) <= now:
        assert clock <= due_cutoff(now, dur)


@settings(max_examples=1000)
@given(month_ends(), st.builds(Duration, months=st.integers(0, 40), seconds=st.sampled_from(
    [0, 1, 3600, DAY, 31 * DAY + 7])), st.integers(-5 * DAY, 2 * DAY), st.booleans())
def test_due_cutoff_and_gaps_are_exact_near_month_ends(
        base: datetime, dur: Duration, offset: int, shift_seconds: bool) -> None:
    """Clocks within days of the cutoff, with now - d.seconds on a month's last days."""
    now = base + timedelta(seconds=dur.seconds if shift_seconds else 0)
    clock = due_cutoff(now, dur) + timedelta(seconds=offset)
    assert (add(clock, dur) <= now) == is_due_by_cutoff(clock, now, dur)


@settings(max_examples=300)
@given(st.sampled_from([BERLIN, NEW_YORK, ZoneInfo("UTC"), UTC]), naive, month_ends(),
       durations, st.integers(-3 * DAY, DAY))
def test_due_cutoff_and_gaps_are_exact_aware(tz: ZoneInfo, clock: datetime, now: datetime,
                                             dur: Duration, offset: int) -> None:
    """Aware clocks and now in one zone compare on the wall clock, like naive ones."""
    now = now.replace(tzinfo=tz)
    cutoff = due_cutoff(now, dur)
    assert cutoff.tzinfo is tz
    assert all(lo.tzinfo is tz and hi.tzinfo is tz for lo, hi in due_gaps(now, dur))
    for c in (clock.replace(tzinfo=tz), cutoff + timedelta(seconds=offset)):
        assert (add(c, dur) <= now) == is_due_by_cutoff(c, now, dur)


@pytest.mark.parametrize(("now", "duration", "gaps"), [
    (datetime(2023, 2, 28, 10), "1mo", [(datetime(2023, 1, 28, 10), datetime(2023, 1, 29)),
                                        (datetime(2023, 1, 29, 10), datetime(2023, 1, 30)),
                                        (datetime(2023, 1, 30, 10), datetime(2023, 1, 31))]),
    (datetime(2024, 4, 30, 1, 2, 3), "1mo", [(datetime(2024, 3, 30, 1, 2, 3),
                                              datetime(2024, 3, 31))]),
    (datetime(2024, 3, 1, 9), "P1Y1D", []),  # 2024-02-29 09:00 minus 1y: Feb 2023 is shorter
    (datetime(2025, 3, 1, 9), "P1Y1D", [(datetime(2024, 2, 28, 9), datetime(2024, 2, 29))]),
    (datetime(2024, 2, 29, 10), "1y", []),  # February 2023 is shorter: all of it is due
    (datetime(2024, 2, 28, 10), "1mo", []),  # not the last day of February
    (datetime(2023, 3, 31, 10), "1mo", []),  # February is shorter: all of it is due
    (datetime(2023, 4, 30, 10), "1mo", [(datetime(2023, 3, 30, 10), datetime(2023, 3, 31))]),
    (datetime(2023, 2, 28, 10), "30d", []),  # fixed durations have no gaps
    (datetime(2023, 2, 28, 23, 59, 59, 999999), "1mo", []),  # nothing later on those days
])
def test_due_gaps_exact(now: datetime, duration: str,
                        gaps: list[tuple[datetime, datetime]]) -> None:
    assert list(due_gaps(now, d(duration))) == gaps


@pytest.mark.parametrize(("now", "duration", "expected"), [
    # Jan 29, 30 and 31 plus one month are all Feb 29: the cutoff is the last of them
    (datetime(2024, 2, 29, 12), "1mo", datetime(2024, 1, 31, 12)),
    (datetime(2023, 2, 28), "1mo", datetime(2023, 1, 31)),
    (datetime(2025, 2, 28, 10), "1y", datetime(2024, 2, 29, 10)),
    (datetime(2024, 3, 1), "1mo", datetime(2024, 2, 1)),
    # no clock + 1mo lands on Mar 29 or 30: every time on Feb 28 is due, Mar 1 is not
    (datetime(2023, 3, 30, 8), "1mo", datetime(2023, 2, 28, 23, 59, 59, 999999)),
    (datetime(2024, 3, 1, 0, 30), "P1MT1H", datetime(2024, 1, 31, 23, 30)),
    (datetime(2024, 3, 1, 0, 30), "30d", datetime(2024, 1, 31, 0, 30)),
    (datetime(2024, 3, 1, 0, 30), "0d", datetime(2024, 3, 1, 0, 30)),
    (datetime(2026, 11, 22, 3), "3y", datetime(2023, 11, 22, 3)),
])
def test_due_cutoff_exact(now: datetime, duration: str, expected: datetime) -> None:
    assert due_cutoff(now, d(duration)) == expected


# -- subtract ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("now", "duration", "expected"), [
    (datetime(2025, 3, 31), "1mo", datetime(2025, 2, 28)),
    (datetime(2025, 2, 28), "1y", datetime(2024, 2, 28)),
    (datetime(2024, 2, 29), "1y", datetime(2023, 2, 28)),
    (datetime(2024, 3, 1), "P1MT1H", datetime(2024, 1, 29, 23)),  # time first, then months
    (datetime(2024, 3, 1, 12), "30d", datetime(2024, 1, 31, 12)),
    (datetime(2026, 11, 22), "18y", datetime(2008, 11, 22)),
])
def test_subtract_exact(now: datetime, duration: str, expected: datetime) -> None:
    assert subtract(now, d(duration)) == expected


@given(naive, durations)
def test_subtract_is_never_after_the_cutoff(now: datetime, dur: Duration) -> None:
    back = subtract(now, dur)
    assert add(back, dur) <= now
    assert back <= due_cutoff(now, dur)


@given(naive, st.integers(0, 10 * 366 * DAY))
def test_subtract_undoes_add_for_fixed_durations(clock: datetime, seconds: int) -> None:
    dur = Duration(seconds=seconds)
    assert subtract(add(clock, dur), dur) == clock


# -- never_longer -----------------------------------------------------------------------------
@pytest.mark.parametrize(("short", "long", "expected"), [
    ("13mo", "1y", False),
    ("12mo", "1y", True),
    ("1y", "12mo", True),
    ("366d", "1y", False),  # 2023-01-01 + 1y is only 365 days later
    ("365d", "1y", True),  # a calendar year is never shorter than 365 days
    ("1y", "365d", False),  # 2023-03-01 + 1y is 366 days later
    ("1y", "366d", True),
    ("1mo", "31d", True),
    ("1mo", "30d", False),  # Jan 1 + 1mo is 31 days later
    ("30d", "1mo", False),  # Feb 1 + 1mo is 28 days later
    ("28d", "1mo", True),
    ("29d", "1mo", False),
    ("1mo", "28d", False),
    ("P1M", "P30D", False),
    ("0d", "1h", True),
    ("1h", "0d", False),
    ("3y", "3y", True),
    ("3y", "P3Y", True),
    ("2y", "3y", True),
    ("4y", "3y", False),
    ("P1Y1D", "13mo", True),  # 13 months after a start is at least 1 year + 28 days
    ("P1Y29D", "13mo", False),
    ("36524d", "100y", True),  # 100 calendar years hold 24 or 25 leap days
    ("36525d", "100y", False),  # 2000-03-01 + 100y is 36524 days later (2100 is no leap year)
    ("100y", "36525d", True),
    ("100y", "36524d", False),
])
def test_never_longer_exact(short: str, long: str, expected: bool) -> None:
    assert never_longer(d(short), d(long)) is expected


def test_never_longer_sees_leap_centuries_far_from_today() -> None:
    """The second century after 2300-01-01 (2400 is a leap year) has 36525 days, so 200y can
    be one day longer than 100y + 36524d; probing only recent years used to miss it."""
    short, long = Duration(months=2400), Duration(months=1200, seconds=36524 * DAY)
    start = datetime(2300, 1, 1)
    assert add(start, short) == datetime(2500, 1, 1)
    assert add(start, long) == datetime(2499, 12, 31)
    assert never_longer(short, long) is False


def _witness(short: Duration, long: Duration) -> date | None:
    """A start date where short ends after long, searched over every day of two decades that
    contain a non-leap (1900) and a leap (2000) century year."""
    for first in (date(1896, 1, 1), date(1996, 1, 1)):
        for offset in range(3653):
            start = datetime.combine(first + timedelta(days=offset), datetime.min.time())
            if add(start, short) > add(start, long):
                return start.date()
    return None


small = st.builds(Duration, months=st.integers(0, 30), seconds=st.integers(0, 800).map(
    lambda n: n * DAY))


@settings(max_examples=40, deadline=None)
@given(small, small)
def test_never_longer_agrees_with_a_brute_force_search(short: Duration, long: Duration) -> None:
    assert never_longer(short, long) == (_witness(short, long) is None)


@given(durations)
def test_never_longer_is_reflexive(dur: Duration) -> None:
    assert never_longer(dur, dur)
    assert never_longer(Duration(), dur)


# -- instants ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "tz", "expected"), [
    ("2026-11-22T03:00:00Z", BERLIN, datetime(2026, 11, 22, 3, tzinfo=UTC)),
    ("2026-11-22T03:00:00", BERLIN, datetime(2026, 11, 22, 2, tzinfo=UTC)),  # CET, +01:00
    ("2026-07-01T12:00", BERLIN, datetime(2026, 7, 1, 10, tzinfo=UTC)),  # CEST, +02:00
    ("2026-11-22T03:00:00+05:30", ZoneInfo("UTC"), datetime(2026, 11, 21, 21, 30, tzinfo=UTC)),
    ("2026-11-22", NEW_YORK, datetime(2026, 11, 22, 5, tzinfo=UTC)),
])
def test_parse_instant(text: str, tz: ZoneInfo, expected: datetime) -> None:
    got = parse_instant(text, tz)
    assert got == expected
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01", "22/11/2026"])
def test_parse_instant_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError):
        parse_instant(text, BERLIN)


def test_to_utc_and_isoformat() -> None:
    assert to_utc(date(2026, 1, 1), BERLIN) == datetime(2025, 12, 31, 23, tzinfo=UTC)
    assert to_utc(datetime(2026, 7, 1, 12), BERLIN) == datetime(2026, 7, 1, 10, tzinfo=UTC)
    aware = datetime(2026, 7, 1, 12, tzinfo=NEW_YORK)
    assert to_utc(aware, BERLIN) == datetime(2026, 7, 1, 16, tzinfo=UTC)
    assert isoformat(datetime(2026, 1, 1, 1, tzinfo=BERLIN)) == "2026-01-01T00:00:00+00:00"
