"""Pure decisions: which records of a rule a sweep may dispose at ``now``. No I/O.

SPEC 3.2, for a record R of rule X, the first that applies decides:

1. **Hold**: a hold on R's subject, on X, on X's store (or on another rule of the same table
   that R matches) protects R from everything; R is counted ``held``.
2. **Erasure request**: an open request for R's subject (same ``subject_kind``) disposes R with
   X's ``on_erasure`` action now, ignoring ``keep_for``; ``on_erasure: keep`` (on X, or on another
   matching rule of the same table) keeps R, counted ``kept``.
3. **Time**: R is due when ``now >= clock + dispose_after`` and ``now >= clock + keep_for``,
   unless another matching rule's floor still protects it; among the rules due, the earliest due
   date wins (ties and incomparable dates: the rule listed first).

:func:`plan_rule` expresses this as adapter-neutral :class:`Selection` objects (set-based, for
SQL); :func:`decide` answers the same question for one record (for ``explain`` and the
property tests). Both must agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from retentiond.adapters.base import Filter, Guard, Selection
from retentiond.policy.model import Rule
from retentiond.timeutil import add, due_cutoff, due_gaps, never_longer, subtract


# -- what the planner knows -------------------------------------------------------------------
def subject_source(rule: Rule) -> str | None:
    """Where the rule's records name their data subject: a column (sql ``subject``), an object
    tag (s3 ``subject_tag``) or the ``{subject}`` field of the path pattern (files, s3); None
    when they do not (erasure requests and subject holds then pass the rule by)."""
    if rule.subject:
        return f"column {rule.subject}"
    if rule.subject_tag:
        return f"tag {rule.subject_tag}"
    if rule.path and "{subject}" in rule.path:
        return "path"
    return None


def has_subject(rule: Rule) -> bool:
    return subject_source(rule) is not None


def has_clock(rule: Rule) -> bool:
    """Whether the rule's records carry a clock: a clock column (sql); files and s3 records
    always do (mtime / LastModified, or the ``{clock:...}`` field of the path), without
    ``clock:`` naming it."""
    return bool(rule.clock) or rule.table is None


@dataclass(frozen=True)
class ActiveHolds:
    """The holds in force at one moment."""

    subjects: dict[str, frozenset[str]] = field(default_factory=dict)  # kind -> subject ids
    rules: dict[str, str] = field(default_factory=dict)  # rule id -> hold id
    stores: dict[str, str] = field(default_factory=dict)  # store name -> hold id
    subject_ids: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, s) -> hold

    def subjects_of(self, kind: str) -> frozenset[str]:
        return self.subjects.get(kind, frozenset())

    def blanket(self, rule: Rule) -> str | None:
        """The id of a hold covering the whole rule (on the rule or on its store), if any."""
        return self.rules.get(rule.id) or self.stores.get(rule.store)


@dataclass(frozen=True)
class OpenRequest:
    id: str
    subject_kind: str
    subject: str
    subject_ref: str
    due_at: datetime


@dataclass(frozen=True)
class Situation:
    now: datetime
    tz: ZoneInfo
    rules: tuple[Rule, ...]
    holds: ActiveHolds = field(default_factory=ActiveHolds)
    requests: tuple[OpenRequest, ...] = ()

    @property
    def local_now(self) -> datetime:
        return local(self.now, self.tz)

    def request_subjects(self, rule: Rule) -> frozenset[str]:
        if not has_subject(rule):
            return frozenset()
        return frozenset(q.subject for q in self.requests if q.subject_kind == rule.subject_kind)

    def held_subjects(self, rule: Rule) -> frozenset[str]:
        return self.holds.subjects_of(rule.subject_kind) if has_subject(rule) else frozenset()


def local(now: datetime, tz: ZoneInfo) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(tz)


# -- building blocks --------------------------------------------------------------------------
def clock_cutoff(rule: Rule, now: datetime, tz: ZoneInfo) -> datetime | None:
    """The latest clock value due by time, or None for a rule without ``dispose_after``."""
    if rule.dispose_after is None:
        return None
    at = local(now, tz)
    cutoff = due_cutoff(at, rule.dispose_after)
    if rule.keep_for is not None:
        cutoff = min(cutoff, due_cutoff(at, rule.keep_for))
    return cutoff


def resolve_filters(rule: Rule, now: datetime) -> tuple[Filter, ...]:
    """``match`` with ``older_than``/``newer_than`` resolved (col <= now - d, col > now - d)."""
    out = []
    for column, cond in rule.match.items():
        if cond.op == "older_than":
            out.append(Filter(column, "le", subtract(now, cond.value)))
        elif cond.op == "newer_than":
            out.append(Filter(column, "gt", subtract(now, cond.value)))
        else:
            out.append(Filter(column, cond.op, cond.value))
    return tuple(out)


def overlapping(rule: Rule, rules: tuple[Rule, ...]) -> list[Rule]:
    """The other rules that may select the same records: on sql, the rules on the same table;
    on stores whose rules name records by a pattern (files: ``path``; s3: ``prefix`` and
    ``path``), every other rule of the store, since two patterns written differently
    (``prefix: a/`` and ``prefix: a/, path: "{subject}/*.pdf"``) can name the same object.
    Their floors, holds and earlier due dates then apply record by record: the adapter
    evaluates each excluded selection only on the records its own rule's pattern matches."""
    by_pattern = rule.table is None
    return [r for r in rules if r.id != rule.id and r.store == rule.store
            and (r.target == rule.target or (by_pattern and r.table is None))]


