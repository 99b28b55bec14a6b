"""``partitions: drop`` on PostgreSQL (issue 13): a partition whose whole range is due and
whose every row the rule selects is detached and dropped as a unit, ledgered per record
exactly as a row sweep would; everything else is swept row by row.

``events`` is partitioned by calendar month of ``created_at`` (naive, the policy's zone is
UTC), with a DEFAULT partition; its primary key is ``(id, created_at)`` as PostgreSQL
requires. The rule disposes after 90 days, so the month partitions ending at or before
``now - 90d`` are wholly due, the one holding the cutoff is partly due, the later ones are
not due. Rows are never within two hours of the cutoff, so the run's own cutoff (a few
seconds later) decides them the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import error_lines, ledger, record_ref

RULE = {"id": "old-events", "store": "app", "table": "events", "key": ["id", "created_at"],
        "subject": "customer_id", "clock": "created_at", "dispose_after": "90d",
        "partitions": "drop"}


def month(at: datetime, add: int = 0) -> datetime:
    n = at.year * 12 + at.month - 1 + add
    return datetime(n // 12, n % 12 + 1, 1)


@dataclass
class Events:
    engine: sa.Engine
    cutoff: datetime
    rows: dict[int, datetime]         # id -> created_at
    parts: dict[str, tuple[datetime, datetime]]  # month partitions: name -> [lo, hi)
    kind: str = "timestamp"                      # the clock's type

    @property
    def wholly_due(self) -> set[str]:
        return {n for n, (_, hi) in self.parts.items() if hi <= self.cutoff}

    @property
    def due(self) -> set[int]:
        return {i for i, at in self.rows.items() if at <= self.cutoff}

    def part_of(self, i: int) -> str | None:
        at = self.rows[i]
        return next((n for n, (lo, hi) in self.parts.items() if lo <= at < hi), None)


@pytest.fixture
def events(pg_schema: Any, request: pytest.FixtureRequest) -> Iterator[Events]:
    """``request.param`` (indirect): the clock's type, ``timestamp`` by default."""
    kind = getattr(request, "param", "timestamp")
    engine = pg_schema.engine()
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    cutoff = now - timedelta(days=90)
    first = month(now, -10)
    parts = {f"events_{month(first, k):%Y_%m}": (month(first, k), month(first, k + 1))
             for k in range(12)}
    rows: dict[int, datetime] = {}
    for lo, hi in parts.values():
        for at in (lo, lo + timedelta(days=9, hours=5), hi - timedelta(hours=3)):
            if abs((at - cutoff).total_seconds()) > (7200 if kind != "date" else 3 * 86400):
                rows[len(rows) + 1] = at.replace(hour=0) if kind == "date" else at
    rows[len(rows) + 1] = datetime(2001, 5, 5, 12)   # DEFAULT partition: due
    rows[len(rows) + 1] = month(now, 30)             # DEFAULT partition: not due
    with engine.begin() as conn:
        conn.execute(sa.text(f"""
            create table events (
                id integer not null, created_at {kind} not null,
                customer_id integer not null, email text not null,
                primary key (id, created_at)
            ) partition by range (created_at)"""))
        zone = "+00" if kind == "timestamptz" else ""  # whatever the server's TimeZone
        for name, (lo, hi) in parts.items():
            conn.execute(sa.text(f"create table {name} partition of events for values from "
                                 f"('{lo:%Y-%m-%d}{zone}') to ('{hi:%Y-%m-%d}{zone}')"))
        conn.execute(sa.text("create table events_rest partition of events default"))
        conn.execute(sa.text("insert into events values (:i, :at, :c, :e)"),
                     [{"i": i, "at": stored(kind, at), "c": 100 + i,
                       "e": f"person.{i}@mail.example.org"} for i, at in rows.items()])
    yield Events(engine, cutoff, rows, parts, kind)
    engine.dispose()


