# ruff: noqa: F811  (the events fixture is imported and named as a parameter)
"""Review of ``partitions: drop`` (branch i13-part): failing tests for what the review found.

Reuses the ``events`` fixture of ``test_partition_drop.py`` (a table partitioned by month of
``created_at``, three rows per month, a DEFAULT partition).
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from test_partition_drop import (  # noqa: F401  (events is a fixture)
    RULE,
    Events,
    attached,
    disposed_refs,
    dropped,
    events,
    ids,
    ref,
    setup,
)


def test_a_drop_whose_intents_another_sweep_settled_meanwhile_is_still_ledgered(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """A run that is cut off (lease lost, its run marked ``crashed``) while a partition's drop
    is in flight: another sweep reconciles its intents before the drop commits, finds every
    row still there (the drop is not committed), ledgers nothing and removes the intents.
    The drop then commits. A row batch in the same position ledgers its records anyway
    (``Executor._record``: "this sweep ledgers the rest of what it disposed"); the drop's
    ``_record_pending`` finds no intent and ledgers nothing: the partition's rows are gone
    and no ledger entry names them."""
    from retentiond.adapters.registry import register, unregister
    from retentiond.adapters.sql import SqlAdapter
    from retentiond.executor import Executor

    ev = events
    name = sorted(ev.wholly_due)[0]

    class CutOff(SqlAdapter):
        def _detach(self, conn: Any, table: Any, part: Any) -> None:
            if part.name == name:  # the intents are written; the store has not committed
                state = sa.create_engine(ws.state_url)
                with state.begin() as s:  # another replica judged this run dead
                    s.execute(sa.text("update runs set status = 'crashed' "
                                      "where status = 'running'"))
                other = SqlAdapter(self.store_name, self.store, self.policy)
                try:
                    Executor(self.policy, state, {self.store_name: other},
                             "another-sweep").reconcile([self.store_name])
                finally:
                    other.close()
                    state.dispose()
            super()._detach(conn, table, part)

    register("sqlcutoff", CutOff)
    try:
        setup(ws, pg_schema, adapter="sqlcutoff")
        run = ws.invoke("run", "--json")
    finally:
        unregister("sqlcutoff")
    assert run.code == 0, run.err
    # The drop sees that its intents are no longer its own and rolls back; the row sweep
    # then deletes the partition's rows batch by batch, each ledgered once.
    [rule] = run.json()["rules"]
    [entry] = [p for p in rule["partitions"] if p["partition"].endswith(name)]
    assert (entry["drop"], entry["reason"]) == (False, "another sweep settled its intents "
                                                       "meanwhile")
    assert ids(ev.engine) == set(ev.rows) - ev.due
    gone = {i for i in ev.rows if ev.part_of(i) == name}
    refs = disposed_refs(ws)
    missing = [i for i in sorted(gone) if ref(ws, ev, i) not in refs]
    assert missing == [], f"dropped but never ledgered: ids {missing}"
    assert sorted(refs) == sorted(ref(ws, ev, i) for i in ev.due)


def _hold_during_first_batch(ws: Any, pg_schema: Any, ev: Events, partitions: str,
                             act: Any = None, **extra: Any) -> tuple[Any, int, str]:
    """Run the rule with ``batch_size: 1``; right after the first intent of the first wholly
    due partition's records is written, a hold is placed on the subject of a row of that
    partition whose record is not in that intent (not yet disposed), or ``act(row)`` is
    called. Returns the run, the held row and the partition."""
    from retentiond.adapters.registry import register, unregister
    from retentiond.adapters.sql import SqlAdapter
    from retentiond.audit.ledger import Refs
    from retentiond.state.cases import add_hold

    name = sorted(ev.wholly_due)[0]
    rows = {i for i in ev.rows if ev.part_of(i) == name}
    held: list[int] = []

    def hold_after(keys: list[Any], policy: Any) -> None:
        if held or not ({k[0] for k in keys} & rows):
            return
        later = min(rows - {k[0] for k in keys})
        held.append(later)
        if act is not None:
            act(later)
            return
        state = sa.create_engine(ws.state_url)
        add_hold(state, Refs(policy.secret_bytes), scope="subject", reason="lawsuit",
                 ref=None, subject=str(100 + later), kind="user")
        state.dispose()

    class Hold(SqlAdapter):
        def drop_partition(self, selection: Any, partition: str, limit: int, refresh: Any,
                           intent: Any, **kw: Any) -> int:
            def spy(keys: list[Any]) -> None:
                intent(keys)
                if partition == name:
                    hold_after(keys, self.policy)
            return super().drop_partition(selection, partition, limit, refresh, spy, **kw)

        def delete_next(self, selection: Any, after: Any, limit: int, intent: Any) -> Any:
            def spy(keys: list[Any]) -> None:
                intent(keys)
                hold_after(keys, self.policy)
            return super().delete_next(selection, after, limit, spy)

    register("sqlhold", Hold)
    try:
        rule = {"id": "old-events", "store": "app", "table": "events",
                "key": ["id", "created_at"], "subject": "customer_id", "clock": "created_at",
                "dispose_after": "90d", "partitions": partitions, **extra}
        ws.policy({"app": {"adapter": "sqlhold", "url": pg_schema.url}}, [rule], batch_size=1)
        run = ws.invoke("run", "--json")
    finally:
        unregister("sqlhold")
    assert run.code == 0, run.err
    assert held, "no hold was placed"
    return run, held[0], name


def test_row_sweep_control_a_hold_placed_mid_sweep_keeps_the_records_not_yet_disposed(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """Control (passes): the row sweep re-reads the holds before every batch, so a hold placed
    after the first batch keeps the held subject's row of the same month."""
    ev = events
    _, held, _ = _hold_during_first_batch(ws, pg_schema, ev, "rows")
    assert held in ids(ev.engine)
    assert ref(ws, ev, held) not in disposed_refs(ws)


