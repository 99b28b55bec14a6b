"""``explain --rule ID --key KEY``: why one record is or is not due, rule by rule."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from retentiond import output, planner
from retentiond.adapters.base import Selection, blocker
from retentiond.app import App
from retentiond.audit.ledger import Refs
from retentiond.errors import UsageError, shown
from retentiond.state.cases import open_requests, read_holds

if TYPE_CHECKING:
    from retentiond.policy.model import Rule

_RANK = {"held": 0, "kept": 1, "erase": 1, "due": 2}


def explain(app: App, rule_id: str, key: str) -> int:
    policy = app.policy
    try:
        rule = policy.rule(rule_id)
    except KeyError:
        raise UsageError(f"--rule {rule_id}: no such rule") from None
    rules = [rule, *planner.overlapping(rule, policy.rules)]
    value = parse_key(rule, key)
    try:
        facts = app.adapter(rule.store).facts(rules, value)
    except OverflowError:  # a number too large for the driver (SQLite: 64 bits)
        raise UsageError(f"--key {shown(key)}: does not fit the key column "
                         f"{_columns(rule)} of {rule.store}.{rule.target}") from None
    except ValueError as exc:  # a composite key's component that its column cannot take
        raise UsageError(f"--key {shown(key)}: {exc}") from None
    if facts is None:
        shown_value = f"({', '.join(value)})" if rule.composite_key else key
        if rule.key is None:  # files and objects: the key is the path itself
            raise UsageError(f"--key {shown(key)}: no such record in "
                             f"{rule.store}.{rule.target}")
        raise UsageError(f"--key {key}: no record with {_columns(rule)} = {shown_value} in "
                         f"{rule.store}.{rule.target}")
    state = app.state
    sit = planner.Situation(datetime.now(UTC), policy.tz, policy.rules, read_holds(state),
                            tuple(open_requests(state)))
    verdicts = [planner.decide(r, facts, sit) for r in rules]
    doc = _document(app, rule, key, facts=facts, sit=sit, verdicts=verdicts)
    _foreign_keys(app, doc, value if facts.key is None else facts.key, sit)
    if app.json:
        output.emit_json(doc)
    else:
        _print(doc)
    return 0


def _columns(rule: Rule) -> str:
    return f"({', '.join(rule.key_columns)})" if rule.composite_key else str(rule.key)


def parse_key(rule: Rule, text: str) -> Any:
    """``--key`` as the adapter's ``facts`` takes it: the text itself for a one-column key; for
    a composite key a tuple of texts in key-column order, from ``col=value,col=value`` (each
    column once, any order) or a JSON array in key-column order (``["2024-01-03T10:00:00",
    17]``). The adapter coerces each component to its column's type."""
    if not rule.composite_key:
        return text
    columns = rule.key_columns
    usage = (f"rule {rule.id} has the composite key ({', '.join(columns)}); give "
             f"{','.join(f'{c}=VALUE' for c in columns)} or a JSON array of {len(columns)} "
             "values in that order")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            raise UsageError(f"--key {shown(text)}: not a JSON array; {usage}") from None
        if (not isinstance(items, list) or len(items) != len(columns) or not all(
                isinstance(v, str | int | float) and not isinstance(v, bool) for v in items)):
            raise UsageError(f"--key {shown(text)}: {usage}")
        return tuple(str(v) for v in items)
    parts: dict[str, str] = {}
    for part in text.split(","):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in columns or name in parts:
            raise UsageError(f"--key {shown(text)}: {usage}")
        parts[name] = value.strip()
    if set(parts) != set(columns):
        missing = ", ".join(c for c in columns if c not in parts)
        raise UsageError(f"--key {shown(text)}: missing {missing}; {usage}")
    return tuple(parts[c] for c in columns)


def _winner(verdicts: list[planner.Verdict]) -> planner.Verdict | None:
    ranked = [v for v in verdicts if v.outcome in _RANK]
    return min(ranked, key=lambda v: _RANK[v.outcome]) if ranked else None


