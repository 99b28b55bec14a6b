"""``match`` with ``older_than``/``newer_than`` follows the clock rules (SPEC 3.3).

A text value that does not parse (``unknown``, ``01/02/2020``, ``''``, a ``T`` separator)
compares as text and lands on either side of the bound by accident: ``'unknown' > '2007-…'``
made every unknown birth date a minor, and the record was deleted. Such a value never makes a
rule apply (it is never disposed by it), while a rule whose floor might cover it still
protects it. An integer column is refused: ``clock_format`` does not apply to ``match``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from helpers import error_lines, ids

from retentiond.timeutil import parse_duration, subtract

NOW = datetime.now(UTC).replace(microsecond=0)
CREATED = (NOW - timedelta(days=1)).replace(tzinfo=None)
# The newer_than: 18y bound, as the planner computes it (the policy runs in UTC).
BOUND = subtract(NOW, parse_duration("18y"))


def _people(engine: sa.Engine, rows: dict[int, tuple[str | None, str | None]]) -> None:
    md = sa.MetaData()
    t = sa.Table("people", md,
                 sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("birth_date", sa.String(40), nullable=True),
                 sa.Column("verified", sa.String(40), nullable=True),
                 sa.Column("created", sa.DateTime, nullable=False))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": k, "birth_date": b, "verified": v, "created": CREATED}
                                  for k, (b, v) in rows.items()])


def _rule(rule_id: str, match: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "store": "app", "table": "people", "key": "id", "clock": "created",
            "dispose_after": "0d", "action": "delete", "match": match, **extra}


MINORS = _rule("minors", {"birth_date": {"newer_than": "18y"}})


def _counts(doc: dict[str, Any], rule_id: str) -> dict[str, Any]:
    [rule] = [r for r in doc["rules"] if r["rule"] == rule_id]
    return {k: rule.get(k) for k in ("due", "done", "failed", "error")}


def _plan_and_run(ws: Any, rule_id: str, due: int) -> None:
    planned = ws.invoke("plan", "--json")
    assert planned.code == 0, (planned.out, planned.err)
    assert _counts(planned.json(), rule_id) == {"due": due, "done": 0, "failed": 0,
                                                "error": None}
    ran = ws.invoke("run", "--json")
    assert ran.code == 0, (ran.out, ran.err)
    assert _counts(ran.json(), rule_id) == {"due": due, "done": due, "failed": 0,
                                            "error": None}


def test_an_unknown_birth_date_is_not_a_minor(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    _people(engine, {1: ("unknown", None), 2: ("1980-01-01", None), 3: ("2015-01-01", None),
                     4: (None, None), 5: ("n/a", None), 6: ("2015-01-01 10:00:00", None)})
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [MINORS])
    # Only the two readable birth dates after the bound (3 and 6) are minors.
    _plan_and_run(ws, "minors", 2)
    assert ids(engine, "people") == {1, 2, 4, 5}
    explained = ws.invoke("explain", "--rule", "minors", "--key", "1", "--json")
    assert explained.code == 0, explained.err
    [verdict] = explained.json()["rules"]
    assert (verdict["outcome"], verdict["why"]) == (
        "not-matched", "a match value (older_than/newer_than) does not parse: this rule does "
        "not apply")
    engine.dispose()


def test_older_than_ignores_values_that_sort_low_as_text(store_db: Any, ws: Any) -> None:
    # '' and '01/02/2020' sort before '2007-…' as text: older_than selected them as adults.
    engine = store_db.engine()
    _people(engine, {1: ("", None), 2: ("01/02/2020", None), 3: ("1990-01-01", None),
                     4: ("2015-01-01", None), 5: (None, None), 6: (" 1990-01-01", None)})
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}},
              [_rule("adults", {"birth_date": {"older_than": "18y"}})])
    _plan_and_run(ws, "adults", 1)
    assert ids(engine, "people") == {1, 2, 4, 5, 6}
    engine.dispose()


def test_a_t_separator_is_not_read_as_text(store_db: Any, ws: Any) -> None:
    # Born at midnight of the bound's day: not a minor, but 'YYYY-MM-DDT00:00:00' sorts after
    # the bound 'YYYY-MM-DD HH:MM:SS' as text ('T' > ' ').
    day = BOUND.date()
    engine = store_db.engine()
    _people(engine, {1: (f"{day}T00:00:00", None), 2: (f"{day - timedelta(days=1)} 12:00:00",
                                                       None),
                     3: (f"{day + timedelta(days=1)} 00:00:00", None)})
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [MINORS])
    _plan_and_run(ws, "minors", 1)
    assert ids(engine, "people") == {1, 2}
    engine.dispose()


def test_integer_match_column_is_refused(store_db: Any, ws: Any) -> None:
    engine = store_db.engine()
    md = sa.MetaData()
    t = sa.Table("people", md,
                 sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("birth_year", sa.Integer, nullable=True),
                 sa.Column("created", sa.DateTime, nullable=False))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": 1, "birth_year": 1980, "created": CREATED},
                                  {"id": 2, "birth_year": 2015, "created": CREATED}])
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}},
              [_rule("adults", {"birth_year": {"older_than": "18y"}})])
    message = ("rules[0] (adults).match.birth_year: older_than needs a timestamp, date or "
               "ISO 8601 text column; birth_year is INTEGER")
    result = ws.invoke("config", "validate")
    assert result.code == 2, (result.out, result.err)
    assert error_lines(result.err) == [f"error: {message}"]
    for command in (("plan", "--json"), ("run", "--json")):
        ran = ws.invoke(*command)
        assert ran.code == 1, (command, ran.out, ran.err)
        counts = _counts(ran.json(), "adults")
        assert counts["due"] == counts["done"] == 0
        assert counts["error"] == message
    assert ids(engine, "people") == {1, 2}
    engine.dispose()


def test_an_unreadable_match_value_still_protects(store_db: Any, ws: Any) -> None:
    # kyc keeps verified accounts for 10 years; a verified date that does not parse may be a
    # verified account: its floor protects the record from minors.
    engine = store_db.engine()
    _people(engine, {1: ("2015-01-01", "2020-01-01 00:00:00"), 2: ("2015-01-01", "pending"),
                     3: ("2015-01-01", None), 4: ("2015-01-01", "2099-01-01"),
                     5: ("1980-01-01", "2020-01-01"), 6: ("2015-01-01", "2020-01-01T00:00")})
    kyc = _rule("kyc", {"verified": {"older_than": "1d"}}, dispose_after="10y",
                keep_for="10y")
    ws.policy({"app": {"adapter": "sql", "url": store_db.url}}, [MINORS, kyc])
    # minors: 1, 2, 3, 4 and 6 are minors; kyc's floor protects 1 (verified) and 2 and 6
    # (unreadable); 3 (never verified) and 4 (verified in the future) go.
    _plan_and_run(ws, "minors", 2)
    assert ids(engine, "people") == {1, 2, 5, 6}
    explained = ws.invoke("explain", "--rule", "minors", "--key", "2", "--json")
    assert explained.code == 0, explained.err
    verdicts = {v["rule"]: (v["outcome"], v["by"]) for v in explained.json()["rules"]}
    assert verdicts == {"minors": ("protected", "kyc"), "kyc": ("not-matched", None)}
    engine.dispose()
