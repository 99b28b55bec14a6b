"""Parallel stores benchmark (issue 13 part 2): four stores, one table each with N rows (40% due),
swept by

* one process with ``workers: 1``, ``2`` and ``4`` (one ``retentiond run``);
* two processes at once (``replicas-2``), each a ``retentiond run --rule ...`` over two of the
  stores, so each holds the leases of its two stores, sharing one state database.

Usage (from the project root)::

    .venv/bin/python bench/workers.py [--rows 200000] [--backend sqlite|postgresql]
                                      [--repeat 3] [--batch 5000] [--json]

Every configuration runs on fresh copies of one generated table per store (SQLite files or
PostgreSQL databases made from a template), as child processes, in a rotating order; the
state database is fresh per run (a SQLite file, or with ``--state postgresql`` a PostgreSQL
database). Reported: the median wall time from the first
process start to the last process exit, throughput in disposed records per second, and the
speed-up over ``workers: 1``. Every run must dispose exactly 40% of every store and pass
``audit verify``. See bench/README.md ("Parallel stores").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # bench/ is not a package: workers.py runs as a script
    DEFAULT_PG,
    DUE_PER_MILLE,
    _pg,
    _pg_url,
    child_env,
    clone,
    count_rows,
    drop_copy,
    drop_template,
    fresh_state,
    log,
    must,
    new_key_file,
    pg_drop,
    retentiond_argv,
    run_child,
)
from sweep import build_postgresql, build_sqlite  # the same table as bench/sweep.py

STORES = ("s1", "s2", "s3", "s4")
STATE_DB = "rtd_bw_state"
CONFIGS = ("workers-1", "workers-2", "workers-4", "replicas-2")


def write_policy(path: Path, state: str, key: Path, urls: dict[str, str], batch: int,
                 workers: int) -> None:
    stores = "".join(f'  {s}:\n    adapter: sql\n    url: "{u}"\n' for s, u in urls.items())
    rules = "".join(f"""  - id: {s}-events
    store: {s}
    table: events
    key: id
    clock: created_at
    dispose_after: 3y
    action: delete
""" for s in urls)
    path.write_text(f"""version: 1
state: "{state}"
secret_key: {{file: "{key}"}}
batch_size: {batch}
workers: {workers}
stores:
{stores}rules:
{rules}""")


def fresh_state_url(kind: str, work: Path, config: str, pg_url: str) -> str:
    """A new, empty state database: a SQLite file, or a PostgreSQL database."""
    if kind == "sqlite":
        state = work / f"state-{config}.db"
        fresh_state(state)
        return f"sqlite:///{state}"
    pg_drop(pg_url, STATE_DB)
    with _pg(pg_url) as con:
        con.execute(f'CREATE DATABASE "{STATE_DB}"')
    return _pg_url(pg_url, STATE_DB)


def run_config(config: str, work: Path, key: Path, urls: dict[str, str], batch: int,
               state: str) -> dict[str, Any]:
    policy = work / f"policy-{config}.yaml"
    workers = int(config.split("-")[1]) if config.startswith("workers") else 1
    write_policy(policy, state, key, urls, batch, workers)
    rd = [*retentiond_argv(), "--config", str(policy)]
    must(run_child([*rd, "db", "upgrade"], env=child_env()), "db upgrade")
    if config.startswith("workers"):
        res = run_child([*rd, "run", "--json"], env=child_env())
        must(res, f"run ({config})")
        wall, done = res["wall"], json.loads(res["stdout"])["totals"]["done"]
    else:  # two one-shot processes, each holding the leases of two stores
        halves = [STORES[:2], STORES[2:]]
        t0 = time.perf_counter()
        procs = [subprocess.Popen(
            [*rd, "run", "--json", "--wait", "600", *[a for s in half
                                                      for a in ("--rule", f"{s}-events")]],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(),
            cwd=tempfile.gettempdir()) for half in halves]
        outs = []
        for p in procs:
            outs.append(p.communicate())
        wall = time.perf_counter() - t0
        for p, (_out, err) in zip(procs, outs, strict=True):
            if p.returncode != 0:
                sys.stderr.write(err.decode()[-4000:])
                raise SystemExit(f"bench: run ({config}) failed with exit code {p.returncode}")
        done = sum(json.loads(out)["totals"]["done"] for out, _ in outs)
    verify = run_child([*rd, "audit", "verify", "--json"], env=child_env())
    return {"wall": wall, "done": done, "verify_rc": verify["rc"]}


def bench(backend: str, rows: int, repeat: int, batch: int, pg_url: str, work: Path,
          state_kind: str) -> dict[str, Any]:
    now = datetime.now(UTC).replace(tzinfo=None)
    key = new_key_file(work)
    if backend == "sqlite":
        template = str(work / "template.db")
        build_sqlite(Path(template), rows, now)
    else:
        template = "retentiond_bench_workers_tpl"
        build_postgresql(pg_url, template, rows, now)
    due = sum(1 for i in range(1, rows + 1) if (i * 2654435761) % 1000 < DUE_PER_MILLE)
    walls: dict[str, list[float]] = {c: [] for c in CONFIGS}
    ok = True
    try:
        for rep in range(repeat):
            order = CONFIGS[rep % len(CONFIGS):] + CONFIGS[:rep % len(CONFIGS)]
            for config in order:
                urls = {s: clone(backend, template, f"rtd_bw_{s}", work, pg_url)
                        for s in STORES}
                state = fresh_state_url(state_kind, work, config, pg_url)
                res = run_config(config, work, key, urls, batch, state)
                left = [count_rows(u) for u in urls.values()]
                good = (res["done"] == 4 * due and res["verify_rc"] == 0
                        and left == [rows - due] * 4)
                ok = ok and good
                log(f"{backend} {config} rep {rep + 1}: {res['wall']:.2f} s, "
                    f"{res['done']} disposed{'' if good else ' (WRONG)'}")
                walls[config].append(res["wall"])
                for u in urls.values():
                    drop_copy(backend, u, pg_url)
    finally:
        drop_template(backend, template, pg_url)
        if state_kind == "postgresql":
            pg_drop(pg_url, STATE_DB)
    base = statistics.median(walls["workers-1"])
    out = {}
    for config in CONFIGS:
        med = statistics.median(walls[config])
        out[config] = {"wall_s": round(med, 3), "throughput_rps": round(4 * due / med),
                       "speedup": round(base / med, 2), "walls": [round(w, 3)
                                                                for w in walls[config]]}
    return {"backend": backend, "state": state_kind, "rows_per_store": rows,
            "due_per_store": due, "stores": 4, "repeat": repeat, "ok": ok, "configs": out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000, help="rows per store")
    p.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--state", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the state database the processes share (default: a SQLite file)")
    p.add_argument("--pg-url", default=DEFAULT_PG)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="retentiond-bench-workers-") as tmp:
        result = bench(args.backend, args.rows, args.repeat, args.batch, args.pg_url,
                       Path(tmp), args.state)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['backend']} stores, {result['state']} state: 4 stores x "
              f"{result['rows_per_store']} rows ({result['due_per_store']} due each), "
              f"medians of {result['repeat']}")
        for config, r in result["configs"].items():
            print(f"  {config:<11} {r['wall_s']:8.2f} s {r['throughput_rps']:>9} rec/s "
                  f"speed-up {r['speedup']:.2f}x")
        print("ok" if result["ok"] else "WRONG: a run disposed the wrong records")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
