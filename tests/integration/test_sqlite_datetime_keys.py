"""SQLite date/time key columns holding ``YYYY-MM-DD HH:MM:SS`` (no ``.ffffff``): what raw SQL,
``CURRENT_TIMESTAMP`` and Django write. SQLAlchemy reads such a column as a datetime and binds
it back as ``YYYY-MM-DD HH:MM:SS.000000``, which is greater as text than the stored value: a
typed key read back no longer matched its own row. The keyset ``(a, b) > (last)`` jumped past
every later row of the last key's date (a run disposed 4 of 7 due rows and exited 0), ``IN``
batches missed rows they had read, and ``explain`` found no record. Keys now round-trip as the
stored text; references stay those of the parsed value (documented encoding below)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import ledger, now_seconds, record_ref

D1, D2 = datetime(2010, 1, 1), datetime(2010, 1, 2)
DUE = [(D1, 1), (D1, 2), (D1, 3), (D1, 4), (D2, 1), (D2, 2), (D2, 3)]
RECENT_AGE = (timedelta(days=10), timedelta(days=20))

PAY_RULE = {"id": "old-payments", "store": "app", "table": "payments",
            "key": ["payment_date", "payment_id"], "clock": "payment_date",
            "dispose_after": "1y", "action": "delete"}
ANONYMIZE = {"action": "anonymize", "anonymize": {
    "marker": "anonymized_at", "columns": {"email": {"strategy": "hmac", "format": "email"}}}}
ANONYMIZE_SQL = {"action": "anonymize", "anonymize": {
    "marker": "anonymized_at", "columns": {"email": {"strategy": "constant",
                                                     "value": "gone@anonymized.invalid"}}}}


def short(d: datetime) -> str:
    return d.strftime("%Y-%m-%d %H:%M:%S")


def long(d: datetime) -> str:
    return d.strftime("%Y-%m-%d %H:%M:%S.%f")


def create(engine: sa.Engine, rows: list[tuple[str, int]]) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "create table payments (payment_date DATETIME not null, payment_id int not null, "
            "email text not null, anonymized_at DATETIME, "
            "primary key (payment_date, payment_id))")
        for text, i in rows:
            conn.exec_driver_sql("insert into payments values (?, ?, ?, null)",
                                 (text, i, f"payer.{text[:10]}.{i}@mail.example.org"))


def recent() -> list[tuple[datetime, int]]:
    now = now_seconds()
    return [(now - age, 7) for age in RECENT_AGE]


def table_rows(engine: sa.Engine, sql: str) -> set[tuple[Any, ...]]:
    with engine.connect() as conn:
        return {tuple(r) for r in conn.exec_driver_sql(sql)}


def pay_ref(ws: Any, d: datetime, i: int) -> str:
    """The documented encoding: ``["<ISO 8601 with T, no .000000>","<id>"]``, whichever text
    form the row holds."""
    return record_ref(ws.secret, "app", "payments",
                      json.dumps([d.isoformat(), str(i)], separators=(",", ":")))


@pytest.fixture
def engine(sqlite_db: Any) -> Any:
    engine = sqlite_db.engine()
    yield engine
    engine.dispose()


@pytest.mark.parametrize("action", ["delete", "anonymize", "anonymize-sql"])
def test_short_form_composite_keys_are_all_disposed(engine: Any, sqlite_db: Any, ws: Any,
                                                    action: str) -> None:
    kept = recent()
    create(engine, [(short(d), i) for d, i in DUE + kept])
    extra = {"delete": {}, "anonymize": ANONYMIZE, "anonymize-sql": ANONYMIZE_SQL}[action]
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [{**PAY_RULE, **extra}],
              batch_size=2)
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    assert [r["due"] for r in plan.json()["rules"]] == [7]

    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert [(r["due"], r["done"], r["failed"]) for r in run.json()["rules"]] == [(7, 7, 0)]
    if action == "delete":
        left = table_rows(engine, "select payment_date, payment_id from payments")
        assert left == {(short(d), i) for d, i in kept}
    else:
        fresh = table_rows(engine, "select payment_date, payment_id, email from payments "
                                   "where anonymized_at is null")
        assert fresh == {(short(d), i, f"payer.{short(d)[:10]}.{i}@mail.example.org")
                         for d, i in kept}
        done = table_rows(engine, "select payment_date, payment_id from payments "
                                  "where anonymized_at is not null")
        assert done == {(short(d), i) for d, i in DUE}  # the key text untouched
    refs = [r for e in ledger(ws.root / "state.db", "dispose") for r in e["record_refs"]]
    assert sorted(refs) == sorted(pay_ref(ws, d, i) for d, i in DUE)
    assert ws.invoke("audit", "verify").code == 0
    again = ws.invoke("run", "--json")
    assert [r["done"] for r in again.json()["rules"]] == [0]


def test_mixed_stored_forms(engine: Any, sqlite_db: Any, ws: Any) -> None:
    """SQLAlchemy's ``.000000`` form and the short form in one table (an application that
    changed writers): both are read, disposed and referenced the same way."""
    forms = [(long(d) if i % 2 else short(d), i) for d, i in DUE]
    create(engine, forms)
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [{**PAY_RULE, **ANONYMIZE}],
              batch_size=2)
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert [(r["due"], r["done"]) for r in run.json()["rules"]] == [(7, 7)]
    assert table_rows(engine, "select payment_date, payment_id from payments "
                              "where anonymized_at is not null") == set(forms)
    refs = [r for e in ledger(ws.root / "state.db", "dispose") for r in e["record_refs"]]
    assert sorted(refs) == sorted(pay_ref(ws, d, i) for d, i in DUE)


@pytest.mark.parametrize("stored", [short, long])
@pytest.mark.parametrize("key", [
    "payment_date=2010-01-01T00:00:00,payment_id=2",
    "payment_id=2,payment_date=2010-01-01 00:00:00",
    '["2010-01-01T00:00:00", 2]',
    '["2010-01-01 00:00:00.000000", "2"]',
])
def test_explain_finds_either_stored_form(engine: Any, sqlite_db: Any, ws: Any, stored: Any,
                                          key: str) -> None:
    create(engine, [(stored(d), i) for d, i in DUE])
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [PAY_RULE], batch_size=2)
    result = ws.invoke("explain", "--rule", "old-payments", "--json", "--key", key)
    assert result.code == 0, result.err
    doc = result.json()
    assert (doc["decision"], doc["record_ref"]) == ("dispose", pay_ref(ws, D1, 2))


def test_backup_restored_replays_short_form_rows(engine: Any, sqlite_db: Any, ws: Any) -> None:
    kept = recent()
    create(engine, [(short(d), i) for d, i in DUE + kept])
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url,
                       "backups": {"retention": "35d"}}}, [PAY_RULE], batch_size=2)
    taken = datetime.now().astimezone().isoformat()
    assert ws.invoke("run").code == 0
    with engine.begin() as conn:  # the restore brings three of the deleted payments back
        for d, i in [(D1, 2), (D1, 4), (D2, 3)]:
            conn.exec_driver_sql("insert into payments values (?, ?, 'x@example.org', null)",
                                 (short(d), i))
    replay = ws.invoke("backup", "restored", "--store", "app", "--taken-at", taken, "--json")
    assert replay.code == 0, replay.err
    assert [r["count"] for r in replay.json()["reapplied"]] == [3]
    assert table_rows(engine, "select payment_date, payment_id from payments") == {
        (short(d), i) for d, i in kept}
    refs = [r for e in ledger(ws.root / "state.db", "replay") for r in e["record_refs"]]
    assert sorted(refs) == sorted(pay_ref(ws, d, i) for d, i in [(D1, 2), (D1, 4), (D2, 3)])
    assert ws.invoke("audit", "verify").code == 0


@pytest.mark.parametrize("stored", [short, long])
def test_single_column_datetime_key(engine: Any, sqlite_db: Any, ws: Any, stored: Any) -> None:
    """``key: created_at`` on SQLite: the reference stays ``HMAC(str(datetime))``
    (``2010-01-01 00:00:00``, what existing ledgers hold for SQLAlchemy-written keys), for either
    stored form; the computed anonymisation (read, then ``IN``) finds its rows."""
    times = [D1 + timedelta(minutes=m) for m in range(5)]
    with engine.begin() as conn:
        conn.exec_driver_sql("create table events (created_at DATETIME primary key, "
                             "email text not null, anonymized_at DATETIME)")
        for t in times:
            conn.exec_driver_sql("insert into events values (?, 'a@example.org', null)",
                                 (stored(t),))
    rule = {**PAY_RULE, **ANONYMIZE, "id": "old-events", "table": "events",
            "key": "created_at", "clock": "created_at"}
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [rule], batch_size=2)
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert [(r["due"], r["done"]) for r in run.json()["rules"]] == [(5, 5)]
    assert table_rows(engine, "select created_at from events where anonymized_at is null") \
        == set()
    refs = [r for e in ledger(ws.root / "state.db", "dispose") for r in e["record_refs"]]
    assert sorted(refs) == sorted(record_ref(ws.secret, "app", "events", str(t))
                                  for t in times)
    explained = ws.invoke("explain", "--rule", "old-events", "--json",
                          "--key", "2010-01-01T00:03:00")
    assert explained.code == 0, explained.err
    assert explained.json()["record_ref"] == record_ref(ws.secret, "app", "events",
                                                        "2010-01-01 00:03:00")


def test_isolate_and_purge_short_form_keys(engine: Any, sqlite_db: Any, ws: Any) -> None:
    """Isolate copies and deletes the batch it read (``IN`` on the stored text); the purge
    reads the isolated copies' keys and deletes them the same way."""
    kept = recent()
    create(engine, [(short(d), i) for d, i in DUE + kept])
    rule = {**PAY_RULE, "action": "isolate", "isolate": {"for": "P1D"}}
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [rule], batch_size=2)
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert [(r["due"], r["done"]) for r in run.json()["rules"]] == [(7, 7)]
    assert table_rows(engine, "select payment_date, payment_id from payments") == {
        (short(d), i) for d, i in kept}
    assert table_rows(engine, "select payment_date, payment_id from payments_isolated") == {
        (short(d), i) for d, i in DUE}
    # A day later (without waiting for it: a loaded machine made a 1 s isolate.for run out
    # inside the first run, which then purged what it had just isolated).
    with engine.begin() as conn:
        conn.execute(sa.text("update payments_isolated "
                          "set retentiond_purge_after = retentiond_isolated_at"))
    purge = ws.invoke("run", "--json")
    assert purge.code == 0, purge.err
    assert [r["purged"] for r in purge.json()["rules"]] == [7]
    assert table_rows(engine, "select payment_date, payment_id from payments_isolated") == set()
    for kind in ("dispose", "purge"):
        refs = [r for e in ledger(ws.root / "state.db", kind) for r in e["record_refs"]]
        assert sorted(refs) == sorted(pay_ref(ws, d, i) for d, i in DUE), kind
