"""Partition benchmark: ``partitions: drop`` against the row sweep of the same rule, and a
hand-written drop (issue 13 part 1; PostgreSQL only).

Measures, on a table partitioned by month with 40% of the rows due by whole months:

* throughput (due rows per second of wall time) of ``partitions: drop`` / the row sweep
  (target >= 1.5);
* the WAL each writes (``pg_wal_lsn_diff`` of ``pg_current_wal_lsn()`` around the run;
  target: the drop <= 1/10 of the row sweep);
* a hand-written in-process drop that reads the keys, hashes them, ledgers them and drops,
  timed per phase (reading keys, hashing, encoding, writing refs, DDL), to show where the
  ledger path's time goes.

Usage (from the project root)::

    .venv/bin/python bench/partitions.py [--rows 1000000] [--months 60] [--batch 5000]
                                         [--repeat 3] [--json] [--profile]

All contenders run as child processes on identical fresh copies of one template database,
in rotating order; medians of the times over the repetitions are reported. WAL is
server-wide: other sessions' writes are counted too, so the least of the repetitions is
reported for each contender (every value is printed).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # bench/ is not a package: partitions.py runs as a script
    STORE,
    _canonical,
    _pg,
    _pg_url,
    clone,
    count_rows,
    drop_copy,
    drop_template,
    fresh_state,
    ledger_digest,
    log,
    must,
    pg_drop,
    print_profile,
    retentiond_run,
    retentiond_upgrade,
    run_child,
    shared_arguments,
    use_source,
    workdir,
)

TARGET = "events"
RULE = "old-events"
DUE_SHARE = 0.4
CONTENDERS = ("drop", "rows", "handmade")


def month_start(at: datetime, add: int = 0) -> datetime:
    n = at.year * 12 + at.month - 1 + add
    return datetime(n // 12, n % 12 + 1, 1)


def layout(now: datetime, months: int) -> tuple[datetime, int, int]:
    """First month, number of wholly-due months, and ``dispose_after`` in days: the cutoff
    falls in the first day of the first month not due, before any of its rows."""
    first = month_start(now, -(months - 1))
    due_months = round(months * DUE_SHARE)
    days = (now - month_start(first, due_months)).days
    return first, due_months, days


# ==============================================================================================
# Data generation (set-based, in a child)
# ==============================================================================================
def build(admin_url: str, dbname: str, rows: int, months: int, now: datetime) -> None:
    first, _, _ = layout(now, months)
    pg_drop(admin_url, dbname)
    with _pg(admin_url) as con:
        con.execute(f'CREATE DATABASE "{dbname}"')
    with _pg(_pg_url(admin_url, dbname)) as con:
        con.execute("CREATE TABLE events (id bigint NOT NULL, created_at timestamp NOT NULL, "
                    "user_id integer, payload text, PRIMARY KEY (id, created_at)) "
                    "PARTITION BY RANGE (created_at)")
        for k in range(months):
            lo, hi = month_start(first, k), month_start(first, k + 1)
            con.execute(f"CREATE TABLE events_{lo:%Y_%m} PARTITION OF events FOR VALUES "
                        f"FROM ('{lo:%Y-%m-%d}') TO ('{hi:%Y-%m-%d}')")
        con.execute("SET maintenance_work_mem = '256MB'")
        # Row i lives in month i % months, one to 27 days into it.
        con.execute("""
            INSERT INTO events (id, created_at, user_id, payload)
            SELECT i, (%(first)s::timestamp + make_interval(months => (i %% %(m)s)::int))
                      + make_interval(days => 1 + (i %% 26)::int, secs => (i %% 86000)::int),
                   i %% 100000, 'evt-' || i || '-' || repeat('x', 20 + (i %% 20)::int)
            FROM generate_series(1, %(n)s) AS g(i)""", {"first": first, "m": months, "n": rows})
        con.execute("CREATE INDEX ix_events_created_at ON events (created_at)")
        con.execute("VACUUM ANALYZE events")


# ==============================================================================================
# The hand-written drop (a child: `bench/partitions.py --_baseline JSON`)
# ==============================================================================================
def handmade(cfg: dict[str, Any]) -> dict[str, Any]:
    """Per wholly-due partition, in one store transaction: lock it, stream its keys, compute
    the per-record refs (the canonical composite-key text retentiond hashes), write them to
    a hash-chained SQLite ledger in batches, detach and drop. Each phase timed apart."""
    import sqlite3

    import psycopg

    t0 = time.perf_counter()
    phases = dict.fromkeys(("read_keys", "hash", "encode", "write_refs", "ddl_commit"), 0.0)
    key = Path(cfg["key_file"]).read_bytes().rstrip(b"\r\n")
    base = hmac.new(key, f"{STORE}\0{TARGET}\0".encode(), hashlib.sha256)
    led = sqlite3.connect(cfg["ledger"], isolation_level=None)
    led.execute("PRAGMA journal_mode=WAL")
    led.execute("PRAGMA synchronous=NORMAL")
    from common import BASELINE_LEDGER_DDL

    led.execute(BASELINE_LEDGER_DDL)
    prev, seq, disposed = "0" * 64, 0, 0
    store = psycopg.connect(cfg["url"].replace("postgresql+psycopg://", "postgresql://"))
    batch = int(cfg["batch"])
    for name in cfg["partitions"]:
        with store.transaction():
            store.execute(f"LOCK TABLE ONLY {name} IN SHARE ROW EXCLUSIVE MODE")
            with store.cursor(name="keys") as cur:
                cur.itersize = batch
                cur.execute(f"SELECT id, created_at FROM {name}")
                while True:
                    t = time.perf_counter()
                    rows = cur.fetchmany(batch)
                    phases["read_keys"] += time.perf_counter() - t
                    if not rows:
                        break
                    t = time.perf_counter()
                    refs = []
                    for i, at in rows:
                        h = base.copy()
                        h.update(f'["{i}","{at.isoformat()}"]'.encode())
                        refs.append(h.hexdigest())
                    phases["hash"] += time.perf_counter() - t
                    t = time.perf_counter()
                    seq += 1
                    entry = {"seq": seq, "at": datetime.now(UTC).isoformat(), "run_id": "hand",
                             "kind": "dispose", "rule": RULE, "store": STORE,
                             "target": TARGET, "action": "delete", "reason": "schedule",
                             "record_refs": refs, "subject_ref": None,
                             "detail": {"count": len(refs)}}
                    prev = hashlib.sha256(prev.encode() + _canonical(entry)).hexdigest()
                    encoded = json.dumps(refs)
                    phases["encode"] += time.perf_counter() - t
                    t = time.perf_counter()
                    led.execute("BEGIN IMMEDIATE")
                    led.execute("INSERT INTO ledger VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                (seq, entry["at"], "hand", "dispose", RULE, STORE, TARGET,
                                 "delete", "schedule", encoded, len(refs), None,
                                 json.dumps(entry["detail"]), prev))
                    led.execute("COMMIT")
                    phases["write_refs"] += time.perf_counter() - t
                    disposed += len(rows)
            t = time.perf_counter()
            store.execute(f"ALTER TABLE events DETACH PARTITION {name}")
            store.execute(f"DROP TABLE {name}")
        phases["ddl_commit"] += time.perf_counter() - t
    store.close()
    led.close()
    return {"deleted": disposed, "seconds": time.perf_counter() - t0,
            "phases": {k: round(v, 3) for k, v in phases.items()}}


# ==============================================================================================
# Running the contenders
# ==============================================================================================
def write_policy(path: Path, url: str, state: Path, key_file: Path, batch: int, days: int,
                 partitions: str) -> None:
    path.write_text(f"""\
