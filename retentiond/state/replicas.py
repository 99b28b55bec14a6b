"""How ``serve`` replicas share the stores: one lease per store, a fair share each.

Every replica keeps a heartbeat, a row of the ``lease`` table named ``replica:<random>`` that it
renews (bumps) on every tick and deletes when it stops cleanly. On every tick (every
``RETENTIOND_LEASE_RENEW`` seconds) a replica

1. renews its heartbeat and counts the live replicas: itself, and every other heartbeat whose
   version changed within the TTL on its own monotonic clock (or that belongs to a live process
   on this machine). A heartbeat unchanged for the TTL, or of a dead process on this machine,
   is deleted (compare-and-set on its version), so its owner's runs count as crashed;
2. computes its fair share, ``ceil(stores / live replicas)``;
3. renews the store leases it holds;
4. releases the leases it holds beyond its share, last stores first, except those it is
   sweeping right now (released once that sweep ends): two replicas starting one after the
   other end up 2/2 on four stores;
5. tries the other stores' leases in name order while it holds fewer than its share. Each is
   the lease of :mod:`retentiond.state.lease`: free leases are taken at once, a dead holder's
   after the TTL (at once when it was a process on this machine). A lease it may not take now
   is still watched, so its TTL runs on this replica's clock all along.

When a replica dies its heartbeat and its store leases stop changing; after the TTL the others
count one replica less (a larger share) and take its stores: the same bound as before,
TTL + 2 x renew after its last renewal. The holder of a store stops sweeping it (after the
batch in flight) before anyone else may start, as with any lease. Shares are momentarily
uneven while replicas come and go (a new replica counts at once; a dead one only after the
TTL), never overlapping.

Two kinds of rows no replica of this release renews are watched on every tick as well (with
:meth:`retentiond.state.lease.SweepLease.watch`, on this replica's monotonic clock):

- the ``sweep`` row of releases before per-store leases (before state revision 0005). While
  its holder may be alive (renewed within the TTL, or a live process on this machine) it
  holds every store: this replica takes no store lease and releases those it holds (except
  while sweeping them). A rolling upgrade needs no stop of every old replica: the new ones
  wait until the old ones stop; the row is cleared once unchanged for the TTL;
- the leases of stores this replica's policy no longer has: once unchanged for the TTL (or
  of a dead process on this machine) they are cleared, so the run of a dead holder they name
  counts as crashed (:mod:`retentiond.state.runs`) and ``status`` no longer shows them held.
  A replica or one-shot command whose policy still has the store renews it: never cleared.

No lease for request passes: a request pass over a store is a sweep of that store, so the
store's holder does it; a request closes when the outcome stored over all replicas' sweeps
shows every one of its rules served (:func:`retentiond.state.cases.settle_served`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from retentiond.state.lease import STORE, SweepLease, Timings, here, holder_id, lease_t, view

REPLICA = "replica:"


class Replica:
    def __init__(self, engine: Engine, timings: Timings, stores: Iterable[str],
                 holder: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.timings = timings
        self.holder = holder or holder_id()
        self._clock = clock
        self.beat = SweepLease(engine, timings, self.holder, clock,
                               name=REPLICA + uuid.uuid4().hex[:16])
        self.leases: dict[str, SweepLease] = {}
        self.busy: set[str] = set()  # stores a sweep of this replica is sweeping now
        self.live = 1
        self.share = 0
        self._peers: dict[str, tuple[Any, float]] = {}  # heartbeat -> (version, first seen)
        self.old = SweepLease(engine, timings, self.holder, clock)  # the pre-0005 `sweep` row
        self.old_alive = False  # its holder may be sweeping every store: we take none
        self._orphans: dict[str, SweepLease] = {}  # leases of stores not in our policy
        self._lock = threading.Lock()
        self.set_stores(stores)

    # -- what the daemon asks -------------------------------------------------------------
    def held(self, store: str) -> bool:
        lease = self.leases.get(store)
        return lease is not None and lease.held()

    def held_stores(self) -> list[str]:
        return [s for s in sorted(self.leases) if self.held(s)]

    def claim(self) -> list[str]:
        """The stores this replica holds, marked busy until :meth:`done`: not released to
        rebalance while a sweep of them runs."""
        with self._lock:
            stores = self.held_stores()
            self.busy |= set(stores)
            return stores

    def done(self, stores: Iterable[str]) -> None:
        with self._lock:
            self.busy -= set(stores)

    def set_stores(self, stores: Iterable[str]) -> None:
        """The policy's stores (at start and after a reload)."""
        wanted = set(stores)
        with self._lock:
            for store in sorted(wanted - set(self.leases)):
                self.leases[store] = SweepLease(self.engine, self.timings, self.holder,
                                                self._clock, name=STORE + store)
            for store in sorted(set(self.leases) - wanted - self.busy):
                self.leases.pop(store).release()

    # -- one tick ---------------------------------------------------------------------------
    def tick(self) -> dict[str, str]:
        """Heartbeat, fair share, renew, rebalance, take: the outcome per store
        (``renewed``, ``acquired``, ``taken over``, ``released``, ``lost``, ``standby``)."""
        start = self._clock()
        self.beat.tick()
        self.live = self._count_live(start)
        self.old_alive = self.old.watch()
        self._clear_orphans()
        with self._lock:
            self.share = -(-len(self.leases) // self.live)
            limit = 0 if self.old_alive else self.share  # a live old daemon holds them all
            outcomes = {s: lease.tick() for s, lease in sorted(self.leases.items())
                        if lease.held()}
            mine = [s for s, o in outcomes.items() if o in ("renewed", "acquired")]
            for store in reversed(mine):
                if len(mine) <= limit:
                    break
                if store not in self.busy:
                    self.leases[store].release()
                    mine.remove(store)
                    outcomes[store] = "released"
            for store, lease in sorted(self.leases.items()):
                if store in outcomes:
                    continue
                outcomes[store] = lease.tick(take=len(mine) < limit)
                if outcomes[store] in ("acquired", "taken over", "renewed"):
                    mine.append(store)
        return outcomes

    def _count_live(self, start: float) -> int:
        with self.engine.connect() as conn:
            rows = conn.execute(select(lease_t).where(
                lease_t.c.name.startswith(REPLICA, autoescape=True))).all()
        live, dead = 1, []
        seen: dict[str, tuple[Any, float]] = {}
        for row in rows:
            if row.name == self.beat.name or row.holder is None:
                continue
            local = here(row.holder)
            before = self._peers.get(row.name)
            since = before[1] if before is not None and before[0] == row.version else start
            seen[row.name] = (row.version, since)
            if local is False or (local is None and start - since >= self.timings.ttl):
                dead.append((row.name, row.version))
            else:
                live += 1
        self._peers = seen
        if dead:
            with self.engine.begin() as conn:
                for name, version in dead:  # whoever comes first; the others find it gone
                    conn.execute(delete(lease_t).where(lease_t.c.name == name,
                                                       lease_t.c.version == version))
        return live

    def _clear_orphans(self) -> None:
        """Watch the held leases of stores not in this replica's policy; clear the stale."""
        with self.engine.connect() as conn:
            names = set(conn.execute(select(lease_t.c.name).where(
                lease_t.c.name.startswith(STORE, autoescape=True),
                lease_t.c.holder.is_not(None))).scalars())
        with self._lock:
            orphans = names - {STORE + s for s in self.leases}
        self._orphans = {n: self._orphans.get(n) or SweepLease(
            self.engine, self.timings, self.holder, self._clock, name=n) for n in orphans}
        for lease in self._orphans.values():
            lease.watch()

    def stop(self) -> None:
        """A clean stop: every store lease released (the others take them at once) and the
        heartbeat deleted (they count one replica less at once)."""
        with self._lock:
            for lease in self.leases.values():
                lease.release()
        with self.engine.begin() as conn:
            conn.execute(delete(lease_t).where(lease_t.c.name == self.beat.name))


def read_all(engine: Engine, stores: Iterable[str]) -> dict[str, Any]:
    """What ``status`` shows: every store's lease (None when free) and the live heartbeats."""
    with engine.connect() as conn:
        rows = {r.name: r for r in conn.execute(select(lease_t)).all()}
    return {
        "stores": {s: view(rows.get(STORE + s)) for s in stores},
        "replicas": sorted((view(r) or {}).get("holder") for name, r in rows.items()
                           if name.startswith(REPLICA) and r.holder is not None),
    }
