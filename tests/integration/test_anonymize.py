"""``action: anonymize`` through the real CLI on SQLite, PostgreSQL and MariaDB: every strategy
writes exactly the value it promises, a second run changes nothing, rows not due are untouched.

Expected values are computed here, independently of retentiond: hmac is HMAC-SHA256 keyed by the
key file's content (trailing newline stripped) over the value's UTF-8 text, in hex; masks are
written out by hand.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import ledger, now_seconds, record_ref

FIVE_YEARS = timedelta(days=5 * 366)
HEX = set("0123456789abcdef")  # hex originals could occur in a pseudonym by chance
DAY_ON_DATE = "visited"  # truncating a date to its day keeps it: the one column allowed to stay

STRATEGIES: dict[str, dict[str, Any]] = {
    "nickname": {"strategy": "null"},
    "city": {"strategy": "default"},
    "tier": {"strategy": "default"},
    "note": {"strategy": "constant", "value": "redacted"},
    "score": {"strategy": "constant", "value": 0},
    "phone": {"strategy": "mask", "keep_last": 2},
    "full_name": {"strategy": "mask", "keep_first": 1, "keep_last": 1, "char": "#"},
    "pin": {"strategy": "mask", "keep_first": 2, "keep_last": 2},
    "contact": {"strategy": "mask", "format": "email", "keep_first": 1},
    "email": {"strategy": "hmac", "format": "email"},
    "login": {"strategy": "hmac"},
    "token": {"strategy": "hmac", "length": 12},
    "backup_email": {"strategy": "hmac", "length": 16, "format": "email",
                     "domain": "example.invalid"},
    "alias": {"strategy": "fake", "provider": "name", "deterministic": True},
    "seen_at": {"strategy": "truncate_date", "unit": "year"},
    "login_at": {"strategy": "truncate_date", "unit": "month"},
    "paid_at": {"strategy": "truncate_date", "unit": "day"},
    "born": {"strategy": "truncate_date", "unit": "year"},
    "joined": {"strategy": "truncate_date", "unit": "month"},
    "visited": {"strategy": "truncate_date", "unit": "day"},
}


def people_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "people", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("closed_at", sa.DateTime, nullable=True),
        sa.Column("anonymized_at", sa.DateTime, nullable=True),
        sa.Column("nickname", sa.String(60), nullable=True),
        sa.Column("city", sa.String(40), nullable=False, server_default="unknown"),
        sa.Column("tier", sa.Integer, nullable=False, server_default=sa.text("7")),
        sa.Column("note", sa.String(40), nullable=True),
        sa.Column("score", sa.Integer, nullable=True),
        sa.Column("phone", sa.String(40), nullable=True),
        sa.Column("full_name", sa.String(120), nullable=False),
        sa.Column("pin", sa.String(10), nullable=True),
        sa.Column("contact", sa.String(120), nullable=True),
        sa.Column("email", sa.String(120), nullable=False, unique=True),
        sa.Column("login", sa.String(64), nullable=True),
        sa.Column("token", sa.String(12), nullable=True),
        sa.Column("backup_email", sa.String(40), nullable=True),
        sa.Column("alias", sa.String(120), nullable=True),
        sa.Column("seen_at", sa.DateTime, nullable=True),
        sa.Column("login_at", sa.DateTime, nullable=True),
        sa.Column("paid_at", sa.DateTime, nullable=True),
        sa.Column("born", sa.Date, nullable=True),
        sa.Column("joined", sa.Date, nullable=True),
        sa.Column("visited", sa.Date, nullable=True),
    )


def person(i: int, status: str, closed_at: datetime | None, **values: Any) -> dict[str, Any]:
    """A row with every column given (NULL unless set)."""
    blank = dict.fromkeys(c.name for c in people_table(sa.MetaData()).columns)
    return {**blank, "id": i, "status": status, "closed_at": closed_at, **values}


def dataset(now: datetime) -> list[dict[str, Any]]:
    """Rows 1-5 are due (closed five years ago; 2 repeats 1's login and alias, 5 is mostly
    NULL); 6 is active and 7 closed yesterday: not due."""
    old = now - FIVE_YEARS
    return [
        person(1, "closed", old, nickname="Mia", city="Berlin", tier=2,
               note="VIP since 2015", score=88, phone="+49 170 1234567",
               full_name="Maria Schmidt", pin="12345",
               contact="maria.schmidt@mail.example.org",
               email="maria.schmidt.1@mail.example.org", login="maria.s",
               token="tok-maria-01", backup_email="m.s@backup.example.org",
               alias="Maria Schmidt", seen_at=datetime(2019, 5, 17, 13, 45, 12),
               login_at=datetime(2020, 8, 9, 7, 8, 9), paid_at=datetime(2021, 12, 31, 23, 59, 58),
               born=date(1990, 5, 17), joined=date(2016, 2, 29), visited=date(2022, 7, 15)),
        person(2, "closed", old - timedelta(days=40), nickname="Jo", city="Hamburg", tier=3,
               note="call after 6pm", score=5, phone="0171 9876543",
               full_name="Jonas Okafor", pin="1234", contact="jonas@okafor.example.net",
               email="jonas.okafor.2@mail.example.org", login="maria.s",
               token="tok-jonas-02", backup_email="jonas@backup.example.org",
               alias="Maria Schmidt", seen_at=datetime(2018, 12, 31, 23, 59, 59),
               login_at=datetime(2021, 3, 31, 12, 0, 1), paid_at=datetime(2020, 2, 29, 0, 0, 1),
               born=date(1985, 12, 31), joined=date(2017, 11, 30), visited=date(2023, 1, 2)),
        person(3, "closed", old - timedelta(days=400), nickname="Ay", city="Köln", tier=1,
               note="prefers Turkish", score=-3, phone="+90 532 000 11 22",
               full_name="Al", pin="12", contact="a@x.example",
               email="aylin.yilmaz.3@mail.example.org", login="aylin",
               token="tok-aylin-03", backup_email="aylin@backup.example.org",
               alias="Aylin Yılmaz",  # noqa: RUF001 - a UTF-8 name on purpose
               seen_at=datetime(2017, 7, 7, 7, 7, 7),
               login_at=datetime(2019, 1, 15, 1, 2, 3), paid_at=datetime(2018, 6, 1, 12, 30, 0),
               born=date(2001, 7, 4), joined=date(2015, 6, 15), visited=date(2019, 9, 9)),
        person(4, "closed", old - timedelta(days=900), nickname="Kwa", city="Accra", tier=4,
               note="owes 12 EUR", score=41, phone="+233 20 555 0199",
               full_name="Kwame Mensah-Lindqvist", pin="987654",
               contact="kwame.mensah@lindqvist.example.com",
               email="kwame.4@mail.example.org", login="kwame_m",
               token="tok-kwame-04", backup_email="kwame@backup.example.org",
               alias="Kwame Mensah", seen_at=datetime(2016, 2, 29, 16, 20, 0),
               login_at=datetime(2016, 2, 29, 16, 20, 0), paid_at=datetime(2016, 2, 29, 16, 20, 0),
               born=date(1979, 2, 28), joined=date(2014, 10, 31), visited=date(2016, 2, 29)),
        person(5, "closed", old - timedelta(days=1), full_name="Sofia Moreau", city="Lyon",
               tier=9, email="sofia.moreau.5@mail.example.org"),
        person(6, "active", old - timedelta(days=700), nickname="Lu", city="Wien", tier=2,
               note="active customer", score=17, phone="+43 660 1234567",
               full_name="Lukas Novak", pin="55555", contact="lukas@novak.example.org",
               email="lukas.novak.6@mail.example.org", login="lukas",
               token="tok-lukas-06", backup_email="lukas@backup.example.org",
               alias="Lukas Novak", seen_at=datetime(2019, 5, 17, 13, 45, 12),
               login_at=datetime(2020, 8, 9, 7, 8, 9), paid_at=datetime(2021, 12, 31, 23, 59, 58),
               born=date(1992, 3, 3), joined=date(2018, 4, 4), visited=date(2024, 5, 5)),
        person(7, "closed", now - timedelta(days=1), nickname="Pri", city="Pune", tier=5,
               note="closed yesterday", score=70, phone="+91 98765 43210",
               full_name="Priya Haddad", pin="24680", contact="priya@haddad.example.org",
               email="priya.haddad.7@mail.example.org", login="priya",
               token="tok-priya-07", backup_email="priya@backup.example.org",
               alias="Priya Haddad", seen_at=datetime(2023, 3, 3, 3, 3, 3),
               login_at=datetime(2023, 3, 3, 3, 3, 3), paid_at=datetime(2023, 3, 3, 3, 3, 3),
               born=date(1999, 9, 9), joined=date(2020, 2, 2), visited=date(2025, 1, 1)),
    ]


# The masks, written out: keep_last 2; keep 1 + 1 with '#'; keep 2 + 2 (all masked when the
# value is not longer than 4); format email keeping the first character of the local part.
MASKED = {
    1: {"phone": "*************67", "full_name": "M###########t", "pin": "12*45",
        "contact": "m************@mail.example.org"},
    2: {"phone": "**********43", "full_name": "J##########r", "pin": "****",
        "contact": "j****@okafor.example.net"},
    3: {"phone": "***************22", "full_name": "##", "pin": "**",
        "contact": "*@x.example"},
    4: {"phone": "**************99", "full_name": "K####################t", "pin": "98**54",
        "contact": "k***********@lindqvist.example.com"},
    5: {"phone": None, "full_name": "S##########u", "pin": None, "contact": None},
}
TRUNCATED = {
    1: {"seen_at": datetime(2019, 1, 1), "login_at": datetime(2020, 8, 1),
        "paid_at": datetime(2021, 12, 31), "born": date(1990, 1, 1), "joined": date(2016, 2, 1),
        "visited": date(2022, 7, 15)},
    2: {"seen_at": datetime(2018, 1, 1), "login_at": datetime(2021, 3, 1),
        "paid_at": datetime(2020, 2, 29), "born": date(1985, 1, 1), "joined": date(2017, 11, 1),
        "visited": date(2023, 1, 2)},
    3: {"seen_at": datetime(2017, 1, 1), "login_at": datetime(2019, 1, 1),
        "paid_at": datetime(2018, 6, 1), "born": date(2001, 1, 1), "joined": date(2015, 6, 1),
        "visited": date(2019, 9, 9)},
    4: {"seen_at": datetime(2016, 1, 1), "login_at": datetime(2016, 2, 1),
        "paid_at": datetime(2016, 2, 29), "born": date(1979, 1, 1), "joined": date(2014, 10, 1),
        "visited": date(2016, 2, 29)},
    5: dict.fromkeys(("seen_at", "login_at", "paid_at", "born", "joined", "visited")),
}


def hex_hmac(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def key_of(secret_file: Path) -> bytes:
    return secret_file.read_bytes().rstrip(b"\n")


def expected_row(original: dict[str, Any], key: bytes) -> dict[str, Any]:
    """The anonymised row, except ``alias`` (fake) and the marker."""
    i = original["id"]

    def h(column: str, cut: int = 64) -> str | None:
        value = original.get(column)
        return None if value is None else hex_hmac(key, value)[:cut]

    email, backup = h("email"), h("backup_email", 16)
    return {**original, "nickname": None, "city": "unknown", "tier": 7, "note": "redacted",
            "score": 0, **MASKED[i], **TRUNCATED[i],
            "email": f"{email}@anonymized.invalid", "login": h("login"), "token": h("token", 12),
            "backup_email": None if backup is None else f"{backup}@example.invalid"}


def rule(rule_id: str, store: str, **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "source": "Privacy policy §3", "store": store, "table": "people",
            "key": "id", "clock": "closed_at", "match": {"status": "closed"},
            "keep_for": "3y", "dispose_after": "3y", "action": "anonymize",
            "anonymize": {"marker": "anonymized_at", "columns": STRATEGIES}, **extra}


def read(engine: sa.Engine) -> dict[int, dict[str, Any]]:
    table = people_table(sa.MetaData())
    with engine.connect() as conn:
        return {r.id: dict(r._mapping) for r in conn.execute(sa.select(table))}


def rule_json(rule_id: str, store: str, due: int) -> dict[str, Any]:
    return {"rule": rule_id, "store": store, "target": "people", "action": "anonymize",
            "due": due, "held": 0, "kept": 0, "done": due, "failed": 0, "null_clock": 0,
            "bad_clock": 0, "purged": 0, "blocked": 0, "blocked_by": [], "cascaded": [],
            "strategies": {c: s["strategy"] for c, s in STRATEGIES.items()}}


def marker_of(as_of: str, backend: str) -> datetime:
    """The marker a run writes: the run's instant, naive UTC (whole seconds on MariaDB)."""
    at = datetime.fromisoformat(as_of).replace(tzinfo=None)
    return at.replace(microsecond=0) if backend == "mariadb" else at


