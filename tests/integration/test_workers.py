"""``workers: N``: one process sweeps up to N stores at once (issue 13 part 2).

Concurrency is shown as PostgreSQL's isolation tests show it, by an explicit order of steps
rather than by timing: the first batch of each store waits at a barrier that only the other
store's first batch can open, so a sweep that does the stores one after another cannot pass it
(the barrier breaks and the rules fail)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from retentiond.adapters.base import NextBatch, Selection
from retentiond.adapters.registry import register, unregister
from retentiond.adapters.sql import SqlAdapter
from tests.integration.helpers import error_lines, ledger, record_ref

NOW = datetime.now()
ROWS, DUE = 25, 10  # per table: ids 1..DUE are past retention (40%)


class MeetingSql(SqlAdapter):
    """The sql adapter; its stores' first batches meet at a two-party barrier and every batch
    records its time window and thread."""

    barrier: ClassVar[threading.Barrier] = threading.Barrier(2, timeout=20)
    windows: ClassVar[list[tuple[str, str, float, float]]] = []
    met: ClassVar[set[str]] = set()

    def delete_next(self, selection: Selection, after: Any, limit: int,
                    intent: Callable[[list[Any]], None]) -> NextBatch | None:
        start = time.monotonic()
        if self.store_name not in MeetingSql.met:
            MeetingSql.met.add(self.store_name)
            MeetingSql.barrier.wait()  # BrokenBarrierError when the other store never comes
        batch = super().delete_next(selection, after, limit, intent)
        MeetingSql.windows.append((self.store_name, threading.current_thread().name, start,
                                   time.monotonic()))
        return batch


@pytest.fixture
def meeting() -> Iterator[type[MeetingSql]]:
    MeetingSql.barrier = threading.Barrier(2, timeout=20)
    MeetingSql.windows, MeetingSql.met = [], set()
    register("meetingsql", MeetingSql)
    try:
        yield MeetingSql
    finally:
        unregister("meetingsql")


def make_store(url: str, tables: tuple[str, ...]) -> None:
    engine = sa.create_engine(url)
    md = sa.MetaData()
    for name in tables:
        sa.Table(name, md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("created_at", sa.DateTime, nullable=False))
    md.create_all(engine)
    with engine.begin() as conn:
        for table in md.sorted_tables:
            conn.execute(table.insert(), [
                {"id": i, "created_at": NOW - timedelta(days=400 if i <= DUE else 10)}
                for i in range(1, ROWS + 1)])
    engine.dispose()


def ids(url: str, table: str) -> set[int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = {r[0] for r in conn.execute(sa.text(f"select id from {table}"))}
    engine.dispose()
    return found


def rule(rule_id: str, store: str, table: str) -> dict[str, Any]:
    return {"id": rule_id, "store": store, "table": table, "key": "id", "clock": "created_at",
            "dispose_after": "1y", "action": "delete"}


RULES = [rule("a-events", "a", "events"), rule("b-events", "b", "events"),
         rule("a-notes", "a", "notes")]


def test_two_workers_sweep_two_stores_at_once(ws: Any, meeting: type[MeetingSql]) -> None:
    urls = {s: f"sqlite:///{ws.root / f'{s}.db'}" for s in "ab"}
    make_store(urls["a"], ("events", "notes"))
    make_store(urls["b"], ("events",))
    ws.policy({s: {"adapter": "meetingsql", "url": u} for s, u in urls.items()}, RULES,
              batch_size=4, workers=2)  # a SQLite state database: its writers take turns

    plan = ws.invoke("plan", "--json")  # a dry run goes through the same workers
    assert plan.code == 0, plan.err
    assert [(r["rule"], r["due"]) for r in plan.json()["rules"]] == [
        ("a-events", DUE), ("b-events", DUE), ("a-notes", DUE)]
    res = ws.invoke("run", "--json")
    assert res.code == 0, res.err
    doc = res.json()
    # the order of the policy (a sequential sweep's), whatever order the stores finished in
    assert [(r["rule"], r["done"], r["failed"]) for r in doc["rules"]] == [
        ("a-events", DUE, 0), ("b-events", DUE, 0), ("a-notes", DUE, 0)]
    first = {s: next(w for w in meeting.windows if w[0] == s) for s in "ab"}
    assert first["a"][2] < first["b"][3] and first["b"][2] < first["a"][3]  # they overlapped
    threads = {s: {w[1] for w in meeting.windows if w[0] == s} for s in "ab"}
    assert len(threads["a"]) == len(threads["b"]) == 1  # one thread per store ...
    assert threads["a"] != threads["b"]  # ... and not the same one
    keep = set(range(DUE + 1, ROWS + 1))
    assert (ids(urls["a"], "events"), ids(urls["a"], "notes"), ids(urls["b"], "events")) == (
        keep, keep, keep)
    refs = [ref for e in ledger(ws.root / "state.db", "dispose") for ref in e["record_refs"]]
    expected = {record_ref(ws.secret, s, t, i) for s, t in (("a", "events"), ("a", "notes"),
                                                              ("b", "events"))
                for i in range(1, DUE + 1)}
    assert sorted(refs) == sorted(expected)  # each disposed record ledgered exactly once
    verify = ws.invoke("audit", "verify")
    assert verify.code == 0, verify.err


def test_an_unreachable_store_does_not_stop_the_other_worker(ws: Any) -> None:
    url = f"sqlite:///{ws.root / 'a.db'}"
    make_store(url, ("events",))
    ws.policy({"a": {"adapter": "sql", "url": url},
               "gone": {"adapter": "sql", "url": "postgresql://postgres@127.0.0.1:1/none"}},
              [rule("gone-events", "gone", "events"), rule("a-events", "a", "events")],
              batch_size=4, workers=2)

    res = ws.invoke("run", "--json")
    assert res.code == 3, res.err
    rules = {r["rule"]: r for r in res.json()["rules"]}
    assert list(rules) == ["gone-events", "a-events"]
    assert (rules["a-events"]["done"], rules["a-events"]["failed"]) == (DUE, 0)
    assert "store gone" in rules["gone-events"]["error"]
    [line] = error_lines(res.err)
    assert line.startswith("error: store gone")
    assert ids(url, "events") == set(range(DUE + 1, ROWS + 1))


@pytest.mark.parametrize(("value", "message"), [
    (0, "must be greater than or equal to 1, got a number 0"),
    (33, "must be less than or equal to 32, got a number 33"),
    ("2", "expected a whole number, got a string '2'"),
    (1.5, "expected a whole number, got a number 1.5")])
def test_workers_is_validated(ws: Any, value: Any, message: str) -> None:
    ws.policy({"a": {"adapter": "sql", "url": f"sqlite:///{ws.root / 'a.db'}"}}, [],
              workers=value)
    res = ws.invoke("config", "validate")
    assert res.code == 2
    assert error_lines(res.err) == [f"error: workers: {message}"]


def test_workers_within_bounds_is_accepted(ws: Any) -> None:
    make_store(f"sqlite:///{ws.root / 'a.db'}", ("events",))
    for value in (1, 32):
        ws.policy({"a": {"adapter": "sql", "url": f"sqlite:///{ws.root / 'a.db'}"}}, [],
                  workers=value)
        res = ws.invoke("config", "validate")
        assert res.code == 0, res.err
