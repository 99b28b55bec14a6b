"""Loading the policy file (SPEC 2): every problem at once, each line naming its path, with
the fix in words; secrets, ${ENV} interpolation, relative paths, the frozen model, the schema."""

from __future__ import annotations

import copy
import hashlib
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from retentiond.errors import PolicyError
from retentiond.policy import Condition, Policy, load_policy, parse_policy
from retentiond.policy.model import DURATION_PATTERN
from retentiond.timeutil import Duration, parse_duration

KEY = secrets.token_hex(32)  # 64 bytes of text
R0 = "rules[0] (closed-accounts)"  # how messages name the first rule of `base`: path and id


def _rule(**extra: Any) -> dict[str, Any]:
    return {"id": "closed-accounts", "store": "app", "table": "users", "key": "id",
            "clock": "closed_at", "dispose_after": "3y", **extra}


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def base(key_file: Path) -> dict[str, Any]:
    return {"version": 1, "secret_key": {"file": str(key_file)},
            "stores": {"app": {"adapter": "sql", "url": "sqlite:///app.db"}},
            "rules": [_rule()]}


Write = Callable[[Any], Path]


@pytest.fixture
def write(tmp_path: Path) -> Write:
    def _write(doc: Any) -> Path:
        path = tmp_path / "retentiond.yaml"
        path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
        return path
    return _write


Problems = Callable[[Any], list[str]]


@pytest.fixture
def problems(write: Write) -> Problems:
    def _problems(doc: Any) -> list[str]:
        with pytest.raises(PolicyError) as exc:
            load_policy(write(doc))
        assert exc.value.exit_code == 2
        assert str(exc.value) == "; ".join(exc.value.lines())
        return exc.value.lines()
    return _problems


