"""Sweep benchmark: retentiond vs a hand-written keyset-batched DELETE ... RETURNING loop.

Measures the non-functional targets of SPEC section 9 on SQLite and PostgreSQL:

* throughput of a delete sweep over an N-row table (40% due), retentiond / baseline >= 0.8;
* retentiond's peak RSS (< 200 MB, flat from 1M to 10M rows);
* ``retentiond plan`` on the intact table (< 2 s).

Usage (from the project root)::

    .venv/bin/python bench/sweep.py [--rows 1000000] [--backend sqlite|postgresql|both]
                                    [--batch 5000] [--repeat 3] [--json] [--profile]

See bench/README.md. Both contenders run as child processes (so wall times include interpreter
start-up on both sides and peak RSS is measured the same way, with ``os.wait4``), on identical
fresh copies of one generated table, alternating which goes first in each repetition; the
reported times are medians over the repetitions.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from calendar import monthrange
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STORE = "store"          # store name in the policy; refs are HMAC(key, "store\0events\0<id>")
TARGET = "events"
RULE = "old-events"
DUE_PER_MILLE = 400      # 40% of the rows are due
MIX = 2654435761         # (id * MIX) % 1000 < 400 marks a row due: interleaved, exactly 40%
                         # of every block of 1000 consecutive ids (MIX is coprime to 1000)
DEFAULT_PG = os.environ.get("RETENTIOND_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- calendar helper (same semantics as SPEC 3.1: keep the day, clamp to month end) -----------
def years_before(at: datetime, years: int) -> datetime:
    y = at.year - years
    return at.replace(year=y, day=min(at.day, monthrange(y, at.month)[1]))


# ==============================================================================================
# Data generation (set-based)
# ==============================================================================================
def _payload_sql(mod: str = "%") -> str:
    return ("'evt-' || i || '-' || substr('abcdefghijklmnopqrstuvwxyz0123456789"
            f"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefgh', 1 + (i {mod} 20))")


def build_sqlite(path: Path, rows: int, now: datetime) -> None:
    """A fresh SQLite file with ``rows`` rows, 40% due, index on created_at, in WAL mode."""
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-65536")
    con.execute("CREATE TABLE events (id integer primary key, user_id integer, "
                "created_at timestamp, payload text)")
    now_jd = con.execute("SELECT julianday(?)", (now.strftime("%Y-%m-%d %H:%M:%S"),)).fetchone()[0]
    # due: 1100..1799 days old (> 3 calendar years); not due: 0..999 days old (< 3 years).
    con.execute("BEGIN")
    con.execute(f"""
        WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < :n)
        INSERT INTO events (id, user_id, created_at, payload)
        SELECT i, i % 100000,
               datetime(:jd - CASE WHEN (i * {MIX}) % 1000 < {DUE_PER_MILLE}
                                   THEN 1100 + (i % 700) ELSE (i % 1000) END
                            - (i % 86400) / 86400.0),
               {_payload_sql()}
        FROM c""", {"n": rows, "jd": now_jd})
    con.execute("CREATE INDEX ix_events_created_at ON events (created_at)")
    con.execute("COMMIT")
    con.execute("ANALYZE")
    con.execute("PRAGMA journal_mode=WAL")   # persistent; what retentiond's engine sets anyway
    con.close()


def _pg(url: str) -> Any:
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def _pg_url(admin_url: str, dbname: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{dbname}"


def pg_drop(admin_url: str, dbname: str) -> None:
    with _pg(admin_url) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def build_postgresql(admin_url: str, dbname: str, rows: int, now: datetime) -> None:
    pg_drop(admin_url, dbname)
    with _pg(admin_url) as con:
        con.execute(f'CREATE DATABASE "{dbname}"')
    with _pg(_pg_url(admin_url, dbname)) as con:
        con.execute("CREATE TABLE events (id integer primary key, user_id integer, "
                    "created_at timestamp, payload text)")
        con.execute("SET maintenance_work_mem = '256MB'")
        con.execute(f"""
            INSERT INTO events (id, user_id, created_at, payload)
            SELECT i, i %% 100000,
                   %(now)s::timestamp - make_interval(
                       days => CASE WHEN (i::bigint * {MIX}) %% 1000 < {DUE_PER_MILLE}
                                    THEN 1100 + (i %% 700) ELSE (i %% 1000) END,
                       secs => (i %% 86400)),
                   {_payload_sql("%%")}
            FROM generate_series(1, %(n)s) AS g(i)""", {"n": rows, "now": now})
        con.execute("CREATE INDEX ix_events_created_at ON events (created_at)")
        con.execute("VACUUM ANALYZE events")


def clone(backend: str, template: str, name: str, workdir: Path, admin_url: str) -> str:
    """A fresh copy of the template; returns its SQLAlchemy URL."""
    if backend == "sqlite":
        dst = workdir / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{dst}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(template, dst)
        return f"sqlite:///{dst}"
    pg_drop(admin_url, name)
    with _pg(admin_url) as con:
        con.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
    return _pg_url(admin_url, name).replace("postgresql://", "postgresql+psycopg://", 1)


def drop_copy(backend: str, url: str, admin_url: str) -> None:
    if backend == "sqlite":
        path = url.split(":///", 1)[1]
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        pg_drop(admin_url, url.rsplit("/", 1)[1])


def count_rows(url: str, where: str = "", params: tuple[Any, ...] = ()) -> int:
    if url.startswith("sqlite"):
        con = sqlite3.connect(url.split(":///", 1)[1])
        try:
            return int(con.execute(f"SELECT count(*) FROM events {where}", params).fetchone()[0])
        finally:
            con.close()
    with _pg(url) as con:
        return int(con.execute(f"SELECT count(*) FROM events {where.replace('?', '%s')}",
                               params).fetchone()[0])


# ==============================================================================================
# The baseline (runs in a child process: `bench/sweep.py --_baseline JSON`)
# ==============================================================================================
BASELINE_LEDGER_DDL = """CREATE TABLE IF NOT EXISTS ledger (
    seq integer primary key, at text not null, run_id text, kind text, rule text, store text,
    target text, action text, reason text, record_refs text not null, record_count integer,
    subject_ref text, detail text, hash text not null)"""

DELETE_BATCH = ("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE created_at <= ? "
                "AND id > ? ORDER BY id LIMIT ?) RETURNING id")
# PostgreSQL plans `id IN (SELECT ... LIMIT n)` as a hash semi-join over a sequential scan of the
# whole table (~0.5 s per batch on 1M rows); `id = ANY(ARRAY(SELECT ...))` is the same statement
# evaluated as an InitPlan plus primary-key lookups (~20 ms). The yardstick uses the fast form.
DELETE_BATCH_PG = ("DELETE FROM events WHERE id = ANY(ARRAY(SELECT id FROM events WHERE "
                   "created_at <= %s AND id > %s ORDER BY id LIMIT %s)) RETURNING id")


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def baseline(cfg: dict[str, Any]) -> dict[str, Any]:
    """Keyset-batched DELETE ... RETURNING, per-record HMAC refs, one hash-chained ledger row per
    batch in a separate SQLite file, one store transaction and one ledger commit per batch."""
    t0 = time.perf_counter()
    key = Path(cfg["key_file"]).read_bytes().rstrip(b"\r\n")
    base_mac = hmac.new(key, f"{STORE}\0{TARGET}\0".encode(), hashlib.sha256)
    url, batch = cfg["url"], int(cfg["batch"])
    cutoff = years_before(datetime.now(UTC).replace(tzinfo=None), 3)
    run_id = secrets.token_hex(16)

    led = sqlite3.connect(cfg["ledger"], isolation_level=None)
    led.execute("PRAGMA journal_mode=WAL")
    led.execute("PRAGMA synchronous=NORMAL")
    led.execute(BASELINE_LEDGER_DDL)
    prev, seq = "0" * 64, 0

    if url.startswith("sqlite"):
        store = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
        store.execute("PRAGMA journal_mode=WAL")
        store.execute("PRAGMA synchronous=NORMAL")
        sql = DELETE_BATCH
        cutoff_param: Any = cutoff.isoformat(sep=" ")

        def delete_batch(last: int) -> list[int]:
            store.execute("BEGIN IMMEDIATE")
            ids = [r[0] for r in store.execute(sql, (cutoff_param, last, batch))]
            store.execute("COMMIT")
            return ids
    else:
        import psycopg

        store = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        sql = DELETE_BATCH_PG
        cutoff_param = cutoff

        def delete_batch(last: int) -> list[int]:
            with store.cursor() as cur:
                cur.execute(sql, (cutoff_param, last, batch))
                ids = [r[0] for r in cur.fetchall()]
            store.commit()
            return ids

    deleted, batches, last = 0, 0, 0
    while True:
        ids = delete_batch(last)
        if not ids:
            break
        last = max(ids)
        refs = []
        for i in ids:
            h = base_mac.copy()
            h.update(str(i).encode())
            refs.append(h.hexdigest())
        seq += 1
        entry = {"seq": seq, "at": datetime.now(UTC).isoformat(timespec="microseconds"),
                 "run_id": run_id, "kind": "dispose", "rule": RULE, "store": STORE,
                 "target": TARGET, "action": "delete", "reason": "schedule",
                 "record_refs": refs, "subject_ref": None, "detail": {"count": len(refs)}}
        prev = hashlib.sha256(prev.encode() + _canonical(entry)).hexdigest()
        led.execute("BEGIN IMMEDIATE")
        led.execute("INSERT INTO ledger VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (seq, entry["at"], run_id, "dispose", RULE, STORE, TARGET, "delete",
                     "schedule", json.dumps(refs), len(refs), None,
                     json.dumps(entry["detail"], sort_keys=True), prev))
        led.execute("COMMIT")
        deleted += len(ids)
        batches += 1
        if len(ids) < batch:
            break
    store.close()
    led.close()
    return {"deleted": deleted, "batches": batches, "seconds": time.perf_counter() - t0}


# ==============================================================================================
# Running the contenders
# ==============================================================================================
def run_child(argv: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a child; wall time, exit code, stdout, stderr and peak RSS (MiB, via wait4)."""
    t0 = time.perf_counter()
    # Not the project root as cwd: `python -m retentiond` would import ./retentiond from there
    # ahead of --source.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=tempfile.gettempdir())
    # Read the pipes on threads so a chatty child cannot block; then reap with wait4.
    import threading

    out: dict[str, bytes] = {}

    def pump(name: str, stream: Any) -> None:
        out[name] = stream.read()

    threads = [threading.Thread(target=pump, args=(n, s))
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for t in threads:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall": wall, "rss_mb": usage.ru_maxrss / 1024,
            "stdout": out.get("stdout", b"").decode(errors="replace"),
            "stderr": out.get("stderr", b"").decode(errors="replace")}


