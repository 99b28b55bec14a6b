"""s3 adapter benchmark: a delete sweep over a bucket vs a hand-written DeleteObjects loop.

Issue 12: ``retentiond run`` deleting the due objects of a bucket, against a hand-written
``ListObjectsV2`` + ``DeleteObjects`` loop that writes the same per-record HMAC ledger (one
hash-chained entry per batch, :class:`common.BaselineLedger`), on the same S3-compatible
server in the same run: moto's server over HTTP (``tests/s3server.py``, started by this
script), so the numbers compare request patterns, not AWS.

Usage (from the project root)::

    .venv/bin/python bench/s3_delete.py [--objects 20000] [--due-percent 40] [--batch 1000]
                                        [--repeat 3] [--json] [--profile]

The bucket holds ``uploads/u<NNNNN>/doc-<i>.pdf`` (about ten per subject) plus one
``notes.txt`` per subject that the rule's pattern (``uploads/`` + ``{subject}/*.pdf``) does
not match; ``--due-percent`` of the PDFs are 400-700 days old (due after ``365d``), the others
younger than 300 days. Every contender and repetition gets a fresh bucket seeded identically
(through the server's seeding route, not timed). Both contenders run as child processes (wall
time with interpreter start-up, peak RSS from ``os.wait4``), alternating which goes first; the
times reported are medians, the ratio printed is baseline seconds / retentiond seconds. Each
run must delete exactly the due PDFs and ledger exactly their references (an order-independent
digest of both ledgers is compared), and ``audit verify`` must pass on retentiond's; only a
wrong result fails the script.

The hand-written loop is what one would write without retentiond: one listing, deleting as it
goes, no re-read of a batch before deleting it, no intent row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # bench/ is not a package: this runs as a script
    STORE,
    BaselineLedger,
    ledger_digest,
    log,
    must,
    print_profile,
    retentiond_run,
    retentiond_upgrade,
    run_child,
    use_source,
    workdir,
)

ROOT = Path(__file__).resolve().parents[1]
RULE = "old-uploads"
PREFIX = "uploads/"
PATH = "{subject}/*.pdf"
TARGET = PREFIX + PATH  # refs are HMAC(key, "store\0uploads/{subject}/*.pdf\0<object key>")
PER_SUBJECT = 10
KEYS = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench-secret"}


# ==============================================================================================
# The server and the bucket
# ==============================================================================================
def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "s3server.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"bench: the S3 server (moto) did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 3, "mode": "standard"}), **KEYS)


def layout(objects: int, due_percent: int, now: datetime) -> tuple[list[list[str]], int]:
    """``[[key, LastModified], ...]`` of the bucket, and how many PDFs are due."""
    items: list[list[str]] = []
    due = 0
    subjects = max(1, objects // PER_SUBJECT)
    for s in range(subjects):
        items.append([f"{PREFIX}u{s:05d}/notes.txt", (now - timedelta(days=900)).isoformat()])
    for i in range(objects):
        is_due = (i * 2654435761) % 100 < due_percent
        age = timedelta(days=(400 + i % 300) if is_due else (i % 300), seconds=i % 86400)
        items.append([f"{PREFIX}u{i % subjects:05d}/doc-{i:07d}.pdf", (now - age).isoformat()])
        due += is_due
    return items, due


def seed(endpoint: str, bucket: str, items: list[list[str]]) -> None:
    client(endpoint).create_bucket(Bucket=bucket)
    for i in range(0, len(items), 5000):
        body = json.dumps([[bucket, k, at] for k, at in items[i:i + 5000]]).encode()
        url = f"{endpoint}/_retentiond/put-objects"  # http://127.0.0.1:<port>, ours
        req = urllib.request.Request(url, data=body, method="POST")  # noqa: S310
        with urllib.request.urlopen(req, timeout=300) as answer:  # noqa: S310
            answer.read()


def count_left(endpoint: str, bucket: str) -> tuple[int, int]:
    """(PDFs left, PDFs left that are due)."""
    cutoff = datetime.now(UTC) - timedelta(days=365)
    left = due = 0
    for page in client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            if o["Key"].endswith(".pdf"):
                left += 1
                due += o["LastModified"] <= cutoff
    return left, due


# ==============================================================================================
# The baseline (a child process: `bench/s3_delete.py --_baseline JSON`)
# ==============================================================================================
def baseline(cfg: dict[str, Any]) -> dict[str, Any]:
    """List the prefix, delete the due PDFs with DeleteObjects as batches fill; per batch,
    HMAC references and one hash-chained ledger row (common.BaselineLedger)."""
    t0 = time.perf_counter()
    s3 = client(cfg["endpoint"])
    bucket, batch = cfg["bucket"], int(cfg["batch"])
    cutoff = datetime.now(UTC) - timedelta(days=365)
    led = BaselineLedger(cfg["ledger"], cfg["key_file"], TARGET, RULE, "delete")
    todo: list[str] = []
    deleted = batches = 0

    def flush() -> None:
        nonlocal deleted, batches
        for i in range(0, len(todo), 1000):
            answer = s3.delete_objects(Bucket=bucket, Delete={
                "Objects": [{"Key": k} for k in todo[i:i + 1000]], "Quiet": True})
            if answer.get("Errors"):
                raise SystemExit(f"baseline: {len(answer['Errors'])} keys refused")
        led.record(todo)
        deleted, batches = deleted + len(todo), batches + 1
        todo.clear()

    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX)
    for page in pages:
        for o in page.get("Contents", []):
            if o["Key"].endswith(".pdf") and o["LastModified"] <= cutoff:
                todo.append(o["Key"])
                if len(todo) >= batch:
                    flush()
    if todo:
        flush()
    led.close()
    return {"deleted": deleted, "batches": batches, "seconds": time.perf_counter() - t0}


def run_baseline(endpoint: str, bucket: str, work: Path, key_file: Path, batch: int,
                 tag: str) -> dict[str, Any]:
    ledger = work / f"baseline-ledger-{tag}.db"
    ledger.unlink(missing_ok=True)
    cfg = {"endpoint": endpoint, "bucket": bucket, "ledger": str(ledger),
           "key_file": str(key_file), "batch": batch}
    res = run_child([sys.executable, str(Path(__file__).resolve()), "--_baseline",
                     json.dumps(cfg)])
    must(res, "baseline")
    inner = json.loads(res["stdout"])
    return {"wall": res["wall"], "inner": inner["seconds"], "rss_mb": res["rss_mb"],
            "deleted": inner["deleted"], "ledger": ledger}


# ==============================================================================================
# retentiond
# ==============================================================================================
def write_policy(path: Path, endpoint: str, bucket: str, state: Path, key_file: Path,
                 batch: int) -> None:
    path.write_text(f"""\
