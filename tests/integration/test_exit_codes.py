"""Exit codes as the shell sees them (SPEC 1), one case per code, each from a real
``python -m retentiond`` process. The rest of the suite drives the CLI in-process
(``conftest.invoke_cli``, which reads the status off ``SystemExit``); these prove the status
also survives the interpreter's own exit, and that stdout and stderr stay apart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import (
    Row,
    create,
    error_lines,
    ids,
    ledger,
    log_free_lines,
    now_seconds,
    state_exec,
    users_table,
)

OLD = datetime(2019, 5, 1, 12, 0, 0)
RULE = {"id": "old-users", "source": "Privacy policy §3", "store": "app", "table": "users",
        "key": "id", "subject": "user_id", "clock": "created_at", "dispose_after": "3y",
        "action": "delete"}


@pytest.fixture
def store(ws: Any, sqlite_db: Any) -> Iterator[sa.Engine]:
    """users 1-6 due, 7-9 ten days old."""
    engine = sqlite_db.engine()
    young = now_seconds() - timedelta(days=10)
    create(engine, users_table(sa.MetaData()),
           [Row(i, OLD if i <= 6 else young) for i in range(1, 10)])
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE])
    yield engine
    engine.dispose()


def test_exit_0_a_sweep_that_disposes_every_due_record(ws: Any, store: sa.Engine) -> None:
    result = ws.cli("run", "--json")
    assert result.code == 0, result.err
    assert result.json()["totals"]["done"] == 6
    assert error_lines(result.err) == []
    assert ids(store, "users") == {7, 8, 9}


def test_exit_1_a_rule_whose_table_is_gone(ws: Any, store: sa.Engine) -> None:
    with store.begin() as conn:
        conn.execute(sa.text("drop table users"))
    result = ws.cli("plan", "--json")
    assert result.code == 1, result.err
    [rule] = result.json()["rules"]
    assert rule["rule"] == "old-users"
    assert "table users" in rule["error"]


def test_exit_2_a_usage_error(ws: Any, store: sa.Engine) -> None:
    result = ws.cli("run", "--rule", "no-such-rule")
    assert result.code == 2, result.err
    assert result.out == ""
    [line] = log_free_lines(result.err)  # its wording is test_sweep's business
    assert line.startswith("error: --rule no-such-rule: no such rule")
    assert ids(store, "users") == set(range(1, 10))


def test_exit_3_the_state_database_unreachable(ws: Any, sqlite_db: Any,
                                               store: sa.Engine) -> None:
    corrupt = ws.root / "corrupt.db"
    corrupt.write_bytes(b"this is not a database, " * 400)
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE],
              state=f"sqlite:///{corrupt}")
    result = ws.cli("run")
    assert result.code == 3, result.err
    assert result.out == ""
    [line] = log_free_lines(result.err)
    assert line.startswith("error: state database ")
    assert ids(store, "users") == set(range(1, 10))


def test_exit_4_a_tampered_ledger(ws: Any, store: sa.Engine) -> None:
    assert ws.invoke("run").code == 0
    state = ws.root / "state.db"
    [entry] = ledger(state, "dispose")
    forged = json.dumps(entry["record_refs"][1:])
    assert state_exec(state, "update ledger set record_refs = ? where seq = ?", forged,
                      entry["seq"]) == 1
    result = ws.cli("audit", "verify")
    assert result.code == 4, (result.out, result.err)
    [line] = error_lines(result.err)
    assert line.startswith(f"error: ledger entry {entry['seq']} does not match its hash")
