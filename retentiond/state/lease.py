"""A lease: of several ``retentiond serve`` replicas sharing one state database, exactly one
sweeps a store at a time, and another takes over when it dies.

One row of the ``lease`` table per store (``name = "store:<store>"``, :func:`store_lease`) names
the holder and carries a version that the holder bumps on every renewal (how replicas share the
stores: :mod:`retentiond.state.replicas`). Every write is a compare-and-set on that version, so
two replicas can never both win it.

- A free lease (``holder`` NULL, after a clean shutdown) is taken at once.
- A held lease is taken over when a replica has watched the *same* version for ``ttl`` seconds
  on its own monotonic clock: the holder stopped renewing, it is dead or cut off. Like
  Kubernetes' leader election, no decision depends on the wall clocks of the replicas agreeing;
  ``expires_at`` is written for people (``retentiond status``), never read.
- A holder on this machine whose process is gone (``kill -9``, a crashed one-shot ``run``) is
  replaced at once: a dead process cannot be sweeping. "This machine" is the host name, the
  boot id and the pid namespace (:func:`this_host`), so containers that share a host name but
  not their pids are other hosts, judged by the TTL.
- The holder trusts its lease only until ``ttl - renew`` seconds after it *started* its last
  successful renewal, so it stops sweeping (after the batch in flight) before anyone else may
  start, even when the state database is unreachable.

``retentiond run`` (and ``backup restored``) take the leases of the stores they sweep for the
length of their work (:func:`one_shot`), so the timer, a manual run and the daemon never sweep
one store at once. A one-shot
command refuses (exit 3) once it knows the holder is alive (a live process on this machine, or
a renewal seen) and ``--wait`` seconds have passed; a holder that stays silent is taken over
after the TTL, as a replica would.

Upgrades: releases before per-store leases (state revision 0004) hold one ``sweep`` row for
every store. Migration 0005 leaves it, and while its holder may be alive (it is renewed, or a
live process on this machine holds it) it counts as holding every store: replicas and one-shot
commands take no store lease (:meth:`SweepLease.watch`; a one-shot command waits or refuses as
for a held store lease). Once it has been unchanged for the TTL (or its process on this
machine is gone) whoever watches it clears it with a compare-and-set, and the store leases are
taken as usual: old replicas are respected until they stop.

A row rather than a PostgreSQL advisory lock: it works the same on SQLite (one host, several
processes) and PostgreSQL, needs no long-lived session, and ``status`` can show who holds it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from retentiond.errors import LeaseBusy, UsageError
from retentiond.log import get_logger
from retentiond.state.models import Lease

log = get_logger(__name__)
lease_t = cast(Table, Lease.__table__)
NAME = "sweep"  # the one lease of releases before per-store leases; kept for tests and tools
STORE = "store:"


def store_lease(store: str) -> str:
    """The lease row of a store (store names are at most 64 characters)."""
    return STORE + store


def describe(name: str) -> str:
    """How messages name a lease: ``the lease of store app``."""
    if name == NAME:
        return "the old sweep lease, which covers every store (of a release before per-store " \
            "leases)"
    return f"the lease of store {name[len(STORE):]}" if name.startswith(STORE) else \
        f"the {name} lease"


@dataclass(frozen=True)
class Timings:
    """``ttl``: how long an unrenewed lease stays with its holder; ``renew``: how often every
    replica renews or tries to take the lease. A dead holder is replaced within
    ``ttl + 2 * renew`` of its last renewal."""

    ttl: float = 30.0
    renew: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Timings:
        """``RETENTIOND_LEASE_TTL`` and ``RETENTIOND_LEASE_RENEW``, in seconds."""
        ttl = seconds(env, "RETENTIOND_LEASE_TTL", cls.ttl)
        renew = seconds(env, "RETENTIOND_LEASE_RENEW", min(cls.renew, ttl / 3))
        if renew >= ttl:
            raise UsageError(f"RETENTIOND_LEASE_RENEW ({renew:g}) must be shorter than "
                             f"RETENTIOND_LEASE_TTL ({ttl:g})")
        return cls(ttl, renew)


def seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds from the environment."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UsageError(f"{name}={raw!r}: expected a positive number of seconds")
    return value


def holder_id() -> str:
    """``host:pid:random``, unique per process start (``host`` as :func:`this_host`)."""
    return f"{this_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def this_host() -> str:
    """``name~boot.pidns``: the host name, this boot's id and the pid namespace. Two holders
    with the same value see each other's pids; anything else is another host."""
    return f"{socket.gethostname()[:48]}~{_read('/proc/sys/kernel/random/boot_id')[:8]}." \
           f"{_pid_namespace()}"


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read(64).strip().replace("-", "")
    except OSError:
        return "0"


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def host_pid(holder: str | None) -> tuple[str | None, int | None]:
    """The host and pid of a ``host:pid:random`` holder id (None, None if it is not one)."""
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


