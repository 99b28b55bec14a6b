"""Erasure requests and legal holds through the real CLI (SPEC 1, 3.2, 3.4 and 7).

The marketplace of :mod:`marketplace`: subject A is under a legal hold, B asks for erasure, C is
held and asks for erasure. The precedence ladder decides every row: holds beat requests,
requests beat floors, ``on_erasure: keep`` keeps invoices, time disposes the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa
from marketplace import (
    LEGAL_BASIS,
    OLD_MESSAGES,
    A,
    B,
    C,
    D,
    E,
    F,
    G,
    anonymized,
    build,
    counts,
    ids,
    now_seconds,
    ok,
    policy,
    record_ref,
    subject_ref,
    tables,
    tokens,
    usage_error,
    years_before,
)

from retentiond.adapters.base import NextBatch, Selection
from retentiond.adapters.registry import register, unregister
from retentiond.adapters.sql import SqlAdapter
from retentiond.app import App
from retentiond.audit.ledger import Refs
from retentiond.executor import RuleResult
from retentiond.state.cases import add_hold, add_request, list_requests
from retentiond.sweep import sweep

NO_TOTALS = {"due": 0, "held": 0, "kept": 0, "done": 0, "failed": 0}


@pytest.fixture
def market(store_db_sp: Any, ws: Any) -> Iterator[sa.Engine]:
    engine = store_db_sp.engine()
    build(engine, now_seconds())
    policy(ws, store_db_sp.url)
    yield engine
    engine.dispose()


@pytest.fixture
def market3(store_db: Any, ws: Any) -> Iterator[sa.Engine]:
    """The same market on SQLite, PostgreSQL and MariaDB."""
    engine = store_db.engine()
    build(engine, now_seconds())
    policy(ws, store_db.url)
    yield engine
    engine.dispose()


def _tables(engine: sa.Engine) -> dict[str, set[int]]:
    return {t: ids(engine, t) for t in ("users", "messages", "invoices")} | {
        "anonymized": anonymized(engine)}


def _close_to(iso: str, expected: datetime) -> bool:
    return abs(datetime.fromisoformat(iso) - expected) < timedelta(minutes=2)


def test_holds_and_requests_follow_the_precedence_ladder(market: sa.Engine, ws: Any) -> None:
    engine = market
    hold_a = ok(ws.invoke("hold", "add", "--subject", str(A), "--reason", "litigation Doe v. Shop",
                       "--ref", "CASE-17", "--json"))
    hold_c = ok(ws.invoke("hold", "add", "--subject", str(C), "--reason", "tax audit",
                       "--ref", "CASE-18", "--json"))
    assert {k: hold_a[k] for k in ("scope", "status")} == {"scope": "subject",
                                                           "status": "active"}
    req_b = ok(ws.invoke("request", "erase", str(B), "--ref", "TICKET-7", "--json"))
    req_c = ok(ws.invoke("request", "erase", str(C), "--ref", "TICKET-8", "--json"))
    assert {k: req_b[k] for k in ("subject_kind", "status")} == {"subject_kind": "user",
                                                                 "status": "open"}
    assert _close_to(req_b["due_at"], datetime.now(UTC) + timedelta(days=30)), req_b
    assert len({hold_a["id"], hold_c["id"], req_b["id"], req_c["id"]}) == 4
    before = _tables(engine)

    # -- plan: exact counts per rule, nothing changed ----------------------------------------
    plan = ok(ws.invoke("plan", "--json"))
    expected_counts = [
        # closed-accounts: D due; A held; G has no clock; B and C are active accounts.
        ("closed-accounts", 1, 1, 0, 0, 0, 1),
        # accounts (requests only): B's row; C's row is held (its request is blocked).
        ("accounts", 1, 1, 0, 0, 0, 0),
        # old-messages: 7, 9, 11 by time, 3 and 4 for B's request (4 is young: the floor
        # yields to the request); held: A's due 1, and C's 5 and 6 (request blocked).
        ("old-messages", 5, 3, 0, 0, 0, 0),
        # invoices: 5 and 7 by time; B's 3 and 4 kept by law; A's due 1 held.
        ("invoices", 2, 1, 2, 0, 0, 0),
    ]
    assert counts(plan) == expected_counts
    assert plan["dry_run"] is True
    assert plan["totals"] == {"due": 9, "held": 6, "kept": 2, "done": 0, "failed": 0}
    assert plan["requests"] == [
        {"id": req_b["id"], "subject_kind": "user", "status": "open", "due_at": req_b["due_at"]},
        {"id": req_c["id"], "subject_kind": "user", "status": "open", "due_at": req_c["due_at"]},
    ]
    assert _tables(engine) == before

    # -- run: exactly the expected rows remain -----------------------------------------------
    run1 = ok(ws.invoke("run", "--json"))
    assert counts(run1) == [(r, due, held, kept, due, 0, nc)
                            for r, due, held, kept, _, _, nc in expected_counts]
    assert run1["totals"] == {"due": 9, "held": 6, "kept": 2, "done": 9, "failed": 0}
    assert [(q["id"], q["status"]) for q in run1["requests"]] == [
        (req_b["id"], "partial"), (req_c["id"], "open")]
    assert _tables(engine) == {
        "users": {A, C, D, E, F, G},  # B erased; A held; C held despite its request
        "anonymized": {D},
        "messages": {1, 2, 5, 6, 8, 10},
        "invoices": {1, 2, 3, 4, 6},  # B's invoices kept by law, A's due one held
    }

    requests = {q["id"]: q for q in ok(ws.invoke("request", "list", "--json"))}
    assert set(requests) == {req_b["id"], req_c["id"]}
    b, c = requests[req_b["id"]], requests[req_c["id"]]
    assert (b["status"], b["ref"], b["overdue"]) == ("partial", "TICKET-7", False)
    assert b["subject_ref"] == subject_ref(ws.secret, "user", B)
    assert b["completed_at"] is not None
    assert b["outcome"] == {
        "closed-accounts": {"disposed": 0, "kept": 0},
        "accounts": {"disposed": 1, "kept": 0},
        "old-messages": {"disposed": 2, "kept": 0},
        "invoices": {"disposed": 0, "kept": 2, "legal_basis": LEGAL_BASIS},
    }
    assert (c["status"], c["completed_at"], c["overdue"]) == ("open", None, False)
    assert c["outcome"] == {r: {"disposed": 0, "kept": 0, "held": True}
                            for r in ("closed-accounts", "accounts", "old-messages",
                                      "invoices")}
    open_ids = [q["id"] for q in ok(ws.invoke("request", "list", "--open", "--json"))]
    assert open_ids == [req_c["id"]]

    holds = ok(ws.invoke("hold", "list", "--json"))
    assert [(h["id"], h["status"], h["scope"], h["subject_kind"], h["subject_ref"],
             h["reason"], h["ref"], h["released_at"]) for h in holds] == [
        (hold_a["id"], "active", "subject", "user", subject_ref(ws.secret, "user", A),
         "litigation Doe v. Shop", "CASE-17", None),
        (hold_c["id"], "active", "subject", "user", subject_ref(ws.secret, "user", C),
         "tax audit", "CASE-18", None)]

    # -- release: A's due records and C's request go through at the next sweep ---------------
    for hold in (hold_a, hold_c):
        released = ok(ws.invoke("hold", "release", hold["id"], "--reason", "case closed",
                             "--json"))
        assert released == {"id": hold["id"], "status": "released"}
    holds = ok(ws.invoke("hold", "list", "--json"))
    assert [(h["id"], h["status"], h["release_reason"]) for h in holds] == [
        (hold_a["id"], "released", "case closed"), (hold_c["id"], "released", "case closed")]
    assert all(h["released_at"] is not None for h in holds)
    assert ok(ws.invoke("hold", "list", "--active", "--json")) == []

    run2 = ok(ws.invoke("run", "--json"))
    assert counts(run2) == [
        ("closed-accounts", 1, 0, 0, 1, 0, 1),  # A anonymised
        ("accounts", 1, 0, 0, 1, 0, 0),  # C's row, for C's request
        ("old-messages", 3, 0, 0, 3, 0, 0),  # A's 1 by time, C's 5 and 6 by request
        # A's 1 by time, and B's 3: B's request is closed, so its due invoice goes by time.
        ("invoices", 2, 0, 0, 2, 0, 0),
    ]
    assert [(q["id"], q["status"]) for q in run2["requests"]] == [(req_c["id"], "done")]
    assert _tables(engine) == {"users": {A, D, E, F, G}, "anonymized": {A, D},
                               "messages": {2, 8, 10}, "invoices": {2, 4, 6}}
    requests = {q["id"]: q for q in ok(ws.invoke("request", "list", "--json"))}
    assert requests[req_b["id"]]["status"] == "partial"
    c = requests[req_c["id"]]
    assert c["status"] == "done"
    assert {r: (v["disposed"], v["kept"]) for r, v in c["outcome"].items()} == {
        "closed-accounts": (0, 0), "accounts": (1, 0), "old-messages": (2, 0),
        "invoices": (0, 0)}
    assert ok(ws.invoke("request", "list", "--open", "--json")) == []

    _check_ledger(ws, hold_a["id"], hold_c["id"], req_b["id"], req_c["id"], run1, run2)


def _check_ledger(ws: Any, hold_a: str, hold_c: str, req_b: str, req_c: str,
                  run1: dict[str, Any], run2: dict[str, Any]) -> None:
    export = ws.invoke("audit", "export", "--format", "json")
    assert export.code == 0, export.err
    entries = json.loads(export.out)
    ref = {t: (lambda k, t=t: record_ref(ws.secret, "app", t, k))
           for t in ("users", "messages", "invoices")}
    subj = {s: subject_ref(ws.secret, "user", s) for s in (A, B, C)}

    holds = [(e["reason"], e["detail"]["hold_id"], e["subject_ref"]) for e in entries
             if e["kind"] == "hold"]
    assert holds == [("hold placed", hold_a, subj[A]), ("hold placed", hold_c, subj[C]),
                     ("hold released", hold_a, subj[A]), ("hold released", hold_c, subj[C])]
    requests = [(e["reason"], e["detail"]["request_id"], e["subject_ref"], e["run_id"])
                for e in entries if e["kind"] == "request"]
    assert requests == [
        ("erasure requested", req_b, subj[B], None), ("erasure requested", req_c, subj[C], None),
        ("erasure partial", req_b, subj[B], run1["run_id"]),
        ("erasure done", req_c, subj[C], run2["run_id"])]

    disposals = {(e["run_id"], e["rule"], e["target"], e["action"], e["reason"],
                  e["subject_ref"], frozenset(e["record_refs"]))
                 for e in entries if e["kind"] == "dispose"}
    r1, r2 = run1["run_id"], run2["run_id"]
    assert disposals == {
        (r1, "closed-accounts", "users", "anonymize", "schedule", None,
         frozenset({ref["users"](D)})),
        (r1, "accounts", "users", "delete", f"erasure:{req_b}", subj[B],
         frozenset({ref["users"](B)})),
        (r1, "old-messages", "messages", "delete", f"erasure:{req_b}", subj[B],
         frozenset({ref["messages"](3), ref["messages"](4)})),
        (r1, "old-messages", "messages", "delete", "schedule", None,
         frozenset({ref["messages"](k) for k in (7, 9, 11)})),
        (r1, "invoices", "invoices", "delete", "schedule", None,
         frozenset({ref["invoices"](5), ref["invoices"](7)})),
        (r2, "closed-accounts", "users", "anonymize", "schedule", None,
         frozenset({ref["users"](A)})),
        (r2, "accounts", "users", "delete", f"erasure:{req_c}", subj[C],
         frozenset({ref["users"](C)})),
        (r2, "old-messages", "messages", "delete", f"erasure:{req_c}", subj[C],
         frozenset({ref["messages"](5), ref["messages"](6)})),
        (r2, "old-messages", "messages", "delete", "schedule", None,
         frozenset({ref["messages"](1)})),
        (r2, "invoices", "invoices", "delete", "schedule", None,
         frozenset({ref["invoices"](1), ref["invoices"](3)})),
    }
    assert sum(len(e["record_refs"]) for e in entries if e["kind"] == "dispose") == 16

    # Subjects appear only as references: never a raw subject id, anywhere in the export.
    words = tokens(export.out)
    assert not {str(s) for s in (A, B, C, D, E, F, G)} & words
    verify = ws.invoke("audit", "verify")
    assert verify.code == 0, verify.err
    assert f"{len(entries)} entries" in verify.out


def test_overdue_request_is_listed_until_a_sweep_settles_it(market: sa.Engine,
                                                             ws: Any) -> None:
    late = ok(ws.invoke("request", "erase", str(B), "--due", "0d", "--ref", "LATE-1", "--json"))
    assert _close_to(late["due_at"], datetime.now(UTC)), late
    timely = ok(ws.invoke("request", "erase", str(C), "--due", "2w", "--json"))
    assert _close_to(timely["due_at"], datetime.now(UTC) + timedelta(days=14)), timely

    overdue = ok(ws.invoke("request", "list", "--overdue", "--json"))
    assert [(q["id"], q["status"], q["overdue"], q["ref"], q["due_at"]) for q in overdue] == [
        (late["id"], "overdue", True, "LATE-1", late["due_at"])]
    listed = ok(ws.invoke("request", "list", "--open", "--json"))
    assert [(q["id"], q["status"]) for q in listed] == [(late["id"], "overdue"),
                                                        (timely["id"], "open")]
    plan = ok(ws.invoke("plan", "--json"))
    assert [(q["id"], q["status"]) for q in plan["requests"]] == [
        (late["id"], "overdue"), (timely["id"], "open")]

    run = ok(ws.invoke("run", "--json"))
    assert [(q["id"], q["status"]) for q in run["requests"]] == [
        (late["id"], "partial"), (timely["id"], "done")]
    assert ok(ws.invoke("request", "list", "--overdue", "--json")) == []
    assert ids(market, "users") == {A, D, E, F, G}


# -- holds on a rule and on a store -----------------------------------------------------------
def test_store_hold_disposes_nothing_and_rule_hold_beats_requests(market: sa.Engine,
                                                                   ws: Any) -> None:
    engine = market
    before = _tables(engine)
    store_hold = ok(ws.invoke("hold", "add", "--store", "app", "--reason", "regulator inquiry",
                           "--json"))
    assert {k: store_hold[k] for k in ("scope", "status")} == {"scope": "store",
                                                               "status": "active"}
    run = ok(ws.invoke("run", "--json"))
    # Nothing in the store is disposed; every due message and invoice is counted held.
    # (closed-accounts' held count is checked by the test below.)
    assert [(r, due, done, failed) for r, due, _, _, done, failed, _ in counts(run)] == [
        ("closed-accounts", 0, 0, 0), ("accounts", 0, 0, 0), ("old-messages", 0, 0, 0),
        ("invoices", 0, 0, 0)]
    assert [r for r in counts(run) if r[0] in ("old-messages", "invoices")] == [
        ("old-messages", 0, 6, 0, 0, 0, 0), ("invoices", 0, 4, 0, 0, 0, 0)]
    assert _tables(engine) == before
    ok(ws.invoke("hold", "release", store_hold["id"], "--reason", "inquiry closed", "--json"))

    rule_hold = ok(ws.invoke("hold", "add", "--rule", "old-messages", "--reason", "discovery",
                          "--ref", "CASE-3", "--json"))
    req = ok(ws.invoke("request", "erase", str(B), "--json"))
    plan = ok(ws.invoke("plan", "--json"))
    expected = [
        ("closed-accounts", 2, 0, 0, 0, 0, 1),  # A and D
        ("accounts", 1, 0, 0, 0, 0, 0),  # B's account
        # every due message (1, 5, 7, 9, 11) and B's 3 and 4: the hold beats the request
        ("old-messages", 0, 7, 0, 0, 0, 0),
        ("invoices", 3, 0, 2, 0, 0, 0),  # 1, 5, 7 by time; B's 3 and 4 kept
    ]
    assert counts(plan) == expected
    run = ok(ws.invoke("run", "--json"))
    assert counts(run) == [(r, due, held, kept, due, 0, nc)
                           for r, due, held, kept, _, _, nc in expected]
    assert [(q["id"], q["status"]) for q in run["requests"]] == [(req["id"], "open")]
    assert _tables(engine) == {"users": {A, C, D, E, F, G}, "anonymized": {A, D},
                               "messages": before["messages"], "invoices": {2, 3, 4, 6}}
    outcome = ok(ws.invoke("request", "list", "--json"))[0]["outcome"]
    assert outcome["old-messages"] == {"disposed": 0, "kept": 0, "held": True}
    holds = ok(ws.invoke("hold", "list", "--json"))
    assert [(h["id"], h["scope"], h["rule"], h["store"], h["subject_ref"], h["status"])
            for h in holds] == [
        (store_hold["id"], "store", None, "app", None, "released"),
        (rule_hold["id"], "rule", "old-messages", None, None, "active")]


def test_request_served_over_two_sweeps_keeps_its_whole_outcome(market3: sa.Engine,
                                                                 ws: Any) -> None:
    """Sweep 1 erases B's account and keeps B's invoices while a hold blocks old-messages;
    sweep 2, after the release, erases B's messages and closes the request. What sweep 1 did
    is still in the outcome, in `request list` and in the closing ledger entry."""
    hold = ok(ws.invoke("hold", "add", "--rule", "old-messages", "--reason", "discovery",
                        "--json"))
    req = ok(ws.invoke("request", "erase", str(B), "--json"))
    run1 = ok(ws.invoke("run", "--json"))
    assert [(q["id"], q["status"]) for q in run1["requests"]] == [(req["id"], "open")]
    first = ok(ws.invoke("request", "list", "--json"))[0]["outcome"]
    assert first == {
        "closed-accounts": {"disposed": 0, "kept": 0},
        "accounts": {"disposed": 1, "kept": 0},
        "old-messages": {"disposed": 0, "kept": 0, "held": True},
        "invoices": {"disposed": 0, "kept": 2, "legal_basis": LEGAL_BASIS},
    }
    ok(ws.invoke("hold", "release", hold["id"], "--reason", "discovery over", "--json"))
    run2 = ok(ws.invoke("run", "--json"))
    assert [(q["id"], q["status"]) for q in run2["requests"]] == [(req["id"], "partial")]
    assert ids(market3, "users") & {B} == set()
    assert ids(market3, "messages") & {3, 4} == set()
    whole = {
        "closed-accounts": {"disposed": 0, "kept": 0},
        "accounts": {"disposed": 1, "kept": 0},  # sweep 1's erasure, not sweep 2's nothing
        "old-messages": {"disposed": 2, "kept": 0},  # the hold is released: no "held"
        "invoices": {"disposed": 0, "kept": 2, "legal_basis": LEGAL_BASIS},  # not 2 + 2
    }
    listed = ok(ws.invoke("request", "list", "--json"))[0]
    assert (listed["status"], listed["outcome"]) == ("partial", whole)
    entries = ok(ws.invoke("audit", "export", "--format", "json"))
    closing = [e for e in entries if e["kind"] == "request"
               and e["detail"]["request_id"] == req["id"] and e["run_id"] is not None]
    assert [(e["reason"], e["run_id"], e["detail"]["outcome"]) for e in closing] == [
        ("erasure partial", run2["run_id"], whole)]


def test_store_hold_counts_every_due_record_held(sqlite_db: Any, ws: Any) -> None:
    engine = sqlite_db.engine()
    build(engine, now_seconds())
    engine.dispose()
    policy(ws, sqlite_db.url)
    ok(ws.invoke("hold", "add", "--store", "app", "--reason", "regulator inquiry", "--json"))
    plan = ok(ws.invoke("plan", "--json"))
    assert counts(plan) == [
        ("closed-accounts", 0, 2, 0, 0, 0, 1),  # A and D are due and held
        ("accounts", 0, 0, 0, 0, 0, 0),
        ("old-messages", 0, 6, 0, 0, 0, 0),
        ("invoices", 0, 4, 0, 0, 0, 0)]
    assert plan["totals"] == {**NO_TOTALS, "held": 12}


# -- bad input: exit 2, one error line, nothing changed --------------------------------------
def test_bad_hold_and_request_input_is_refused(sqlite_db: Any, ws: Any) -> None:
    engine = sqlite_db.engine()
    build(engine, now_seconds())
    engine.dispose()
    policy(ws, sqlite_db.url)
    cases = [
        (("hold", "add", "--subject", "5", "--rule", "old-messages", "--reason", "x"),
         "exactly one of --subject, --rule or --store"),
        (("hold", "add", "--rule", "old-messages", "--store", "app", "--reason", "x"),
         "exactly one of --subject, --rule or --store"),
        (("hold", "add", "--reason", "x"), "exactly one of --subject, --rule or --store"),
        (("hold", "add", "--rule", "no-such-rule", "--reason", "x"), "no-such-rule"),
        (("hold", "add", "--store", "warehouse", "--reason", "x"), "warehouse"),
        (("hold", "release", "0123456789ab", "--reason", "x"), "0123456789ab"),
        (("request", "erase", "5", "--kind", "robot"), "robot"),
        (("request", "erase", "5", "--due", "soon"), "--due"),
        (("request", "erase", "5", "--due", "-3d"), "--due"),
    ]
    for args, fragment in cases:
        line = usage_error(ws.invoke(*args))
        assert fragment in line, (args, line)
    assert ok(ws.invoke("hold", "list", "--json")) == []
    assert ok(ws.invoke("request", "list", "--json")) == []

    # Without --json, hold add and request erase print just the new id.
    added = ws.invoke("hold", "add", "--subject", str(A), "--reason", "x")
    assert added.code == 0, added.err
    hold_id = added.out.strip()
    assert added.out == hold_id + "\n" and re.fullmatch(r"[0-9a-f]{12}", hold_id)
    asked = ws.invoke("request", "erase", str(B))
    assert asked.code == 0, asked.err
    assert [q["id"] for q in ok(ws.invoke("request", "list", "--json"))] == [asked.out.strip()]
    ok(ws.invoke("hold", "release", hold_id, "--reason", "done", "--json"))
    line = usage_error(ws.invoke("hold", "release", hold_id, "--reason", "again"))
    assert f"hold {hold_id} was already released" in line
    holds = ok(ws.invoke("hold", "list", "--json"))
    assert [(h["id"], h["status"], h["release_reason"]) for h in holds] == [
        (hold_id, "released", "done")]


# -- a hold placed while a sweep runs (in-process, deterministic) ------------------------------
X, Y = 4444444, 5555555


class HoldAfterFirstBatch(SqlAdapter):
    """The sql adapter, placing a subject hold on X right after its first disposed batch.

    Both delete paths are hooked: ``delete`` (scan, then delete the batch's keys) and, where
    the adapter has it, the one-statement ``delete_next``."""

    batches: ClassVar[list[list[Any]]] = []  # the keys each mutator call disposed
    state: ClassVar[sa.Engine | None] = None
    secret: ClassVar[bytes] = b""

    def delete(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        return self._after(super().delete(selection, keys))

    def delete_next(self, selection: Selection, after: Any, limit: int,
                    intent: Callable[[list[Any]], None]) -> NextBatch | None:
        batch = super().delete_next(selection, after, limit, intent)
        if batch is not None:
            self._after(batch.disposed)
        return batch

    def _after(self, disposed: list[Any]) -> list[Any]:
        if not disposed:
            return disposed
        HoldAfterFirstBatch.batches.append(sorted(disposed))
        if len(HoldAfterFirstBatch.batches) == 1:
            assert HoldAfterFirstBatch.state is not None
            add_hold(HoldAfterFirstBatch.state, Refs(HoldAfterFirstBatch.secret),
                     scope="subject", reason="placed mid-sweep", ref=None, subject=str(X),
                     kind="user")
        return disposed


@dataclass
class MidSweep:
    engine: sa.Engine
    app: App
    ws: Any

    def sweep(self) -> RuleResult:
        HoldAfterFirstBatch.batches = []
        HoldAfterFirstBatch.state = self.app.state
        HoldAfterFirstBatch.secret = self.app.policy.secret_key.get_secret_value()
        report = sweep(self.app, dry_run=False)
        assert report.exit_code == 0
        [result] = report.rules
        return result

    def disposed_refs(self) -> list[set[str]]:
        with self.app.state.connect() as conn:
            rows = conn.execute(sa.text(
                "select record_refs from ledger where kind = 'dispose' order by seq")).scalars()
            return [set(json.loads(r)) for r in rows]

    def refs(self, *keys: int) -> set[str]:
        return {record_ref(self.ws.secret, "app", "messages", k) for k in keys}


@pytest.fixture
def mid_sweep(store_db_sp: Any, ws: Any) -> Iterator[MidSweep]:
    """messages 1-6, senders X and Y alternating (X owns 1, 3, 5), all due except where a test
    says otherwise; batch_size 2; the store's adapter is :class:`HoldAfterFirstBatch`."""
    register("sqlhook", HoldAfterFirstBatch)
    engine = store_db_sp.engine()
    md = sa.MetaData()
    messages = tables(md)["messages"]
    md.create_all(engine, tables=[messages])
    due = years_before(now_seconds(), 3) - timedelta(days=10)
    with engine.begin() as conn:
        conn.execute(messages.insert(), [
            {"id": i, "sender_id": X if i % 2 else Y, "body": "hi", "sent_at": due}
            for i in range(1, 7)])
    config = ws.policy({"app": {"adapter": "sqlhook", "url": store_db_sp.url}}, [OLD_MESSAGES],
                       batch_size=2)
    app = App(str(config))
    try:
        yield MidSweep(engine, app, ws)
    finally:
        app.close()
        engine.dispose()
        unregister("sqlhook")


def test_hold_placed_mid_sweep_protects_records_not_yet_disposed(mid_sweep: MidSweep) -> None:
    result = mid_sweep.sweep()
    # Batch 1 (1, 2) is disposed, then X is held: X's 3 and 5 are left alone, Y's 4 and 6
    # go (in one batch or two, depending on the delete path).
    first, *rest = HoldAfterFirstBatch.batches
    assert (first, sorted(k for b in rest for k in b)) == ([1, 2], [4, 6])
    assert ids(mid_sweep.engine, "messages") == {3, 5}
    assert (result.done, result.failed) == (4, 0)
    ledgered, *later = mid_sweep.disposed_refs()
    assert (ledgered, set().union(*later)) == (mid_sweep.refs(1, 2), mid_sweep.refs(4, 6))
    again = mid_sweep.sweep()
    assert (again.due, again.held, again.done) == (0, 2, 0)
    assert ids(mid_sweep.engine, "messages") == {3, 5}


def test_hold_placed_mid_sweep_is_counted_held(mid_sweep: MidSweep) -> None:
    result = mid_sweep.sweep()
    assert ids(mid_sweep.engine, "messages") == {3, 5}
    assert (result.due, result.held, result.done, result.failed) == (4, 2, 4, 0)


def test_hold_placed_mid_sweep_blocks_the_rest_of_an_erasure(mid_sweep: MidSweep) -> None:
    state = mid_sweep.app.state
    refs = Refs(mid_sweep.app.policy.secret_key.get_secret_value())
    request_id = add_request(state, refs, subject=str(X), kind="user", ref=None,
                             due_at=datetime.now(UTC) + timedelta(days=30))
    result = mid_sweep.sweep()
    # The request is served first: X's 1 and 3, then the hold stops it before 5. Y's records
    # go by time.
    assert HoldAfterFirstBatch.batches == [[1, 3], [2, 4], [6]]
    assert ids(mid_sweep.engine, "messages") == {5}
    assert (result.due, result.held, result.done, result.failed) == (5, 1, 5, 0)
    [request] = list_requests(state)
    assert (request["id"], request["status"]) == (request_id, "open")
    assert request["outcome"] == {"old-messages": {"disposed": 2, "kept": 0, "held": True}}
    assert mid_sweep.disposed_refs() == [mid_sweep.refs(1, 3), mid_sweep.refs(2, 4),
                                         mid_sweep.refs(6)]


def test_plan_counts_a_record_two_rules_would_erase_once(sqlite_db: Any, ws: Any) -> None:
    engine = sqlite_db.engine()
    build(engine, now_seconds())
    policy(ws, sqlite_db.url)
    ok(ws.invoke("request", "erase", str(E), "--json"))  # E: a closed account, closed recently
    plan = ok(ws.invoke("plan", "--json"))
    run = ok(ws.invoke("run", "--json"))
    # closed-accounts: A and D by time, E by request; old-messages: 1, 3, 5, 7, 11 by time and
    # E's 9 by request; invoices: 1, 3, 5 by time, E's 7 kept.
    assert [(r["rule"], r["due"], r["done"]) for r in run["rules"]] == [
        ("closed-accounts", 3, 3), ("accounts", 0, 0), ("old-messages", 6, 6),
        ("invoices", 3, 3)]
    assert ids(engine, "users") == {A, B, C, D, F, G}
    engine.dispose()
    assert [(r["rule"], r["due"]) for r in plan["rules"]] == [
        (r["rule"], r["due"]) for r in run["rules"]]