def earlier_due(y: Rule, x: Rule, order: dict[str, int]) -> bool:
    """Does rule ``y`` reach its due date before rule ``x`` for every record both match?
    Comparable only when both use the same clock; otherwise (and on ties) the rule listed
    first wins."""
    if y.dispose_after is None:
        return False
    if x.dispose_after is None:
        return True
    if y.clock == x.clock:
        y_first = never_longer(y.dispose_after, x.dispose_after)
        x_first = never_longer(x.dispose_after, y.dispose_after)
        if y_first != x_first:
            return y_first
    return order[y.id] < order[x.id]


def _match(rule: Rule, sit: Situation, **kw: Any) -> Selection:
    return _match_at(rule, sit.local_now, sit.tz, **kw)


def _match_at(rule: Rule, at: datetime, tz: ZoneInfo, **kw: Any) -> Selection:
    return Selection(rule=rule, action="match", reason="", tz=tz, now=at,
                     clock_cutoff=None, filters=resolve_filters(rule, at), **kw)


def guard_holds(rules: tuple[Rule, ...], holds: ActiveHolds, at: datetime, tz: ZoneInfo
                ) -> tuple[Selection, ...]:
    """What the holds in force protect of ``rules`` (all on one table): everything a rule
    under a hold matches, and the held subjects of the others."""
    out: list[Selection] = []
    for y in rules:
        if holds.blanket(y):
            out.append(_match_at(y, at, tz, protects=True))
        elif has_subject(y) and (held := holds.subjects_of(y.subject_kind)):
            out.append(_match_at(y, at, tz, subjects=tuple(sorted(held)), protects=True))
    return tuple(out)


