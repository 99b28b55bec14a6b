"""A failing record never stops its rule (SPEC 10, "Foreign keys": a record failing with an
integrity error nobody foresaw is ``failed`` alone; its batch's other records are disposed and
the rule goes on), on SQLite, PostgreSQL and MariaDB.

A trigger raises for the rows flagged ``locked`` (SQLite ``RAISE(ABORT)``, PostgreSQL plpgsql
``RAISE EXCEPTION``, MariaDB ``SIGNAL``); the message it raises carries a row's id, which must
never reach the output. ``batch_size: 4`` spreads the failing rows over several batches."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import ledger, now_seconds, record_ref

from retentiond.audit.ledger import key_text

OLD_DAYS = 800
DUE = set(range(1, 31))  # ids 1..30 are old, 31..40 recent
LOCKED = {3, 9, 10, 17, 25, 30}  # the trigger raises for these
ERASED_SUBJECT = 7  # subject of ids 7, 14, 21, 28, 35 (id % 7 == 0)
RULE = {"id": "old-events", "store": "app", "table": "events", "key": "id",
        "clock": "created_at", "dispose_after": "1y", "action": "delete",
        "subject": "subject_id", "subject_kind": "user", "on_erasure": "delete"}
SECRET_TEXT = "locked row QZX4242"  # letters no hash, id or timestamp holds
REASONS = {"sqlite": "IntegrityError",
           "postgresql": "error raised by a trigger (RaiseException)",
           "mariadb": "error signalled by a trigger (OperationalError 1644)"}


def trigger_sql(backend: str, condition: dict[str, str], sqlstate: str = "") -> list[str]:
    """A BEFORE DELETE trigger raising for rows meeting ``condition`` (per backend)."""
    cond = condition[backend]
    if backend == "sqlite":
        return [f"create trigger events_guard before delete on events when {cond} "
                f"begin select raise(abort, '{SECRET_TEXT}'); end"]
    if backend == "postgresql":
        code = f" using errcode = '{sqlstate}'" if sqlstate else ""
        return [f"create function events_guard() returns trigger language plpgsql as $$ "
                f"begin if {cond} then raise exception '{SECRET_TEXT} %', old.id{code}; "
                f"end if; return old; end $$",
                "create trigger events_guard before delete on events for each row "
                "execute function events_guard()"]
    errno = " , mysql_errno = 1365" if sqlstate else ""
    state = sqlstate or "45000"
    return [f"create trigger events_guard before delete on events for each row begin "
            f"if {cond} then signal sqlstate '{state}' set message_text = '{SECRET_TEXT}'"
            f"{errno}; end if; end"]


def seed(engine: sa.Engine, triggers: list[str]) -> None:
    md = sa.MetaData()
    events = sa.Table("events", md,
                      sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("created_at", sa.DateTime, nullable=False),
                      sa.Column("subject_id", sa.Integer, nullable=True),
                      sa.Column("locked", sa.Integer, nullable=False))
    md.create_all(engine)
    now = now_seconds()
    with engine.begin() as conn:
        conn.execute(events.insert(), [
            {"id": i, "created_at": now - timedelta(days=OLD_DAYS if i in DUE else 5),
             "subject_id": ERASED_SUBJECT if i % 7 == 0 else 100 + i,
             "locked": int(i in LOCKED)} for i in range(1, 41)])
        for sql in triggers:
            conn.execute(sa.text(sql))


def remaining(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("select id from events")).scalars())


def disposed_refs(ws: Any) -> list[str]:
    return [ref for e in ledger(ws.root / "state.db", "dispose") for ref in e["record_refs"]]


def refs(ws: Any, keys: set[int]) -> list[str]:
    return sorted(record_ref(ws.secret, "app", "events", k) for k in keys)


def test_failing_rows_fail_alone_and_the_rule_goes_on(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    seed(engine, trigger_sql(store_db.backend, dict.fromkeys(
        ("sqlite", "postgresql", "mariadb"), "old.locked = 1")))
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [RULE], batch_size=4)

    res = ws.invoke("--json", "run")

    assert res.code == 1, res.err
    assert remaining(engine) == LOCKED | set(range(31, 41))
    rule = res.json()["rules"][0]
    assert (rule["due"], rule["done"], rule["failed"]) == (30, 24, 6)
    reason = REASONS[store_db.backend]
    assert rule["error"] == f"6 records failed: {reason}"
    assert "QZX4242" not in res.out + res.err and "locked row" not in res.out + res.err
    assert sorted(disposed_refs(ws)) == refs(ws, DUE - LOCKED)
    assert len(disposed_refs(ws)) == len(DUE - LOCKED)  # each disposed record ledgered once
    assert ws.invoke("audit", "verify").code == 0
    # The next sweep tries the failing records again, and only them.
    again = ws.invoke("--json", "run").json()["rules"][0]
    assert (again["due"], again["done"], again["failed"]) == (6, 0, 6)
    assert remaining(engine) == LOCKED | set(range(31, 41))


def test_failing_erasure_records_do_not_skip_the_time_part(store_db: Any, ws: Any) -> None:
    """The erased subject's rows fail in the trigger; the rest of the erasure and the whole
    time part are disposed."""
    engine = store_db.engine()
    cond = f"old.subject_id = {ERASED_SUBJECT} and old.id > 20"
    seed(engine, trigger_sql(store_db.backend, dict.fromkeys(
        ("sqlite", "postgresql", "mariadb"), cond)))
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [RULE], batch_size=4)
    assert ws.invoke("request", "erase", str(ERASED_SUBJECT), "--kind", "user").code == 0

    res = ws.invoke("--json", "run")

    assert res.code == 1, res.err
    failing = {21, 28, 35}
    assert remaining(engine) == failing | (set(range(31, 41)) - {35})
    rule = res.json()["rules"][0]
    assert (rule["done"], rule["failed"]) == (30 + 1 - 3, 3)
    assert sorted(disposed_refs(ws)) == refs(ws, (DUE | {35}) - failing)
    assert ws.invoke("audit", "verify").code == 0


def test_an_erasure_failing_with_a_store_error_still_runs_the_time_part(
        store_db: Any, ws: Any) -> None:
    """Not an integrity error (a division by zero): the erasure's selection stops, the rule
    reports it, and the time part of the same rule still runs. (A SQLite trigger can only
    raise constraint errors, which fail records alone.)"""
    if store_db.backend == "sqlite":
        pytest.skip("a SQLite trigger raises only integrity errors")
    engine = store_db.engine()
    cond = f"old.subject_id = {ERASED_SUBJECT}"
    seed(engine, trigger_sql(store_db.backend, dict.fromkeys(
        ("postgresql", "mariadb"), cond), sqlstate="22012"))
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [RULE], batch_size=4)
    assert ws.invoke("request", "erase", str(ERASED_SUBJECT), "--kind", "user").code == 0

    res = ws.invoke("--json", "run")

    assert res.code == 1, res.err
    erased = {7, 14, 21, 28, 35}
    assert remaining(engine) == erased | set(range(31, 41))
    rule = res.json()["rules"][0]
    assert rule["done"] == 30 - 4
    assert "QZX4242" not in res.out + res.err
    assert sorted(disposed_refs(ws)) == refs(ws, DUE - erased)
    assert ws.invoke("audit", "verify").code == 0


CHECK_REASONS = {"sqlite": "IntegrityError",
                 "postgresql": "check constraint accounts_note_check (CheckViolation)",
                 "mariadb": "check constraint accounts_note_check (OperationalError 4025)"}


def test_a_check_constraint_fails_anonymised_records_alone(store_db: Any, ws: Any) -> None:
    """Anonymising ``note`` to NULL violates a check constraint for the locked rows only; the
    error line names the constraint where the driver says it (not on SQLite)."""
    engine = store_db.engine()
    md = sa.MetaData()
    accounts = sa.Table(
        "accounts", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("locked", sa.Integer, nullable=False),
        sa.Column("note", sa.String(40), nullable=True),
        sa.Column("anonymized_at", sa.DateTime, nullable=True),
        sa.CheckConstraint("locked = 0 OR note IS NOT NULL", name="accounts_note_check"))
    md.create_all(engine)
    now = now_seconds()
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [
            {"id": i, "created_at": now - timedelta(days=OLD_DAYS if i in DUE else 5),
             "locked": int(i in LOCKED), "note": f"note {i}", "anonymized_at": None}
            for i in range(1, 41)])
    rule = {"id": "old-accounts", "store": "app", "table": "accounts", "key": "id",
            "clock": "created_at", "dispose_after": "1y", "action": "anonymize",
            "anonymize": {"marker": "anonymized_at", "columns": {"note": {"strategy": "null"}}}}
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [rule], batch_size=4)

    res = ws.invoke("--json", "run")

    assert res.code == 1, res.err
    with engine.connect() as conn:
        kept = set(conn.execute(sa.text(
            "select id from accounts where note is not null")).scalars())
    assert kept == LOCKED | set(range(31, 41))
    result = res.json()["rules"][0]
    assert (result["done"], result["failed"]) == (24, 6)
    assert result["error"] == f"6 records failed: {CHECK_REASONS[store_db.backend]}"
    assert "note 3" not in res.out + res.err
    refs_ledgered = [r for e in ledger(ws.root / "state.db", "dispose") for r in e["record_refs"]]
    assert sorted(refs_ledgered) == sorted(
        record_ref(ws.secret, "app", "accounts", k) for k in DUE - LOCKED)
    assert ws.invoke("audit", "verify").code == 0


MASK_REASONS = {"sqlite": "IntegrityError",
                "postgresql": "check constraint accounts_mask_check (CheckViolation)",
                "mariadb": "check constraint accounts_mask_check (OperationalError 4025)"}


def test_a_python_strategy_fails_its_records_alone(store_db: Any, ws: Any) -> None:
    """A Python-computed strategy (``mask``) is written with one ``executemany`` per batch;
    when the masked value violates a check constraint for the locked rows, that batch is
    tried again and only those rows fail: the others get exactly the masked value."""
    engine = store_db.engine()
    md = sa.MetaData()
    accounts = sa.Table(
        "accounts", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("locked", sa.Integer, nullable=False),
        sa.Column("note", sa.String(40), nullable=True),
        sa.Column("anonymized_at", sa.DateTime, nullable=True),
        sa.CheckConstraint("locked = 0 OR note NOT LIKE '%#%'", name="accounts_mask_check"))
    md.create_all(engine)
    now = now_seconds()
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [
            {"id": i, "created_at": now - timedelta(days=OLD_DAYS if i in DUE else 5),
             "locked": int(i in LOCKED), "note": f"note {i}", "anonymized_at": None}
            for i in range(1, 41)])
    rule = {"id": "old-accounts", "store": "app", "table": "accounts", "key": "id",
            "clock": "created_at", "dispose_after": "1y", "action": "anonymize",
            "anonymize": {"marker": "anonymized_at", "columns": {
                "note": {"strategy": "mask", "keep_first": 2, "char": "#"}}}}
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [rule], batch_size=4)

    res = ws.invoke("--json", "run")

    assert res.code == 1, res.err
    with engine.connect() as conn:
        notes = dict(conn.execute(sa.text("select id, note from accounts")).all())
        marked = set(conn.execute(sa.text(
            "select id from accounts where anonymized_at is not null")).scalars())
    masked = DUE - LOCKED
    assert notes == {i: "no" + "#" * (len(f"note {i}") - 2) if i in masked else f"note {i}"
                     for i in range(1, 41)}
    assert marked == masked
    result = res.json()["rules"][0]
    assert (result["done"], result["failed"]) == (24, 6)
    assert result["error"] == f"6 records failed: {MASK_REASONS[store_db.backend]}"
    refs_ledgered = [r for e in ledger(ws.root / "state.db", "dispose") for r in e["record_refs"]]
    assert sorted(refs_ledgered) == sorted(
        record_ref(ws.secret, "app", "accounts", k) for k in masked)
    assert ws.invoke("audit", "verify").code == 0


# -- a composite key (day, id): the per-record path binds every component -----------------
DAY0 = datetime(2021, 3, 1, 8, 30, 0)
COMPOSITE = {**RULE, "key": ["day", "id"]}


def seed_composite(engine: sa.Engine, triggers: list[str]) -> None:
    md = sa.MetaData()
    events = sa.Table("events", md,
                      sa.Column("day", sa.DateTime, primary_key=True),
                      sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("created_at", sa.DateTime, nullable=False),
                      sa.Column("subject_id", sa.Integer, nullable=True),
                      sa.Column("locked", sa.Integer, nullable=False),
                      mysql_engine="InnoDB")
    md.create_all(engine)
    now = now_seconds()
    with engine.begin() as conn:
        conn.execute(events.insert(), [
            {"day": DAY0 + timedelta(days=i % 3), "id": i,
             "created_at": now - timedelta(days=OLD_DAYS if i in DUE else 5),
             "subject_id": 100 + i, "locked": int(i in LOCKED)} for i in range(1, 41)])
        for sql in triggers:
            conn.execute(sa.text(sql))


def test_failing_rows_of_a_composite_key_fail_alone(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    seed_composite(engine, trigger_sql(store_db.backend, dict.fromkeys(
        ("sqlite", "postgresql", "mariadb"), "old.locked = 1")))
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [COMPOSITE], batch_size=8)

    res = ws.invoke("--json", "run")

    assert res.code == 1, res.err
    assert remaining(engine) == LOCKED | set(range(31, 41))
    rule = res.json()["rules"][0]
    assert (rule["due"], rule["done"], rule["failed"]) == (30, 24, 6)
    assert rule["error"] == f"6 records failed: {REASONS[store_db.backend]}"
    want = sorted(record_ref(ws.secret, "app", "events", key_text(
        (DAY0 + timedelta(days=i % 3), i))) for i in DUE - LOCKED)
    assert sorted(disposed_refs(ws)) == want
    assert ws.invoke("audit", "verify").code == 0