def retentiond_argv() -> list[str]:
    exe = Path(sys.executable).parent / "retentiond"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "retentiond"]


def write_policy(path: Path, store_url: str, state: Path, key_file: Path, batch: int) -> None:
    path.write_text(f"""\
# generated by bench/sweep.py
version: 1
timezone: UTC
state: sqlite:///{state}
secret_key: {{file: {key_file}}}
batch_size: {batch}
stores:
  {STORE}:
    adapter: sql
    url: "{store_url}"
rules:
  - id: {RULE}
    description: Events are deleted three years after they happened (benchmark rule).
    source: "bench/sweep.py"
    store: {STORE}
    table: {TARGET}
    key: id
    clock: created_at
    keep_for: 3y
    dispose_after: 3y
    action: delete
""")


def _must(res: dict[str, Any], what: str) -> None:
    if res["rc"] != 0:
        sys.stderr.write(res["stderr"][-4000:])
        raise SystemExit(f"bench: {what} failed with exit code {res['rc']}")


def ledger_digest(path: Path) -> tuple[int, int]:
    """(record count, order-independent digest of every record ref) of a ledger's dispose
    entries, read in pages so it stays flat for 10M rows."""
    con = sqlite3.connect(path)
    total, acc, last = 0, 0, 0
    try:
        while True:
            rows = con.execute("SELECT seq, record_refs FROM ledger WHERE kind = 'dispose' "
                               "AND seq > ? ORDER BY seq LIMIT 4", (last,)).fetchall()
            if not rows:
                break
            for seq, refs_json in rows:
                refs = json.loads(refs_json)
                total += len(refs)
                for r in refs:
                    acc = (acc + int(r, 16)) % (1 << 256)
                last = seq
    finally:
        con.close()
    return total, acc


