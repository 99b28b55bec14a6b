"""Runs whose process died: found when the next sweep starts and marked ``crashed``.

Every run row names its ``holder``: ``host:pid:random`` of the process that sweeps (the
daemon's lease holder id, or one made for a one-shot ``run`` or ``plan``). When a sweep
starts, a run still ``running`` is crashed when

- it ran on this host (the holder's host is ours) and its pid is not alive; or
- it ran on another host and that host cannot still be sweeping for it: the sweep lease is
  not held by the run's holder, or the lease expired (``expires_at`` before now).

A run with no holder (written before the ``holder`` column existed) is judged like a run of
another host. A pid that was reused by an unrelated process keeps its run ``running`` (the
safe error: a live run is never marked crashed on its own host). A process that was only cut
off and comes back overwrites ``crashed`` with its real outcome when it finishes. Wall clocks
of different hosts are compared only through the lease's ``expires_at``.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.engine import Engine

from retentiond.state.lease import NAME, lease_t
from retentiond.state.models import Run

runs_t = cast(Table, Run.__table__)


def this_host() -> str:
    return socket.gethostname()[:80]


def mark_crashed(engine: Engine, *, now: datetime | None = None) -> list[str]:
    """Mark every ``running`` run whose process is gone ``crashed`` (finished at ``now``);
    returns their ids."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        running = conn.execute(select(runs_t.c.id, runs_t.c.holder)
                               .where(runs_t.c.status == "running")).all()
        if not running:
            return []
        lease = conn.execute(select(lease_t).where(lease_t.c.name == NAME)).first()
        crashed = [r.id for r in running if is_crashed(r.holder, lease, now)]
        for run_id in crashed:
            conn.execute(update(runs_t).where(runs_t.c.id == run_id,
                                              runs_t.c.status == "running")
                         .values(status="crashed", finished_at=now))
    return crashed


def is_crashed(holder: str | None, lease: Any, now: datetime) -> bool:
    """The rule of this module's docstring, for one run."""
    host, pid = host_pid(holder)
    if host == this_host() and pid is not None:
        return not pid_alive(pid)
    if lease is None or lease.holder is None or lease.holder != holder:
        return True
    return lease.expires_at is None or lease.expires_at < now


def host_pid(holder: str | None) -> tuple[str | None, int | None]:
    parts = (holder or "").rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None, None
    return parts[0], int(parts[1])


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
