"""One sweep: plan (read-only counts) and, unless dry, execution through the executor.

``plan`` is this module without the executor: it builds the same selections and counts them
with the adapters' read-only methods, so a dry run can never change a store. A real sweep
counts first (``due``), then disposes erasure requests before time-based disposals, then
settles the requests it served.
"""

from __future__ import annotations

import json
import threading
import traceback
import uuid
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import NoSuchTableError

from retentiond import planner
from retentiond.adapters.base import Adapter, Selection, merge_counts
from retentiond.app import App
from retentiond.audit import checkpoint, ledger
from retentiond.errors import (
    RetentiondError,
    StateUnreachable,
    StoreError,
    StoreUnreachable,
    UsageError,
)
from retentiond.executor import Executor, RuleResult
from retentiond.log import get_logger
from retentiond.policy.model import Rule
from retentiond.requests import RequestTracker
from retentiond.state import faults, runs
from retentiond.state.cases import open_requests, read_holds
from retentiond.state.lease import holder_id
from retentiond.state.models import Pending, Run
from retentiond.storework import RuleFn, StoreWork

log = get_logger(__name__)
runs_t = cast(Table, Run.__table__)
pending_t = cast(Table, Pending.__table__)


@dataclass
class SweepReport:
    run_id: str
    dry_run: bool
    as_of: datetime
    rules: list[RuleResult] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    unreachable: str | None = None  # the first unreachable store's one-line error
    stopped: bool = False
    order: dict[str, list[str]] = field(default_factory=dict)  # store -> rules, when reordered
    time_based: bool = True  # False: a request pass, which says nothing of the due backlog

    @property
    def failed(self) -> bool:
        return any(r.failed or r.error for r in self.rules)

    @property
    def exit_code(self) -> int:
        return 3 if self.unreachable else 1 if self.failed else 0

    def as_json(self) -> dict[str, Any]:
        totals = {k: sum(getattr(r, k) for r in self.rules)
                  for k in ("due", "held", "kept", "done", "failed")}
        return {"run_id": self.run_id, "dry_run": self.dry_run,
                "as_of": self.as_of.isoformat(),
                "rules": [{**r.as_json(), **({"error": r.error} if r.error else {})}
                          for r in self.rules],
                "requests": self.requests, "totals": totals,
                **({} if self.time_based else {"requests_only": True})}


def choose_rules(app: App, rule_ids: Sequence[str]) -> list[Rule]:
    known = {r.id for r in app.policy.rules}
    unknown = [r for r in rule_ids if r not in known]
    if unknown:
        raise UsageError(f"--rule {unknown[0]}: no such rule in {app.config_path} "
                         f"(rules: {', '.join(sorted(known)) or 'none'})")
    return [r for r in app.policy.rules if not rule_ids or r.id in rule_ids]


def sweep(app: App, *, dry_run: bool, rule_ids: Sequence[str] = (),
          as_of: datetime | None = None, should_stop: Callable[[], bool] = lambda: False,
          time_based: bool = True, holder: str | None = None,
          stores: Collection[str] | None = None,
          store_stop: Callable[[str], bool] = lambda _: False) -> SweepReport:
    """One sweep. ``time_based=False`` serves only open erasure requests (the daemon's
    frequent request pass). ``holder`` names this process in the run row (the daemon passes
    its lease holder id); runs left ``running`` by dead processes are marked crashed first.
    ``stores`` limits the sweep to the rules of these stores (a replica sweeps the stores
    whose leases it holds); ``store_stop(store)`` stops one store after its batch in flight
    (its lease was lost), ``should_stop()`` all of them. Stores are swept by up to
    ``policy.workers`` threads (:mod:`retentiond.storework`)."""
    policy = app.policy
    rules = choose_rules(app, rule_ids)
    if stores is not None:
        rules = [r for r in rules if r.store in stores]
    if as_of is not None and not dry_run:
        raise UsageError("--as-of is only for plan (a dry run); a real sweep runs now")
    now = (as_of or datetime.now(UTC)).astimezone(UTC)
    report = SweepReport(run_id=uuid.uuid4().hex, dry_run=dry_run, as_of=now,
                         time_based=time_based)
    state = app.state
    crashed = runs.mark_crashed(state, stores=policy.stores)
    if crashed:
        log.warning("crashed runs found", run_ids=crashed)
    with state.begin() as conn:
        conn.execute(insert(runs_t).values(id=report.run_id, started_at=datetime.now(UTC),
                                           as_of=now, dry_run=dry_run, status="running",
                                           policy_digest=policy.digest,
                                           holder=holder or holder_id()))
    lock = state_lock(state, policy.workers)
    if not dry_run:
        _record_policy_change(app, report.run_id)
        _reconcile(app, Executor(policy, state, {}, report.run_id, should_stop, lock=lock),
                   stores)
    sit = planner.Situation(now, policy.tz, policy.rules, read_holds(state),
                            tuple(open_requests(state)))
    tracker = RequestTracker(sit.requests, policy.rules)
    rules = _in_fk_order(app, rules, report)

    def executor_for(store: str, stop: Callable[[], bool]) -> Executor:
        return Executor(policy, state, {}, report.run_id, stop, lock=lock)

    work = StoreWork(_one_rule(app, sit, tracker, report), None if dry_run else executor_for,
                     should_stop, store_stop)
    report.rules = work.run(rules, policy.workers)
    report.unreachable = work.first_unreachable(rules)
    report.stopped = work.stopped
    if not dry_run and not rule_ids and not report.stopped:
        if stores is None:
            tracker.settle(state, report.run_id)
        else:  # other replicas sweep the other stores: close only what every rule served
            tracker.settle_served(state, report.run_id, {r.id for r in rules})
    report.requests = tracker.as_json(now)
    _finish(app, report)
    return report