def with_(doc: dict[str, Any], **top: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out.update(top)
    return out


def with_rule(doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["rules"][0].update(extra)
    return out


# -- a valid file ---------------------------------------------------------------------------
def test_valid_policy_loads_with_defaults(base: dict[str, Any], write: Write,
                                          tmp_path: Path) -> None:
    path = write(base)
    policy = load_policy(path)
    assert policy.version == 1
    assert policy.timezone == "UTC"
    assert policy.tz == ZoneInfo("UTC")
    assert policy.state == "sqlite:////var/lib/retentiond/state.db"
    assert policy.schedule == "0 3 * * *"
    assert policy.batch_size == 5000
    assert policy.requests.erasure_due == Duration(seconds=30 * 86400)
    assert policy.secret_key.get_secret_value() == KEY.encode()
    assert policy.signing_key is None
    assert policy.path == path
    assert policy.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert policy.stores["app"].url == f"sqlite:///{tmp_path / 'app.db'}"
    rule = policy.rule("closed-accounts")
    assert (rule.store, rule.table, rule.key, rule.clock) == ("app", "users", "id", "closed_at")
    assert rule.dispose_after == parse_duration("36mo")
    assert rule.keep_for is None
    assert (rule.action, rule.erasure_action, rule.subject_kind) == ("delete", "delete", "user")
    with pytest.raises(KeyError):
        policy.rule("nope")


def test_match_conditions_compile(base: dict[str, Any], write: Write) -> None:
    doc = with_rule(base, match={"status": "closed", "kind": {"in": ["a", "b"]},
                                 "deleted_at": {"is_null": True},
                                 "birth_date": {"newer_than": "18y"},
                                 "seen_at": {"older_than": "P30D"}})
    match = load_policy(write(doc)).rules[0].match
    assert match == {"status": Condition("eq", "closed"), "kind": Condition("in", ("a", "b")),
                     "deleted_at": Condition("is_null", True),
                     "birth_date": Condition("newer_than", Duration(months=216)),
                     "seen_at": Condition("older_than", Duration(seconds=30 * 86400))}


# -- YAML -------------------------------------------------------------------------------------
def test_yaml_syntax_error_names_file_line_and_column(problems: Problems, write: Write) -> None:
    text = "version: 1\nstores:\n  app: {adapter: sql\nrules: []\n"
    path = write(text)
    assert problems(text) == [
        f"{path}:4:6: YAML syntax error: expected ',' or '}}', but got ':'"]


def test_tab_indentation_is_a_syntax_error(problems: Problems, write: Write) -> None:
    text = "version: 1\nrules:\n\t- id: x\n"
    path = write(text)
    assert problems(text) == [
        f"{path}:3:1: YAML syntax error: found character '\\t' that cannot start any token"]


def test_duplicate_key_is_refused(problems: Problems, write: Write, key_file: Path) -> None:
    """YAML keeps the last of two equal keys silently; a policy must not change that way."""
    text = (f"version: 1\nsecret_key: {{file: {key_file}}}\nstores:\n  app: {{adapter: sql}}\n"
            "rules:\n  - id: r\n    store: app\n    dispose_after: 3y\n    dispose_after: 1d\n")
    path = write(text)
    assert problems(text) == [f"{path}:9:5: YAML error: duplicate key 'dispose_after' (first on "
                              "line 8); remove one of them"]


@pytest.mark.parametrize(("text", "got"), [("", "an empty file"), ("- a\n", "a list"),
                                           ("just text\n", "a str")])
def test_policy_must_be_a_mapping(problems: Problems, write: Write, text: str,
                                  got: str) -> None:
    path = write(text)
    assert problems(text) == [f"{path}: the policy file must be a YAML mapping (version: 1, "
                              f"stores: ..., rules: ...), got {got}"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as exc:
        load_policy(path)
    assert exc.value.lines() == [f"{path}: cannot read policy file: No such file or "
                                 "directory; pass --config PATH or set $RETENTIOND_CONFIG"]


# -- one problem each -------------------------------------------------------------------------
CASES: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], list[str]]] = [
    ("unknown top-level key", lambda b: with_(b, colour="red"), ["colour: unknown key"]),
    ("unknown rule key", lambda b: with_rule(b, colour="red"), [f"{R0}.colour: unknown key"]),
    ("misspelt rule key", lambda b: with_rule(b, keep_fro="1y"),
     [f"{R0}.keep_fro: unknown key (did you mean 'keep_for'?)"]),
    ("unknown store key", lambda b: with_(b, stores={"app": {
        "adapter": "sql", "url": "sqlite:///a.db", "colour": 1}}),
     ["stores.app.colour: unknown key"]),
    ("unknown strategy key", lambda b: with_rule(b, action="anonymize", anonymize={
        "marker": "m", "columns": {"email": {"strategy": "mask", "keep": 1}}}),
     [f"{R0}.anonymize.columns.email.keep: unknown key"]),
    ("unknown store", lambda b: with_rule(b, store="nope"),
     [f"{R0}.store: unknown store 'nope'; define it under stores: or use one of: app"]),
    ("keep_for longer", lambda b: with_rule(b, keep_for="4y"),
     [f"{R0}.keep_for: keep_for 4y is longer than dispose_after 3y; make keep_for at most "
      "dispose_after"]),
    ("keep_for can be longer", lambda b: with_rule(b, keep_for="1mo", dispose_after="30d"),
     [f"{R0}.keep_for: keep_for 1mo can be (months differ in length) longer than "
      "dispose_after 30d; make keep_for at most dispose_after"]),
    ("table not a name", lambda b: with_rule(b, table="users; drop table users"),
     [f"{R0}.table: 'users; drop table users' is not a plain name or schema.name (letters, "
      "digits and _, not starting with a digit, at most 63 characters); retentiond quotes it "
      "for you"]),
    ("key not a name", lambda b: with_rule(b, key="1id"),
     [f"{R0}.key: '1id' is not a plain name (letters, digits and _, not starting with a "
      "digit, at most 63 characters); retentiond quotes it for you"]),
    ("column with newline", lambda b: with_rule(b, clock="closed_at\n"),
     [f"{R0}.clock: 'closed_at\\n' is not a plain name (letters, digits and _, not starting "
      "with a digit, at most 63 characters); retentiond quotes it for you"]),
    ("bad duration", lambda b: with_rule(b, dispose_after="3 years"),
     [f"{R0}.dispose_after: unparseable duration '3 years'; use <n>h, <n>d, <n>w, <n>mo, "
      "<n>y or ISO 8601 like P3Y"]),
    ("number as duration", lambda b: with_rule(b, dispose_after=3),
     [f"{R0}.dispose_after: expected a duration such as 30d or P3Y, got 3"]),
    ("two statements", lambda b: with_rule(b, where="a = 1; drop table users"),
     [f"{R0}.where: where must be one SQL expression, and ';' separates statements; "
      "remove the ';'"]),
    ("comment", lambda b: with_rule(b, where="a = 1 -- and b = 2"),
     [f"{R0}.where: where must not contain SQL comments (--, /* */ or #); remove the "
      "comment"]),
    ("duplicate ids", lambda b: with_(b, rules=[_rule(), _rule(table="t")]),
     ["rules[1] (closed-accounts).id: duplicate rule id 'closed-accounts' (also rules[0]); "
      "give every rule its own id"]),
    ("keep without basis", lambda b: with_rule(b, on_erasure="keep"),
     [f"{R0}.legal_basis: on_erasure: keep needs a legal_basis saying which law keeps "
      "these records"]),
    ("keep with blank basis", lambda b: with_rule(b, on_erasure="keep", legal_basis="  "),
     [f"{R0}.legal_basis: on_erasure: keep needs a legal_basis saying which law keeps "
      "these records"]),
    ("cron with four fields", lambda b: with_(b, schedule="61 * * *"),
     ["schedule: invalid cron expression '61 * * *': Wrong number of fields; got 4, expected "
      "5; use five fields (minute hour day month weekday), like \"0 3 * * *\""]),
    ("cron out of range", lambda b: with_(b, schedule="0 25 * * *"),
     ["schedule: invalid cron expression '0 25 * * *': Error validating expression '25': the "
      "last value (25) is higher than the maximum value (23); use five fields (minute hour day "
      "month weekday), like \"0 3 * * *\""]),
    ("unknown timezone", lambda b: with_(b, timezone="Mars/Olympus"),
     ["timezone: unknown time zone 'Mars/Olympus'; use an IANA name like UTC or "
      "Europe/Berlin"]),
    ("bad rule id", lambda b: with_rule(b, id="Closed Accounts"),
     ["rules[0].id: 'Closed Accounts' is not a valid rule id: use 1-64 lowercase letters, "
      "digits and '-', like closed-accounts"]),
    ("bad store name", lambda b: with_(b, stores={"my app": {
        "adapter": "sql", "url": "sqlite:///a.db"}}, rules=[]),
     ["stores.my app: 'my app' is not a valid store name: use letters, digits, '_' and '-'"]),
    ("unknown adapter", lambda b: with_(b, stores={"app": {"adapter": "mongo"}}),
     ["stores.app.adapter: unknown adapter 'mongo'; use one of the installed adapters "
      "(files, s3, sql)"]),
    ("s3 keys on a sql rule", lambda b: with_rule(b, subject_tag="user-id", prefix="users/",
                                                   versions="current"),
     [f"{R0}.prefix: the sql adapter uses table, not prefix",
      f"{R0}.subject_tag: subject_tag is for s3 objects; name the subject column with subject",
      f"{R0}.versions: versions is for s3 objects; remove it"]),
    ("bad action", lambda b: with_rule(b, action="shred"),
     [f"{R0}.action: 'shred' is not allowed; use \"delete\", \"anonymize\" or \"isolate\""]),
    ("bad version", lambda b: with_(b, version=2), ["version: 2 is not allowed; use 1"]),
    ("no version", lambda b: {k: v for k, v in b.items() if k != "version"},
     ["version: required key is missing"]),
    ("batch size 0", lambda b: with_(b, batch_size=0),
     ["batch_size: must be greater than or equal to 1, got a number 0"]),
    ("rules as mapping", lambda b: with_(b, rules={"a": 1}),
     ["rules: expected a list, got a mapping"]),
    ("rule as number", lambda b: with_(b, rules=[3]), ["rules[0]: expected a mapping, got a "
                                                       "number 3"]),
    ("empty rules key", lambda b: with_(b, rules=None),
     ["rules: expected a list, got nothing (null)"]),
    ("unknown strategy", lambda b: with_rule(b, action="anonymize", anonymize={
        "marker": "m", "columns": {"email": {"strategy": "shred"}}}),
     [f"{R0}.anonymize.columns.email: unknown strategy 'shred'; use one of null, default, "
      "constant, mask, hmac, fake, truncate_date, round"]),
    ("strategy missing", lambda b: with_rule(b, action="anonymize", anonymize={
        "marker": "m", "columns": {"email": {"keep_last": 2}}}),
     [f"{R0}.anonymize.columns.email: strategy is missing; use one of null, default, "
      "constant, mask, hmac, fake, truncate_date, round"]),
    ("constant not a scalar", lambda b: with_rule(b, action="anonymize", anonymize={
        "marker": "m", "columns": {"email": {"strategy": "constant", "value": [1]}}}),
     [f"{R0}.anonymize.columns.email.value: value must be a string, a number or "
      "true/false"]),
    ("anonymize without block", lambda b: with_rule(b, action="anonymize"),
     [f"{R0}.anonymize: action anonymize needs an anonymize: block with marker and "
      "columns"]),
    ("unknown condition", lambda b: with_rule(b, match={"x": {"older": "3y"}}),
     [f"{R0}.match.x: unknown condition {{'older': '3y'}}; use a value or exactly one of "
      "{in: [...]}, {is_null: true|false}, {older_than: DURATION}, {newer_than: DURATION}"]),
    ("condition duration", lambda b: with_rule(b, match={"x": {"older_than": "3 years"}}),
     [f"{R0}.match.x: unparseable duration '3 years'; use <n>h, <n>d, <n>w, <n>mo, <n>y or "
      "ISO 8601 like P3Y"]),
    ("sql rule without table", lambda b: with_(b, rules=[{"id": "r", "store": "app",
                                                          "key": "id"}]),
     ["rules[0] (r).table: required for the sql adapter"]),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_problem_is_reported_with_its_path(
        problems: Problems, base: dict[str, Any],
        make: Callable[[dict[str, Any]], dict[str, Any]], expected: list[str]) -> None:
    assert problems(make(base)) == expected


def test_several_problems_are_reported_at_once(problems: Problems,
                                               base: dict[str, Any]) -> None:
    doc = with_(base, timezone="Nope/Nope", schedule="bogus", colour=1, rules=[
        _rule(store="nope", colour="red"),
        _rule(id="b", keep_for="4y", where="a; b"),
        _rule(id="b", on_erasure="keep", dispose_after="soon"),
    ])
    assert problems(doc) == [
        "colour: unknown key",
        f"{R0}.colour: unknown key",
        f"{R0}.store: unknown store 'nope'; define it under stores: or use one of: app",
        "rules[1] (b).keep_for: keep_for 4y is longer than dispose_after 3y; make keep_for at "
        "most dispose_after",
        "rules[1] (b).where: where must be one SQL expression, and ';' separates statements; "
        "remove the ';'",
        "rules[2] (b).dispose_after: unparseable duration 'soon'; use <n>h, <n>d, <n>w, <n>mo, "
        "<n>y or ISO 8601 like P3Y",
        "rules[2] (b).id: duplicate rule id 'b' (also rules[1]); give every rule its own id",
        "rules[2] (b).legal_basis: on_erasure: keep needs a legal_basis saying which law keeps "
        "these records",
        "schedule: invalid cron expression 'bogus': Wrong number of fields; got 1, expected 5; "
        "use five fields (minute hour day month weekday), like \"0 3 * * *\"",
        "timezone: unknown time zone 'Nope/Nope'; use an IANA name like UTC or Europe/Berlin",
    ]


# -- rules named by path and id (SPEC 10) ------------------------------------------------------
def test_rule_problems_name_the_rule_by_path_and_id(problems: Problems,
                                                    base: dict[str, Any]) -> None:
    """Cross checks and schema errors alike; keys outside the rules keep their path alone."""
    doc = with_(base, timezone="Nope/Nope", rules=[
        _rule(), _rule(id="minors", store="warehouse", keep_for=3, subject_kind=5)])
    assert problems(doc) == [
        "rules[1] (minors).keep_for: expected a duration such as 30d or P3Y, got 3",
        "rules[1] (minors).store: unknown store 'warehouse'; define it under stores: or use one "
        "of: app",
        "rules[1] (minors).subject_kind: expected a string, got a number 5",
        "timezone: unknown time zone 'Nope/Nope'; use an IANA name like UTC or Europe/Berlin",
    ]


def test_rule_without_a_usable_id_is_named_by_its_path_alone(problems: Problems,
                                                              base: dict[str, Any]) -> None:
    """A missing id, an id that is not a valid rule id, and an id that is not a string: the
    text is not a name to show, and its own problem (at ``.id``) already quotes it."""
    no_id = {k: v for k, v in _rule(store="warehouse").items() if k != "id"}
    doc = with_(base, rules=[no_id, _rule(id="Minors\n(b)", store="warehouse"),
                             _rule(id=7, store="warehouse")])
    assert problems(doc) == [
        "rules[0].id: required key is missing",
        "rules[0].store: unknown store 'warehouse'; define it under stores: or use one of: app",
        "rules[1].id: 'Minors\\n(b)' is not a valid rule id: use 1-64 lowercase letters, "
        "digits and '-', like closed-accounts",
        "rules[1].store: unknown store 'warehouse'; define it under stores: or use one of: app",
        "rules[2].id: expected a string, got a number 7",
        "rules[2].store: unknown store 'warehouse'; define it under stores: or use one of: app",
    ]


def test_rule_id_from_the_environment_names_the_rule(problems: Problems,
                                                     base: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTD_TEST_RULE_ID", "minors")
    assert problems(with_rule(base, id="${RTD_TEST_RULE_ID}", store="warehouse")) == [
        "rules[0] (minors).store: unknown store 'warehouse'; define it under stores: or use "
        "one of: app"]


def test_policy_error_documents_for_json(write: Write, base: dict[str, Any]) -> None:
    no_id = {k: v for k, v in _rule().items() if k != "id"}
    doc = with_(base, colour=1, rules=[_rule(id="minors", store="warehouse"), no_id])
    with pytest.raises(PolicyError) as exc:
        load_policy(write(doc))
    assert exc.value.documents() == [
        {"path": "colour", "message": "unknown key"},
        {"path": "rules[0].store", "rule": "minors",
         "message": "unknown store 'warehouse'; define it under stores: or use one of: app"},
        {"path": "rules[1].id", "rule": None, "message": "required key is missing"},
    ]


def test_only_a_whole_rule_index_is_named() -> None:
    err = PolicyError([("rules[1].store", "a"), ("rules[10].store", "b"), ("rules[1][0]", "c"),
                       ("rules", "d"), ("rules_x[1].y", "e"), ("", "f")], {1: "minors"})
    assert err.lines() == ["f", "rules: d", "rules[10].store: b", "rules[1] (minors).store: a",
                           "rules[1] (minors)[0]: c", "rules_x[1].y: e"]


def test_keep_with_a_legal_basis_is_fine(base: dict[str, Any], write: Write) -> None:
    doc = with_rule(base, on_erasure="keep", legal_basis="HGB §257: invoices, 10 years")
    rule = load_policy(write(doc)).rules[0]
    assert (rule.on_erasure, rule.erasure_action) == ("keep", "keep")


def test_valid_schedule_and_timezone(base: dict[str, Any], write: Write) -> None:
    policy = load_policy(write(with_(base, schedule="*/15 * * * *", timezone="Europe/Berlin")))
    assert policy.schedule == "*/15 * * * *"
    assert policy.tz == ZoneInfo("Europe/Berlin")


# -- secrets ----------------------------------------------------------------------------------
def _key(tmp_path: Path, name: str, data: str, mode: int) -> Path:
    path = tmp_path / name
    path.write_text(data)
    path.chmod(mode)
    return path


def test_secret_key_shorter_than_32_bytes(problems: Problems, base: dict[str, Any],
                                          tmp_path: Path) -> None:
    path = _key(tmp_path, "short.key", "x" * 31 + "\n", 0o600)
    assert problems(with_(base, secret_key={"file": str(path)})) == [
        "secret_key: secret_key is 31 bytes; it must be at least 32 bytes"]


def test_secret_key_of_exactly_32_bytes(base: dict[str, Any], write: Write,
                                        tmp_path: Path) -> None:
    path = _key(tmp_path, "ok.key", "k" * 32 + "\r\n", 0o600)
    policy = load_policy(write(with_(base, secret_key={"file": str(path)})))
    assert policy.secret_key.get_secret_value() == b"k" * 32


def test_key_file_readable_by_others(problems: Problems, base: dict[str, Any],
                                     tmp_path: Path) -> None:
    path = _key(tmp_path, "open.key", KEY, 0o644)
    assert problems(with_(base, secret_key={"file": str(path)})) == [
        f"secret_key: key file {path} is readable by group or others; chmod 600 {path}"]


def test_signing_key_readable_by_others(problems: Problems, base: dict[str, Any],
                                        tmp_path: Path) -> None:
    path = _key(tmp_path, "signing.key", "pem", 0o604)
    assert problems(with_(base, signing_key={"file": str(path)})) == [
        f"signing_key: key file {path} is readable by group or others; chmod 600 {path}"]


def test_missing_key_file(problems: Problems, base: dict[str, Any], tmp_path: Path) -> None:
    assert problems(with_(base, secret_key={"file": str(tmp_path / "none.key")})) == [
        f"secret_key: cannot read key file {tmp_path / 'none.key'}: No such file or directory"]


def test_relative_key_file_is_next_to_the_policy(base: dict[str, Any], write: Write) -> None:
    policy = load_policy(write(with_(base, secret_key={"file": "secret.key"})))
    assert policy.secret_key.get_secret_value() == KEY.encode()


def test_secret_from_env(base: dict[str, Any], write: Write,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTD_TEST_SECRET", "e" * 40)
    policy = load_policy(write(with_(base, secret_key={"env": "RTD_TEST_SECRET"})))
    assert policy.secret_key.get_secret_value() == b"e" * 40


def test_secret_from_missing_env(problems: Problems, base: dict[str, Any],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTD_TEST_SECRET", raising=False)
    assert problems(with_(base, secret_key={"env": "RTD_TEST_SECRET"})) == [
        "secret_key: environment variable RTD_TEST_SECRET is not set"]


def test_secret_from_credential(base: dict[str, Any], write: Write, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    _key(creds, "retentiond-secret", "c" * 48 + "\n", 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    policy = load_policy(write(with_(base, secret_key={"credential": "retentiond-secret"})))
    assert policy.secret_key.get_secret_value() == b"c" * 48


def test_credential_without_credentials_directory(problems: Problems, base: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert problems(with_(base, secret_key={"credential": "sk"})) == [
        "secret_key: credential sk: $CREDENTIALS_DIRECTORY is not set"]


def test_credential_name_cannot_leave_the_directory(problems: Problems, base: dict[str, Any],
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert problems(with_(base, secret_key={"credential": "../secret.key"})) == [
        "secret_key: credential '../secret.key' must be a plain name inside "
        "$CREDENTIALS_DIRECTORY, without '/'"]


@pytest.mark.parametrize(("ref", "message"), [
    ({"file": "a", "env": "B"}, "give exactly one of file, env or credential (a string, "
                                "{file: PATH}, {env: NAME} or {credential: NAME})"),
    ({}, "give exactly one of file, env or credential (a string, {file: PATH}, {env: NAME} or "
         "{credential: NAME})"),
    ({"path": "a"}, "unknown key 'path'; a secret is a string, {file: PATH}, {env: NAME} or "
                    "{credential: NAME}"),
    ({"env": 3}, "env must be a non-empty string"),
    (12345, "expected a string, {file: PATH}, {env: NAME} or {credential: NAME}, got int"),
])
def test_bad_secret_references(problems: Problems, base: dict[str, Any], ref: Any,
                               message: str) -> None:
    assert problems(with_(base, secret_key=ref)) == [f"secret_key: {message}"]


def test_store_url_can_be_a_secret(base: dict[str, Any], write: Write,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTD_TEST_URL", "postgresql+psycopg://u:p@db/app")
    doc = with_(base, stores={"app": {"adapter": "sql", "url": {"env": "RTD_TEST_URL"}}})
    assert load_policy(write(doc)).stores["app"].url == "postgresql+psycopg://u:p@db/app"


# -- ${ENV} interpolation ---------------------------------------------------------------------
def test_env_interpolation(base: dict[str, Any], write: Write,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTD_TEST_URL", "sqlite:////srv/app.db")
    monkeypatch.setenv("RTD_TEST_KEEP", "1y")
    monkeypatch.delenv("RTD_TEST_UNSET", raising=False)
    doc = with_(base, stores={"app": {"adapter": "sql", "url": "${RTD_TEST_URL}"}})
    doc["rules"][0].update(keep_for="${RTD_TEST_KEEP}",
                           description="costs $$5, ${RTD_TEST_UNSET:-x}",
                           source="${RTD_TEST_UNSET:-}")
    policy = load_policy(write(doc))
    assert policy.stores["app"].url == "sqlite:////srv/app.db"
    assert policy.rules[0].keep_for == Duration(months=12)
    assert policy.rules[0].description == "costs $5, x"
    assert policy.rules[0].source == ""


def test_missing_env_variable_is_one_problem(problems: Problems, base: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The unexpanded text is not also reported as a bad duration, and the rest of the file is
    still checked."""
    monkeypatch.delenv("RTD_TEST_UNSET", raising=False)
    doc = with_rule(base, keep_for="${RTD_TEST_UNSET}", colour=1)
    assert problems(doc) == [
        f"{R0}.colour: unknown key",
        f"{R0}.keep_for: environment variable RTD_TEST_UNSET is not set; set it, or give a "
        "default with ${RTD_TEST_UNSET:-VALUE}",
    ]


# -- relative paths ---------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:///app.db", "sqlite:///{dir}/app.db"),
    ("sqlite:///data/app.db?timeout=5", "sqlite:///{dir}/data/app.db?timeout=5"),
    ("sqlite+pysqlite:///app.db", "sqlite+pysqlite:///{dir}/app.db"),
    ("sqlite:////srv/app.db", "sqlite:////srv/app.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("postgresql+psycopg://db/app", "postgresql+psycopg://db/app"),
])
def test_relative_sqlite_paths_are_next_to_the_policy(base: dict[str, Any], tmp_path: Path,
                                                      url: str, expected: str) -> None:
    doc = with_(base, state=url, stores={"app": {"adapter": "sql", "url": url}})
    path = tmp_path / "etc" / "retentiond.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(doc))
    policy = load_policy(path)
    want = expected.format(dir=path.parent)
    assert (policy.state, policy.stores["app"].url) == (want, want)


def test_parse_policy_without_a_path_uses_the_working_directory(
        base: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    policy = parse_policy(yaml.safe_dump(base).encode())
    assert policy.stores["app"].url == f"sqlite:///{tmp_path}/app.db"
    assert policy.path is None
    with pytest.raises(PolicyError) as exc:
        parse_policy(b"[")
    assert exc.value.lines() == ["<policy>:1:2: YAML syntax error: expected the node content, "
                                 "but found '<stream end>'"]


# -- the model --------------------------------------------------------------------------------
def test_model_is_frozen(base: dict[str, Any], write: Write) -> None:
    policy = load_policy(write(base))
    with pytest.raises(ValidationError, match="frozen"):
        policy.batch_size = 1
    with pytest.raises(ValidationError, match="frozen"):
        policy.rules[0].keep_for = parse_duration("1d")  # type: ignore[misc]  # writing a frozen model on purpose
    with pytest.raises(ValidationError, match="frozen"):
        policy.stores["app"].url = "sqlite://"  # type: ignore[misc]  # writing a frozen model on purpose
    with pytest.raises(ValidationError, match="frozen"):
        policy.rules = ()
    assert isinstance(policy.rules, tuple)  # rules cannot be appended to either


def test_json_schema(base: dict[str, Any]) -> None:
    schema = Policy.model_json_schema(mode="validation")
    assert {"rules", "stores", "version", "secret_key", "timezone", "schedule"} <= set(
        schema["properties"])
    assert schema["required"] == ["version", "secret_key", "stores"]
    assert schema["additionalProperties"] is False
    rule = schema["$defs"]["Rule"]
    assert rule["additionalProperties"] is False
    assert rule["required"] == ["id", "store"]
    assert rule["properties"]["id"]["pattern"] == "^[a-z0-9-]{1,64}$"
    keep = rule["properties"]["keep_for"]["anyOf"][0]
    assert keep["pattern"] == DURATION_PATTERN
    assert schema["properties"]["stores"]["patternProperties"] == {
        "^[A-Za-z0-9_-]{1,64}$": {"$ref": "#/$defs/Store"}}


@settings(max_examples=2000)
@given(st.text(alphabet="0123456789PTYMWDHSmoyhdw", max_size=14).filter(
    lambda s: not re.search("[0-9]{3}", s)))
def test_schema_duration_pattern_agrees_with_the_parser(text: str) -> None:
    try:
        parse_duration(text)
        parsed = True
    except ValueError:
        parsed = False
    assert (re.fullmatch(DURATION_PATTERN, text) is not None) == parsed
