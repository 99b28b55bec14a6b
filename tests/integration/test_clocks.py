"""Clocks whose meaning retentiond must not guess, and markers it must not trust (issue 10).

Integer clocks need ``clock_format``; text clocks that do not parse are counted ``bad_clock``
and never disposed; implausible clock ranges and suspicious markers are reported by
``config validate``, and the cheap checks fail the rule at the start of every plan and run.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from helpers import error_lines, ids

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=800)  # due under dispose_after: 1y
YOUNG = NOW - timedelta(days=30)  # not due


def _epoch_table(engine: sa.Engine, rows: dict[int, int | None]) -> None:
    md = sa.MetaData()
    t = sa.Table("events", md, sa.Column("id", sa.Integer, primary_key=True,
                                         autoincrement=False),
                 sa.Column("at", sa.BigInteger, nullable=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": k, "at": v} for k, v in rows.items()])


def _rule(**extra: Any) -> dict[str, Any]:
    return {"id": "old-events", "store": "app", "table": "events", "key": "id", "clock": "at",
            "dispose_after": "1y", "action": "delete", **extra}


def _counts(doc: dict[str, Any]) -> dict[str, Any]:
    [rule] = doc["rules"]
    return {k: rule.get(k) for k in ("due", "done", "failed", "null_clock", "bad_clock",
                                     "error")}


def test_integer_clock_without_clock_format_is_refused(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    _epoch_table(engine, {1: 0, 2: 1, 3: int(OLD.timestamp())})  # a 0/1 flag and a time
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [_rule()])
    result = ws.invoke("config", "validate")
    assert result.code == 2, (result.out, result.err)
    assert error_lines(result.err) == [
        "error: rules[0] (old-events).clock: column events.at is an integer (BIGINT); say "
        "what it counts with clock_format: epoch_seconds or epoch_millis (retentiond does not "
        "guess: a 0/1 flag read as seconds is 1970 and every record is due)"]
    for command in (("plan", "--json"), ("run", "--json")):
        ran = ws.invoke(*command)
        assert ran.code == 1, (command, ran.out, ran.err)
        counts = _counts(ran.json())
        assert counts["due"] == counts["done"] == 0
        assert counts["error"] == (
            "rules[0] (old-events).clock: column events.at is an integer (BIGINT); say what it "
            "counts with clock_format: epoch_seconds or epoch_millis (retentiond does not "
            "guess: a 0/1 flag read as seconds is 1970 and every record is due)")
    assert ids(engine, "events") == {1, 2, 3}
    engine.dispose()


def test_epoch_millis_and_seconds(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    ms = {1: int(OLD.timestamp()) * 1000 + 999, 2: int(YOUNG.timestamp()) * 1000, 3: None,
          4: int((NOW - timedelta(days=366)).timestamp() * 1000)}
    _epoch_table(engine, ms)
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}},
              [_rule(clock_format="epoch_millis")])
    validated = ws.invoke("config", "validate", "--json")
    assert validated.code == 0, validated.err
    assert validated.json()["warnings"] == []
    assert _counts(ws.invoke("plan", "--json").json()) == {
        "due": 2, "done": 0, "failed": 0, "null_clock": 1, "bad_clock": 0, "error": None}
    ran = ws.invoke("run", "--json")
    assert ran.code == 0, ran.err
    assert _counts(ran.json()) == {
        "due": 2, "done": 2, "failed": 0, "null_clock": 1, "bad_clock": 0, "error": None}
    assert ids(engine, "events") == {2, 3}
    explained = ws.invoke("explain", "--rule", "old-events", "--key", "2", "--json").json()
    assert explained["clock"] == datetime.fromtimestamp(ms[2] // 1000, UTC).isoformat()
    engine.dispose()


def test_millis_read_as_seconds_is_an_implausible_clock(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    millis = int(YOUNG.timestamp()) * 1000
    _epoch_table(engine, {1: millis})
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}},
              [_rule(clock_format="epoch_seconds")])
    result = ws.invoke("config", "validate", "--json")
    assert result.code == 0, result.err
    [warning] = result.json()["warnings"]
    assert warning == (
        f"rules[0] (old-events).clock: events.at ranges from {millis} (epoch_seconds) to "
        f"{millis} (epoch_seconds): values before 1971 or more than a day in the future are "
                            "implausible (is clock_format epoch_seconds right?); check that at "
                            "is the time the retention starts")
    assert f"warning: {warning}" in result.err
    engine.dispose()


BAD_TEXT = {1: OLD.strftime("%Y-%m-%d %H:%M:%S"), 2: OLD.strftime("%Y-%m-%d"),
            3: YOUNG.strftime("%Y-%m-%d %H:%M:%S.%f"), 4: "n/a", 5: "", 6: "01/02/2020",
            7: OLD.strftime("%Y-%m-%dT%H:%M:%S"), 8: "2020-13-01", 9: None,
            10: "1999-01-01 25:00:00", 11: "  2020-01-01"}


def _text_table(engine: sa.Engine) -> None:
    md = sa.MetaData()
    t = sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True,
                                        autoincrement=False),
                 sa.Column("written", sa.String(40), nullable=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": k, "written": v} for k, v in BAD_TEXT.items()])


def test_text_clocks_that_do_not_parse_are_counted_and_never_disposed(store_db: Any,
                                                                       ws: Any) -> None:
    engine = store_db.engine()
    _text_table(engine)
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [
        {"id": "old-notes", "store": "app", "table": "notes", "key": "id", "clock": "written",
         "dispose_after": "1y", "action": "delete"}])
    validated = ws.invoke("config", "validate", "--json")
    assert validated.code == 0, validated.err
    assert validated.json()["warnings"] == [
        "rules[0] (old-notes).clock: 7 records have a notes.written that does not parse as "
        "YYYY-MM-DD[ HH:MM:SS[.ffffff]]; they are never due by time (plan and run count them "
        "bad_clock)"]
    expected = {"due": 2, "done": 0, "failed": 0, "null_clock": 1, "bad_clock": 7,
                "error": None}
    assert _counts(ws.invoke("plan", "--json").json()) == expected
    ran = ws.invoke("run", "--json")
    assert ran.code == 0, ran.err
    assert _counts(ran.json()) == {**expected, "done": 2}
    assert ids(engine, "notes") == set(BAD_TEXT) - {1, 2}
    explained = ws.invoke("explain", "--rule", "old-notes", "--key", "4", "--json")
    assert explained.code == 0, explained.err
    assert [(v["outcome"], v["why"]) for v in explained.json()["rules"]] == [
        ("bad-clock", "the clock does not parse: never due by time")]
    engine.dispose()


def test_a_bad_clock_keeps_another_rules_floor(sqlite_db: Any, ws: Any) -> None:
    """A record whose floor cannot be read is protected by it, not disposed by another rule."""
    engine = sqlite_db.engine()
    md = sa.MetaData()
    t = sa.Table("docs", md, sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("created_at", sa.DateTime), sa.Column("signed", sa.String(30)))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": 1, "created_at": OLD.replace(tzinfo=None),
                                   "signed": "unknown"},
                                  {"id": 2, "created_at": OLD.replace(tzinfo=None),
                                   "signed": OLD.strftime("%Y-%m-%d")}])
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [
        {"id": "old-docs", "store": "app", "table": "docs", "key": "id",
         "clock": "created_at", "dispose_after": "1y"},
        {"id": "signed-docs", "store": "app", "table": "docs", "key": "id", "clock": "signed",
         "keep_for": "10y"}])
    ran = ws.invoke("run", "--json")
    assert ran.code == 0, ran.err
    assert [(r["rule"], r["done"]) for r in ran.json()["rules"]] == [
        ("old-docs", 0), ("signed-docs", 0)]
    assert ids(engine, "docs") == {1, 2}
    explained = ws.invoke("explain", "--rule", "old-docs", "--key", "1", "--json").json()
    assert [(v["rule"], v["outcome"], v["by"]) for v in explained["rules"]] == [
        ("old-docs", "protected", "signed-docs"), ("signed-docs", "request-only", None)]
    engine.dispose()


# -- markers ---------------------------------------------------------------------------------
def _anon_rule(**extra: Any) -> dict[str, Any]:
    return {"id": "closed-users", "store": "app", "table": "accounts", "key": "id",
            "clock": "closed_at", "dispose_after": "1y", "action": "anonymize",
            "anonymize": {"marker": "last_update", "columns": {"email": {"strategy": "null"}}},
            **extra}


def _accounts(engine: sa.Engine, marker_ddl: str, extra_sql: tuple[str, ...] = ()) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            f"create table accounts (id integer primary key, closed_at timestamp null, "
            f"email varchar(80) null, {marker_ddl})"))
        for sql in extra_sql:
            conn.execute(sa.text(sql))
        conn.execute(sa.text("insert into accounts (id, closed_at, email) values "
                             "(1, :old, 'a@example.org'), (2, :old, 'b@example.org')"),
                     {"old": OLD.replace(tzinfo=None)})


def _refused(ws: Any, reason: str) -> None:
    result = ws.invoke("config", "validate")
    assert result.code == 2, (result.out, result.err)
    assert error_lines(result.err) == [
        f"error: rules[0] (closed-users).anonymize.marker: column accounts.last_update{reason}"]
    ran = ws.invoke("run", "--json")
    assert ran.code == 1, ran.err
    assert _counts(ran.json())["error"] == (
        f"rules[0] (closed-users).anonymize.marker: column accounts.last_update{reason}")


def test_postgresql_trigger_maintained_marker_is_refused(pg_db: Any, ws: Any) -> None:
    engine = pg_db.engine()
    _accounts(engine, "last_update timestamp null", (
        "create function touch() returns trigger language plpgsql as "
        "$$ begin NEW.last_update := now(); return NEW; end $$",
        "create trigger accounts_touch before insert or update on accounts "
        "for each row execute function touch()",
        "create function unrelated() returns trigger language plpgsql as "
        "$$ begin NEW.email := lower(NEW.email); return NEW; end $$",
        "create trigger accounts_lower before update on accounts "
        "for each row execute function unrelated()"))
    ws.policy({"app": {"adapter": "sql", "url": pg_db.url}}, [_anon_rule()])
    _refused(ws, ": table has a trigger (accounts_touch) that may set the marker; every row "
                 "it touches would look anonymised. Use a marker column no trigger writes")
    engine.dispose()


def test_a_trigger_on_one_partition_only_is_found(pg_db: Any, ws: Any) -> None:
    """A partitioned table: the trigger that writes the marker sits on one partition."""
    engine = pg_db.engine()
    with engine.begin() as conn:
        for sql in (
                "create table accounts (id integer not null, closed_at timestamp not null, "
                "email varchar(80) null, last_update timestamp null, "
                "primary key (id, closed_at)) partition by range (closed_at)",
                "create table accounts_old partition of accounts for values from "
                "('2000-01-01') to ('2024-01-01')",
                "create table accounts_new partition of accounts for values from "
                "('2024-01-01') to ('2100-01-01')",
                "create function touch() returns trigger language plpgsql as "
                "$$ begin NEW.last_update := now(); return NEW; end $$",
                "create trigger old_touch before update on accounts_old "
                "for each row execute function touch()"):
            conn.execute(sa.text(sql))
    ws.policy({"app": {"adapter": "sql", "url": pg_db.url}},
              [_anon_rule(key=["id", "closed_at"])])
    _refused(ws, ": table has a trigger (old_touch) that may set the marker; every row "
                 "it touches would look anonymised. Use a marker column no trigger writes")
    engine.dispose()


def test_postgresql_marker_with_a_default_is_refused(pg_db: Any, ws: Any) -> None:
    engine = pg_db.engine()
    _accounts(engine, "last_update timestamp null default now()")
    ws.policy({"app": {"adapter": "sql", "url": pg_db.url}}, [_anon_rule()])
    _refused(ws, " has a default (now()); every new row would look anonymised. Drop the "
                 "default: only retentiond may set the marker")
    engine.dispose()


def test_mariadb_on_update_marker_is_refused(mariadb_db: Any, ws: Any) -> None:
    engine = mariadb_db.engine()
    _accounts(engine, "last_update timestamp null on update current_timestamp")
    ws.policy({"app": {"adapter": "sql", "url": mariadb_db.url}}, [_anon_rule()])
    _refused(ws, ": is on update current_timestamp(); every row an application updates "
                 "would look anonymised. Drop ON UPDATE: only retentiond may set the marker")
    engine.dispose()


def test_sqlite_trigger_setting_the_marker_is_refused(sqlite_db: Any, ws: Any) -> None:
    engine = sqlite_db.engine()
    _accounts(engine, "last_update timestamp null", (
        "create trigger stamp after update on accounts begin "
        "update accounts set last_update = current_timestamp where id = new.id; end",))
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [_anon_rule()])
    _refused(ws, ": table has a trigger (stamp) that may set the marker; every row it touches "
                 "would look anonymised. Use a marker column no trigger writes")
    engine.dispose()


def test_marker_set_on_most_rows_without_a_ledger_entry_warns(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    _accounts(engine, "last_update timestamp null")
    with engine.begin() as conn:
        conn.execute(sa.text("update accounts set last_update = closed_at"))
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [_anon_rule()])
    result = ws.invoke("config", "validate", "--json")
    assert result.code == 0, result.err
    assert result.json()["warnings"] == [
        "rules[0] (closed-users).anonymize.marker: 2 of 2 matching rows of accounts already "
        "have last_update set, but the ledger holds no anonymisation by this rule; if "
        "something else sets the marker, those rows count as done and are never anonymised"]
    engine.dispose()


def test_validate_checks_live_every_rule_that_passed_its_static_checks(sqlite_db: Any,
                                                                       ws: Any) -> None:
    engine = sqlite_db.engine()
    _epoch_table(engine, {1: 5})
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [
        _rule(keep_for="2y"),  # static: keep_for longer than dispose_after
        _rule(id="second"),  # live: integer clock without clock_format
        _rule(id="third", table="no_such_table")])
    result = ws.invoke("config", "validate")
    assert result.code == 2, (result.out, result.err)
    assert [line.split(":", 2)[1] for line in error_lines(result.err)] == [
        " rules[0] (old-events).keep_for", " rules[1] (second).clock",
        " rules[2] (third).table"]
    engine.dispose()


def test_explain_prints_every_time_in_the_policy_zone_with_its_offset(sqlite_db: Any,
                                                                      ws: Any) -> None:
    engine = sqlite_db.engine()
    seconds = int(YOUNG.timestamp())
    _epoch_table(engine, {1: seconds})
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}},
              [_rule(clock_format="epoch_seconds", keep_for="6mo")], timezone="Europe/Berlin")
    berlin = ZoneInfo("Europe/Berlin")
    doc = ws.invoke("explain", "--rule", "old-events", "--key", "1", "--json").json()
    clock = datetime.fromtimestamp(seconds, berlin)
    assert doc["clock"] == clock.isoformat()
    as_of = datetime.fromisoformat(doc["as_of"])
    assert as_of.utcoffset() == as_of.astimezone(berlin).utcoffset()
    assert doc["as_of"] == as_of.astimezone(berlin).isoformat()
    text = ws.invoke("explain", "--rule", "old-events", "--key", "1")
    assert text.code == 0, text.err
    flat = " ".join(text.out.split())
    assert f"clock: {clock.isoformat()}" in flat
    offset = f"{as_of.isoformat()[-6:]}"
    assert re.search(r"as of \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?" + re.escape(offset),
                     flat), flat
    engine.dispose()


def test_a_clock_before_1971_is_implausible(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    md = sa.MetaData()
    t = sa.Table("visits", md, sa.Column("id", sa.Integer, primary_key=True,
                                         autoincrement=False),
                 sa.Column("seen", sa.DateTime, nullable=True))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": 1, "seen": datetime(1970, 1, 1, 0, 0, 1)},
                                  {"id": 2, "seen": YOUNG.replace(tzinfo=None)}])
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [
        {"id": "visits", "store": "app", "table": "visits", "key": "id", "clock": "seen",
         "dispose_after": "1y"}])
    result = ws.invoke("config", "validate", "--json")
    assert result.code == 0, result.err
    young = YOUNG.isoformat(sep=" ", timespec="seconds")
    warning = (f"rules[0] (visits).clock: visits.seen ranges from 1970-01-01 00:00:01+00:00 "
               f"to {young}: values before 1971 or more than a day in the future are "
               "implausible; check that seen is the time the retention starts")
    assert result.json()["warnings"] == [warning]
    # the same check at the start of every plan and run, in the rule's JSON and the log
    for command in ("plan", "run"):
        swept = ws.invoke(command, "--json")
        assert swept.code == 0, swept.err
        [rule] = swept.json()["rules"]
        assert rule["warnings"] == [warning]
        assert '"event": "rule check"' in swept.err
    engine.dispose()
