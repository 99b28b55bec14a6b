"""``audit export --format html``: a self-contained report for a data-protection officer.

One HTML file with inline CSS and an inline SVG chart (no scripts, no external resources): the
verification result, a one-line verdict and the Problems of the period (failing and blocked
rules per sweep, overdue requests, growing backlogs), the chain head, the policy's rules with
their sources, disposals per rule and month, erasure requests, legal holds and backup horizons.

The report names nothing personal: only counts, rule ids, store and target names, dates and
hashes. Raw subject ids, hold reasons and request references stay in the state database. The
ledger is streamed once and aggregated on the way, so memory does not grow with its length;
``since``/``until`` bound the ledger sections, requests and holds are shown as they are now.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import MetaData, Table, inspect, select
from sqlalchemy.engine import Engine

from retentiond.app import App
from retentiond.audit import checkpoint, problems
from retentiond.audit.export import bound, entries
from retentiond.audit.ledger import head
from retentiond.audit.problems import Problems
from retentiond.audit.verify import verify
from retentiond.errors import AuditError
from retentiond.policy.model import Policy

DISPOSAL_KINDS = ("dispose", "purge", "replay")
COLORS = ("#3b6ea5", "#e07b39", "#4c9a55", "#c0504d", "#8064a2", "#2c9fa8", "#b8860b",
          "#7f7f7f", "#d16ba5", "#5a5a9e")
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ccc}.meta{color:#555}
table{border-collapse:collapse;margin:.6em 0;width:100%}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px;word-break:break-all}.none{color:#666;font-style:italic}
.banner{padding:.8em 1em;margin:1em 0;border-radius:4px;font-size:16px}
.ok{background:#e6f4ea;border:2px solid #4c9a55}.bad{background:#fde7e7;border:3px solid #c0392b}
.bad strong{color:#c0392b;font-size:18px}.overdue{color:#c0392b;font-weight:bold}
svg text{font:10px system-ui,sans-serif}"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def when(value: Any) -> str:
    """A stored time as ``YYYY-MM-DD HH:MM UTC`` (naive values are UTC)."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = instant(value)
        if value is None:
            return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return str(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def instant(text: Any) -> datetime | None:
    try:
        at = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def table(head_cells: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """Cells are HTML already (escape values before passing them)."""
    th = "".join(f"<th>{c}</th>" for c in head_cells)
    body = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>\n"


def _td(cell: str) -> str:
    return f'<td class="n">{cell}</td>' if cell.isdigit() else f"<td>{cell}</td>"


# -- one pass over the ledger -----------------------------------------------------------------
@dataclass
class Tally:
    entries: int = 0
    months: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    kinds: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    last_disposal: dict[str, str] = field(default_factory=dict)
    horizon: dict[str, datetime] = field(default_factory=dict)

    @classmethod
    def of(cls, ledger: Iterator[dict[str, Any]]) -> Tally:
        tally = cls()
        for entry in ledger:
            tally.add(entry)
        return tally

    def add(self, entry: dict[str, Any]) -> None:
        self.entries += 1
        if entry["kind"] not in DISPOSAL_KINDS:
            return
        rule, store, n = entry["rule"] or "?", entry["store"] or "?", len(entry["record_refs"])
        month = self.months[entry["at"][:7]]
        month[rule] = month.get(rule, 0) + n
        kinds = self.kinds[rule]
        kinds[entry["kind"]] = kinds.get(entry["kind"], 0) + n
        self.last_disposal[store] = max(self.last_disposal.get(store, ""), entry["at"])
        until = instant(entry["detail"].get("beyond_use_until") or "")
        if until is not None and (store not in self.horizon or until > self.horizon[store]):
            self.horizon[store] = until

    def rules(self, policy: Policy) -> list[str]:
        """Rules with disposals: in policy order, then rules no longer in the policy."""
        known = [r.id for r in policy.rules if r.id in self.kinds]
        return known + sorted(set(self.kinds) - set(known))


# -- sections ---------------------------------------------------------------------------------
def header(app: App, since: str | None, until: str | None) -> str:
    period = (f"from {esc(when(since)) if since else 'the first entry'} "
              f"until {esc(when(until)) if until else 'now'}")
    return (f"<h1>Data-retention audit report</h1>\n<p class=\"meta\">Generated "
            f"{esc(when(datetime.now(UTC)))} by retentiond from <code>{esc(app.config_path.name)}"
            f"</code> (policy SHA-256 <code>{esc(app.policy.digest)}</code>). Ledger period: "
            f"{period}. Requests and holds are shown as they are now.</p>\n")


def verification(app: App) -> tuple[bool, str]:
    trusted: list[str] = []
    key = app.policy.signing_private_key
    if key is not None:
        trusted.append(checkpoint.public_hex(key))
    try:
        result = verify(app.state, trusted=trusted)
    except AuditError as exc:
        return False, str(exc)
    unchecked = "" if result.signatures_checked else "; signatures not checked (no signing_key)"
    return True, (f"{result.entries} entries, head {result.head_hash}, "
                  f"{result.checkpoints} checkpoints ({result.signed} signed){unchecked}")


def banner(ok: bool, text: str) -> str:
    if ok:
        return f'<div class="banner ok">Audit trail verified: {esc(text)}.</div>\n'
    return ('<div class="banner bad" role="alert"><strong>Audit trail verification FAILED'
            f"</strong><br>{esc(text)}.<br>The figures in this report come from a ledger that "
            "does not verify and cannot be relied on.</div>\n")


def chain(engine: Engine, ok: bool, text: str) -> str:
    with engine.connect() as conn:
        seq, hash_ = head(conn)
    cp = checkpoint.latest(engine)
    rows = [["Chain head", str(seq), f"<code>{esc(hash_)}</code>", "", ""]]
    if cp is None:
        rows.append(["Latest checkpoint", "", '<span class="none">none recorded</span>', "", ""])
    else:
        rows.append(["Latest checkpoint", esc(cp["seq"]), f"<code>{esc(cp['hash'])}</code>",
                     esc(when(cp["at"])), "signed (Ed25519)" if cp["signature"] else "not signed"])
    result = (esc(f"verified: {text}") if ok
              else f'<strong class="overdue">FAILED: {esc(text)}</strong>')
    return ("<h2>Audit trail</h2>\n" + table(["", "entry", "hash", "at", "signature"], rows)
            + f"<p>Verification: {result}</p>\n")


def rules_section(policy: Policy) -> str:
    rows = []
    for r in policy.rules:
        erasure = esc(r.erasure_action)
        if r.legal_basis:
            erasure += f"<br>legal basis: {esc(r.legal_basis)}"
        rows.append([f"<code>{esc(r.id)}</code>", esc(r.description), esc(r.source),
                     esc(r.store), esc(r.target), esc(r.action), esc(r.keep_for or "—"),
                     esc(r.dispose_after or "erasure requests only"), erasure])
    cols = ["rule", "description", "source", "store", "target", "action", "keep_for",
            "dispose_after", "on_erasure"]
    return "<h2>Rules</h2>\n" + (table(cols, rows) if rows else _none("no rules"))


def disposals_section(tally: Tally, policy: Policy) -> str:
    rules = tally.rules(policy)
    out = [f"<h2>Disposals per rule and month</h2>\n<p>{tally.entries} ledger entries in the "
           "period; records disposed (dispose), purged from isolation (purge) and re-disposed "
           "after a backup restore (replay).</p>\n"]
    if not rules:
        return out[0] + _none("no disposals recorded in this period")
    months = sorted(tally.months)
    out.append(chart(months, tally.months, rules))
    rows = [[esc(m), *(str(tally.months[m].get(r, 0)) for r in rules),
             str(sum(tally.months[m].values()))] for m in months]
    totals = [sum(tally.kinds[r].values()) for r in rules]
    rows.append(["<b>total</b>", *(str(t) for t in totals), str(sum(totals))])
    out.append(table(["month", *(f"<code>{esc(r)}</code>" for r in rules), "total"], rows))
    by_kind = [[f"<code>{esc(r)}</code>", *(str(tally.kinds[r].get(k, 0)) for k in
                                            DISPOSAL_KINDS), str(sum(tally.kinds[r].values()))]
               for r in rules]
    out.append(table(["rule", *DISPOSAL_KINDS, "total"], by_kind))
    return "".join(out)


def nice_ceiling(n: int) -> int:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least ``n`` (and >= 1)."""
    scale = 1
    while True:
        for step in (10, 20, 25, 50):
            if step * scale // 10 >= n:
                return max(step * scale // 10, 1)
        scale *= 10


def chart(months: list[str], data: dict[str, dict[str, int]], rules: list[str]) -> str:
    """Stacked bars: one per month, one colour per rule, a legend below."""
    top = nice_ceiling(max(sum(data[m].values()) for m in months))
    slot, bar, plot_h, left, top_pad = 54, 34, 200, 56, 20
    width = max(left + slot * len(months) + 20, 480)
    legend_y = top_pad + plot_h + 36
    height = legend_y + 18 * len(rules) + 8
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             'font-family="sans-serif" font-size="10" role="img" '
             'aria-label="records disposed per month and rule">']
    for frac in (0, 0.5, 1):
        y = top_pad + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f"{round(top * frac)}</text>")
    for i, month in enumerate(months):
        x, y = left + i * slot + (slot - bar) / 2, float(top_pad + plot_h)
        for j, rule in enumerate(rules):
            n = data[month].get(rule, 0)
            if n:
                h = plot_h * n / top
                y -= h
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar}" height="{h:.1f}" '
                             f'fill="{COLORS[j % len(COLORS)]}"><title>{esc(month)} '
                             f"{esc(rule)}: {n} records</title></rect>")
        parts.append(f'<text x="{x + bar / 2:.1f}" y="{top_pad + plot_h + 14}" '
                     f'text-anchor="middle">{esc(month)}</text>')
    for j, rule in enumerate(rules):
        y = legend_y + 18 * j
        parts.append(f'<rect x="{left}" y="{y - 10}" width="12" height="12" '
                     f'fill="{COLORS[j % len(COLORS)]}"/><text x="{left + 18}" y="{y}">'
                     f"{esc(rule)}</text>")
    return "".join(parts) + "</svg>\n"


# -- requests and holds (tables added by a later migration; absent on older databases) --------
def stored_rows(engine: Engine, name: str, order: str) -> Iterator[dict[str, Any]] | None:
    """Rows of a state table as mappings, streamed; None when the table does not exist."""
    if not inspect(engine).has_table(name):
        return None
    t = Table(name, MetaData(), autoload_with=engine)
    q = select(t).order_by(t.c[order]) if order in t.c else select(t)

    def rows() -> Iterator[dict[str, Any]]:
        with engine.connect() as conn:
            for row in conn.execution_options(yield_per=500).execute(q):
                yield dict(row._mapping)

    return rows()


def write_requests(engine: Engine, out: TextIO) -> None:
    out.write("<h2>Erasure requests</h2>\n")
    rows = stored_rows(engine, "requests", "created_at")
    now, counts = datetime.now(UTC), {"open": 0, "overdue": 0, "done": 0, "partial": 0}
    cols = ["request", "subject kind", "subject reference", "received", "due", "status",
            "completed", "outcome"]
    for n, r in enumerate(rows or ()):
        if n == 0:
            out.write(_open_table(cols))
        status = str(r.get("status"))
        due = instant(r["due_at"]) if isinstance(r.get("due_at"), str) else r.get("due_at")
        if status == "open" and due is not None and _utc(due) <= now:
            status = "overdue"
        counts[status] = counts.get(status, 0) + 1
        shown = f'<span class="overdue">{status}</span>' if status == "overdue" else esc(status)
        out.write("<tr>" + "".join(_td(c) for c in [
            f"<code>{esc(r.get('id'))}</code>", esc(r.get("subject_kind")),
            f"<code>{esc(r.get('subject_ref'))}</code>", esc(when(r.get("created_at"))),
            esc(when(r.get("due_at"))), shown, esc(when(r.get("completed_at"))),
            outcome(r.get("outcome"))]) + "</tr>\n")
    if not sum(counts.values()):
        out.write(_none("none recorded"))
        return
    out.write("</tbody></table>\n<p>" + ", ".join(f"{n} {k}" for k, n in counts.items())
              + ".</p>\n")


def outcome(text: Any) -> str:
    try:
        doc = json.loads(text or "{}")
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    lines = []
    for rule, value in sorted(doc.items()):
        o = value if isinstance(value, dict) else {}
        line = f"<code>{esc(rule)}</code>: {esc(o.get('disposed', 0))} disposed"
        if o.get("kept"):
            line += f", {esc(o['kept'])} kept (legal basis: {esc(o.get('legal_basis'))})"
        line += ", held" if o.get("held") else ""
        line += ", failed" if o.get("failed") else ""
        lines.append(line)
    return "<br>".join(lines)


def write_holds(engine: Engine, out: TextIO) -> None:
    out.write("<h2>Legal holds</h2>\n")
    rows = stored_rows(engine, "holds", "created_at")
    cols = ["hold", "scope", "covers", "placed", "released", "status"]
    n = 0
    for n, r in enumerate(rows or (), start=1):
        if n == 1:
            out.write(_open_table(cols))
        covers = {"rule": f"rule <code>{esc(r.get('rule'))}</code>",
                  "store": f"store <code>{esc(r.get('store'))}</code>"}.get(
            str(r.get("scope")),
            f"{esc(r.get('subject_kind'))} <code>{esc(r.get('subject_ref'))}</code>")
        status = "active" if r.get("released_at") is None else "released"
        out.write("<tr>" + "".join(_td(c) for c in [
            f"<code>{esc(r.get('id'))}</code>", esc(r.get("scope")), covers,
            esc(when(r.get("created_at"))), esc(when(r.get("released_at"))), status]) + "</tr>\n")
    if n == 0:
        out.write(_none("none recorded"))
        return
    out.write("</tbody></table>\n<p>Reasons and case references are kept in the state database "
              "(<code>retentiond hold list</code>).</p>\n")


def backups_section(policy: Policy, tally: Tally) -> str:
    stores = list(policy.stores) + sorted(set(tally.last_disposal) - set(policy.stores))
    rows = []
    for name in stores:
        store = policy.stores.get(name)
        retention = (esc(store.backups.retention) if store is not None and store.backups
                     else '<span class="none">no backups declared</span>')
        last = tally.last_disposal.get(name)
        horizon = tally.horizon.get(name)
        rows.append([f"<code>{esc(name)}</code>", retention,
                     esc(when(last)) if last else '<span class="none">none in period</span>',
                     esc(when(horizon)) if horizon else
                     '<span class="none">not recorded in the ledger (no beyond_use_until)</span>'])
    return ("<h2>Backup horizons</h2>\n<p>Copies of a disposed record may persist in backups "
            "for the store's backup retention; <i>beyond use until</i> is the latest date by "
            "which no copy remains.</p>\n"
            + table(["store", "backup retention", "last disposal", "beyond use until"], rows))


def _open_table(cols: list[str]) -> str:
    return "<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr></thead><tbody>"


def _none(text: str) -> str:
    return f'<p class="none">{esc(text)}</p>\n'


def _bound(text: str | None) -> datetime | None:
    value = bound(text)
    return datetime.fromisoformat(value) if value else None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# -- problems (from the runs' summaries, :mod:`retentiond.audit.problems`) ---------------------
def verdict_line(found: Problems) -> str:
    bad = bool(found.latest and found.latest["left"])
    return (f'<p id="verdict" class="banner {"bad" if bad else "ok"}">'
            f"<strong>{esc(found.verdict)}</strong>"
            + (f" (latest sweep <code>{esc(found.latest['run_id'])}</code>, "
               f"{esc(when(found.latest['at']))})" if found.latest else "") + "</p>\n")


def problems_section(found: Problems) -> str:
    out = ['<section id="problems"><h2>Problems</h2>\n']
    if not (found.failing or found.overdue or found.growing):
        out.append(_none("none: no rule failed or had blocked records, no request is overdue"))
    if found.failing:
        rows = [[esc(when(p["at"])), f"<code>{esc(p['run_id'])}</code>",
                 f"<code>{esc(p['rule'])}</code>", str(p["failed"]), str(p["blocked"]),
                 "<br>".join(f"<code>{esc(b.get('constraint'))}</code> ({esc(b.get('table'))}): "
                             f"{esc(b.get('count'))}" for b in p["blocked_by"]
                             if isinstance(b, dict)),
                 esc(p["error"])] for p in found.failing]
        out.append('<h3>Rules that failed or had blocked records</h3>\n<div id="failing">'
                   + table(["sweep", "run", "rule", "failed", "blocked", "blocked by",
                            "error"], rows) + "</div>")
    if found.overdue:
        rows = [[f"<code>{esc(q['id'])}</code>", esc(q["subject_kind"]),
                 f'<span class="overdue">{esc(when(q["due_at"]))}</span>',
                 outcome(json.dumps(q["outcome"]))] for q in found.overdue]
        out.append('<h3>Overdue erasure requests</h3>\n<div id="overdue">'
                   + table(["request", "subject kind", "due", "outcome so far"], rows)
                   + "</div>")
    if found.growing:
        rows = [[f"<code>{esc(rule)}</code>", " &rarr; ".join(str(n) for n in series)]
                for rule, series in found.growing.items()]
        out.append('<h3>Rules whose backlog grows</h3>\n<p>Records past retention still '
                   "present (failed + blocked), sweep after sweep.</p>\n<div id=\"growing\">"
                   + table(["rule", "backlog per sweep"], rows) + "</div>")
    return "".join(out) + "</section>\n"


# -- the document -----------------------------------------------------------------------------
def write_html(app: App, out: TextIO, since: str | None, until: str | None) -> None:
    engine = app.state
    ok, text = verification(app)
    tally = Tally.of(entries(engine, since, until))
    out.write('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
              "<title>retentiond audit report</title>"
              f"<style>{CSS}</style></head><body>\n")
    found = problems.collect(engine, _bound(since), _bound(until))
    out.write(header(app, since, until) + banner(ok, text) + verdict_line(found)
              + problems_section(found) + chain(engine, ok, text))
    out.write(rules_section(app.policy) + disposals_section(tally, app.policy))
    write_requests(engine, out)
    write_holds(engine, out)
    out.write(backups_section(app.policy, tally) + "</body></html>\n")
