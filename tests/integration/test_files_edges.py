"""The ``files`` adapter where a review found files deleted or ledgered that must not be
(issue 12): two rules over the same files written differently (``inv/**`` and
``inv/{subject}/*.pdf``): the first one's floor protects the second one's records, as two
rules on one sql table do; two stores on one tree are refused; an isolation directory named
through a symlink is still skipped; an unreadable directory never settles a crashed batch's
intent."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from helpers import ledger, record_ref

from retentiond.adapters.files import FilesAdapter
from retentiond.adapters.registry import register, unregister

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


def put(root: Path, rel: str, at: datetime = OLD) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"scan")
    os.utime(path, (at.timestamp(), at.timestamp()))


def test_two_stores_on_one_tree_are_refused(ws: Any, tmp_path: Path) -> None:
    """A store on ``R/b`` would delete the isolated copies and ignore the floors of a store on
    ``R`` (and the same root twice likewise): config validate refuses, naming both."""
    root = tmp_path / "r"
    (root / "b").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(root)
    rule = {"store": "a", "path": "**", "dispose_after": "1y"}
    for other in (str(root / "b"), str(root) + "/", str(tmp_path / "alias")):
        ws.policy({"a": {"adapter": "files", "root": str(root)},
                   "b": {"adapter": "files", "root": other}},
                  [{"id": "all", **rule}, {"id": "inner", **rule, "store": "b"}])
        got = ws.invoke("config", "validate")
        assert got.code == 2, got.out + got.err
        assert "overlaps the root of store" in got.err, got.err
        assert not (root / ".retentiond-isolated").exists()


def test_an_isolation_dir_named_through_a_symlink_is_still_skipped(ws: Any,
                                                                   tmp_path: Path) -> None:
    real = tmp_path / "real" / "root"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    put(real, "logs/a.log")
    iso = {"id": "iso", "store": "s", "path": "logs/*.log", "dispose_after": "300d",
           "action": "isolate", "isolate": {"for": "30d", "dir": str(real / "quarantine")}}
    every = {"id": "all", "store": "s", "path": "**", "dispose_after": "1d"}
    ws.policy({"s": {"adapter": "files", "root": str(tmp_path / "link" / "root")}}, [iso])
    assert ws.invoke("run").code == 0
    copies = [p for p in (real / "quarantine").rglob("*") if p.is_file()]
    assert len(copies) == 1
    os.utime(copies[0], (OLD.timestamp(), OLD.timestamp()))
    ws.policy({"s": {"adapter": "files", "root": str(tmp_path / "link" / "root")}},
              [iso, every])
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert {r["rule"]: r.get("done", 0) for r in run.json()["rules"]} == {"iso": 0, "all": 0}
    assert [p for p in (real / "quarantine").rglob("*") if p.is_file()] == copies


CRASH = """
import os, sys
from retentiond.adapters.files import FilesAdapter
from retentiond.adapters.registry import register
from retentiond.cli import main
class Crash(FilesAdapter):
    def delete(self, selection, keys):
        os._exit(9)
register("filescrash", Crash)
main(sys.argv[1:])
"""
DENY = """
import errno, os, sys
real = os.scandir
def scandir(p="."):
    if isinstance(p, int) and os.readlink(f"/proc/self/fd/{p}").endswith("users/u1"):
        raise PermissionError(errno.EACCES, "denied")
    return real(p)
os.scandir = scandir
from retentiond.cli import main
main(sys.argv[1:])
"""


def test_an_unreadable_directory_never_settles_an_intent(ws: Any, tmp_path: Path) -> None:
    """After a crash before any unlink, a run that cannot read one directory (faked: the
    tests run as root, which reads everything) must not take its files for gone."""
    root = tmp_path / "root"
    put(root, "users/u1/a.pdf")
    put(root, "users/u2/b.pdf")
    rule = {"id": "r", "store": "s", "path": "users/{subject}/*.pdf", "dispose_after": "90d"}
    register("filescrash", FilesAdapter)
    try:
        ws.policy({"s": {"adapter": "filescrash", "root": str(root)}}, [rule])
        env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
        crash = subprocess.run([sys.executable, "-c", CRASH, "--config", str(ws.config), "run"],
                               capture_output=True, text=True, timeout=120, check=False,
                               env=env)
        assert crash.returncode == 9, crash.stderr
    finally:
        unregister("filescrash")
    ws.policy({"s": {"adapter": "files", "root": str(root)}}, [rule])
    denied = subprocess.run([sys.executable, "-c", DENY, "--config", str(ws.config), "run"],
                            capture_output=True, text=True, timeout=120, check=False, env=env)
    assert denied.returncode != 0, denied.stdout
    assert (root / "users/u1/a.pdf").exists()
    assert ledger(ws.root / "state.db", "dispose") == []  # nothing taken for gone
    # Readable again: both files go, each ledgered once.
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    refs = [r for e in ledger(ws.root / "state.db", "dispose") for r in e["record_refs"]]
    assert sorted(refs) == sorted(record_ref(ws.secret, "s", rule["path"], k)
                                  for k in ("users/u1/a.pdf", "users/u2/b.pdf"))


def test_a_hard_linked_file_is_never_counted_disposed(ws: Any, tmp_path: Path) -> None:
    """A due file with a second name (a hard link from outside the root): unlinking or moving
    this name would leave the person's data in place under the other, so the record fails
    (reason named), both names stay, nothing is ledgered; once the other name is gone, the
    next sweep disposes of it."""
    root = tmp_path / "root"
    put(root, "users/u1/a.pdf")
    put(root, "users/u2/b.pdf")
    outside = tmp_path / "copy.pdf"
    os.link(root / "users/u1/a.pdf", outside)
    for action in ("delete", "isolate"):
        rule = {"id": "r", "store": "s", "path": "users/{subject}/*.pdf",
                "dispose_after": "90d", "action": action,
                **({"isolate": {"for": "1y"}} if action == "isolate" else {})}
        ws.policy({"s": {"adapter": "files", "root": str(root)}}, [rule])
        run = ws.invoke("run", "--json")
        assert run.code == 1, run.out + run.err
        [got] = run.json()["rules"]
        assert (got["due"], got["done"], got["failed"]) == (1 if action == "isolate" else 2,
                                                           0 if action == "isolate" else 1, 1)
        assert got["error"] == "1 record failed: hard-linked (the data has another name)"
        assert (root / "users/u1/a.pdf").read_bytes() == outside.read_bytes() == b"scan"
        assert not (root / "users/u2/b.pdf").exists()
    disposed = [r for e in ledger(ws.root / "state.db", "dispose") for r in e["record_refs"]]
    assert disposed == [record_ref(ws.secret, "s", "users/{subject}/*.pdf", "users/u2/b.pdf")]
    outside.unlink()
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert not (root / "users/u1/a.pdf").exists()
