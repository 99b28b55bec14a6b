"""``audit export`` (json, csv, html) through the real CLI after a real sweep.

The store is a small SQLite table of people with distinctive values; the state database is
SQLite or PostgreSQL. Every export is checked for exact content and for the absence of any
value of the rows it disposed.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import html
import io
import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

FIELDS = ["seq", "at", "run_id", "kind", "rule", "store", "target", "action", "reason",
          "record_refs", "subject_ref", "hash", "detail"]
CSV_HEADER = ["seq", "at", "run_id", "kind", "rule", "store", "target", "action", "reason",
              "record_ref", "subject_ref", "hash"]
SOURCE = "Privacy policy §3 \"Data retention\": 'we keep <accounts> & logs 30 days'"
OTHER_SOURCE = "Privacy policy §6 Your choices & rights"
# Disposed rows: 8-digit ids and subject ids, so they cannot hide in timestamps or counts.
DUE = {
    73015501: ("Zebediah Quuxworth", "zebediah.quux@example.test", "+49-30-5550-1001", 58120001),
    73015502: ("Philippa Vornhagel", "p.vornhagel@example.test", "+49-30-5550-1002", 58120002),
    73015503: ("Ottoline Brackwater", "ottoline.b@example.test", "+49-30-5550-1003", 58120003),
}
LATER = {
    73015601: ("Barnaby Fluxhollow", "barnaby.flux@example.test", "+49-30-5550-2001", 58120101),
    73015602: ("Cressida Wimbleton", "cressida.w@example.test", "+49-30-5550-2002", 58120102),
}
KEPT = {73015701: ("Desmond Kettleby", "desmond.k@example.test", "+49-30-5550-3001", 58120201)}
ERASE_SUBJECT = "58129999"


@dataclass
class Setup:
    ws: Any
    store: sa.Engine
    state_url: str
    state_sqlite: Path | None
    run_id: str


def ref(secret_file: Path, key: int, target: str = "people") -> str:
    secret = secret_file.read_bytes().rstrip(b"\r\n")
    return hmac.new(secret, f"app\0{target}\0{key}".encode(), hashlib.sha256).hexdigest()


def insert(store: sa.Engine, rows: dict[int, tuple[str, str, str, int]], age_days: int) -> None:
    closed = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(days=age_days)
    with store.begin() as conn:
        conn.execute(sa.text(
            "insert into people (id, full_name, email, phone, user_id, closed_at) "
            "values (:id, :n, :e, :p, :u, :c)"),
            [{"id": k, "n": n, "e": e, "p": p, "u": u, "c": closed}
             for k, (n, e, p, u) in rows.items()])


def rules() -> list[dict[str, Any]]:
    return [
        {"id": "closed-people", "description": "Closed accounts go after 30 days.",
         "source": SOURCE, "store": "app", "table": "people", "key": "id",
         "subject": "user_id", "clock": "closed_at", "keep_for": "30d",
         "dispose_after": "30d", "action": "delete"},
        {"id": "people-erasure", "description": "Deleted on request.", "source": OTHER_SOURCE,
         "store": "app", "table": "people", "key": "id", "subject": "user_id",
         "action": "delete"},
    ]


@pytest.fixture(params=("sqlite", "postgresql"))
def setup(request: pytest.FixtureRequest, ws: Any, sqlite_db: Any) -> Setup:
    """A sweep that disposed the three DUE rows of ``people`` (KEPT is too young)."""
    store = sqlite_db.engine()
    with store.begin() as conn:
        conn.execute(sa.text("create table people (id integer primary key, full_name text, "
                             "email text, phone text, user_id integer, closed_at timestamp)"))
    insert(store, DUE, 40)
    insert(store, KEPT, 5)
    top: dict[str, Any] = {}
    state_sqlite: Path | None = ws.root / "state.db"
    if request.param == "postgresql":
        top["state"] = request.getfixturevalue("pg_schema").url
        state_sqlite = None
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url, "backups": {"retention": "35d"}}},
              rules(), **top)
    res = ws.invoke("--json", "run")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["totals"]["done"] == 3
    return Setup(ws, store, top.get("state", ws.state_url), state_sqlite, doc["run_id"])


def export(s: Setup, fmt: str, *args: str) -> str:
    res = s.ws.invoke("audit", "export", "--format", fmt, *args)
    assert res.code == 0, res.err
    return str(res.out)


def entries(s: Setup, *args: str) -> list[dict[str, Any]]:
    doc = json.loads(export(s, "json", *args))
    assert isinstance(doc, list)
    return doc


def canonical_hash(prev: str, e: dict[str, Any]) -> str:
    body = {k: e[k] for k in FIELDS if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(prev.encode() + text.encode()).hexdigest()


def test_json_export_has_every_entry_with_exact_fields(setup: Setup) -> None:
    doc = entries(setup)
    assert [e["kind"] for e in doc] == ["policy", "dispose"]
    assert [list(e) for e in doc] == [FIELDS, FIELDS]
    d = doc[1]
    assert {k: d[k] for k in ("seq", "run_id", "rule", "store", "target", "action", "reason",
                              "subject_ref")} == {
        "seq": 2, "run_id": setup.run_id, "rule": "closed-people", "store": "app",
        "target": "people", "action": "delete", "reason": "schedule", "subject_ref": None}
    assert sorted(d["record_refs"]) == sorted(ref(setup.ws.secret, k) for k in DUE)
    assert len(d["record_refs"]) == 3
    assert d["detail"]["count"] == 3
    prev = "0" * 64
    for e in doc:
        assert e["hash"] == canonical_hash(prev, e)
        prev = e["hash"]
    assert setup.ws.invoke("--json", "audit", "verify").json()["head"] == prev


def test_csv_export_has_one_row_per_record_reference(setup: Setup) -> None:
    dispose = entries(setup)[1]
    rows = list(csv.reader(io.StringIO(export(setup, "csv"))))
    assert rows[0] == CSV_HEADER
    body = [dict(zip(CSV_HEADER, r, strict=True)) for r in rows[1:]]
    assert len(body) == 3
    assert {r["record_ref"] for r in body} == {ref(setup.ws.secret, k) for k in DUE}
    for r in body:
        assert (r["seq"], r["kind"], r["rule"], r["target"], r["hash"], r["run_id"]) == (
            "2", "dispose", "closed-people", "people", dispose["hash"], setup.run_id)


def second_sweep(s: Setup) -> list[dict[str, Any]]:
    insert(s.store, LATER, 45)
    res = s.ws.invoke("--json", "run")
    assert res.code == 0, res.err
    assert res.json()["totals"]["done"] == 2
    return entries(s)


def test_since_and_until_bound_the_entry_time(setup: Setup) -> None:
    doc = second_sweep(setup)
    assert [e["kind"] for e in doc] == ["policy", "dispose", "dispose"]
    cut = doc[2]["at"]  # since is inclusive, until exclusive, at the exact instant
    assert [e["seq"] for e in entries(setup, "--since", cut)] == [3]
    assert [e["seq"] for e in entries(setup, "--until", cut)] == [1, 2]
    assert [e["seq"] for e in entries(setup, "--since", doc[1]["at"], "--until", cut)] == [2]
    plus2 = datetime.fromisoformat(cut).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert [e["seq"] for e in entries(setup, "--since", plus2)] == [3]
    later_refs = {ref(setup.ws.secret, k) for k in LATER}
    rows = list(csv.DictReader(io.StringIO(export(setup, "csv", "--since", cut))))
    assert {r["record_ref"] for r in rows} == later_refs
    assert len(rows) == 2
    total = '<tr><td><b>total</b></td><td class="n">{0}</td><td class="n">{0}</td></tr>'
    assert total.format(3) in export(setup, "html", "--until", cut)
    assert total.format(2) in export(setup, "html", "--since", cut)
    assert total.format(5) in export(setup, "html")
    assert entries(setup, "--since", "2999-01-01T00:00Z") == []


def test_output_file_receives_the_export(setup: Setup, tmp_path: Path) -> None:
    for fmt in ("json", "csv", "html"):
        target = tmp_path / f"audit.{fmt}"
        res = setup.ws.invoke("audit", "export", "--format", fmt, "-o", str(target))
        assert res.code == 0, res.err
        assert res.out == ""
        assert f"wrote {fmt} audit export to {target}" in res.err
        assert not target.with_name(target.name + ".part").exists()
    for fmt in ("json", "csv"):
        assert (tmp_path / f"audit.{fmt}").read_text(encoding="utf-8") == export(setup, fmt)
    assert [e["seq"] for e in json.loads((tmp_path / "audit.json").read_text())] == [1, 2]
    page = (tmp_path / "audit.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.endswith("</body></html>\n")
    assert "Audit trail verified: 2 entries" in page


def test_html_report_for_the_dpo(setup: Setup) -> None:
    hold = setup.ws.invoke("hold", "add", "--rule", "people-erasure", "--reason",
                        "Vornhagel litigation case 4471")
    assert hold.code == 0, hold.err
    req = setup.ws.invoke("request", "erase", ERASE_SUBJECT)
    assert req.code == 0, req.err
    page = export(setup, "html")
    doc = entries(setup)
    head = setup.ws.invoke("--json", "audit", "verify").json()["head"]
    for rule in rules():
        assert f"<code>{rule['id']}</code>" in page
        assert html.escape(rule["source"]) in page
    assert "&lt;accounts&gt; &amp; logs" in page  # the source is escaped, never raw markup
    assert head in page
    assert page.count("<svg") == 1
    assert f"Audit trail verified: 4 entries, head {head}" in page
    month = doc[1]["at"][:7]
    assert f'<tr><td>{month}</td><td class="n">3</td><td class="n">3</td></tr>' in page
    assert f"<code>{hold.out.strip()}</code>" in page
    assert f"<code>{req.out.strip()}</code>" in page
    assert "Vornhagel" not in page
    assert "<script" not in page.lower()
    assert not re.search(r"https?://|src=|href=", page)
    horizon = next((e["detail"]["beyond_use_until"] for e in doc
                    if "beyond_use_until" in e["detail"]), None)
    assert "<td>35d</td>" in page
    if horizon is None:
        assert "not recorded in the ledger" in page
    else:
        shown = datetime.fromisoformat(horizon).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
        assert f"<td>{shown}</td></tr>" in page


def test_html_report_without_requests_or_holds_says_none_recorded(setup: Setup) -> None:
    page = export(setup, "html")
    assert page.count('<p class="none">none recorded</p>') == 2


def disposed_values() -> list[str]:
    out = []
    for key, (name, email, phone, subject) in DUE.items():
        out += [str(key), name, email, phone, str(subject), *name.split()]
    return [*out, ERASE_SUBJECT]


def test_no_export_contains_a_disposed_value(setup: Setup) -> None:
    assert setup.ws.invoke("request", "erase", ERASE_SUBJECT).code == 0
    for fmt in ("json", "csv", "html"):
        text = export(setup, fmt)
        assert len(text) > 500
        for value in disposed_values():
            if value.isdigit():
                assert not re.search(rf"\b{value}\b", text), (fmt, value)
            else:
                assert value not in text, (fmt, value)


def test_html_report_shows_a_tampered_ledger(setup: Setup) -> None:
    forged = json.dumps([ref(setup.ws.secret, 1)])
    if setup.state_sqlite is not None:
        with sqlite3.connect(setup.state_sqlite) as conn:
            conn.execute("update ledger set record_refs = ? where seq = 2", (forged,))
    else:
        engine = sa.create_engine(setup.state_url)
        with engine.begin() as conn:
            conn.execute(sa.text("update ledger set record_refs = :r where seq = 2"),
                         {"r": forged})
        engine.dispose()
    assert setup.ws.invoke("audit", "verify").code == 4
    page = export(setup, "html")
    assert "Audit trail verification FAILED" in page
    assert "ledger entry 2 does not match its hash" in page
    assert "verified" not in page
    assert 'class="banner bad" role="alert"' in page