def _one_rule(app: App, sit: planner.Situation, tracker: RequestTracker,
              report: SweepReport) -> RuleFn:
    """Sweep one rule with its store's executor (None: a dry run); never raises for a failing
    rule or store, only when the state database is gone."""

    def one(rule: Rule, executor: Executor | None) -> tuple[RuleResult, str | None]:
        result = RuleResult(rule.id, rule.store, rule.target, rule.action,
                            strategies=_strategies(rule))
        unreachable = None
        try:
            _sweep_rule(app, planner.plan_rule(rule, sit, time_based=report.time_based),
                        result, executor, tracker)
        except StoreUnreachable as exc:
            unreachable = str(exc)
            _rule_failed(result, exc, tracker, rule)
        except StateUnreachable:
            raise
        except RetentiondError as exc:
            _rule_failed(result, exc, tracker, rule)
        except Exception as exc:
            if faults.is_state_error(exc):
                raise  # the state database is gone: exit 3, not a failed rule
            _rule_failed(result, RetentiondError(_unexpected(rule, exc, app.debug)), tracker,
                         rule)
        log.info("rule swept", run_id=report.run_id, rule=rule.id, store=rule.store,
                 action=rule.action, dry_run=report.dry_run, due=result.due, held=result.held,
                 kept=result.kept, done=result.done, failed=result.failed,
                 null_clock=result.null_clock, bad_clock=result.bad_clock, purged=result.purged,
                 **({"error": result.error} if result.error else {}))
        return result, unreachable

    return one


def state_lock(state: Engine, workers: int) -> AbstractContextManager[Any]:
    """What the executors of one sweep hold around their state-database writes: SQLite lets
    one writer in at a time, and a transaction that read before it wrote fails at once
    ("database is locked") instead of waiting, so a sweep with several workers takes turns
    in-process. PostgreSQL needs nothing (``ledger.append`` locks the head row)."""
    if workers > 1 and state.dialect.name == "sqlite":
        return threading.Lock()
    return nullcontext()


def _in_fk_order(app: App, rules: list[Rule], report: SweepReport) -> list[Rule]:
    """The rules in foreign-key order (referencing tables first, :func:`planner.fk_order`);
    ``report.order`` names, per store, the order when it is not the file's. A store that
    cannot be read here keeps the file's order (its rules fail on their own)."""
    referencing: dict[str, frozenset[str]] = {}
    schemas: dict[str, str | None] = {}
    for rule in rules:
        try:
            adapter = app.adapter(rule.store)
            referencing[rule.id] = adapter.referencing(rule)
            if rule.store not in schemas:
                schemas[rule.store] = adapter.default_schema()
        except (RetentiondError, NoSuchTableError, KeyError) as exc:
            log.debug("foreign keys not read", rule=rule.id, error=type(exc).__name__)
    ordered = planner.fk_order(rules, referencing, schemas)
    for store in dict.fromkeys(r.store for r in rules):
        mine = [r.id for r in ordered if r.store == store]
        if mine != [r.id for r in rules if r.store == store]:
            report.order[store] = mine
    return ordered