@dataclass
class Stores:
    backend: str
    main: sa.Engine
    twin: sa.Engine
    rows: list[dict[str, Any]]


@pytest.fixture
def stores(store_db: Any, ws: Any, tmp_path: Path) -> Iterator[Stores]:
    """The people table in the backend under test and, with the same rows, in a second
    (SQLite) database: deterministic strategies must agree across databases."""
    rows = dataset(now_seconds())
    twin_url = f"sqlite:///{tmp_path / 'twin.db'}"
    engines = [store_db.engine(), sa.create_engine(twin_url)]
    for engine in engines:
        table = people_table(sa.MetaData())
        table.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
    ws.policy({"app": {"adapter": "sql", "url": store_db.url},
               "twin": {"adapter": "sql", "url": twin_url}},
              [rule("closed-people", "app"), rule("twin-people", "twin")])
    yield Stores(store_db.backend, engines[0], engines[1], rows)
    for engine in engines:
        engine.dispose()


def test_every_strategy_writes_its_exact_value(stores: Stores, ws: Any) -> None:
    key = key_of(ws.secret)
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    doc = run.json()
    assert doc["rules"] == [rule_json("closed-people", "app", 5),
                            rule_json("twin-people", "twin", 5)]
    assert doc["totals"] == {"due": 10, "held": 0, "kept": 0, "done": 10, "failed": 0}

    originals = {r["id"]: r for r in stores.rows}
    marker = marker_of(doc["as_of"], stores.backend)
    after = read(stores.main)
    twin = read(stores.twin)
    for i in (1, 2, 3, 4, 5):
        got = dict(after[i])
        assert got.pop("anonymized_at") == marker, i
        alias = got.pop("alias")
        wanted = expected_row(originals[i], key)
        wanted.pop("anonymized_at")
        wanted.pop("alias")
        assert got == wanted, i
        assert twin[i]["alias"] == alias, i  # fake, deterministic: same on both databases
        assert {c: twin[i][c] for c in ("email", "login", "token", "backup_email")} == {
            c: got[c] for c in ("email", "login", "token", "backup_email")}, i
        if originals[i]["alias"] is None:
            assert alias is None
        else:
            assert isinstance(alias, str)
            assert alias
            assert alias != originals[i]["alias"]
    # Equal inputs give equal pseudonyms (joins still work), different inputs different ones.
    assert after[1]["login"] == after[2]["login"] == hex_hmac(key, "maria.s")
    assert after[1]["alias"] == after[2]["alias"]
    assert after[3]["alias"] != after[1]["alias"]
    assert len({after[i]["email"] for i in (1, 2, 3, 4, 5)}) == 5

    # No original value survives in an anonymised row.
    for i in (1, 2, 3, 4, 5):
        # (the fake name is left out: a made-up name may contain "aylin" by chance)
        texts = [str(v) for c, v in after[i].items() if v is not None and c != "alias"]
        for column in STRATEGIES:
            old = originals[i].get(column)
            if old is None or column == DAY_ON_DATE:
                continue
            assert after[i][column] != old, (i, column)
            if isinstance(old, str) and len(old) >= 5 and not set(old) <= HEX:
                assert not any(old in t for t in texts), (i, column)
    # Rows not due are untouched, marker included.
    assert after[6] == originals[6]
    assert after[7] == originals[7]
    assert twin[6] == originals[6]
    assert twin[7] == originals[7]

    entries = ledger(ws.root / "state.db", "dispose")
    assert {(e["rule"], e["action"], e["reason"]) for e in entries} == {
        ("closed-people", "anonymize", "schedule"), ("twin-people", "anonymize", "schedule")}
    refs = {e["rule"]: set(e["record_refs"]) for e in entries}
    assert refs["closed-people"] == {record_ref(ws.secret, "app", "people", i)
                                     for i in (1, 2, 3, 4, 5)}

    # A second run anonymises nothing more and leaves every row, marker included, as it was.
    again = ws.invoke("run", "--json")
    assert again.code == 0, again.err
    assert again.json()["rules"] == [rule_json("closed-people", "app", 0),
                                     rule_json("twin-people", "twin", 0)]
    assert read(stores.main) == after
    assert read(stores.twin) == twin
    assert len(ledger(ws.root / "state.db", "dispose")) == len(entries)

    # hmac is keyed: under a new key file a newly due row with row 1's login and token gets
    # other pseudonyms; what was anonymised before stays as it was.
    ws.secret.write_text(secrets.token_hex(32) + "\n")
    new_key = key_of(ws.secret)
    assert len(new_key) == 64
    assert new_key != key
    newcomer = person(8, "closed", now_seconds() - FIVE_YEARS, city="Oslo", tier=1,
                      full_name="Maria Schmidt", email="maria.schmidt.8@mail.example.org",
                      login="maria.s", token="tok-maria-01")
    with stores.main.begin() as conn:
        conn.execute(people_table(sa.MetaData()).insert(), [newcomer])
    third = ws.invoke("run", "--json")
    assert third.code == 0, third.err
    assert [r["done"] for r in third.json()["rules"]] == [1, 0]
    latest = read(stores.main)
    assert latest[8]["login"] == hex_hmac(new_key, "maria.s") != after[1]["login"]
    assert latest[8]["token"] == hex_hmac(new_key, "tok-maria-01")[:12] != after[1]["token"]
    assert latest[8]["email"] == (hex_hmac(new_key, "maria.schmidt.8@mail.example.org")
                                  + "@anonymized.invalid")
    assert latest[8]["full_name"] == "M###########t"  # a mask does not depend on the key
    assert latest[8]["anonymized_at"] == marker_of(third.json()["as_of"], stores.backend)
    assert {i: r for i, r in latest.items() if i != 8} == after