# generated by bench/s3_delete.py
version: 1
timezone: UTC
state: sqlite:///{state}
secret_key: {{file: {key_file}}}
batch_size: {batch}
stores:
  {STORE}:
    adapter: s3
    bucket: {bucket}
    endpoint_url: {endpoint}
    region: us-east-1
    access_key_id: {KEYS["aws_access_key_id"]}
    secret_access_key: {KEYS["aws_secret_access_key"]}
rules:
  - id: {RULE}
    description: Uploaded documents are deleted a year after their last change (benchmark).
    source: "bench/s3_delete.py"
    store: {STORE}
    prefix: "{PREFIX}"
    path: "{PATH}"
    dispose_after: 365d
    action: delete
""")


def run_retentiond(endpoint: str, bucket: str, work: Path, key_file: Path, batch: int,
                   tag: str, profile: Path | None = None) -> dict[str, Any]:
    state = work / f"state-{tag}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    policy = work / f"policy-{tag}.yaml"
    write_policy(policy, endpoint, bucket, state, key_file, batch)
    retentiond_upgrade(policy)
    r = retentiond_run(policy, state, profile)
    return {"wall": r["wall"], "inner": r["inner"], "rss_mb": r["rss_mb"], "deleted": r["done"],
            "failed": r["failed"], "verify_rc": r["verify_rc"], "ledger": state}


# ==============================================================================================
# The comparison
# ==============================================================================================
def bench(args: argparse.Namespace, endpoint: str, work: Path, key_file: Path
          ) -> dict[str, Any]:
    items, due = layout(args.objects, args.due_percent, datetime.now(UTC))
    log(f"{args.objects:,} PDFs ({due:,} due) and {len(items) - args.objects:,} other objects "
        "per bucket")
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "retentiond": []}
    seed_s: list[float] = []
    for rep in range(args.repeat):
        order = ["baseline", "retentiond"] if rep % 2 == 0 else ["retentiond", "baseline"]
        for who in order:
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            t0 = time.perf_counter()
            seed(endpoint, bucket, items)
            seed_s.append(time.perf_counter() - t0)
            if who == "baseline":
                r = run_baseline(endpoint, bucket, work, key_file, args.batch, str(rep))
            else:
                r = run_retentiond(endpoint, bucket, work, key_file, args.batch, str(rep))
            r["left"], r["left_due"] = count_left(endpoint, bucket)
            r["refs"] = ledger_digest(r.pop("ledger"))
            runs[who].append(r)
            log(f"rep {rep + 1}/{args.repeat} {who:10s}: {r['deleted']:,} deleted in "
                f"{r['wall']:.2f} s wall ({r['inner']:.2f} s inside), peak RSS "
                f"{r['rss_mb']:.1f} MB")
    profile_out = None
    if args.profile:
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        seed(endpoint, bucket, items)
        profile_out = work / "retentiond-s3.pstats"
        log(f"profiling one retentiond run -> {profile_out}")
        run_retentiond(endpoint, bucket, work, key_file, args.batch, "profile", profile_out)
    return summarise(args, due, statistics.median(seed_s), runs, profile_out)


def summarise(args: argparse.Namespace, due: int, seed_s: float,
              runs: dict[str, list[dict[str, Any]]], profile_out: Path | None
              ) -> dict[str, Any]:
    problems = []
    for who, rs in runs.items():
        for i, r in enumerate(rs):
            if r["deleted"] != due or r["refs"][0] != due:
                problems.append(f"{who} run {i + 1} deleted {r['deleted']} and ledgered "
                                f"{r['refs'][0]}, expected {due}")
            if (r["left"], r["left_due"]) != (args.objects - due, 0):
                problems.append(f"{who} run {i + 1} left {r['left']} PDFs ({r['left_due']} due)")
            if who == "retentiond" and (r["verify_rc"] != 0 or r["failed"]):
                problems.append(f"retentiond run {i + 1}: audit verify rc={r['verify_rc']}, "
                                f"failed={r['failed']}")
    if len({r["refs"][1] for rs in runs.values() for r in rs}) != 1:
        problems.append("the contenders' ledgers name different records")

    def med(who: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[who])

    b, rd = med("baseline", "wall"), med("retentiond", "wall")
    b_in, rd_in = med("baseline", "inner"), med("retentiond", "inner")
    out = {
        "objects": args.objects, "due": due, "batch": args.batch, "repeat": args.repeat,
        "seed_seconds": round(seed_s, 2),
        "baseline": {"seconds": round(b, 3), "inner_seconds": round(b_in, 3),
                     "objects_per_s": round(due / b),
                     "peak_rss_mb": round(med("baseline", "rss_mb"), 1),
                     "all_seconds": [round(r["wall"], 3) for r in runs["baseline"]]},
        "retentiond": {"seconds": round(rd, 3), "inner_seconds": round(rd_in, 3),
                       "objects_per_s": round(due / rd),
                       "peak_rss_mb": round(max(r["rss_mb"] for r in runs["retentiond"]), 1),
                       "audit_verify": all(r["verify_rc"] == 0 for r in runs["retentiond"]),
                       "all_seconds": [round(r["wall"], 3) for r in runs["retentiond"]]},
        "ratio": round(b / rd, 3), "ratio_inner": round(b_in / rd_in, 3),
        "ok": not problems, "problems": problems,
    }
    if profile_out is not None:
        out["profile"] = str(profile_out)
    return out


def print_table(r: dict[str, Any]) -> None:
    b, rd = r["baseline"], r["retentiond"]
    print(f"\ns3 (moto over HTTP): {r['objects']:,} PDFs, {r['due']:,} due, batch "
          f"{r['batch']}, median of {r['repeat']} (bucket seeded in {r['seed_seconds']} s)")
    print(f"  {'contender':<12}{'seconds':>10}{'objects/s':>11}{'in-run s':>10}"
          f"{'peak RSS MB':>13}")
    for name, c in (("baseline", b), ("retentiond", rd)):
        print(f"  {name:<12}{c['seconds']:>10.2f}{c['objects_per_s']:>11,}"
              f"{c['inner_seconds']:>10.2f}{c['peak_rss_mb']:>13.1f}")
    print(f"  ratio baseline/retentiond: {r['ratio']:.3f} (in-run only: "
          f"{r['ratio_inner']:.3f})")
    print(f"  audit verify: {'ok' if rd['audit_verify'] else 'FAILED'}; runs (s): baseline "
          f"{b['all_seconds']}, retentiond {rd['all_seconds']}")
    for p in r["problems"]:
        print(f"  PROBLEM: {p}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=20_000, help="PDFs in the bucket")
    p.add_argument("--due-percent", type=int, default=40, help="share of the PDFs due")
    p.add_argument("--batch", type=int, default=1000,
                   help="records per batch for both (DeleteObjects takes up to 1,000 keys)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", help="state and ledger files (default: a fresh directory in "
                   "/tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--profile", action="store_true",
                   help="also run retentiond once under cProfile and print the top entries")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--source", help="run retentiond from this source tree")
    p.add_argument("--_baseline", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._baseline:
        print(json.dumps(baseline(json.loads(args._baseline))))
        return 0
    problem = use_source(args.source)
    if problem:
        p.error(problem)
    if args.objects < 100 or not 0 < args.due_percent <= 100 or args.repeat < 1:
        p.error("--objects must be >= 100, --due-percent in 1..100, --repeat >= 1")
    with workdir(args, "retentiond-bench-s3-") as (work, key_file):
        server, endpoint = start_server()
        try:
            result = bench(args, endpoint, work, key_file)
        finally:
            server.terminate()
            server.wait(timeout=30)
    if result.get("profile"):
        print_profile(Path(result["profile"]))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
