"""Runs whose process died: found when the next sweep starts and marked ``crashed``.

Every run row names its ``holder``: ``host:pid:random`` of the process that sweeps (the
daemon's lease holder id, or one made for a one-shot ``run`` or ``plan``). When a sweep
starts, a run still ``running`` is crashed when

- it ran on this host (the holder's host is ours) and its pid is not alive; or
- it ran on another host and that host cannot still be sweeping for it: no lease row names
  the run's holder (a real run holds its stores' leases, a ``serve`` replica its heartbeat
  as well; when its holder dies, whoever takes those over or deletes its stale heartbeat
  makes the run count as crashed).

A run with no holder (written before the ``holder`` column existed) is judged like a run of
another host. A pid that was reused by an unrelated process keeps its run ``running`` (the
safe error: a live run is never marked crashed on its own host). A process that was only cut
off and comes back overwrites ``crashed`` with its real outcome when it finishes. Wall clocks
of different hosts are never compared. "This host" is :func:`retentiond.state.lease.this_host`
(host name, boot id and pid namespace).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, select, update
from sqlalchemy.engine import Engine

from retentiond.state.lease import here, lease_t
from retentiond.state.models import Run

runs_t = cast(Table, Run.__table__)


def mark_crashed(engine: Engine, *, now: datetime | None = None) -> list[str]:
    """Mark every ``running`` run whose process is gone ``crashed`` (finished at ``now``);
    returns their ids."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        running = conn.execute(select(runs_t.c.id, runs_t.c.holder)
                               .where(runs_t.c.status == "running")).all()
        if not running:
            return []
        holders = set(conn.execute(select(lease_t.c.holder)).scalars())
        crashed = [r.id for r in running if is_crashed(r.holder, holders)]
        for run_id in crashed:
            conn.execute(update(runs_t).where(runs_t.c.id == run_id,
                                              runs_t.c.status == "running")
                         .values(status="crashed", finished_at=now))
    return crashed


def is_crashed(holder: str | None, lease_holders: Collection[str | None]) -> bool:
    """The rule of this module's docstring, for one run."""
    alive = here(holder)
    if alive is not None:
        return not alive
    return holder is None or holder not in lease_holders
