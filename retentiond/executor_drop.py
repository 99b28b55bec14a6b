"""The executor's ``partitions: drop`` (mixed into :class:`retentiond.executor.Executor`):
each partition the adapter offers is disposed as a unit by the adapter's mutator
:meth:`~retentiond.adapters.base.Adapter.drop_partition`, under intents written exactly as a
row sweep's batches (``batch_size`` references each, durable before the store commits) and
ledgered from them after the commit; whatever is not dropped is left to the row sweep that
follows (``Executor.execute``). A crash is settled by the executor's reconciliation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy import func as sa_func

from retentiond.adapters.base import DropDeclined, Selection
from retentiond.audit import ledger
from retentiond.errors import StoreError, StoreUnreachable
from retentiond.log import get_logger
from retentiond.state.models import Pending

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from retentiond.adapters.base import Adapter
    from retentiond.executor import RuleResult
    from retentiond.policy.model import Policy

log = get_logger(__name__)
pending_t = cast(Table, Pending.__table__)


class PartitionDrops:
    """Relies on the Executor's adapters, refs, state, refresh(), _intent(), _record(),
    _settle() and its stop flags."""

    policy: Policy
    state: Engine
    adapters: dict[str, Adapter]
    refs: ledger.Refs
    should_stop: Callable[[], bool]
    stopped: bool
    stopped_by_hold: bool
    lock: AbstractContextManager[Any]

    if TYPE_CHECKING:
        def refresh(self, sel: Selection) -> Selection | None: ...
        def _intent(self, sel: Selection, refs: Sequence[str],
                    encoded: str | None = None) -> int: ...
        def _record(self, sel: Selection, intent: int, refs: list[str],
                    encoded: str | None = None, *,
                    cascaded: list[dict[str, Any]] | None = None) -> None: ...
        def _settle(self, intents: Sequence[int]) -> int: ...

    def _drop_partitions(self, sel: Selection, result: RuleResult) -> int:
        """``partitions: drop``: each partition the adapter offers is disposed as a unit (see
        ``adapters/sql_partitions.py``), its records' references written as intents of
        ``batch_size`` before the store commits and ledgered from them after, exactly as a
        row sweep's batches; a partition that no longer qualifies under lock, or whose drop
        fails, is left to the row sweep that follows. Holds are re-read before each
        partition and again by the adapter once the partition is locked."""
        rule = sel.rule
        adapter = self.adapters[rule.store]
        offered = adapter.partitions(sel, count=False)
        if result.partitions is None:
            result.partitions = []
        done = 0
        for entry in offered:
            if not entry["drop"]:
                result.partitions.append(entry)
                continue
            current = self.refresh(sel)
            if current is None:
                self.stopped_by_hold = True
                return done
            written: list[int] = []

            def intent(keys: list[Any], current: Selection = current,
                       written: list[int] = written) -> None:
                refs = self.refs.records(rule.store, rule.target, keys)
                written.append(self._intent(current, refs, ledger.refs_json(refs)))

            def fresh(sel: Selection) -> Selection | None:
                # A sweep told to stop (SIGTERM, its lease lost) drops nothing more: another
                # replica may take the store over and settle these intents.
                if self.should_stop():
                    raise DropDeclined("the sweep is stopping")
                return self.refresh(sel)

            def mine(written: list[int] = written) -> bool:
                return self._unclaimed(written)

            try:
                n = adapter.drop_partition(current, entry["partition"], self.policy.batch_size,
                                           fresh, intent, confirm=mine)
            except DropDeclined as exc:
                result.partitions.append({**entry, "drop": False, "reason": exc.reason})
                # Declined before the store committed: rolled back, nothing is gone.
                self._discard(written)
                if self.should_stop():
                    self.stopped = True
                    return done
                continue
            except StoreUnreachable:
                raise  # the intents stay for the next sweep's reconciliation
            except StoreError as exc:
                # Rolled back (or a commit whose outcome is unknown): the store decides.
                settled = self._settle(written)
                done += settled
                result.done += settled
                reason = (f"the drop failed ({exc})"
                          + ("; swept row by row" if not settled else ""))
                result.partitions.append({**entry, "drop": settled > 0, "reason": reason})
                log.warning("partition not dropped", rule=rule.id, reason=reason)
                continue
            for intent_id in written:
                self._record_pending(current, intent_id)
            result.partitions.append({**entry, "rows": n})
            result.done += n
            done += n
            if self.should_stop():
                self.stopped = True
                return done
        return done

    def _unclaimed(self, intents: Sequence[int]) -> bool:
        """Whether every one of these intents is still pending (no other sweep's
        reconciliation settled it): checked in the drop's transaction just before the store
        commits, since the dropped rows' references are only in those intents."""
        if not intents:
            return True
        with self.state.connect() as conn:
            left = conn.execute(select(sa_func.count()).select_from(pending_t)
                                .where(pending_t.c.id.in_(intents))).scalar()
        return left == len(intents)

    def _discard(self, intents: Sequence[int]) -> None:
        """Remove the intents of a drop the store rolled back (nothing of it is gone)."""
        if intents:
            with self.lock, self.state.begin() as conn:
                conn.execute(delete(pending_t).where(pending_t.c.id.in_(intents)))

    def _record_pending(self, sel: Selection, intent: int) -> None:
        """Ledger an intent whose records are known disposed, reading its references back
        from the state database (a dropped partition's refs are never all in memory)."""
        with self.state.connect() as conn:
            encoded = conn.execute(select(pending_t.c.record_refs)
                                   .where(pending_t.c.id == intent)).scalar()
        if encoded is None:
            return  # another sweep's reconciliation settled it
        self._record(sel, intent, json.loads(encoded), encoded)