# generated by bench/partitions.py
version: 1
timezone: UTC
state: sqlite:///{state}
secret_key: {{file: {key_file}}}
batch_size: {batch}
stores:
  {STORE}:
    adapter: sql
    url: "{url}"
rules:
  - id: {RULE}
    store: {STORE}
    table: {TARGET}
    key: [id, created_at]
    clock: created_at
    dispose_after: {days}d
    action: delete
    partitions: {partitions}
""")


SLOT = f"rdbench_{os.getpid()}"


def wal_lsn(url: str) -> str:
    """Where the WAL is now. A physical replication slot is created first so that the
    server keeps the run's WAL segments for :func:`own_wal` (a busy shared server recycles
    them within seconds); :func:`own_wal` drops it."""
    with _pg(url) as con:
        try:
            con.execute("SELECT pg_create_physical_replication_slot(%s, true)", (SLOT,))
        except Exception as exc:  # no slots left, no rights: WAL is then counted server-wide
            log(f"no replication slot ({type(exc).__name__}); WAL may be recycled")
        row = con.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        return str(row[0])


def drop_slot(url: str) -> None:
    with _pg(url) as con:
        con.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s", (SLOT,))


def wal_since(url: str, start: str) -> int:
    with _pg(url) as con:
        row = con.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)",
                          (start,)).fetchone()
        assert row is not None
        return int(row[0])


def own_wal(url: str, start: str) -> int | None:
    """The WAL bytes since ``start`` of records touching this copy's database (its OID in a
    block reference or a dropped relation's path), read with ``pg_waldump`` from the
    server's ``pg_wal``: other sessions' WAL left out. None when the WAL cannot be read here
    (a remote server, no pg_waldump, segments already recycled)."""
    import glob
    import re
    import subprocess

    with _pg(url) as con:
        row = con.execute("SELECT (SELECT oid FROM pg_database WHERE datname = "
                          "current_database()), current_setting('data_directory'), "
                          "pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    db, datadir, end = row
    tools = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_waldump")) or [
        shutil.which("pg_waldump") or ""]
    if not tools[-1] or not Path(datadir, "pg_wal").is_dir():
        return None
    mine = re.compile(rf"(rel \d+/{db}/|base/{db}/)")
    size = re.compile(r"len \(rec/tot\):\s*\d+/\s*(\d+)")
    total = 0
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([tools[-1], "-p", str(Path(datadir, "pg_wal")), "-s", start,
                                 "-e", end], stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if mine.search(line):
                m = size.search(line)
                total += int(m.group(1)) if m else 0
        if proc.wait() != 0:
            err.seek(0)
            log(f"pg_waldump failed ({err.read().strip()[:200]}); WAL counted server-wide")
            return None
    return total


def run_one(who: str, url: str, work: Path, key_file: Path, args: argparse.Namespace,
            days: int, due_parts: list[str], tag: str,
            profile: Path | None = None) -> dict[str, Any]:
    if who == "handmade":
        ledger = work / f"hand-{tag}.db"
        ledger.unlink(missing_ok=True)
        cfg = {"url": url, "ledger": str(ledger), "key_file": str(key_file),
               "batch": args.batch, "partitions": due_parts}
        start = wal_lsn(url)
        res = run_child([sys.executable, str(Path(__file__).resolve()), "--_baseline",
                         json.dumps(cfg)])
        try:
            wal, own = wal_since(url, start), own_wal(url, start)
        finally:
            drop_slot(url)
        must(res, "hand-written drop")
        inner = json.loads(res["stdout"])
        return {"wall": res["wall"], "inner": inner["seconds"], "rss_mb": res["rss_mb"],
                "deleted": inner["deleted"], "phases": inner["phases"], "wal": wal,
                "own_wal": own,
                "ledger": ledger, "verify_rc": 0}
    state = work / f"state-{who}-{tag}.db"
    fresh_state(state)
    policy = work / f"policy-{who}-{tag}.yaml"
    write_policy(policy, url, state, key_file, args.batch, days, who)
    retentiond_upgrade(policy)
    start = wal_lsn(url)
    try:
        r = retentiond_run(policy, state, profile)
        wal, own = wal_since(url, start), own_wal(url, start)
    finally:
        drop_slot(url)
    [rule] = r["doc"]["rules"]
    dropped = sorted(p["partition"] for p in rule.get("partitions") or () if p["drop"])
    return {"wall": r["wall"], "inner": r["inner"], "rss_mb": r["rss_mb"],
            "deleted": r["done"], "wal": wal, "own_wal": own, "ledger": state,
            "verify_rc": r["verify_rc"], "dropped": dropped}


def bench(args: argparse.Namespace, work: Path, key_file: Path) -> dict[str, Any]:
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    first, due_months, days = layout(now, args.months)
    tag = f"rdpart_{int(time.time())}"
    template = f"{tag}_tmpl"
    log(f"building {args.rows:,} rows over {args.months} monthly partitions ...")
    res = run_child([sys.executable, str(Path(__file__).resolve()), "--_build", json.dumps(
        {"pg_url": args.pg_url, "target": template, "rows": args.rows, "months": args.months,
         "now": now.isoformat()})])
    if res["rc"] != 0:
        drop_template("postgresql", template, args.pg_url)
    must(res, "building the table")
    tmpl_url = _pg_url(args.pg_url, template)
    cutoff = now - timedelta(days=days)
    due = count_rows(tmpl_url, "WHERE created_at <= ?", (cutoff,))
    due_parts = [f"events_{month_start(first, k):%Y_%m}" for k in range(due_months)]
    log(f"built in {res['wall']:.1f} s; {due:,} of {args.rows:,} rows due "
        f"({due_months} of {args.months} months)")
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
    copies: list[str] = []
    profile_out = None
    try:
        for rep in range(args.repeat):
            order = CONTENDERS[rep % 3:] + CONTENDERS[:rep % 3]
            for who in order:
                url = clone("postgresql", template, f"{tag}_{who}", work, args.pg_url)
                copies.append(url)
                r = run_one(who, url, work, key_file, args, days, due_parts, f"{rep}")
                r["remaining"] = count_rows(url)
                r["remaining_due"] = count_rows(url, "WHERE created_at <= ?", (cutoff,))
                r["refs"] = ledger_digest(r.pop("ledger"))
                runs[who].append(r)
                log(f"rep {rep + 1}/{args.repeat} {who:9s}: {r['deleted']:,} deleted in "
                    f"{r['wall']:.2f} s ({r['inner']:.2f} s inside), WAL "
                    f"{r['wal'] / 2**20:.1f} MiB, peak RSS {r['rss_mb']:.1f} MB")
                drop_copy("postgresql", url, args.pg_url)
                copies.remove(url)
        if args.profile:
            url = clone("postgresql", template, f"{tag}_profile", work, args.pg_url)
            copies.append(url)
            profile_out = work / "retentiond-drop.pstats"
            run_one("drop", url, work, key_file, args, days, due_parts, "profile",
                    profile=profile_out)
    finally:
        for url in copies:
            drop_copy("postgresql", url, args.pg_url)
        drop_template("postgresql", template, args.pg_url)
    return summarise(args, due, due_parts, runs, profile_out)


def summarise(args: argparse.Namespace, due: int, due_parts: list[str],
              runs: dict[str, list[dict[str, Any]]], profile_out: Path | None
              ) -> dict[str, Any]:
    problems = []
    for who, rs in runs.items():
        for i, r in enumerate(rs):
            if r["deleted"] != due or r["refs"][0] != due:
                problems.append(f"{who} run {i + 1} deleted {r['deleted']} and ledgered "
                                f"{r['refs'][0]}, expected {due}")
            if r["remaining"] != args.rows - due or r["remaining_due"]:
                problems.append(f"{who} run {i + 1} left {r['remaining']} rows "
                                f"({r['remaining_due']} due)")
            if r["verify_rc"]:
                problems.append(f"{who} run {i + 1}: audit verify failed")
            if who == "drop" and r["dropped"] != sorted(due_parts):
                problems.append(f"drop run {i + 1} dropped {len(r['dropped'])} partitions, "
                                f"expected {len(due_parts)}")
    if len({r["refs"][1] for rs in runs.values() for r in rs}) != 1:
        problems.append("the contenders' ledgers name different records")

    def med(who: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[who])

    def least(who: str, key: str) -> float:
        return min(r[key] for r in runs[who])

    own = all(r["own_wal"] is not None for rs in runs.values() for r in rs)
    wal_key = "own_wal" if own else "wal"
    out: dict[str, Any] = {"wal_measure": "pg_waldump, this database only" if own
                           else "server-wide, least of the repetitions",
                           "rows": args.rows, "months": args.months, "due": due,
                           "due_partitions": len(due_parts), "batch": args.batch,
                           "repeat": args.repeat}
    out["contenders"] = c = {}
    for who in CONTENDERS:
        c[who] = {"seconds": round(med(who, "wall"), 3),
                    "inner_seconds": round(med(who, "inner"), 3),
                    "rows_per_s": round(due / med(who, "wall")),
                    # The copy's own WAL (pg_waldump) where it can be read; else the
                    # server's, of which other sessions only add: the least repetition.
                    "wal_mib": round(least(who, wal_key) / 2**20, 2),
                    "all_wal_mib": [round(r[wal_key] / 2**20, 2) for r in runs[who]],
                    "all_server_wal_mib": [round(r["wal"] / 2**20, 1) for r in runs[who]],
                    "peak_rss_mb": round(max(r["rss_mb"] for r in runs[who]), 1),
                    "all_seconds": [round(r["wall"], 3) for r in runs[who]]}
    phases = {k: statistics.median(r["phases"][k] for r in runs["handmade"])
              for k in runs["handmade"][0]["phases"]}
    c["handmade"]["phases"] = {k: round(v, 3) for k, v in phases.items()}
    ratio = med("rows", "wall") / med("drop", "wall")
    wal = least("drop", wal_key) / max(least("rows", wal_key), 1)
    out["ratio_drop_vs_rows"] = round(ratio, 3)
    out["ratio_drop_vs_rows_inner"] = round(med("rows", "inner") / med("drop", "inner"), 3)
    out["ratio_handmade_vs_rows"] = round(med("rows", "wall") / med("handmade", "wall"), 3)
    out["ratio_drop_vs_handmade"] = round(med("handmade", "wall") / med("drop", "wall"), 3)
    out["wal_drop_over_rows"] = round(wal, 4)
    out["targets"] = {"ratio_ge_1_5": ratio >= 1.5, "wal_le_0_1": wal <= 0.1,
                      "rss_lt_200mb": c["drop"]["peak_rss_mb"] < 200}
    out["ok"], out["problems"] = not problems, problems
    if profile_out is not None:
        out["profile"] = str(profile_out)
        out["profile_phases"] = profile_phases(profile_out)
    return out


#: Where retentiond's drop spends its time, from its cProfile (cumulative seconds of these
#: functions; the profiler's overhead inflates per-record work most).
PROFILE_PHASES = {
    "read_keys": [("sql_partitions.py", "_keys")],
    "hash_and_key_text": [("ledger.py", "records")],
    "encode": [("ledger.py", "refs_json")],
    "write_refs": [("executor.py", "_intent"), ("executor.py", "_record_pending")],
    "checks": [("sql_partitions.py", "partitions"), ("sql_partitions.py", "_counts"),
               ("sql_partitions.py", "_strategy"), ("sql_partitions.py", "_table_reasons"),
               ("sql_partitions.py", "_part_reason")],
    "ddl": [("sql_partitions.py", "_detach_and_drop")],
    "drop_total": [("executor.py", "_drop_partitions")],
}


def profile_phases(path: Path) -> dict[str, float]:
    import pstats

    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    out = {}
    for phase, funcs in PROFILE_PHASES.items():
        out[phase] = round(sum(v[3] for (file, _, name), v in stats.items()
                               if (Path(file).name, name) in funcs), 3)
    return out


def print_table(r: dict[str, Any]) -> None:
    def yes(v: bool) -> str:
        return "ok" if v else "MISS"

    print(f"\npostgresql: {r['rows']:,} rows in {r['months']} monthly partitions, {r['due']:,} "
          f"due in {r['due_partitions']} whole months, batch {r['batch']}, median of "
          f"{r['repeat']}")
    print(f"  {'contender':<26}{'seconds':>9}{'in-run s':>10}{'rows/s':>10}{'WAL MiB':>10}"
          f"{'peak RSS MB':>13}")
    names = {"drop": "retentiond partitions:drop", "rows": "retentiond row sweep",
             "handmade": "hand-written drop"}
    for who in CONTENDERS:
        c = r["contenders"][who]
        print(f"  {names[who]:<26}{c['seconds']:>9.2f}{c['inner_seconds']:>10.2f}"
              f"{c['rows_per_s']:>10,}{c['wal_mib']:>10.1f}{c['peak_rss_mb']:>13.1f}")
    t = r["targets"]
    print(f"  throughput drop/rows: {r['ratio_drop_vs_rows']:.2f} (target >= 1.5: "
          f"{yes(t['ratio_ge_1_5'])}; in-run only {r['ratio_drop_vs_rows_inner']:.2f})")
    print(f"  WAL drop/rows: {r['wal_drop_over_rows']:.4f} (target <= 0.1: "
          f"{yes(t['wal_le_0_1'])}; {r['wal_measure']}; all MiB: "
          + "; ".join(f"{w} {r['contenders'][w]['all_wal_mib']}" for w in CONTENDERS) + ")")
    print(f"  hand-written drop/rows: {r['ratio_handmade_vs_rows']:.2f}; retentiond drop / "
          f"hand-written: {r['ratio_drop_vs_handmade']:.2f}")
    phases = r["contenders"]["handmade"]["phases"]
    total = sum(phases.values())
    print("  hand-written drop, where the time goes: " + ", ".join(
        f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in phases.items()))
    print("  runs (s): " + "; ".join(
        f"{w} {r['contenders'][w]['all_seconds']}" for w in CONTENDERS))
    if r.get("profile"):
        print(f"  profile: {r['profile']}")
        print("  retentiond drop under cProfile, cumulative s: " + ", ".join(
            f"{k} {v:.2f}" for k, v in r["profile_phases"].items()))
    for p in r["problems"]:
        print(f"  PROBLEM: {p}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared_arguments(p, repeat=3, profile_help=(
        "also run retentiond's drop once under cProfile and print the top entries"))
    p.add_argument("--months", type=int, default=60, help="monthly partitions (default 60)")
    args = p.parse_args(argv)
    if args._baseline:
        print(json.dumps(handmade(json.loads(args._baseline))))
        return 0
    if args._build:
        b = json.loads(args._build)
        build(b["pg_url"], b["target"], b["rows"], b["months"], datetime.fromisoformat(b["now"]))
        return 0
    problem = use_source(args.source)
    if problem:
        p.error(problem)
    if args.backend == "sqlite":
        p.error("partitions: drop is PostgreSQL only")
    if args.rows < args.months * 10 or args.months < 5 or args.repeat < 1:
        p.error("--months >= 5, --rows >= 10 per month, --repeat >= 1")
    with workdir(args) as (work, key_file):
        result = bench(args, work, key_file)
    if result.get("profile"):
        print_profile(Path(result["profile"]))
    if args.json:
        print(json.dumps({"retentiond_source": args.source or "installed",
                          "python": sys.version.split()[0], "result": result}, indent=2))
    else:
        print_table(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
