"""Policy messages name a rule by its path and its id (issue 9, SPEC 10): static schema
errors, cross references and live checks alike, in ``config validate`` and in every command
that loads the policy, and in ``--json`` as ``{"path", "rule", "message"}``."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from helpers import create, error_lines, users_table

COMMANDS = (("config", "validate"), ("plan",), ("run",))


def _rule(rule_id: str | None, **changes: Any) -> dict[str, Any]:
    rule = {"id": rule_id, "store": "app", "table": "users", "key": "id", "subject": "user_id",
            "clock": "created_at", "dispose_after": "3y", **changes}
    return {k: v for k, v in rule.items() if v is not None}


@pytest.fixture
def stores(sqlite_db: Any) -> dict[str, Any]:
    engine = sqlite_db.engine()
    create(engine, users_table(sa.MetaData()), [])
    engine.dispose()
    return {"app": {"adapter": "sql", "url": sqlite_db.url}}


UNKNOWN_STORE = "unknown store 'warehouse'; define it under stores: or use one of: app"


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_static_problems_name_the_rule(ws: Any, stores: dict[str, Any],
                                       command: tuple[str, ...]) -> None:
    """An unknown store, a wrong type inside a rule, and a rule without an id: every command
    that loads the policy exits 2 with the same lines."""
    ws.policy(stores, [_rule("closed-accounts"), _rule("minors", store="warehouse"),
                       _rule("leads", keep_for=3), _rule(None, where="a; b")])
    result = ws.invoke(*command)
    assert result.code == 2, result
    assert result.out == ""
    assert error_lines(result.err) == [
        f"error: rules[1] (minors).store: {UNKNOWN_STORE}",
        "error: rules[2] (leads).keep_for: expected a duration such as 30d or P3Y, got 3",
        "error: rules[3].id: required key is missing",
        "error: rules[3].where: where must be one SQL expression, and ';' separates "
        "statements; remove the ';'",
    ]


def test_live_check_names_the_rule(ws: Any, stores: dict[str, Any]) -> None:
    ws.policy(stores, [_rule("closed-accounts"), _rule("stale-leads", clock="no_such_clock"),
                       _rule("erase-emails", action="anonymize",
                             anonymize={"marker": "anonymized_at",
                                        "columns": {"email": {"strategy": "null"}}})])
    result = ws.invoke("config", "validate")
    assert result.code == 2, result
    assert result.out == ""
    assert error_lines(result.err) == [
        "error: rules[1] (stale-leads).clock: column users.no_such_clock does not exist",
        "error: rules[2] (erase-emails).anonymize.columns.email: strategy \"null\" on NOT "
        "NULL column users.email; use \"constant\" or \"hmac\"",
        "error: rules[2] (erase-emails).anonymize.marker: column users.anonymized_at does not "
        "exist; add a nullable timestamp column for retentiond to set",
    ]


@pytest.mark.parametrize("args", [("config", "validate", "--json"), ("--json", "plan")],
                         ids=" ".join)
def test_json_lists_each_problem_with_its_rule(ws: Any, stores: dict[str, Any],
                                               args: tuple[str, ...]) -> None:
    ws.policy(stores, [_rule("minors", store="warehouse"), _rule(None)], colour="red")
    result = ws.invoke(*args)
    assert result.code == 2, result
    lines = [
        "colour: unknown key",
        f"rules[0] (minors).store: {UNKNOWN_STORE}",
        "rules[1].id: required key is missing",
    ]
    assert result.json() == {"ok": False, "exit_code": 2, "errors": lines, "problems": [
        {"path": "colour", "message": "unknown key"},
        {"path": "rules[0].store", "rule": "minors", "message": UNKNOWN_STORE},
        {"path": "rules[1].id", "rule": None, "message": "required key is missing"},
    ]}
    # the lines on stderr stay as without --json
    assert error_lines(result.err) == [f"error: {line}" for line in lines]


def test_json_lists_live_problems_with_their_rule(ws: Any, stores: dict[str, Any]) -> None:
    ws.policy(stores, [_rule("closed-accounts"), _rule("minors", key="no_such_key")])
    result = ws.invoke("config", "validate", "--json")
    assert result.code == 2, result
    [problem] = result.json()["problems"]
    assert problem == {"path": "rules[1].key", "rule": "minors",
                       "message": "column users.no_such_key does not exist"}


def test_every_failure_is_one_json_document_with_json(ws: Any, stores: dict[str, Any]) -> None:
    """Not only policy errors: a usage error and a bad argument print one document too."""
    ws.policy(stores, [_rule("closed-accounts")])
    unknown = ws.invoke("--json", "run", "--rule", "nope")
    assert unknown.code == 2
    [line] = error_lines(unknown.err)
    assert unknown.json() == {"ok": False, "exit_code": 2, "errors": [line[len("error: "):]]}
    bad = ws.invoke("run", "--wait", "-1", "--json")
    assert bad.code == 2
    assert bad.json()["exit_code"] == 2 and len(bad.json()["errors"]) == 1


def test_an_internal_error_is_one_json_document_too(ws: Any, stores: dict[str, Any],
                                                    monkeypatch: Any) -> None:
    from retentiond.commands import cases

    def broken(*_: Any, **__: Any) -> int:
        raise RuntimeError("boom")

    ws.policy(stores, [_rule("closed-accounts")])
    monkeypatch.setattr(cases, "request_list", broken)
    result = ws.invoke("--json", "request", "list")
    assert result.code == 1
    text = "internal error: RuntimeError: boom (run with --debug for a traceback)"
    assert error_lines(result.err) == [f"error: {text}"]
    assert result.json() == {"ok": False, "exit_code": 1, "errors": [text]}
