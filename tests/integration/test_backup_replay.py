"""``backup restored --store S --taken-at T`` through the real CLI (SPEC 5): after a restore,
every disposal recorded since T is applied again to the records the restore brought back, and
audited as ``replay``; disposals from before T are not.

The backup is the store as it was before any sweep: on SQLite a copy of the database file, on
PostgreSQL a copy of the tables' rows taken with SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import ledger, log_free_lines, now_seconds, record_ref, sqlite_path


def tables(metadata: sa.MetaData) -> list[sa.Table]:
    return [
        sa.Table("sessions", metadata,
                 sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("started_at", sa.DateTime, nullable=True),
                 sa.Column("ip", sa.String(45), nullable=False)),
        sa.Table("tokens", metadata,
                 sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("issued_at", sa.DateTime, nullable=True),
                 sa.Column("token", sa.String(64), nullable=False)),
        sa.Table("users", metadata,
                 sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("status", sa.String(16), nullable=False),
                 sa.Column("closed_at", sa.DateTime, nullable=True),
                 sa.Column("anonymized_at", sa.DateTime, nullable=True),
                 sa.Column("full_name", sa.String(120), nullable=False),
                 sa.Column("email", sa.String(120), nullable=False, unique=True),
                 sa.Column("phone", sa.String(40), nullable=True)),
    ]


def dataset(now: datetime) -> dict[str, list[dict[str, Any]]]:
    old = now - timedelta(days=5 * 366)
    users = [("closed", old, "Maria Schmidt", "+49 170 1234567"),
             ("closed", old - timedelta(days=9), "Jonas Okafor", None),
             ("active", old, "Aylin Yilmaz", "+90 532 000 11 22"),
             ("closed", now - timedelta(days=3), "Kwame Mensah", "+233 20 555 0199"),
             ("closed", old - timedelta(days=70), "Sofia Moreau", "+33 6 12 34 56 78"),
             ("closed", None, "Lukas Novak", None)]
    return {
        "sessions": [{"id": i, "started_at": now - timedelta(days=d), "ip": f"192.0.2.{i}"}
                     for i, d in enumerate((90, 1, 45, 2, 31), 1)],
        "tokens": [{"id": i, "issued_at": now - timedelta(days=d), "token": f"tok-{i:04d}-x"}
                   for i, d in enumerate((10, 8, 1, 30, 0, 6), 1)],
        "users": [{"id": i, "status": s, "closed_at": c, "anonymized_at": None,
                   "full_name": n, "email": f"{n.lower().replace(' ', '.')}.{i}@mail.example.org",
                   "phone": p} for i, (s, c, n, p) in enumerate(users, 1)],
    }


SESSIONS_DUE, TOKENS_DUE, USERS_DUE = {1, 3, 5}, {1, 2, 4}, {1, 2, 5}
RULES = [
    {"id": "old-sessions", "store": "app", "table": "sessions", "key": "id",
     "clock": "started_at", "dispose_after": "30d"},
    {"id": "stale-tokens", "store": "app", "table": "tokens", "key": "id", "clock": "issued_at",
     "dispose_after": "7d"},
    {"id": "closed-users", "store": "app", "table": "users", "key": "id", "clock": "closed_at",
     "match": {"status": "closed"}, "dispose_after": "3y", "action": "anonymize",
     "anonymize": {"marker": "anonymized_at", "columns": {
         "email": {"strategy": "hmac", "format": "email"},
         "full_name": {"strategy": "mask", "keep_first": 1},
         "phone": {"strategy": "null"}}}},
]


def read(engine: sa.Engine) -> dict[str, dict[int, dict[str, Any]]]:
    out = {}
    with engine.connect() as conn:
        for table in tables(sa.MetaData()):
            out[table.name] = {r.id: dict(r._mapping) for r in conn.execute(sa.select(table))}
    return out


@dataclass
class Store:
    backend: str
    engine: sa.Engine
    data: dict[str, list[dict[str, Any]]]
    backup: Callable[[], None]
    restore: Callable[[], None]


def _file_copy(url: str, engine: sa.Engine, tmp_path: Path) -> tuple[Any, Any]:
    path, copy = sqlite_path(url), tmp_path / "backup.db"

    def backup() -> None:
        engine.dispose()
        shutil.copyfile(path, copy)

    def restore() -> None:
        engine.dispose()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(copy, path)

    return backup, restore


def _row_copy(engine: sa.Engine) -> tuple[Any, Any]:
    saved: dict[str, list[dict[str, Any]]] = {}

    def backup() -> None:
        with engine.connect() as conn:
            for table in tables(sa.MetaData()):
                saved[table.name] = [dict(r) for r in conn.execute(sa.select(table)).mappings()]

    def restore() -> None:
        with engine.begin() as conn:
            for table in tables(sa.MetaData()):
                conn.execute(sa.delete(table))
                conn.execute(sa.insert(table), saved[table.name])

    return backup, restore


@pytest.fixture
def store(store_db_sp: Any, ws: Any, tmp_path: Path) -> Iterator[Store]:
    store_db = store_db_sp
    engine = store_db.engine()
    data = dataset(now_seconds())
    metadata = sa.MetaData()
    metadata.create_all(engine, tables=tables(metadata))
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            conn.execute(table.insert(), data[table.name])
    ws.policy({"app": {"adapter": "sql", "url": store_db.url, "backups": {"retention": "35d"}}},
              RULES)
    if store_db.backend == "sqlite":
        backup, restore = _file_copy(store_db.url, engine, tmp_path)
    else:
        backup, restore = _row_copy(engine)
    yield Store(store_db.backend, engine, data, backup, restore)
    engine.dispose()


def hex_hmac(secret: Path, value: str) -> str:
    key = secret.read_bytes().rstrip(b"\n")
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def refs_by_rule(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in entries:
        out.setdefault(e["rule"], []).extend(e["record_refs"])
    return {rule: sorted(refs) for rule, refs in out.items()}


def test_restore_replays_disposals_since_the_backup(store: Store, ws: Any) -> None:
    state = ws.root / "state.db"
    originals = {name: {r["id"]: r for r in rows} for name, rows in store.data.items()}
    store.backup()

    # A disposal before T: it is in the backup's past, so a replay leaves it alone.
    first = ws.invoke("run", "--json", "--rule", "old-sessions")
    assert first.code == 0, first.err
    assert first.json()["totals"]["done"] == 3
    taken_at = datetime.now(UTC)

    sweep = ws.invoke("run", "--json", "--rule", "stale-tokens", "--rule", "closed-users")
    assert sweep.code == 0, sweep.err
    assert {r["rule"]: r["done"] for r in sweep.json()["rules"]} == {
        "stale-tokens": 3, "closed-users": 3}
    swept = read(store.engine)
    assert set(swept["sessions"]) == set(originals["sessions"]) - SESSIONS_DUE
    assert set(swept["tokens"]) == set(originals["tokens"]) - TOKENS_DUE
    for i in USERS_DUE:
        name = originals["users"][i]["full_name"]
        assert swept["users"][i]["email"] == (
            hex_hmac(ws.secret, originals["users"][i]["email"]) + "@anonymized.invalid")
        assert swept["users"][i]["full_name"] == name[0] + "*" * (len(name) - 1)
        assert swept["users"][i]["phone"] is None
    disposals = [e for e in ledger(state, "dispose") if e["rule"] != "old-sessions"]
    for e in disposals:  # the backup horizon: disposed_at + backups.retention (35d)
        horizon = datetime.fromisoformat(json.loads(e["detail"])["beyond_use_until"])
        assert taken_at <= horizon - timedelta(days=35) <= datetime.now(UTC)

    store.restore()
    assert read(store.engine) == originals

    # --taken-at in another offset is the same instant.
    east = taken_at.astimezone(timezone(timedelta(hours=2))).isoformat()
    replay_started = datetime.now(UTC)
    result = ws.invoke("backup", "restored", "--store", "app", "--taken-at", east, "--json")
    replay_ended = datetime.now(UTC)
    assert result.code == 0, result.err
    doc = result.json()
    assert doc["store"] == "app"
    assert doc["taken_at"] == taken_at.isoformat()
    assert doc["reapplied"] == [
        {"rule": "closed-users", "action": "anonymize", "count": 3, "held": 0},
        {"rule": "stale-tokens", "action": "delete", "count": 3, "held": 0}]
    assert doc["total"] == 6

    after = read(store.engine)
    # Disposed since T: deleted again, anonymised again to the same values.
    assert set(after["tokens"]) == set(originals["tokens"]) - TOKENS_DUE
    assert after["tokens"] == swept["tokens"]
    for i in USERS_DUE:
        row, before = dict(after["users"][i]), dict(swept["users"][i])
        marker = row.pop("anonymized_at")
        before.pop("anonymized_at")
        assert row == before, i
        low = replay_started.replace(tzinfo=None)
        assert (low.replace(microsecond=0) if store.backend == "mariadb" else low) <= (
            marker) <= replay_ended.replace(tzinfo=None)
    # Untouched: rows never disposed, and the sessions deleted before T that came back.
    for i in set(originals["users"]) - USERS_DUE:
        assert after["users"][i] == originals["users"][i]
    assert after["sessions"] == originals["sessions"]

    replays = ledger(state, "replay")
    assert {(e["rule"], e["store"], e["action"], e["reason"], e["run_id"]) for e in replays} == {
        ("closed-users", "app", "anonymize", "replay", doc["run_id"]),
        ("stale-tokens", "app", "delete", "replay", doc["run_id"])}
    assert refs_by_rule(replays) == refs_by_rule(disposals)
    assert refs_by_rule(replays) == {
        "closed-users": sorted(record_ref(ws.secret, "app", "users", i) for i in USERS_DUE),
        "stale-tokens": sorted(record_ref(ws.secret, "app", "tokens", i) for i in TOKENS_DUE)}
    for e in replays:
        detail = json.loads(e["detail"])
        assert detail["taken_at"] == taken_at.isoformat()
        assert detail["count"] == 3
    verify = ws.invoke("audit", "verify")
    assert verify.code == 0, verify.out + verify.err

    # Replaying again finds nothing to do: everything since T is disposed already.
    again = ws.invoke("backup", "restored", "--store", "app", "--taken-at", east, "--json")
    assert again.code == 0, again.err
    assert again.json()["reapplied"] == [
        {"rule": "closed-users", "action": "anonymize", "count": 0, "held": 0},
        {"rule": "stale-tokens", "action": "delete", "count": 0, "held": 0}]
    assert again.json()["total"] == 0
    assert read(store.engine) == after
    assert len(ledger(state, "replay")) == len(replays)


def test_restore_of_an_unknown_store_is_a_usage_error(sqlite_db: Any, ws: Any) -> None:
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [])
    result = ws.invoke("backup", "restored", "--store", "nope", "--taken-at",
                    "2026-01-01T00:00:00Z", "--json")
    assert result.code == 2
    assert json.loads(result.out) == {"ok": False, "exit_code": 2,
                                      "errors": ["--store nope: no such store (stores: app)"]}
    assert log_free_lines(result.err) == ["error: --store nope: no such store (stores: app)"]
