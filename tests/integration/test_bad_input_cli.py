"""Bad input through the real CLI (SPEC 1): exit 2, one ``error: <path>: <problem>`` line per
problem on stderr, no traceback, and nothing changed: the store file is byte-for-byte the same
and no state database was created."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

COMMANDS = (("plan",), ("run",), ("config", "validate"))
R0 = "rules[0] (closed-accounts)"  # how messages name _rule(): its path and its id


def _rule(**extra: Any) -> dict[str, Any]:
    return {"id": "closed-accounts", "store": "app", "table": "users", "key": "id",
            "clock": "closed_at", "dispose_after": "3y", **extra}


@dataclass
class Setup:
    ws: Any
    store: Path
    stores: dict[str, Any]

    def policy(self, rules: list[dict[str, Any]] | None = None, **top: Any) -> Path:
        return self.ws.policy(self.stores, [_rule()] if rules is None else rules, **top)

    def write(self, text: str) -> Path:
        self.ws.config.write_text(text)
        return self.ws.config


@pytest.fixture
def setup(ws: Any, sqlite_db: Any) -> Setup:
    engine = sqlite_db.engine()
    with engine.begin() as c:
        c.execute(sa.text("create table users (id integer primary key, email text, "
                          "closed_at timestamp)"))
        c.execute(sa.text("insert into users values (1, 'a@example.com', '2001-01-01'), "
                          "(2, 'b@example.com', null)"))
    engine.dispose()
    return Setup(ws, Path(sqlite_db.url.removeprefix("sqlite:///")),
                 {"app": {"adapter": "sql", "url": sqlite_db.url}})


def _run_unchanged(setup: Setup, *args: str, env: dict[str, str] | None = None) -> Any:
    """Run the CLI and check the promises every bad input shares; return the result."""
    before = setup.store.read_bytes()
    names = sorted(p.name for p in setup.ws.root.iterdir())
    result = setup.ws.invoke(*args, env=env)
    assert result.code == 2, result
    assert result.out == ""
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert lines, "an error must say what went wrong"
    assert all(line.startswith("error: ") for line in lines), result.err
    assert setup.store.read_bytes() == before
    assert not (setup.ws.root / "state.db").exists()
    assert sorted(p.name for p in setup.ws.root.iterdir()) == names
    return result


Case = Callable[[Setup], list[str]]


def _key(setup: Setup, name: str, data: str, mode: int) -> Path:
    path = setup.ws.root / name
    path.write_text(data)
    path.chmod(mode)
    return path


def yaml_syntax(s: Setup) -> list[str]:
    path = s.write("version: 1\nstores:\n  app: {adapter: sql\nrules: []\n")
    return [f"error: {path}:4:6: YAML syntax error: expected ',' or '}}', but got ':'"]


def duplicate_key(s: Setup) -> list[str]:
    path = s.write("version: 1\nversion: 1\n")
    return [f"error: {path}:2:1: YAML error: duplicate key 'version' (first on line 1); "
            "remove one of them"]


def unknown_keys(s: Setup) -> list[str]:
    s.policy([_rule(colour="red")], colour="red")
    return ["error: colour: unknown key", f"error: {R0}.colour: unknown key"]


def unknown_store(s: Setup) -> list[str]:
    s.policy([_rule(store="crm")])
    return [f"error: {R0}.store: unknown store 'crm'; define it under stores: or use one "
            "of: app"]


def keep_longer(s: Setup) -> list[str]:
    s.policy([_rule(keep_for="4y")])
    return [f"error: {R0}.keep_for: keep_for 4y is longer than dispose_after 3y; make "
            "keep_for at most dispose_after"]


def bad_identifier(s: Setup) -> list[str]:
    s.policy([_rule(table="users; drop table users")])
    return [f"error: {R0}.table: 'users; drop table users' is not a plain name or "
            "schema.name (letters, digits and _, not starting with a digit, at most 63 "
            "characters); retentiond quotes it for you"]


def bad_duration(s: Setup) -> list[str]:
    s.policy([_rule(dispose_after="3 years")])
    return [f"error: {R0}.dispose_after: unparseable duration '3 years'; use <n>h, <n>d, "
            "<n>w, <n>mo, <n>y or ISO 8601 like P3Y"]


def two_statements(s: Setup) -> list[str]:
    s.policy([_rule(where="email is not null; drop table users")])
    return [f"error: {R0}.where: where must be one SQL expression, and ';' separates "
            "statements; remove the ';'"]


def sql_comment(s: Setup) -> list[str]:
    s.policy([_rule(where="email is not null -- or 1 = 1")])
    return [f"error: {R0}.where: where must not contain SQL comments (--, /* */ or #); "
            "remove the comment"]


def duplicate_ids(s: Setup) -> list[str]:
    s.policy([_rule(), _rule()])
    return ["error: rules[1] (closed-accounts).id: duplicate rule id 'closed-accounts' (also "
            "rules[0]); give every rule its own id"]


def keep_without_basis(s: Setup) -> list[str]:
    s.policy([_rule(on_erasure="keep")])
    return [f"error: {R0}.legal_basis: on_erasure: keep needs a legal_basis saying which "
            "law keeps these records"]


def bad_cron(s: Setup) -> list[str]:
    s.policy(schedule="0 3 * *")
    return ["error: schedule: invalid cron expression '0 3 * *': Wrong number of fields; got "
            "4, expected 5; use five fields (minute hour day month weekday), like "
            "\"0 3 * * *\""]


def bad_timezone(s: Setup) -> list[str]:
    s.policy(timezone="Europe/Atlantis")
    return ["error: timezone: unknown time zone 'Europe/Atlantis'; use an IANA name like UTC "
            "or Europe/Berlin"]


def short_secret(s: Setup) -> list[str]:
    path = _key(s, "short.key", "too short", 0o600)
    s.policy(secret_key={"file": str(path)})
    return ["error: secret_key: secret_key is 9 bytes; it must be at least 32 bytes"]


def readable_key(s: Setup) -> list[str]:
    path = _key(s, "open.key", "k" * 64, 0o644)
    s.policy(secret_key={"file": str(path)})
    return [f"error: secret_key: key file {path} is readable by group or others; chmod 600 "
            f"{path}"]


def missing_env(s: Setup) -> list[str]:
    s.ws.policy({"app": {"adapter": "sql", "url": "${RTD_TEST_UNSET_URL}"}}, [_rule()])
    return ["error: stores.app.url: environment variable RTD_TEST_UNSET_URL is not set; set "
            "it, or give a default with ${RTD_TEST_UNSET_URL:-VALUE}"]


def several(s: Setup) -> list[str]:
    s.policy([_rule(store="crm", keep_for="4y"), _rule(id="b", where="1; 2")],
             timezone="Nowhere")
    return [
        f"error: {R0}.keep_for: keep_for 4y is longer than dispose_after 3y; make keep_for "
        "at most dispose_after",
        f"error: {R0}.store: unknown store 'crm'; define it under stores: or use one of: app",
        "error: rules[1] (b).where: where must be one SQL expression, and ';' separates "
        "statements; remove the ';'",
        "error: timezone: unknown time zone 'Nowhere'; use an IANA name like UTC or "
        "Europe/Berlin",
    ]


CASES = [yaml_syntax, duplicate_key, unknown_keys, unknown_store, keep_longer, bad_identifier,
         bad_duration, two_statements, sql_comment, duplicate_ids, keep_without_basis, bad_cron,
         bad_timezone, short_secret, readable_key, missing_env, several]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_bad_policy_exits_2_and_changes_nothing(setup: Setup, case: Case,
                                               command: tuple[str, ...]) -> None:
    expected = case(setup)
    result = _run_unchanged(setup, *command)
    assert result.err.splitlines() == expected


@pytest.mark.parametrize("command", [("plan", "--rule", "nope"), ("run", "--rule", "nope"),
                                     ("plan", "--rule", "closed-accounts", "--rule", "nope")])
def test_unknown_rule(setup: Setup, command: tuple[str, ...]) -> None:
    setup.policy()
    result = _run_unchanged(setup, *command)
    assert result.err.splitlines() == [
        f"error: --rule nope: no such rule in {setup.ws.config} (rules: closed-accounts)"]


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "22/11/2026"])
def test_bad_as_of(setup: Setup, value: str) -> None:
    setup.policy()
    result = _run_unchanged(setup, "plan", "--as-of", value)
    assert result.err.splitlines() == [
        f"error: --as-of {value!r}: not an ISO 8601 instant (e.g. 2026-11-22T03:00:00Z; "
        "without an offset it is in `timezone`)"]


def test_as_of_is_not_an_option_of_run(setup: Setup) -> None:
    setup.policy()
    result = _run_unchanged(setup, "run", "--as-of", "2026-01-01")
    [line] = result.err.splitlines()
    assert line.startswith("error: No such option") and "--as-of" in line  # click's wording


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_missing_config_file(setup: Setup, command: tuple[str, ...]) -> None:
    result = _run_unchanged(setup, *command)
    assert result.err.splitlines() == [
        f"error: {setup.ws.config}: cannot read policy file: No such file or directory; pass "
        "--config PATH or set $RETENTIOND_CONFIG"]


def test_the_good_policy_plans(setup: Setup) -> None:
    """The control: the same setup with a valid policy is accepted, so the failures above are
    the bad input's doing."""
    setup.policy()
    result = setup.ws.invoke("--json", "plan", "--as-of", "2026-11-22T03:00:00Z")
    assert result.code == 0, result.err
    doc = result.json()
    assert [(r["rule"], r["due"]) for r in doc["rules"]] == [("closed-accounts", 1)]
