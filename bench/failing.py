"""Failing-records benchmark (issue 11): a sweep where every due record fails costs at most 5x
a clean sweep of the same size.

Two identical tables of N rows, 40% due; on one a BEFORE DELETE trigger raises for every row
(SQLite ``RAISE(ABORT)``, PostgreSQL plpgsql ``RAISE EXCEPTION``, MariaDB ``SIGNAL SQLSTATE
'45000'``), so every batch's statement fails and its records are found failing one by one
(retentiond/adapters/sqlsplit.py). Both sweeps run as ``retentiond run --json`` children; the
time compared is the run's own (the ``runs`` row: started_at to finished_at), wall time is
printed too.

Which path finds the failing records depends on the backend: one pg_temp PL/pgSQL call per
batch on PostgreSQL, one prepared statement per key on SQLite and MariaDB, for one-column and
composite keys alike (a batch that counts what it cascades to takes halving under savepoints,
not measured here).
``--key composite`` makes the table ``events (site, id, ...)`` with ``PRIMARY KEY (site, id)``
and the rule ``key: [site, id]``.

Usage (from the project root)::

    .venv/bin/python bench/failing.py [--rows 50000]
                                      [--backend sqlite|postgresql|mariadb|both|all]
                                      [--key single|composite] [--batch 5000] [--repeat 3]
                                      [--pg-url URL] [--mariadb-url URL] [--json]

``both`` is sqlite and postgresql (as before MariaDB was measured); ``all`` adds mariadb. The
bench creates and drops its own databases (PostgreSQL ``rdfail_*``, MariaDB
``rtd_bench_fail_*``; MariaDB tables are InnoDB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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

DEFAULT_MARIADB = "mysql+pymysql://root@127.0.0.1:3306/"
BACKENDS = {"sqlite": ("sqlite",), "postgresql": ("postgresql",), "mariadb": ("mariadb",),
            "both": ("sqlite", "postgresql"), "all": ("sqlite", "postgresql", "mariadb")}
TRIGGERS = {
    "sqlite": ["CREATE TRIGGER guard BEFORE DELETE ON events "
               "BEGIN SELECT RAISE(ABORT, 'kept by a trigger'); END"],
    "postgresql": ["CREATE FUNCTION guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   "RAISE EXCEPTION 'kept by a trigger'; END $$",
                   "CREATE TRIGGER guard BEFORE DELETE ON events FOR EACH ROW "
                   "EXECUTE FUNCTION guard()"],
    "mariadb": ["CREATE TRIGGER guard BEFORE DELETE ON events FOR EACH ROW "
                "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'kept by a trigger'"],
}
KEYS = {  # --key: the key columns' DDL and the rule's key
    "single": ("id INTEGER PRIMARY KEY, ", "id"),
    "composite": ("site INTEGER NOT NULL, id INTEGER NOT NULL, ", ["site", "id"]),
}
SITES = 7  # composite keys: rows spread over sites 1..7 (id unique anyway)


def split_path(backend: str, key_kind: str) -> str:
    """How sqlsplit.py finds the failing records of a batch, for the printed line (the same
    for either ``key_kind``)."""
    return "pg_temp function" if backend == "postgresql" else "statement per key"


def ddl(backend: str, key_kind: str) -> str:
    """``TIMESTAMP`` is the naive clock on SQLite and PostgreSQL; on MariaDB it would convert
    time zones and stop at 2038, so ``DATETIME`` there (and InnoDB, for savepoints)."""
    clock = "DATETIME" if backend == "mariadb" else "TIMESTAMP"
    pk = ", PRIMARY KEY (site, id)" if key_kind == "composite" else ""
    engine = " ENGINE=InnoDB" if backend == "mariadb" else ""
    return (f"CREATE TABLE events ({KEYS[key_kind][0]}created_at {clock} NOT NULL, "
            f"note VARCHAR(40) NOT NULL{pk}){engine}")


def rows(n: int, key_kind: str = "single") -> list[tuple[Any, ...]]:
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    old, new = now - timedelta(days=2000), now - timedelta(days=5)
    if key_kind == "composite":
        return [(i % SITES + 1, i, old if i % 5 < 2 else new, f"note {i}")
                for i in range(1, n + 1)]
    return [(i, old if i % 5 < 2 else new, f"note {i}") for i in range(1, n + 1)]


# -- MariaDB (PyMySQL) ----------------------------------------------------------------------
def _my_url(admin: str, dbname: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(admin).set(database=dbname).render_as_string(hide_password=False)


@contextmanager
def _my(url: str) -> Iterator[Any]:
    import pymysql
    from sqlalchemy.engine import make_url

    u = make_url(url)
    con = pymysql.connect(host=u.host or "127.0.0.1", port=u.port or 3306,
                          user=u.username or "root", password=u.password or "",
                          database=u.database or None, autocommit=True)
    try:
        yield con
    finally:
        con.close()


def my_drop(admin: str, dbname: str) -> None:
    with _my(admin) as con, con.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{dbname}`")


def make_store(backend: str, work: Path, name: str, n: int, failing: bool,
               admin: str, key_kind: str = "single", my_admin: str = DEFAULT_MARIADB) -> str:
    statements = [ddl(backend, key_kind), "CREATE INDEX ix_events_created ON events (created_at)"]
    statements += TRIGGERS[backend] if failing else []
    width = len(rows(1, key_kind)[0])
    if backend == "mariadb":
        name = f"rtd_bench_fail_{name.removeprefix('rdfail_')}"
        my_drop(my_admin, name)
        with _my(my_admin) as con, con.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        url = _my_url(my_admin, name)
        with _my(url) as con, con.cursor() as cur:
            cur.execute(statements[0])
            cur.execute(statements[1])
            data = rows(n, key_kind)
            insert = f"INSERT INTO events VALUES ({', '.join(['%s'] * width)})"
            for at in range(0, len(data), 5000):  # PyMySQL: one multi-row INSERT per chunk
                cur.executemany(insert, data[at:at + 5000])
            for sql in statements[2:]:
                cur.execute(sql)
            cur.execute("ANALYZE TABLE events")
            cur.fetchall()
        return url
    if backend == "sqlite":
        path = work / f"{name}.db"
        path.unlink(missing_ok=True)
        con = sqlite3.connect(path)
        with con:
            for sql in statements[:2]:
                con.execute(sql)
            con.executemany(f"INSERT INTO events VALUES ({', '.join(['?'] * width)})",
                            [(*r[:-2], r[-2].isoformat(" "), r[-1]) for r in rows(n, key_kind)])
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
            for r in rows(n, key_kind):
                copy.write_row(r)
        for sql in statements[2:]:
            con.execute(sql)
        con.execute("VACUUM ANALYZE events")
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def sweep(url: str, work: Path, key: Path, batch: int, key_kind: str = "single"
          ) -> dict[str, Any]:
    state = work / "state.db"
    fresh_state(state)
    policy = work / "policy.yaml"
    policy.write_text(json.dumps({
        "version": 1, "state": f"sqlite:///{state}", "secret_key": {"file": str(key)},
        "batch_size": batch, "stores": {"app": {"adapter": "sql", "url": url}},
        "rules": [{"id": "old-events", "store": "app", "table": "events", "key": KEYS[key_kind][1],
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


def bench(backend: str, n: int, batch: int, repeat: int, admin: str,
          key_kind: str = "single", my_admin: str = DEFAULT_MARIADB) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rd-failing-"))
    key = new_key_file(work)
    runs: dict[str, list[dict[str, Any]]] = {"clean": [], "failing": []}
    try:
        for rep in range(repeat):
            order = ("clean", "failing") if rep % 2 == 0 else ("failing", "clean")
            for kind in order:
                name = f"rdfail_{kind}"
                url = make_store(backend, work, name, n, kind == "failing", admin,
                                 key_kind, my_admin)
                runs[kind].append(sweep(url, work, key, batch, key_kind))
                log(f"{backend} {key_kind} {kind}: {runs[kind][-1]}")
    finally:
        for kind in runs:
            if backend == "postgresql":
                pg_drop(admin, f"rdfail_{kind}")
            elif backend == "mariadb":
                my_drop(my_admin, f"rtd_bench_fail_{kind}")
        shutil.rmtree(work, ignore_errors=True)
    clean = statistics.median(r["inner"] for r in runs["clean"])
    failing = statistics.median(r["inner"] for r in runs["failing"])
    return {"backend": backend, "key": key_kind, "path": split_path(backend, key_kind),
            "rows": n, "due": n * 2 // 5, "batch": batch,
            "clean_s": round(clean, 3), "failing_s": round(failing, 3),
            "ratio": round(failing / clean, 2), "target": 5.0,
            "clean": runs["clean"][-1], "failing": runs["failing"][-1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--backend", choices=tuple(BACKENDS), default="both",
                   help="both: sqlite and postgresql; all: sqlite, postgresql and mariadb")
    p.add_argument("--key", choices=tuple(KEYS), default="single",
                   help="composite: PRIMARY KEY (site, id), rule key [site, id]")
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--pg-url", default=DEFAULT_PG)
    p.add_argument("--mariadb-url", default=DEFAULT_MARIADB,
                   help="admin URL of the MariaDB server (default %(default)s)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = [bench(b, args.rows, args.batch, args.repeat, args.pg_url, args.key,
                     args.mariadb_url) for b in BACKENDS[args.backend]]
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return
    for r in results:
        print(f"{r['backend']:<10} key={r['key']:<9} rows={r['rows']} due={r['due']} "
              f"batch={r['batch']}: "
              f"clean {r['clean_s']:.3f} s, every due record failing {r['failing_s']:.3f} s, "
              f"ratio {r['ratio']:.2f}x (target <= {r['target']:.0f}x) [{r['path']}]")


if __name__ == "__main__":
    main()
