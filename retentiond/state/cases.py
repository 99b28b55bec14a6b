"""Erasure requests and legal holds in the state database, and their ledger entries.

Both are written together with their ledger entry in one transaction. The ledger names the
subject only by reference; reasons and external references stay in the state database.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Connection, Engine

from retentiond.audit import ledger
from retentiond.errors import UsageError
from retentiond.planner import ActiveHolds, OpenRequest
from retentiond.state.models import Hold, Request

requests_t = cast(Table, Request.__table__)
holds_t = cast(Table, Hold.__table__)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


# -- holds ------------------------------------------------------------------------------------
def active_holds(conn: Connection) -> ActiveHolds:
    rows = conn.execute(select(holds_t).where(holds_t.c.released_at.is_(None))).all()
    subject_ids = {(r.subject_kind, r.subject): r.id for r in rows if r.scope == "subject"}
    subjects: dict[str, set[str]] = {}
    for kind, subject in subject_ids:
        subjects.setdefault(kind, set()).add(subject)
    return ActiveHolds(subjects={k: frozenset(v) for k, v in subjects.items()},
                       rules={r.rule: r.id for r in rows if r.scope == "rule"},
                       stores={r.store: r.id for r in rows if r.scope == "store"},
                       subject_ids=subject_ids)


def read_holds(engine: Engine) -> ActiveHolds:
    with engine.connect() as conn:
        return active_holds(conn)


def add_hold(engine: Engine, refs: ledger.Refs, *, scope: str, reason: str, ref: str | None,
             subject: str | None = None, kind: str | None = None, rule: str | None = None,
             store: str | None = None) -> str:
    hold_id = new_id()
    subject_ref = refs.subject(kind or "user", subject) if subject is not None else None
    values = {"id": hold_id, "scope": scope, "subject_kind": kind if subject is not None else None,
              "subject": subject, "subject_ref": subject_ref, "rule": rule, "store": store,
              "reason": reason, "ref": ref, "created_at": datetime.now(UTC)}
    draft = ledger.Draft(kind="hold", rule=rule, store=store, reason="hold placed",
                         subject_ref=subject_ref, detail={"hold_id": hold_id, "scope": scope})
    with engine.begin() as conn:
        conn.execute(insert(holds_t).values(**values))
        ledger.append(conn, [draft])
    return hold_id


def release_hold(engine: Engine, hold_id: str, reason: str) -> None:
    with engine.begin() as conn:
        row = conn.execute(select(holds_t).where(holds_t.c.id == hold_id)).first()
        if row is None:
            raise UsageError(f"hold {hold_id}: no such hold (see `retentiond hold list`)")
        if row.released_at is not None:
            raise UsageError(f"hold {hold_id} was already released at "
                             f"{row.released_at.isoformat(timespec='seconds')}")
        # a released hold keeps only the subject's keyed reference, never its raw id
        conn.execute(update(holds_t).where(holds_t.c.id == hold_id).values(
            released_at=datetime.now(UTC), release_reason=reason, subject=None))
        ledger.append(conn, [ledger.Draft(
            kind="hold", rule=row.rule, store=row.store, reason="hold released",
            subject_ref=row.subject_ref, detail={"hold_id": hold_id, "scope": row.scope})])


def list_holds(engine: Engine, *, active_only: bool = False) -> list[dict[str, Any]]:
    q = select(holds_t).order_by(holds_t.c.created_at)
    if active_only:
        q = q.where(holds_t.c.released_at.is_(None))
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return [{"id": r.id, "scope": r.scope, "subject_kind": r.subject_kind,
             "subject_ref": r.subject_ref, "rule": r.rule, "store": r.store, "reason": r.reason,
             "ref": r.ref, "created_at": _iso(r.created_at), "released_at": _iso(r.released_at),
             "release_reason": r.release_reason,
             "status": "active" if r.released_at is None else "released"} for r in rows]


# -- requests ---------------------------------------------------------------------------------
def add_request(engine: Engine, refs: ledger.Refs, *, subject: str, kind: str,
                ref: str | None, due_at: datetime) -> str:
    request_id = new_id()
    subject_ref = refs.subject(kind, subject)
    with engine.begin() as conn:
        conn.execute(insert(requests_t).values(
            id=request_id, subject_kind=kind, subject=subject, subject_ref=subject_ref, ref=ref,
            created_at=datetime.now(UTC), due_at=due_at, status="open", outcome="{}"))
        ledger.append(conn, [ledger.Draft(
            kind="request", reason="erasure requested", subject_ref=subject_ref,
            detail={"request_id": request_id, "subject_kind": kind,
                    "due_at": due_at.isoformat()})])
    return request_id


def open_requests(engine: Engine) -> list[OpenRequest]:
    with engine.connect() as conn:
        rows = conn.execute(select(requests_t).where(requests_t.c.status == "open")
                            .order_by(requests_t.c.created_at)).all()
    return [OpenRequest(r.id, r.subject_kind, r.subject, r.subject_ref, r.due_at) for r in rows]


def complete_request(engine: Engine, request: OpenRequest, outcome: dict[str, Any],
                     run_id: str) -> str:
    """Close a request with this sweep's outcome merged into what earlier sweeps did
    (:func:`merge_outcome`): ``partial`` if a legal obligation kept any record, else ``done``.
    Forgets the raw subject id and ledgers the whole outcome. Returns the status."""
    with engine.begin() as conn:
        return _close(conn, request, merge_outcome(_stored_outcome(conn, request.id), outcome),
                      run_id)


def settle_served(engine: Engine, request: OpenRequest, outcome: dict[str, Any], run_id: str,
                  rules: list[str]) -> str | None:
    """Merge one sweep's outcome (some of the request's ``rules``) into the stored one and
    close the request when every rule is now served cleanly: each has an entry and none is
    ``held``, ``blocked`` or ``failed``. The request row is locked for the read-merge-write,
    so two replicas finishing at once neither lose an outcome nor close it twice. Returns
    ``done``/``partial`` when it closed it."""
    with engine.begin() as conn:
        # A write first locks the row (PostgreSQL) or the database (SQLite, which would refuse
        # a transaction that read before another process wrote): as the ledger head does.
        conn.execute(update(requests_t).where(requests_t.c.id == request.id).values(
            outcome=requests_t.c.outcome))
        row = conn.execute(select(requests_t.c.status, requests_t.c.outcome).where(
            requests_t.c.id == request.id)).first()
        if row is None or row.status != "open":
            return None
        whole = merge_outcome(_parse(row.outcome), outcome)
        if not all(r in whole and not _unsettled(whole[r]) for r in rules):
            conn.execute(update(requests_t).where(requests_t.c.id == request.id).values(
                outcome=json.dumps(whole, sort_keys=True)))
            return None
        return _close(conn, request, whole, run_id)


def _unsettled(entry: dict[str, Any]) -> bool:
    return bool(entry.get("held") or entry.get("failed") or entry.get("blocked"))


def _close(conn: Connection, request: OpenRequest, whole: dict[str, Any], run_id: str) -> str:
    status = "partial" if any(v.get("kept") for v in whole.values()) else "done"
    conn.execute(update(requests_t).where(requests_t.c.id == request.id).values(
        status=status, completed_at=datetime.now(UTC), subject=None,
        outcome=json.dumps(whole, sort_keys=True)))
    ledger.append(conn, [ledger.Draft(
        kind="request", run_id=run_id, reason=f"erasure {status}",
        subject_ref=request.subject_ref,
        detail={"request_id": request.id, "status": status, "outcome": whole})])
    return status


def record_progress(engine: Engine, request_id: str, outcome: dict[str, Any]) -> None:
    with engine.begin() as conn:
        whole = merge_outcome(_stored_outcome(conn, request_id), outcome)
        conn.execute(update(requests_t).where(requests_t.c.id == request_id).values(
            outcome=json.dumps(whole, sort_keys=True)))


def merge_outcome(stored: dict[str, Any], sweep: dict[str, Any]) -> dict[str, Any]:
    """A request's outcome over every sweep that applied it, per rule: ``disposed`` adds up
    (a disposed record is gone, so no sweep counts it twice); ``kept`` is the largest count
    any sweep saw (kept records stay and every sweep counts them again); ``held``/``failed``
    are this sweep's state, so a hold released since no longer shows. Rules this sweep did
    not reach keep their earlier entry."""
    whole = {rule: dict(v) for rule, v in stored.items() if isinstance(v, dict)}
    for rule, now in sweep.items():
        before = whole.get(rule, {})
        entry = dict(now)
        entry["disposed"] = int(before.get("disposed", 0)) + int(now.get("disposed", 0))
        entry["kept"] = max(int(before.get("kept", 0)), int(now.get("kept", 0)))
        if entry["kept"] and "legal_basis" not in entry and "legal_basis" in before:
            entry["legal_basis"] = before["legal_basis"]
        whole[rule] = entry
    return whole


def _stored_outcome(conn: Connection, request_id: str) -> dict[str, Any]:
    return _parse(conn.execute(select(requests_t.c.outcome).where(
        requests_t.c.id == request_id)).scalar())


def _parse(text: str | None) -> dict[str, Any]:
    try:
        doc = json.loads(text or "{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def request_view(row: Any, now: datetime) -> dict[str, Any]:
    overdue = row.status == "open" and row.due_at <= now
    return {"id": row.id, "subject_kind": row.subject_kind, "subject_ref": row.subject_ref,
            "ref": row.ref, "status": "overdue" if overdue else row.status,
            "created_at": _iso(row.created_at), "due_at": _iso(row.due_at),
            "completed_at": _iso(row.completed_at), "overdue": overdue,
            "outcome": json.loads(row.outcome or "{}")}


def list_requests(engine: Engine, *, open_only: bool = False, overdue_only: bool = False
                  ) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    q = select(requests_t).order_by(requests_t.c.created_at)
    if open_only or overdue_only:
        q = q.where(requests_t.c.status == "open")
    with engine.connect() as conn:
        views = [request_view(r, now) for r in conn.execute(q).all()]
    return [v for v in views if v["overdue"]] if overdue_only else views


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