def here(holder: str | None) -> bool | None:
    """For a holder on this machine, whether its process is alive; None for another host."""
    host, pid = host_pid(holder)
    if host != this_host() or pid is None:
        return None
    return pid_alive(pid)


class SweepLease:
    def __init__(self, engine: Engine, timings: Timings, holder: str | None = None,
                 clock: Callable[[], float] = time.monotonic, *, name: str = NAME) -> None:
        self.name = name
        self.engine = engine
        self.timings = timings
        self.holder = holder or holder_id()
        self._clock = clock
        self._valid_until = 0.0
        self._seen: tuple[str | None, int] | None = None
        self._seen_at = 0.0
        self.other: str | None = None  # the holder last seen, when it is not us
        self.other_alive = False  # that holder renewed while we watched, or lives here

    def held(self) -> bool:
        return self._clock() < self._valid_until

    def tick(self, *, take: bool = True) -> str:
        """Renew or try to take the lease. Returns ``renewed``, ``acquired`` (it was free),
        ``taken over`` (from a holder that stopped renewing), ``lost`` or ``standby``. With
        ``take=False`` a lease that could be taken is only watched (``standby``): a replica
        at its fair share keeps timing the others' renewals without taking more."""
        start = self._clock()
        was_held = self.held()
        with self.engine.begin() as conn:
            row = _row(conn, self.name)
            outcome = self._decide(conn, row, start, take)
        if outcome == "renewed" and not was_held:
            outcome = "acquired"  # ours all along, but we could not renew it for a while
        if outcome in ("renewed", "acquired", "taken over"):
            self._valid_until = start + self.timings.ttl - self.timings.renew
            self.other = None
        elif was_held:
            self._valid_until = 0.0
            outcome = "lost"
        return outcome

    def _decide(self, conn: Connection, row: Any, start: float, take: bool) -> str:
        if row.holder == self.holder:
            return "renewed" if self._cas(conn, row.version, acquired=False) else "lost"
        if row.holder is None:
            if row.holder != self.other:
                self.other, self.other_alive = None, False
            return "acquired" if take and self._cas(conn, row.version, acquired=True) \
                else "standby"
        if row.holder != self.other:
            self.other, self.other_alive = row.holder, False
        local = here(row.holder)
        if local is False:
            return "taken over" if take and self._cas(conn, row.version, acquired=True) \
                else "standby"
        if self._seen != (row.holder, row.version):
            self.other_alive = local is True or (self._seen is not None
                                                 and self._seen[0] == row.holder)
            self._seen, self._seen_at = (row.holder, row.version), start
            return "standby"
        self.other_alive = self.other_alive or local is True
        if start - self._seen_at < self.timings.ttl or not take:
            return "standby"
        return "taken over" if self._cas(conn, row.version, acquired=True) else "standby"

    def _cas(self, conn: Connection, version: int, *, acquired: bool) -> bool:
        now = datetime.now(UTC)
        values: dict[str, Any] = {"holder": self.holder, "version": version + 1,
                                  "renewed_at": now,
                                  "expires_at": now + timedelta(seconds=self.timings.ttl)}
        if acquired:
            values["acquired_at"] = now
        res = conn.execute(update(lease_t).where(lease_t.c.name == self.name,
                                                 lease_t.c.version == version).values(**values))
        return res.rowcount == 1

    def watch(self) -> bool:
        """For a lease nobody of this release takes (the ``sweep`` row of releases before
        per-store leases, the lease of a store removed from the policy): whether its holder
        may still be sweeping. A holder is timed exactly as :meth:`tick` times another
        holder (``other``, ``other_alive``); once it is a dead process on this machine, or its
        version has stayed the same for the TTL on this process's clock, the row is cleared
        (compare-and-set: holder NULL, version + 1) and False returned. A free row: False."""
        start = self._clock()
        with self.engine.begin() as conn:
            row = conn.execute(select(lease_t).where(lease_t.c.name == self.name)).first()
            if row is None or row.holder is None:
                self.other, self.other_alive = None, False
                return False
            if row.holder == self.holder:
                return True  # ours: never cleared by ourselves
            if row.holder != self.other:
                self.other, self.other_alive = row.holder, False
            local = here(row.holder)
            if local is not False:
                if self._seen != (row.holder, row.version):
                    self.other_alive = local is True or (self._seen is not None
                                                         and self._seen[0] == row.holder)
                    self._seen, self._seen_at = (row.holder, row.version), start
                    return True
                self.other_alive = self.other_alive or local is True
                if start - self._seen_at < self.timings.ttl:
                    return True
            cleared = conn.execute(update(lease_t).where(
                lease_t.c.name == self.name, lease_t.c.version == row.version).values(
                holder=None, version=row.version + 1, expires_at=None)).rowcount == 1
        if not cleared:
            return True  # it changed meanwhile: watched again next time
        log.info("stale lease cleared", lease=self.name, lease_holder=row.holder)
        self.other, self.other_alive = None, False
        return False

    def release(self) -> bool:
        """Give the lease up (clean shutdown) so another replica takes it at once."""
        self._valid_until = 0.0
        with self.engine.begin() as conn:
            res = conn.execute(update(lease_t).where(
                lease_t.c.name == self.name, lease_t.c.holder == self.holder).values(
                holder=None, version=lease_t.c.version + 1, expires_at=None))
        return res.rowcount == 1


