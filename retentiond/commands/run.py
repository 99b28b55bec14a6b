"""``plan`` and ``run``: the dry run and the sweep."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import datetime

from retentiond import errors, output
from retentiond.adapters.base import blockers
from retentiond.app import App
from retentiond.executor import RuleResult
from retentiond.state import lease
from retentiond.sweep import SweepReport, choose_rules, sweep

COLUMNS = ("rule", "store", "target", "action", "due", "held", "kept", "done", "failed",
           "no clock", "bad clock")


def plan(app: App, rule_ids: Sequence[str], as_of: datetime | None) -> int:
    report = sweep(app, dry_run=True, rule_ids=rule_ids, as_of=as_of)
    _show(app, report)
    _unreachable(report)
    return report.exit_code


def run(app: App, rule_ids: Sequence[str], dry_run: bool, wait: float = 0.0) -> int:
    if dry_run:
        report = sweep(app, dry_run=True, rule_ids=rule_ids)
    else:
        rules = choose_rules(app, rule_ids)  # a bad --rule: usage error before anything opens
        # The leases of its stores, as `serve` replicas hold them: the timer, a manual run and
        # the daemon never sweep one store at once.
        names = [lease.store_lease(s) for s in dict.fromkeys(r.store for r in rules)]
        with lease.one_shot(app.state, lease.Timings.from_env(os.environ), wait=wait,
                            names=names) as held:
            # --rule: only the stores whose leases it holds (their crashed intents included;
            # the holders of the other stores reconcile theirs)
            report = sweep(app, dry_run=False, rule_ids=rule_ids, holder=held.holder,
                           should_stop=lambda: not held.held(),
                           stores={r.store for r in rules} if rule_ids else None)
    _show(app, report)
    _unreachable(report)
    return report.exit_code


def _unreachable(report: SweepReport) -> None:
    """Exit 3 comes with its one ``error:`` line on stderr (SPEC 1), as for every command;
    the table (or JSON document) still shows what the other rules did."""
    if report.unreachable:
        print(f"error: {errors.one_line(report.unreachable)}", file=sys.stderr)


def _show(app: App, report: SweepReport) -> None:
    doc = report.as_json()
    if app.json:
        output.emit_json(doc)
        return
    from rich.markup import escape
    rows = [(r.rule, r.store, r.target, _action(r), r.due, r.held, r.kept, r.done, r.failed,
             r.null_clock, r.bad_clock) for r in report.rules]
    t = doc["totals"]
    footer = ("total", "", "", "", t["due"], t["held"], t["kept"], t["done"], t["failed"],
              sum(r.null_clock for r in report.rules), sum(r.bad_clock for r in report.rules))
    kind = "Plan (dry run, nothing changed)" if report.dry_run else "Sweep"
    output.table(f"{kind} as of {report.as_of.isoformat(timespec='seconds')}  "
                 f"run {report.run_id[:12]}", COLUMNS, rows, numeric_from=4, footer=footer)
    for store, order in report.order.items():
        output.line(f"store {store}: rules run in foreign-key order (referencing tables "
                    f"first): {' -> '.join(order)}")
    for r in report.rules:
        for text in r.warnings or ():
            output.line(f"[yellow]warning:[/yellow] {escape(text)}")
        _references(r, report.dry_run)
        _partitions(r, report.dry_run)
        if r.purged:
            output.line(f"rule {r.rule}: {r.purged} isolated records "
                        f"{'would be ' if report.dry_run else ''}purged")
        if r.error and r.error != report.unreachable:  # that one is the error: line
            output.line(f"[red]rule {r.rule} failed:[/red] {r.error}")
    if not report.dry_run:
        verdict = "stopped early" if report.stopped else "complete"
        output.line(f"sweep {verdict}: {t['done']} disposed, {t['failed']} failed, "
                    f"{t['held']} held, {t['kept']} kept")


def _references(r: RuleResult, dry_run: bool) -> None:
    """What foreign keys or Object Lock block (never attempted) and what disposals cascade
    to."""
    if r.blocked:
        by = ", ".join(f"{b['constraint']} on {b['table']}: {b['count']}" for b in r.blocked_by)
        later = ("; rules that run before it in a real sweep may unblock some" if dry_run
                 else "")
        output.line(f"rule {r.rule}: {r.blocked} records blocked by {blockers(r.blocked_by)} "
                    f"({by}), not attempted{later}")
    for c in r.cascaded:
        what = "deleted" if c["action"] == "delete" else "set to NULL"
        output.line(f"rule {r.rule}: {c['count']} rows of {c['table']} "
                    f"{'would be ' if dry_run else ''}{what} through {c['constraint']}")


def _partitions(r: RuleResult, dry_run: bool) -> None:
    """``partitions: drop``: the partitions dropped (or to be), and why others are swept row
    by row (names and counts only)."""
    for p in r.partitions or ():
        if p["partition"] is None:
            output.line(f"rule {r.rule}: no partition dropped: {p['reason']}")
        elif p["drop"]:
            verb = "would be dropped" if dry_run else "dropped"
            output.line(f"rule {r.rule}: partition {p['partition']} {verb} ({p['rows']} rows)")
        else:
            output.line(f"rule {r.rule}: partition {p['partition']} swept row by row: "
                        f"{p['reason']}")


def _action(r: RuleResult) -> str:
    if not r.strategies:
        return r.action
    return f"{r.action} (" + ", ".join(f"{c}: {s}" for c, s in r.strategies.items()) + ")"