ROUND_STRATEGIES = {"qty": {"strategy": "round", "step": 10},
                    "price": {"strategy": "round", "step": 0.5},
                    "rate": {"strategy": "round", "step": 0.1}}


def measures_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "measures", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("closed_at", sa.DateTime, nullable=True),
        sa.Column("anonymized_at", sa.DateTime, nullable=True),
        sa.Column("qty", sa.Integer, nullable=True),
        sa.Column("price", sa.Numeric(10, 2), nullable=True),
        sa.Column("rate", sa.Numeric(10, 2), nullable=True),
    )


def round_run(store_db: Any, ws: Any, values: dict[str, list[Any]]) -> dict[str, dict[int, Any]]:
    """Round each column's values (rows 1..n due; row 99, not due, keeps the first values)."""
    engine = store_db.engine()
    table = measures_table(sa.MetaData())
    table.metadata.create_all(engine)
    old, young = now_seconds() - FIVE_YEARS, now_seconds()
    size = max(len(v) for v in values.values())
    rows = [{"id": i, "closed_at": old, **dict.fromkeys(ROUND_STRATEGIES),
             **{c: v[i - 1] if i <= len(v) else None for c, v in values.items()}}
            for i in range(1, size + 1)]
    rows.append({"id": 99, "closed_at": young, **dict.fromkeys(ROUND_STRATEGIES),
                 **{c: v[0] for c, v in values.items()}})
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [{
        "id": "round-measures", "store": "app", "table": "measures", "key": "id",
        "clock": "closed_at", "dispose_after": "1y", "action": "anonymize",
        "anonymize": {"marker": "anonymized_at",
                      "columns": {c: ROUND_STRATEGIES[c] for c in values}}}])
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert run.json()["totals"]["done"] == size
    with engine.connect() as conn:
        got = {c: {r[0]: r[1] for r in conn.execute(sa.select(table.c.id, table.c[c]))}
               for c in values}
    engine.dispose()
    return got