def run_baseline(url: str, work: Path, key_file: Path, batch: int, tag: str) -> dict[str, Any]:
    ledger = work / f"baseline-ledger-{tag}.db"
    ledger.unlink(missing_ok=True)
    cfg = {"url": url, "ledger": str(ledger), "key_file": str(key_file), "batch": batch}
    res = run_child([sys.executable, str(Path(__file__).resolve()), "--_baseline",
                     json.dumps(cfg)])
    _must(res, "baseline")
    inner = json.loads(res["stdout"])
    return {"wall": res["wall"], "inner": inner["seconds"], "rss_mb": res["rss_mb"],
            "deleted": inner["deleted"], "batches": inner["batches"], "ledger": ledger}


def run_retentiond(url: str, work: Path, key_file: Path, batch: int, tag: str,
                   expect_due: int, profile: Path | None = None) -> dict[str, Any]:
    state = work / f"state-{tag}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    policy = work / f"policy-{tag}.yaml"
    write_policy(policy, url, state, key_file, batch)
    rd = retentiond_argv()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    _must(run_child([*rd, "--config", str(policy), "db", "upgrade"], env=env), "db upgrade")
    plan = run_child([*rd, "--config", str(policy), "plan", "--json"], env=env)
    _must(plan, "retentiond plan")
    plan_doc = json.loads(plan["stdout"])
    if plan_doc["totals"]["due"] != expect_due:
        raise SystemExit(f"bench: plan says {plan_doc['totals']['due']} due, expected {expect_due}")
    if profile is not None:
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "retentiond",
                "--config", str(policy), "run", "--json"]
    else:
        argv = [*rd, "--config", str(policy), "run", "--json"]
    res = run_child(argv, env=env)
    _must(res, "retentiond run")
    doc = json.loads(res["stdout"])
    con = sqlite3.connect(state)
    try:
        started, finished = con.execute(
            "SELECT started_at, finished_at FROM runs WHERE id = ?", (doc["run_id"],)).fetchone()
    finally:
        con.close()
    inner = (datetime.fromisoformat(str(finished)) - datetime.fromisoformat(str(started)))
    verify = run_child([*rd, "--config", str(policy), "audit", "verify", "--json"], env=env)
    return {"wall": res["wall"], "inner": inner.total_seconds(), "rss_mb": res["rss_mb"],
            "deleted": doc["totals"]["done"], "failed": doc["totals"]["failed"],
            "plan_wall": plan["wall"], "plan_rss_mb": plan["rss_mb"],
            "verify_rc": verify["rc"], "verify_out": verify["stdout"].strip()[:300],
            "ledger": state, "policy": policy}


