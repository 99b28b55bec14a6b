"""Hostile input (issue 8): broken keys, YAML bombs, FIFOs and devices as key files, bad URLs,
extreme dates and values. Each case exits 2 (usage or policy) or 3 (state unreachable) with
exactly one ``error: ...`` line naming what and where, no traceback, nothing created or changed,
in bounded time and memory. Bombs run in a subprocess limited to 1 GiB of address space and a
few seconds; the rest run in-process."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from retentiond.errors import PolicyError, RetentiondError
from retentiond.log import redact_url
from retentiond.policy import parse_policy

GIB = 2**30
ROWS = [(1, "2001-01-01 00:00:00"), (2, "2002-01-01 00:00:00"), (3, None)]
GENERATE = "generate one with `openssl genpkey -algorithm ed25519 -out signing.key`"


@dataclass
class Setup:
    """A workspace whose policy has one due delete rule over a SQLite table of three rows."""

    ws: Any
    store: Path

    def policy(self, rules: list[dict[str, Any]] | None = None, **top: Any) -> Path:
        return self.ws.policy({"app": {"adapter": "sql", "url": f"sqlite:///{self.store}"}},
                              [_rule()] if rules is None else rules, **top)

    def write(self, text: str) -> Path:
        self.ws.config.write_text(text)
        return self.ws.config

    def key(self, name: str, data: bytes, mode: int = 0o600) -> Path:
        path = self.ws.root / name
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def rows(self) -> list[tuple[Any, ...]]:
        engine = sa.create_engine(f"sqlite:///{self.store}")
        with engine.connect() as c:
            rows = [tuple(r) for r in c.execute(sa.text("select id, closed_at from users "
                                                        "order by id"))]
        engine.dispose()
        return rows

    def bounded(self, *args: str, timeout: float = 10) -> Any:
        """The CLI in a subprocess with 1 GiB of address space and ``timeout`` seconds."""
        env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "retentiond", "--config", str(self.ws.config), *args],
                capture_output=True, text=True, env=env, timeout=timeout, check=False,
                preexec_fn=_limit_memory)
        except subprocess.TimeoutExpired:
            pytest.fail(f"retentiond {' '.join(args)} ran longer than {timeout}s")
        return type("Result", (), {"code": proc.returncode, "out": proc.stdout,
                                   "err": proc.stderr})


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (GIB, GIB))


def _rule(**extra: Any) -> dict[str, Any]:
    return {"id": "old-users", "store": "app", "table": "users", "key": "id",
            "clock": "closed_at", "dispose_after": "3y", "subject": "id", **extra}


@pytest.fixture
def setup(ws: Any) -> Setup:
    store = ws.root / "store.db"
    engine = sa.create_engine(f"sqlite:///{store}")
    with engine.begin() as c:
        c.execute(sa.text("create table users (id integer primary key, closed_at timestamp)"))
        for row in ROWS:
            c.execute(sa.text("insert into users values (:i, :c)"), {"i": row[0], "c": row[1]})
    engine.dispose()
    return Setup(ws, store)


def refused(s: Setup, result: Any, code: int = 2) -> str:
    """The promises every hostile case shares; returns the one error line."""
    assert result.code == code, (result.code, result.err)
    assert result.out == ""
    assert "Traceback" not in result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    assert s.rows() == [(1, "2001-01-01 00:00:00"), (2, "2002-01-01 00:00:00"), (3, None)]
    assert not (s.ws.root / "state.db").exists()
    return lines[0]


def _pem(key: Any) -> bytes:
    return bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))


# -- 1. signing_key is parsed when the policy loads -------------------------------------------
@pytest.mark.parametrize(("data", "problem"), [
    (b"not a key", f"signing_key is not a PEM private key; {GENERATE}"),
    (b"", f"signing_key is empty; {GENERATE}"),
    (b"\n\n", f"signing_key is empty; {GENERATE}"),
    (_pem(ec.generate_private_key(ec.SECP256R1())),
     f"signing_key is not an Ed25519 key (it is EC); {GENERATE}"),
    (_pem(ed448.Ed448PrivateKey.generate()),
     f"signing_key is not an Ed25519 key (it is Ed448); {GENERATE}"),
    (ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
     f"signing_key is not a PEM private key; {GENERATE}"),
], ids=["garbage", "empty", "blank", "ec", "ed448", "public-key"])
def test_bad_signing_key_stops_run_before_any_row_is_disposed(setup: Setup, data: bytes,
                                                              problem: str) -> None:
    setup.policy(signing_key={"file": str(setup.key("signing.key", data))})
    line = refused(setup, setup.ws.invoke("run"))
    assert line == f"error: signing_key: {problem}"


def test_inline_signing_key_is_parsed_too(setup: Setup) -> None:
    setup.policy(signing_key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert refused(setup, setup.ws.invoke("config", "validate")) == (
        f"error: signing_key: signing_key is not a PEM private key; {GENERATE}")


def test_good_signing_key_is_exposed_as_a_private_key(setup: Setup) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    setup.policy(signing_key={"file": str(setup.key("signing.key", _pem(key)))})
    policy = parse_policy(setup.ws.config.read_bytes(), setup.ws.config)
    private = policy.signing_private_key
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert private.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    assert policy.secret_bytes == setup.ws.secret.read_bytes()


# -- 2. YAML: bombs, recursion, depth, complex keys; merge keys work ---------------------------
# 436 bytes; yaml.safe_load builds it in no time, expanding it (interpolation, validation)
# never ends.
BILLION_LAUGHS = "".join(
    [f'a0: &a0 ["{"lol" * 3}"]\n']
    + [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)])


@pytest.mark.parametrize(("text", "where", "problem"), [
    (BILLION_LAUGHS, "7:5", "aliases expand this to more than 250,000 values or 16 MiB of "
                            "text; write it out with fewer aliases"),
    ("a: &a [*a]\n", "1:4", "recursive alias: an anchor is used inside itself"),
    ("a: &a {b: *a}\n", "1:4", "recursive alias: an anchor is used inside itself"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "1:67", "nested more than 64 levels deep"),
    ("a:\n" + "".join(f"{' ' * i} b{i}:\n" for i in range(1, 500)), "64:65",
     "nested more than 64 levels deep"),
], ids=["billion-laughs", "recursive-list", "recursive-map", "deep-flow", "deep-block"])
def test_yaml_bombs_are_refused_quickly(setup: Setup, text: str, where: str,
                                        problem: str) -> None:
    path = setup.write(text)
    line = refused(setup, setup.bounded("config", "validate"))
    assert line == f"error: {path}:{where}: YAML error: {problem}"


@pytest.mark.parametrize("text", ["? [a, b]\n: 1\n", "? {a: 1}\n: 1\n", "[a]: 1\n"])
def test_complex_mapping_key_names_line_and_column(setup: Setup, text: str) -> None:
    path = setup.write("version: 1\n" + text)
    line = refused(setup, setup.ws.invoke("plan"))
    column = 1 if text.startswith("[") else 3
    assert line == (f"error: {path}:2:{column}: YAML error: complex mapping key ('? [...]' or "
                    "'? {...}'); a key is a plain name")


def test_merge_keys_are_accepted(setup: Setup) -> None:
    path = setup.write(f"""version: 1