def _sweep_rule(app: App, plan: planner.RulePlan, result: RuleResult,
                executor: Executor | None, tracker: RequestTracker) -> None:
    rule = plan.rule
    adapter = app.adapter(rule.store)
    problems = adapter.preflight(rule)
    if problems:
        path, msg = problems[0]
        at = app.policy.rules.index(rule)
        raise StoreError(f"rules[{at}] ({rule.id}).{path}: {msg}")
    result.warnings = [f"rules[{app.policy.rules.index(rule)}] ({rule.id}).{path}: {msg}"
                       for path, msg in adapter.warnings(rule, _ledgered(app), count_bad=False)]
    for text in result.warnings:
        log.warning("rule check", rule=rule.id, store=rule.store, warning=text)
    result.null_clock = adapter.count_null_clock(rule) if plan.time or plan.hold else 0
    result.bad_clock = adapter.count_bad_clock(rule) if plan.time or plan.hold else 0
    if result.bad_clock:
        log.warning("clocks do not parse", rule=rule.id, store=rule.store,
                    bad_clock=result.bad_clock)
    # A hold protects a record whatever refers to it: held counts leave no one out.
    result.held = sum(adapter.count(replace(s, skip_blocked=False)) for s in plan.held)
    for q in plan.held_requests:
        tracker.blocked(q, rule)
    for q, sel in plan.held_erasures:
        n = adapter.count(replace(sel, skip_blocked=False))
        result.held += n
        tracker.held(q, rule, n)
    planned: list[tuple[planner.OpenRequest | None, Selection, int]] = []
    for q, sel in plan.erasures:
        n = adapter.count(sel)
        if sel.action == "keep":
            result.kept += n
            tracker.kept(q, rule, n)
        else:
            planned.append((q, sel, n))
    if plan.time is not None:
        # A real sweep reports what it disposed (due = done + failed); counting first would
        # cost a full pass over the due records for nothing.
        planned.append((None, plan.time, adapter.count(plan.time) if executor is None else 0))
    result.due = sum(n for _, _, n in planned)
    _references(adapter, planned, result, tracker, cascades=executor is None)
    isolates = "isolate" in (rule.action, rule.on_erasure) and plan.hold is None
    if executor is None:
        _plan_only(app, adapter, plan, planned, result, isolates=isolates)
        return
    _execute(adapter, planned, result, executor, tracker)
    if isolates and not executor.stopped:
        executor.purge(rule, _now(), result)


def _plan_only(app: App, adapter: Adapter, plan: planner.RulePlan,
               planned: list[tuple[planner.OpenRequest | None, Selection, int]],
               result: RuleResult, *, isolates: bool) -> None:
    """What a plan shows beyond counts: the partitions a run would drop, the isolated records
    it would purge."""
    rule = plan.rule
    if rule.partitions == "drop" and plan.time is not None:
        result.partitions = adapter.partitions(plan.time)
    if isolates:
        result.purged = sum(len(b) for b in adapter.scan_isolated(
            rule, planned[0][1].now if planned else _now(), app.policy.batch_size))


def _references(adapter: Adapter,
                planned: list[tuple[planner.OpenRequest | None, Selection, int]],
                result: RuleResult, tracker: RequestTracker, *, cascades: bool) -> None:
    """Records the store refuses to dispose (foreign keys that refer to them), counted when
    the rule starts: rules that ran before it in this sweep have disposed what they could.
    They are not selected, not due, never attempted; an erasure request they belong to stays
    open. A plan (``cascades``) also counts the rows its disposals would cascade to; a run
    counts them per batch (the executor)."""
    for q, sel, _ in planned:
        if cascades:
            merge_counts(result.cascaded, adapter.cascades(sel))
        n, by = adapter.blocked(sel)
        result.blocked += n
        merge_counts(result.blocked_by, by)
        if q is not None and n:
            tracker.refused(q, sel.rule, n, by)


def _ledgered(app: App) -> Callable[[str], bool]:
    """Whether the ledger holds an anonymisation by a rule (asked only for anonymize rules)."""
    return lambda rule_id: ledger.anonymised_by(app.state, rule_id)


def _now() -> datetime:
    return datetime.now(UTC)


def _execute(adapter: Adapter, planned: list[tuple[planner.OpenRequest | None, Selection, int]],
             result: RuleResult, executor: Executor, tracker: RequestTracker) -> None:
    rule = planned[0][1].rule if planned else None
    if rule is None:
        return
    executor.adapters[rule.store] = adapter
    first_error: StoreError | None = None
    try:
        for q, sel, _ in planned:
            # A failing selection (an erasure's) never skips the next (the time part).
            before = result.failed
            executor.stopped_by_hold = False
            try:
                done = executor.execute(sel, result)
            except StoreUnreachable:
                result.failed = max(result.failed, before + _left(adapter, sel))
                raise
            except StoreError as exc:
                result.failed = max(result.failed, before + _left(adapter, sel))
                first_error = first_error or exc
                continue
            result.held += _held_since(adapter, executor, sel)
            if executor.stopped_by_hold:
                # What the new hold now protects.
                protected = adapter.count(replace(sel, skip_blocked=False))
                result.held += protected
                if q is not None and protected:  # a hold after the last batch blocks nothing
                    tracker.blocked(q, rule)
            if q is not None:
                tracker.disposed(q, rule, done)
                if result.failed > before:  # records of the request failed alone
                    tracker.failed(rule)
            if executor.stopped:
                break
    finally:
        result.due = result.done + result.failed
    if first_error is not None:
        raise first_error


