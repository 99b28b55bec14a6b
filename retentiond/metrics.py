"""Optional Prometheus metrics of ``retentiond serve`` (``metrics: {port: N, address: A}``).

Counters cover what this process did since it started (the Prometheus convention:
``rate()`` copes with restarts). Gauges about requests, holds, the last successful sweep and
the lease are read from the state database at scrape time, so every replica reports the same,
current values.

    retentiond_disposals_total{rule, action}   records disposed (purge: isolated records purged)
    retentiond_failures_total{rule}            records that could not be disposed
    retentiond_blocked_records{rule}           records the last time-based sweep found due but
                                               blocked (a RESTRICT foreign key, an Object
                                               Lock); request passes leave it alone
    retentiond_sweeps_total{kind, status}      sweeps by kind (scheduled, requests, catch-up)
                                               and outcome (ok, failed, interrupted, error)
    retentiond_last_success_timestamp_seconds  end of the last sweep that finished ok
    retentiond_requests_open / _overdue        erasure requests open, and open past due
    retentiond_holds_active                    legal holds in force
    retentiond_lease_held                      1 while this replica holds a store lease
    retentiond_state_up                        0 when the state database could not be read
    process_*                                  the process's CPU, memory and file descriptors
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Table, func, select
from sqlalchemy.engine import Engine

from retentiond.log import get_logger
from retentiond.policy.model import MetricsOptions
from retentiond.state.cases import list_holds, list_requests
from retentiond.state.models import Run
from retentiond.sweep import SweepReport

log = get_logger(__name__)
runs_t = cast(Table, Run.__table__)


class StateCollector:
    """Gauges read from the state database on every scrape."""

    def __init__(self, engine: Callable[[], Engine]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            values = read_state(self._engine())
        except Exception as exc:  # a scrape must answer even when the DB is down
            log.warning("metrics state read failed", error=type(exc).__name__)
            values = None
        yield GaugeMetricFamily("retentiond_state_up", "1 if the state database could be read",
                                value=0 if values is None else 1)
        for name, (doc, value) in (values or {}).items():
            if value is not None:
                yield GaugeMetricFamily(f"retentiond_{name}", doc, value=value)

    def describe(self) -> list[Any]:
        return []  # values are read lazily; nothing to describe at registration


def read_state(engine: Engine) -> dict[str, tuple[str, float | None]]:
    requests = list_requests(engine, open_only=True)
    holds = list_holds(engine, active_only=True)
    with engine.connect() as conn:
        last = conn.execute(select(func.max(runs_t.c.finished_at)).where(
            runs_t.c.status == "ok", runs_t.c.dry_run.is_(False))).scalar()
    return {
        "requests_open": ("Erasure requests not yet done", float(len(requests))),
        "requests_overdue": ("Open erasure requests past their due date",
                             float(sum(1 for r in requests if r["overdue"]))),
        "holds_active": ("Legal holds in force", float(len(holds))),
        "last_success_timestamp_seconds": (
            "Unix time at which the last successful sweep finished",
            last.timestamp() if last is not None else None),
    }


class Metrics:
    def __init__(self, engine: Callable[[], Engine]) -> None:
        self.registry = CollectorRegistry()
        self.disposals = Counter("retentiond_disposals", "Records disposed, by rule and action",
                                 ["rule", "action"], registry=self.registry)
        self.failures = Counter("retentiond_failures", "Records that could not be disposed",
                                ["rule"], registry=self.registry)
        self.sweeps = Counter("retentiond_sweeps", "Sweeps by kind and outcome",
                              ["kind", "status"], registry=self.registry)
        self.blocked = Gauge("retentiond_blocked_records",
                             "Records the last sweep found due but could not dispose: blocked "
                             "by a RESTRICT foreign key or an Object Lock", ["rule"],
                             registry=self.registry)
        self.lease_held = Gauge("retentiond_lease_held", "1 while this replica holds a store lease",
                                registry=self.registry)
        self.registry.register(StateCollector(engine))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        self._server: Any = None
        self._options: MetricsOptions | None = None
        self._lock = threading.Lock()

    def observe(self, report: SweepReport, kind: str) -> None:
        for r in report.rules:
            self.disposals.labels(rule=r.rule, action=r.action).inc(r.done)
            if r.purged:
                self.disposals.labels(rule=r.rule, action="purge").inc(r.purged)
            self.failures.labels(rule=r.rule).inc(r.failed)
            if kind != "requests":  # a request pass sees erasures only, not the backlog
                self.blocked.labels(rule=r.rule).set(getattr(r, "blocked", 0) or 0)
        status = "interrupted" if report.stopped else "failed" if report.exit_code else "ok"
        self.sweeps.labels(kind=kind, status=status).inc()

    def sweep_error(self, kind: str) -> None:
        self.sweeps.labels(kind=kind, status="error").inc()

    def serve(self, options: MetricsOptions | None) -> None:
        """Start, move or stop the HTTP endpoint to match the policy's ``metrics``."""
        with self._lock:
            if options == self._options:
                return
            self._stop()
            self._options = options
            if options is None:
                return
            try:
                self._server, _ = start_http_server(options.port, options.address,
                                                    registry=self.registry)
            except OSError as exc:
                log.error("metrics server failed", address=options.address, port=options.port,
                          error=exc.strerror)
                self._options = None
                return
            log.info("metrics listening", address=options.address, port=options.port)

    def close(self) -> None:
        with self._lock:
            self._stop()
            self._options = None

    def _stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
