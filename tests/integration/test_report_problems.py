"""The audit report's verdict and Problems section, rendered in headless Chromium, and the
same problems in ``status`` (SPEC 7, issue 11).

The period has three sweeps written straight into the state database's ``runs`` table (their
summaries are what ``run --json`` prints): ``old-messages`` has records blocked by a foreign
key in each, more every time; ``accounts`` failed in the second. A request pass in between
(``requests_only``) says nothing of the backlog, a dry run is not a sweep. One erasure request
is overdue. The screenshot is kept in ``tests/artifacts/`` (ignored by git) for a person to
look at; the assertions read the DOM Chromium built.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from marketplace import B, build, now_seconds, ok, policy

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FK = {"constraint": "fk_replies_message", "table": "replies"}


def _rule(rule: str, *, failed: int = 0, blocked: int | None = None,
          error: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"rule": rule, "store": "app", "target": rule, "action": "delete",
                           "due": 5, "held": 0, "kept": 0, "done": 5 - failed,
                           "failed": failed}
    if blocked is not None:
        doc |= {"blocked": blocked, "blocked_by": [{**FK, "count": blocked}] if blocked else []}
    return doc | ({"error": error} if error else {})


def _runs(state_url: str, start: datetime) -> list[str]:
    """(started_at offset in hours, dry run, summary) rows; the run ids, oldest first."""
    sweeps: list[tuple[int, bool, dict[str, Any]]] = [
        (0, False, {"rules": [_rule("accounts"), _rule("old-messages")]}),  # before `blocked`
        (1, False, {"rules": [_rule("accounts", failed=2, error="store app is unreachable"),
                              _rule("old-messages", blocked=1)]}),
        (2, False, {"requests_only": True,
                    "rules": [_rule("accounts", blocked=0), _rule("old-messages", blocked=0)]}),
        (3, True, {"rules": [_rule("accounts", failed=9, error="never shown")]}),
        (4, False, {"rules": [_rule("accounts", blocked=0), _rule("old-messages", blocked=3)]}),
    ]
    engine = sa.create_engine(state_url)
    ids = []
    with engine.begin() as conn:
        for hours, dry, summary in sweeps:
            at = (start + timedelta(hours=hours)).replace(tzinfo=None)
            run_id = f"run{hours}{'dry' if dry else ''}".ljust(12, "0")
            conn.execute(sa.text(
                "insert into runs (id, started_at, finished_at, as_of, dry_run, status, "
                "policy_digest, summary) values (:id, :at, :at, :at, :dry, :status, 'd', :s)"),
                {"id": run_id, "at": at, "dry": dry, "s": json.dumps(summary),
                 "status": "failed" if hours == 1 else "ok"})
            ids.append(run_id)
    engine.dispose()
    return ids


class Dom(HTMLParser):
    """Text by element id, and the order of the h2 headings."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[list[str]]] = {}
        self.h2: list[str] = []
        self._open: list[tuple[str, str | None]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open.append((tag, dict(attrs).get("id")))
        ids = [i for _, i in self._open if i]
        if tag == "tr" and ids:
            self.rows.setdefault(ids[-1], []).append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        ids = [i for _, i in self._open if i]
        if tag in ("td", "th") and self._cell is not None and ids:
            self.rows[ids[-1]][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for _, i in self._open:
            if i:
                self.text[i] = self.text.get(i, "") + data
        if self._cell is not None:
            self._cell.append(data)
        if self._open and self._open[-1][0] == "h2":
            self.h2.append(data)


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    return found


def _render(html_file: Path, screenshot: Path) -> str:
    browser = _chromium()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={html_file.parent / 'chromium-profile'}"]
    url = html_file.as_uri()
    shot = subprocess.run([*flags, "--window-size=1200,1400", f"--screenshot={screenshot}", url],
                          capture_output=True, text=True, timeout=120, check=False)
    assert shot.returncode == 0, shot.stderr
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr
    return dom.stdout


def test_report_shows_blocked_rules_and_overdue_requests_first(sqlite_db: Any, ws: Any,
                                                               tmp_path: Path) -> None:
    engine = sqlite_db.engine()
    build(engine, now_seconds())
    engine.dispose()
    policy(ws, sqlite_db.url)
    late = ok(ws.invoke("request", "erase", str(B), "--due", "0d", "--json"))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    run0, run1, run2, _, run4 = _runs(ws.state_url, start)

    out = tmp_path / "report.html"
    export = ws.invoke("audit", "export", "--format", "html", "-o", str(out))
    assert export.code == 0, export.err
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "report-problems.png"
    dom = Dom()
    dom.feed(_render(out, screenshot))
    assert screenshot.stat().st_size > 10_000

    assert " ".join(dom.text["verdict"].split()) == (
        f"3 records past retention still present, see Problems (latest sweep {run4}, "
        f"{(start + timedelta(hours=4)).strftime('%Y-%m-%d %H:%M')} UTC)")
    assert dom.h2[:2] == ["Problems", "Audit trail"]  # at the top, before everything else
    at = {h: (start + timedelta(hours=h)).strftime("%Y-%m-%d %H:%M UTC") for h in (1, 4)}
    assert dom.rows["failing"] == [
        ["sweep", "run", "rule", "failed", "blocked", "blocked by", "error"],
        [at[1], run1, "accounts", "2", "0", "", "store app is unreachable"],
        [at[1], run1, "old-messages", "0", "1", "fk_replies_message (replies): 1", ""],
        [at[4], run4, "old-messages", "0", "3", "fk_replies_message (replies): 3", ""]]
    due = datetime.fromisoformat(late["due_at"]).strftime("%Y-%m-%d %H:%M UTC")
    assert dom.rows["overdue"] == [["request", "subject kind", "due", "outcome so far"],
                                   [late["id"], "user", due, ""]]
    # old-messages: 0 (run0), 1, 3; the request pass and the dry run are not sweeps of it
    assert dom.rows["growing"] == [["rule", "backlog per sweep"], ["old-messages", "0 → 1 → 3"]]
    assert run0 not in dom.text["problems"] and run2 not in dom.text["problems"]

    status = ok(ws.invoke("status", "--json"))["last_sweep"]
    assert (status["run_id"], status["problems"]) == (run4, [
        {"rule": "old-messages", "failed": 0, "blocked": 3,
         "blocked_by": [{**FK, "count": 3}], "error": None}])
    text = ws.invoke("status")
    assert text.code == 0, text.err
    assert "  rule old-messages: 0 failed, 3 blocked, 3 by fk_replies_message (replies)\n" \
        in text.out


def test_report_verdict_when_every_due_record_went(sqlite_db: Any, ws: Any,
                                                   tmp_path: Path) -> None:
    engine = sqlite_db.engine()
    build(engine, now_seconds())
    engine.dispose()
    policy(ws, sqlite_db.url)
    run = ok(ws.invoke("run", "--json"))
    out = tmp_path / "report.html"
    assert ws.invoke("audit", "export", "--format", "html", "-o", str(out)).code == 0
    page = out.read_text()
    assert '<p id="verdict" class="banner ok"><strong>all due records disposed</strong>' \
        f" (latest sweep <code>{run['run_id']}</code>, " in page
    assert "none: no rule failed or had blocked records, no request is overdue" in page
    assert ok(ws.invoke("status", "--json"))["last_sweep"]["problems"] == []
