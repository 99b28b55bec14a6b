"""The only caller of adapter mutators. Per batch: intent -> act -> ledger.

1. The batch's record references are written to ``pending`` and committed (the intent).
2. The adapter disposes the batch in one store transaction and returns what it disposed.
3. One state transaction appends the ledger entry for exactly those records and removes the
   intent.

A crash between 1 and 3 leaves the intent behind; :meth:`Executor.reconcile` (run at the start
of every sweep) asks the adapter which of its records are gone and ledgers those, so every
disposed record is in the ledger exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, and_, delete, insert, select
from sqlalchemy import func as sa_func
from sqlalchemy.engine import Connection, Engine

from retentiond import planner
from retentiond.adapters.base import Adapter, Selection, merge_counts
from retentiond.audit import ledger
from retentiond.errors import RecordsFailed, StoreError, failure_line
from retentiond.executor_drop import PartitionDrops
from retentiond.log import get_logger
from retentiond.policy.model import Policy, Rule
from retentiond.state.cases import read_holds
from retentiond.state.models import LedgerEntry, Pending, Run
from retentiond.timeutil import Duration, add

log = get_logger(__name__)
pending_t = cast(Table, Pending.__table__)
runs_t = cast(Table, Run.__table__)
ledger_t = cast(Table, LedgerEntry.__table__)


@dataclass
class RuleResult:
    rule: str
    store: str
    target: str
    action: str
    due: int = 0
    held: int = 0
    kept: int = 0
    done: int = 0
    failed: int = 0
    null_clock: int = 0
    bad_clock: int = 0
    purged: int = 0
    strategies: dict[str, str] | None = None
    error: str | None = None
    warnings: list[str] | None = None
    failed_by: dict[str, int] = field(default_factory=dict)  # records failed alone, by reason
    # Due but referenced through a RESTRICT / NO ACTION foreign key: never attempted.
    blocked: int = 0
    blocked_by: list[dict[str, Any]] = field(default_factory=list)  # {constraint, table, count}
    # Rows of other tables deleted or rewritten through CASCADE / SET NULL keys.
    cascaded: list[dict[str, Any]] = field(default_factory=list)  # {.., action, count}
    # partitions: drop: {partition, rows, drop, reason} per partition considered (None: off).
    partitions: list[dict[str, Any]] | None = None

    def records_failed(self, reasons: Mapping[str, int]) -> None:
        """Count records that failed alone (their batch's others were disposed); the rule's
        ``error`` line names every reason so far, without values."""
        for reason, n in reasons.items():
            self.failed_by[reason] = self.failed_by.get(reason, 0) + n
            self.failed += n
        if self.failed_by:
            self.error = failure_line(self.failed_by)

    def as_json(self) -> dict[str, Any]:
        doc = {"rule": self.rule, "store": self.store, "target": self.target,
               "action": self.action, "due": self.due, "held": self.held, "kept": self.kept,
               "done": self.done, "failed": self.failed, "null_clock": self.null_clock,
               "bad_clock": self.bad_clock, "purged": self.purged, "blocked": self.blocked,
               "blocked_by": self.blocked_by, "cascaded": self.cascaded}
        if self.error:
            doc["error"] = self.error
        if self.warnings:
            doc["warnings"] = self.warnings
        if self.strategies:
            doc["strategies"] = self.strategies
        if self.partitions is not None:
            doc["partitions"] = self.partitions
        return doc


def claim(conn: Connection, intent: int) -> bool:
    """Remove an intent in the transaction that ledgers it; False when another transaction
    removed it first (then that one ledgered it, and this one must not). On PostgreSQL the
    second DELETE waits for the first transaction and then finds no row; SQLite serialises
    writers."""
    return conn.execute(delete(pending_t).where(pending_t.c.id == intent)).rowcount == 1


def reconciled(conn: Connection, run_id: str, rule: str, intent: int) -> set[str]:
    """The refs another sweep's reconciliation ledgered for this run's ``intent``."""
    rows = conn.execute(select(ledger_t.c.record_refs, ledger_t.c.detail).where(
        ledger_t.c.run_id == run_id, ledger_t.c.rule == rule)).all()
    return {ref for refs, detail in rows if json.loads(detail or "{}").get("intent") == intent
            for ref in json.loads(refs)}


def kind_of(reason: str) -> str:
    """The ledger kind of a disposal: ``purge``, ``replay`` or ``dispose``."""
    return reason if reason in ("purge", "replay") else "dispose"


FAST_ACTIONS = ("delete", "anonymize")
Outcome = tuple[int, bool]  # records disposed by one batch, whether the selection may have more
Step = Callable[[Selection], "Outcome | None"]


class Executor(PartitionDrops):
    def __init__(self, policy: Policy, state: Engine, adapters: dict[str, Adapter],
                 run_id: str, should_stop: Callable[[], bool] = lambda: False, *,
                 lock: AbstractContextManager[Any] | None = None) -> None:
        self.policy = policy
        # held around every state-database write: the executors of one sweep's stores share
        # one on SQLite (:func:`retentiond.sweep.state_lock`)
        self.lock = lock if lock is not None else nullcontext()
        self.state = state
        self.adapters = adapters
        self.run_id = run_id
        self.should_stop = should_stop
        self.refs = ledger.Refs(policy.secret_bytes)
        self.stopped = False
        self.stopped_by_hold = False

    # -- sweeping -----------------------------------------------------------------------------
    def execute(self, sel: Selection, result: RuleResult) -> int:
        """Dispose what the selection covers, batch by batch; return how many were disposed.

        One statement per batch where the adapter offers it (``delete_next`` /
        ``anonymize_next``), else the adapter's scan and a mutator per batch; either way the
        same loop (:meth:`_loop`) re-reads holds before every batch and honours a stop."""
        sel = self._prepare(sel)
        dropped = 0
        if sel.rule.partitions == "drop":
            dropped = self._drop_partitions(sel, result)
            if self.stopped or self.stopped_by_hold:
                return dropped
        if sel.action in FAST_ACTIONS:
            done = self._loop(sel, self._fast_step(sel, result))
            if done is not None:
                return dropped + done
        return dropped + self._loop_all(sel, self._scan_step(sel, result))

    def _settle(self, intents: Sequence[int]) -> int:
        """Settle these intents now against what the store holds (as :meth:`reconcile`)."""
        if not intents:
            return 0
        return self._reconcile_rows(pending_t.c.id.in_(intents))

    def apply(self, sel: Selection, keys: Sequence[Any], result: RuleResult) -> int:
        """Dispose exactly these keys (replay after a restore), in batches."""
        sel = self._prepare(sel)
        size = self.policy.batch_size
        chunks = iter(range(0, len(keys), size))

        def step(current: Selection) -> Outcome:
            i = next(chunks, None)
            if i is None:
                return 0, False
            return self._batch(current, keys[i:i + size], result), True

        return self._loop_all(sel, step)

    def purge(self, rule: Rule, now: datetime, result: RuleResult) -> int:
        """Purge the rule's isolated records whose time has come (SPEC 4, audited as purge).
        Holds do not apply: isolated records are out of processing already."""
        sel = Selection(rule=rule, action="purge", reason="purge", tz=self.policy.tz,
                        now=now.astimezone(self.policy.tz), clock_cutoff=None)
        batches = iter(self.adapters[rule.store].scan_isolated(rule, now,
                                                               self.policy.batch_size))

        def step(current: Selection) -> Outcome:
            batch = next(batches, None)
            if batch is None:
                return 0, False
            return self._batch(current, [c.key for c in batch], result, count=False), True

        done = self._loop_all(sel, step, holds=False)
        result.purged += done
        return done

    def _loop(self, sel: Selection, step: Step, *, holds: bool = True) -> int | None:
        """The one loop over batches. Before every batch the holds are re-read (a hold placed
        while the sweep runs protects every record not yet disposed: the batch's re-check in
        the store includes it; a hold over the whole selection ends it, ``stopped_by_hold``);
        after every batch a stop request (SIGTERM, a lost lease) ends it. ``step`` disposes
        one batch of the current selection. None when the first step says it cannot work
        (an adapter without the fast path)."""
        done = 0
        first = True
        while True:
            current = self.refresh(sel) if holds else sel
            if current is None:
                self.stopped_by_hold = True
                return done
            outcome = step(current)
            if outcome is None:
                return None if first else done
            first = False
            count, more = outcome
            done += count
            if not more:
                return done
            if self.should_stop():
                self.stopped = True
                return done

    def _loop_all(self, sel: Selection, step: Step, *, holds: bool = True) -> int:
        done = self._loop(sel, step, holds=holds)
        assert done is not None, "only a fast-path step can decline"
        return done

    def _scan_step(self, sel: Selection, result: RuleResult) -> Step:
        """A batch read by the adapter's scan, disposed by its mutator (minus the subjects put
        on hold since the scan began)."""
        batches = iter(self.adapters[sel.rule.store].scan(sel, self.policy.batch_size))

        def step(current: Selection) -> Outcome:
            batch = next(batches, None)
            if batch is None:
                return 0, False
            skip = set(current.exclude_subjects)
            keys = [c.key for c in batch if c.subject is None or str(c.subject) not in skip]
            return self._batch(current, keys, result), True

        return step

    def _fast_step(self, sel: Selection, result: RuleResult) -> Step:
        """One statement per batch (``delete_next`` / ``anonymize_next``): the intent is
        committed to the state database after the store has picked the batch and before the
        store commits, so a crash at any point is reconciled exactly as in the scan path. The
        next batch starts after the last key *read*: a batch shortened by a concurrent writer
        is not the end; the selection having nothing left is."""
        rule = sel.rule
        adapter = self.adapters[rule.store]
        take = adapter.delete_next if sel.action == "delete" else adapter.anonymize_next
        position: dict[str, Any] = {"after": None}

        def step(current: Selection) -> Outcome | None:
            written: dict[str, Any] = {}

            def intent(keys: list[Any]) -> None:
                written["refs"] = self.refs.records(rule.store, rule.target, keys)
                written["json"] = ledger.refs_json(written["refs"])
                written["id"] = self._intent(current, written["refs"], written["json"])

            try:
                batch = take(current, position["after"], self.policy.batch_size, intent)
            except StoreError:
                result.failed += len(written.get("refs", ()))
                raise
            if batch is None:
                return None
            result.records_failed(batch.failed)
            if batch.disposed:
                refs, encoded = written["refs"], written["json"]
                if len(batch.disposed) < len(refs):
                    # A store without transactions announces a batch before deleting it;
                    # the records it then refused failed alone: ledger the others only.
                    refs, encoded = self.refs.records(rule.store, rule.target,
                                                      batch.disposed), None
                self._record(current, written["id"], refs, encoded)
                result.done += len(batch.disposed)
            position["after"] = batch.last_read
            return len(batch.disposed), batch.last_read is not None

        return step

    def _prepare(self, sel: Selection) -> Selection:
        if sel.action == "isolate" and sel.purge_after is None:
            return replace(sel, purge_after=add(sel.now, self._isolate_for(sel.rule)))
        return sel

    def _isolate_for(self, rule: Rule) -> Duration:
        if rule.isolate is not None and rule.isolate.for_ is not None:
            return rule.isolate.for_
        backups = self.policy.stores[rule.store].backups
        if backups is None:
            raise StoreError(f"rule {rule.id}: isolate needs isolate.for or backups.retention")
        return backups.retention

    def _batch(self, sel: Selection, keys: Sequence[Any], result: RuleResult,
               *, count: bool = True) -> int:
        if not keys:
            return 0
        rule = sel.rule
        ref_of = self.refs.record_fn(rule.store, rule.target)
        refs = {k: ref_of(k) for k in keys}  # one HMAC per record, reused for the ledger
        intent = self._intent(sel, list(refs.values()))
        try:
            disposed = self.adapters[rule.store].dispose(sel, keys)
        except RecordsFailed as exc:
            # The others were disposed and committed, under this batch's intent.
            disposed = exc.disposed
            if count:
                result.records_failed(exc.failed)
        except StoreError:
            # The store rolled the batch back (or lost it); the intent stays behind for
            # reconcile to settle against what the store really holds.
            if count:
                result.failed += len(keys)
            self.adapters[rule.store].take_cascaded()  # rolled back with the batch
            raise
        cascaded = self.adapters[rule.store].take_cascaded()
        merge_counts(result.cascaded, cascaded)
        self._record(sel, intent, [refs[k] if k in refs else ref_of(k) for k in disposed],
                     cascaded=cascaded)
        if count:
            result.done += len(disposed)
        log.debug("batch disposed", rule=rule.id, action=sel.action, count=len(disposed))
        return len(disposed)

    def refresh(self, sel: Selection) -> Selection | None:
        return planner.reapply_holds(sel, read_holds(self.state))

    def _intent(self, sel: Selection, refs: Sequence[str], encoded: str | None = None) -> int:
        rule = sel.rule
        with self.lock, self.state.begin() as conn:
            res = conn.execute(insert(pending_t).values(
                created_at=datetime.now(UTC), run_id=self.run_id, rule=rule.id,
                store=rule.store, target=rule.target, action=sel.action, reason=sel.reason,
                subject_ref=sel.subject_ref, record_refs=encoded or ledger.refs_json(refs),
                detail=json.dumps(sel.detail)))
            inserted = res.inserted_primary_key
            assert inserted is not None  # a single-row INSERT always reports its key
            return int(inserted[0])

    def horizon(self, store: str, action: str, purge_after: datetime | None,
                at: datetime) -> str | None:
        """``beyond_use_until``: when no copy of a disposed record remains in any backup."""
        backups = self.policy.stores[store].backups if store in self.policy.stores else None
        if backups is None:
            return None
        base = purge_after if action == "isolate" and purge_after is not None else at
        return add(base.astimezone(UTC), backups.retention).isoformat()

    def _record(self, sel: Selection, intent: int, refs: list[str],
                encoded: str | None = None, *,
                cascaded: list[dict[str, Any]] | None = None) -> None:
        rule = sel.rule
        detail = {**sel.detail, "count": len(refs)}
        if cascaded:  # per constraint and table, how many rows: counts, never keys
            detail["cascaded"] = cascaded
        if sel.purge_after is not None:
            detail["purge_after"] = sel.purge_after.astimezone(UTC).isoformat()
        horizon = self.horizon(rule.store, sel.action, sel.purge_after, datetime.now(UTC))
        if horizon:
            detail["beyond_use_until"] = horizon
        draft = ledger.Draft(kind=kind_of(sel.reason), run_id=self.run_id, rule=rule.id,
                             store=rule.store, target=rule.target, action=sel.action,
                             reason=sel.reason, record_refs=refs, subject_ref=sel.subject_ref,
                             detail=detail, refs_json=encoded)
        with self.lock, self.state.begin() as conn:
            if not claim(conn, intent):
                # Another sweep's reconciliation settled the intent, ledgering what was gone
                # when it looked; this sweep ledgers the rest of what it disposed.
                refs = sorted(set(refs) - reconciled(conn, self.run_id, rule.id, intent))
                log.warning("intent settled by another sweep", rule=rule.id, left=len(refs))
                draft = replace(draft, record_refs=refs, refs_json=None,
                                detail={**detail, "count": len(refs)})
            if refs:
                ledger.append(conn, [draft])

    # -- crash recovery -----------------------------------------------------------------------
    def reconcile(self, stores: Collection[str] | None = None) -> int:
        """Ledger the records of intents left by a crash that are gone from their store (of
        ``stores`` only, when given: other replicas reconcile theirs)."""
        live = select(runs_t.c.id).where(runs_t.c.status == "running",
                                         runs_t.c.id != self.run_id)
        which: Any = pending_t.c.run_id.not_in(live)
        if stores is not None:
            which = and_(which, pending_t.c.store.in_(sorted(stores)))
        return self._reconcile_rows(which)

    def _reconcile_rows(self, which: Any) -> int:
        """Ledger what is gone of the records of the intents ``which`` selects. Intents of one
        rule are asked of the store together, up to :data:`RECONCILE_REFS` references at a
        time: the adapter reads the table once per call, not once per intent (a dropped
        partition leaves many), and only one such group of references is in memory."""
        with self.state.connect() as conn:
            heads = conn.execute(select(pending_t.c.id, pending_t.c.store, pending_t.c.rule,
                                        pending_t.c.action, pending_t.c.target,
                                        sa_func.length(pending_t.c.record_refs))
                                 .where(which).order_by(pending_t.c.id)).all()
        settled = 0
        groups: dict[tuple[str, str, str, str], list[Any]] = {}
        for head in heads:
            groups.setdefault(tuple(head[1:5]), []).append(head)
        for (store, rule_id, action, target), group in groups.items():
            adapter = self.adapters.get(store)
            rule = next((r for r in self.policy.rules if r.id == rule_id), None)
            if adapter is None or rule is None:
                log.warning("intent left unreconciled", rule=rule_id, store=store)
                continue
            ref_of = self.refs.record_fn(store, target)
            for chunk in _chunks(group):
                with self.state.connect() as conn:
                    rows = conn.execute(select(pending_t).where(pending_t.c.id.in_(
                        [h[0] for h in chunk])).order_by(pending_t.c.id)).all()
                refs = {row.id: json.loads(row.record_refs) for row in rows}
                present = adapter.remaining(rule, action, {r for v in refs.values() for r in v},
                                            ref_of)
                for row in rows:
                    settled += self._settle_row(row, refs.pop(row.id), present)
        return settled

    def _settle_row(self, row: Any, refs: list[str], present: set[str]) -> int:
        gone = [r for r in refs if r not in present]
        draft = ledger.Draft(kind=kind_of(row.reason), run_id=row.run_id, rule=row.rule,
                             store=row.store, target=row.target, action=row.action,
                             reason=row.reason, record_refs=gone, subject_ref=row.subject_ref,
                             detail={**json.loads(row.detail), "count": len(gone),
                                     "reconciled": True, "intent": row.id})
        with self.lock, self.state.begin() as conn:
            if not claim(conn, row.id):
                return 0  # another sweep settled it first
            if gone:
                ledger.append(conn, [draft])
        log.info("intent reconciled", rule=row.rule, disposed=len(gone),
                 untouched=len(refs) - len(gone))
        return len(gone)


#: References asked of a store at once when settling intents (memory: ~150 bytes each).
RECONCILE_REFS = 200_000
RECONCILE_INTENTS = 1000  # and intents at once (their ids are bound parameters)


def _chunks(heads: list[Any]) -> Iterator[list[Any]]:
    """Intents in groups of at most :data:`RECONCILE_REFS` references and
    :data:`RECONCILE_INTENTS` intents (at least one intent each), sized from the length of
    their JSON (a reference takes 68 characters there)."""
    chunk: list[Any] = []
    size = 0
    for head in heads:
        n = int(head[5] or 0) // 66 + 1
        if chunk and (size + n > RECONCILE_REFS or len(chunk) >= RECONCILE_INTENTS):
            yield chunk
            chunk, size = [], 0
        chunk.append(head)
        size += n
    if chunk:
        yield chunk