def stored(kind: str, at: datetime) -> Any:
    """A naive UTC time as the clock column holds it."""
    return {"date": at.date(), "timestamptz": at.replace(tzinfo=UTC)}.get(kind, at)


def ref(ws: Any, ev: Events, i: int) -> str:
    """The documented canonical text of a composite key: aware times in UTC."""
    text = json.dumps([str(i), stored(ev.kind, ev.rows[i]).isoformat()], separators=(",", ":"))
    return record_ref(ws.secret, "app", "events", text)


def attached(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(
            "select inhrelid::regclass::text from pg_inherits "
            "where inhparent = 'events'::regclass")).scalars())


def ids(engine: sa.Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("select id from events")).scalars())


def disposed_refs(ws: Any) -> list[str]:
    return [r for e in ledger(ws.root / "state.db", "dispose") for r in e["record_refs"]]


def setup(ws: Any, pg_schema: Any, adapter: str = "sql", **rule: Any) -> None:
    ws.policy({"app": {"adapter": adapter, "url": pg_schema.url}}, [{**RULE, **rule}])


def dropped(doc: dict[str, Any]) -> set[str]:
    [r] = doc["rules"]
    return {p["partition"] for p in r["partitions"] if p["drop"]}


@pytest.mark.parametrize("events", ["timestamp", "timestamptz", "date"], indirect=True)
def test_plan_lists_and_run_drops_exactly_the_wholly_due_partitions(
        events: Events, pg_schema: Any, ws: Any) -> None:
    ev = events
    assert len(ev.wholly_due) >= 6
    setup(ws, pg_schema)
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    [r] = plan.json()["rules"]
    assert dropped(plan.json()) == ev.wholly_due
    assert {p["partition"]: p["rows"] for p in r["partitions"] if p["drop"]} == {
        n: sum(1 for i in ev.rows if ev.part_of(i) == n) for n in ev.wholly_due}
    assert {p["partition"]: p["reason"] for p in r["partitions"] if not p["drop"]} == {
        "events_rest": "the DEFAULT partition"}
    assert r["due"] == len(ev.due)
    text = ws.invoke("plan")
    for name in ev.wholly_due:
        assert f"partition {name} would be dropped" in text.out
    assert "person." not in text.out + json.dumps(plan.json())
    assert attached(ev.engine) == {*ev.parts, "events_rest"}  # a plan changes nothing

    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    [r] = run.json()["rules"]
    assert (r["due"], r["done"], r["failed"]) == (len(ev.due), len(ev.due), 0)
    assert dropped(run.json()) == ev.wholly_due, run.err[-1500:]
    assert attached(ev.engine) == ({*ev.parts, "events_rest"} - ev.wholly_due)
    assert ids(ev.engine) == set(ev.rows) - ev.due
    refs = disposed_refs(ws)
    assert sorted(refs) == sorted(ref(ws, ev, i) for i in ev.due)  # each exactly once
    entries = ledger(ws.root / "state.db", "dispose")
    assert {(e["action"], e["reason"], e["target"]) for e in entries} == {
        ("delete", "schedule", "events")}
    assert all(json.loads(e["detail"])["count"] == len(e["record_refs"]) for e in entries)
    assert ws.invoke("audit", "verify").code == 0
    again = ws.invoke("run", "--json")
    assert again.json()["rules"][0]["done"] == 0
    assert dropped(again.json()) == set()


def test_ledger_refs_equal_a_row_sweeps(events: Events, pg_schema: Any, ws: Any,
                                        tmp_path: Any) -> None:
    """The same rule with ``partitions: rows`` on the same data writes the same refs."""
    ev = events
    with ev.engine.begin() as conn:
        conn.execute(sa.text("create table events_copy as select * from events"))
    setup(ws, pg_schema, partitions="rows")
    assert ws.invoke("run").code == 0
    rows_refs = sorted(disposed_refs(ws))
    assert attached(ev.engine) == {*ev.parts, "events_rest"}
    with ev.engine.begin() as conn:  # put every row back, then drop partitions
        conn.execute(sa.text("insert into events select * from events_copy "
                             "on conflict do nothing"))
    (ws.root / "state.db").unlink()
    setup(ws, pg_schema)
    assert ws.invoke("run").code == 0
    assert sorted(disposed_refs(ws)) == rows_refs == sorted(ref(ws, ev, i) for i in ev.due)


