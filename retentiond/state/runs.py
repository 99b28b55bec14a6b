"""Runs whose process died: found when the next sweep starts and marked ``crashed``.

Every run row names its ``holder``: ``host:pid:random`` of the process that sweeps (the
daemon's lease holder id, or one made for a one-shot ``run`` or ``plan``). When a sweep
starts, a run still ``running`` is crashed when

- it ran on this host (the holder's host is ours) and its pid is not alive; or
- it ran on another host and no *proof of life* names the run's holder. Only rows that
  someone of this release keeps judging count as proof of life:

  - a ``replica:<id>`` heartbeat: the other replicas delete one that stayed unchanged for the
    TTL on their own monotonic clocks;
  - the lease of a store of the policy (``stores``; every store lease when not given): live
    replicas and one-shot commands take it over once unchanged for the TTL, so a dead
    holder's name leaves it.

  Rows nobody of this release renews or takes over (the ``sweep`` row of releases before
  per-store leases, the lease of a store removed from the policy) would name a dead holder
  forever. Replicas clear them (compare-and-set) once unchanged for the TTL on their clock
  (:meth:`retentiond.state.lease.SweepLease.watch`); until then they count as proof of life
  only while their ``expires_at`` (the holder's wall clock at its last renewal, plus the TTL)
  is less than :data:`STALE_AFTER` past on this host's wall clock (a row without one counts
  until cleared). This is the one place wall clocks are compared, with a margin far beyond
  any sane clock skew: a live 0004-era holder renews every few seconds; and marking a live
  run crashed by mistake only changes its status until it overwrites it with its real
  outcome, since reconciliation only touches the stores whose leases the reconciler holds
  (and no store lease is taken while the ``sweep`` row may be alive).

A run with no holder (written before the ``holder`` column existed) is judged like a run of
another host. A pid that was reused by an unrelated process keeps its run ``running`` (the
safe error: a live run is never marked crashed on its own host). A process that was only cut
off and comes back overwrites ``crashed`` with its real outcome when it finishes. "This host"
is :func:`retentiond.state.lease.this_host` (host name, boot id and pid namespace).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, select, update
from sqlalchemy.engine import Engine

from retentiond.state.lease import STORE, here, lease_t
from retentiond.state.models import Run
from retentiond.state.replicas import REPLICA

runs_t = cast(Table, Run.__table__)
STALE_AFTER = timedelta(minutes=10)  # past expires_at: a row nobody renews proves nothing


def mark_crashed(engine: Engine, *, now: datetime | None = None,
                 stores: Iterable[str] | None = None) -> list[str]:
    """Mark every ``running`` run whose process is gone ``crashed`` (finished at ``now``);
    returns their ids. ``stores``: the policy's stores (None: every store lease counts)."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        running = conn.execute(select(runs_t.c.id, runs_t.c.holder)
                               .where(runs_t.c.status == "running")).all()
        if not running:
            return []
        rows = conn.execute(select(lease_t.c.name, lease_t.c.holder, lease_t.c.expires_at)
                            .where(lease_t.c.holder.is_not(None))).all()
        policy = None if stores is None else {STORE + s for s in stores}
        holders = {r.holder for r in rows if proves_life(r, policy, now)}
        crashed = [r.id for r in running if is_crashed(r.holder, holders)]
        for run_id in crashed:
            conn.execute(update(runs_t).where(runs_t.c.id == run_id,
                                              runs_t.c.status == "running")
                         .values(status="crashed", finished_at=now))
    return crashed


def proves_life(row: Any, policy: Collection[str] | None, now: datetime) -> bool:
    """Whether a held lease row counts as proof that its holder lives (module docstring)."""
    name: str = row.name
    if name.startswith(REPLICA) or (name.startswith(STORE)
                                    and (policy is None or name in policy)):
        return True
    expires = row.expires_at
    if expires is None:
        return True
    if expires.tzinfo is None:  # SQLite hands back naive UTC
        expires = expires.replace(tzinfo=UTC)
    return bool(expires + STALE_AFTER > now)


def is_crashed(holder: str | None, lease_holders: Collection[str | None]) -> bool:
    """The rule of this module's docstring, for one run."""
    alive = here(holder)
    if alive is not None:
        return not alive
    return holder is None or holder not in lease_holders