secret_key: {{file: {setup.ws.secret}}}
stores: {{app: {{adapter: sql, url: "sqlite:///{setup.store}"}}}}
rules:
  - &base {{id: one, store: app, table: users, key: id, clock: closed_at, dispose_after: 3y}}
  - {{<<: *base, id: two, dispose_after: 5y}}
  - <<: [*base, {{keep_for: 1y, action: delete}}]
    id: three
""")
    policy = parse_policy(path.read_bytes(), path)
    got = [(r.id, r.store, r.table, r.key, r.clock, str(r.dispose_after), str(r.keep_for))
           for r in policy.rules]
    assert got == [("one", "app", "users", "id", "closed_at", "3y", "None"),
                   ("two", "app", "users", "id", "closed_at", "5y", "None"),
                   ("three", "app", "users", "id", "closed_at", "3y", "1y")]


def test_merged_policy_plans_through_the_cli(setup: Setup) -> None:
    setup.write(f"""version: 1
state: sqlite:///{setup.ws.root}/state.db
secret_key: {{file: {setup.ws.secret}}}
stores: {{app: {{adapter: sql, url: "sqlite:///{setup.store}"}}}}
rules:
  - &base {{id: one, store: app, table: users, key: id, clock: closed_at, dispose_after: 3y}}
  - {{<<: *base, id: two, dispose_after: 50y}}
