"""Faults a sweep must survive (issue 8, defects 5-8): a rule whose table or column is gone,
a broken state database, ``--debug`` next to personal data, a sweep killed with SIGKILL, and
released holds that still named their subject."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from retentiond.state.lease import this_host

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from helpers import (  # type: ignore[import-not-found]  # tests/integration on sys.path
    Row,
    create,
    ids,
    log_free_lines,
    now_seconds,
    person,
    state_exec,
    state_rows,
    users_table,
)

OLD = datetime(2019, 5, 1, 12, 0, 0)
RULE = {"id": "old-users", "source": "Privacy policy §3", "store": "app", "table": "users",
        "key": "id", "subject": "user_id", "clock": "created_at", "dispose_after": "3y",
        "action": "delete"}
SUBJECT = "subj-7f3kq-zephyrine"  # a subject id that must never reach stderr or a log


# -- defect 5: one rule's missing table or column fails that rule only -----------------------
@pytest.fixture
def two_tables(sqlite_db: Any, ws: Any) -> Iterator[sa.Engine]:
    engine = sqlite_db.engine()
    young = now_seconds() - timedelta(days=10)
    create(engine, users_table(sa.MetaData()), [Row(i, OLD if i <= 6 else young)
                                                for i in range(1, 10)])
    create(engine, users_table(sa.MetaData(), "visitors"), [Row(i, OLD) for i in range(1, 5)])
    gone = {**RULE, "id": "visitors", "table": "visitors"}
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [gone, RULE])
    yield engine
    engine.dispose()


def _drop_table(engine: sa.Engine) -> str:
    with engine.begin() as conn:
        conn.execute(sa.text("drop table visitors"))
    return "table visitors"


def _drop_column(engine: sa.Engine) -> str:
    with engine.begin() as conn:
        conn.execute(sa.text("alter table visitors drop column created_at"))
    return "created_at"


@pytest.mark.parametrize("damage", [_drop_table, _drop_column], ids=["table", "column"])
@pytest.mark.parametrize("command", ["run", "plan"])
def test_a_rule_whose_table_or_column_vanished_fails_alone(
        two_tables: sa.Engine, ws: Any, damage: Callable[[sa.Engine], str],
        command: str) -> None:
    named = damage(two_tables)
    result = ws.invoke(command, "--json")
    assert result.code == 1, result.err
    doc = result.json()
    gone, users = doc["rules"]
    assert gone["rule"] == "visitors"
    assert named in gone["error"]
    assert "\n" not in gone["error"]
    assert "mail.example.org" not in result.out + result.err
    assert (gone["done"], gone["failed"]) == (0, 0)
    due = 0 if command == "plan" else 6
    assert (users["due"], users["done"]) == (6, due)
    assert ids(two_tables, "users") == (set(range(1, 10)) if command == "plan"
                                        else set(range(7, 10)))
    state = ws.root / "state.db"
    runs = state_rows(state, "select id, status, finished_at from runs")
    assert [(r["id"], r["status"]) for r in runs] == [(doc["run_id"], "failed")]
    assert runs[0]["finished_at"] is not None
    checkpoints = state_rows(state, "select run_id from checkpoints")
    assert checkpoints == ([] if command == "plan" else [{"run_id": doc["run_id"]}])


# -- defect 6: a broken state database is one line and exit 3, for every command -------------
COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("run",), "plan": ("plan",), "status": ("status",),
    "request erase": ("request", "erase", SUBJECT),
    "request list": ("request", "list"),
    "hold add": ("hold", "add", "--subject", SUBJECT, "--reason", "litigation"),
    "hold release": ("hold", "release", "abc123", "--reason", "settled"),
    "hold list": ("hold", "list"),
    "audit verify": ("audit", "verify"),
    "audit export": ("audit", "export", "--format", "json"),
    "audit checkpoint": ("audit", "checkpoint"),
    "explain": ("explain", "--rule", "old-users", "--key", "1"),
    "backup restored": ("backup", "restored", "--store", "app", "--taken-at",
                        "2024-01-01T00:00:00Z"),
    "db upgrade": ("db", "upgrade"),
    "serve": ("serve",),
}
HOLD_COMMANDS = ("run", "plan", "status", "hold add", "hold list", "explain")


def _corrupt(ws: Any, _: Any) -> str:
    path = ws.root / "corrupt.db"
    path.write_bytes(b"this is not a database, " * 400)
    return f"sqlite:///{path}"




def _pg_missing(_: Any, pg_db: Any) -> str:
    return str(pg_db.url).rsplit("/", 1)[0] + "/rtd_no_such_database"


def _broken_policy(ws: Any, sqlite_db: Any, state: str) -> None:
    create(sqlite_db.engine(), users_table(sa.MetaData()), [Row(1, OLD)])
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE], state=state)


def _assert_one_line_exit_3(result: Any, what: str) -> None:
    lines = log_free_lines(result.err)  # structlog JSON lines may come first
    assert result.code == 3, f"{what}: exit {result.code}: {result.err}"
    assert len(lines) == 1, f"{what}: {result.err}"
    assert lines[0].startswith("error: state database "), f"{what}: {lines[0]}"
    assert SUBJECT not in result.out + result.err, what
    assert "[SQL" not in result.err and "parameters" not in result.err, what


def test_a_corrupt_sqlite_state_database_is_one_line_and_exit_3(
        ws: Any, sqlite_db: Any) -> None:
    """(A directory as the state database is a policy error, exit 2, since the policy checks.)"""
    _broken_policy(ws, sqlite_db, _corrupt(ws, None))
    for what, args in COMMANDS.items():
        _assert_one_line_exit_3(ws.invoke(*args), what)


def test_a_postgresql_state_database_that_does_not_exist_is_exit_3(
        ws: Any, sqlite_db: Any, pg_db: Any) -> None:
    url = _pg_missing(ws, pg_db)
    _broken_policy(ws, sqlite_db, url)
    for what in ("run", "request erase", "hold list", "db upgrade"):
        result = ws.invoke(*COMMANDS[what])
        _assert_one_line_exit_3(result, what)
        assert "rtd_no_such_database" in result.err


@pytest.mark.parametrize("table", ["holds", "requests"])
def test_a_state_table_dropped_behind_our_back_is_one_line_and_exit_3(
        ws: Any, sqlite_db: Any, table: str) -> None:
    _broken_policy(ws, sqlite_db, ws.state_url)
    assert ws.invoke("db", "upgrade").code == 0
    held = ws.invoke("hold", "add", "--subject", SUBJECT, "--reason", "litigation")
    assert held.code == 0, held.err
    state_exec(ws.root / "state.db", f"drop table {table}")
    commands = HOLD_COMMANDS if table == "holds" else ("run", "status", "request erase",
                                                      "request list")
    for what in commands:
        _assert_one_line_exit_3(ws.invoke(*COMMANDS[what]), f"{table}: {what}")


WRITES = ("runs", "requests", "holds")


def test_a_state_database_refusing_writes_is_one_line_and_exit_3(
        ws: Any, sqlite_db: Any) -> None:
    """Every write fails (as on a read-only or full disk): triggers abort the inserts."""
    _broken_policy(ws, sqlite_db, ws.state_url)
    assert ws.invoke("db", "upgrade").code == 0
    for table in WRITES:
        state_exec(ws.root / "state.db", f"create trigger no_{table} before insert on {table} "
                   "begin select raise(abort, 'refused'); end")
    for what in ("run", "plan", "request erase", "hold add"):
        _assert_one_line_exit_3(ws.invoke(*COMMANDS[what]), f"refused: {what}")
    assert ids(sqlite_db.engine(), "users") == {1}


def test_a_state_database_error_in_the_middle_of_a_sweep_is_exit_3(
        ws: Any, sqlite_db: Any) -> None:
    """The state engine's errors are not mistaken for a store's: the sweep stops with exit 3
    instead of counting a rule as failed."""
    _broken_policy(ws, sqlite_db, ws.state_url)
    assert ws.invoke("db", "upgrade").code == 0
    state_exec(ws.root / "state.db", "drop table pending")
    _assert_one_line_exit_3(ws.invoke("run"), "run without pending")
    assert ids(sqlite_db.engine(), "users") == {1}


# -- defect 7: --debug shows no values -------------------------------------------------------
def test_debug_output_holds_no_personal_data(sqlite_db: Any, ws: Any) -> None:
    engine = sqlite_db.engine()
    create(engine, users_table(sa.MetaData()), [Row(i, OLD) for i in range(1, 6)])
    with engine.begin() as conn:
        conn.execute(sa.text("update users set user_id = 4242000 + id"))
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE])
    results = [ws.invoke("--debug", "request", "erase", "4242003"),
               ws.invoke("--debug", "hold", "add", "--subject", "4242005", "--reason", "x"),
               ws.invoke("--debug", "plan", "--json"), ws.invoke("--debug", "run", "--json"),
               ws.invoke("--debug", "request", "list")]
    for r in results:
        assert r.code == 0, r.err
    seen = "\n".join(r.out + r.err for r in results)
    assert ids(engine, "users") == {5}
    assert '"level": "debug"' in seen  # debug logging is on
    for i in range(1, 6):
        name, email = person(i)
        assert name not in seen
        assert email not in seen
        assert f"42420{i:02d}" not in seen


# -- defect 8: a run whose process died is marked crashed --------------------------------------
def _kill_mid_sweep(ws: Any) -> None:
    state = ws.root / "state.db"
    with (ws.root / "killed.log").open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "retentiond", "--config", str(ws.config), "run"],
            stdout=log, stderr=log,
            env={k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"})
        try:
            deadline = time.monotonic() + 90
            while proc.poll() is None and not _disposed(state):
                assert time.monotonic() < deadline, "the sweep wrote no ledger entry"
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it was killed"


def _disposed(state: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5)
        try:
            return bool(conn.execute("select count(*) from ledger "
                                     "where kind = 'dispose'").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def test_a_run_killed_with_sigkill_is_marked_crashed_by_the_next(
        sqlite_db: Any, ws: Any) -> None:
    engine = sqlite_db.engine()
    table = users_table(sa.MetaData())
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [
            {"id": i, "user_id": i, "created_at": OLD, "full_name": "-", "email": "-",
             "status": "closed", "flagged": 0} for i in range(1, 30_001)])
    engine.dispose()
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE], batch_size=200)
    state = ws.root / "state.db"
    _kill_mid_sweep(ws)
    [killed] = state_rows(state, "select id, status, holder, finished_at from runs")
    assert killed["status"] == "running"
    assert killed["holder"].startswith(f"{this_host()}:")
    assert killed["finished_at"] is None
    before = datetime.now(UTC).replace(tzinfo=None)

    result = ws.invoke("run", "--json")
    assert result.code == 0, result.err
    runs = {r["id"]: r for r in state_rows(state, "select id, status, finished_at from runs")}
    assert runs[killed["id"]]["status"] == "crashed"
    assert datetime.fromisoformat(runs[killed["id"]]["finished_at"]) >= before
    assert runs[result.json()["run_id"]]["status"] == "ok"
    status = ws.invoke("status", "--json")
    assert status.json()["last_sweep"]["status"] == "ok"


def _run_row(engine: sa.Engine, run_id: str, holder: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            "insert into runs (id, started_at, as_of, dry_run, status, policy_digest, holder) "
            "values (:id, :at, :at, 0, 'running', 'x', :holder)"),
            {"id": run_id, "at": datetime(2026, 1, 1), "holder": holder})


def _lease(engine: sa.Engine, holder: str, expires: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("update lease set holder = :h, expires_at = :e"),
                     {"h": holder, "e": expires.replace(tzinfo=None)})


def test_crashed_runs_on_this_and_other_hosts(ws: Any, sqlite_db: Any) -> None:
    from retentiond.state import runs
    from retentiond.state.db import open_state

    engine = open_state(ws.state_url)
    here = this_host()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    far, far_live = "elsewhere.example:77:aaaa", "elsewhere.example:78:bbbb"
    _run_row(engine, "alive", f"{here}:{os.getpid()}:cafe")
    _run_row(engine, "dead", f"{here}:{dead}:beef")
    _run_row(engine, "far", far)
    _run_row(engine, "far-live", far_live)
    _lease(engine, far_live, datetime.now(UTC) + timedelta(minutes=5))
    assert sorted(runs.mark_crashed(engine)) == ["dead", "far"]
    # expired by the wall clock but still held: wall clocks of two hosts are never compared
    _lease(engine, far_live, datetime.now(UTC) - timedelta(minutes=5))
    assert runs.mark_crashed(engine) == []
    # taken over: the holder that took it marks the run crashed
    _lease(engine, "elsewhere.example:79:cccc", datetime.now(UTC) + timedelta(minutes=5))
    assert runs.mark_crashed(engine) == ["far-live"]
    with engine.connect() as conn:
        found: dict[str, str] = dict(conn.execute(sa.text("select id, status from runs")).all())
    assert found == {"alive": "running", "dead": "crashed", "far": "crashed",
                     "far-live": "crashed"}
    engine.dispose()


# -- hostile input: a released hold forgets its subject ----------------------------------------
def test_a_released_hold_keeps_no_subject_id(ws: Any, sqlite_db: Any) -> None:
    _broken_policy(ws, sqlite_db, ws.state_url)
    added = ws.invoke("--json", "hold", "add", "--subject", SUBJECT, "--reason", "litigation")
    assert added.code == 0, added.err
    hold_id = json.loads(added.out)["id"] if added.out.startswith("{") else added.out.strip()
    state = ws.root / "state.db"
    [row] = state_rows(state, "select subject, subject_ref from holds")
    assert row["subject"] == SUBJECT
    released = ws.invoke("hold", "release", hold_id, "--reason", "settled")
    assert released.code == 0, released.err
    assert state_rows(state, "select subject, subject_ref, released_at is not null as done "
                      "from holds") == [{"subject": None, "subject_ref": row["subject_ref"],
                                         "done": 1}]
    listed = ws.invoke("--json", "hold", "list")
    assert SUBJECT not in listed.out