def _document(app: App, rule: Rule, key: str, *, facts: planner.Facts, sit: planner.Situation,
              verdicts: list[planner.Verdict]) -> dict[str, Any]:
    refs = Refs(app.policy.secret_bytes)
    tz = app.policy.tz  # every time in one zone, with its offset
    subject_ref = (refs.subject(rule.subject_kind, facts.subject)
                   if facts.subject is not None else None)
    win = _winner(verdicts)
    decision = win.outcome if win else "nothing"
    if win is not None and win.outcome == "due":
        decision = "dispose"
    holds = [h for h in (sit.holds.blanket(r) for r in app.policy.rules
                         if r.store == rule.store and r.target == rule.target) if h]
    if facts.subject is not None and (h := sit.holds.subject_ids.get(
            (rule.subject_kind, facts.subject))):
        holds.append(h)
    return {
        "rule": rule.id, "store": rule.store, "target": rule.target, "key": key,
        # The key as read from the store: the reference the ledger holds for the record,
        # whichever form --key gave (2010-01-01T00:00:00 for a stored 2010-01-01 00:00:00).
        "record_ref": refs.record(rule.store, rule.target,
                                  key if facts.key is None else facts.key),
        "subject_ref": subject_ref,
        "as_of": _iso(sit.now, tz),
        "clock": _iso(facts.clocks.get(rule.id), tz),
        "floor_until": _iso(next((v.floor_until for v in verdicts if v.rule == rule.id), None),
                            tz),
        "due_at": _iso(next((v.due_at for v in verdicts if v.rule == rule.id), None), tz),
        "matching_rules": [r for r, ok in facts.matches.items() if ok],
        "holds": sorted(set(holds)),
        "requests": [q.id for q in sit.requests if facts.subject is not None
                     and q.subject == facts.subject and q.subject_kind == rule.subject_kind],
        "decision": decision,
        "action": win.action if win else None,
        "winner": win.rule if win else None,
        "why": win.why if win else "no rule disposes this record now",
        "rules": [{"rule": v.rule, "outcome": v.outcome, "action": v.action,
                   "due_at": _iso(v.due_at, tz), "floor_until": _iso(v.floor_until, tz),
                   "why": v.why,
                   "by": v.by} for v in verdicts],
    }


def _foreign_keys(app: App, doc: dict[str, Any], key: Any, sit: planner.Situation) -> None:
    """``blocked_by``: the foreign keys that keep the store from disposing the record now,
    as a sweep would count it (a RESTRICT / NO ACTION key, or a CASCADE chain down to a
    protected or RESTRICT-referenced row); when there are any, the decision is ``blocked``:
    a sweep leaves the record out and counts it blocked, never attempting it."""
    doc["blocked_by"] = []
    if doc["decision"] not in ("dispose", "erase") or doc["action"] not in ("delete",
                                                                           "isolate"):
        return
    winner = app.policy.rule(doc["winner"])
    sel = Selection(winner, doc["action"], "explain", sit.tz, sit.now, None,
                    guards=planner.cascade_guards(winner, sit))
    by = app.adapter(winner.store).blocking_record(sel, key)
    if by:
        doc["blocked_by"] = by
        doc["decision"] = "blocked"
        doc["why"] = (f"{doc['why']}; but " + ", ".join(
            blocker(b) for b in by)
            + " keeps the store from disposing it: left out and counted blocked")


def _iso(value: datetime | None, tz: ZoneInfo) -> str | None:
    return value.astimezone(tz).isoformat() if value is not None else None


def _print(doc: dict[str, Any]) -> None:
    output.line(f"[bold]{doc['store']}.{doc['target']} {doc['key']}[/bold] under rule "
                f"{doc['rule']}, as of {doc['as_of']}")
    output.line(f"  clock: {doc['clock'] or 'empty'}   floor until: "
                f"{doc['floor_until'] or '-'}   due at: {doc['due_at'] or '-'}")
    output.line(f"  matching rules: {', '.join(doc['matching_rules']) or 'none'}")
    output.line(f"  holds: {', '.join(doc['holds']) or 'none'}   open requests: "
                f"{', '.join(doc['requests']) or 'none'}")
    verdict = doc["decision"] + (f" ({doc['action']})" if doc["action"] else "")
    for b in doc["blocked_by"]:
        output.line(f"  blocked by: {blocker(b)}")
    output.line(f"  decision: [bold]{verdict}[/bold]"
                + (f" by rule {doc['winner']}" if doc["winner"] else "") + f": {doc['why']}")
    output.table("Rules", ("rule", "outcome", "floor until", "due at", "why"), [
        (v["rule"], v["outcome"], v["floor_until"] or "-", v["due_at"] or "-", v["why"])
        for v in doc["rules"]])
