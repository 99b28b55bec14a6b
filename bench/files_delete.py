"""files adapter benchmark: a delete sweep over a directory tree vs a hand-written loop.

Issue 12: deleting 100,000 files with ``retentiond run`` reaches at least 0.8x the speed of a
hand-written ``os.walk`` + ``os.lstat`` + ``os.unlink`` loop that writes the same per-record
HMAC ledger (one hash-chained entry per batch, :class:`common.BaselineLedger`), with
retentiond's peak RSS under 200 MB.

Usage (from the project root)::

    .venv/bin/python bench/files_delete.py [--files 250000] [--due-percent 40]
                                           [--batch 5000] [--repeat 3] [--json] [--profile]

The tree is ``users/u<NNNNN>/<year>/doc-<i>.pdf`` (about ten files per directory) plus one
``notes.txt`` per subject that the rule's pattern (``users/{subject}/**/*.pdf``) does not
match; ``--due-percent`` of the PDFs are 400-700 days old (due after ``365d``), the others
younger than 300 days. The tree is generated once and copied (mtimes kept) for every contender
and repetition, on the same file system. Both contenders run as child processes (wall time
with interpreter start-up, peak RSS from ``os.wait4``), alternating which goes first; the
times reported are medians. The ratio printed is baseline seconds / retentiond seconds
(>= 0.8 is the target). Each run must delete exactly the due PDFs and ledger exactly their
references (an order-independent digest of both ledgers is compared), and ``audit verify``
must pass on retentiond's; missing a performance target is reported (``MISS``) but only a
wrong result fails the script.

The hand-written loop is what one would write without retentiond: no key order, no
re-check before unlinking, no intent row, no symlink-safe ``openat`` chain.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # bench/ is not a package: this runs as a script
    STORE,
    BaselineLedger,
    bench_process_peak_rss_mb,
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

RULE = "old-files"
TARGET = "users/{subject}/**/*.pdf"  # refs are HMAC(key, "store\0<pattern>\0<relative path>")
PER_DIR = 10
DAY = 86400


# ==============================================================================================
# The tree
# ==============================================================================================
def build(root: Path, files: int, due_percent: int, now: float) -> int:
    """The template tree; returns how many PDFs are due."""
    root.mkdir(parents=True)
    due = 0
    subjects = max(1, files // (2 * PER_DIR))
    made_dirs: set[Path] = set()
    for i in range(files):
        subject = i % subjects
        year = 2015 + (i // subjects) % 2
        d = root / "users" / f"u{subject:05d}" / str(year)
        if d not in made_dirs:
            d.mkdir(parents=True, exist_ok=True)
            made_dirs.add(d)
            (d.parent / "notes.txt").write_text("not a pdf")
        path = d / f"doc-{i:07d}.pdf"
        path.write_bytes(b"%PDF-1.4 bench document of a data subject\n")
        is_due = (i * 2654435761) % 100 < due_percent
        age = (400 + i % 300) if is_due else (i % 300)
        mtime = now - age * DAY - (i % DAY)
        os.utime(path, (mtime, mtime))
        due += is_due
    return due


def copy_tree(template: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(template, target, symlinks=True)  # copy2: mtimes kept


def count_left(root: Path) -> tuple[int, int]:
    """(PDFs left, PDFs left that are due)."""
    cutoff = time.time() - 365 * DAY
    left = due = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".pdf"):
                left += 1
                due += os.lstat(os.path.join(dirpath, name)).st_mtime <= cutoff
    return left, due


# ==============================================================================================
# The baseline (a child process: `bench/files_delete.py --_baseline JSON`)
# ==============================================================================================
def baseline(cfg: dict[str, Any]) -> dict[str, Any]:
    """Walk, lstat, unlink the due PDFs; per batch, HMAC references and one hash-chained
    ledger row committed to a SQLite file (common.BaselineLedger)."""
    t0 = time.perf_counter()
    root, batch = cfg["root"], int(cfg["batch"])
    cutoff = time.time() - 365 * DAY
    led = BaselineLedger(cfg["ledger"], cfg["key_file"], TARGET, RULE, "delete")
    skip = len(root) + 1
    done: list[str] = []
    deleted = batches = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.endswith(".pdf"):
                continue
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff:
                os.unlink(path)
                done.append(path[skip:])
                if len(done) >= batch:
                    led.record(done)
                    deleted, batches, done = deleted + len(done), batches + 1, []
    if done:
        led.record(done)
        deleted, batches = deleted + len(done), batches + 1
    led.close()
    return {"deleted": deleted, "batches": batches, "seconds": time.perf_counter() - t0}


def run_baseline(root: Path, work: Path, key_file: Path, batch: int, tag: str
                 ) -> dict[str, Any]:
    ledger = work / f"baseline-ledger-{tag}.db"
    ledger.unlink(missing_ok=True)
    cfg = {"root": str(root), "ledger": str(ledger), "key_file": str(key_file), "batch": batch}
    res = run_child([sys.executable, str(Path(__file__).resolve()), "--_baseline",
                     json.dumps(cfg)])
    must(res, "baseline")
    inner = json.loads(res["stdout"])
    return {"wall": res["wall"], "inner": inner["seconds"], "rss_mb": res["rss_mb"],
            "deleted": inner["deleted"], "ledger": ledger}


# ==============================================================================================
# retentiond
# ==============================================================================================
def write_policy(path: Path, root: Path, state: Path, key_file: Path, batch: int) -> None:
    path.write_text(f"""\