def test_a_held_subject_keeps_its_partition_and_its_row(events: Events, pg_schema: Any,
                                                        ws: Any) -> None:
    ev = events
    name = sorted(ev.wholly_due)[1]
    held = min(i for i in ev.rows if ev.part_of(i) == name)
    setup(ws, pg_schema)
    assert ws.invoke("hold", "add", "--subject", str(100 + held), "--reason", "lawsuit").code == 0
    plan = ws.invoke("plan", "--json")
    [r] = plan.json()["rules"]
    assert {p["partition"] for p in r["partitions"] if p["drop"]} == ev.wholly_due - {name}
    [why] = [p["reason"] for p in r["partitions"] if p["partition"] == name]
    assert why.startswith("1 of its 3 rows are not selected")
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    [r] = run.json()["rules"]
    assert dropped(run.json()) == ev.wholly_due - {name}
    assert (r["done"], r["held"]) == (len(ev.due) - 1, 1)
    assert name in attached(ev.engine)
    assert ids(ev.engine) == set(ev.rows) - ev.due | {held}
    assert sorted(disposed_refs(ws)) == sorted(ref(ws, ev, i) for i in ev.due - {held})
    assert ws.invoke("audit", "verify").code == 0


def test_a_hold_placed_after_the_plan_is_honoured_under_the_lock(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """The adapter re-reads the holds once the partition is locked: a hold placed after the
    executor's last refresh, just before the lock, still keeps the partition and the row."""
    from retentiond.adapters.registry import register, unregister
    from retentiond.adapters.sql import SqlAdapter
    from retentiond.audit.ledger import Refs
    from retentiond.state.cases import add_hold

    ev = events
    name = sorted(ev.wholly_due)[0]
    held = min(i for i in ev.rows if ev.part_of(i) == name)

    class Late(SqlAdapter):
        def drop_partition(self, selection: Any, partition: str, limit: int, refresh: Any,
                           intent: Any, **kw: Any) -> int:
            if partition == name:
                state = sa.create_engine(ws.state_url)
                add_hold(state, Refs(self.policy.secret_bytes), scope="subject",
                         reason="late", ref=None, subject=str(100 + held), kind="user")
                state.dispose()
            return super().drop_partition(selection, partition, limit, refresh, intent, **kw)

    register("sqllate", Late)
    try:
        setup(ws, pg_schema, adapter="sqllate")
        run = ws.invoke("run", "--json")
    finally:
        unregister("sqllate")
    assert run.code == 0, run.err
    [r] = run.json()["rules"]
    [why] = [p["reason"] for p in r["partitions"] if p["partition"] == name]
    assert why.startswith("1 of its 3 rows are not selected")
    assert dropped(run.json()) == ev.wholly_due - {name}
    assert name in attached(ev.engine)
    assert ids(ev.engine) == set(ev.rows) - ev.due | {held}
    assert sorted(disposed_refs(ws)) == sorted(ref(ws, ev, i) for i in ev.due - {held})


CRASH = """
import os, sys
from retentiond.adapters.registry import register
from retentiond.adapters.sql import SqlAdapter
from retentiond.cli import main
POINT = os.environ["CRASH_POINT"]
class Crash(SqlAdapter):
    def drop_partition(self, *args, **kwargs):
        n = super().drop_partition(*args, **kwargs)
        if POINT == "after-commit":
            os._exit(9)
        return n
    def _drop(self, conn, part):
        super()._drop(conn, part)
        if POINT == "before-commit":
            os._exit(9)
register("sqlcrash", Crash)
main(sys.argv[1:])
"""


def crash(ws: Any, pg_schema: Any, point: str) -> None:
    setup(ws, pg_schema, adapter="sqlcrash")
    env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
    done = subprocess.run([sys.executable, "-c", CRASH, "--config", str(ws.config), "run"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**env, "CRASH_POINT": point})
    assert done.returncode == 9, done.stderr
    setup(ws, pg_schema)


def pending(ws: Any) -> int:
    from helpers import state_rows

    return int(state_rows(ws.root / "state.db", "select count(*) n from pending")[0]["n"])


def test_a_crash_between_drop_and_ledger_is_ledgered_exactly_once(
        events: Events, pg_schema: Any, ws: Any) -> None:
    ev = events
    first = sorted(ev.wholly_due)[0]
    crash(ws, pg_schema, "after-commit")
    assert first not in attached(ev.engine)  # dropped and committed, not ledgered
    assert disposed_refs(ws) == []
    assert pending(ws) >= 1
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert pending(ws) == 0
    assert attached(ev.engine) == ({*ev.parts, "events_rest"} - ev.wholly_due)
    assert sorted(disposed_refs(ws)) == sorted(ref(ws, ev, i) for i in ev.due)
    reconciled = [e for e in ledger(ws.root / "state.db", "dispose")
                  if json.loads(e["detail"]).get("reconciled")]
    assert sorted(r for e in reconciled for r in e["record_refs"]) == sorted(
        ref(ws, ev, i) for i in ev.rows if ev.part_of(i) == first)
    assert ws.invoke("audit", "verify").code == 0


def test_a_crash_before_the_store_commits_leaves_the_partition_whole(
        events: Events, pg_schema: Any, ws: Any) -> None:
    ev = events
    first = sorted(ev.wholly_due)[0]
    crash(ws, pg_schema, "before-commit")
    assert attached(ev.engine) == {*ev.parts, "events_rest"}
    assert ids(ev.engine) == set(ev.rows)
    assert disposed_refs(ws) == []
    assert pending(ws) >= 1
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert pending(ws) == 0
    assert first not in attached(ev.engine)
    assert ids(ev.engine) == set(ev.rows) - ev.due
    assert sorted(disposed_refs(ws)) == sorted(ref(ws, ev, i) for i in ev.due)
    assert ws.invoke("audit", "verify").code == 0


@pytest.mark.parametrize("on", ["parent", "partition"])
def test_a_delete_trigger_keeps_its_partitions(events: Events, pg_schema: Any, ws: Any,
                                               on: str) -> None:
    """A trigger on the parent keeps every partition (it is cloned onto each); one on a
    partition keeps that one. Their rows are deleted row by row, firing it."""
    ev = events
    name = sorted(ev.wholly_due)[2]
    table = "events" if on == "parent" else name
    with ev.engine.begin() as conn:
        conn.execute(sa.text("create table gone (id integer)"))
        conn.execute(sa.text("""create function note_gone() returns trigger language plpgsql
            as $$ begin insert into gone values (old.id); return old; end $$"""))
        conn.execute(sa.text(f"create trigger events_gone before delete on {table} "
                             "for each row execute function note_gone()"))
    setup(ws, pg_schema)
    plan = ws.invoke("plan", "--json")
    [r] = plan.json()["rules"]
    why = f"trigger events_gone on {table} fires on DELETE or TRUNCATE"
    kept = ev.wholly_due if on == "parent" else {name}
    if on == "parent":
        assert r["partitions"] == [{"partition": None, "rows": 0, "drop": False,
                                    "reason": why}]
    else:
        assert {p["partition"]: p["reason"] for p in r["partitions"]} == {
            **dict.fromkeys(ev.wholly_due - kept), name: why,
            "events_rest": "the DEFAULT partition"}
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert dropped(run.json()) == ev.wholly_due - kept
    assert attached(ev.engine) == {*ev.parts, "events_rest"} - (ev.wholly_due - kept)
    assert ids(ev.engine) == set(ev.rows) - ev.due
    fired = ev.due if on == "parent" else {i for i in ev.rows if ev.part_of(i) == name}
    with ev.engine.connect() as conn:
        assert set(conn.execute(sa.text("select id from gone")).scalars()) == fired
    assert sorted(disposed_refs(ws)) == sorted(ref(ws, ev, i) for i in ev.due)
    if on == "parent":
        validate = ws.invoke("config", "validate")
        assert f"rules[0] (old-events).partitions: no partition will be dropped: {why}" in (
            validate.out + validate.err)


def test_a_referencing_foreign_key_keeps_every_partition(events: Events, pg_schema: Any,
                                                         ws: Any) -> None:
    ev = events
    kept = min(ev.due)
    with ev.engine.begin() as conn:
        conn.execute(sa.text("""create table refunds (id integer primary key,
            event_id integer, event_at timestamp,
            constraint refunds_event_fk foreign key (event_id, event_at)
                references events (id, created_at) on delete cascade)"""))
        conn.execute(sa.text("insert into refunds values (1, :i, :at)"),
                     {"i": kept, "at": ev.rows[kept]})
    setup(ws, pg_schema)
    plan = ws.invoke("plan", "--json")
    [r] = plan.json()["rules"]
    assert r["partitions"] == [{"partition": None, "rows": 0, "drop": False,
                                "reason": "foreign key refunds_event_fk on refunds refers "
                                          "to events"}]
    assert "no partition dropped: foreign key refunds_event_fk" in ws.invoke("plan").out
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    [r] = run.json()["rules"]
    assert attached(ev.engine) == {*ev.parts, "events_rest"}
    assert ids(ev.engine) == set(ev.rows) - ev.due
    assert r["cascaded"] == [{"constraint": "refunds_event_fk", "table": "refunds",
                              "action": "delete", "count": 1}]
    validate = ws.invoke("config", "validate")
    assert "rules[0] (old-events).partitions: no partition will be dropped: foreign key " \
           "refunds_event_fk on refunds refers to events" in validate.out + validate.err


@pytest.mark.parametrize(("store", "rule", "message"), [
    ("pg", {"action": "anonymize", "anonymize": {"marker": "seen_at", "columns": {
        "email": {"strategy": "null"}}}},
     "drop needs action delete (the rule's action is anonymize); remove partitions: drop"),
    ("files", {}, "drop is only for sql stores on PostgreSQL; adapter 'files' cannot drop "
                  "partitions"),
    ("sqlite", {}, "drop works only on PostgreSQL; store 'app' is sqlite"),
])
def test_validate_refuses(ws: Any, tmp_path: Any, store: str, rule: dict[str, Any],
                          message: str) -> None:
    stores = {"pg": {"adapter": "sql", "url": "postgresql+psycopg://u@127.0.0.1:1/x"},
              "files": {"adapter": "files", "root": str(tmp_path)},
              "sqlite": {"adapter": "sql", "url": f"sqlite:///{tmp_path / 'a.db'}"}}
    base = ({**RULE, "table": None, "key": None, "subject": None, "clock": None,
             "path": "{subject}/*.pdf"} if store == "files" else RULE)
    doc = {k: v for k, v in {**base, **rule}.items() if v is not None}
    ws.policy({"app": stores[store]}, [doc])
    result = ws.invoke("config", "validate")
    assert result.code == 2, (result.out, result.err)
    assert error_lines(result.err) == [f"error: rules[0] (old-events).partitions: {message}"]


def test_validate_refuses_a_table_not_partitioned_on_the_clock(pg_schema: Any,
                                                               ws: Any) -> None:
    engine = pg_schema.engine()
    with engine.begin() as conn:
        conn.execute(sa.text("create table events (id integer, created_at timestamp not null, "
                             "customer_id integer, primary key (id, created_at))"))
    setup(ws, pg_schema)
    result = ws.invoke("config", "validate")
    assert result.code == 2, (result.out, result.err)
    assert error_lines(result.err) == [
        "error: rules[0] (old-events).partitions: events is not a partitioned table; "
        "remove partitions: drop"]
    engine.dispose()


def test_a_kept_request_and_a_floor_keep_their_partitions(events: Events, pg_schema: Any,
                                                          ws: Any) -> None:
    """A subject with an open erasure request under ``on_erasure: keep``, and a row another
    rule's ``keep_for`` still protects, each keep their partition out of the drop."""
    ev = events
    one, two = sorted(ev.wholly_due)[:2]
    asked = min(i for i in ev.rows if ev.part_of(i) == one)
    floored = min(i for i in ev.rows if ev.part_of(i) == two)
    floor = {"id": "vip", "store": "app", "table": "events", "key": ["id", "created_at"],
             "clock": "created_at", "keep_for": "10y", "dispose_after": "10y",
             "match": {"customer_id": 100 + floored}}
    ws.policy({"app": {"adapter": "sql", "url": pg_schema.url}},
              [{**RULE, "on_erasure": "keep", "legal_basis": "tax law"}, floor])
    assert ws.invoke("request", "erase", str(100 + asked)).code == 0
    run = ws.invoke("run", "--json", "--rule", "old-events")
    assert run.code == 0, run.err
    [r] = run.json()["rules"]
    assert dropped(run.json()) == ev.wholly_due - {one, two}
    reasons = {p["partition"]: p["reason"] for p in r["partitions"]}
    assert reasons[one].startswith("1 of its 3 rows are not selected")
    assert reasons[two].startswith("1 of its 3 rows are not selected")
    assert {one, two} <= attached(ev.engine)
    assert ids(ev.engine) == set(ev.rows) - ev.due | {asked, floored}
    assert sorted(disposed_refs(ws)) == sorted(ref(ws, ev, i)
                                               for i in ev.due - {asked, floored})


def test_an_overlapping_anonymise_rule_keeps_every_partition(events: Events, pg_schema: Any,
                                                             ws: Any) -> None:
    ev = events
    with ev.engine.begin() as conn:
        conn.execute(sa.text("alter table events add column anonymized_at timestamp"))
    anon = {"id": "scrub", "store": "app", "table": "events", "key": ["id", "created_at"],
            "clock": "created_at", "dispose_after": "10y", "action": "anonymize",
            "anonymize": {"marker": "anonymized_at", "columns": {"email": {"strategy": "null"}}}}
    ws.policy({"app": {"adapter": "sql", "url": pg_schema.url}}, [RULE, anon])
    plan = ws.invoke("plan", "--json", "--rule", "old-events")
    [r] = plan.json()["rules"]
    assert r["partitions"] == [{"partition": None, "rows": 0, "drop": False, "reason":
                                "rule scrub anonymises or isolates rows of the same table"}]
    assert ws.invoke("run", "--rule", "old-events").code == 0
    assert attached(ev.engine) == {*ev.parts, "events_rest"}
    assert ids(ev.engine) == set(ev.rows) - ev.due


def test_a_writer_into_the_partition_waits_for_the_drop_then_fails(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """As PostgreSQL's isolation tests do it: the drop holds the partition locked; a writer's
    INSERT into it waits (seen in pg_locks) until the drop commits, then fails, the partition
    being gone; nothing it wrote is dropped unledgered."""
    import threading

    from retentiond.adapters.registry import register, unregister
    from retentiond.adapters.sql import SqlAdapter

    ev = events
    name = sorted(ev.wholly_due)[0]
    lo, _ = ev.parts[name]
    outcome: dict[str, Any] = {}
    writer = sa.create_engine(pg_schema.url)

    def insert() -> None:
        try:
            with writer.begin() as conn:
                outcome["pid"] = conn.execute(sa.text("select pg_backend_pid()")).scalar()
                conn.execute(sa.text(f"insert into {name} values (9999, :at, 1, 'x@y.z')"),
                             {"at": lo + timedelta(hours=1)})
            outcome["error"] = None
        except sa.exc.DBAPIError as exc:
            outcome["error"] = type(exc.orig).__name__

    class Racing(SqlAdapter):
        def _detach(self, conn: Any, table: Any, part: Any) -> None:
            if part.name == name:
                thread = threading.Thread(target=insert)
                thread.start()
                outcome["thread"] = thread
                watch = sa.create_engine(pg_schema.url)
                with watch.connect() as w:
                    for _ in range(3000):  # until the writer waits on the partition's lock
                        waiting = w.execute(sa.text(
                            "select count(*) from pg_locks where not granted and pid = :p"),
                            {"p": outcome.get("pid", -1)}).scalar()
                        if waiting:
                            break
                        w.execute(sa.text("select pg_sleep(0.01)"))
                    else:
                        raise AssertionError("the writer never waited")
                watch.dispose()
            super()._detach(conn, table, part)

    register("sqlracing", Racing)
    try:
        setup(ws, pg_schema, adapter="sqlracing")
        run = ws.invoke("run", "--json")
    finally:
        unregister("sqlracing")
    outcome["thread"].join(60)
    writer.dispose()
    assert run.code == 0, run.err
    assert name in dropped(run.json())
    assert outcome["error"] == "UndefinedTable"
    assert 9999 not in ids(ev.engine)
    assert sorted(disposed_refs(ws)) == sorted(ref(ws, ev, i) for i in ev.due)


@pytest.mark.parametrize("what", ["publication", "row-level security"])
def test_a_published_or_row_secured_table_keeps_every_partition(
        events: Events, pg_schema: Any, ws: Any, what: str) -> None:
    """A DROP is not replicated to logical subscribers, and a count under row-level security
    may not see every row: both leave the whole table to the row sweep."""
    import uuid

    ev = events
    pub = f"pub_{uuid.uuid4().hex[:10]}"
    ddl = {"publication": f"create publication {pub} for table events",
           "row-level security": "alter table events enable row level security"}[what]
    with ev.engine.begin() as conn:
        conn.execute(sa.text(ddl))
    try:
        setup(ws, pg_schema)
        plan = ws.invoke("plan", "--json")
        [r] = plan.json()["rules"]
        why = {"publication": f"publication {pub} replicates events; a dropped partition's "
                              "rows would stay on its subscribers",
               "row-level security": "row-level security is enabled on events (a count may "
                                     "not see every row)"}[what]
        assert r["partitions"] == [{"partition": None, "rows": 0, "drop": False,
                                    "reason": why}]
        run = ws.invoke("run", "--json")
        assert run.code == 0, run.err
        assert attached(ev.engine) == {*ev.parts, "events_rest"}
        assert ids(ev.engine) == set(ev.rows) - ev.due
        assert sorted(disposed_refs(ws)) == sorted(ref(ws, ev, i) for i in ev.due)
    finally:
        if what == "publication":
            with ev.engine.begin() as conn:
                conn.execute(sa.text(f"drop publication {pub}"))


def test_a_sub_partitioned_partition_is_swept_row_by_row(events: Events, pg_schema: Any,
                                                         ws: Any) -> None:
    ev = events
    name = sorted(ev.wholly_due)[0]
    lo, hi = ev.parts[name]
    mid = lo + timedelta(days=15)
    with ev.engine.begin() as conn:
        conn.execute(sa.text(f"alter table events detach partition {name}"))
        conn.execute(sa.text(f"alter table {name} rename to {name}_old"))
        conn.execute(sa.text(f"create table {name} partition of events for values from "
                             f"('{lo:%Y-%m-%d}') to ('{hi:%Y-%m-%d}') "
                             "partition by range (created_at)"))
        for half, (a, b) in (("a", (lo, mid)), ("b", (mid, hi))):
            conn.execute(sa.text(f"create table {name}_{half} partition of {name} for values "
                                 f"from ('{a:%Y-%m-%d}') to ('{b:%Y-%m-%d}')"))
        conn.execute(sa.text(f"insert into events select * from {name}_old"))
        conn.execute(sa.text(f"drop table {name}_old"))
    setup(ws, pg_schema)
    plan = ws.invoke("plan", "--json")
    [r] = plan.json()["rules"]
    assert {p["partition"]: p["reason"] for p in r["partitions"]}[name] == (
        "it is partitioned itself")
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert dropped(run.json()) == ev.wholly_due - {name}
    assert name in attached(ev.engine)
    assert ids(ev.engine) == set(ev.rows) - ev.due
    assert sorted(disposed_refs(ws)) == sorted(ref(ws, ev, i) for i in ev.due)


def test_validate_refuses_a_role_that_does_not_own_the_table(events: Events, pg_schema: Any,
                                                             ws: Any) -> None:
    import uuid

    ev = events
    role = f"rtd_{uuid.uuid4().hex[:10]}"
    schema = pg_schema.url.rsplit("%3D", 1)[1]
    with ev.engine.begin() as conn:
        conn.execute(sa.text(f"create role {role} login"))
        conn.execute(sa.text(f"grant usage on schema {schema} to {role}"))
        conn.execute(sa.text(f"grant select, delete on all tables in schema {schema} "
                             f"to {role}"))
    try:
        url = pg_schema.url.replace("//postgres@", f"//{role}@", 1)
        ws.policy({"app": {"adapter": "sql", "url": url}}, [RULE])
        result = ws.invoke("config", "validate")
        assert result.code == 2, (result.out, result.err)
        assert error_lines(result.err) == [
            "error: rules[0] (old-events).partitions: the role connecting to store app does "
            "not own events (nor is a member of its owner role); DETACH and DROP need it: "
            "grant the owner role or remove partitions: drop"]
        run = ws.invoke("run", "--json")  # the row sweep needs only DELETE
        assert run.code == 0, run.err
        [r] = run.json()["rules"]
        assert [p["reason"] for p in r["partitions"]] == [
            "the role connecting to store app does not own events (nor is a member of its "
            "owner role); DETACH and DROP need it: grant the owner role or remove partitions: "
            "drop"]
        assert attached(ev.engine) == {*ev.parts, "events_rest"}
        assert ids(ev.engine) == set(ev.rows) - ev.due
    finally:
        with ev.engine.begin() as conn:
            conn.execute(sa.text(f"drop owned by {role}"))
            conn.execute(sa.text(f"drop role {role}"))


def test_a_lock_it_cannot_get_leaves_the_partition_to_the_row_sweep(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """A reader holding the partition (an open transaction that read it) keeps DETACH from
    its ACCESS EXCLUSIVE lock: after the lock timeout the drop rolls back, the intents it had
    written are settled as nothing gone, and the row sweep disposes the rows (its DELETE does
    not conflict with readers); every record is ledgered once."""
    ev = events
    name = sorted(ev.wholly_due)[0]
    reader = sa.create_engine(pg_schema.url)
    with reader.connect() as conn:
        conn.execute(sa.text(f"select count(*) from {name}"))  # holds ACCESS SHARE until rollback
        setup(ws, pg_schema)
        run = ws.invoke("run", "--json")
        conn.rollback()
    reader.dispose()
    assert run.code == 0, run.err
    [r] = run.json()["rules"]
    [why] = [p["reason"] for p in r["partitions"] if p["partition"] == name]
    assert why == "the drop failed (LockNotAvailable) and was rolled back"
    assert dropped(run.json()) == ev.wholly_due - {name}
    assert name in attached(ev.engine)
    assert ids(ev.engine) == set(ev.rows) - ev.due
    assert pending(ws) == 0
    assert sorted(disposed_refs(ws)) == sorted(ref(ws, ev, i) for i in ev.due)
    assert (r["due"], r["done"], r["failed"]) == (len(ev.due), len(ev.due), 0)
