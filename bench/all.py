"""Every ratio of issue 13 from one invocation per backend: runs ``bench/sweep.py`` and
``bench/anonymize.py`` (each as a child, ``--json``) and prints one table.

Usage (from the project root)::

    .venv/bin/python bench/all.py --backend sqlite [--rows 1000000] [--repeat 3]
                                  [--strategies hmac,mask] [--source DIR] [--json]

The options are passed on to both scripts; see bench/README.md. Exit status 1 when either
script found a problem (a wrong row count, a ledger mismatch, a failed ``audit verify``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# (label, target) per ratio; the sweep-only (in-run) ratio is printed next to each.
TARGETS = {"delete": 0.9, "set-based": 0.8, "python": 0.6}


def run(script: str, args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(HERE / script), *args, "--json"],
                          stdout=subprocess.PIPE, text=True, check=False)
    if not proc.stdout.strip():
        raise SystemExit(f"bench/all.py: {script} printed nothing (exit {proc.returncode})")
    doc: dict[str, Any] = json.loads(proc.stdout)
    doc["rc"] = proc.returncode
    return doc


def rows_of(sweep: dict[str, Any], anon: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in sweep["results"]:
        out.append({"what": "delete sweep vs keyset DELETE ... RETURNING + ledger",
                    "target": TARGETS["delete"], "baseline_s": r["baseline"]["seconds"],
                    "retentiond_s": r["retentiond"]["seconds"], "ratio": r["ratio"],
                    "baseline_in_run_s": r["baseline"]["inner_seconds"],
                    "retentiond_in_run_s": r["retentiond"]["inner_seconds"],
                    "ratio_in_run": r["ratio_inner"]})
    for r in anon["results"]:
        c, q = r["contenders"], r["ratios"]
        pairs = [("set-based anonymise vs keyset UPDATE ... RETURNING + ledger", "keyset-sql",
                  "retentiond-sql", "sql_vs_keyset", TARGETS["set-based"])]
        pairs += [(f"{x} vs driver-level executemany loop + ledger", f"keyset-{x}",
                   f"retentiond-{x}", f"{x}_vs_keyset", TARGETS["python"])
                  for x in r["strategies"]]
        for what, base, rd, key, target in pairs:
            out.append({"what": what, "target": target, "baseline_s": c[base]["seconds"],
                        "retentiond_s": c[rd]["seconds"], "ratio": q[key],
                        "baseline_in_run_s": c[base]["inner_seconds"],
                        "retentiond_in_run_s": c[rd]["inner_seconds"],
                        "ratio_in_run": q[f"{key}_inner"]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("sqlite", "postgresql"), required=True)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--strategies", default="hmac,mask")
    p.add_argument("--pg-url")
    p.add_argument("--source")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    common = ["--backend", args.backend, "--rows", str(args.rows), "--repeat",
              str(args.repeat), "--batch", str(args.batch)]
    common += ["--pg-url", args.pg_url] if args.pg_url else []
    common += ["--source", args.source] if args.source else []
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    sweep = run("sweep.py", common)
    anon = run("anonymize.py", [*common, "--strategies", args.strategies])
    load_after = os.getloadavg()
    table = rows_of(sweep, anon)
    problems = [p for d in (sweep, anon) for r in d["results"] for p in r["problems"]]
    doc = {"backend": args.backend, "rows": args.rows, "repeat": args.repeat,
           "seconds": round(time.perf_counter() - t0), "load_before": load_before,
           "load_after": load_after, "ratios": table, "problems": problems,
           "sweep": sweep, "anonymize": anon}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"\n{args.backend}: {args.rows:,} rows, median of {args.repeat}; load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after "
              f"({doc['seconds']} s); ratio = baseline s / retentiond s (whole process; "
              "in-run: the sweep alone)")
        print(f"  {'comparison':<62}{'base s':>8}{'rd s':>8}{'ratio':>7}{'base in':>9}"
              f"{'rd in':>8}{'in-run':>8}{'target':>8}")
        for t in table:
            mark = "ok" if t["ratio_in_run"] >= t["target"] else "MISS"
            print(f"  {t['what']:<62}{t['baseline_s']:>8.2f}{t['retentiond_s']:>8.2f}"
                  f"{t['ratio']:>7.3f}{t['baseline_in_run_s']:>9.2f}"
                  f"{t['retentiond_in_run_s']:>8.2f}{t['ratio_in_run']:>8.3f}"
                  f"{t['target']:>6.1f} {mark}")
        for r in sweep["results"]:
            rd, an = r["retentiond"], r["anonymize"]
            print(f"  peak RSS: delete sweep {rd['peak_rss_mb']:.1f} MB, anonymise sweep "
                  f"{an['peak_rss_mb']:.1f} MB; plan {rd['plan_seconds']:.2f} s")
        for prob in problems:
            print(f"  PROBLEM: {prob}")
    return 0 if sweep["rc"] == 0 and anon["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
