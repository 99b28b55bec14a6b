"""Where failures show: the blocked-records gauge and ``status``'s problems of a run summary."""

from __future__ import annotations

from datetime import UTC, datetime

from retentiond.audit.problems import rule_problems as problems
from retentiond.executor import RuleResult
from retentiond.metrics import Metrics
from retentiond.sweep import SweepReport


def _report(blocked: int | None) -> SweepReport:
    result = RuleResult("orders", "app", "orders", "delete", due=5, done=5)
    if blocked is not None:
        object.__setattr__(result, "blocked", blocked)
    return SweepReport("r1", False, datetime(2026, 11, 22, tzinfo=UTC), rules=[result])


def _gauge(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("retentiond_blocked_records", {"rule": "orders"})


def test_blocked_gauge_is_set_by_sweeps_and_left_alone_by_request_passes() -> None:
    metrics = Metrics(lambda: None)  # type: ignore[arg-type,return-value]  # never scraped here
    metrics.observe(_report(3), "scheduled")
    assert _gauge(metrics) == 3.0
    metrics.observe(_report(0), "requests")  # erasures only: says nothing of the backlog
    assert _gauge(metrics) == 3.0
    metrics.observe(_report(None), "catch-up")  # a result without a blocked count: 0
    assert _gauge(metrics) == 0.0


def test_problems_of_a_summary_name_failed_and_blocked_rules_only() -> None:
    summary = {"rules": [
        {"rule": "fine", "due": 4, "done": 4, "failed": 0},
        {"rule": "broken", "due": 2, "done": 0, "failed": 2, "error": "store app unreachable"},
        {"rule": "orders", "due": 3, "done": 1, "failed": 0, "blocked": 2,
         "blocked_by": [{"constraint": "fk_lines_order", "table": "lines", "count": 2}]},
        {"rule": "old", "failed": 0},  # a run recorded before blocked was counted
    ]}
    assert problems(summary) == [
        {"rule": "broken", "failed": 2, "blocked": 0, "blocked_by": [],
         "error": "store app unreachable"},
        {"rule": "orders", "failed": 0, "blocked": 2,
         "blocked_by": [{"constraint": "fk_lines_order", "table": "lines", "count": 2}],
         "error": None}]
    assert problems({}) == []
