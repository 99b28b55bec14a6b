"""``plan`` and ``run`` through the real CLI against SQLite, PostgreSQL and MariaDB stores."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import (
    Row,
    create,
    file_digest,
    ids,
    ledger,
    log_free_lines,
    now_seconds,
    record_ref,
    snapshot,
    sqlite_path,
    state_rows,
    users_table,
)

RULE = {
    "id": "closed-accounts", "source": "Privacy policy §3 Data retention", "store": "app",
    "table": "users", "key": "id", "subject": "user_id", "clock": "created_at",
    "match": {"status": "closed"}, "where": "flagged = 0", "keep_for": "3y",
    "dispose_after": "3y",
}
COUNTS = ("rule", "store", "target", "action", "due", "held", "kept", "done", "failed",
          "null_clock")
UNREACHABLE_URL = "postgresql+psycopg://retentiond@127.0.0.1:1/app"


def years_ago(at: datetime, n: int) -> datetime:
    """``at`` minus n calendar years (Feb 29 becomes Feb 28)."""
    try:
        return at.replace(year=at.year - n)
    except ValueError:
        return at.replace(year=at.year - n, day=28)


def dataset(now: datetime) -> tuple[list[Row], set[int]]:
    """75 rows in shuffled id order: 50 due (one exactly at now - 3y, one on Feb 29), 8 inside
    keep_for, 5 matching without a clock, and 12 excluded by match or where (2 of them without
    a clock). Returns the rows and the due ids."""
    edge = years_ago(now, 3)
    due = [edge, edge - timedelta(seconds=1), datetime(2020, 2, 29, 12, 0, 0)]
    due += [edge - timedelta(days=3 * k + 1, hours=k) for k in range(47)]
    young = [edge + timedelta(hours=1), edge + timedelta(days=1), edge + timedelta(days=30),
             now - timedelta(days=730), now - timedelta(days=365), now - timedelta(days=30),
             now - timedelta(days=2), now]
    specs: list[tuple[str, datetime | None, str, int]] = (
        [("due", c, "closed", 0) for c in due]
        + [("young", c, "closed", 0) for c in young]
        + [("null", None, "closed", 0)] * 5
        + [("other", None, "active", 0)] * 2
        + [("other", edge - timedelta(days=400 + k), "active", 0) for k in range(6)]
        + [("other", edge - timedelta(days=500 + k), "closed", 1) for k in range(4)]
    )
    order = list(range(1, len(specs) + 1))
    random.Random(3).shuffle(order)
    rows = [Row(i, clock, status, flagged)
            for i, (_, clock, status, flagged) in zip(order, specs, strict=True)]
    due_ids = {i for i, spec in zip(order, specs, strict=True) if spec[0] == "due"}
    return rows, due_ids


def counts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in COUNTS} for r in doc["rules"]]


def rule_counts(rule: dict[str, Any], **values: int) -> dict[str, Any]:
    base = {"rule": rule["id"], "store": rule["store"], "target": rule["table"],
            "action": "delete", "due": 0, "held": 0, "kept": 0, "done": 0, "failed": 0,
            "null_clock": 0}
    return {**base, **values}


def totals(**values: int) -> dict[str, int]:
    return {"due": 0, "held": 0, "kept": 0, "done": 0, "failed": 0, **values}


@pytest.fixture
def store(store_db: Any, ws: Any) -> Iterator[tuple[Any, sa.Engine, list[Row], set[int]]]:
    """The users table with :func:`dataset` and a policy with RULE, batch_size 7."""
    engine = store_db.engine()
    rows, due = dataset(now_seconds())
    create(engine, users_table(sa.MetaData()), rows)
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [RULE], batch_size=7)
    yield store_db, engine, rows, due
    engine.dispose()


def test_plan_then_run_disposes_exactly_the_due_rows(store: Any, ws: Any) -> None:
    _, engine, rows, due = store
    everything = {r.id for r in rows}
    state = ws.root / "state.db"
    before = snapshot(engine)

    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    planned = plan.json()
    assert planned["dry_run"] is True
    assert counts(planned) == [rule_counts(RULE, due=50, null_clock=5)]
    assert planned["totals"] == totals(due=50)
    dry = ws.invoke("run", "--dry-run")
    assert dry.code == 0, dry.err
    assert "Plan (dry run, nothing changed)" in dry.out
    assert snapshot(engine) == before, "a dry run changed the store"
    assert ledger(state, "dispose") == []

    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    ran = run.json()
    assert ran["dry_run"] is False
    assert counts(ran) == [rule_counts(RULE, due=50, done=50, null_clock=5)]
    assert ran["totals"] == totals(due=50, done=50)
    assert ids(engine, "users") == everything - due
    _assert_no_personal_data(ws, rows, run.out + run.err)

    # Each batch of 7 (keyset order) is one ledger entry naming exactly its records.
    entries = ledger(state, "dispose")
    assert len(entries) == math.ceil(50 / 7) == 8
    ordered = sorted(due)
    wanted = [{record_ref(ws.secret, "app", "users", i) for i in ordered[k:k + 7]}
              for k in range(0, 50, 7)]
    assert [set(e["record_refs"]) for e in entries] == wanted
    assert sum(len(e["record_refs"]) for e in entries) == 50
    assert {(e["run_id"], e["rule"], e["store"], e["target"], e["action"], e["reason"],
             e["record_count"]) for e in entries} == {
        (ran["run_id"], "closed-accounts", "app", "users", "delete", "schedule", n)
        for n in (7, 1)}

    again = ws.invoke("run", "--json")
    assert again.code == 0, again.err
    assert counts(again.json()) == [rule_counts(RULE, null_clock=5)]
    assert again.json()["totals"] == totals()
    assert ids(engine, "users") == everything - due
    assert len(ledger(state, "dispose")) == 8

    runs = {r["id"]: r for r in state_rows(state, "select * from runs")}
    assert len(runs) == 4
    assert {planned["run_id"], ran["run_id"], again.json()["run_id"]} < set(runs)
    for doc in (planned, ran, again.json()):
        row = runs[doc["run_id"]]
        assert (bool(row["dry_run"]), row["status"]) == (doc["dry_run"], "ok")
        assert row["finished_at"] is not None
        assert json.loads(row["summary"]) == doc


def _assert_no_personal_data(ws: Any, rows: list[Row], output: str) -> None:
    """Nothing retentiond keeps or prints contains a column value of the store."""
    state_bytes = b"".join(p.read_bytes() for p in ws.root.glob("state.db*"))
    assert b"mail.example.org" not in state_bytes
    for row in rows:
        values = row.values()
        for text in (values["email"], values["full_name"]):
            assert text.encode() not in state_bytes
            assert text not in output


def _two_rule_store(store_db: Any, ws: Any, accounts: list[datetime | None],
                    invites: list[datetime | None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """accounts under a 3y rule, invites under a 1y rule (keep_for = dispose_after)."""
    engine = store_db.engine()
    create(engine, users_table(sa.MetaData(), "accounts"),
           [Row(i + 1, c) for i, c in enumerate(accounts)])
    create(engine, users_table(sa.MetaData(), "invites"),
           [Row(i + 1, c) for i, c in enumerate(invites)])
    engine.dispose()
    three = {k: v for k, v in RULE.items() if k not in ("match", "where")}
    three.update({"id": "three-years", "table": "accounts"})
    leap = {**three, "id": "one-year", "table": "invites", "keep_for": "1y",
            "dispose_after": "1y"}
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [three, leap])
    return three, leap


def test_as_of_boundaries_are_exact(store_db: Any, ws: Any) -> None:
    """Due exactly when clock + d <= as-of, in calendar years: 2022-02-28 12:00 + 3y and
    2024-02-29 12:00 + 1y are both 2025-02-28 12:00; 2023-03-01 + 1y is 2024-03-01, not the
    2024-02-29 that 365 days would give."""
    three, leap = _two_rule_store(store_db, ws, [
        datetime(2022, 2, 28, 12, 0, 0), datetime(2022, 2, 28, 11, 59, 59),
        datetime(2022, 2, 28, 12, 0, 1), datetime(2022, 3, 1), datetime(2021, 2, 28), None,
    ], [
        datetime(2024, 2, 29, 12, 0, 0), datetime(2024, 2, 29, 12, 0, 1),
        datetime(2024, 2, 28, 11, 59, 59), datetime(2024, 3, 1), datetime(2024, 2, 29),
        datetime(2023, 3, 1), datetime(2023, 2, 28, 12, 0, 0), datetime(2023, 2, 28, 12, 0, 1),
        None, None,
    ])
    expected = {
        "2025-02-28T11:59:59Z": (2, 5),
        "2025-02-28T12:00:00Z": (3, 6),
        "2024-02-29T12:00:00Z": (1, 2),
    }
    for as_of, (due_three, due_leap) in expected.items():
        plan = ws.invoke("plan", "--json", "--as-of", as_of)
        assert plan.code == 0, plan.err
        assert plan.json()["as_of"] == as_of.replace("Z", "+00:00")
        assert counts(plan.json()) == [
            rule_counts(three, due=due_three, null_clock=1),
            rule_counts(leap, due=due_leap, null_clock=2)], as_of


def test_keep_for_floor_holds_on_the_day_before_a_clamped_leap_day(sqlite_db: Any,
                                                                   ws: Any) -> None:
    _, leap = _two_rule_store(sqlite_db, ws, [], [
        datetime(2024, 2, 28, 12, 0, 0),  # floor ends 2025-02-28 12:00:00: not due yet
        datetime(2024, 2, 29, 6, 0, 0),  # + 1y = 2025-02-28 06:00:00: due
    ])
    plan = ws.invoke("plan", "--json", "--as-of", "2025-02-28T11:59:59Z", "--rule", "one-year")
    assert plan.code == 0, plan.err
    assert counts(plan.json()) == [rule_counts(leap, due=1)]


def test_dry_run_leaves_sqlite_store_byte_for_byte_unchanged(sqlite_db: Any, ws: Any) -> None:
    engine = sqlite_db.engine()
    rows, _ = dataset(now_seconds())
    create(engine, users_table(sa.MetaData()), rows)
    engine.dispose()
    path = sqlite_path(sqlite_db.url)
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE])
    files = sorted(p.name for p in path.parent.glob(path.name + "*"))
    digest = file_digest(path)
    for args in (("plan", "--json"), ("run", "--dry-run", "--json")):
        result = ws.invoke(*args)
        assert result.code == 0, result.err
        assert result.json()["totals"]["due"] == 50
    assert sorted(p.name for p in path.parent.glob(path.name + "*")) == files
    assert file_digest(path) == digest


def test_rule_option_limits_the_sweep(sqlite_db: Any, ws: Any) -> None:
    store_db = sqlite_db
    engine = store_db.engine()
    now = now_seconds()
    old, young = years_ago(now, 4), now - timedelta(days=1)
    create(engine, users_table(sa.MetaData()), [Row(i, old if i % 2 else young)
                                                for i in range(1, 21)])
    create(engine, users_table(sa.MetaData(), "sessions"),
           [Row(i, now - timedelta(days=60 if i <= 9 else 1)) for i in range(1, 16)])
    users = {**RULE, "match": {}}
    users.pop("where")
    sessions = {**users, "id": "stale-sessions", "table": "sessions", "keep_for": "30d",
                "dispose_after": "30d"}
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [users, sessions])

    run = ws.invoke("run", "--json", "--rule", "stale-sessions")
    assert run.code == 0, run.err
    assert counts(run.json()) == [rule_counts(sessions, due=9, done=9)]
    assert ids(engine, "sessions") == set(range(10, 16))
    assert ids(engine, "users") == set(range(1, 21))
    entries = ledger(ws.root / "state.db", "dispose")
    assert [(e["rule"], e["target"]) for e in entries] == [("stale-sessions", "sessions")]
    assert sorted(entries[0]["record_refs"]) == sorted(
        record_ref(ws.secret, "app", "sessions", i) for i in range(1, 10))

    unknown = ws.invoke("run", "--rule", "no-such-rule")
    assert unknown.code == 2
    assert log_free_lines(unknown.err)[0].startswith("error: --rule no-such-rule: no such rule")
    assert ids(engine, "users") == set(range(1, 21))
    engine.dispose()


def _unreachable_policy(ws: Any) -> None:
    rule = {**RULE, "id": "far-away", "store": "far"}
    ws.policy({"far": {"adapter": "sql", "url": UNREACHABLE_URL}}, [rule])


def test_unreachable_store_is_recorded_as_a_failed_run(ws: Any) -> None:
    _unreachable_policy(ws)
    docs = []
    for args in (("plan", "--json"), ("run", "--json")):
        result = ws.invoke(*args)
        assert "Traceback" not in result.out + result.err
        docs.append(result.json())
        assert counts(result.json()) == [rule_counts({**RULE, "id": "far-away",
                                                      "store": "far"})]
    runs = {r["id"]: r for r in state_rows(ws.root / "state.db", "select * from runs")}
    assert {d["run_id"]: runs[d["run_id"]]["status"] for d in docs} == {
        d["run_id"]: "failed" for d in docs}
    assert ledger(ws.root / "state.db", "dispose") == []


@pytest.mark.parametrize("command", ["plan", "run"])
def test_unreachable_store_exits_3(ws: Any, command: str) -> None:
    _unreachable_policy(ws)
    result = ws.invoke(command)
    assert "Traceback" not in result.out + result.err
    mentions = [line for line in log_free_lines(result.out + "\n" + result.err)
                if "cannot connect to postgresql+psycopg://retentiond@127.0.0.1:1/app" in line]
    assert len(mentions) == 1, result.out + result.err
    assert mentions[0].startswith(("error: ", "rule far-away failed: "))
    assert result.code == 3
    as_json = ws.invoke(command, "--json")
    assert as_json.code == 3
    assert as_json.json()["totals"] == totals()