""")
    result = setup.ws.invoke("--json", "plan", "--as-of", "2026-01-01T00:00:00Z")
    assert result.code == 0, result.err
    assert [(r["rule"], r["due"]) for r in result.json()["rules"]] == [("one", 2), ("two", 0)]


def test_a_key_written_twice_is_still_refused_beside_a_merge(setup: Setup) -> None:
    path = setup.write("a: &a {x: 1}\nb: {<<: *a, y: 1, y: 2}\n")
    line = refused(setup, setup.ws.invoke("plan"))
    assert line == (f"error: {path}:2:19: YAML error: duplicate key 'y' (first on line 2); "
                    "remove one of them")


# -- 3. key files: regular, private, small ------------------------------------------------------
@pytest.mark.parametrize("which", ["secret_key", "signing_key"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_key_file_that_is_not_a_regular_file(setup: Setup, which: str, kind: str) -> None:
    path = {"fifo": setup.ws.root / "key.fifo", "dev-zero": Path("/dev/zero"),
            "directory": setup.ws.root}[kind]
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    setup.policy(**{which: {"file": str(path)}})
    line = refused(setup, setup.bounded("run"))
    what = {"fifo": "a FIFO", "dev-zero": "a character device", "directory": "a directory"}
    assert line == f"error: {which}: key file {path} is {what[kind]}, not a regular file"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_group_or_others(setup: Setup, mode: int) -> None:
    path = setup.key("open.key", b"k" * 64, mode)
    setup.policy(secret_key={"file": str(path)})
    assert refused(setup, setup.ws.invoke("run")) == (
        f"error: secret_key: key file {path} is readable by group or others; chmod 600 {path}")


def test_oversized_key_file(setup: Setup) -> None:
    path = setup.key("huge.key", b"k" * (64 * 1024 + 1))
    setup.policy(secret_key={"file": str(path)})
    assert refused(setup, setup.ws.invoke("run")) == (
        f"error: secret_key: key file {path} is larger than 64 KiB")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_policy_file_that_is_not_a_regular_file(setup: Setup, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(setup.ws.config, 0o600)
    else:
        setup.ws.config.symlink_to("/dev/zero")
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert refused(setup, setup.bounded("plan")) == (
        f"error: {setup.ws.config}: cannot read policy file: it is {what}, not a regular file")


# -- 4. URLs and extreme values ----------------------------------------------------------------
NOT_A_URL = ("not a database URL; use a SQLAlchemy URL such as "
             "sqlite:////var/lib/retentiond/state.db or postgresql+psycopg://user@host/db")
DRIVERS = "use sqlite, postgresql+psycopg or mysql+pymysql"


@pytest.mark.parametrize(("url", "problem"), [
    ("not a url", NOT_A_URL),
    ("postgresql+psycopg://h:abc/db", "the port in the URL is not a number"),
    ("postgresql+psycopg://h:70000/db", "port 70000 is out of range; use 1-65535"),
    ("foo://x", f"unknown database driver 'foo'; {DRIVERS}"),
    ("mysql+nodriver://h/db", f"unknown database driver 'mysql+nodriver'; {DRIVERS}"),
    ("${RTD_UNSET_A:-${RTD_UNSET_B}}", "${RTD_UNSET_A:-...}: a default cannot contain another "
                                      "${...}; give a plain default"),
    ("sqlite:////proc/self/state.db", "SQLite database /proc/self/state.db is on the kernel "
                                      "file system /proc; put it in a directory such as "
                                      "/var/lib/retentiond"),
], ids=["words", "port-abc", "port-70000", "scheme", "driver", "nested-env", "proc"])
def test_bad_state_url(setup: Setup, url: str, problem: str) -> None:
    before = sorted(p.name for p in setup.ws.root.iterdir())
    setup.policy(state=url)
    assert refused(setup, setup.ws.invoke("plan")) == f"error: state: {problem}"
    assert sorted(p.name for p in setup.ws.root.iterdir()) == sorted([*before, "retentiond.yaml"])


def test_bad_store_url_is_named_by_its_path(setup: Setup) -> None:
    setup.ws.policy({"app": {"adapter": "sql", "url": "postgresql+psycopg://u:pw@h:x/db"}},
                    [_rule()])
    assert refused(setup, setup.ws.invoke("plan")) == (
        "error: stores.app.url: the port in the URL is not a number")


def test_state_directory_that_cannot_be_created_is_unreachable(setup: Setup) -> None:
    blocker = setup.key("blocker", b"a file where a directory should be")
    setup.policy(state=f"sqlite:///{blocker}/sub/state.db")
    line = refused(setup, setup.ws.invoke("plan"), code=3)
    assert line == (f"error: state database sqlite:///{blocker}/sub/state.db: cannot create "
                    f"{blocker}/sub: Not a directory; check `state:` in the policy")
    assert blocker.read_bytes() == b"a file where a directory should be"


@pytest.mark.parametrize(("value", "edge", "due"), [
    ("0001-01-01", "1970-01-01T00:00:00Z", 0),
    ("9999-12-31T23:59:59-12:00", "8999-12-31T23:59:59Z", 2),
    ("1969-12-31T23:59:59Z", "1970-01-01", 0),
    ("9000-01-01T00:00:00Z", "8999-12-31T23:59:59.999999Z", 2),
])
def test_as_of_outside_the_planning_range(setup: Setup, value: str, edge: str,
                                          due: int) -> None:
    setup.policy()
    assert refused(setup, setup.ws.invoke("plan", "--as-of", value)) == (
        f"error: --as-of {value!r}: must be between 1970-01-01 and 9000-01-01 (UTC)")
    result = setup.ws.invoke("--json", "plan", "--as-of", edge)  # the range's edge plans
    assert result.code == 0, result.err
    assert result.json()["totals"]["due"] == due


def test_huge_explain_key(setup: Setup) -> None:
    setup.policy()
    key = "7" * 10_000_000
    assert refused(setup, setup.ws.invoke("explain", "--rule", "old-users", "--key", key)) == (
        f"error: --key {'7' * 80!r}... (10000000 characters): is longer than 1024 characters")


def test_explain_key_too_large_for_the_column(setup: Setup) -> None:
    setup.policy()
    key = "9" * 400
    line = refused(setup, setup.ws.invoke("explain", "--rule", "old-users", "--key", key))
    assert line == (f"error: --key {'9' * 80!r}... (400 characters): does not fit the key "
                    "column id of app.users")


# -- 5. passwords in query strings are redacted ------------------------------------------------
@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:pw@h/db?password=pw2", "postgresql://u:***@h/db?password=***"),
    ("postgresql://h/db?sslmode=require&PASSWORD=x", "postgresql://h/db?sslmode=require&PASSWORD=***"),
    ("mysql+pymysql://h/db?passwd=x&charset=utf8", "mysql+pymysql://h/db?passwd=***&charset=utf8"),
    ("mssql+pyodbc://h/db?Pwd=x", "mssql+pyodbc://h/db?Pwd=***"),
    ("postgresql://h/db?sslpassword=k#x", "postgresql://h/db?sslpassword=***#x"),
    ("postgresql://h/db?application_name=pass&bypass=1&pass=x",
     "postgresql://h/db?application_name=pass&bypass=1&pass=***"),
])
def test_query_string_passwords_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# -- 6. strict types, blank and control-character values, one line per error ------------------
@pytest.mark.parametrize(("top", "line"), [
    ({"batch_size": True}, "batch_size: expected a whole number, got true"),
    ({"batch_size": "1000"}, "batch_size: expected a whole number, got a string '1000'"),
    ({"batch_size": 10.0}, "batch_size: expected a whole number, got a number 10.0"),
    ({"version": 1.0}, "version: must be the whole number 1, got 1.0"),
    ({"version": True}, "version: must be the whole number 1, got true"),
    ({"version": "1"}, "version: must be the whole number 1, got '1'"),
    ({"metrics": {"port": "9464"}}, "metrics.port: expected a whole number, got a string '9464'"),
], ids=["batch-true", "batch-str", "batch-float", "version-float", "version-true", "version-str",
        "port-str"])
def test_numbers_are_strict(setup: Setup, top: dict[str, Any], line: str) -> None:
    setup.policy(**top)
    assert refused(setup, setup.ws.invoke("plan")) == f"error: {line}"


CONTROL = "must not contain control characters (newlines, tabs, escapes)"


@pytest.mark.parametrize(("subject", "echo", "problem"), [
    ("", "''", "must not be empty or blank"),
    ("   ", "'   '", "must not be empty or blank"),
    ("a\nb", "'a\\nb'", CONTROL),
    ("\x1b[31mred", "'\\x1b[31mred'", CONTROL),
    ("x" * 1025, f"{'x' * 80!r}... (1025 characters)", "is longer than 1024 characters"),
], ids=["empty", "blank", "newline", "escape", "long"])
def test_request_erase_refuses_blank_and_control_subjects(setup: Setup, subject: str, echo: str,
                                                          problem: str) -> None:
    setup.policy()
    line = refused(setup, setup.ws.invoke("request", "erase", subject))
    assert line == f"error: SUBJECT {echo}: {problem}"


def test_hold_subject_is_checked_the_same_way(setup: Setup) -> None:
    setup.policy()
    line = refused(setup, setup.ws.invoke("hold", "add", "--subject", "a\nb", "--reason", "x"))
    assert line == ("error: --subject 'a\\nb': must not contain control characters (newlines, "
                    "tabs, escapes)")


def test_a_key_with_a_newline_is_echoed_on_one_line(setup: Setup) -> None:
    setup.write(f'version: 1\nsecret_key: {{file: {setup.ws.secret}}}\n'
                f'stores: {{app: {{adapter: sql, url: "sqlite:///{setup.store}"}}}}\n'
                '"colour\\nerror: forged": 1\n')
    assert refused(setup, setup.ws.invoke("plan")) == (
        "error: colour\\nerror: forged: unknown key")


def test_error_lines_escape_control_characters() -> None:
    assert PolicyError([("rules[0].id", "bad\nid\x1b[2J\u2028end")]).lines() == [
        "rules[0].id: bad\\nid\\x1b[2J\\u2028end"]
    assert RetentiondError("one\r\ntwo").lines() == ["one\\r\\ntwo"]


# -- a database error about `where` never echoes a value read from a row ----------------------
def test_where_error_from_the_database_quotes_no_row_value(ws: Any, pg_db: Any) -> None:
    engine = sa.create_engine(pg_db.url)
    with engine.begin() as conn:
        conn.execute(sa.text("create table users (id int primary key, email text not null, "
                             "created_at timestamp)"))
        conn.execute(sa.text("insert into users values (1, 'maria.schmidt.1@mail.example.org', "
                             "'2019-01-01')"))
    engine.dispose()
    ws.policy({"app": {"adapter": "sql", "url": pg_db.url}},
              [{"id": "casts", "store": "app", "table": "users", "key": "id",
                "clock": "created_at", "dispose_after": "1y", "action": "delete",
                "where": "email::int > 0"}])
    res = ws.invoke("config", "validate")
    assert res.code == 2
    assert "maria" not in res.out + res.err
    assert ("rules[0] (casts).where: does not run on store app: invalid input syntax for type "
            "integer: '…'") in res.out + res.err


def test_only_names_and_the_clauses_own_literals_survive_in_a_database_message() -> None:
    from retentiond.adapters.sql import without_values

    where = "status = 'closed' and email::int > 0"
    names = {"users", "email"}
    assert without_values('column "email" is "1" or \'closed\' not \'clo\' in "users"',
                          where, names) == (
        'column "email" is \'…\' or \'closed\' not \'…\' in "users"')
