"""A small, deterministic marketplace store for the request, hold and explain tests.

Three tables (users, messages, invoices) whose dates lie at fixed distances from "now", and a
policy like the demo's: ``closed-accounts`` (anonymise three years after closure, delete on
erasure), ``accounts`` (erasure requests only), ``old-messages`` (three years) and ``invoices``
(seven years, kept on erasure for tax law). Subject ids are seven-digit numbers so that a test
can prove no raw subject id reaches the audit trail (a microsecond field has six digits and
every hash is longer).

Timestamps are naive UTC wall-clock values in whole seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

# Subjects: A is put under a legal hold, B asks for erasure, C is held and asks for erasure.
A, B, C = 9876543, 8765432, 7654321
D, E, F, G = 1000001, 1000002, 1000003, 1000004
LEGAL_BASIS = "Tax law: accounting records are kept for 7 years."


def now_seconds() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def years_before(at: datetime, n: int) -> datetime:
    """``at`` minus n calendar years (Feb 29 becomes Feb 28)."""
    try:
        return at.replace(year=at.year - n)
    except ValueError:
        return at.replace(year=at.year - n, day=28)


def last_leap_day(at: datetime) -> datetime:
    """The latest Feb 29, 12:00 at or before ``at`` (at most four years back)."""
    year = at.year
    while True:
        try:
            candidate = datetime(year, 2, 29, 12, 0, 0)
        except ValueError:
            year -= 1
            continue
        if candidate <= at:
            return candidate
        year -= 1


def tables(md: sa.MetaData) -> dict[str, sa.Table]:
    users = sa.Table(
        "users", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(120), nullable=False),
        sa.Column("name", sa.String(120), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("closed_at", sa.DateTime, nullable=True),
        sa.Column("anonymized_at", sa.DateTime, nullable=True))
    messages = sa.Table(
        "messages", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sender_id", sa.Integer, nullable=False),
        sa.Column("body", sa.String(200), nullable=False),
        sa.Column("sent_at", sa.DateTime, nullable=False))
    invoices = sa.Table(
        "invoices", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("amount_cents", sa.Integer, nullable=False),
        sa.Column("issued_at", sa.DateTime, nullable=False))
    return {"users": users, "messages": messages, "invoices": invoices}


@dataclass(frozen=True)
class Dates:
    """The fixed distances from now used by the data set."""

    now: datetime

    @property
    def due3(self) -> datetime:  # ten days past a three-year rule
        return years_before(self.now, 3) - timedelta(days=10)

    @property
    def young(self) -> datetime:  # well inside every rule
        return self.now - timedelta(days=200)

    @property
    def due7(self) -> datetime:  # ten days past a seven-year rule
        return years_before(self.now, 7) - timedelta(days=10)

    @property
    def young_invoice(self) -> datetime:
        return self.now - timedelta(days=400)


def build(engine: sa.Engine, now: datetime) -> Dates:
    """Create and fill the three tables. Which row is what:

    users     A closed due (held)   B active (erasure)  C active (held + erasure)
              D closed due          E closed young      F active   G closed, no clock
    messages  1 A due  2 A young  3 B due  4 B young  5 C due  6 C young
              7 D due  8 D young  9 E due  10 F young  11 F due
    invoices  1 A due  2 A young  3 B due  4 B young  5 D due  6 D young  7 E due
    """
    d = Dates(now)
    md = sa.MetaData()
    t = tables(md)
    md.create_all(engine)
    users = [(A, "closed", d.due3), (B, "active", None), (C, "active", None),
             (D, "closed", d.due3), (E, "closed", d.young), (F, "active", None),
             (G, "closed", None)]
    messages = [(1, A, d.due3), (2, A, d.young), (3, B, d.due3), (4, B, d.young),
                (5, C, d.due3), (6, C, d.young), (7, D, d.due3), (8, D, d.young),
                (9, E, d.due3), (10, F, d.young), (11, F, d.due3)]
    invoices = [(1, A, d.due7), (2, A, d.young_invoice), (3, B, d.due7),
                (4, B, d.young_invoice), (5, D, d.due7), (6, D, d.young_invoice),
                (7, E, d.due7)]
    with engine.begin() as conn:
        conn.execute(t["users"].insert(), [
            {"id": i, "email": f"person.{i}@mail.example.org", "name": f"Person {i}",
             "status": status, "closed_at": closed, "anonymized_at": None}
            for i, status, closed in users])
        conn.execute(t["messages"].insert(), [
            {"id": i, "sender_id": s, "body": f"hello from {s}", "sent_at": at}
            for i, s, at in messages])
        conn.execute(t["invoices"].insert(), [
            {"id": i, "user_id": s, "amount_cents": 1000 + i, "issued_at": at}
            for i, s, at in invoices])
    return d


CLOSED_ACCOUNTS: dict[str, Any] = {
    "id": "closed-accounts", "source": "Privacy policy §3 Data retention", "store": "app",
    "table": "users", "key": "id", "subject": "id", "subject_kind": "user",
    "clock": "closed_at", "match": {"status": "closed"}, "keep_for": "3y", "dispose_after": "3y",
    "action": "anonymize",
    "anonymize": {"marker": "anonymized_at", "columns": {
        "email": {"strategy": "hmac", "format": "email"}, "name": {"strategy": "null"}}},
    "on_erasure": "delete",
}
ACCOUNTS: dict[str, Any] = {
    "id": "accounts", "source": "Privacy policy §6 Your rights", "store": "app",
    "table": "users", "key": "id", "subject": "id", "action": "delete",
}
OLD_MESSAGES: dict[str, Any] = {
    "id": "old-messages", "source": "Privacy policy §3 Data retention", "store": "app",
    "table": "messages", "key": "id", "subject": "sender_id", "clock": "sent_at",
    "keep_for": "3y", "dispose_after": "3y", "action": "delete",
}
INVOICES: dict[str, Any] = {
    "id": "invoices", "source": "Privacy policy §3 legal obligations", "store": "app",
    "table": "invoices", "key": "id", "subject": "user_id", "clock": "issued_at",
    "keep_for": "7y", "dispose_after": "7y", "action": "delete", "on_erasure": "keep",
    "legal_basis": LEGAL_BASIS,
}
RULES = [CLOSED_ACCOUNTS, ACCOUNTS, OLD_MESSAGES, INVOICES]
COUNTS = ("rule", "due", "held", "kept", "done", "failed", "null_clock")


def policy(ws: Any, url: str, **top: Any) -> Path:
    return ws.policy({"app": {"adapter": "sql", "url": url}}, RULES, **top)


# -- reading the store and the CLI's output ----------------------------------------------------
def ids(engine: sa.Engine, table: str) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(f"select id from {table}")).scalars())


def anonymized(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(
            "select id from users where anonymized_at is not null")).scalars())


def counts(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Per rule: (rule, due, held, kept, done, failed, null_clock)."""
    return [tuple(r[k] for k in COUNTS) for r in doc["rules"]]


