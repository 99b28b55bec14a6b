"""``config validate`` refuses anonymisation that cannot work on the live schema (SPEC 4): one
``error:`` line per problem, each naming ``rules[i].anonymize.columns.<col>`` or
``rules[i].anonymize.marker``, exit 2; and a secret key that is too short or readable by others.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from helpers import log_free_lines


def accounts_table(metadata: sa.MetaData) -> sa.Table:
    """``code`` is the primary key; the rules' key is ``uid``, a unique column."""
    return sa.Table(
        "accounts", metadata,
        sa.Column("code", sa.String(20), primary_key=True),
        sa.Column("uid", sa.Integer, nullable=False, unique=True),
        sa.Column("closed_at", sa.DateTime, nullable=True),
        sa.Column("anonymized_at", sa.DateTime, nullable=True),
        sa.Column("locked_at", sa.DateTime, nullable=False),
        sa.Column("email", sa.String(120), nullable=False, unique=True),
        sa.Column("handle", sa.String(64), nullable=True, unique=True),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("city", sa.String(40), nullable=False, server_default="unknown"),
        sa.Column("short", sa.String(32), nullable=True),
        sa.Column("age", sa.Integer, nullable=True),
        sa.Column("label", sa.String(8), nullable=True),
        sa.Column("born", sa.String(40), nullable=True),
        sa.Column("income", sa.String(40), nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("score", sa.Numeric(10, 2), nullable=True),
        sa.Column("joined", sa.Date, nullable=True),
        sa.Column("seen", sa.DateTime, nullable=True),
    )


def rule(rule_id: str, columns: dict[str, Any], marker: str = "anonymized_at") -> dict[str, Any]:
    return {"id": rule_id, "store": "app", "table": "accounts", "key": "uid",
            "clock": "closed_at", "dispose_after": "3y", "action": "anonymize",
            "anonymize": {"marker": marker, "columns": columns}}


NULL = {"strategy": "null"}
TOO_LONG = {"strategy": "constant", "value": "redacted-value"}
COLLIDE = 'would make values collide; use "hmac" without length'
HMAC_TOO_LONG = "characters; accounts.short holds 32 (set length or widen the column)"

# (rule, the error lines it must produce without the "error: rules[i] (id)." prefix)
CASES: list[tuple[dict[str, Any], list[str]]] = [
    (rule("null-on-not-null", {"name": NULL}),
     ['anonymize.columns.name: strategy "null" on NOT NULL column accounts.name; '
      'use "constant" or "hmac"']),
    (rule("default-without-server-default", {"status": {"strategy": "default"}}),
     ['anonymize.columns.status: strategy "default" on accounts.status, which has no '
      'server default; use "constant"']),
    (rule("mask-on-primary-key", {"code": {"strategy": "mask", "keep_last": 2}}),
     [f'anonymize.columns.code: strategy "mask" on primary-key column accounts.code {COLLIDE}']),
    (rule("constant-on-unique", {"email": {"strategy": "constant", "value": "x@y.invalid"}}),
     [f'anonymize.columns.email: strategy "constant" on unique column accounts.email {COLLIDE}']),
    (rule("short-hmac-on-unique", {"handle": {"strategy": "hmac", "length": 12}}),
     [f'anonymize.columns.handle: strategy "hmac" on unique column accounts.handle {COLLIDE}']),
    (rule("hmac-too-long", {"short": {"strategy": "hmac"}}),
     [f"anonymize.columns.short: hmac output is 64 {HMAC_TOO_LONG}"]),
    (rule("hmac-email-too-long", {"short": {"strategy": "hmac", "length": 16,
                                            "format": "email"}}),
     [f"anonymize.columns.short: hmac output is 35 {HMAC_TOO_LONG}"]),
    (rule("text-constant-in-integer", {"age": {"strategy": "constant", "value": "n/a"}}),
     ["anonymize.columns.age: constant 'n/a' cannot be stored in accounts.age (INTEGER)"]),
    (rule("constant-too-long", {"label": TOO_LONG}),
     ["anonymize.columns.label: constant 'redacted-value' is 14 characters; accounts.label "
      "holds 8"]),
    (rule("truncate-text", {"born": {"strategy": "truncate_date", "unit": "year"}}),
     ['anonymize.columns.born: strategy "truncate_date" needs a date or timestamp column; '
      "accounts.born is VARCHAR(40)"]),
    (rule("round-text", {"income": {"strategy": "round", "step": 10}}),
     ['anonymize.columns.income: strategy "round" needs a numeric column; accounts.income '
      "is VARCHAR(40)"]),
    (rule("missing-marker", {"note": NULL}, marker="anonymised_on"),
     ["anonymize.marker: column accounts.anonymised_on does not exist; add a nullable "
      "timestamp column for retentiond to set"]),
    (rule("not-null-marker", {"note": NULL}, marker="locked_at"),
     ["anonymize.marker: column accounts.locked_at is NOT NULL; the marker must be nullable "
      "(NULL = not yet anonymised)"]),
    (rule("several-at-once", {"name": NULL, "label": TOO_LONG, "age": {"strategy": "round",
                                                                        "step": 2.5},
                              "nope": NULL}, marker="anonymised_on"),
     ["anonymize.marker: column accounts.anonymised_on does not exist; add a nullable "
      "timestamp column for retentiond to set",
      'anonymize.columns.name: strategy "null" on NOT NULL column accounts.name; '
      'use "constant" or "hmac"',
      "anonymize.columns.label: constant 'redacted-value' is 14 characters; accounts.label "
      "holds 8",
      "anonymize.columns.age: round step 2.5 on integer column accounts.age must be a whole "
      "number",
      "anonymize.columns.nope: column accounts.nope does not exist"]),
    # Every strategy where it fits: no line at all.
    (rule("all-fit", {
        "email": {"strategy": "hmac", "format": "email"},
        "handle": {"strategy": "hmac"},
        "short": {"strategy": "hmac", "length": 32},
        "name": {"strategy": "mask", "keep_first": 1, "keep_last": 1},
        "status": {"strategy": "constant", "value": "closed"},
        "city": {"strategy": "default"},
        "note": {"strategy": "fake", "provider": "name", "deterministic": True},
        "label": {"strategy": "constant", "value": "redacted"},
        "age": {"strategy": "round", "step": 5},
        "score": {"strategy": "round", "step": 0.5},
        "joined": {"strategy": "truncate_date", "unit": "month"},
        "seen": {"strategy": "truncate_date", "unit": "day"},
        "born": NULL, "income": {"strategy": "mask", "format": "email"}}),
     []),
]

def test_each_refusal_is_one_error_line(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    accounts_table(sa.MetaData()).metadata.create_all(engine)
    engine.dispose()
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [r for r, _ in CASES])
    result = ws.invoke("config", "validate")
    assert result.code == 2, result.out + result.err
    assert "Traceback" not in result.err
    expected = [f"error: rules[{i}] ({r['id']}).{line}" for i, (r, lines) in enumerate(CASES)
                for line in lines]
    got = log_free_lines(result.err)
    assert sorted(got) == sorted(expected)
    assert len(got) == len(expected)
    assert result.out == ""


def test_secret_key_too_short_or_readable_by_others(store_db_sp: Any, ws: Any) -> None:
    engine = store_db_sp.engine()
    accounts_table(sa.MetaData()).metadata.create_all(engine)
    engine.dispose()
    ws.policy({"app": {"adapter": "sql", "url": store_db_sp.url}}, [CASES[-1][0]])

    ws.secret.write_bytes(b"k" * 31 + b"\n")  # the trailing newline does not count
    os.chmod(ws.secret, 0o600)
    short = ws.invoke("config", "validate")
    assert short.code == 2, short.err
    assert log_free_lines(short.err) == [
        "error: secret_key: secret_key is 31 bytes; it must be at least 32 bytes"]

    ws.secret.write_bytes(b"k" * 32 + b"\n")
    os.chmod(ws.secret, 0o644)
    readable = ws.invoke("config", "validate")
    assert readable.code == 2, readable.err
    assert log_free_lines(readable.err) == [
        f"error: secret_key: key file {ws.secret} is readable by group or others; "
        f"chmod 600 {ws.secret}"]

    # 32 bytes, mode 0600: the policy (every strategy where it fits) validates.
    os.chmod(ws.secret, 0o600)
    fixed = ws.invoke("config", "validate", "--json")
    assert fixed.code == 0, fixed.err
    assert fixed.json() == {"ok": True, "config": str(ws.config), "rules": 1, "stores": 1,
                            "warnings": []}