def cascade_guards(rule: Rule, sit: Situation) -> tuple[Guard, ...]:
    """Per other table of ``rule``'s store with rules, the rows those rules protect (holds,
    floors, on_erasure: keep). A disposal of ``rule`` that would delete or rewrite such a row
    through a CASCADE / SET NULL foreign key is blocked (retention beats deletion on the
    referencing table too). Conservative: a NULL or unparseable clock is inside the floor of a
    rule with ``keep_for``, and a rule with ``keep_for`` but no clock protects all it
    matches."""
    at = sit.local_now
    tables: dict[str, list[Rule]] = {}
    for y in sit.rules:
        if y.store == rule.store and y.target != rule.target:
            tables.setdefault(y.target, []).append(y)
    out: list[Guard] = []
    for target, ys in tables.items():
        floors: list[Selection] = []
        keeps: list[Selection] = []
        for y in ys:
            if y.keep_for is not None and not has_clock(y):
                floors.append(_match(y, sit, protects=True))
            elif y.keep_for is not None:
                floors.append(_match(y, sit, clock_after=due_cutoff(at, y.keep_for),
                                     null_clock=True, protects=True))
                floors += [_match(y, sit, clock_within=gap, protects=True)
                           for gap in due_gaps(at, y.keep_for)]
            if y.on_erasure == "keep" and (asked := sit.request_subjects(y)):
                keeps.append(_match(y, sit, subjects=tuple(sorted(asked)), protects=True))
        out.append(Guard(target, tuple(ys), tuple(floors), tuple(keeps),
                         guard_holds(tuple(ys), sit.holds, at, sit.tz)))
    return tuple(out)


def _time_exclusions(rule: Rule, sit: Situation, *, holds: bool = True
                     ) -> tuple[Selection, ...]:
    """What other rules of the table keep from ``rule``'s time selection: their floors,
    earlier due dates and (``holds``) their blanket holds."""
    order = {r.id: i for i, r in enumerate(sit.rules)}
    out: list[Selection] = []
    for y in overlapping(rule, sit.rules):
        if holds and sit.holds.blanket(y):
            out.append(_match(y, sit, protects=True))
        elif y.keep_for is not None and has_clock(y):
            out.append(_match(y, sit, clock_after=due_cutoff(sit.local_now, y.keep_for),
                              protects=True))
            out += [_match(y, sit, clock_within=gap, protects=True)
                    for gap in due_gaps(sit.local_now, y.keep_for)]
        if y.dispose_after is not None and has_clock(y) and earlier_due(y, rule, order):
            ysel = time_selection(y, sit.now, sit.tz)
            if ysel is not None:
                out.append(ysel)
    return tuple(out)


def _erasure_exclusions(rule: Rule, sit: Situation) -> tuple[Selection, ...]:
    """What other rules of the table keep from ``rule``'s erasures: a legal obligation, a hold
    on them, or an earlier rule that removes the record for the same request first. The first
    two protect (a record whose match value does not parse counts as theirs); the earlier rule
    takes only the records it does match, the others stay this rule's to erase."""
    order = {r.id: i for i, r in enumerate(sit.rules)}
    out: list[Selection] = []
    for y in overlapping(rule, sit.rules):
        if y.on_erasure == "keep" or sit.holds.blanket(y):
            out.append(_match(y, sit, protects=True))
        elif (has_subject(y) and subject_source(y) == subject_source(rule)
              and y.subject_kind == rule.subject_kind
              and y.erasure_action in ("delete", "isolate") and order[y.id] < order[rule.id]):
            out.append(_match(y, sit))
    return tuple(out)


def _held_erasure_exclusions(rule: Rule, sit: Situation) -> tuple[Selection, ...]:
    """What a hold on the whole of ``rule`` protects of a requested subject is everything the
    rule matches: the hold beats other rules' ``on_erasure: keep`` and earlier erasures. Only
    records an earlier held rule of the table already counts are left out (counted once)."""
    order = {r.id: i for i, r in enumerate(sit.rules)}
    return tuple(_match(y, sit) for y in overlapping(rule, sit.rules)
                 if sit.holds.blanket(y) and order[y.id] < order[rule.id])


def time_selection(rule: Rule, now: datetime, tz: ZoneInfo) -> Selection | None:
    """What the rule disposes by time, ignoring holds, requests and other rules."""
    cutoff = clock_cutoff(rule, now, tz)
    if cutoff is None:
        return None
    at = local(now, tz)
    filters = resolve_filters(rule, at)
    # Month-end clamping leaves clocks before the cutoff that are not due yet: exclude them.
    durations = [d for d in (rule.dispose_after, rule.keep_for) if d is not None]
    gaps = tuple(Selection(rule=rule, action="match", reason="", tz=tz, now=at,
                           clock_cutoff=None, filters=filters, clock_within=gap)
                 for d in durations for gap in due_gaps(at, d))
    return Selection(rule=rule, action=rule.action, reason="schedule", tz=tz, now=at,
                     clock_cutoff=cutoff, filters=filters, exclude=gaps)