def _held_since(adapter: Adapter, executor: Executor, sel: Selection) -> int:
    """Records of the selection left alone because their subject was put on hold while the
    sweep ran; they count as held (SPEC 3.2)."""
    if sel.subjects is not None:
        return 0  # an erasure stopped by a hold is counted by the caller
    current = executor.refresh(sel)
    if current is None:
        return 0
    late = sorted(set(current.exclude_subjects) - set(sel.exclude_subjects))
    return adapter.count(replace(sel, subjects=tuple(late), exclude_subjects=(),
                                 skip_blocked=False)) if late else 0


def _left(adapter: Adapter, sel: Selection | None) -> int:
    """How many records a failed selection left undisposed (0 if the store cannot say)."""
    try:
        return adapter.count(sel) if sel is not None else 0
    except StoreError:
        return 0


def _strategies(rule: Rule) -> dict[str, str] | None:
    if rule.anonymize is None or "anonymize" not in (rule.action, rule.on_erasure):
        return None
    return {column: s.strategy for column, s in rule.anonymize.columns.items()}


def _unexpected(rule: Rule, exc: Exception, debug: bool) -> str:
    """One line for an error nobody mapped, naming only what the policy names: a driver's or
    a KeyError's text can hold values. With --debug the traceback's frames are logged."""
    if debug:
        log.debug("rule traceback", rule=rule.id, error=type(exc).__name__,
                  frames="".join(traceback.format_tb(exc.__traceback__)))
    if isinstance(exc, NoSuchTableError):
        return (f"table {rule.target} does not exist in store {rule.store}; "
                "check the rule with `retentiond config validate`")
    named = {*rule.key_columns, rule.clock, rule.subject, *rule.match}
    if rule.anonymize is not None:
        named |= {rule.anonymize.marker, *rule.anonymize.columns}
    if isinstance(exc, KeyError) and exc.args and exc.args[0] in named - {None}:
        return (f"column {exc.args[0]} does not exist in {rule.target} (store {rule.store}); "
                "check the rule with `retentiond config validate`")
    return f"unexpected {type(exc).__name__} (run with --debug for a traceback)"


def _rule_failed(result: RuleResult, exc: RetentiondError, tracker: RequestTracker,
                 rule: Rule) -> None:
    result.error = str(exc)
    if result.failed == 0 and result.due > result.done:
        result.failed = result.due - result.done
    tracker.failed(rule)


def _reconcile(app: App, executor: Executor, only: Collection[str] | None) -> None:
    """Ledger what crashed sweeps disposed, for the stores this sweep covers (``only``; all
    when None): another replica reconciles its own stores."""
    with app.state.connect() as conn:
        stores = set(conn.execute(select(pending_t.c.store).distinct()).scalars())
    if only is not None:
        stores &= set(only)
    for name in stores:
        if name in app.policy.stores:
            try:
                executor.adapters[name] = app.adapter(name)
            except StoreUnreachable as exc:
                log.warning("cannot reconcile yet", store=name, error=str(exc))
    if stores:
        executor.reconcile(only)


def _record_policy_change(app: App, run_id: str) -> None:
    last = ledger.last_of_kind(app.state, "policy")
    digest = app.policy.digest
    if last is not None and last["detail"].get("digest") == digest:
        return
    ledger.append_now(app.state, [ledger.Draft(
        kind="policy", run_id=run_id, reason="policy loaded",
        detail={"digest": digest, "rules": sorted(r.id for r in app.policy.rules),
                "previous": last["detail"].get("digest") if last else None})])
    log.info("policy change recorded", digest=digest[:16])


def _finish(app: App, report: SweepReport) -> None:
    failure: RetentiondError | None = None
    if not report.dry_run:
        cp = checkpoint.write(app.state, report.run_id, app.policy.signing_private_key)
        log.info("checkpoint", run_id=report.run_id, seq=cp["seq"], hash=cp["hash"],
                 at=cp["at"], signature=cp["signature"])
        try:
            checkpoint.append_to_file(app.policy.checkpoints, cp)
        except RetentiondError as exc:
            failure = exc  # the run row still gets its outcome, then the command fails
    status = "interrupted" if report.stopped else "failed" if report.exit_code else "ok"
    with app.state.begin() as conn:
        conn.execute(update(runs_t).where(runs_t.c.id == report.run_id).values(
            finished_at=datetime.now(UTC), status="failed" if failure else status,
            summary=json.dumps(report.as_json())))
    if failure is not None:
        raise failure
