"""A rule-wide or store-wide hold blocks only the erasure requests it has records of (issue 8,
defect 10; SPEC 3.2, 3.4).

Two stores: ``app`` (the backend under test: ``messages`` by time and on request,
``attachments`` on request only) and ``crm`` (SQLite: ``contacts``, on request only).
P asks for erasure and has records everywhere; Q asks for erasure and has an attachment only;
R asks for nothing and has a due message and a contact. A hold on ``messages`` (or on the store
``crm``) covers P's records but none of Q's: P's request stays open, Q's is done.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from retentiond.planner import ActiveHolds, OpenRequest, Situation, plan_rule
from retentiond.policy.model import Rule

P, Q, R = 7310001, 7310002, 7310003
COUNTS = ("rule", "due", "held", "kept", "done", "failed")
NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
TZ = ZoneInfo("UTC")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def _table(md: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(name, md,
                    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("owner_id", sa.Integer, nullable=False),
                    sa.Column("body", sa.String(120), nullable=False),
                    sa.Column("created_at", sa.DateTime, nullable=False))


def _fill(engine: sa.Engine, rows: dict[str, list[tuple[int, int, datetime]]]) -> None:
    md = sa.MetaData()
    tables = {name: _table(md, name) for name in rows}
    md.create_all(engine)
    with engine.begin() as conn:
        for name, values in rows.items():
            conn.execute(tables[name].insert(), [
                {"id": i, "owner_id": s, "body": f"note of {s}", "created_at": at}
                for i, s, at in values])


def _ids(engine: sa.Engine, table: str) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(f"select id from {table}")).scalars())


def _rule(rule_id: str, store: str, table: str, **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "source": "Privacy policy §3", "store": store, "table": table,
            "key": "id", "subject": "owner_id", "action": "delete", **extra}


def _policy(ws: Any, app_url: str, crm_url: str, *extra: dict[str, Any]) -> None:
    ws.policy({"app": {"adapter": "sql", "url": app_url},
               "crm": {"adapter": "sql", "url": crm_url}},
              [_rule("messages", "app", "messages", clock="created_at", keep_for="3y",
                     dispose_after="3y"), *extra,
               _rule("attachments", "app", "attachments"),
               _rule("contacts", "crm", "contacts")])


@pytest.fixture
def stores(store_db_sp: Any, ws: Any, tmp_path: Any) -> Iterator[dict[str, sa.Engine]]:
    now = _now()
    due, young = now - timedelta(days=4 * 365), now - timedelta(days=20)
    app, crm = store_db_sp.engine(), sa.create_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    _fill(app, {"messages": [(1, P, due), (2, P, young), (3, R, due)],
                "attachments": [(1, P, young), (2, Q, young)]})
    _fill(crm, {"contacts": [(1, P, young), (2, R, young)]})
    _policy(ws, store_db_sp.url, f"sqlite:///{tmp_path / 'crm.db'}")
    yield {"app": app, "crm": crm}
    app.dispose()
    crm.dispose()


def _ok(ws: Any, *args: str) -> Any:
    result = ws.invoke(*args, "--json")
    assert result.code == 0, (args, result.code, result.err)
    return result.json()


def _left(stores: dict[str, sa.Engine]) -> dict[str, set[int]]:
    return {"messages": _ids(stores["app"], "messages"),
            "attachments": _ids(stores["app"], "attachments"),
            "contacts": _ids(stores["crm"], "contacts")}


def _asked(ws: Any) -> tuple[str, str]:
    return (_ok(ws, "request", "erase", str(P))["id"],
            _ok(ws, "request", "erase", str(Q))["id"])


def _counts(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(r[k] for k in COUNTS) for r in doc["rules"]]


def _statuses(ws: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    return {q["id"]: (q["status"], q["outcome"]) for q in _ok(ws, "request", "list")}


def test_rule_hold_blocks_only_the_request_with_records_in_the_rule(
        stores: dict[str, sa.Engine], ws: Any) -> None:
    _ok(ws, "hold", "add", "--rule", "messages", "--reason", "discovery")
    p, q = _asked(ws)
    before = _left(stores)
    expected = [
        ("messages", 0, 3, 0, 0, 0),  # P's 1 and 2 for the blocked request, R's due 3
        ("attachments", 2, 0, 0, 0, 0),  # P's 1 (the hold is on another rule), Q's 2
        ("contacts", 1, 0, 0, 0, 0),  # P's 1
    ]
    plan = _ok(ws, "plan")
    assert _counts(plan) == expected
    assert [(r["id"], r["status"]) for r in plan["requests"]] == [(p, "open"), (q, "open")]
    assert _left(stores) == before

    run = _ok(ws, "run")
    assert _counts(run) == [(r, due, held, kept, due, 0) for r, due, held, kept, _, _ in expected]
    assert [(r["id"], r["status"]) for r in run["requests"]] == [(p, "open"), (q, "done")]
    assert _left(stores) == {"messages": {1, 2, 3}, "attachments": set(), "contacts": {2}}
    assert _statuses(ws) == {
        p: ("open", {"messages": {"disposed": 0, "kept": 0, "held": True},
                     "attachments": {"disposed": 1, "kept": 0},
                     "contacts": {"disposed": 1, "kept": 0}}),
        q: ("done", {"messages": {"disposed": 0, "kept": 0},
                     "attachments": {"disposed": 1, "kept": 0},
                     "contacts": {"disposed": 0, "kept": 0}}),
    }
    assert [r["id"] for r in _ok(ws, "request", "list", "--open")] == [p]

    again = _ok(ws, "run")  # P stays blocked; Q is no longer asked for
    assert _counts(again) == [("messages", 0, 3, 0, 0, 0), ("attachments", 0, 0, 0, 0, 0),
                              ("contacts", 0, 0, 0, 0, 0)]
    assert [(r["id"], r["status"]) for r in again["requests"]] == [(p, "open")]


def test_store_hold_blocks_only_the_request_with_records_in_the_store(
        stores: dict[str, sa.Engine], ws: Any) -> None:
    _ok(ws, "hold", "add", "--store", "crm", "--reason", "regulator inquiry")
    p, q = _asked(ws)
    before = _left(stores)
    expected = [
        ("messages", 3, 0, 0, 0, 0),  # P's 1 and 2 on request, R's 3 by time
        ("attachments", 2, 0, 0, 0, 0),  # P's 1, Q's 2
        ("contacts", 0, 1, 0, 0, 0),  # P's 1, under the store hold (R's is not due)
    ]
    plan = _ok(ws, "plan")
    assert _counts(plan) == expected
    assert [(r["id"], r["status"]) for r in plan["requests"]] == [(p, "open"), (q, "open")]
    assert _left(stores) == before

    run = _ok(ws, "run")
    assert _counts(run) == [(r, due, held, kept, due, 0) for r, due, held, kept, _, _ in expected]
    assert [(r["id"], r["status"]) for r in run["requests"]] == [(p, "open"), (q, "done")]
    assert _left(stores) == {"messages": set(), "attachments": set(), "contacts": {1, 2}}
    assert _statuses(ws) == {
        p: ("open", {"messages": {"disposed": 2, "kept": 0},
                     "attachments": {"disposed": 1, "kept": 0},
                     "contacts": {"disposed": 0, "kept": 0, "held": True}}),
        q: ("done", {"messages": {"disposed": 0, "kept": 0},
                     "attachments": {"disposed": 1, "kept": 0},
                     "contacts": {"disposed": 0, "kept": 0}}),
    }


def test_subject_hold_still_blocks_only_its_subject(stores: dict[str, sa.Engine],
                                                    ws: Any) -> None:
    _ok(ws, "hold", "add", "--subject", str(P), "--reason", "litigation")
    p, q = _asked(ws)
    run = _ok(ws, "run")
    assert _counts(run) == [("messages", 1, 2, 0, 1, 0), ("attachments", 1, 1, 0, 1, 0),
                            ("contacts", 0, 1, 0, 0, 0)]
    assert [(r["id"], r["status"]) for r in run["requests"]] == [(p, "open"), (q, "done")]
    assert _left(stores) == {"messages": {1, 2}, "attachments": {1}, "contacts": {1, 2}}


def test_rule_hold_beats_another_rules_keep_for_the_same_records(
        stores: dict[str, sa.Engine], ws: Any, store_db_sp: Any, tmp_path: Any) -> None:
    # ``retained`` keeps P's messages by law; the hold on ``messages`` covers them first, so
    # P's request is blocked (not partial, not done) and they count held, once.
    retained = _rule("retained", "app", "messages", match={"owner_id": P},
                     on_erasure="keep", legal_basis="Tax law: 7 years.")
    _policy(ws, store_db_sp.url, f"sqlite:///{tmp_path / 'crm.db'}", retained)
    _ok(ws, "hold", "add", "--rule", "messages", "--reason", "discovery")
    p, q = _asked(ws)
    expected = [("messages", 0, 3, 0, 0, 0), ("retained", 0, 0, 0, 0, 0),
                ("attachments", 2, 0, 0, 0, 0), ("contacts", 1, 0, 0, 0, 0)]
    assert _counts(_ok(ws, "plan")) == expected
    run = _ok(ws, "run")
    assert _counts(run) == [(r, due, held, kept, due, 0) for r, due, held, kept, _, _ in expected]
    assert [(r["id"], r["status"]) for r in run["requests"]] == [(p, "open"), (q, "done")]
    assert _left(stores) == {"messages": {1, 2, 3}, "attachments": set(), "contacts": {2}}
    assert _statuses(ws)[p][1]["messages"] == {"disposed": 0, "kept": 0, "held": True}


def test_a_store_hold_counts_a_record_two_held_rules_match_once() -> None:
    # Pure planner: both rules of one table under a store hold; the later rule leaves out what
    # the earlier one already counts for the request, and keeps nothing else out.
    first, second = (Rule.model_validate({
        "id": i, "store": "app", "table": "t", "key": "id", "subject": "uid",
        "action": "delete", **extra}) for i, extra in (
            ("first", {}), ("second", {"on_erasure": "keep", "legal_basis": "law"})))
    q = OpenRequest("q1", "user", "1", "ref1", NOW)
    sit = Situation(NOW, TZ, (first, second), ActiveHolds(stores={"app": "h"}), (q,))
    plans = [plan_rule(r, sit) for r in (first, second)]
    assert [(p.hold, p.erasures, p.held_requests) for p in plans] == [("h", (), ())] * 2
    assert [[(r.id, s.subjects, [e.rule.id for e in s.exclude]) for r, s in p.held_erasures]
            for p in plans] == [[("q1", ("1",), [])], [("q1", ("1",), ["first"])]]
