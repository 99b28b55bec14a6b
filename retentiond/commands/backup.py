"""``backup restored --store S --taken-at T``: re-apply every disposal made in a store since a
backup was taken, to the records the restore brought back (SPEC 5), audited as ``replay``.

Disposals are matched by record reference: the ledger never held the keys, so the adapter lists
the records present in each target and keeps those whose reference a disposal since T names.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert, update

from retentiond import output, planner
from retentiond.adapters.base import Selection
from retentiond.app import App
from retentiond.audit import checkpoint
from retentiond.audit.ledger import iter_entries
from retentiond.errors import UsageError
from retentiond.executor import Executor, RuleResult
from retentiond.log import get_logger
from retentiond.state import lease
from retentiond.state.cases import open_requests, read_holds
from retentiond.state.models import Run
from retentiond.timeutil import parse_instant

log = get_logger(__name__)
REPLAYED_KINDS = ("dispose", "purge", "replay")
runs_t = cast(Table, Run.__table__)


def restored(app: App, store: str, taken_at: str) -> int:
    policy = app.policy
    if store not in policy.stores:
        raise UsageError(f"--store {store}: no such store (stores: {', '.join(policy.stores)})")
    try:
        since = parse_instant(taken_at, policy.tz)
    except ValueError:
        raise UsageError(f"--taken-at {taken_at!r}: not an ISO 8601 instant") from None
    # A replay disposes records: it holds the store's lease, as `run` does.
    with lease.one_shot(app.state, lease.Timings.from_env(os.environ), wait=0,
                        names=[lease.store_lease(store)]) as held:
        groups = _disposals_since(app, store, since.isoformat(timespec="microseconds"))
        adapter = app.adapter(store)  # unreachable: exit 3 before a run row is written
        run_id = uuid.uuid4().hex
        _start_run(app, run_id, since, held.holder)
        # Stops after the batch in flight if the lease cannot be renewed.
        executor = Executor(policy, app.state, {store: adapter}, run_id,
                            should_stop=lambda: not held.held())
        # What other tables' rules protect (holds, floors, on_erasure: keep), read once: a
        # record whose disposal would CASCADE into such a row stays, on replay as in a sweep
        # (the executor brings the holds up to date before every batch).
        now = datetime.now(UTC).astimezone(app.policy.tz)
        sit = planner.Situation(now, app.policy.tz, app.policy.rules, read_holds(app.state),
                                tuple(open_requests(app.state)))
        replayed = []
        for (rule_id, action), refs in sorted(groups.items()):
            replayed.append(_replay(app, executor, sit, rule_id=rule_id, action=action,
                                    refs=refs, since=since))
            if executor.stopped:
                break
    results = [r for r in replayed if r is not None]
    checkpoint.append_to_file(policy.checkpoints,
                              checkpoint.write(app.state, run_id, policy.signing_private_key))
    doc = {"run_id": run_id, "store": store, "taken_at": since.isoformat(),
           "reapplied": [{"rule": r.rule, "action": r.action, "count": r.done, "held": r.held}
                         for r in results],
           "total": sum(r.done for r in results), "stopped": executor.stopped}
    _finish_run(app, run_id, doc, "interrupted" if executor.stopped else "ok")
    if app.json:
        output.emit_json(doc)
    else:
        output.table(f"Re-applied in store {store} since {since.isoformat(timespec='seconds')}",
                     ("rule", "action", "re-applied", "held"),
                     [(r.rule, r.action, r.done, r.held) for r in results], numeric_from=2)
        verdict = ("stopped early (the store's lease was lost; run it again)"
                   if executor.stopped else "complete")
        output.line(f"replay {verdict}: {doc['total']} records disposed again")
    return 1 if executor.stopped else 0


def _disposals_since(app: App, store: str, since: str) -> dict[tuple[str, str], set[str]]:
    groups: dict[tuple[str, str], set[str]] = {}
    for entry in iter_entries(app.state, since=since):
        if entry["store"] == store and entry["kind"] in REPLAYED_KINDS and entry["rule"]:
            key = (entry["rule"], entry["action"])
            groups.setdefault(key, set()).update(entry["record_refs"])
    return groups


def _replay(app: App, executor: Executor, sit: planner.Situation, *, rule_id: str,
            action: str, refs: set[str], since: datetime) -> RuleResult | None:
    try:
        rule = app.policy.rule(rule_id)
    except KeyError:
        log.warning("replay skipped: rule no longer in the policy", rule=rule_id,
                    records=len(refs))
        return None
    adapter = executor.adapters[rule.store]
    keys = adapter.present(rule, action, refs, executor.refs.record_fn(rule.store, rule.target))
    result = RuleResult(rule.id, rule.store, rule.target, action)
    sel = Selection(rule=rule, action=action, reason="replay", tz=app.policy.tz, now=sit.now,
                    clock_cutoff=None, unconditional=True,
                    detail={"taken_at": since.isoformat()},
                    guards=planner.cascade_guards(rule, sit))
    executor.stopped_by_hold = False
    executor.apply(sel, keys, result)
    if executor.stopped_by_hold:
        result.held = len(keys) - result.done
    log.info("replayed", rule=rule.id, action=action, reappeared=len(keys), done=result.done,
             held=result.held)
    return result


def _start_run(app: App, run_id: str, since: datetime, holder: str) -> None:
    with app.state.begin() as conn:
        conn.execute(insert(runs_t).values(
            id=run_id, started_at=datetime.now(UTC), as_of=since, dry_run=False,
            status="running", policy_digest=app.policy.digest, holder=holder))


def _finish_run(app: App, run_id: str, doc: dict[str, Any], status: str) -> None:
    with app.state.begin() as conn:
        conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(
            finished_at=datetime.now(UTC), status=status, summary=json.dumps(doc)))
