"""Anonymise benchmark: retentiond's anonymize action vs hand-written SQL and Python.

Two comparisons per backend (SQLite, PostgreSQL) on an N-row ``users`` table, 40% due:

* set-based: a rule with only SQL-expressible strategies (``name: null``, ``birth_date:
  truncate_date year``, ``salary: round 1000``) vs ONE hand-written ``UPDATE`` over every due
  row (no ledger) and vs a hand-written keyset-batched ``UPDATE ... RETURNING`` loop that writes
  the same per-record HMAC ledger as retentiond;
* hmac: a rule with ``email: {strategy: hmac, format: email}`` (computed in Python, written with
  one executemany per batch) vs a hand-written keyset-batched loop that reads the batch, computes
  the HMAC-SHA256 pseudonyms, writes them with one executemany and writes the ledger.

Usage (from the project root)::

    .venv/bin/python bench/anonymize.py [--rows 1000000] [--backend sqlite|postgresql|both]
                                        [--batch 5000] [--repeat 2] [--source DIR] [--json]

See bench/README.md. Every contender runs as a child process on its own fresh copy of one
generated table; the order alternates between repetitions and medians are reported. Afterwards
every copy is digested (all rows ordered by id, every column but the marker): the contenders of
a comparison must leave identical tables, with exactly the due rows marked.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # bench/ is not a package: anonymize.py runs as a script
    DUE_PER_MILLE,
    MIX,
    STORE,
    BaselineLedger,
    _pg,
    _pg_url,
    bench_process_peak_rss_mb,
    clone,
    cutoff_3y,
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
    scalar,
    shared_arguments,
    use_source,
    workdir,
)

TARGET = "users"         # refs are HMAC(key, "store\0users\0<id>")
RULE_SQL = "old-users-sql"
RULE_PY = "old-users-{}"   # per Python-computed strategy: old-users-hmac, -mask, -fake
DOMAIN = "anonymized.invalid"   # retentiond's default domain for hmac with format: email
COLUMNS = "id, email, name, birth_date, salary, created_at"   # what the digest covers

# The contenders, by comparison. The first of each group is retentiond.
SET_GROUP = ("retentiond-sql", "one-update", "keyset-sql")
# The Python-computed strategies, each on the e-mail column, each against the same hand-written
# loop (keyset read, the value computed as retentiond computes it, one driver-level executemany
# per batch, the ledger). fake is opt-in (--strategies): Faker costs ~0.2 ms a row for both.
PY_STRATEGIES = {
    "hmac": "{strategy: hmac, format: email}",
    "mask": "{strategy: mask, keep_first: 1, format: email}",
    "fake": "{strategy: fake, provider: email, deterministic: true}",
}
HMAC_GROUP = ("retentiond-hmac", "keyset-hmac")


def py_group(strategy: str) -> tuple[str, str]:
    return f"retentiond-{strategy}", f"keyset-{strategy}"


def groups(strategies: list[str]) -> list[tuple[str, ...]]:
    return [SET_GROUP, *(py_group(x) for x in strategies)]
LABELS = {
    "retentiond-sql": "retentiond (null, truncate_date, round)",
    "one-update": "hand-written: ONE UPDATE, no ledger",
    "keyset-sql": "hand-written: keyset-batched UPDATE ... RETURNING + ledger",
    "retentiond-hmac": "retentiond (email: hmac, format email)",
    "keyset-hmac": "hand-written: keyset read + HMAC + executemany + ledger",
    "retentiond-mask": "retentiond (email: mask keep_first 1, format email)",
    "keyset-mask": "hand-written: keyset read + mask + executemany + ledger",
    "retentiond-fake": "retentiond (email: fake email, deterministic)",
    "keyset-fake": "hand-written: keyset read + Faker + executemany + ledger",
}


# ==============================================================================================
# Data generation (set-based, in a child process: `bench/anonymize.py --_build JSON`)
# ==============================================================================================
DDL = ("CREATE TABLE users (id integer primary key, email varchar(200) not null, name text, "
       "birth_date date, salary integer, created_at timestamp, anonymized_at timestamp)")


def build_sqlite(path: Path, rows: int, now: datetime) -> None:
    """A fresh SQLite file with ``rows`` users, 40% due, index on created_at, in WAL mode."""
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-65536")
    con.execute(DDL)
    now_jd = con.execute("SELECT julianday(?)", (now.strftime("%Y-%m-%d %H:%M:%S"),)).fetchone()[0]
    epoch_jd = con.execute("SELECT julianday('1950-01-01')").fetchone()[0]
    # due: 1100..1799 days old (> 3 calendar years); not due: 0..999 days old (< 3 years).
    # Some names, birth dates and salaries are NULL (a NULL must stay NULL); salaries include
    # every multiple of 500 (the rounding ties).
    con.execute("BEGIN")
    con.execute(f"""
        WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < :n)
        INSERT INTO users (id, email, name, birth_date, salary, created_at)
        SELECT i, 'user' || i || '@example.com',
               CASE WHEN i % 50 = 7 THEN NULL
                    ELSE 'Given' || (i % 997) || ' Family' || (i % 1009) END,
               CASE WHEN i % 50 = 11 THEN NULL ELSE date(:epoch + (i * 7919) % 20000) END,
               CASE WHEN i % 40 = 3 THEN NULL ELSE 20000 + (i * 37) % 180000 END,
               datetime(:jd - CASE WHEN (i * {MIX}) % 1000 < {DUE_PER_MILLE}
                                   THEN 1100 + (i % 700) ELSE (i % 1000) END
                            - (i % 86400) / 86400.0)
        FROM c""", {"n": rows, "jd": now_jd, "epoch": epoch_jd})
    con.execute("CREATE INDEX ix_users_created_at ON users (created_at)")
    con.execute("COMMIT")
    con.execute("ANALYZE")
    con.execute("PRAGMA journal_mode=WAL")   # persistent; what retentiond's engine sets anyway
    con.close()


def build_postgresql(admin_url: str, dbname: str, rows: int, now: datetime) -> None:
    pg_drop(admin_url, dbname)
    with _pg(admin_url) as con:
        con.execute(f'CREATE DATABASE "{dbname}"')
    with _pg(_pg_url(admin_url, dbname)) as con:
        con.execute(DDL)
        con.execute("SET maintenance_work_mem = '256MB'")
        con.execute(f"""
            INSERT INTO users (id, email, name, birth_date, salary, created_at)
            SELECT i, 'user' || i || '@example.com',
                   CASE WHEN i %% 50 = 7 THEN NULL
                        ELSE 'Given' || (i %% 997) || ' Family' || (i %% 1009) END,
                   CASE WHEN i %% 50 = 11 THEN NULL
                        ELSE date '1950-01-01' + ((i::bigint * 7919) %% 20000)::int END,
                   CASE WHEN i %% 40 = 3 THEN NULL ELSE 20000 + (i::bigint * 37) %% 180000 END,
                   %(now)s::timestamp - make_interval(
                       days => CASE WHEN (i::bigint * {MIX}) %% 1000 < {DUE_PER_MILLE}
                                    THEN 1100 + (i %% 700) ELSE (i %% 1000) END,
                       secs => (i %% 86400))
            FROM generate_series(1, %(n)s) AS g(i)""", {"n": rows, "now": now})
        con.execute("CREATE INDEX ix_users_created_at ON users (created_at)")
        con.execute("VACUUM ANALYZE users")


# ==============================================================================================
# The hand-written contenders (child processes: `bench/anonymize.py --_baseline JSON`)
# ==============================================================================================
# What a DBA writes for "name: null, birth_date: truncate to the year, salary: round to 1000".
SET_SQLITE = ("name = NULL, birth_date = strftime('%Y-01-01', birth_date), "
              "salary = round(salary / 1000.0) * 1000, anonymized_at = ?")
SET_PG = ("name = NULL, birth_date = date_trunc('year', birth_date)::date, "
          "salary = round(salary / 1000.0) * 1000, anonymized_at = %s")
DUE = "created_at <= {p} AND anonymized_at IS NULL"
NEXT = "SELECT id FROM users WHERE " + DUE + " AND id > {p} ORDER BY id LIMIT {p}"
SQL = {
    ("one-update", "sqlite"): f"UPDATE users SET {SET_SQLITE} WHERE {DUE.format(p='?')}",
    ("one-update", "postgresql"): f"UPDATE users SET {SET_PG} WHERE {DUE.format(p='%s')}",
    ("keyset-sql", "sqlite"): (f"UPDATE users SET {SET_SQLITE} WHERE id IN "
                               f"({NEXT.format(p='?')}) RETURNING id"),
    # PostgreSQL plans `id IN (SELECT ... LIMIT n)` as a semi-join over a scan of the whole
    # table; `id = ANY(ARRAY(SELECT ...))` is an InitPlan plus primary-key lookups (as in
    # sweep.py's baseline and retentiond's delete fast path).
    ("keyset-sql", "postgresql"): (f"UPDATE users SET {SET_PG} WHERE id = ANY(ARRAY("
                                   f"{NEXT.format(p='%s')})) RETURNING id"),
    ("keyset-py", "sqlite"): (f"SELECT id, email FROM users WHERE {DUE.format(p='?')} "
                                "AND id > ? ORDER BY id LIMIT ?"),
    ("keyset-py", "postgresql"): (f"SELECT id, email FROM users WHERE {DUE.format(p='%s')} "
                                    "AND id > %s ORDER BY id LIMIT %s FOR UPDATE"),
    ("write-py", "sqlite"): "UPDATE users SET email = ?, anonymized_at = ? WHERE id = ?",
    ("write-py", "postgresql"): "UPDATE users SET email = %s, anonymized_at = %s WHERE id = %s",
}


class _Store:
    """One store connection, one transaction per ``tx()`` block (BEGIN IMMEDIATE on SQLite, as
    retentiond takes the write lock before reading a batch). SQLite's synchronous setting is
    left at its default, as retentiond leaves a store's."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            self.con: Any = sqlite3.connect(url.split(":///", 1)[1], isolation_level=None)
            self.con.execute("PRAGMA journal_mode=WAL")
        else:
            import psycopg

            self.con = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))

    def begin(self) -> Any:
        if self.sqlite:
            self.con.execute("BEGIN IMMEDIATE")
            return self.con
        return self.con.cursor()

    def commit(self, cur: Any) -> None:
        if self.sqlite:
            self.con.execute("COMMIT")
        else:
            cur.close()
            self.con.commit()

    def close(self) -> None:
        self.con.close()