def bench_backend(backend: str, args: argparse.Namespace, work: Path, key_file: Path
                  ) -> dict[str, Any]:
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    tag = f"rdbench_{os.getpid()}"
    template = str(work / f"{backend}-template.db") if backend == "sqlite" else f"{tag}_tmpl"
    log(f"{backend}: building {args.rows:,} rows ...")
    build = {"backend": backend, "target": template, "rows": args.rows,
             "now": now.isoformat(), "pg_url": args.pg_url}
    res = run_child([sys.executable, str(Path(__file__).resolve()), "--_build",
                     json.dumps(build)])
    if res["rc"] != 0:  # a half-built template must not outlive the bench
        if backend == "postgresql":
            pg_drop(args.pg_url, template)
        else:
            Path(template).unlink(missing_ok=True)
    _must(res, "building the table")
    build_s = res["wall"]
    tmpl_url = f"sqlite:///{template}" if backend == "sqlite" else _pg_url(args.pg_url, template)
    cutoff = years_before(datetime.now(UTC).replace(tzinfo=None), 3)
    cut_param: Any = cutoff.isoformat(sep=" ") if backend == "sqlite" else cutoff
    due = count_rows(tmpl_url, "WHERE created_at <= ?", (cut_param,))
    log(f"{backend}: built in {build_s:.1f} s; {due:,} of {args.rows:,} rows due")

    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "retentiond": []}
    copies: list[str] = []
    try:
        for rep in range(args.repeat):
            order = ["baseline", "retentiond"] if rep % 2 == 0 else ["retentiond", "baseline"]
            for who in order:
                url = clone(backend, template, f"{tag}_{who}", work, args.pg_url)
                copies.append(url)
                if who == "baseline":
                    r = run_baseline(url, work, key_file, args.batch, f"{backend}-{rep}")
                else:
                    r = run_retentiond(url, work, key_file, args.batch, f"{backend}-{rep}", due)
                r["remaining"] = count_rows(url)
                r["remaining_due"] = count_rows(url, "WHERE created_at <= ?", (cut_param,))
                r["refs"] = ledger_digest(r.pop("ledger"))
                runs[who].append(r)
                log(f"{backend} rep {rep + 1}/{args.repeat} {who:10s}: {r['deleted']:,} deleted "
                    f"in {r['wall']:.2f} s wall ({r['inner']:.2f} s inside), "
                    f"peak RSS {r['rss_mb']:.1f} MB"
                    + (f", plan {r['plan_wall']:.2f} s, audit verify rc={r['verify_rc']}"
                       if who == "retentiond" else ""))
                drop_copy(backend, url, args.pg_url)
                copies.remove(url)
        profile_out = None
        if args.profile:
            url = clone(backend, template, f"{tag}_profile", work, args.pg_url)
            copies.append(url)
            profile_out = work / f"retentiond-{backend}.pstats"
            log(f"{backend}: profiling one retentiond run -> {profile_out}")
            run_retentiond(url, work, key_file, args.batch, f"{backend}-profile", due,
                           profile=profile_out)
            drop_copy(backend, url, args.pg_url)
            copies.remove(url)
    finally:
        for url in copies:
            drop_copy(backend, url, args.pg_url)
        if backend == "postgresql":
            pg_drop(args.pg_url, template)
        else:
            Path(template).unlink(missing_ok=True)
    return summarise(backend, args, due, build_s, runs, profile_out)