def test_round_half_away_from_zero(store_db: Any, ws: Any) -> None:
    """An integer column with step 10 and a numeric one with step 0.5 (exact in binary)."""
    got = round_run(store_db, ws, {
        "qty": [25, 15, -25, -15, 14, -14, 5, 0, 1234],
        "price": [Decimal(v) for v in ("1.25", "-1.25", "1.24", "0.75", "-0.75", "2.00",
                                       "0.26")]})
    assert got["qty"] == {1: 30, 2: 20, 3: -30, 4: -20, 5: 10, 6: -10, 7: 10, 8: 0, 9: 1230,
                          99: 25}
    assert got["price"] == {1: Decimal("1.5"), 2: Decimal("-1.5"), 3: Decimal("1.0"),
                            4: Decimal("1.0"), 5: Decimal("-1.0"), 6: Decimal("2.0"),
                            7: Decimal("0.5"), 8: None, 9: None, 99: Decimal("1.25")}


def test_round_decimal_step_is_exact(store_db: Any, ws: Any) -> None:
    """Step 0.1 on a NUMERIC(10, 2) column: half away from zero on the decimal value."""
    got = round_run(store_db, ws, {"rate": [Decimal(v) for v in ("0.35", "-0.35", "0.15",
                                                                  "2.25", "1.04")]})
    assert got["rate"] == {1: Decimal("0.4"), 2: Decimal("-0.4"), 3: Decimal("0.2"),
                           4: Decimal("2.3"), 5: Decimal("1.0"), 99: Decimal("0.35")}