def fk_order(rules: list[Rule], referencing: dict[str, frozenset[str]],
             schemas: Mapping[str, str | None] | None = None) -> list[Rule]:
    """Rules in foreign-key order: a rule waits for the rules (of its store) on the targets
    that refer to its target (``referencing[rule.id]``), so rows that block or cascade from
    its records are disposed by their own rules first. Otherwise, and within a cycle, the
    order of the policy file. ``schemas``: per store, its default schema; a bare name is
    in it on both sides (``public.items`` is ``items``)."""
    left = list(rules)
    out: list[Rule] = []
    defaults = schemas or {}

    def norm(store: str, name: str) -> str:
        default = defaults.get(store)
        return f"{default}.{name}" if default and "." not in name else name

    def waits(r: Rule) -> bool:
        refs = {norm(r.store, t) for t in referencing.get(r.id, frozenset())}
        mine = norm(r.store, r.target)
        return any(o.store == r.store and norm(o.store, o.target) != mine
                   and norm(o.store, o.target) in refs for o in left if o is not r)

    while left:
        nxt = next((r for r in left if not waits(r)), left[0])  # left[0]: a cycle
        out.append(nxt)
        left.remove(nxt)
    return out


# -- the plan of one rule ---------------------------------------------------------------------
@dataclass(frozen=True)
class RulePlan:
    rule: Rule
    hold: str | None  # a hold covering the whole rule
    time: Selection | None  # disposes by time
    erasures: tuple[tuple[OpenRequest, Selection], ...]  # disposes (or keeps) per request
    held: tuple[Selection, ...]  # what holds protect, to count
    held_requests: tuple[OpenRequest, ...]  # requests a subject hold blocks in this rule
    # Under a hold on the whole rule: each request with what the hold protects of its subject.
    # The hold blocks the request only where that selection counts at least one record (the
    # caller counts it, read-only); a subject without records here is not blocked by it.
    held_erasures: tuple[tuple[OpenRequest, Selection], ...] = ()


def plan_rule(rule: Rule, sit: Situation, *, time_based: bool = True) -> RulePlan:
    base = time_selection(rule, sit.now, sit.tz) if time_based else None
    requests = [q for q in sit.requests
                if has_subject(rule) and q.subject_kind == rule.subject_kind]
    held_subjects = sit.held_subjects(rule)
    asked = sit.request_subjects(rule)
    erasure_excl = _erasure_exclusions(rule, sit)
    held_base = None
    if base is not None:
        # Under a hold on this rule, records another held rule also covers are held too.
        held_base = replace(base, exclude=base.exclude + _time_exclusions(rule, sit,
                                                                          holds=False))
        base = replace(base, exclude=base.exclude + _time_exclusions(rule, sit))
    blanket = sit.holds.blanket(rule)
    if blanket:
        held = ((replace(held_base, exclude_subjects=tuple(sorted(asked))),)
                if held_base is not None else ())
        held_excl = _held_erasure_exclusions(rule, sit)
        return RulePlan(rule, blanket, None, (), held, (),
                        tuple((q, _erasure(rule, q, sit, held_excl)) for q in requests))
    guards = cascade_guards(rule, sit)
    erasures = tuple((q, _erasure(rule, q, sit, erasure_excl, guards)) for q in requests)
    held_list: list[Selection] = []
    if base is not None and held_subjects - asked:
        held_list.append(replace(base, subjects=tuple(sorted(held_subjects - asked))))
    blocked = tuple(q for q in requests if q.subject in held_subjects)
    held_list += [s for q, s in erasures if q in blocked]
    time = (replace(base, exclude_subjects=tuple(sorted(held_subjects | asked)),
                    guards=guards)
            if base is not None else None)
    return RulePlan(rule, None, time, tuple((q, s) for q, s in erasures if q not in blocked),
                    tuple(held_list), blocked)


