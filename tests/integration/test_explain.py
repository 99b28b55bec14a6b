"""``explain --rule ID --key KEY --json`` through the real CLI (SPEC 1 and 3.2).

The policy runs in Europe/Berlin, so every date explain prints is wall-clock time there with its
own UTC offset, and every due date is the clock plus calendar years (Feb 29 + 1y = Feb 28).
Every clock is at 12:00, far from a daylight-saving switch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from marketplace import (
    INVOICES,
    OLD_MESSAGES,
    counts,
    last_leap_day,
    now_seconds,
    ok,
    record_ref,
    subject_ref,
    tables,
    usage_error,
    years_before,
)

TZ = ZoneInfo("Europe/Berlin")
U1, U2, U3 = 3100001, 3200002, 3300003  # plain, held, asked for erasure
LEGAL = "Tax law: invoices are kept at least 6 years."
# Invoices here have a floor shorter than their ceiling, to tell floor_until from due_at.
INVOICES_6_7 = {**INVOICES, "keep_for": "6y", "dispose_after": "7y", "legal_basis": LEGAL}
SIGNED = {"id": "signed-documents", "source": "Contract law", "store": "app",
          "table": "documents", "key": "id", "subject": "owner_id", "clock": "signed_at",
          "match": {"status": "signed"}, "keep_for": "10y", "dispose_after": "10y",
          "action": "delete"}
OLD_DOCS = {"id": "old-documents", "source": "Privacy policy §3", "store": "app",
            "table": "documents", "key": "id", "subject": "owner_id", "clock": "created_at",
            "dispose_after": "1y", "action": "delete"}
DRAFTS = {"id": "stale-drafts", "source": "Privacy policy §3", "store": "app",
          "table": "documents", "key": "id", "subject": "owner_id", "clock": "created_at",
          "match": {"status": "draft"}, "dispose_after": "30d", "action": "delete"}


def noon(value: datetime) -> datetime:
    return value.replace(hour=12, minute=0, second=0, microsecond=0)


def plus_years(value: datetime, n: int) -> datetime:
    """Calendar years, Feb 29 clamped to Feb 28."""
    try:
        return value.replace(year=value.year + n)
    except ValueError:
        return value.replace(year=value.year + n, day=28)


def berlin(value: datetime | None) -> str | None:
    """A naive wall-clock time in Berlin as explain prints it."""
    return None if value is None else value.replace(tzinfo=TZ).isoformat()


@dataclass(frozen=True)
class Clocks:
    now: datetime

    @property
    def due_message(self) -> datetime:
        return noon(years_before(self.now, 3) - timedelta(days=10))

    @property
    def young(self) -> datetime:
        return noon(self.now - timedelta(days=100))

    @property
    def leap(self) -> datetime:
        return last_leap_day(self.now)

    @property
    def two_years(self) -> datetime:
        return noon(years_before(self.now, 2))


@dataclass
class World:
    ws: Any
    clocks: Clocks
    hold: str
    request: str

    def explain(self, rule: str, key: int) -> dict[str, Any]:
        return ok(self.ws.invoke("explain", "--rule", rule, "--key", str(key), "--json"))

    def ref(self, target: str, key: int) -> str:
        return record_ref(self.ws.secret, "app", target, key)

    def subject(self, subject: int) -> str:
        return subject_ref(self.ws.secret, "user", subject)


@pytest.fixture
def world(store_db_sp: Any, ws: Any) -> Iterator[World]:
    clocks = Clocks(now_seconds())
    engine = store_db_sp.engine()
    md = sa.MetaData()
    t = tables(md)
    documents = sa.Table(
        "documents", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("owner_id", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("signed_at", sa.DateTime, nullable=True))
    md.create_all(engine, tables=[t["messages"], t["invoices"], documents])
    with engine.begin() as conn:
        conn.execute(t["messages"].insert(), [
            {"id": 1, "sender_id": U1, "body": "due", "sent_at": clocks.due_message},
            {"id": 2, "sender_id": U2, "body": "held", "sent_at": clocks.due_message},
            {"id": 3, "sender_id": U3, "body": "asked", "sent_at": clocks.young}])
        conn.execute(t["invoices"].insert(), [
            {"id": 1, "user_id": U3, "amount_cents": 100, "issued_at": clocks.young},
            {"id": 2, "user_id": U1, "amount_cents": 200, "issued_at": clocks.leap}])
        conn.execute(documents.insert(), [
            {"id": 1, "owner_id": U1, "status": "signed", "created_at": clocks.two_years,
             "signed_at": clocks.two_years},
            {"id": 2, "owner_id": U1, "status": "draft", "created_at": clocks.two_years,
             "signed_at": None}])
    engine.dispose()
    ws.policy({"app": {"adapter": "sql", "url": store_db_sp.url}},
              [OLD_MESSAGES, INVOICES_6_7, SIGNED, OLD_DOCS, DRAFTS], timezone="Europe/Berlin")
    hold = ok(ws.invoke("hold", "add", "--subject", str(U2), "--reason", "litigation",
                     "--json"))["id"]
    request = ok(ws.invoke("request", "erase", str(U3), "--json"))["id"]
    yield World(ws, clocks, hold, request)


def _verdict(rule: str, outcome: str, *, action: str | None = None,
             due_at: datetime | None = None, floor_until: datetime | None = None,
             by: str | None = None) -> dict[str, Any]:
    return {"rule": rule, "outcome": outcome, "action": action, "due_at": berlin(due_at),
            "floor_until": berlin(floor_until), "by": by}


def _verdicts(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "why"} for r in doc["rules"]]


def test_explain_due_not_due_held_erase_and_kept(world: World) -> None:
    c = world.clocks
    due = world.explain("old-messages", 1)
    three = plus_years(c.due_message, 3)
    assert {k: v for k, v in due.items() if k not in ("as_of", "why", "rules")} == {
        "rule": "old-messages", "store": "app", "target": "messages", "key": "1",
        "record_ref": world.ref("messages", 1), "subject_ref": world.subject(U1),
        "clock": berlin(c.due_message), "floor_until": berlin(three), "due_at": berlin(three),
        "matching_rules": ["old-messages"], "holds": [], "requests": [],
        "decision": "dispose", "action": "delete", "winner": "old-messages",
        "blocked_by": []}
    assert _verdicts(due) == [_verdict("old-messages", "due", action="delete", due_at=three,
                                       floor_until=three)]
    assert abs(datetime.fromisoformat(due["as_of"]) - datetime.now(UTC)) < timedelta(minutes=5)

    # Not yet due: floor and due date are the clock plus 6 and 7 calendar years; the clock is
    # a Feb 29, so both land on Feb 28.
    young = world.explain("invoices", 2)
    floor, ceiling = plus_years(c.leap, 6), plus_years(c.leap, 7)
    assert (floor.month, floor.day, ceiling.month, ceiling.day) == (2, 28, 2, 28)
    assert {k: young[k] for k in ("clock", "floor_until", "due_at", "decision", "action",
                                  "winner", "holds", "requests")} == {
        "clock": berlin(c.leap), "floor_until": berlin(floor), "due_at": berlin(ceiling),
        "decision": "nothing", "action": None, "winner": None, "holds": [], "requests": []}
    assert young["clock"] == f"{c.leap.year}-02-29T12:00:00+01:00"
    assert _verdicts(young) == [_verdict("invoices", "not-due", due_at=ceiling,
                                         floor_until=floor)]

    held = world.explain("old-messages", 2)
    assert {k: held[k] for k in ("subject_ref", "holds", "requests", "decision", "action",
                                 "winner")} == {
        "subject_ref": world.subject(U2), "holds": [world.hold], "requests": [],
        "decision": "held", "action": None, "winner": "old-messages"}
    # A held record still shows the floor and due date time alone would give it.
    assert _verdicts(held) == [_verdict("old-messages", "held", due_at=three,
                                        floor_until=three, by=world.hold)]

    # A young message of a subject who asked for erasure: the floor yields to the request.
    erase = world.explain("old-messages", 3)
    assert {k: erase[k] for k in ("holds", "requests", "decision", "action", "winner")} == {
        "holds": [], "requests": [world.request], "decision": "erase", "action": "delete",
        "winner": "old-messages"}
    assert _verdicts(erase) == [_verdict("old-messages", "erase", action="delete",
                                         due_at=plus_years(c.young, 3),
                                         floor_until=plus_years(c.young, 3),
                                         by=world.request)]

    kept = world.explain("invoices", 1)
    assert {k: kept[k] for k in ("requests", "decision", "action", "winner", "why")} == {
        "requests": [world.request], "decision": "kept", "action": None,
        "winner": "invoices", "why": f"legal obligation: {LEGAL}"}
    assert _verdicts(kept) == [_verdict("invoices", "kept", due_at=plus_years(c.young, 7),
                                        floor_until=plus_years(c.young, 6),
                                        by=world.request)]

    # The set-based plan agrees with the five explanations.
    plan = ok(world.ws.invoke("plan", "--json"))
    assert counts(plan) == [("old-messages", 2, 1, 0, 0, 0, 0), ("invoices", 0, 0, 1, 0, 0, 0),
                            ("signed-documents", 0, 0, 0, 0, 0, 0),
                            ("old-documents", 0, 0, 0, 0, 0, 0),
                            ("stale-drafts", 1, 0, 0, 0, 0, 0)]


def test_explain_overlapping_rules(world: World) -> None:
    c = world.clocks
    # Document 1 is signed: old-documents is past its date, but signed-documents' 10-year
    # floor still protects it.
    protected = world.explain("old-documents", 1)
    assert {k: protected[k] for k in ("matching_rules", "clock", "due_at", "floor_until",
                                      "decision", "action", "winner")} == {
        "matching_rules": ["old-documents", "signed-documents"],
        "clock": berlin(c.two_years), "due_at": berlin(plus_years(c.two_years, 1)),
        "floor_until": None, "decision": "nothing", "action": None, "winner": None}
    ten = plus_years(c.two_years, 10)
    assert _verdicts(protected) == [
        _verdict("old-documents", "protected", due_at=plus_years(c.two_years, 1),
                 by="signed-documents"),
        _verdict("signed-documents", "not-due", due_at=ten, floor_until=ten),
        _verdict("stale-drafts", "not-matched")]

    # Document 2 is a draft: old-documents (1y) and stale-drafts (30d) are both due on the
    # same clock; the earlier due date wins, though old-documents is listed first.
    superseded = world.explain("old-documents", 2)
    assert {k: superseded[k] for k in ("matching_rules", "decision", "action",
                                       "winner")} == {
        "matching_rules": ["old-documents", "stale-drafts"], "decision": "dispose",
        "action": "delete", "winner": "stale-drafts"}
    assert _verdicts(superseded) == [
        _verdict("old-documents", "superseded", due_at=plus_years(c.two_years, 1),
                 by="stale-drafts"),
        _verdict("signed-documents", "not-matched"),
        _verdict("stale-drafts", "due", action="delete",
                 due_at=c.two_years + timedelta(days=30))]

    # A hold on signed-documents protects document 1 under every rule it matches.
    hold = ok(world.ws.invoke("hold", "add", "--rule", "signed-documents", "--reason", "audit",
                           "--json"))["id"]
    held = world.explain("old-documents", 1)
    assert {k: held[k] for k in ("holds", "decision", "winner")} == {
        "holds": [hold], "decision": "held", "winner": "old-documents"}
    assert [(v["rule"], v["outcome"], v["by"]) for v in held["rules"]] == [
        ("old-documents", "held", hold), ("signed-documents", "held", hold),
        ("stale-drafts", "not-matched", None)]


def test_explain_unknown_key_or_rule_is_a_usage_error(world: World) -> None:
    line = usage_error(world.ws.invoke("explain", "--rule", "old-messages", "--key", "999",
                                    "--json"))
    assert "--key 999" in line
    line = usage_error(world.ws.invoke("explain", "--rule", "no-such-rule", "--key", "1"))
    assert "no-such-rule" in line


def test_explain_agrees_with_the_sweep_on_a_zero_padded_subject(world: World) -> None:
    hold = ok(world.ws.invoke("hold", "add", "--subject", f"0{U1}", "--reason", "typo",
                           "--json"))["id"]
    [rule] = ok(world.ws.invoke("plan", "--rule", "old-messages", "--json"))["rules"]
    explained = world.explain("old-messages", 1)
    held_by_plan = rule["held"] - 1  # U2's message 2 is held in any case
    assert held_by_plan in (0, 1)
    assert (explained["decision"], explained["holds"]) == (
        ("held", [hold]) if held_by_plan else ("dispose", []))
