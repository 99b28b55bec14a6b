"""What a sweep did for each open erasure request, and settling them afterwards.

A request is ``done`` once a sweep has applied it to every rule of its subject kind, ``partial``
when some records were kept by a legal obligation (the outcome names the rules, counts and
legal basis), and stays ``open`` while a hold blocks it or a rule failed. A hold on a whole rule
or store blocks only the requests whose subject has records it protects.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from retentiond.planner import OpenRequest, has_subject
from retentiond.policy.model import Rule
from retentiond.state import cases


class RequestTracker:
    def __init__(self, requests: tuple[OpenRequest, ...], rules: tuple[Rule, ...]) -> None:
        self.requests = requests
        self.rules = rules
        self.outcome: dict[str, dict[str, dict[str, Any]]] = {q.id: {} for q in requests}
        self.blocked_ids: set[str] = set()
        self.failed_ids: set[str] = set()
        self.status: dict[str, str] = {}

    def _entry(self, q: OpenRequest, rule: Rule) -> dict[str, Any]:
        return self.outcome[q.id].setdefault(rule.id, {"disposed": 0, "kept": 0})

    def disposed(self, q: OpenRequest, rule: Rule, n: int) -> None:
        self._entry(q, rule)["disposed"] += n

    def kept(self, q: OpenRequest, rule: Rule, n: int) -> None:
        entry = self._entry(q, rule)
        entry["kept"] += n
        entry["legal_basis"] = rule.legal_basis

    def blocked(self, q: OpenRequest, rule: Rule) -> None:
        self._entry(q, rule)["held"] = True
        self.blocked_ids.add(q.id)

    def refused(self, q: OpenRequest, rule: Rule, n: int, by: list[dict[str, Any]]) -> None:
        """The store refuses to dispose ``n`` of the subject's records: rows of other tables
        refer to them through RESTRICT / NO ACTION foreign keys (``by``). The request stays
        open, its outcome saying by what."""
        entry = self._entry(q, rule)
        entry["blocked"] = entry.get("blocked", 0) + n
        entry["blocked_by"] = by
        self.blocked_ids.add(q.id)

    def held(self, q: OpenRequest, rule: Rule, n: int) -> None:
        """A hold on the whole rule protects ``n`` of the subject's records: it blocks the
        request only if there are any; otherwise the rule is served, with nothing to do."""
        if n:
            self.blocked(q, rule)
        else:
            self.disposed(q, rule, 0)

    def failed(self, rule: Rule) -> None:
        for q in self.requests:
            if has_subject(rule) and q.subject_kind == rule.subject_kind:
                self._entry(q, rule)["failed"] = True
                self.failed_ids.add(q.id)

    def settle(self, state: Engine, run_id: str) -> None:
        """After a real sweep over every rule: close what is complete, note progress. Both
        merge this sweep's outcome into the stored one, so a request served over several
        sweeps keeps (and ledgers, when it closes) everything that was done for it."""
        for q in self.requests:
            outcome = self.outcome[q.id]
            if q.id in self.blocked_ids or q.id in self.failed_ids:
                cases.record_progress(state, q.id, outcome)
                continue
            self.status[q.id] = cases.complete_request(state, q, outcome, run_id)

    def as_json(self, now: datetime) -> list[dict[str, Any]]:
        out = []
        for q in self.requests:
            status = self.status.get(q.id) or ("overdue" if q.due_at <= now else "open")
            out.append({"id": q.id, "subject_kind": q.subject_kind, "status": status,
                        "due_at": q.due_at.isoformat()})
        return out
