"""Column types as PostgreSQL sees them (SPEC 10, Clocks): domains resolve to their base types
for clock and strategy checks, the domain's NOT NULL and CHECK still hold, an enum's values
bound a ``constant``, and a view is refused as a rule's table.

Every expectation is computed by hand from the rows below.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import ledger, log_free_lines, record_ref

from retentiond.anonymize import pseudonym

DDL = """
create domain email_t as text check (value like '%@%');
create domain stamp_t as timestamptz;
create domain code_t as varchar(8) not null;
create domain day_t as date;
create type account_state as enum ('open', 'closed', 'locked');
create table accounts (
    id integer primary key,
    closed_at stamp_t,
    last_login stamp_t,
    email email_t not null,
    code code_t,
    state account_state not null,
    born day_t,
    anonymized_at timestamptz
);
create view open_accounts as select * from accounts where state = 'open';
"""


def account_rows(now: datetime) -> list[dict[str, Any]]:
    d = lambda n: now - timedelta(days=n)  # noqa: E731 - a table of ages reads best inline
    spec = [(1, d(400), d(400), "closed"),  # due: closed over 1y, idle over 30d
            (2, d(400), d(10), "closed"),   # logged in recently
            (3, d(400), d(400), "open"),    # not closed
            (4, d(10), d(40), "closed"),    # closed too recently
            (5, None, d(400), "closed"),    # no clock
            (6, d(800), d(700), "closed"),  # due
            (7, d(500), None, "closed")]    # never logged in: older_than does not match NULL
    return [{"id": i, "closed_at": closed, "last_login": login, "state": state,
             "email": f"person.{i}@mail.example.org", "code": f"AC-{i:05d}",
             "born": date(1980 + i, i, 10 + i), "anonymized_at": None}
            for i, closed, login, state in spec]


@pytest.fixture
def accounts(pg_schema: Any) -> Iterator[tuple[sa.Engine, list[dict[str, Any]]]]:
    engine = pg_schema.engine()
    rows = account_rows(datetime.now(UTC).replace(microsecond=0))
    with engine.begin() as conn:
        conn.execute(sa.text(DDL))
        table = sa.Table("accounts", sa.MetaData(), autoload_with=conn)
        conn.execute(table.insert(), rows)
    yield engine, rows
    engine.dispose()


def read(engine: sa.Engine) -> dict[int, dict[str, Any]]:
    with engine.connect() as conn:
        return {r["id"]: dict(r) for r in conn.execute(
            sa.text("select * from accounts order by id")).mappings()}


def per_rule(doc: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    return {r["rule"]: (r["due"], r["done"], r["null_clock"]) for r in doc["rules"]}


CLOSED = {"id": "closed-accounts", "store": "app", "table": "accounts", "key": "id",
          "clock": "closed_at", "dispose_after": "1y",
          "match": {"state": "closed", "last_login": {"older_than": "30d"}}}


def test_anonymize_on_domain_and_enum_columns(accounts: Any, pg_schema: Any, ws: Any) -> None:
    engine, rows = accounts
    rule = {**CLOSED, "action": "anonymize", "anonymize": {
        "marker": "anonymized_at",
        "columns": {"email": {"strategy": "hmac", "format": "email", "domain": "anon.invalid"},
                    "code": {"strategy": "mask", "keep_last": 2},
                    "born": {"strategy": "truncate_date", "unit": "year"},
                    "state": {"strategy": "constant", "value": "locked"}}}}
    ws.policy({"app": {"adapter": "sql", "url": pg_schema.url}}, [rule])
    check = ws.invoke("config", "validate")
    assert check.code == 0, check.out + check.err

    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    assert per_rule(plan.json()) == {"closed-accounts": (2, 0, 1)}
    assert read(engine) == {r["id"]: r for r in rows}

    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert per_rule(run.json()) == {"closed-accounts": (2, 2, 1)}
    after = read(engine)
    key = ws.secret.read_bytes().rstrip(b"\n")
    for row in rows:
        now_row = after[row["id"]]
        if row["id"] not in (1, 6):
            assert now_row == row
            continue
        assert now_row.pop("anonymized_at") is not None
        expected = {**row, "email": f"{pseudonym(key, row['email'])}@anon.invalid",
                    "code": "******" + row["code"][-2:], "born": date(row["born"].year, 1, 1),
                    "state": "locked"}
        del expected["anonymized_at"]
        assert now_row == expected
    [entry] = ledger(ws.root / "state.db", "dispose")
    assert sorted(entry["record_refs"]) == sorted(
        record_ref(ws.secret, "app", "accounts", i) for i in (1, 6))
    assert ws.invoke("audit", "verify").code == 0


def test_delete_by_domain_clock_and_older_than(accounts: Any, pg_schema: Any, ws: Any) -> None:
    """The fast path (one statement per batch) with a clock and a match on ``stamp_t``."""
    engine, rows = accounts
    rule = {**CLOSED, "action": "delete"}
    ws.policy({"app": {"adapter": "sql", "url": pg_schema.url}}, [rule], batch_size=1)
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    assert per_rule(plan.json()) == {"closed-accounts": (2, 0, 1)}
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert per_rule(run.json()) == {"closed-accounts": (2, 2, 1)}
    assert read(engine) == {r["id"]: r for r in rows if r["id"] not in (1, 6)}
    assert ws.invoke("audit", "verify").code == 0


def test_domain_enum_and_view_refusals(accounts: Any, pg_schema: Any, ws: Any) -> None:
    def anon(rule_id: str, column: str, strategy: dict[str, Any]) -> dict[str, Any]:
        return {**CLOSED, "id": rule_id, "action": "anonymize",
                "anonymize": {"marker": "anonymized_at", "columns": {column: strategy}}}

    ws.policy({"app": {"adapter": "sql", "url": pg_schema.url}}, [
        {**CLOSED, "id": "reads-view", "table": "open_accounts", "action": "delete"},
        {**CLOSED, "id": "enum-clock", "clock": "state", "action": "delete"},
        {**CLOSED, "id": "enum-older", "action": "delete",
         "match": {"state": {"older_than": "1d"}}},
        anon("null-not-null-domain", "code", {"strategy": "null"}),
        anon("hmac-too-long", "code", {"strategy": "hmac"}),
        anon("constant-not-in-enum", "state", {"strategy": "constant", "value": "gone"}),
        anon("mask-on-enum", "state", {"strategy": "mask"}),
        anon("constant-breaks-check", "email", {"strategy": "constant", "value": "nobody"}),
        anon("hmac-breaks-check", "email", {"strategy": "hmac"}),
        anon("truncate-text-domain", "email", {"strategy": "truncate_date", "unit": "year"}),
        # Accepted: every one judged by the base type and the domain's own CHECK.
        anon("ok-hmac-email", "email", {"strategy": "hmac", "format": "email",
                                        "domain": "anon.invalid"}),
        anon("ok-constant-email", "email", {"strategy": "constant", "value": "x@anon.invalid"}),
        anon("ok-constant-enum", "state", {"strategy": "constant", "value": "locked"}),
        anon("ok-truncate-domain-date", "born", {"strategy": "truncate_date", "unit": "month"}),
        anon("ok-null-domain-date", "born", {"strategy": "null"}),
        anon("ok-mask-domain", "code", {"strategy": "mask", "keep_last": 2}),
    ])
    result = ws.invoke("config", "validate")
    assert result.code == 2, result.out + result.err
    errors = sorted(line for line in log_free_lines(result.err) if line.startswith("error: "))
    check = "(VALUE ~~ '%@%'::text)"
    assert errors == sorted([
        "error: rules[0] (reads-view).table: open_accounts is a view; name the table it "
        "reads from",
        "error: rules[1] (enum-clock).clock: column accounts.state is enum account_state; a "
        "clock must be a timestamp, date, ISO 8601 text or integer epoch seconds",
        "error: rules[2] (enum-older).match.state: older_than needs a timestamp or date "
        "column; accounts.state is enum account_state",
        'error: rules[3] (null-not-null-domain).anonymize.columns.code: strategy "null" on '
        'NOT NULL column accounts.code; use "constant" or "hmac"',
        "error: rules[4] (hmac-too-long).anonymize.columns.code: hmac output is 64 characters;"
        " accounts.code holds 8 (set length or widen the column)",
        "error: rules[5] (constant-not-in-enum).anonymize.columns.state: constant 'gone' is not"
        " a value of enum account_state (accounts.state); use one of 'open', 'closed', "
        "'locked'",
        'error: rules[6] (mask-on-enum).anonymize.columns.state: strategy "mask" on enum '
        'column accounts.state (account_state) writes values the enum does not have; use '
        '"constant" with one of its values',
        "error: rules[7] (constant-breaks-check).anonymize.columns.email: constant 'nobody' on"
        f" accounts.email breaks the CHECK of domain email_t {check}; pick a value the domain"
        " accepts",
        'error: rules[8] (hmac-breaks-check).anonymize.columns.email: strategy "hmac" on '
        f"accounts.email breaks the CHECK of domain email_t {check}; pick a value the domain "
        "accepts",
        'error: rules[9] (truncate-text-domain).anonymize.columns.email: strategy '
        '"truncate_date" needs a date or timestamp column; accounts.email is TEXT',
    ]), result.err
    assert "DOMAIN" not in result.err


def test_isolate_keeps_enum_and_base_types(accounts: Any, pg_schema: Any, ws: Any) -> None:
    """``accounts_isolated`` is created with the enum type itself and each domain's base
    type (the quarantine copy does not re-check the domains' constraints)."""
    engine, rows = accounts
    ws.policy({"app": {"adapter": "sql", "url": pg_schema.url}},
              [{**CLOSED, "action": "isolate", "isolate": {"for": "30d"}}])
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert per_rule(run.json()) == {"closed-accounts": (2, 2, 1)}
    assert read(engine) == {r["id"]: r for r in rows if r["id"] not in (1, 6)}
    with engine.connect() as conn:
        types = dict(conn.execute(sa.text(
            "select column_name, format_type(atttypid, atttypmod) from information_schema"
            ".columns join pg_attribute on attrelid = 'accounts_isolated'::regclass and "
            "attname = column_name where table_name = 'accounts_isolated' "
            "and table_schema = current_schema()")).all())
        copies = {r["id"]: dict(r) for r in conn.execute(sa.text(
            "select * from accounts_isolated")).mappings()}
    assert types == {"id": "integer", "closed_at": "timestamp with time zone",
                     "last_login": "timestamp with time zone", "email": "text",
                     "code": "character varying(8)", "state": "account_state",
                     "born": "date", "anonymized_at": "timestamp with time zone",
                     "retentiond_isolated_at": "timestamp without time zone",
                     "retentiond_rule": "character varying(64)",
                     "retentiond_purge_after": "timestamp without time zone"}
    assert {i: {k: v for k, v in r.items() if not k.startswith("retentiond_")}
            for i, r in copies.items()} == {r["id"]: r for r in rows if r["id"] in (1, 6)}