def summarise(backend: str, args: argparse.Namespace, due: int, build_s: float,
              runs: dict[str, list[dict[str, Any]]], profile_out: Path | None) -> dict[str, Any]:
    problems = []
    expected_left = args.rows - due
    for who, rs in runs.items():
        for i, r in enumerate(rs):
            if r["deleted"] != due:
                problems.append(f"{who} run {i + 1} deleted {r['deleted']}, expected {due}")
            if r["remaining"] != expected_left or r["remaining_due"] != 0:
                problems.append(f"{who} run {i + 1} left {r['remaining']} rows "
                                f"({r['remaining_due']} still due)")
            if r["refs"][0] != due:
                problems.append(f"{who} run {i + 1} ledgered {r['refs'][0]} refs, expected {due}")
            if who == "retentiond" and (r["verify_rc"] != 0 or r["failed"]):
                problems.append(f"retentiond run {i + 1}: audit verify rc={r['verify_rc']}, "
                                f"failed={r['failed']}")
    digests = {r["refs"][1] for rs in runs.values() for r in rs}
    if len(digests) != 1:
        problems.append("the contenders' ledgers name different records")

    def med(who: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[who])

    b, rd = med("baseline", "wall"), med("retentiond", "wall")
    b_in, rd_in = med("baseline", "inner"), med("retentiond", "inner")
    out = {
        "backend": backend, "rows": args.rows, "due": due, "batch": args.batch,
        "repeat": args.repeat, "build_seconds": round(build_s, 2),
        "baseline": {"deleted": runs["baseline"][0]["deleted"], "seconds": round(b, 3),
                     "rows_per_s": round(due / b), "inner_seconds": round(b_in, 3),
                     "peak_rss_mb": round(med("baseline", "rss_mb"), 1),
                     "all_seconds": [round(r["wall"], 3) for r in runs["baseline"]]},
        "retentiond": {"deleted": runs["retentiond"][0]["deleted"], "seconds": round(rd, 3),
                       "rows_per_s": round(due / rd), "inner_seconds": round(rd_in, 3),
                       "peak_rss_mb": round(max(r["rss_mb"] for r in runs["retentiond"]), 1),
                       "plan_seconds": round(med("retentiond", "plan_wall"), 3),
                       "plan_peak_rss_mb": round(max(r["plan_rss_mb"]
                                                     for r in runs["retentiond"]), 1),
                       "audit_verify": all(r["verify_rc"] == 0 for r in runs["retentiond"]),
                       "all_seconds": [round(r["wall"], 3) for r in runs["retentiond"]],
                       "all_plan_seconds": [round(r["plan_wall"], 3)
                                            for r in runs["retentiond"]]},
        "ratio": round(b / rd, 3),
        "ratio_inner": round(b_in / rd_in, 3),
        "targets": {"ratio_ge_0_8": b / rd >= 0.8,
                    "rss_lt_200mb": max(r["rss_mb"] for r in runs["retentiond"]) < 200,
                    "plan_lt_2s": med("retentiond", "plan_wall") < 2.0},
        "ok": not problems, "problems": problems,
    }
    if profile_out is not None:
        out["profile"] = str(profile_out)
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    def yes(v: bool) -> str:
        return "ok" if v else "MISS"

    for r in results:
        b, rd = r["baseline"], r["retentiond"]
        print(f"\n{r['backend']}: {r['rows']:,} rows, {r['due']:,} due, batch {r['batch']}, "
              f"median of {r['repeat']} (table built in {r['build_seconds']} s)")
        print(f"  {'contender':<12}{'deleted':>10}{'seconds':>10}{'rows/s':>10}"
              f"{'in-run s':>10}{'peak RSS MB':>13}")
        for name, c in (("baseline", b), ("retentiond", rd)):
            print(f"  {name:<12}{c['deleted']:>10,}{c['seconds']:>10.2f}{c['rows_per_s']:>10,}"
                  f"{c['inner_seconds']:>10.2f}{c['peak_rss_mb']:>13.1f}")
        t = r["targets"]
        print(f"  throughput retentiond/baseline: {r['ratio']:.3f} (target >= 0.8: "
              f"{yes(t['ratio_ge_0_8'])}; in-run only: {r['ratio_inner']:.3f})")
        print(f"  retentiond peak RSS: {rd['peak_rss_mb']:.1f} MB (target < 200: "
              f"{yes(t['rss_lt_200mb'])})")
        print(f"  retentiond plan: {rd['plan_seconds']:.2f} s (target < 2: "
              f"{yes(t['plan_lt_2s'])}), peak RSS {rd['plan_peak_rss_mb']:.1f} MB")
        print(f"  audit verify: {'ok' if rd['audit_verify'] else 'FAILED'}; runs (s): baseline "
              f"{b['all_seconds']}, retentiond {rd['all_seconds']}")
        if r.get("profile"):
            print(f"  profile: {r['profile']}")
        for p in r["problems"]:
            print(f"  PROBLEM: {p}")


