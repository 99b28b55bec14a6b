"""The executor's one loop over batches: every path (fast, scan, replay, purge) re-reads holds
before a batch and stops after a batch when asked, through the same code."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from retentiond.adapters.base import Adapter, Candidate, NextBatch, Problem, Selection
from retentiond.app import App
from retentiond.executor import Executor, RuleResult
from retentiond.policy.model import Rule
from retentiond.state.cases import add_hold
from tests.conftest import Workspace

KEYS = list(range(1, 11))  # batch_size 3: four batches


class Memory(Adapter):
    """A store of ten records in memory; ``fast`` switches the one-statement path on."""

    name: ClassVar[str] = "memory"
    actions: ClassVar[frozenset[str]] = frozenset({"delete", "isolate"})
    fast = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.records = set(KEYS)
        self.isolated = set(KEYS)
        self.batches: list[list[int]] = []
        self.on_batch: Callable[[], None] = lambda: None

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def validate(self, rule: Rule) -> list[Problem]: return []
    def count(self, selection: Selection) -> int: return len(self.records)
    def count_null_clock(self, rule: Rule) -> int: return 0

    def remaining(self, rule: Rule, action: str, refs: set[str],
                  ref_of: Callable[[Any], str]) -> set[str]:
        return {ref_of(k) for k in self.records if ref_of(k) in refs}

    def scan(self, selection: Selection, batch_size: int) -> Iterator[list[Candidate]]:
        ordered = sorted(self.records)
        for i in range(0, len(ordered), batch_size):
            yield [Candidate(k) for k in ordered[i:i + batch_size]]

    def _dispose(self, pool: set[int], keys: Sequence[Any]) -> list[Any]:
        done = sorted(k for k in keys if k in pool)
        pool.difference_update(done)
        self.batches.append(done)
        self.on_batch()
        return done

    def delete(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        return self._dispose(self.records, keys)

    def delete_next(self, selection: Selection, after: Any, limit: int,
                    intent: Callable[[list[Any]], None]) -> NextBatch | None:
        if not self.fast:
            return None
        picked = sorted(k for k in self.records if after is None or k > after)[:limit]
        if not picked:
            return NextBatch([], None)
        intent(picked)
        return NextBatch(self._dispose(self.records, picked), picked[-1])

    def scan_isolated(self, rule: Rule, now: datetime, batch_size: int
                      ) -> Iterator[list[Candidate]]:
        ordered = sorted(self.isolated)
        for i in range(0, len(ordered), batch_size):
            yield [Candidate(k) for k in ordered[i:i + batch_size]]

    def purge_isolated(self, rule: Rule, now: datetime, keys: Sequence[Any]) -> list[Any]:
        return self._dispose(self.isolated, keys)


@pytest.fixture
def app(ws: Workspace, tmp_path: Path) -> Iterator[App]:
    (tmp_path / "store.db").touch()
    ws.policy({"app": {"adapter": "sql", "url": f"sqlite:///{tmp_path / 'store.db'}"}},
              [{"id": "old", "store": "app", "table": "t", "key": "id", "clock": "at",
                "dispose_after": "1y", "action": "delete"}], batch_size=3)
    application = App(str(ws.config))
    yield application
    application.close()


def _executor(app: App, fast: bool, stop_after: int | None = None
              ) -> tuple[Executor, Memory, Selection]:
    store = Memory("app", app.policy.stores["app"], app.policy)
    store.fast = fast
    rule = app.policy.rules[0]
    now = datetime.now(UTC)
    sel = Selection(rule=rule, action="delete", reason="schedule", tz=app.policy.tz, now=now,
                    clock_cutoff=now - timedelta(days=400))
    stop = (lambda: len(store.batches) >= stop_after) if stop_after else (lambda: False)
    return Executor(app.policy, app.state, {"app": store}, "r1", stop), store, sel


def _paths(ex: Executor, sel: Selection) -> dict[str, Callable[[], int]]:
    result = RuleResult("old", "app", "t", "delete")
    return {"execute": lambda: ex.execute(sel, result),
            "apply": lambda: ex.apply(sel, KEYS, result),
            "purge": lambda: ex.purge(sel.rule, sel.now, result)}


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("path", ["execute", "apply", "purge"])
def test_every_path_stops_after_the_batch_in_flight(app: App, fast: bool, path: str) -> None:
    ex, store, sel = _executor(app, fast, stop_after=2)
    assert _paths(ex, sel)[path]() == 6
    assert store.batches == [[1, 2, 3], [4, 5, 6]]
    assert ex.stopped


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("path", ["execute", "apply", "purge"])
def test_every_path_runs_to_the_end(app: App, fast: bool, path: str) -> None:
    ex, store, sel = _executor(app, fast)
    assert _paths(ex, sel)[path]() == 10
    assert store.batches == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]
    assert not ex.stopped


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("path", ["execute", "apply"])
def test_a_hold_placed_mid_sweep_stops_every_path_before_the_next_batch(
        app: App, fast: bool, path: str) -> None:
    """Purge is the exception: isolated records are out of processing, holds do not apply."""
    ex, store, sel = _executor(app, fast)

    def hold_after_first() -> None:
        if len(store.batches) == 1:
            add_hold(app.state, ex.refs, scope="rule", reason="case", ref=None, rule="old")

    store.on_batch = hold_after_first
    assert _paths(ex, sel)[path]() == 3
    assert store.batches == [[1, 2, 3]]
    assert ex.stopped_by_hold