def test_a_hold_placed_while_a_partitions_keys_stream_keeps_its_row(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """The drop re-reads the holds once, right after the lock, then streams the keys into
    intents (``batch_size`` each; for a real partition, minutes) and drops: a hold placed
    meanwhile, on a subject whose record is not yet even in an intent, is never looked at,
    and the held row is dropped. The row sweep it replaces keeps it (control test above):
    the window between the last hold check and the disposal grows from one batch to a
    whole partition."""
    ev = events
    _, held, name = _hold_during_first_batch(ws, pg_schema, ev, "drop")
    assert held in ids(ev.engine), (
        f"row {held} was dropped with partition {name} although its subject was put on hold "
        "before its record was written to an intent")
    assert name in attached(ev.engine)


KEEP = "not exists (select 1 from keep_flags f where f.event_id = events.id)"


def _flag(ev: Events) -> Any:
    def act(row: int) -> None:  # the application flags a record to keep, and commits
        with ev.engine.begin() as conn:
            conn.execute(sa.text("insert into keep_flags values (:i)"), {"i": row})
    with ev.engine.begin() as conn:
        conn.execute(sa.text("create table keep_flags (event_id integer primary key)"))
    return act


def test_row_sweep_control_a_keep_flag_set_mid_sweep_keeps_its_row(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """Control (passes): a ``where`` reading another table is evaluated by every batch's
    DELETE, so a row flagged after the first batch stays."""
    ev = events
    _, flagged, _ = _hold_during_first_batch(ws, pg_schema, ev, "rows", _flag(ev),
                                               where=KEEP)
    assert flagged in ids(ev.engine)


def test_a_keep_flag_set_while_a_partitions_keys_stream_keeps_its_row(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """The same with ``partitions: drop``: the selection (and its ``where``) is evaluated by
    the count and by the key stream's one snapshot, then the partition is dropped whatever
    the other table says by then; the flagged row is dropped."""
    ev = events
    _, flagged, name = _hold_during_first_batch(ws, pg_schema, ev, "drop", _flag(ev),
                                                  where=KEEP)
    assert flagged in ids(ev.engine), (
        f"row {flagged} was dropped with partition {name} although the rule's where excluded "
        "it before its record was written to an intent")


# -- not introduced by i13-part (the row sweep did the same), found while reviewing it: now
# -- refused (policy check: one url, two stores; preflight: one partition tree, two names) ----
@pytest.mark.parametrize("partitions", ["rows", "drop"])
@pytest.mark.parametrize("where", ["partition", "other-store"])
def test_a_floor_on_the_same_rows_named_another_way_protects_them(
        events: Events, pg_schema: Any, ws: Any, partitions: str, where: str) -> None:
    """Pre-existing (both ``partitions`` modes fail): another rule's ``keep_for`` protects the
    rows of a month, but that rule names them differently from ``old-events``: by the
    partition itself (``table: events_YYYY_MM``), or through a second store with the same
    database URL. Floors only apply between rules of the same store and target
    (``planner.overlapping``), ``config validate`` says nothing, and the rows are deleted
    (or their partition dropped)."""
    ev = events
    name = sorted(ev.wholly_due)[0]
    floor = {"id": "vip", "store": "app", "table": "events", "key": ["id", "created_at"],
             "clock": "created_at", "keep_for": "10y", "dispose_after": "10y",
             "match": {"customer_id": {"in": [100 + i for i in ev.rows
                                              if ev.part_of(i) == name]}}}
    stores = {"app": {"adapter": "sql", "url": pg_schema.url}}
    if where == "partition":
        floor = {**floor, "table": name}
    else:
        stores["app2"] = {"adapter": "sql", "url": pg_schema.url}
        floor = {**floor, "store": "app2"}
    ws.policy(stores, [{**RULE, "partitions": partitions}, floor])
    run = ws.invoke("run", "--json", "--rule", "old-events")
    # Refused, naming both rules: by the policy check (one database, two stores: exit 2) or,
    # once the store is read, by the rule's preflight (one partition tree: the rule fails).
    if where == "other-store":
        assert run.code == 2, run.err
        assert "store 'app' has the same url as store 'app2'" in run.err
    else:
        assert run.code == 1, run.err
        [r] = run.json()["rules"]
        assert r["error"] == (f"rules[0] (old-events).table: events and {name} (rule vip) are "
                              "one partitioned table; name it the same way (its parent) in "
                              "every rule, so that their floors, holds and due dates apply "
                              "to each other")
    rows = {i for i in ev.rows if ev.part_of(i) == name}
    assert rows <= ids(ev.engine), f"floor-protected rows deleted: {sorted(rows - ids(ev.engine))}"


def _pending_detach(engine: sa.Engine, url: str, name: str) -> None:
    """Leave ``name`` half detached, as an interrupted ``DETACH PARTITION ... CONCURRENTLY``
    does (cancelled while it waits for older transactions): still listed in pg_inherits with
    ``inhdetachpending``, no longer seen by queries on the parent."""
    import threading
    import time

    detacher = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    out: dict[str, Any] = {}

    def detach() -> None:
        with detacher.connect() as d:
            out["pid"] = d.execute(sa.text("select pg_backend_pid()")).scalar()
            try:
                d.execute(sa.text(f"alter table events detach partition {name} concurrently"))
            except sa.exc.DBAPIError as exc:
                out["error"] = type(exc.orig).__name__

    with engine.connect() as older:  # an older transaction on the table: phase 2 waits
        older.execute(sa.text("select count(*) from events"))
        thread = threading.Thread(target=detach)
        thread.start()
        for _ in range(1000):
            with engine.connect() as w:
                waiting = w.execute(sa.text(
                    "select count(*) from pg_locks where not granted and pid = :p"),
                    {"p": out.get("pid", -1)}).scalar()
            if waiting:
                break
            time.sleep(0.01)
        with engine.connect() as w:
            w.execute(sa.text("select pg_cancel_backend(:p)"), {"p": out["pid"]})
        thread.join(30)
        older.rollback()
    detacher.dispose()
    assert out.get("error") == "QueryCanceled", out
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "select inhdetachpending from pg_inherits where inhrelid = cast(:n as regclass)"),
            {"n": name}).scalar() is True


def test_a_partition_pending_detach_is_never_ledgered_as_disposed(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """A partition left pending detach (an interrupted ``DETACH ... CONCURRENTLY``; PostgreSQL
    14+) is still listed in pg_inherits, so it is offered for a drop: its rows are counted and
    their keys written as intents, then the DETACH fails ("already pending detach") and the
    intents are settled against the *parent*, which no longer shows the partition's rows:
    every one of them is ledgered as disposed (and the run counts them done) although none
    was touched and all are still in the partition. Each later run does it again: the same
    records ledgered once per run."""
    ev = events
    with ev.engine.begin() as conn:  # DETACH CONCURRENTLY refuses a table with a DEFAULT
        conn.execute(sa.text("drop table events_rest"))
    name = sorted(ev.wholly_due)[0]
    _pending_detach(ev.engine, pg_schema.url, name)
    part_rows = {i for i in ev.rows if ev.part_of(i) == name}
    setup(ws, pg_schema)
    done = []
    for _ in range(2):
        run = ws.invoke("run", "--json")
        assert run.code == 0, run.err
        done.append(run.json()["rules"][0]["done"])
        with ev.engine.connect() as conn:
            left = set(conn.execute(sa.text(f"select id from {name}")).scalars())
        assert left == part_rows  # nothing was disposed there
    refs = disposed_refs(ws)
    times = {i: refs.count(ref(ws, ev, i)) for i in sorted(part_rows)}
    assert times == dict.fromkeys(sorted(part_rows), 0), (
        f"records of {name}, all still present, ledgered as disposed (id: times): {times}; "
        f"done per run {done}")


def test_a_partition_detached_by_someone_else_while_the_drop_waits_is_not_ledgered(
        events: Events, pg_schema: Any, ws: Any) -> None:
    """The same through a race: a DBA detaches an old partition to archive it (plain
    ``DETACH PARTITION``, in a transaction) just as the drop starts. The drop lists the
    partitions before it locks (the DBA's DETACH is not committed yet, so it is still
    listed), waits for the lock, gets it when the DBA commits, counts and reads the
    now stand-alone table, writes intents; its own DETACH then fails, and the settle against
    the parent ledgers every record of the archived table as disposed. The partition should
    be looked up again once locked."""
    import threading

    from retentiond.adapters.registry import register, unregister
    from retentiond.adapters.sql import SqlAdapter

    ev = events
    name = sorted(ev.wholly_due)[0]
    dba = sa.create_engine(pg_schema.url)
    started = threading.Event()

    def archive() -> None:
        with dba.begin() as conn:
            conn.execute(sa.text(f"alter table events detach partition {name}"))
            started.set()
            conn.execute(sa.text("select pg_sleep(1)"))

    class Raced(SqlAdapter):
        def drop_partition(self, selection: Any, partition: str, limit: int, refresh: Any,
                           intent: Any, **kw: Any) -> int:
            if partition == name and not started.is_set():
                threading.Thread(target=archive).start()
                assert started.wait(30)
            return super().drop_partition(selection, partition, limit, refresh, intent, **kw)

    register("sqlraced", Raced)
    try:
        setup(ws, pg_schema, adapter="sqlraced")
        run = ws.invoke("run", "--json")
    finally:
        unregister("sqlraced")
        dba.dispose()
    assert run.code == 0, run.err
    part_rows = {i for i in ev.rows if ev.part_of(i) == name}
    with ev.engine.connect() as conn:
        assert set(conn.execute(sa.text(f"select id from {name}")).scalars()) == part_rows
    refs = disposed_refs(ws)
    ledgered = sorted(i for i in part_rows if ref(ws, ev, i) in refs)
    assert ledgered == [], f"ids {ledgered} of the archived {name} ledgered as disposed"
