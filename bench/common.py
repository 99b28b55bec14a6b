"""Helpers shared by the benchmarks in bench/ (sweep.py, anonymize.py).

Copies of a generated template table (a SQLite file or a PostgreSQL template database), child
processes timed with their peak RSS (``os.wait4``), retentiond invocations, and the hand-written
baselines' hash-chained ledger (the same canonical entries retentiond hashes, one row per batch,
in a SQLite file with retentiond's state-database settings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from calendar import monthrange
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STORE = "store"          # store name in the policies; refs are HMAC(key, "store\0<table>\0<id>")
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


def cutoff_3y() -> datetime:
    """The cutoff of a ``keep_for: 3y`` rule right now (naive UTC)."""
    return years_before(datetime.now(UTC).replace(tzinfo=None), 3)


# -- databases ------------------------------------------------------------------------------
def _pg(url: str) -> Any:
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def _pg_url(admin_url: str, dbname: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{dbname}"


def pg_drop(admin_url: str, dbname: str) -> None:
    with _pg(admin_url) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


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


def drop_template(backend: str, template: str, admin_url: str) -> None:
    if backend == "postgresql":
        pg_drop(admin_url, template)
    else:
        Path(template).unlink(missing_ok=True)


def scalar(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """One value from a store copy; ``?`` placeholders (rewritten for psycopg)."""
    if url.startswith("sqlite"):
        con = sqlite3.connect(url.split(":///", 1)[1])
        try:
            return con.execute(sql, params).fetchone()[0]
        finally:
            con.close()
    with _pg(url) as con:
        return con.execute(sql.replace("?", "%s"), params).fetchone()[0]


def count_rows(url: str, where: str = "", params: tuple[Any, ...] = (),
               table: str = "events") -> int:
    return int(scalar(url, f"SELECT count(*) FROM {table} {where}", params))


# -- child processes ------------------------------------------------------------------------
def run_child(argv: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a child; wall time, exit code, stdout, stderr and peak RSS (MiB, via wait4)."""
    t0 = time.perf_counter()
    # Not the project root as cwd: `python -m retentiond` would import ./retentiond from there
    # ahead of --source.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=tempfile.gettempdir())
    # Read the pipes on threads so a chatty child cannot block; then reap with wait4.
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


def must(res: dict[str, Any], what: str) -> None:
    if res["rc"] != 0:
        sys.stderr.write(res["stderr"][-4000:])
        raise SystemExit(f"bench: {what} failed with exit code {res['rc']}")


def use_source(source: str | None) -> str | None:
    """``--source DIR``: put DIR first on PYTHONPATH of every child. Returns an error message
    when DIR holds no retentiond package."""
    if not source:
        return None
    src = Path(source).resolve()
    if not (src / "retentiond" / "__init__.py").is_file():
        return f"--source {src}: no retentiond package there"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(src)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return None


def new_key_file(work: Path) -> Path:
    import secrets

    key_file = work / "secret.key"
    key_file.write_text(secrets.token_hex(32) + "\n")
    key_file.chmod(0o600)
    return key_file