def print_profile(path: Path) -> None:
    import pstats

    for order in ("cumulative", "tottime"):
        print(f"\n--- {path.name}, top 25 by {order} ---", file=sys.stderr)
        pstats.Stats(str(path), stream=sys.stderr).sort_stats(order).print_stats(25)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3,
                   help="repetitions per backend, alternating order; medians are reported")
    p.add_argument("--pg-url", default=DEFAULT_PG,
                   help="admin URL of the PostgreSQL server (default $RETENTIOND_BENCH_PG or "
                        "%(default)s); the bench creates and drops its own databases")
    p.add_argument("--workdir", help="where files go (default: a fresh directory in /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--profile", action="store_true",
                   help="also run retentiond once under cProfile per backend and print the top "
                        "entries (kept in the work directory)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--source", help="run retentiond from this source tree (put first on "
                   "PYTHONPATH), e.g. a `git archive` snapshot, to compare versions")
    p.add_argument("--_baseline", help=argparse.SUPPRESS)
    p.add_argument("--_build", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._baseline:
        print(json.dumps(baseline(json.loads(args._baseline))))
        return 0
    if args._build:
        b = json.loads(args._build)
        if b["backend"] == "sqlite":
            build_sqlite(Path(b["target"]), b["rows"], datetime.fromisoformat(b["now"]))
        else:
            build_postgresql(b["pg_url"], b["target"], b["rows"], datetime.fromisoformat(b["now"]))
        return 0
    if args.source:
        src = Path(args.source).resolve()
        if not (src / "retentiond" / "__init__.py").is_file():
            p.error(f"--source {src}: no retentiond package there")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(src)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    if args.rows < 1000 or args.batch < 1 or args.repeat < 1:
        p.error("--rows must be >= 1000, --batch and --repeat >= 1")

    work = Path(args.workdir or tempfile.mkdtemp(prefix="retentiond-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    key_file = work / "secret.key"
    key_file.write_text(secrets.token_hex(32) + "\n")
    key_file.chmod(0o600)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = []
    try:
        for backend in backends:
            results.append(bench_backend(backend, args, work, key_file))
    finally:
        if not args.keep and not args.profile:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    for r in results:
        if r.get("profile"):
            print_profile(Path(r["profile"]))
    if args.json:
        import resource

        print(json.dumps({"rows": args.rows, "batch": args.batch, "repeat": args.repeat,
                          "retentiond_source": args.source or "installed",
                          "bench_process_peak_rss_mb": round(
                              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                          "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
                          "results": results}, indent=2))
    else:
        print_table(results)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
