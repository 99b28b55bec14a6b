"""Review of ``partitions: drop`` (branch i13-part): failing tests for what the review found.

Reuses the ``events`` fixture of ``test_partition_drop.py`` (a table partitioned by month of
``created_at``, three rows per month, a DEFAULT partition).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from test_partition_drop import (  # noqa: F401  (events is a fixture)
    Events,
    attached,
    disposed_refs,
    dropped,
    events,
    ids,
    ref,
    setup,
)


def test_a_drop_whose_intents_another_sweep_settled_meanwhile_is_still_ledgered(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """A run that is cut off (lease lost, its run marked ``crashed``) while a partition's drop
    is in flight: another sweep reconciles its intents before the drop commits, finds every
    row still there (the drop is not committed), ledgers nothing and removes the intents.
    The drop then commits. A row batch in the same position ledgers its records anyway
    (``Executor._record``: "this sweep ledgers the rest of what it disposed"); the drop's
    ``_record_pending`` finds no intent and ledgers nothing: the partition's rows are gone
    and no ledger entry names them."""
    from retentiond.adapters.registry import register, unregister
    from retentiond.adapters.sql import SqlAdapter
    from retentiond.executor import Executor

    ev = events
    name = sorted(ev.wholly_due)[0]

    class CutOff(SqlAdapter):
        def _detach_and_drop(self, conn: Any, table: Any, part: Any) -> None:
            if part.name == name:  # the intents are written; the store has not committed
                state = sa.create_engine(ws.state_url)
                with state.begin() as s:  # another replica judged this run dead
                    s.execute(sa.text("update runs set status = 'crashed' "
                                      "where status = 'running'"))
                other = SqlAdapter(self.store_name, self.store, self.policy)
                try:
                    Executor(self.policy, state, {self.store_name: other},
                             "another-sweep").reconcile([self.store_name])
                finally:
                    other.close()
                    state.dispose()
            super()._detach_and_drop(conn, table, part)

    register("sqlcutoff", CutOff)
    try:
        setup(ws, pg_schema, adapter="sqlcutoff")
        run = ws.invoke("run", "--json")
    finally:
        unregister("sqlcutoff")
    assert run.code == 0, run.err
    assert name in dropped(run.json())
    assert name not in attached(ev.engine)
    assert ids(ev.engine) == set(ev.rows) - ev.due
    gone = {i for i in ev.rows if ev.part_of(i) == name}
    refs = disposed_refs(ws)
    missing = [i for i in sorted(gone) if ref(ws, ev, i) not in refs]
    assert missing == [], f"dropped but never ledgered: ids {missing}"
    assert sorted(refs) == sorted(ref(ws, ev, i) for i in ev.due)