@contextmanager
def workdir(args: argparse.Namespace, prefix: str = "retentiond-bench-"
            ) -> Iterator[tuple[Path, Path]]:
    """A benchmark's work directory (``--workdir`` or a fresh temporary one) and its key
    file; removed afterwards unless ``--keep`` or ``--profile`` asks to keep it."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work, new_key_file(work)
    finally:
        if not args.keep and not args.profile:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")


def bench_process_peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- retentiond -----------------------------------------------------------------------------
def retentiond_argv() -> list[str]:
    exe = Path(sys.executable).parent / "retentiond"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "retentiond"]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def fresh_state(state: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)


def retentiond_upgrade(policy: Path) -> None:
    must(run_child([*retentiond_argv(), "--config", str(policy), "db", "upgrade"],
                   env=child_env()), "db upgrade")


def retentiond_run(policy: Path, state: Path, profile: Path | None = None) -> dict[str, Any]:
    """``retentiond --config P run --json`` (timed, with its peak RSS), its in-run time from the
    ``runs`` table of the state database, then ``audit verify`` (not timed)."""
    rd = retentiond_argv()
    env = child_env()
    if profile is not None:
        argv = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "retentiond",
                "--config", str(policy), "run", "--json"]
    else:
        argv = [*rd, "--config", str(policy), "run", "--json"]
    res = run_child(argv, env=env)
    must(res, "retentiond run")
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
            "doc": doc, "done": doc["totals"]["done"], "failed": doc["totals"]["failed"],
            "verify_rc": verify["rc"], "verify_out": verify["stdout"].strip()[:300]}


def print_profile(path: Path) -> None:
    import pstats

    for order in ("cumulative", "tottime"):
        print(f"\n--- {path.name}, top 25 by {order} ---", file=sys.stderr)
        pstats.Stats(str(path), stream=sys.stderr).sort_stats(order).print_stats(25)


# -- the baselines' ledger --------------------------------------------------------------------
BASELINE_LEDGER_DDL = """CREATE TABLE IF NOT EXISTS ledger (
    seq integer primary key, at text not null, run_id text, kind text, rule text, store text,
    target text, action text, reason text, record_refs text not null, record_count integer,
    subject_ref text, detail text, hash text not null)"""


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class BaselineLedger:
    """What a hand-written loop must write to match retentiond's audit trail: per batch the
    per-record references ``HMAC-SHA256(key, "store\\0<target>\\0<id>")`` (hex) and one ledger
    row (the JSON list of references, hash-chained with SHA-256 over the same canonical JSON
    entry retentiond hashes), committed into a separate SQLite file (WAL,
    ``synchronous=NORMAL``, the settings retentiond uses for its state database)."""

    def __init__(self, path: str, key_file: str, target: str, rule: str, action: str) -> None:
        import hmac
        import secrets

        key = Path(key_file).read_bytes().rstrip(b"\r\n")
        self.base_mac = hmac.new(key, f"{STORE}\0{target}\0".encode(), hashlib.sha256)
        self.target, self.rule, self.action = target, rule, action
        self.run_id = secrets.token_hex(16)
        self.prev, self.seq = "0" * 64, 0
        self.led = sqlite3.connect(path, isolation_level=None)
        self.led.execute("PRAGMA journal_mode=WAL")
        self.led.execute("PRAGMA synchronous=NORMAL")
        self.led.execute(BASELINE_LEDGER_DDL)

    def record(self, ids: list[Any]) -> None:
        refs = []
        for i in ids:
            h = self.base_mac.copy()
            h.update(str(i).encode())
            refs.append(h.hexdigest())
        self.seq += 1
        entry = {"seq": self.seq, "at": datetime.now(UTC).isoformat(timespec="microseconds"),
                 "run_id": self.run_id, "kind": "dispose", "rule": self.rule, "store": STORE,
                 "target": self.target, "action": self.action, "reason": "schedule",
                 "record_refs": refs, "subject_ref": None, "detail": {"count": len(refs)}}
        self.prev = hashlib.sha256(self.prev.encode() + _canonical(entry)).hexdigest()
        self.led.execute("BEGIN IMMEDIATE")
        self.led.execute("INSERT INTO ledger VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         (self.seq, entry["at"], self.run_id, "dispose", self.rule, STORE,
                          self.target, self.action, "schedule", json.dumps(refs), len(refs),
                          None, json.dumps(entry["detail"], sort_keys=True), self.prev))
        self.led.execute("COMMIT")

    def close(self) -> None:
        self.led.close()


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


def shared_arguments(p: argparse.ArgumentParser, *, repeat: int, profile_help: str) -> None:
    """The options every benchmark script takes, and the hidden child-process entry points."""
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=repeat,
                   help="repetitions per backend, alternating order; medians are reported")
    p.add_argument("--pg-url", default=DEFAULT_PG,
                   help="admin URL of the PostgreSQL server (default $RETENTIOND_BENCH_PG or "
                        "%(default)s); the bench creates and drops its own databases")
    p.add_argument("--workdir", help="where files go (default: a fresh directory in /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--profile", action="store_true", help=profile_help)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--source", help="run retentiond from this source tree (put first on "
                   "PYTHONPATH), e.g. a `git archive` snapshot, to compare versions")
    p.add_argument("--_baseline", help=argparse.SUPPRESS)
    p.add_argument("--_build", help=argparse.SUPPRESS)
