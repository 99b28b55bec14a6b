"""``action: isolate`` through the real CLI on SQLite, PostgreSQL and MariaDB (SPEC 4, 5): due rows
move to ``<table>_isolated`` (or ``isolate.table``) in one transaction, with when, by which rule
and until when; once ``isolate.for`` has passed a later sweep purges them, audited as ``purge``.

``isolate.for`` is 5 seconds rather than 2: on a loaded machine a sweep (the isolating run, which
purges at its end) can take over 2 seconds, and would then purge what it just isolated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import ledger, log_free_lines, now_seconds, record_ref

EXTRA = ("retentiond_isolated_at", "retentiond_rule", "retentiond_purge_after")
COUNTS = {"held": 0, "kept": 0, "failed": 0, "null_clock": 1}  # one row without a clock


def sessions_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "sessions", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("ip", sa.String(45), nullable=False),
        sa.Column("agent", sa.String(120), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
    )


def devices_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "devices", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("registered_at", sa.DateTime, nullable=True),
        sa.Column("serial", sa.String(40), nullable=False),
        sa.Column("bought", sa.Date, nullable=True),
    )


def session_rows(now: datetime) -> list[dict[str, Any]]:
    old, young = now - timedelta(days=90), now - timedelta(days=2)
    spec = [(1, old, "203.0.113.7", "Firefox/128 (Maria)", "vpn"),
            (2, old - timedelta(days=1), "2001:db8::42", "curl/8.5", None),
            (3, young, "198.51.100.23", None, "current"),
            (4, old - timedelta(hours=5), "192.0.2.99", "Safari (Jonas' iPhone)", "roaming"),
            (5, young, "203.0.113.8", "Edge", None),
            (6, None, "192.0.2.1", "no clock", None)]
    return [{"id": i, "user_id": 100 + i, "started_at": at, "ip": ip, "agent": agent,
             "note": note} for i, at, ip, agent, note in spec]


def device_rows(now: datetime) -> list[dict[str, Any]]:
    return [{"id": 1, "registered_at": now - timedelta(days=30), "serial": "SN-0001",
             "bought": date(2024, 1, 5)},
            {"id": 2, "registered_at": now - timedelta(days=800), "serial": "SN-0002",
             "bought": date(2020, 2, 29)},
            {"id": 3, "registered_at": now - timedelta(days=500), "serial": "SN-0003",
             "bought": None},
            {"id": 4, "registered_at": None, "serial": "SN-0004", "bought": None}]


SESSIONS_RULE = {"id": "stale-sessions", "source": "Privacy policy §4", "store": "app",
                 "table": "sessions", "key": "id", "subject": "user_id", "clock": "started_at",
                 "dispose_after": "30d", "action": "isolate", "isolate": {"for": "PT5S"}}
DEVICES_RULE = {"id": "old-devices", "store": "app", "table": "devices", "key": "id",
                "clock": "registered_at", "dispose_after": "1y", "action": "isolate",
                "isolate": {"table": "devices_quarantine", "for": "PT5S"}}


def rows_of(engine: sa.Engine, name: str) -> dict[int, dict[str, Any]]:
    table = sa.Table(name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return {r.id: dict(r._mapping) for r in conn.execute(sa.select(table))}


def counts(doc: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    """(due, done, purged) per rule; the other counts are fixed (each table has one row
    without a clock)."""
    for r in doc["rules"]:
        assert {k: r[k] for k in COUNTS} == COUNTS, r
        assert r["action"] == "isolate"
    return {r["rule"]: (r["due"], r["done"], r["purged"]) for r in doc["rules"]}


def to_seconds(at: datetime, backend: str) -> datetime:
    return at.replace(microsecond=0) if backend == "mariadb" else at


@pytest.fixture
def store(store_db: Any, ws: Any) -> Iterator[tuple[str, sa.Engine, dict[str, list[Any]]]]:
    engine = store_db.engine()
    now = now_seconds()
    data = {"sessions": session_rows(now), "devices": device_rows(now)}
    for make in (sessions_table, devices_table):
        table = make(sa.MetaData())
        table.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), data[table.name])
    ws.policy({"app": {"adapter": "sql", "url": store_db.url, "backups": {"retention": "35d"}}},
              [SESSIONS_RULE, DEVICES_RULE])
    yield store_db.backend, engine, data
    engine.dispose()


def test_isolate_then_purge(store: Any, ws: Any) -> None:
    backend, engine, data = store
    state = ws.root / "state.db"
    moved = {"sessions": {1, 2, 4}, "devices": {2, 3}}
    iso_name = {"sessions": "sessions_isolated", "devices": "devices_quarantine"}
    rule_of = {"sessions": "stale-sessions", "devices": "old-devices"}

    run = ws.invoke("run", "--json")
    finished = datetime.now(UTC).replace(tzinfo=None)
    assert run.code == 0, run.err
    doc = run.json()
    assert counts(doc) == {"stale-sessions": (3, 3, 0), "old-devices": (2, 2, 0)}
    as_of = datetime.fromisoformat(doc["as_of"])
    purge_after = as_of + timedelta(seconds=5)
    assert finished < purge_after.replace(tzinfo=None), "the run outlasted isolate.for"

    isolated: dict[str, set[str]] = {}
    for target, ids in moved.items():
        originals = {r["id"]: r for r in data[target]}
        assert set(rows_of(engine, target)) == set(originals) - ids
        assert rows_of(engine, target) == {
            i: r for i, r in originals.items() if i not in ids}
        copies = rows_of(engine, iso_name[target])
        assert set(copies) == ids
        for i, row in copies.items():
            extra = {c: row.pop(c) for c in EXTRA}
            assert row == originals[i], (target, i)  # the same column values
            assert extra["retentiond_rule"] == rule_of[target]
            assert extra["retentiond_purge_after"] == to_seconds(
                purge_after.astimezone(UTC).replace(tzinfo=None), backend)
            assert to_seconds(as_of.replace(tzinfo=None), backend) <= (
                extra["retentiond_isolated_at"]) <= finished
        entries = [e for e in ledger(state, "dispose") if e["target"] == target]
        assert len(entries) == 1
        entry = entries[0]
        assert (entry["rule"], entry["store"], entry["action"], entry["reason"],
                entry["run_id"]) == (rule_of[target], "app", "isolate", "schedule",
                                     doc["run_id"])
        assert sorted(entry["record_refs"]) == sorted(
            record_ref(ws.secret, "app", target, i) for i in ids)
        assert json.loads(entry["detail"]) == {
            "count": len(ids), "purge_after": purge_after.isoformat(),
            "beyond_use_until": (purge_after + timedelta(days=35)).isoformat()}
        isolated[target] = set(entry["record_refs"])
    assert not sa.inspect(engine).has_table("devices_isolated")

    # Wait for isolate.for to pass; a plan then reports the purge without doing it.
    time.sleep(max(0.0, (purge_after - datetime.now(UTC)).total_seconds()) + 0.5)
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    assert counts(plan.json()) == {"stale-sessions": (0, 0, 3), "old-devices": (0, 0, 2)}
    for target, ids in moved.items():
        assert set(rows_of(engine, iso_name[target])) == ids
    assert ledger(state, "purge") == []

    purge_started = datetime.now(UTC)
    again = ws.invoke("run", "--json")
    assert again.code == 0, again.err
    assert counts(again.json()) == {"stale-sessions": (0, 0, 3), "old-devices": (0, 0, 2)}
    for target, ids in moved.items():
        assert rows_of(engine, iso_name[target]) == {}
        assert set(rows_of(engine, target)) == {r["id"] for r in data[target]} - ids
        purges = [e for e in ledger(state, "purge") if e["target"] == target]
        assert len(purges) == 1
        purge = purges[0]
        assert (purge["rule"], purge["store"], purge["action"], purge["reason"],
                purge["run_id"]) == (rule_of[target], "app", "purge", "purge",
                                     again.json()["run_id"])
        assert set(purge["record_refs"]) == isolated[target]
        assert len(purge["record_refs"]) == len(ids)
        detail = json.loads(purge["detail"])
        assert detail["count"] == len(ids)
        horizon = datetime.fromisoformat(detail["beyond_use_until"]) - timedelta(days=35)
        assert purge_started <= horizon <= datetime.now(UTC)


def test_isolate_refusals(sqlite_db: Any, ws: Any) -> None:
    """Static checks, the same on every backend: isolate without a purge time, and a rule
    reading another rule's isolation table (default name or isolate.table)."""
    no_purge_time = {**SESSIONS_RULE, "isolate": {}}
    reads_isolated = {"id": "reads-isolated", "store": "app", "table": "sessions_isolated",
                      "key": "id", "clock": "started_at", "dispose_after": "1y"}
    reads_quarantine = {**reads_isolated, "id": "reads-quarantine",
                        "table": "devices_quarantine", "clock": "registered_at"}
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}},
              [no_purge_time, reads_isolated, DEVICES_RULE, reads_quarantine])
    result = ws.invoke("config", "validate")
    assert result.code == 2, result.out + result.err
    assert sorted(log_free_lines(result.err)) == sorted([
        "error: rules[0] (stale-sessions).isolate: isolate needs isolate.for, or "
        "backups.retention on store 'app', to know when to purge",
        "error: rules[1] (reads-isolated).table: sessions_isolated holds isolated records; no "
        "rule may read it",
        "error: rules[3] (reads-quarantine).table: devices_quarantine holds isolated records; "
        "no rule may read it",
        # rules[2] passed its static checks; its live checks need the store.
        f"warning: store app: SQLite database {sqlite_db.url.split(':///', 1)[1]} does not "
        "exist; check the store's url; its rules were not checked live"])
    assert result.out == ""
