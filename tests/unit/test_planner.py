"""Property tests of the precedence ladder (SPEC 3.2) on the pure per-record decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from retentiond.planner import ActiveHolds, Facts, OpenRequest, Situation, decide, plan_rule
from retentiond.policy.model import Rule
from retentiond.timeutil import add, parse_duration

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
TZ = ZoneInfo("UTC")
DURATIONS = ["0d", "1d", "30d", "1mo", "6mo", "1y", "3y", "7y"]
SUBJECTS = ["1", "2", "3"]


def _rule(i: int, keep: str | None, dispose: str | None, on_erasure: str | None,
          clock: str) -> Rule:
    extra = {"legal_basis": "tax law"} if on_erasure == "keep" else {}
    return Rule.model_validate({
        "id": f"r{i}", "store": "app", "table": "t", "key": "id", "subject": "uid",
        "clock": clock, "keep_for": keep, "dispose_after": dispose, "on_erasure": on_erasure,
        **extra})


@st.composite
def rules(draw: st.DrawFn) -> tuple[Rule, ...]:
    out = []
    for i in range(draw(st.integers(1, 3))):
        a, b = sorted(draw(st.lists(st.sampled_from(range(len(DURATIONS))), min_size=2,
                                    max_size=2)))
        keep = draw(st.sampled_from([None, DURATIONS[a]]))
        dispose = draw(st.sampled_from([None, DURATIONS[b], DURATIONS[b]]))
        on_erasure = draw(st.sampled_from([None, "delete", "keep"]))
        clock = draw(st.sampled_from(["created_at", "closed_at"]))
        out.append(_rule(i, keep, dispose, on_erasure, clock))
    return tuple(out)


clock_values = st.one_of(st.none(), st.integers(-4000, 30).map(
    lambda d: NOW + timedelta(days=d, hours=d % 7)))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[tuple[Rule, ...], Facts, Situation]:
    rs = draw(rules())
    created, closed = draw(clock_values), draw(clock_values)
    facts = Facts(
        subject=draw(st.sampled_from([None, *SUBJECTS])),
        clocks={r.id: (created if r.clock == "created_at" else closed) for r in rs},
        matches={r.id: draw(st.booleans()) for r in rs})
    held = draw(st.frozensets(st.sampled_from(SUBJECTS), max_size=2))
    rule_holds = {r.id: f"h-{r.id}" for r in rs if draw(st.integers(0, 9)) == 0}
    holds = ActiveHolds(subjects={"user": held}, rules=rule_holds,
                        subject_ids={("user", s): f"h-{s}" for s in held})
    asked = draw(st.frozensets(st.sampled_from(SUBJECTS), max_size=2))
    requests = tuple(OpenRequest(f"q{s}", "user", s, f"ref{s}", NOW) for s in sorted(asked))
    return rs, facts, Situation(NOW, TZ, rs, holds, requests)


def _held(rule: Rule, facts: Facts, sit: Situation) -> bool:
    matching = [r for r in sit.rules if facts.matches[r.id]]
    return (facts.subject in sit.holds.subjects_of("user")
            or any(sit.holds.blanket(r) for r in matching))


@settings(max_examples=400)
@given(worlds())
def test_a_held_record_is_never_disposed(world: tuple[tuple[Rule, ...], Facts, Situation]) -> None:
    rs, facts, sit = world
    for rule in rs:
        verdict = decide(rule, facts, sit)
        if facts.matches[rule.id] and _held(rule, facts, sit):
            assert verdict.outcome == "held"
            assert not verdict.disposes


@settings(max_examples=400)
@given(worlds())
def test_time_never_disposes_before_any_matching_floor(
        world: tuple[tuple[Rule, ...], Facts, Situation]) -> None:
    rs, facts, sit = world
    for rule in rs:
        verdict = decide(rule, facts, sit)
        if verdict.outcome != "due":
            continue
        for other in rs:
            clock = facts.clocks[other.id]
            if facts.matches[other.id] and other.keep_for is not None and clock is not None:
                assert sit.now >= add(clock, other.keep_for)
        assert sit.now >= add(facts.clocks[rule.id], rule.dispose_after)  # type: ignore[arg-type]  # the clock is not None here


@settings(max_examples=400)
@given(worlds())
def test_an_erasure_request_disposes_all_but_kept_and_held(
        world: tuple[tuple[Rule, ...], Facts, Situation]) -> None:
    rs, facts, sit = world
    asked = {q.subject for q in sit.requests}
    for rule in rs:
        if not facts.matches[rule.id] or facts.subject not in asked:
            continue
        verdict = decide(rule, facts, sit)
        if _held(rule, facts, sit):
            assert verdict.outcome == "held"
        elif any(r.on_erasure == "keep" for r in rs if facts.matches[r.id]):
            assert verdict.outcome == "kept"
        else:
            assert verdict.outcome == "erase"
            assert verdict.action == rule.erasure_action


def test_erasure_ignores_the_floor() -> None:
    rule = _rule(0, "3y", "3y", None, "created_at")
    facts = Facts("1", {"r0": NOW - timedelta(days=1)}, {"r0": True})
    sit = Situation(NOW, TZ, (rule,), requests=(OpenRequest("q1", "user", "1", "x", NOW),))
    assert decide(rule, facts, sit).outcome == "erase"
    assert decide(rule, facts, Situation(NOW, TZ, (rule,))).outcome == "not-due"


def test_floor_of_another_rule_protects_and_earliest_due_wins() -> None:
    short = _rule(0, None, "30d", None, "created_at")
    long_floor = _rule(1, "1y", "1y", None, "created_at")
    clock = NOW - timedelta(days=100)
    both = Facts("1", {"r0": clock, "r1": clock}, {"r0": True, "r1": True})
    sit = Situation(NOW, TZ, (short, long_floor))
    protected = decide(short, both, sit)
    assert (protected.outcome, protected.by) == ("protected", "r1")
    old = Facts("1", {"r0": NOW - timedelta(days=800), "r1": NOW - timedelta(days=800)},
                {"r0": True, "r1": True})
    assert decide(short, old, sit).outcome == "due"
    superseded = decide(long_floor, old, sit)
    assert (superseded.outcome, superseded.by) == ("superseded", "r0")


def test_leap_day_due_date_is_calendar_exact() -> None:
    rule = _rule(0, "1y", "1y", None, "created_at")
    facts = Facts(None, {"r0": datetime(2024, 2, 29, 12, tzinfo=UTC)}, {"r0": True})
    on_time = Situation(datetime(2025, 2, 28, 12, tzinfo=UTC), TZ, (rule,))
    early = Situation(datetime(2025, 2, 28, 11, 59, tzinfo=UTC), TZ, (rule,))
    assert decide(rule, facts, on_time).outcome == "due"
    verdict = decide(rule, facts, early)
    assert verdict.outcome == "not-due"
    assert verdict.due_at == datetime(2025, 2, 28, 12, tzinfo=UTC)


def test_plan_rule_splits_held_requested_and_time() -> None:
    rule = _rule(0, "1y", "1y", "keep", "created_at")
    holds = ActiveHolds(subjects={"user": frozenset({"2"})},
                        subject_ids={("user", "2"): "h2"})
    requests = (OpenRequest("q1", "user", "1", "r1", NOW), OpenRequest("q2", "user", "2", "r2",
                                                                      NOW))
    plan = plan_rule(rule, Situation(NOW, TZ, (rule,), holds, requests))
    assert plan.hold is None
    assert plan.time is not None and plan.time.exclude_subjects == ("1", "2")
    assert [q.id for q, _ in plan.erasures] == ["q1"]
    assert plan.erasures[0][1].action == "keep"
    assert [q.id for q in plan.held_requests] == ["q2"]
    assert [s.subjects for s in plan.held] == [("2",)]
    blanket = plan_rule(rule, Situation(NOW, TZ, (rule,), ActiveHolds(rules={"r0": "h"}),
                                        requests))
    assert blanket.hold == "h" and blanket.time is None and blanket.erasures == ()
    assert parse_duration("1y").months == 12


def test_cascade_guards_carry_the_referencing_tables_protections_and_follow_holds() -> None:
    """A rule's disposing selections carry, per other table of its store with rules, what
    those rules protect; reapply_holds brings the guards' holds up to date."""
    from retentiond.planner import reapply_holds

    rentals = Rule.model_validate({"id": "rentals", "store": "app", "table": "rentals",
                                   "key": "id", "clock": "rented_at", "dispose_after": "1y",
                                   "action": "delete"})
    ledger = Rule.model_validate({**_rule(1, "7y", "10y", "keep", "paid_at").model_dump(
        by_alias=True, exclude_none=True), "id": "ledger", "table": "payments"})
    sit = Situation(NOW, TZ, (rentals, ledger),
                    requests=(OpenRequest("q1", "user", "2", "ref", NOW),))
    time = plan_rule(rentals, sit).time
    assert time is not None
    [guard] = time.guards
    assert guard.table == "payments" and guard.rules == (ledger,)
    assert guard.holds == ()
    assert guard.floors[0].clock_after is not None and guard.floors[0].null_clock
    assert [k.subjects for k in guard.keeps] == [("2",)]
    fresh = reapply_holds(time, ActiveHolds(rules={"ledger": "h1"}))
    assert fresh is not None
    assert [(h.rule.id, h.subjects) for h in fresh.guards[0].holds] == [("ledger", None)]
    fresh = reapply_holds(time, ActiveHolds(subjects={"user": frozenset({"3"})}))
    assert fresh is not None
    assert [h.subjects for h in fresh.guards[0].holds] == [("3",)]