def _erasure(rule: Rule, q: OpenRequest, sit: Situation,
             exclude: tuple[Selection, ...], guards: tuple[Guard, ...] = ()) -> Selection:
    action = rule.erasure_action
    at = sit.local_now
    return Selection(rule=rule, action=action, reason=f"erasure:{q.id}", tz=sit.tz, now=at,
                     clock_cutoff=None, filters=resolve_filters(rule, at), subjects=(q.subject,),
                     subject_ref=q.subject_ref, exclude=exclude, guards=guards,
                     detail={"request_id": q.id})


def reapply_holds(sel: Selection, holds: ActiveHolds) -> Selection | None:
    """A selection brought up to date with the holds in force now (re-read inside every batch).
    None when a hold now covers the whole rule or the request's subject. The holds of its
    cascade guards are brought up to date too."""
    rule = sel.rule
    if sel.guards:
        sel = replace(sel, guards=tuple(
            replace(g, holds=guard_holds(g.rules, holds, sel.now, sel.tz))
            for g in sel.guards))
    if holds.blanket(rule):
        return None
    held = holds.subjects_of(rule.subject_kind) if has_subject(rule) else frozenset()
    if sel.subjects is not None:
        return None if set(sel.subjects) & held else sel
    if not held - set(sel.exclude_subjects):
        return sel
    return replace(sel, exclude_subjects=tuple(sorted(set(sel.exclude_subjects) | held)))


# -- one record, for explain and the property tests -------------------------------------------
@dataclass(frozen=True)
class Facts:
    """One record as every rule of its table sees it. Clocks are aware datetimes (or None).
    ``unreadable_matches``: rules whose ``older_than``/``newer_than`` value does not parse on
    this record; such a rule does not match it (never disposes it) but its floor, a hold on it
    and its ``on_erasure: keep`` still protect it (see ``sqlexpr.filter_expr``)."""

    subject: str | None
    clocks: dict[str, datetime | None]
    matches: dict[str, bool]
    unreadable_matches: frozenset[str] = frozenset()
    marked: dict[str, bool] = field(default_factory=dict)
    bad_clocks: frozenset[str] = frozenset()  # rules whose clock is set but does not parse
    key: Any = None  # the record's key as the store holds it (a tuple for composite keys)


@dataclass(frozen=True)
class Verdict:
    rule: str
    outcome: str  # held, erase, kept, due, protected, superseded, not-due, no-clock, bad-clock,
    #               request-only, not-matched, done
    action: str | None = None
    due_at: datetime | None = None
    floor_until: datetime | None = None
    why: str = ""
    by: str | None = None  # the hold, request or rule responsible

    @property
    def disposes(self) -> bool:
        return self.outcome in ("erase", "due")


def decide(rule: Rule, facts: Facts, sit: Situation) -> Verdict:
    """What a sweep at ``sit.now`` does to this record under ``rule`` (SPEC 3.2)."""
    if not facts.matches.get(rule.id):
        why = ("a match value (older_than/newer_than) does not parse: this rule does not apply"
               if rule.id in facts.unreadable_matches
               else "the record does not match this rule")
        return Verdict(rule.id, "not-matched", why=why)
    if facts.marked.get(rule.id):
        return Verdict(rule.id, "done", why="already anonymised (marker set)")
    # Rules that may protect the record: an unreadable match value counts as matching.
    others = [y for y in overlapping(rule, sit.rules)
              if facts.matches.get(y.id) or y.id in facts.unreadable_matches]
    if verdict := _held(rule, facts, sit, others) or _requested(rule, facts, sit, others):
        return _dated(verdict, rule, facts, sit)  # what time alone would say, for explain
    return _by_time(rule, facts, sit, others)


