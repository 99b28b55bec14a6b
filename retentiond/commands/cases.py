"""``request erase|list`` and ``hold add|release|list``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from retentiond import output
from retentiond.adapters.base import blockers
from retentiond.app import App
from retentiond.audit.ledger import Refs
from retentiond.errors import UsageError
from retentiond.planner import has_subject
from retentiond.state import cases
from retentiond.timeutil import add, parse_duration


def _refs(app: App) -> Refs:
    return Refs(app.policy.secret_bytes)


def request_erase(app: App, subject: str, kind: str, ref: str | None, due: str | None) -> int:
    policy = app.policy
    kinds = sorted({r.subject_kind for r in policy.rules if has_subject(r)})
    if kind not in kinds:
        raise UsageError(f"--kind {kind}: no rule has subject_kind {kind!r} "
                         f"(kinds: {', '.join(kinds) or 'none'})")
    try:
        period = parse_duration(due) if due else policy.requests.erasure_due
    except ValueError as exc:
        raise UsageError(f"--due: {exc}") from None
    due_at = add(datetime.now(UTC).astimezone(policy.tz), period).astimezone(UTC)
    request_id = cases.add_request(app.state, _refs(app), subject=subject, kind=kind, ref=ref,
                                   due_at=due_at)
    if app.json:
        output.emit_json({"id": request_id, "subject_kind": kind, "status": "open",
                          "due_at": due_at.isoformat()})
    else:
        print(request_id)
    return 0


def request_list(app: App, open_only: bool, overdue_only: bool) -> int:
    rows = cases.list_requests(app.state, open_only=open_only, overdue_only=overdue_only)
    if app.json:
        output.emit_json(rows)
        return 0
    output.table("Erasure requests", ("id", "kind", "status", "due", "completed", "outcome"), [
        (r["id"], r["subject_kind"], r["status"], r["due_at"][:16], (r["completed_at"] or "")[:16],
         _outcome(r["outcome"])) for r in rows])
    return 0


def _outcome(outcome: dict[str, dict[str, object]]) -> str:
    parts = []
    for rule, v in sorted(outcome.items()):
        bits = [f"{v.get('disposed', 0)} disposed"]
        if v.get("kept"):
            bits.append(f"{v['kept']} kept ({v.get('legal_basis')})")
        if v.get("held"):
            bits.append("held")
        if v.get("blocked"):
            by = cast(list[dict[str, str]], v.get("blocked_by") or [])
            keys = ", ".join(f"{b['constraint']} on {b['table']}" for b in by)
            bits.append(f"{v['blocked']} blocked by {blockers(by)} ({keys})")
        if v.get("failed"):
            bits.append("failed")
        parts.append(f"{rule}: {', '.join(bits)}")
    return "; ".join(parts)


def hold_add(app: App, *, subject: str | None, kind: str, rule: str | None, store: str | None,
             reason: str, ref: str | None) -> int:
    scopes = [s for s in (subject, rule, store) if s is not None]
    if len(scopes) != 1:
        raise UsageError("hold add: give exactly one of --subject, --rule or --store")
    if not reason.strip():
        raise UsageError("hold add: --reason must not be empty")
    policy = app.policy
    if rule is not None and rule not in {r.id for r in policy.rules}:
        raise UsageError(f"--rule {rule}: no such rule")
    if store is not None and store not in policy.stores:
        raise UsageError(f"--store {store}: no such store")
    kinds = sorted({r.subject_kind for r in policy.rules if has_subject(r)})
    if subject is not None and kind not in kinds:
        raise UsageError(f"--kind {kind}: no rule has subject_kind {kind!r} "
                         f"(kinds: {', '.join(kinds) or 'none'})")
    scope = "subject" if subject is not None else "rule" if rule is not None else "store"
    hold_id = cases.add_hold(app.state, _refs(app), scope=scope, reason=reason, ref=ref,
                             subject=subject, kind=kind, rule=rule, store=store)
    if app.json:
        output.emit_json({"id": hold_id, "scope": scope, "status": "active"})
    else:
        print(hold_id)
    return 0


def hold_release(app: App, hold_id: str, reason: str) -> int:
    if not reason.strip():
        raise UsageError("hold release: --reason must not be empty")
    cases.release_hold(app.state, hold_id, reason)
    if app.json:
        output.emit_json({"id": hold_id, "status": "released"})
    else:
        print(f"hold {hold_id} released")
    return 0


def hold_list(app: App, active_only: bool) -> int:
    rows = cases.list_holds(app.state, active_only=active_only)
    if app.json:
        output.emit_json(rows)
        return 0
    output.table("Legal holds", ("id", "status", "scope", "on", "reason", "ref", "since"), [
        (r["id"], r["status"], r["scope"],
         r["rule"] or r["store"] or f"{r['subject_kind']} {r['subject_ref'][:12]}…",
         r["reason"], r["ref"] or "", r["created_at"][:16]) for r in rows])
    return 0
