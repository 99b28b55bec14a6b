"""``status``: the last and next sweep, open and overdue requests, active holds, the ledger
head and the store leases, read from the state database and the policy (no daemon needed)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.engine import Engine

from retentiond import output
from retentiond.app import App
from retentiond.audit import ledger
from retentiond.audit.problems import rule_problems
from retentiond.state import replicas
from retentiond.state.cases import list_holds, list_requests
from retentiond.state.models import Run

runs_t = cast(Table, Run.__table__)
TOTALS = ("due", "held", "kept", "done", "failed")


def status(app: App) -> int:
    doc = collect(app)
    if app.json:
        output.emit_json(doc)
    else:
        _show(doc)
    return 0


def collect(app: App) -> dict[str, Any]:
    from retentiond.daemon import cron

    policy, engine = app.policy, app.state
    requests = list_requests(engine, open_only=True)
    nxt = cron(policy).get_next_fire_time(None, datetime.now(UTC).astimezone(policy.tz))
    with engine.connect() as conn:
        seq, head_hash = ledger.head(conn)
    return {
        "last_sweep": last_sweep(engine),
        "next_sweep": nxt.isoformat() if nxt is not None else None,
        "schedule": policy.schedule,
        "timezone": policy.timezone,
        "requests": {"open": len(requests), "overdue": sum(1 for r in requests if r["overdue"]),
                     "overdue_ids": [r["id"] for r in requests if r["overdue"]]},
        "holds": {"active": len(list_holds(engine, active_only=True))},
        "ledger": {"seq": seq, "hash": head_hash},
        **leases(engine, policy.stores),
    }


def leases(engine: Engine, stores: Iterable[str]) -> dict[str, Any]:
    """``leases``: who holds each store's lease (None: free) and the live ``serve`` replicas'
    heartbeats; ``lease``: the first store lease held (as before per-store leases, when one
    holder swept everything), None when no store is held."""
    doc = replicas.read_all(engine, stores)
    held = [v for v in doc["stores"].values() if v is not None]
    return {"lease": held[0] if held else None, "leases": doc}


def last_sweep(engine: Engine) -> dict[str, Any] | None:
    """The latest real (not dry) run: a scheduled sweep or a request pass."""
    q = (select(runs_t).where(runs_t.c.dry_run.is_(False))
         .order_by(runs_t.c.started_at.desc()).limit(1))
    with engine.connect() as conn:
        row = conn.execute(q).first()
    if row is None:
        return None
    summary = json.loads(row.summary) if row.summary else {}
    return {"run_id": row.id, "started_at": row.started_at.isoformat(),
            "finished_at": row.finished_at.isoformat() if row.finished_at else None,
            "status": row.status,
            "totals": summary.get("totals", dict.fromkeys(TOTALS, 0)),
            "problems": rule_problems(summary)}


def _show(doc: dict[str, Any]) -> None:
    last = doc["last_sweep"]
    if last is None:
        output.line("last sweep: none yet")
    else:
        t = last["totals"]
        output.line(f"last sweep: {last['run_id']} {last['status']}, started "
                    f"{last['started_at'][:19]}, finished {(last['finished_at'] or '-')[:19]}: "
                    + ", ".join(f"{t[k]} {k}" for k in TOTALS))
        for p in last["problems"]:
            output.line(f"  rule {p['rule']}: {p['failed']} failed, {p['blocked']} blocked"
                        + "".join(f", {b.get('count')} by {b.get('constraint')} "
                                  f"({b.get('table')})" for b in p["blocked_by"])
                        + (f": {p['error']}" if p["error"] else ""))
    output.line(f"next sweep: {doc['next_sweep'] or 'never'} "
                f"(schedule {doc['schedule']!r}, {doc['timezone']})")
    req = doc["requests"]
    overdue = f" ({', '.join(req['overdue_ids'])})" if req["overdue_ids"] else ""
    output.line(f"requests: {req['open']} open, {req['overdue']} overdue{overdue}")
    output.line(f"holds: {doc['holds']['active']} active")
    output.line(f"ledger head: seq {doc['ledger']['seq']}, hash {doc['ledger']['hash']}")
    stores = doc["leases"]["stores"]
    if not any(stores.values()):
        output.line("lease: free (no daemon is sweeping)")
    for store, held in stores.items():
        output.line(_lease_line(store, held))
    if doc["leases"]["replicas"]:
        output.line(f"replicas: {', '.join(doc['leases']['replicas'])}")


def _lease_line(store: str, held: dict[str, Any] | None) -> str:
    if held is None:
        return f"lease store:{store}: free"
    until = held["expires_at"] or ""
    stale = until < datetime.now(UTC).isoformat()
    return (f"lease store:{store}: held by {held['holder']} until {until[:19]}"
            + (" (expired: its holder stopped renewing)" if stale else ""))
