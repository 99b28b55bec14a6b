"""Failing-records benchmark (issue 11): a sweep where every due record fails costs at most 5x
a clean sweep of the same size.

Two identical tables of N rows, 40% due; on one a BEFORE DELETE trigger raises for every row
(SQLite ``RAISE(ABORT)``, PostgreSQL plpgsql ``RAISE EXCEPTION``), so every batch's statement
fails and its records are found failing one by one (retentiond/adapters/sqlsplit.py). Both
sweeps run as ``retentiond run --json`` children; the time compared is the run's own (the
``runs`` row: started_at to finished_at), wall time is printed too.

Usage (from the project root)::

    .venv/bin/python bench/failing.py [--rows 50000] [--backend sqlite|postgresql|both]
                                      [--batch 5000] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # bench/ is not a package: failing.py runs as a script
    DEFAULT_PG,
    _pg,
    _pg_url,
    child_env,
    fresh_state,
    log,
    new_key_file,
    pg_drop,
    retentiond_argv,
    run_child,
)

TRIGGERS = {
    "sqlite": ["CREATE TRIGGER guard BEFORE DELETE ON events "
               "BEGIN SELECT RAISE(ABORT, 'kept by a trigger'); END"],
    "postgresql": ["CREATE FUNCTION guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   "RAISE EXCEPTION 'kept by a trigger'; END $$",
                   "CREATE TRIGGER guard BEFORE DELETE ON events FOR EACH ROW "
                   "EXECUTE FUNCTION guard()"],
}
DDL = ("CREATE TABLE events (id INTEGER PRIMARY KEY, created_at TIMESTAMP NOT NULL, "
       "note VARCHAR(40) NOT NULL)")


def rows(n: int) -> list[tuple[int, datetime, str]]:
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    old, new = now - timedelta(days=2000), now - timedelta(days=5)
    return [(i, old if i % 5 < 2 else new, f"note {i}") for i in range(1, n + 1)]


def make_store(backend: str, work: Path, name: str, n: int, failing: bool,
               admin: str) -> str:
    statements = [DDL, "CREATE INDEX ix_events_created ON events (created_at)"]
    statements += TRIGGERS[backend] if failing else []
    if backend == "sqlite":
        path = work / f"{name}.db"
        path.unlink(missing_ok=True)
        con = sqlite3.connect(path)
        with con:
            for sql in statements[:2]:
                con.execute(sql)
            con.executemany("INSERT INTO events VALUES (?, ?, ?)",
                            [(i, t.isoformat(" "), s) for i, t, s in rows(n)])
            for sql in statements[2:]:
                con.execute(sql)
        con.close()
        return f"sqlite:///{path}"
    pg_drop(admin, name)
    with _pg(admin) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    url = _pg_url(admin, name)
    with _pg(url) as con:
        con.execute(statements[0])
        con.execute(statements[1])
        with con.cursor() as cur, cur.copy("COPY events FROM STDIN") as copy:
            for r in rows(n):
                copy.write_row(r)
        for sql in statements[2:]:
            con.execute(sql)
        con.execute("VACUUM ANALYZE events")
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def sweep(url: str, work: Path, key: Path, batch: int) -> dict[str, Any]:
    state = work / "state.db"
    fresh_state(state)
    policy = work / "policy.yaml"
    policy.write_text(json.dumps({
        "version": 1, "state": f"sqlite:///{state}", "secret_key": {"file": str(key)},
        "batch_size": batch, "stores": {"app": {"adapter": "sql", "url": url}},
        "rules": [{"id": "old-events", "store": "app", "table": "events", "key": "id",
                   "clock": "created_at", "dispose_after": "1y", "action": "delete"}]}))
    res = run_child([*retentiond_argv(), "--config", str(policy), "run", "--json"],
                    env=child_env())
    if res["rc"] not in (0, 1):
        sys.stderr.write(res["stderr"][-4000:])
        raise SystemExit(f"bench: retentiond run failed with exit code {res['rc']}")
    doc = json.loads(res["stdout"])
    con = sqlite3.connect(state)
    try:
        started, finished = con.execute("SELECT started_at, finished_at FROM runs WHERE id = ?",
                                        (doc["run_id"],)).fetchone()
    finally:
        con.close()
    inner = datetime.fromisoformat(str(finished)) - datetime.fromisoformat(str(started))
    rule = doc["rules"][0]
    return {"inner": inner.total_seconds(), "wall": res["wall"], "done": rule["done"],
            "failed": rule["failed"], "error": rule.get("error")}


def bench(backend: str, n: int, batch: int, repeat: int, admin: str) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rd-failing-"))
    key = new_key_file(work)
    runs: dict[str, list[dict[str, Any]]] = {"clean": [], "failing": []}
    try:
        for rep in range(repeat):
            order = ("clean", "failing") if rep % 2 == 0 else ("failing", "clean")
            for kind in order:
                name = f"rdfail_{kind}"
                url = make_store(backend, work, name, n, kind == "failing", admin)
                runs[kind].append(sweep(url, work, key, batch))
                log(f"{backend} {kind}: {runs[kind][-1]}")
    finally:
        if backend == "postgresql":
            for kind in runs:
                pg_drop(admin, f"rdfail_{kind}")
        shutil.rmtree(work, ignore_errors=True)
    clean = statistics.median(r["inner"] for r in runs["clean"])
    failing = statistics.median(r["inner"] for r in runs["failing"])
    return {"backend": backend, "rows": n, "due": n * 2 // 5, "batch": batch,
            "clean_s": round(clean, 3), "failing_s": round(failing, 3),
            "ratio": round(failing / clean, 2), "target": 5.0,
            "clean": runs["clean"][-1], "failing": runs["failing"][-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--pg-url", default=DEFAULT_PG)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    results = [bench(b, args.rows, args.batch, args.repeat, args.pg_url) for b in backends]
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return
    for r in results:
        print(f"{r['backend']:<10} rows={r['rows']} due={r['due']} batch={r['batch']}: "
              f"clean {r['clean_s']:.3f} s, every due record failing {r['failing_s']:.3f} s, "
              f"ratio {r['ratio']:.2f}x (target <= {r['target']:.0f}x)")


if __name__ == "__main__":
    main()
