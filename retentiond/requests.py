"""What a sweep did for each open erasure request, and settling them afterwards.

A request is ``done`` once a sweep has applied it to every rule of its subject kind, ``partial``
when some records were kept by a legal obligation (the outcome names the rules, counts and
legal basis), and stays ``open`` while a hold blocks it or a rule failed. A hold on a whole rule
or store blocks only the requests whose subject has records it protects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from datetime import datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.engine import Engine

from retentiond.planner import OpenRequest, has_subject
from retentiond.policy.model import Rule
from retentiond.state import cases

P = ParamSpec("P")
T = TypeVar("T")


def _locked(method: Callable[P, T]) -> Callable[P, T]:
    """Under the tracker's lock: the stores of one sweep may be swept by several threads."""

    @wraps(method)
    def inner(*args: P.args, **kwargs: P.kwargs) -> T:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return inner


class RequestTracker:
    def __init__(self, requests: tuple[OpenRequest, ...], rules: tuple[Rule, ...]) -> None:
        self._lock = threading.RLock()
        self.requests = requests
        self.rules = rules
        self.outcome: dict[str, dict[str, dict[str, Any]]] = {q.id: {} for q in requests}
        self.blocked_ids: set[str] = set()
        self.failed_ids: set[str] = set()
        self.status: dict[str, str] = {}

    def _entry(self, q: OpenRequest, rule: Rule) -> dict[str, Any]:
        return self.outcome[q.id].setdefault(rule.id, {"disposed": 0, "kept": 0})

    @_locked
    def disposed(self, q: OpenRequest, rule: Rule, n: int) -> None:
        self._entry(q, rule)["disposed"] += n

    @_locked
    def kept(self, q: OpenRequest, rule: Rule, n: int) -> None:
        entry = self._entry(q, rule)
        entry["kept"] += n
        entry["legal_basis"] = rule.legal_basis

    @_locked
    def blocked(self, q: OpenRequest, rule: Rule) -> None:
        self._entry(q, rule)["held"] = True
        self.blocked_ids.add(q.id)

    @_locked
    def refused(self, q: OpenRequest, rule: Rule, n: int, by: list[dict[str, Any]]) -> None:
        """The store refuses to dispose ``n`` of the subject's records: rows of other tables
        refer to them through RESTRICT / NO ACTION foreign keys (``by``). The request stays
        open, its outcome saying by what."""
        entry = self._entry(q, rule)
        entry["blocked"] = entry.get("blocked", 0) + n
        entry["blocked_by"] = by
        self.blocked_ids.add(q.id)

    @_locked
    def held(self, q: OpenRequest, rule: Rule, n: int) -> None:
        """A hold on the whole rule protects ``n`` of the subject's records: it blocks the
        request only if there are any; otherwise the rule is served, with nothing to do."""
        if n:
            self.blocked(q, rule)
        else:
            self.disposed(q, rule, 0)

    @_locked
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

    def settle_served(self, state: Engine, run_id: str, swept: Collection[str]) -> None:
        """After a real sweep over some stores' rules (``swept``: the rule ids it ran; other
        replicas sweep the others): a request closes only when the outcome stored over every
        sweep shows each of its rules served without a hold, refusal or failure
        (:func:`cases.settle_served`); whichever replica serves its last rule closes it."""
        for q in self.requests:
            outcome = {rule: v for rule, v in self.outcome[q.id].items() if rule in swept}
            rules = [r.id for r in self.rules
                     if has_subject(r) and r.subject_kind == q.subject_kind]
            status = cases.settle_served(state, q, outcome, run_id, rules)
            if status is not None:
                self.status[q.id] = status

    def as_json(self, now: datetime) -> list[dict[str, Any]]:
        out = []
        for q in self.requests:
            status = self.status.get(q.id) or ("overdue" if q.due_at <= now else "open")
            out.append({"id": q.id, "subject_kind": q.subject_kind, "status": status,
                        "due_at": q.due_at.isoformat()})
        return out
