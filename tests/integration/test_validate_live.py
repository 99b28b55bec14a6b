"""``config validate``: live checks of every rule against its store, all problems at once."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from helpers import create, error_lines, users_table

BASE = {"store": "app", "table": "users", "key": "id", "subject": "user_id",
        "clock": "created_at", "keep_for": "3y", "dispose_after": "3y"}


def _tables(store_db: Any) -> None:
    engine = store_db.engine()
    users = users_table(sa.MetaData())
    users.append_column(sa.Column("balance", sa.Numeric(10, 2), nullable=True))
    users.append_column(sa.Column("plain_no", sa.Integer, nullable=True))
    create(engine, users, [])
    sessions = sa.Table(
        "sessions", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("token", sa.Integer, nullable=False, unique=True),
        sa.Column("user_id", sa.Integer, nullable=True),
        sa.Column("last_seen", sa.DateTime, nullable=True),
    )
    create(engine, sessions, [])
    engine.dispose()


def _rule(i: int, **changes: Any) -> dict[str, Any]:
    return {**BASE, "id": f"rule-{i}", **changes}


def test_good_policy_validates(store_db: Any, ws: Any) -> None:
    _tables(store_db)
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [
        _rule(0, match={"status": "closed"}, where="flagged = 0"),
        _rule(1, table="sessions", key="token", clock="last_seen", keep_for="30d",
              dispose_after="90d"),
    ])
    result = ws.invoke("config", "validate", "--json")
    assert result.code == 0, result.err
    assert result.json() == {"ok": True, "config": str(ws.config), "rules": 2, "stores": 1,
                             "warnings": []}
    assert error_lines(result.err) == []


def test_every_live_problem_is_listed_with_its_path(store_db: Any, ws: Any) -> None:
    _tables(store_db)
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [
        _rule(0, table="no_such_table"),
        _rule(1, key="no_such_key"),
        _rule(2, clock="no_such_clock"),
        _rule(3, subject="no_such_subject"),
        _rule(4, match={"no_such_status": "closed"}),
        _rule(5, key="plain_no"),
        _rule(6, clock="balance"),
        _rule(7, where="no_such_column = 1"),
        _rule(8, key="missing_key", clock="missing_clock"),
        _rule(9, table="sessions", key="token", clock="last_seen"),
    ])
    result = ws.invoke("config", "validate")
    assert result.code == 2, (result.out, result.err)
    assert "Traceback" not in result.err
    problems = dict(line.removeprefix("error: ").split(": ", 1)
                    for line in error_lines(result.err))
    assert len(error_lines(result.err)) == len(problems) == 10, result.err
    assert sorted(problems) == sorted([
        "rules[0] (rule-0).table", "rules[1] (rule-1).key", "rules[2] (rule-2).clock",
        "rules[3] (rule-3).subject", "rules[4] (rule-4).match.no_such_status",
        "rules[5] (rule-5).key", "rules[6] (rule-6).clock", "rules[7] (rule-7).where",
        "rules[8] (rule-8).key", "rules[8] (rule-8).clock",
    ])
    mentions = {
        "rules[0] (rule-0).table": "no_such_table", "rules[1] (rule-1).key": "no_such_key",
        "rules[2] (rule-2).clock": "no_such_clock",
        "rules[3] (rule-3).subject": "no_such_subject",
        "rules[4] (rule-4).match.no_such_status": "no_such_status",
        "rules[5] (rule-5).key": "plain_no", "rules[6] (rule-6).clock": "balance",
        "rules[7] (rule-7).where": "does not run", "rules[8] (rule-8).key": "missing_key",
        "rules[8] (rule-8).clock": "missing_clock",
    }
    for path, word in mentions.items():
        assert word in problems[path], (path, problems[path])
    assert "neither the primary key nor unique" in problems["rules[5] (rule-5).key"]
    assert "policy OK" not in result.out


def test_unreachable_store_exits_3(ws: Any) -> None:
    ws.policy({"far": {"adapter": "sql",
                       "url": "postgresql+psycopg://retentiond:s3cret-pw@127.0.0.1:1/app"}},
              [_rule(0, store="far")])
    result = ws.invoke("config", "validate")
    assert result.code == 3, (result.out, result.err)
    assert "Traceback" not in result.err
    assert error_lines(result.err) == [
        "error: store far: cannot connect to postgresql+psycopg://retentiond:***@127.0.0.1:1/app"]
    assert "s3cret-pw" not in result.out + result.err


def test_missing_sqlite_store_is_unreachable_and_not_created(ws: Any) -> None:
    missing = ws.root / "no-such-dir" / "typo.db"
    ws.policy({"app": {"adapter": "sql", "url": f"sqlite:///{missing}"}}, [_rule(0)])
    result = ws.invoke("config", "validate")
    assert not missing.parent.exists()
    assert result.code == 3, (result.out, result.err)
    assert len(error_lines(result.err)) == 1
    assert error_lines(result.err)[0].startswith("error: store app: ")
