"""``retentiond serve``: scheduled sweeps under systemd (SPEC section 8).

Threads: the main thread waits for signals and pings the watchdog; APScheduler's worker threads
run the jobs; one lock makes sure two sweeps of this process never overlap, and the store
leases (:mod:`retentiond.state.replicas`) that only one replica sweeps a store at a time: a
sweep covers the stores whose leases this replica holds (all of them when it is alone).

Jobs (in memory; retentiond's own tables hold the state):
- ``sweep``: the policy's ``schedule`` (cron, in ``timezone``), missed runs coalesced, one hour
  of misfire grace.
- ``requests``: open erasure requests only, every ``RETENTIOND_REQUEST_INTERVAL`` seconds
  (default 900), so deadlines are met whatever the schedule. Skipped while nothing is open.
- ``lease``: every ``RETENTIOND_LEASE_RENEW`` seconds, the heartbeat, and the store leases
  renewed, released beyond the fair share or taken up to it.
- ``catch-up``: one sweep as soon as this replica holds a store lease, after
  ``--sweep-at-start`` or after taking a lease over from a replica that died (its sweep may
  have been cut short).

systemd notify protocol (``NOTIFY_SOCKET``, abstract sockets included): ``READY=1`` once the
policy is loaded and the state database migrated; ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2``
while the scheduler runs its jobs; ``RELOADING=1`` + ``MONOTONIC_USEC`` then ``READY=1``
around a reload; ``STOPPING=1`` on shutdown; ``STATUS=`` with the last sweep's result.

Signals: ``SIGTERM``/``SIGINT`` stop after the batch in flight (the sweep writes its
checkpoint as usual), then exit 0. ``SIGHUP`` loads the policy into a fresh App; an invalid
one is logged with every error and the running one kept.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import FrameType
from typing import cast

import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from retentiond.app import App
from retentiond.errors import PolicyError, RetentiondError
from retentiond.log import get_logger, redact_url
from retentiond.metrics import Metrics
from retentiond.policy import Policy
from retentiond.state.cases import open_requests
from retentiond.state.db import make_engine
from retentiond.state.lease import Timings, seconds
from retentiond.state.models import Run
from retentiond.state.replicas import Replica
from retentiond.sweep import SweepReport, sweep

log = get_logger(__name__)
runs_t = cast(sa.Table, Run.__table__)

REQUEST_INTERVAL = 900.0  # seconds; SPEC 8: "at least every 15 minutes"
MISFIRE_GRACE = 3600  # a sweep that could not start on time still runs within the hour
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
NOTIFY_TIMEOUT = 1.0  # seconds a notification may wait for room in the manager's queue


class Notifier:
    """sd_notify(3) over the ``NOTIFY_SOCKET`` datagram socket; silent without one."""

    def __init__(self, address: str | None) -> None:
        self.address = None
        if address and address[0] in "/@":
            self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        self._warned = False

    def __call__(self, *lines: str) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # a full receive queue must not stall the caller (a lease renewal, the watchdog)
                self._sock.settimeout(NOTIFY_TIMEOUT)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            if not self._warned:  # once: the watchdog would repeat it every few seconds
                log.warning("sd_notify failed", error=exc.strerror)
            self._warned = True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2 / 1_000_000


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def cron(policy: Policy) -> CronTrigger:
    return CronTrigger.from_crontab(policy.schedule, timezone=policy.tz)


class Daemon:
    def __init__(self, app: App, *, sweep_at_start: bool = False,
                 env: Mapping[str, str] = os.environ) -> None:
        self.app = app
        self.notify = Notifier(env.get("NOTIFY_SOCKET"))
        self.watchdog = watchdog_interval(env)
        self.request_interval = seconds(env, "RETENTIOND_REQUEST_INTERVAL", REQUEST_INTERVAL)
        self.replica = Replica(make_engine(app.policy.state), Timings.from_env(env),
                               app.policy.stores)
        self.metrics = Metrics(lambda: self.app.state)
        self.cron = cron(app.policy)
        self.scheduler = BackgroundScheduler(timezone=UTC, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE})
        self.stopping = False
        self.catch_up = sweep_at_start
        self.sweep_lock = threading.Lock()
        self.retired: list[App] = []
        self.heartbeat = time.monotonic()
        self.last: tuple[str, SweepReport, datetime] | None = None
        self.last_error: str | None = None
        self._standby_of: dict[str, str | None] = {}
        self._old_holder: str | None = None  # of the pre-0005 `sweep` row, while it lives

    # -- life cycle ---------------------------------------------------------------------------
    def run(self) -> int:
        wake = self._install_signals()
        try:
            self._lease_job()
            self._start_jobs()
            self.metrics.serve(self.app.policy.metrics)
            self.notify("READY=1")
            log.info("serving", holder=self.replica.holder, schedule=self.app.policy.schedule,
                     timezone=self.app.policy.timezone, request_interval=self.request_interval)
            self._status()
            self._loop(wake)
        finally:
            self._shutdown()
            wake.close()
        return 0

    def _install_signals(self) -> socket.socket:
        rsock, wsock = socket.socketpair()
        for s in (rsock, wsock):
            s.setblocking(False)
        signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        self._wsock = wsock
        for signum in (*STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        return rsock

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        if signum in STOP_SIGNALS:
            self.stopping = True  # seen at once by the sweep's should_stop

    def _loop(self, wake: socket.socket) -> None:
        actions: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self._stop, signal.SIGINT: self._stop, signal.SIGHUP: self._reload}
        next_ping = time.monotonic()
        while not self.stopping:
            timeout = max(0.0, next_ping - time.monotonic()) if self.watchdog else 1.0
            for signum in _received(wake, timeout):
                actions.get(signum, lambda: None)()
            if self.watchdog and time.monotonic() >= next_ping:
                if self.healthy():
                    self.notify("WATCHDOG=1")
                next_ping = time.monotonic() + self.watchdog

    def _stop(self) -> None:
        self.stopping = True

    def _shutdown(self) -> None:
        self.stopping = True
        self.notify("STOPPING=1")
        log.info("stopping")
        if self.scheduler.running:
            waiter = threading.Thread(target=self.scheduler.shutdown, name="shutdown")
            waiter.start()
            while waiter.is_alive():  # the batch in flight finishes; keep the watchdog fed
                waiter.join(self.watchdog or 1.0)
                if waiter.is_alive() and self.watchdog:
                    self.notify("WATCHDOG=1")
        self._release_lease()
        self.metrics.close()
        for app in (*self.retired, self.app):
            app.close()
        self.replica.engine.dispose()
        signal.set_wakeup_fd(-1)
        self._wsock.close()
        log.info("stopped")
        self.notify.close()

    def _release_lease(self) -> None:
        try:
            held = self.replica.held_stores()
            self.replica.stop()
            if held:
                log.info("lease released", holder=self.replica.holder, stores=held)
        except Exception as exc:  # the others take over after the TTL anyway
            log.warning("lease release failed", error=type(exc).__name__)

    def healthy(self) -> bool:
        """The scheduler runs and has run the lease job recently."""
        limit = max(3 * self.replica.timings.renew, 60.0)
        return self.scheduler.running and time.monotonic() - self.heartbeat < limit

    # -- jobs ---------------------------------------------------------------------------------
    def _start_jobs(self) -> None:
        s = self.scheduler
        s.add_job(self._lease_job, IntervalTrigger(seconds=self.replica.timings.renew),
                  id="lease")
        s.add_job(self._sweep_job, self.cron, id="sweep", args=["scheduled"])
        s.add_job(self._sweep_job, IntervalTrigger(seconds=self.request_interval),
                  id="requests", args=["requests"])
        s.start()

    def _lease_job(self) -> None:
        try:
            outcomes = self.replica.tick()
        except Exception as exc:  # the leases lapse by themselves; retried next tick
            log.warning("lease check failed", error=type(exc).__name__)
            outcomes = {}
        finally:
            self.heartbeat = time.monotonic()
        self._on_lease(outcomes)

    def _on_lease(self, outcomes: dict[str, str]) -> None:
        held = bool(self.replica.held_stores())
        self.metrics.lease_held.set(1 if held else 0)
        changed = False
        old = self.replica.old.other if self.replica.old_alive else None
        if old != self._old_holder:  # a pre-upgrade daemon sweeps every store: we wait
            self._old_holder = old
            if old is not None:
                log.info("standby: the old sweep lease is held", lease_holder=old)
        for store, outcome in outcomes.items():
            other = self.replica.leases[store].other if store in self.replica.leases else None
            if outcome in ("acquired", "taken over", "lost", "released"):
                log.info(f"lease {outcome}", holder=self.replica.holder, store=store,
                         share=self.replica.share, replicas=self.replica.live)
                self._standby_of.pop(store, None)
                changed = True
            elif (outcome == "standby" and other is not None
                  and other != self._standby_of.get(store)):
                self._standby_of[store] = other
                log.info("standby", store=store, lease_holder=other)
                changed = True
        if changed:
            self._status()
        taken = set(outcomes.values())
        if "taken over" in taken or ("acquired" in taken and self._unfinished()):
            self.catch_up = True  # finish what a dead or stopped holder left undone
        if held and self.catch_up and not self.stopping:
            self.catch_up = False
            self.scheduler.add_job(self._sweep_job, id="catch-up", args=["catch-up"],
                                   replace_existing=True)

    def _unfinished(self) -> bool:
        """Whether the latest real run was cut short (stopped, or its process died: still
        ``running``, or already found ``crashed`` by another sweep)."""
        q = (sa.select(runs_t.c.status).where(runs_t.c.dry_run.is_(False))
             .order_by(runs_t.c.started_at.desc()).limit(1))
        with self.replica.engine.connect() as conn:
            return conn.execute(q).scalar() in ("running", "interrupted", "crashed")

    def _sweep_job(self, kind: str) -> None:
        time_based = kind != "requests"
        if self.stopping or not self.replica.held_stores():
            log.debug("sweep skipped", kind=kind, reason="stopping" if self.stopping
                      else "standby")
            return
        if not self.sweep_lock.acquire(blocking=time_based):
            return  # a sweep is running; it serves the open requests too
        try:
            if not self.should_stop():
                self._sweep(self.app, kind, time_based)
            self._close_retired()
        finally:
            self.sweep_lock.release()

    def _sweep(self, app: App, kind: str, time_based: bool) -> None:
        try:
            if not time_based and not open_requests(app.state):
                return
            log.info("sweep started", kind=kind)
            stores = self.replica.claim()
            try:
                # Alone (all stores held) exactly the sweep of a single daemon; otherwise only
                # the stores held, each stopping after its batch in flight if its lease lapses.
                report = sweep(app, dry_run=False, should_stop=self.should_stop,
                               time_based=time_based, holder=self.replica.holder,
                               stores=None if set(stores) >= set(app.policy.stores)
                               else stores,
                               store_stop=lambda store: not self.replica.held(store))
            finally:
                self.replica.done(stores)
        except Exception as exc:  # the daemon outlives a failed sweep
            self.last_error = str(exc) if isinstance(exc, RetentiondError) else type(exc).__name__
            log.error("sweep failed", kind=kind, error=self.last_error)
            self.metrics.sweep_error(kind)
            self._status()
            return
        self.last, self.last_error = (kind, report, datetime.now(UTC)), None
        self.metrics.observe(report, kind)
        totals = report.as_json()["totals"]
        log.info("sweep finished", kind=kind, run_id=report.run_id, status=_status_of(report),
                 **totals)
        self._status()

    def should_stop(self) -> bool:
        return self.stopping

    # -- reload -------------------------------------------------------------------------------
    def _reload(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")
        log.info("reloading policy", path=str(self.app.config_path))
        fresh = App(str(self.app.config_path), debug=self.app.debug)
        try:
            self._check(fresh)
        except Exception as exc:  # whatever is wrong with the new policy, keep the old one
            fresh.close()
            errors = exc.lines() if isinstance(exc, RetentiondError) else [type(exc).__name__]
            log.error("policy reload failed", path=str(self.app.config_path),
                      errors=[redact_url(line) for line in errors])
            self.notify("READY=1")
            self._status("reload failed, running policy kept")
            return
        old, self.app = self.app, fresh
        self.cron = cron(fresh.policy)
        self.scheduler.reschedule_job("sweep", trigger=self.cron)
        self.replica.set_stores(fresh.policy.stores)
        self.metrics.serve(fresh.policy.metrics)
        self._retire(old)
        log.info("policy reloaded", digest=fresh.policy.digest[:16],
                 rules=len(fresh.policy.rules), schedule=fresh.policy.schedule)
        self.notify("READY=1")
        self._status()

    def _check(self, fresh: App) -> None:
        """Load and validate the policy, open (and migrate) its state database."""
        policy = fresh.policy
        if policy.state != self.app.policy.state:
            raise PolicyError([("state", "changing the state database needs a restart "
                                "(systemctl restart retentiond)")])
        cron(policy)
        fresh.state  # noqa: B018 - opens and migrates the state database

    def _retire(self, old: App) -> None:
        self.retired.append(old)
        if self.sweep_lock.acquire(blocking=False):
            try:
                self._close_retired()
            finally:
                self.sweep_lock.release()

    def _close_retired(self) -> None:
        while self.retired:
            self.retired.pop().close()

    # -- STATUS= ------------------------------------------------------------------------------
    def _status(self, note: str | None = None) -> None:
        self.notify(f"STATUS={self.status_text(note)}")

    def status_text(self, note: str | None = None) -> str:
        held = self.replica.held_stores()
        others = sorted({o for o in self._standby_of.values() if o})
        role = (f"active (stores {', '.join(held)})" if held and len(held) < len(
            self.replica.leases) else "active" if held else
            f"standby (lease held by {', '.join(others)})" if others else "standby")
        parts = [role]
        if self.last_error is not None:
            parts.append(f"last sweep failed: {self.last_error}")
        elif self.last is not None:
            kind, report, at = self.last
            t = report.as_json()["totals"]
            parts.append(f"last {kind} sweep {_status_of(report)} at "
                         f"{at.isoformat(timespec='seconds')}: {t['done']} disposed, "
                         f"{t['failed']} failed, {t['held']} held, {t['kept']} kept")
        nxt = self.cron.get_next_fire_time(None, datetime.now(self.app.policy.tz))
        if nxt is not None:
            parts.append(f"next sweep {nxt.isoformat(timespec='minutes')}")
        if note:
            parts.append(note)
        return "; ".join(parts)


def _status_of(report: SweepReport) -> str:
    return "interrupted" if report.stopped else "failed" if report.exit_code else "ok"


def _received(wake: socket.socket, timeout: float) -> list[int]:
    """Signal numbers written to the wake-up socket within ``timeout`` seconds."""
    ready, _, _ = select.select([wake], [], [], timeout)
    if not ready:
        return []
    try:
        return list(wake.recv(64))
    except BlockingIOError:
        return []


def serve(app: App, *, sweep_at_start: bool = False) -> int:
    """Load the policy, migrate the state database, then run until SIGTERM."""
    app.policy  # noqa: B018 - a broken policy fails here, before READY=1 (exit 2)
    app.state  # noqa: B018 - unreachable state database: exit 3
    return Daemon(app, sweep_at_start=sweep_at_start).run()