# generated by bench/files_delete.py
version: 1
timezone: UTC
state: sqlite:///{state}
secret_key: {{file: {key_file}}}
batch_size: {batch}
stores:
  {STORE}:
    adapter: files
    root: {root}
rules:
  - id: {RULE}
    description: Uploaded documents are deleted a year after their last change (benchmark).
    source: "bench/files_delete.py"
    store: {STORE}
    path: "{TARGET}"
    dispose_after: 365d
    action: delete
""")


def run_retentiond(root: Path, work: Path, key_file: Path, batch: int, tag: str,
                   profile: Path | None = None) -> dict[str, Any]:
    state = work / f"state-{tag}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    policy = work / f"policy-{tag}.yaml"
    write_policy(policy, root, state, key_file, batch)
    retentiond_upgrade(policy)
    r = retentiond_run(policy, state, profile)
    return {"wall": r["wall"], "inner": r["inner"], "rss_mb": r["rss_mb"], "deleted": r["done"],
            "failed": r["failed"], "verify_rc": r["verify_rc"], "ledger": state}


# ==============================================================================================
# The comparison
# ==============================================================================================
def bench(args: argparse.Namespace, work: Path, key_file: Path) -> dict[str, Any]:
    template = work / "template"
    log(f"building {args.files:,} files ({args.due_percent}% due) ...")
    t0 = time.perf_counter()
    due = build(template, args.files, args.due_percent, time.time())
    build_s = time.perf_counter() - t0
    log(f"built in {build_s:.1f} s; {due:,} PDFs due")
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "retentiond": []}
    copy = work / "tree"
    for rep in range(args.repeat):
        order = ["baseline", "retentiond"] if rep % 2 == 0 else ["retentiond", "baseline"]
        for who in order:
            copy_tree(template, copy)
            os.sync()
            if who == "baseline":
                r = run_baseline(copy, work, key_file, args.batch, str(rep))
            else:
                r = run_retentiond(copy, work, key_file, args.batch, str(rep))
            r["left"], r["left_due"] = count_left(copy)
            r["refs"] = ledger_digest(r.pop("ledger"))
            runs[who].append(r)
            log(f"rep {rep + 1}/{args.repeat} {who:10s}: {r['deleted']:,} deleted in "
                f"{r['wall']:.2f} s wall ({r['inner']:.2f} s inside), peak RSS "
                f"{r['rss_mb']:.1f} MB")
    profile_out = None
    if args.profile:
        copy_tree(template, copy)
        profile_out = work / "retentiond-files.pstats"
        log(f"profiling one retentiond run -> {profile_out}")
        run_retentiond(copy, work, key_file, args.batch, "profile", profile=profile_out)
    return summarise(args, due, build_s, runs, profile_out)


def summarise(args: argparse.Namespace, due: int, build_s: float,
              runs: dict[str, list[dict[str, Any]]], profile_out: Path | None
              ) -> dict[str, Any]:
    problems = []
    pdfs = args.files
    for who, rs in runs.items():
        for i, r in enumerate(rs):
            if r["deleted"] != due or r["refs"][0] != due:
                problems.append(f"{who} run {i + 1} deleted {r['deleted']} and ledgered "
                                f"{r['refs'][0]}, expected {due}")
            if (r["left"], r["left_due"]) != (pdfs - due, 0):
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
    peak = max(r["rss_mb"] for r in runs["retentiond"])
    out = {
        "files": pdfs, "due": due, "batch": args.batch, "repeat": args.repeat,
        "build_seconds": round(build_s, 2),
        "baseline": {"seconds": round(b, 3), "inner_seconds": round(b_in, 3),
                     "files_per_s": round(due / b), "peak_rss_mb": round(med("baseline",
                                                                             "rss_mb"), 1),
                     "all_seconds": [round(r["wall"], 3) for r in runs["baseline"]]},
        "retentiond": {"seconds": round(rd, 3), "inner_seconds": round(rd_in, 3),
                       "files_per_s": round(due / rd), "peak_rss_mb": round(peak, 1),
                       "audit_verify": all(r["verify_rc"] == 0 for r in runs["retentiond"]),
                       "all_seconds": [round(r["wall"], 3) for r in runs["retentiond"]]},
        "ratio": round(b / rd, 3), "ratio_inner": round(b_in / rd_in, 3),
        "targets": {"ratio_ge_0_8": b / rd >= 0.8, "rss_lt_200mb": peak < 200},
        "ok": not problems, "problems": problems,
    }
    if profile_out is not None:
        out["profile"] = str(profile_out)
    return out


def print_table(r: dict[str, Any]) -> None:
    def yes(v: bool) -> str:
        return "ok" if v else "MISS"

    b, rd, t = r["baseline"], r["retentiond"], r["targets"]
    print(f"\nfiles: {r['files']:,} PDFs, {r['due']:,} due, batch {r['batch']}, median of "
          f"{r['repeat']} (tree built in {r['build_seconds']} s)")
    print(f"  {'contender':<12}{'seconds':>10}{'files/s':>10}{'in-run s':>10}{'peak RSS MB':>13}")
    for name, c in (("baseline", b), ("retentiond", rd)):
        print(f"  {name:<12}{c['seconds']:>10.2f}{c['files_per_s']:>10,}"
              f"{c['inner_seconds']:>10.2f}{c['peak_rss_mb']:>13.1f}")
    print(f"  ratio baseline/retentiond: {r['ratio']:.3f} (target >= 0.8: "
          f"{yes(t['ratio_ge_0_8'])}; in-run only: {r['ratio_inner']:.3f})")
    print(f"  retentiond peak RSS: {rd['peak_rss_mb']:.1f} MB (target < 200: "
          f"{yes(t['rss_lt_200mb'])})")
    print(f"  audit verify: {'ok' if rd['audit_verify'] else 'FAILED'}; runs (s): baseline "
          f"{b['all_seconds']}, retentiond {rd['all_seconds']}")
    for p in r["problems"]:
        print(f"  PROBLEM: {p}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=250_000, help="PDFs in the tree")
    p.add_argument("--due-percent", type=int, default=40, help="share of the PDFs due")
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", help="where the trees go (default: a fresh directory in /tmp; "
                   "it must be on a real file system, not tmpfs, to mean anything)")
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
    if args.files < 100 or not 0 < args.due_percent <= 100 or args.repeat < 1:
        p.error("--files must be >= 100, --due-percent in 1..100, --repeat >= 1")
    with workdir(args, "retentiond-bench-files-") as (work, key_file):
        result = bench(args, work, key_file)
    if result.get("profile"):
        print_profile(Path(result["profile"]))
    if args.json:
        print(json.dumps({**result, "python": sys.version.split()[0],
                          "retentiond_source": args.source or "installed",
                          "bench_process_peak_rss_mb": bench_process_peak_rss_mb()}, indent=2))
    else:
        print_table(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