def _dated(verdict: Verdict, rule: Rule, facts: Facts, sit: Situation) -> Verdict:
    """A held, erased or kept record's floor and due date, as :func:`_by_time` computes them."""
    clock = facts.clocks.get(rule.id)
    if clock is None:
        return verdict
    clock = clock.astimezone(sit.tz)
    floor = add(clock, rule.keep_for) if rule.keep_for is not None else None
    due_at = add(clock, rule.dispose_after) if rule.dispose_after is not None else None
    if due_at is not None and floor is not None:
        due_at = max(due_at, floor)
    return replace(verdict, due_at=due_at, floor_until=floor)


def _held(rule: Rule, facts: Facts, sit: Situation, others: list[Rule]) -> Verdict | None:
    hold = sit.holds.blanket(rule)
    if hold is None and has_subject(rule) and facts.subject is not None:
        hold = sit.holds.subject_ids.get((rule.subject_kind, facts.subject))
    if hold is None:
        hold = next((h for y in others if (h := sit.holds.blanket(y))), None)
    if hold is None:
        return None
    return Verdict(rule.id, "held", why="a legal hold covers this record", by=hold)


def _requested(rule: Rule, facts: Facts, sit: Situation, others: list[Rule]) -> Verdict | None:
    if not has_subject(rule) or facts.subject is None:
        return None
    q = next((q for q in sit.requests if q.subject_kind == rule.subject_kind
              and q.subject == facts.subject), None)
    if q is None:
        return None
    keeper = rule if rule.on_erasure == "keep" else next(
        (y for y in others if y.on_erasure == "keep"), None)
    if keeper is not None:
        return Verdict(rule.id, "kept", why=f"legal obligation: {keeper.legal_basis}",
                       by=keeper.id if keeper is not rule else q.id)
    return Verdict(rule.id, "erase", action=rule.erasure_action,
                   why="an open erasure request names this subject", by=q.id)


def _by_time(rule: Rule, facts: Facts, sit: Situation, others: list[Rule]) -> Verdict:
    clock = facts.clocks.get(rule.id)
    if rule.dispose_after is None:
        return Verdict(rule.id, "request-only", why="this rule disposes only on request")
    if clock is None:
        bad = rule.id in facts.bad_clocks
        return Verdict(rule.id, "bad-clock" if bad else "no-clock",
                       why=f"the clock {'does not parse' if bad else 'is empty'}: never due by "
                       "time")
    now = sit.local_now
    clock = clock.astimezone(sit.tz)
    due_at = add(clock, rule.dispose_after)
    floor = add(clock, rule.keep_for) if rule.keep_for is not None else None
    due_at = max(due_at, floor) if floor is not None else due_at
    if now < due_at:
        return Verdict(rule.id, "not-due", due_at=due_at, floor_until=floor,
                       why="not yet due")
    order = {r.id: i for i, r in enumerate(sit.rules)}
    for y in others:
        yclock = facts.clocks.get(y.id)
        if y.keep_for is not None and y.id in facts.bad_clocks:  # unknown floor: it protects
            yclock = now
        if y.keep_for is not None and yclock is not None and now < add(
                yclock.astimezone(sit.tz), y.keep_for):
            return Verdict(rule.id, "protected", due_at=due_at, floor_until=floor, by=y.id,
                           why=f"rule {y.id}'s floor (keep_for {y.keep_for}) still protects it")
    for y in others:
        yclock = facts.clocks.get(y.id)
        if (facts.matches.get(y.id) and y.dispose_after is not None and yclock is not None
                and not facts.marked.get(y.id)
                and now >= add(yclock.astimezone(sit.tz), y.dispose_after)
                and earlier_due(y, rule, order)):
            return Verdict(rule.id, "superseded", due_at=due_at, floor_until=floor, by=y.id,
                           why=f"rule {y.id} is due earlier and disposes it")
    return Verdict(rule.id, "due", action=rule.action, due_at=due_at, floor_until=floor,
                   why="retention has ended")
