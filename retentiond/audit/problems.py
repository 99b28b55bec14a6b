"""What went wrong in a period, read from the runs' summaries (``runs.summary``, the JSON of
``run --json``): the audit report's Problems section and ``status``'s last-sweep problems.

- rules that failed or had blocked records, per sweep, with the constraints that blocked them;
- rules whose backlog (``failed + blocked``: records past retention still present) grows from
  sweep to sweep: its latest run of non-decreasing values ends higher than it started;
- the verdict: the backlog of the latest sweep in the period.

Runs recorded before ``blocked`` was counted have no such field: it counts as 0. Request passes
(``requests_only``) serve erasures only, so they show failures but never count as a sweep of
the backlog. Open requests past their due date are read from the requests table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.engine import Engine

from retentiond.state.cases import list_requests
from retentiond.state.models import Run

runs_t = cast(Table, Run.__table__)


def rule_problems(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The rules of one run summary that failed or had blocked records."""
    out = []
    for r in summary.get("rules") or ():
        failed, blocked = _int(r.get("failed")), _int(r.get("blocked"))
        if failed or blocked or r.get("error"):
            out.append({"rule": r.get("rule"), "failed": failed, "blocked": blocked,
                        "blocked_by": r.get("blocked_by") or [], "error": r.get("error")})
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


@dataclass
class Problems:
    failing: list[dict[str, Any]] = field(default_factory=list)  # + run_id, at per sweep
    streaks: dict[str, list[int]] = field(default_factory=dict)  # rule -> backlog streak
    latest: dict[str, Any] | None = None  # {run_id, at, left} of the latest sweep
    overdue: list[dict[str, Any]] = field(default_factory=list)

    @property
    def growing(self) -> dict[str, list[int]]:
        return {rule: s for rule, s in self.streaks.items() if len(s) > 1 and s[-1] > s[0]}

    @property
    def verdict(self) -> str:
        if self.latest is None:
            return "no sweep in this period"
        left = self.latest["left"]
        if not left:
            return "all due records disposed"
        return f"{left} record{'s' if left != 1 else ''} past retention still present, " \
               "see Problems"

    def add(self, run_id: str, at: datetime, summary: dict[str, Any]) -> None:
        self.failing += [{**p, "run_id": run_id, "at": at} for p in rule_problems(summary)]
        if summary.get("requests_only"):
            return
        left = 0
        for r in summary.get("rules") or ():
            backlog = _int(r.get("failed")) + _int(r.get("blocked"))
            left += backlog
            streak = self.streaks.setdefault(str(r.get("rule")), [])
            if streak and backlog < streak[-1]:
                streak.clear()
            streak.append(backlog)
            del streak[1:-8]  # the start and the recent values are enough to show
        self.latest = {"run_id": run_id, "at": at, "left": left}


def collect(engine: Engine, since: datetime | None, until: datetime | None) -> Problems:
    q = (select(runs_t.c.id, runs_t.c.started_at, runs_t.c.summary)
         .where(runs_t.c.dry_run.is_(False), runs_t.c.summary.is_not(None))
         .order_by(runs_t.c.started_at))
    if since is not None:
        q = q.where(runs_t.c.started_at >= since)
    if until is not None:
        q = q.where(runs_t.c.started_at < until)
    found = Problems()
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=200).execute(q):
            try:
                summary = json.loads(row.summary)
            except ValueError:
                continue
            if isinstance(summary, dict):
                found.add(row.id, row.started_at, summary)
    found.overdue = list_requests(engine, overdue_only=True)
    return found
