"""The export writers and the report's building blocks, on a real SQLite state database."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from retentiond.audit import export, ledger, report
from retentiond.state.db import open_state

REFS = ["a" * 64, "b" * 64, "c" * 64]
AT = ["2026-01-31T23:59:59.999999+00:00", "2026-02-01T00:00:00.000000+00:00",
      "2026-02-15T12:00:00.000000+00:00", "2026-03-01T08:30:00.000000+00:00"]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = open_state(f"sqlite:///{tmp_path / 'state.db'}")
    yield engine
    engine.dispose()


def draft(at: str, kind: str = "dispose", refs: list[str] | None = None, **kw: object
          ) -> ledger.Draft:
    base: dict[str, object] = {"run_id": "r1", "rule": "old-messages", "store": "app",
                               "target": "messages", "action": "delete", "reason": "schedule"}
    if kind == "policy":
        base = {"reason": "policy loaded"}
    return ledger.Draft(kind=kind, at=at, record_refs=refs or [], **{**base, **kw})  # type: ignore[arg-type]  # test overrides typed as Any


@pytest.fixture
def filled(state: sa.Engine) -> sa.Engine:
    ledger.append_now(state, [
        draft(AT[0], "policy", detail={"digest": "d" * 64}),
        draft(AT[1], refs=REFS[:2], detail={"count": 2}),
        draft(AT[2], refs=REFS[2:], detail={"count": 1, "beyond_use_until":
                                            "2026-03-22T12:00:00+00:00"}),
        draft(AT[3], "purge", refs=REFS, rule="quarantine", detail={"count": 3}),
    ])
    return state


def as_json(engine: sa.Engine, since: str | None = None, until: str | None = None
            ) -> list[dict[str, object]]:
    out = io.StringIO()
    n = export.write_json(engine, out, since, until)
    doc = json.loads(out.getvalue())
    assert n == len(doc)
    return doc  # type: ignore[no-any-return]  # json.loads


@pytest.mark.parametrize(("given", "expected"), [
    ("2026-01-31T00:00Z", "2026-01-31T00:00:00.000000+00:00"),
    ("2026-01-31T02:30:00+02:00", "2026-01-31T00:30:00.000000+00:00"),
    ("2026-01-31", "2026-01-31T00:00:00.000000+00:00"),
    ("2026-01-31T00:00:00.5+00:00", "2026-01-31T00:00:00.500000+00:00"),
    (None, None),
    ("", None),
])
def test_bound_is_the_ledger_time_format(given: str | None, expected: str | None) -> None:
    assert export.bound(given) == expected


def test_empty_ledger_exports_an_empty_array(state: sa.Engine) -> None:
    out = io.StringIO()
    assert export.write_json(state, out, None, None) == 0
    assert out.getvalue() == "[]\n"
    out = io.StringIO()
    assert export.write_csv(state, out, None, None) == 0
    assert out.getvalue() == ",".join(export.CSV_FIELDS) + "\n"


def test_json_entries_carry_exactly_the_public_fields(filled: sa.Engine) -> None:
    doc = as_json(filled)
    assert [e["seq"] for e in doc] == [1, 2, 3, 4]
    assert list(doc[1]) == [*export.FIELDS, "detail"]
    assert {k: doc[1][k] for k in ("at", "kind", "rule", "record_refs", "detail")} == {
        "at": AT[1], "kind": "dispose", "rule": "old-messages", "record_refs": REFS[:2],
        "detail": {"count": 2}}
    with filled.connect() as conn:
        hashes = list(conn.execute(sa.text("select hash from ledger order by seq")).scalars())
    assert [e["hash"] for e in doc] == hashes


def test_since_is_inclusive_and_until_exclusive(filled: sa.Engine) -> None:
    assert [e["seq"] for e in as_json(filled, since=AT[1])] == [2, 3, 4]
    assert [e["seq"] for e in as_json(filled, until=AT[1])] == [1]
    assert [e["seq"] for e in as_json(filled, since=AT[1], until=AT[3])] == [2, 3]
    # Same instants in another offset and without microseconds.
    assert [e["seq"] for e in as_json(filled, since="2026-02-01T01:00:00+01:00",
                                      until="2026-03-01T08:30Z")] == [2, 3]


def test_csv_has_one_row_per_record_reference_only(filled: sa.Engine) -> None:
    out = io.StringIO()
    assert export.write_csv(filled, out, None, None) == 6
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [(r["seq"], r["kind"], r["record_ref"]) for r in rows] == [
        ("2", "dispose", REFS[0]), ("2", "dispose", REFS[1]), ("3", "dispose", REFS[2]),
        ("4", "purge", REFS[0]), ("4", "purge", REFS[1]), ("4", "purge", REFS[2])]
    assert rows[0]["subject_ref"] == ""
    assert list(rows[0]) == list(export.CSV_FIELDS)


def test_export_stops_at_the_head_it_started_from(filled: sa.Engine) -> None:
    stream = export.entries(filled, None, None)
    assert next(stream)["seq"] == 1
    ledger.append_now(filled, [draft("2026-03-02T00:00:00.000000+00:00")])
    assert [e["seq"] for e in stream] == [2, 3, 4]


def test_tally_adds_disposals_per_rule_month_and_kind(filled: sa.Engine) -> None:
    tally = report.Tally.of(export.entries(filled, None, None))
    assert tally.entries == 4
    assert tally.months == {"2026-02": {"old-messages": 3}, "2026-03": {"quarantine": 3}}
    assert tally.kinds == {"old-messages": {"dispose": 3}, "quarantine": {"purge": 3}}
    assert tally.last_disposal == {"app": AT[3]}
    assert {k: v.isoformat() for k, v in tally.horizon.items()} == {
        "app": "2026-03-22T12:00:00+00:00"}


def test_tally_without_a_horizon_records_none(state: sa.Engine) -> None:
    ledger.append_now(state, [draft(AT[1], refs=REFS[:1], detail={"count": 1})])
    tally = report.Tally.of(export.entries(state, None, None))
    assert tally.horizon == {}
    assert tally.months == {"2026-02": {"old-messages": 1}}


@pytest.mark.parametrize(("n", "expected"), [
    (0, 1), (1, 1), (2, 2), (3, 5), (7, 10), (11, 20), (21, 25), (26, 50), (591, 1000),
    (1001, 2000), (2400, 2500)])
def test_nice_ceiling(n: int, expected: int) -> None:
    assert report.nice_ceiling(n) == expected


def test_chart_stacks_one_bar_per_month_with_a_legend() -> None:
    data = {"2026-01": {"a": 10, "b": 5}, "2026-02": {"b": 20}}
    svg = report.chart(["2026-01", "2026-02"], data, ["a", "b", "<c>"])
    assert svg.startswith("<svg ")
    assert svg.endswith("</svg>\n")
    assert svg.count("<rect ") == 3 + 3  # three segments, three legend swatches
    assert "<title>2026-01 a: 10 records</title>" in svg
    assert "<title>2026-02 b: 20 records</title>" in svg
    assert 'height="200.0"' in svg  # the tallest bar (20) reaches the top of the scale (20)
    assert "&lt;c&gt;" in svg
    assert "<c>" not in svg


def test_outcome_names_rules_counts_and_legal_basis() -> None:
    text = json.dumps({"invoices": {"disposed": 0, "kept": 2, "legal_basis": "Tax <law>"},
                       "accounts": {"disposed": 1, "kept": 0}})
    assert report.outcome(text) == (
        "<code>accounts</code>: 1 disposed<br>"
        "<code>invoices</code>: 0 disposed, 2 kept (legal basis: Tax &lt;law&gt;)")
    assert report.outcome("not json") == ""


def test_missing_requests_and_holds_tables_say_none_recorded(tmp_path: Path) -> None:
    bare = sa.create_engine(f"sqlite:///{tmp_path / 'bare.db'}")
    assert report.stored_rows(bare, "requests", "created_at") is None
    out = io.StringIO()
    report.write_requests(bare, out)
    report.write_holds(bare, out)
    assert out.getvalue() == ('<h2>Erasure requests</h2>\n<p class="none">none recorded</p>\n'
                              '<h2>Legal holds</h2>\n<p class="none">none recorded</p>\n')


def test_empty_requests_and_holds_tables_say_none_recorded(state: sa.Engine) -> None:
    out = io.StringIO()
    report.write_requests(state, out)
    report.write_holds(state, out)
    assert out.getvalue().count('<p class="none">none recorded</p>') == 2


def test_banner_on_failure_is_prominent_and_never_says_verified() -> None:
    bad = report.banner(False, "ledger entry 2 does not match its hash: <x>")
    assert 'class="banner bad" role="alert"' in bad
    assert "Audit trail verification FAILED" in bad
    assert "&lt;x&gt;" in bad
    assert "verified" not in bad
    assert report.banner(True, "3 entries").startswith(
        '<div class="banner ok">Audit trail verified: 3 entries.')