def ok(result: Any) -> Any:
    """The JSON document of a successful command."""
    assert result.code == 0, (result.code, result.err)
    return result.json()


def usage_error(result: Any) -> str:
    """A usage error: exit 2, exactly one ``error:`` line on stderr, and on stdout nothing, or
    with ``--json`` the one document that repeats it; returns that line."""
    assert result.code == 2, (result.code, result.out, result.err)
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.err
    if result.out:
        assert json.loads(result.out) == {"ok": False, "exit_code": 2,
                                          "errors": [errors[0][len("error: "):]]}
    assert all(line.startswith("{") for line in lines if line not in errors), result.err
    return errors[0]


def record_ref(secret_file: Path, store: str, target: str, key: Any) -> str:
    secret = secret_file.read_bytes().rstrip(b"\r\n")
    return hmac.new(secret, f"{store}\0{target}\0{key}".encode(), hashlib.sha256).hexdigest()


def tokens(text: str) -> set[str]:
    """Every run of letters and digits in ``text``."""
    return set(re.findall(r"[0-9A-Za-z]+", text))


def subject_ref(secret_file: Path, kind: str, subject: Any) -> str:
    secret = secret_file.read_bytes().rstrip(b"\r\n")
    return hmac.new(secret, f"subject\0{kind}\0{subject}".encode(), hashlib.sha256).hexdigest()