def python_value(strategy: str, secret: bytes) -> Any:
    """What the hand-written loop writes for an e-mail address, computed as retentiond's
    strategy computes it (the table digests check that it is the same value)."""
    if strategy == "hmac":
        return lambda email: hmac.digest(secret, email.encode(), "sha256").hex() + "@" + DOMAIN
    if strategy == "mask":
        def mask(email: str) -> str:
            local, _, domain = email.rpartition("@")
            kept = "*" * len(local) if len(local) <= 1 else local[0] + "*" * (len(local) - 1)
            return f"{kept}@{domain}"
        return mask
    from faker import Faker

    faker = Faker()

    def fake(email: str) -> str:
        faker.seed_instance(int(hmac.digest(secret, email.encode(), "sha256").hex()[:16], 16))
        return str(faker.email())
    return fake


def baseline(cfg: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    mode, url, batch = cfg["mode"], cfg["url"], int(cfg["batch"])
    store = _Store(url)
    backend = "sqlite" if store.sqlite else "postgresql"
    now = datetime.now(UTC).replace(tzinfo=None)
    cutoff: Any = cutoff_3y()
    marker: Any = now
    if store.sqlite:
        cutoff, marker = cutoff.isoformat(sep=" "), now.isoformat(sep=" ")
    done, batches = 0, 0
    if mode == "one-update":
        cur = store.begin()
        done = cur.execute(SQL[mode, backend], (marker, cutoff)).rowcount
        store.commit(cur)
        store.close()
        return {"done": done, "batches": 1, "seconds": time.perf_counter() - t0}

    rule = RULE_SQL if mode == "keyset-sql" else RULE_PY.format(mode.split("-", 1)[1])
    led = BaselineLedger(cfg["ledger"], cfg["key_file"], TARGET, rule, "anonymize")
    secret = Path(cfg["key_file"]).read_bytes().rstrip(b"\r\n")
    value = None if mode == "keyset-sql" else python_value(mode.split("-", 1)[1], secret)
    last = 0
    while True:
        cur = store.begin()
        if mode == "keyset-sql":
            ids = [r[0] for r in cur.execute(SQL[mode, backend], (marker, cutoff, last, batch))]
        else:
            assert value is not None
            rows = cur.execute(SQL["keyset-py", backend], (cutoff, last, batch)).fetchall()
            ids = [r[0] for r in rows]
            if rows:
                cur.executemany(SQL["write-py", backend],
                                [(value(email), marker, i) for i, email in rows])
        store.commit(cur)
        if not ids:
            break
        last = max(ids)
        led.record(ids)
        done += len(ids)
        batches += 1
        if len(ids) < batch:
            break
    store.close()
    led.close()
    return {"done": done, "batches": batches, "seconds": time.perf_counter() - t0}


# ==============================================================================================
# Running the contenders
# ==============================================================================================
def write_policy(path: Path, store_url: str, state: Path, key_file: Path, batch: int,
                 kind: str) -> None:
    if kind == "sql":
        rule, what = RULE_SQL, "the name, birth date and salary"
        columns = """\
        name: {strategy: "null"}
        birth_date: {strategy: truncate_date, unit: year}
        salary: {strategy: round, step: 1000}"""
    else:
        rule, what = RULE_PY.format(kind), "the e-mail address"
        columns = f"""\
        email: {PY_STRATEGIES[kind]}"""
    path.write_text(f"""\
# generated by bench/anonymize.py
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
  - id: {rule}
    description: Three years after sign-up {what} of a user are anonymised (benchmark rule).
    source: "bench/anonymize.py"
    store: {STORE}
    table: {TARGET}
    key: id
    clock: created_at
    keep_for: 3y
    dispose_after: 3y
    action: anonymize
    anonymize:
      marker: anonymized_at
      columns:
{columns}
""")


def run_contender(who: str, url: str, work: Path, key_file: Path, batch: int, tag: str,
                  profile: Path | None = None) -> dict[str, Any]:
    if who.startswith("retentiond"):
        state = work / f"state-{tag}.db"
        fresh_state(state)
        policy = work / f"policy-{tag}.yaml"
        write_policy(policy, url, state, key_file, batch, who.split("-", 1)[1])
        retentiond_upgrade(policy)
        r = retentiond_run(policy, state, profile)
        return {"wall": r["wall"], "inner": r["inner"], "rss_mb": r["rss_mb"],
                "done": r["done"], "failed": r["failed"], "verify_rc": r["verify_rc"],
                "verify_out": r["verify_out"], "ledger": state}
    ledger = work / f"baseline-ledger-{tag}.db"
    fresh_state(ledger)
    cfg = {"mode": who, "url": url, "ledger": str(ledger), "key_file": str(key_file),
           "batch": batch}
    res = run_child([sys.executable, str(Path(__file__).resolve()), "--_baseline",
                     json.dumps(cfg)])
    must(res, f"baseline {who}")
    inner = json.loads(res["stdout"])
    return {"wall": res["wall"], "inner": inner["seconds"], "rss_mb": res["rss_mb"],
            "done": inner["done"], "batches": inner["batches"],
            "ledger": ledger if who != "one-update" else None}


def table_digest(url: str) -> str:
    """SHA-256 over every row (ordered by id) of every column but the marker, streamed so the
    bench process stays small (its peak RSS would be inherited by later children)."""
    h = hashlib.sha256()
    sql = f"SELECT {COLUMNS} FROM users ORDER BY id"
    if url.startswith("sqlite"):
        con = sqlite3.connect(url.split(":///", 1)[1])
        try:
            cur = con.execute(sql)
            while rows := cur.fetchmany(10_000):
                for row in rows:
                    h.update(repr(row).encode())
        finally:
            con.close()
    else:
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
            with con.cursor(name="bench_digest") as cur:
                cur.itersize = 10_000
                cur.execute(sql)
                while rows := cur.fetchmany(10_000):
                    for row in rows:
                        h.update(repr(row).encode())
            con.rollback()
    return h.hexdigest()


def check_copy(url: str, cut: Any) -> dict[str, Any]:
    """The digest and marker counts of a copy, computed in a child process (`--_check`): the
    bench process stays small, so it does not raise the peak RSS its later children report."""
    cfg = {"url": url, "cut": cut if isinstance(cut, str) else cut.isoformat()}
    res = run_child([sys.executable, str(Path(__file__).resolve()), "--_check",
                     json.dumps(cfg)])
    must(res, "checking a copy")
    return dict(json.loads(res["stdout"]))


def _check(cfg: dict[str, Any]) -> dict[str, Any]:
    url = cfg["url"]
    cut: Any = cfg["cut"] if url.startswith("sqlite") else datetime.fromisoformat(cfg["cut"])
    marked = "SELECT count(*) FROM users WHERE anonymized_at IS NOT NULL"
    return {"digest": table_digest(url), "marked": int(scalar(url, marked)),
            "marked_due": int(scalar(url, marked + " AND created_at <= ?", (cut,)))}


def bench_backend(backend: str, args: argparse.Namespace, work: Path, key_file: Path
                  ) -> dict[str, Any]:
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    tag = f"rdbench_{os.getpid()}"
    template = str(work / f"{backend}-users.db") if backend == "sqlite" else f"{tag}_users"
    log(f"{backend}: building {args.rows:,} users ...")
    build = {"backend": backend, "target": template, "rows": args.rows,
             "now": now.isoformat(), "pg_url": args.pg_url}
    res = run_child([sys.executable, str(Path(__file__).resolve()), "--_build",
                     json.dumps(build)])
    if res["rc"] != 0:  # a half-built template must not outlive the bench
        drop_template(backend, template, args.pg_url)
    must(res, "building the table")
    build_s = res["wall"]
    tmpl_url = f"sqlite:///{template}" if backend == "sqlite" else _pg_url(args.pg_url, template)
    cut: Any = cutoff_3y()
    if backend == "sqlite":
        cut = cut.isoformat(sep=" ")
    due = int(scalar(tmpl_url, "SELECT count(*) FROM users WHERE created_at <= ?", (cut,)))
    log(f"{backend}: built in {build_s:.1f} s; {due:,} of {args.rows:,} rows due")

    all_groups = groups(args.strategies)
    runs: dict[str, list[dict[str, Any]]] = {w: [] for g in all_groups for w in g}
    copies: list[str] = []
    profiles: dict[str, str] = {}
    try:
        for rep in range(args.repeat):
            for group in all_groups:
                order = list(group) if rep % 2 == 0 else list(reversed(group))
                for who in order:
                    url = clone(backend, template, f"{tag}_{who.replace('-', '_')}", work,
                                args.pg_url)
                    copies.append(url)
                    r = run_contender(who, url, work, key_file, args.batch,
                                      f"{backend}-{who}-{rep}")
                    r |= check_copy(url, cut)
                    ledger = r.pop("ledger")
                    r["refs"] = ledger_digest(ledger) if ledger else None
                    runs[who].append(r)
                    log(f"{backend} rep {rep + 1}/{args.repeat} {who:16s}: {r['done']:,} rows "
                        f"in {r['wall']:.2f} s wall ({r['inner']:.2f} s inside), "
                        f"peak RSS {r['rss_mb']:.1f} MB, {r['marked']:,} marked"
                        + (f", audit verify rc={r['verify_rc']}" if "verify_rc" in r else ""))
                    drop_copy(backend, url, args.pg_url)
                    copies.remove(url)
        if args.profile:
            for who in [g[0] for g in all_groups]:
                url = clone(backend, template, f"{tag}_profile", work, args.pg_url)
                copies.append(url)
                out = work / f"{who}-{backend}.pstats"
                log(f"{backend}: profiling one {who} run -> {out}")
                run_contender(who, url, work, key_file, args.batch, f"{backend}-{who}-profile",
                              profile=out)
                profiles[who] = str(out)
                drop_copy(backend, url, args.pg_url)
                copies.remove(url)
    finally:
        for url in copies:
            drop_copy(backend, url, args.pg_url)
        drop_template(backend, template, args.pg_url)
    return summarise(backend, args, due, build_s, runs, profiles)


def summarise(backend: str, args: argparse.Namespace, due: int, build_s: float,
              runs: dict[str, list[dict[str, Any]]], profiles: dict[str, str]
              ) -> dict[str, Any]:
    problems: list[str] = []
    for who, rs in runs.items():
        for i, r in enumerate(rs):
            if r["done"] != due:
                problems.append(f"{who} run {i + 1} anonymised {r['done']}, expected {due}")
            if r["marked"] != due or r["marked_due"] != due:
                problems.append(f"{who} run {i + 1} marked {r['marked']} rows "
                                f"({r['marked_due']} of them due), expected exactly the {due} due")
            if r["refs"] is not None and r["refs"][0] != due:
                problems.append(f"{who} run {i + 1} ledgered {r['refs'][0]} refs, expected {due}")
            if who.startswith("retentiond") and (r["verify_rc"] != 0 or r["failed"]):
                problems.append(f"{who} run {i + 1}: audit verify rc={r['verify_rc']}, "
                                f"failed={r['failed']}")
    for group in groups(args.strategies):
        if len({r["digest"] for who in group for r in runs[who]}) != 1:
            problems.append(f"{' / '.join(group)} left different column values")
    if "hmac" in args.strategies and len(
            {r["digest"] for r in runs[SET_GROUP[0]] + runs[HMAC_GROUP[0]]}) == 1:
        problems.append("the set-based and the hmac rule left identical tables (no-op?)")
    refs = {r["refs"][1] for rs in runs.values() for r in rs if r["refs"] is not None}
    if len(refs) != 1:
        problems.append("the contenders' ledgers name different records")

    def med(who: str, key: str) -> float:
        return float(statistics.median(r[key] for r in runs[who]))

    contenders = {}
    for who, rs in runs.items():
        s = med(who, "wall")
        contenders[who] = {
            "label": LABELS[who], "rows": rs[0]["done"], "seconds": round(s, 3),
            "rows_per_s": round(due / s), "inner_seconds": round(med(who, "inner"), 3),
            "inner_rows_per_s": round(due / med(who, "inner")),
            "peak_rss_mb": round(max(r["rss_mb"] for r in rs), 1),
            "writes_ledger": who != "one-update",
            "all_seconds": [round(r["wall"], 3) for r in rs],
        }
        if who.startswith("retentiond"):
            contenders[who]["audit_verify"] = all(r["verify_rc"] == 0 for r in rs)

    def ratio(base: str, rd: str, key: str = "wall") -> float:
        # > 1: retentiond is faster than the hand-written contender; < 1: slower.
        return round(med(base, key) / med(rd, key), 3)

    out = {
        "backend": backend, "rows": args.rows, "due": due, "batch": args.batch,
        "repeat": args.repeat, "build_seconds": round(build_s, 2),
        "strategies": args.strategies, "contenders": contenders,
        "ratios": {
            "sql_vs_one_update": ratio("one-update", "retentiond-sql"),
            "sql_vs_one_update_inner": ratio("one-update", "retentiond-sql", "inner"),
            "sql_vs_keyset": ratio("keyset-sql", "retentiond-sql"),
            "sql_vs_keyset_inner": ratio("keyset-sql", "retentiond-sql", "inner"),
            **{f"{x}_vs_keyset{suffix}": ratio(f"keyset-{x}", f"retentiond-{x}", key)
               for x in args.strategies for suffix, key in (("", "wall"), ("_inner", "inner"))},
        },
        "checks": {
            "identical_values_set_based": len({r["digest"] for w in SET_GROUP
                                               for r in runs[w]}) == 1,
            **{f"identical_values_{x}": len({r["digest"] for w in py_group(x)
                                             for r in runs[w]}) == 1 for x in args.strategies},
            "marked_exactly_due": all(r["marked"] == due == r["marked_due"]
                                      for rs in runs.values() for r in rs),
            "ledgers_name_same_records": len(refs) == 1,
            "audit_verify": all(r["verify_rc"] == 0 for w in runs if w.startswith("retentiond")
                                for r in runs[w]),
        },
        "ok": not problems, "problems": problems,
    }
    if profiles:
        out["profiles"] = profiles
    return out


def print_table(results: list[dict[str, Any]]) -> None:
    for r in results:
        c, q = r["contenders"], r["ratios"]
        print(f"\n{r['backend']}: {r['rows']:,} users, {r['due']:,} due "
              f"({r['due'] / r['rows']:.0%}), batch {r['batch']}, median of {r['repeat']} "
              f"(table built in {r['build_seconds']} s)")
        print(f"  {'contender':<60}{'seconds':>9}{'rows/s':>10}{'in-run s':>10}"
              f"{'in-run rows/s':>15}{'peak RSS MB':>13}")
        for group in groups(r["strategies"]):
            for who in group:
                x = c[who]
                print(f"  {x['label']:<60}{x['seconds']:>9.2f}{x['rows_per_s']:>10,}"
                      f"{x['inner_seconds']:>10.2f}{x['inner_rows_per_s']:>15,}"
                      f"{x['peak_rss_mb']:>13.1f}")
        print("  throughput ratio = hand-written seconds / retentiond seconds "
              "(> 1: retentiond faster)")
        print(f"  set-based vs ONE UPDATE (no ledger):    {q['sql_vs_one_update']:.3f} "
              f"(in-run {q['sql_vs_one_update_inner']:.3f})")
        print(f"  set-based vs keyset UPDATE + ledger:    {q['sql_vs_keyset']:.3f} "
              f"(in-run {q['sql_vs_keyset_inner']:.3f})")
        for x in r["strategies"]:
            print(f"  {x} vs keyset executemany + ledger:{' ' * (8 - len(x))}"
                  f"{q[f'{x}_vs_keyset']:.3f} (in-run {q[f'{x}_vs_keyset_inner']:.3f})")
        print(f"  retentiond peak RSS: set-based {c['retentiond-sql']['peak_rss_mb']:.1f} MB"
              + "".join(f", {x} {c[f'retentiond-{x}']['peak_rss_mb']:.1f} MB"
                        for x in r["strategies"]))
        k = r["checks"]
        same = all(v for n, v in k.items() if n.startswith("identical_values"))
        print(f"  checks: identical values {'ok' if same else 'FAILED'}"
              f", exactly the due rows marked {'ok' if k['marked_exactly_due'] else 'FAILED'}"
              f", ledgers {'ok' if k['ledgers_name_same_records'] else 'FAILED'}"
              f", audit verify {'ok' if k['audit_verify'] else 'FAILED'}")
        print("  runs (s): " + "; ".join(f"{w} {c[w]['all_seconds']}" for w in c))
        for who, path in r.get("profiles", {}).items():
            print(f"  profile {who}: {path}")
        for p in r["problems"]:
            print(f"  PROBLEM: {p}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared_arguments(p, repeat=2, profile_help=(
        "also run each retentiond rule once under cProfile per backend and print the top "
        "entries (kept in the work directory)"))
    p.add_argument("--_check", help=argparse.SUPPRESS)
    p.add_argument("--strategies", default="hmac,mask",
                   help="Python-computed strategies to compare, of hmac, mask, fake "
                        "(default %(default)s; fake costs ~0.2 ms a row in Faker)")
    args = p.parse_args(argv)
    args.strategies = [x for x in args.strategies.split(",") if x]
    if not set(args.strategies) <= set(PY_STRATEGIES):
        p.error(f"--strategies: choose from {', '.join(PY_STRATEGIES)}")
    if args._baseline:
        print(json.dumps(baseline(json.loads(args._baseline))))
        return 0
    if args._check:
        print(json.dumps(_check(json.loads(args._check))))
        return 0
    if args._build:
        b = json.loads(args._build)
        if b["backend"] == "sqlite":
            build_sqlite(Path(b["target"]), b["rows"], datetime.fromisoformat(b["now"]))
        else:
            build_postgresql(b["pg_url"], b["target"], b["rows"], datetime.fromisoformat(b["now"]))
        return 0
    problem = use_source(args.source)
    if problem:
        p.error(problem)
    if args.rows < 1000 or args.batch < 1 or args.repeat < 1:
        p.error("--rows must be >= 1000, --batch and --repeat >= 1")

    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results = []
    t0 = time.perf_counter()
    with workdir(args, "retentiond-bench-") as (work, key_file):
        for backend in backends:
            results.append(bench_backend(backend, args, work, key_file))
    log(f"done in {time.perf_counter() - t0:.0f} s")
    for r in results:
        for path in r.get("profiles", {}).values():
            print_profile(Path(path))
    if args.json:
        print(json.dumps({"rows": args.rows, "batch": args.batch, "repeat": args.repeat,
                          "retentiond_source": args.source or "installed",
                          "bench_process_peak_rss_mb": bench_process_peak_rss_mb(),
                          "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
                          "results": results}, indent=2))
    else:
        print_table(results)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
