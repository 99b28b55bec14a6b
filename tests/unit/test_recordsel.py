"""The Selection semantics in Python (retentiond/adapters/recordsel.py), as the sql adapter
evaluates them in SQL: subjects and holds, the cutoff, floors (clock_after, null_clock),
not-yet-due gaps (clock_within), other rules' exclusions, replay (unconditional); bad clocks
are never due and always protected."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retentiond.adapters.base import Filter, Selection
from retentiond.adapters.recordsel import Covers, Seen, instants_agree
from retentiond.policy.model import Rule

TZ = ZoneInfo("Europe/Berlin")
T = datetime(2024, 6, 15, 12, 0, tzinfo=TZ)
RULE = Rule(id="r", store="s", path="u/{subject}/**")
OTHER = Rule(id="o", store="s", path="u/{subject}/**")


def sel(**kw: object) -> Selection:
    base = Selection(rule=RULE, action="delete", reason="schedule", tz=TZ, now=T,
                     clock_cutoff=T)
    return replace(base, **kw)  # type: ignore[arg-type]


def covers(s: Selection, seen: Seen | None) -> bool:
    """Whether ``s`` covers the record, asked both ways (every rule's view, and the one
    record all rules of a target share): they must agree."""
    compiled = Covers(s)
    answer = compiled(lambda rule: seen)
    if seen is not None:
        assert compiled.same(seen) is answer
    return answer


EARLY = Seen("1", T - timedelta(hours=1))
AT = Seen("1", T)
LATE = Seen("1", T + timedelta(hours=1))
BAD = Seen("1", None, bad_clock=True)
NONE = Seen("1", None)


def test_the_cutoff() -> None:
    assert [covers(sel(), s) for s in (EARLY, AT, LATE, BAD, NONE)] == [
        True, True, False, False, False]
    assert not covers(sel(), None)  # not one of the rule's files


def test_subjects_and_holds() -> None:
    erasure = sel(clock_cutoff=None, subjects=("1", "2"))
    assert [covers(erasure, s) for s in (LATE, BAD, Seen("3", T), Seen(None, T))] == [
        True, True, False, False]
    assert not covers(sel(clock_cutoff=None, subjects=()), LATE)
    held = sel(exclude_subjects=("1",))
    assert [covers(held, s) for s in (EARLY, Seen("2", T), Seen(None, T))] == [
        False, True, True]


def test_floors_protect_bad_clocks_and_optionally_empty_ones() -> None:
    floor = sel(clock_cutoff=None, clock_after=T)
    assert [covers(floor, s) for s in (EARLY, AT, LATE, BAD, NONE)] == [
        False, False, True, True, False]
    with_null = replace(floor, null_clock=True)
    assert [covers(with_null, s) for s in (EARLY, LATE, BAD, NONE)] == [
        False, True, True, True]


def test_gaps_are_open_intervals_and_protect_bad_clocks() -> None:
    gap = sel(clock_cutoff=None, clock_within=(T - timedelta(hours=2), T))
    assert [covers(gap, s) for s in (EARLY, AT, Seen("1", T - timedelta(hours=2)), BAD,
                                     NONE)] == [True, False, False, True, False]


def test_exclusions_of_other_rules_and_replay() -> None:
    floor = Selection(rule=OTHER, action="match", reason="", tz=TZ, now=T, clock_cutoff=None,
                      clock_after=T - timedelta(hours=2), protects=True)
    s = sel(exclude=(floor,))
    assert [covers(s, x) for x in (Seen("1", T - timedelta(hours=3)), EARLY, BAD)] == [
        True, False, False]
    replay = sel(clock_cutoff=None, unconditional=True, subjects=("9",),
                 exclude_subjects=("2",))
    assert [covers(replay, x) for x in (LATE, BAD, Seen("2", T))] == [True, True, False]


def test_filters_cannot_be_evaluated() -> None:
    with pytest.raises(ValueError, match="match filters"):
        Covers(sel(filters=(Filter("c", "eq", 1),)))


def test_bounds_in_another_zone_are_compared_as_instants() -> None:
    utc_cutoff = T.astimezone(ZoneInfo("UTC"))
    assert [covers(sel(clock_cutoff=utc_cutoff), s) for s in (EARLY, AT, LATE)] == [
        True, True, False]


@given(st.integers(-48, 48), st.integers(-48, 48))
def test_due_is_exactly_at_or_before_the_cutoff(hours: int, cut: int) -> None:
    record = Seen("1", T + timedelta(hours=hours))
    assert covers(sel(clock_cutoff=T + timedelta(hours=cut)), record) is (hours <= cut)


# -- mtimes as integer microseconds ---------------------------------------------------------------
def test_instants_agree_only_away_from_offset_changes() -> None:
    summer = datetime(2024, 7, 1, 12, 0, tzinfo=TZ)
    fall_back = datetime(2024, 10, 27, 2, 30, tzinfo=TZ)  # Berlin: 03:00 -> 02:00
    assert instants_agree(sel(clock_cutoff=summer))
    assert not instants_agree(sel(clock_cutoff=fall_back + timedelta(days=1)))
    assert not instants_agree(sel(clock_cutoff=summer, exclude=(
        sel(clock_cutoff=None, clock_within=(fall_back - timedelta(hours=30), summer)),)))
    assert instants_agree(sel(clock_cutoff=fall_back + timedelta(days=3)))
    assert instants_agree(replace(sel(clock_cutoff=fall_back), tz=ZoneInfo("UTC")))


@given(st.integers(-3 * 86400, 3 * 86400), st.integers(-3 * 86400, 3 * 86400),
       st.sampled_from([datetime(2024, 7, 1, 12, 0), datetime(2024, 10, 27, 2, 30),
                        datetime(2024, 3, 31, 2, 30), datetime(2024, 1, 1, 0, 0)]),
       st.sampled_from(["Europe/Berlin", "UTC", "America/New_York", "Australia/Lord_Howe"]))
def test_micros_answer_like_wall_clock_times_wherever_instants_agree(
        offset: int, other: int, wall: datetime, zone: str) -> None:
    tz = ZoneInfo(zone)
    cutoff = wall.replace(tzinfo=tz)
    s = replace(sel(clock_cutoff=cutoff, exclude=(sel(
        clock_cutoff=None, clock_within=(cutoff - timedelta(hours=5),
                                         cutoff - timedelta(hours=1))),)), tz=tz)
    s = replace(s, exclude=tuple(replace(o, tz=tz) for o in s.exclude))
    if not instants_agree(s):
        return
    for delta in (offset, other):
        us = micros_of(cutoff) + delta * 1_000_000
        as_time = datetime.fromtimestamp(us / 1e6, tz)
        assert Covers(s, micros=True).same(("1", us, False)) is Covers(s).same(
            Seen("1", as_time)), (zone, wall, delta)


def micros_of(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC"))) // timedelta(microseconds=1)


def test_cutoff_only_is_the_plain_time_selection() -> None:
    assert Covers(sel()).cutoff_only
    assert not Covers(sel(exclude_subjects=("1",))).cutoff_only
    assert not Covers(sel(clock_cutoff=None, subjects=("1",))).cutoff_only
    assert not Covers(sel(exclude=(sel(clock_cutoff=None, clock_after=T),))).cutoff_only