class LeaseGroup:
    """Several leases taken and held together by one holder: a one-shot command's stores.
    Taken in name order, so two commands never wait on each other crosswise for long. Store
    leases are taken only while the ``sweep`` row of releases before per-store leases is free
    or stale (:meth:`SweepLease.watch`): a live pre-upgrade daemon holds every store."""

    def __init__(self, engine: Engine, timings: Timings, names: Sequence[str]) -> None:
        self.holder = holder_id()
        self.leases = [SweepLease(engine, timings, self.holder, name=n)
                       for n in sorted(set(names))]
        self.old = None if NAME in names else SweepLease(engine, timings, self.holder)
        self._waiting: list[SweepLease] = []

    def held(self) -> bool:
        return all(lease.held() for lease in self.leases)

    def tick(self) -> bool:
        """Renew the leases held, try the others in name order (none after the first it
        cannot take: only watched, so two groups never hold each other's leases crosswise);
        whether this tick holds them all."""
        self._waiting = []
        if self.old is not None and self.old.watch():
            self._waiting.append(self.old)  # every store lease only watched meanwhile
        for lease in self.leases:
            if lease.tick(take=not self._waiting) not in ("acquired", "taken over", "renewed"):
                self._waiting.append(lease)
        return not self._waiting

    def waiting_on(self) -> SweepLease:
        """The first lease the last tick could not take."""
        return self._waiting[0]

    def release(self) -> None:
        for lease in self.leases:
            lease.release()


@contextmanager
def one_shot(engine: Engine, timings: Timings, *, wait: float, names: Sequence[str] = (NAME,),
             sleep: Callable[[float], None] = time.sleep) -> Iterator[LeaseGroup]:
    """Hold the leases ``names`` (a sweep's stores) for one command: take them, renew them
    every ``timings.renew`` seconds in a background thread, release them at the end. While
    another sweeper holds one: :class:`LeaseBusy` once that sweeper is known to be alive and
    ``wait`` seconds have passed; a silent holder is taken over after ``timings.ttl``.
    ``held()`` turns False when renewals fail for too long: the caller stops after the batch
    in flight."""
    group = LeaseGroup(engine, timings, names)
    deadline = time.monotonic() + wait
    try:
        while not group.tick():
            lease = group.waiting_on()
            if lease.other_alive and time.monotonic() >= deadline:
                raise LeaseBusy(
                    f"another sweeper holds {describe(lease.name)} ({lease.other}) and is "
                    "alive; it never sweeps beside this one. Retry when it is done (a running "
                    "daemon holds it while it lives), or wait for it with --wait SECONDS")
            sleep(timings.renew if lease.other_alive else min(timings.renew, 1.0))
    except BaseException:
        _release(group)  # what was taken meanwhile is free again at once
        raise
    done = threading.Event()

    def renew() -> None:
        while not done.wait(timings.renew):
            try:
                group.tick()
            except Exception as exc:  # the lease lapses by itself; retried next tick
                log.warning("lease renewal failed", error=type(exc).__name__)

    thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield group
    finally:
        done.set()
        thread.join()
        _release(group)


def _release(group: LeaseGroup) -> None:
    try:
        group.release()
    except Exception as exc:  # unreleased, it is taken over once it expires
        log.warning("lease release failed", error=type(exc).__name__)


def _row(conn: Connection, name: str) -> Any:
    row = conn.execute(select(lease_t).where(lease_t.c.name == name)).first()
    if row is not None:
        return row
    try:  # a store's row is made the first time someone asks for it
        with conn.begin_nested():
            conn.execute(insert(lease_t).values(name=name, holder=None, version=0))
    except IntegrityError:
        pass
    return conn.execute(select(lease_t).where(lease_t.c.name == name)).one()


def read(engine: Engine, name: str = NAME) -> dict[str, Any] | None:
    """A lease as ``status`` shows it (None when nobody holds it)."""
    with engine.connect() as conn:
        row = conn.execute(select(lease_t).where(lease_t.c.name == name)).first()
    return view(row)


def view(row: Any) -> dict[str, Any] | None:
    if row is None or row.holder is None:
        return None
    return {"holder": row.holder, "acquired_at": _iso(row.acquired_at),
            "renewed_at": _iso(row.renewed_at), "expires_at": _iso(row.expires_at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
