"""Two ``files`` rules over the same files, written differently (``inv/**`` and
``inv/{subject}/*.pdf``): the first one's floor protects the second one's records, as two rules
on one sql table do (issue 12)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

OLD = datetime.now(UTC) - timedelta(days=400)


def test_a_floor_protects_files_another_rule_names_differently(ws: Any,
                                                               tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    for rel in ("inv/u1/a.pdf", "inv/u2/b.pdf", "tmp/u1/c.pdf"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"pdf")
        os.utime(path, (OLD.timestamp(), OLD.timestamp()))
    ws.policy({"uploads": {"adapter": "files", "root": str(root)}}, [
        {"id": "keep", "store": "uploads", "path": "inv/**", "keep_for": "10y",
         "dispose_after": "10y"},
        {"id": "del", "store": "uploads", "path": "inv/{subject}/*.pdf",
         "dispose_after": "1y"},
        {"id": "tmp", "store": "uploads", "path": "tmp/**", "dispose_after": "1y"}])
    plan = ws.invoke("plan", "--json")
    assert plan.code == 0, plan.err
    assert {r["rule"]: r["due"] for r in plan.json()["rules"]} == {
        "keep": 0, "del": 0, "tmp": 1}
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert {r["rule"]: r.get("done", 0) for r in run.json()["rules"]} == {
        "keep": 0, "del": 0, "tmp": 1}
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == ["inv/u1/a.pdf", "inv/u2/b.pdf"]
