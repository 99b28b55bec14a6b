"""The sweep lease: of several ``retentiond serve`` replicas sharing one state database, exactly
one sweeps at a time, and another takes over when it dies.

One row of the ``lease`` table (``name = "sweep"``) names the holder and carries a version
that the holder bumps on every renewal. Every write is a compare-and-set on that version, so
two replicas can never both win it.

- A free lease (``holder`` NULL, after a clean shutdown) is taken at once.
- A held lease is taken over when a replica has watched the *same* version for ``ttl`` seconds
  on its own monotonic clock: the holder stopped renewing, it is dead or cut off. Like
  Kubernetes' leader election, no decision depends on the wall clocks of the replicas agreeing;
  ``expires_at`` is written for people (``retentiond status``), never read.
- A holder on this host whose process is gone (``kill -9``, a crashed one-shot ``run``) is
  replaced at once: a dead process cannot be sweeping.
- The holder trusts its lease only until ``ttl - renew`` seconds after it *started* its last
  successful renewal, so it stops sweeping (after the batch in flight) before anyone else may
  start, even when the state database is unreachable.

``retentiond run`` (and ``backup restored``) take the same lease for the length of their work
(:func:`one_shot`), so the timer, a manual run and the daemon never sweep at once: a one-shot
command waits up to ``--wait`` seconds for it, then refuses (exit 3).

A row rather than a PostgreSQL advisory lock: it works the same on SQLite (one host, several
processes) and PostgreSQL, needs no long-lived session, and ``status`` can show who holds it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
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
NAME = "sweep"


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
    """``host:pid:random``, unique per process start."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SweepLease:
    def __init__(self, engine: Engine, timings: Timings, holder: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.timings = timings
        self.holder = holder or holder_id()
        self._clock = clock
        self._valid_until = 0.0
        self._seen: tuple[str | None, int] | None = None
        self._seen_at = 0.0
        self.other: str | None = None  # the holder last seen, when it is not us

    def held(self) -> bool:
        return self._clock() < self._valid_until

    def tick(self) -> str:
        """Renew or try to take the lease. Returns ``renewed``, ``acquired`` (it was free),
        ``taken over`` (from a holder that stopped renewing), ``lost`` or ``standby``."""
        start = self._clock()
        was_held = self.held()
        with self.engine.begin() as conn:
            row = _row(conn)
            outcome = self._decide(conn, row, start)
        if outcome == "renewed" and not was_held:
            outcome = "acquired"  # ours all along, but we could not renew it for a while
        if outcome in ("renewed", "acquired", "taken over"):
            self._valid_until = start + self.timings.ttl - self.timings.renew
            self.other = None
        elif was_held:
            self._valid_until = 0.0
            outcome = "lost"
        return outcome

    def _decide(self, conn: Connection, row: Any, start: float) -> str:
        if row.holder == self.holder:
            return "renewed" if self._cas(conn, row.version, acquired=False) else "lost"
        if row.holder is None:
            return "acquired" if self._cas(conn, row.version, acquired=True) else "standby"
        self.other = row.holder
        if _dead_here(row.holder):
            return "taken over" if self._cas(conn, row.version, acquired=True) else "standby"
        if self._seen != (row.holder, row.version):
            self._seen, self._seen_at = (row.holder, row.version), start
            return "standby"
        if start - self._seen_at < self.timings.ttl:
            return "standby"
        return "taken over" if self._cas(conn, row.version, acquired=True) else "standby"

    def _cas(self, conn: Connection, version: int, *, acquired: bool) -> bool:
        now = datetime.now(UTC)
        values: dict[str, Any] = {"holder": self.holder, "version": version + 1,
                                  "renewed_at": now,
                                  "expires_at": now + timedelta(seconds=self.timings.ttl)}
        if acquired:
            values["acquired_at"] = now
        res = conn.execute(update(lease_t).where(lease_t.c.name == NAME,
                                                 lease_t.c.version == version).values(**values))
        return res.rowcount == 1

    def release(self) -> bool:
        """Give the lease up (clean shutdown) so another replica takes it at once."""
        self._valid_until = 0.0
        with self.engine.begin() as conn:
            res = conn.execute(update(lease_t).where(
                lease_t.c.name == NAME, lease_t.c.holder == self.holder).values(
                holder=None, version=lease_t.c.version + 1, expires_at=None))
        return res.rowcount == 1


def _dead_here(holder: str) -> bool:
    """The holder ran on this host and its process is gone."""
    from retentiond.state.runs import host_pid, pid_alive, this_host

    host, pid = host_pid(holder)
    return host == this_host() and pid is not None and not pid_alive(pid)


@contextmanager
def one_shot(engine: Engine, timings: Timings, *, wait: float,
             sleep: Callable[[float], None] = time.sleep) -> Iterator[SweepLease]:
    """Hold the sweep lease for one command: take it (waiting up to ``wait`` seconds while
    another sweeper holds it, then :class:`LeaseBusy`), renew it every ``timings.renew``
    seconds in a background thread, release it at the end. ``lease.held()`` turns False
    when renewals fail for too long: the caller stops after the batch in flight."""
    lease = SweepLease(engine, timings)
    deadline = time.monotonic() + wait
    while lease.tick() not in ("acquired", "taken over", "renewed"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise LeaseBusy(f"another sweeper holds the sweep lease ({lease.other}); a run "
                            "never sweeps beside it. Retry later, or wait for it with "
                            "`run --wait SECONDS`")
        sleep(min(timings.renew, left))
    done = threading.Event()

    def renew() -> None:
        while not done.wait(timings.renew):
            try:
                lease.tick()
            except Exception as exc:  # the lease lapses by itself; retried next tick
                log.warning("lease renewal failed", error=type(exc).__name__)

    thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        done.set()
        thread.join()
        try:
            lease.release()
        except Exception as exc:  # unreleased, it is taken over once it expires
            log.warning("lease release failed", error=type(exc).__name__)


def _row(conn: Connection) -> Any:
    row = conn.execute(select(lease_t).where(lease_t.c.name == NAME)).first()
    if row is not None:
        return row
    try:  # migrated databases have the row; recreate it if someone deleted it
        with conn.begin_nested():
            conn.execute(insert(lease_t).values(name=NAME, holder=None, version=0))
    except IntegrityError:
        pass
    return conn.execute(select(lease_t).where(lease_t.c.name == NAME)).one()


def read(engine: Engine) -> dict[str, Any] | None:
    """The lease as ``status`` shows it (None when nobody holds it)."""
    with engine.connect() as conn:
        row = conn.execute(select(lease_t).where(lease_t.c.name == NAME)).first()
    if row is None or row.holder is None:
        return None
    return {"holder": row.holder, "acquired_at": _iso(row.acquired_at),
            "renewed_at": _iso(row.renewed_at), "expires_at": _iso(row.expires_at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
