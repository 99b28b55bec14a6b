"""The ``files`` adapter through the real CLI (issue 12): plan and run on a directory tree,
the exact files left, ledger references equal to recomputed HMACs, ``audit verify``, holds and
erasure requests by a ``{subject}`` path field, clocks from names, prune_empty_dirs, isolation
and purge, a crash in the middle of a batch, ``backup restored``, symlinks (and a directory
swapped for one between scan and delete), a file that cannot be removed, and hostile input.

Files are named like the personal data they stand for (a person's name in a folder, an e-mail
address in a file name): none of it may reach stdout, stderr or the ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import error_lines, ledger, log_free_lines, record_ref, state_rows

from retentiond.adapters.base import Selection
from retentiond.adapters.files import FilesAdapter
from retentiond.adapters.registry import register, unregister

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)
YOUNG = NOW - timedelta(days=3)
PATH = "users/{subject}/**/*.pdf"
RULE = {"id": "old-uploads", "source": "Privacy policy §3", "store": "uploads",
        "path": PATH, "dispose_after": "90d"}
# Personal data in paths and contents: it must never be printed, logged or ledgered.
SECRETS = ("Maria Schmidt", "maria.schmidt", "Jonas", "okafor@example.org", "u1001", "u1002",
           "u1003")

# path -> age (the mtime): due after 90 days
TREE: dict[str, datetime] = {
    "users/u1001/Maria Schmidt - CV.pdf": OLD,
    "users/u1001/2019/contract maria.schmidt@example.org.pdf": OLD,
    "users/u1001/2019/notes.txt": OLD,                      # not a .pdf: not the rule's
    "users/u1002/Jonas/invoice-1.pdf": OLD,
    "users/u1002/Jonas/invoice-2.pdf": YOUNG,               # not due yet
    "users/u1002/Jonas/invoice-3.pdf": OLD,
    "users/u1003/okafor@example.org.pdf": OLD,
    "users/u1003/a/b/c/deep.pdf": OLD,
    "users/loose.pdf": OLD,                                 # no subject directory: no match
    "archive/users/u1001/old.pdf": OLD,                     # outside the pattern
}
DUE = sorted(k for k, at in TREE.items()
             if at == OLD and k.endswith(".pdf") and k.startswith("users/u"))


@dataclass
class Store:
    root: Path

    def put(self, rel: str, at: datetime, text: str | None = None) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text is not None else f"{rel}: Maria Schmidt, +49 170 1234567")
        ts = int(at.timestamp())
        os.utime(path, (ts, ts))
        return path

    def files(self) -> list[str]:
        """Every regular file below the root, isolation directories included."""
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*")
                      if p.is_file() and not p.is_symlink())

    def live(self) -> list[str]:
        return [f for f in self.files() if not f.startswith(".retentiond-isolated/")]


def snapshot(top: Path) -> list[tuple[Any, ...]]:
    """Everything below ``top``: entries, types, modes, sizes, mtimes, contents."""
    out: list[tuple[Any, ...]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            extra: tuple[Any, ...] = ()
            if stat.S_ISREG(st.st_mode):
                extra = (st.st_size, st.st_mtime_ns,
                         hashlib.sha256(path.read_bytes()).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                extra = (os.readlink(path),)
            out.append((str(path.relative_to(top)), st.st_mode, *extra))
    return sorted(out)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "uploads")
    s.root.mkdir()
    for rel, at in TREE.items():
        s.put(rel, at)
    return s


def setup_policy(ws: Any, store: Store, rules: list[dict[str, Any]] | None = None,
                 **top: Any) -> None:
    ws.policy({"uploads": {"adapter": top.pop("adapter", "files"), "root": str(store.root)}},
              rules if rules is not None else [RULE], **top)


def refs(ws: Any, keys: list[str], target: str = PATH) -> list[str]:
    return [record_ref(ws.secret, "uploads", target, k) for k in keys]


def ledgered(ws: Any, kind: str = "dispose") -> Counter[str]:
    return Counter(r for e in ledger(ws.root / "state.db", kind) for r in e["record_refs"])


def no_personal_data(ws: Any, *texts: str) -> None:
    rows = json.dumps(state_rows(ws.root / "state.db", "select * from ledger"))
    pending = json.dumps(state_rows(ws.root / "state.db", "select * from pending"))
    for secret in SECRETS:
        for text in (*texts, rows, pending):
            assert secret not in text


def ok(result: Any) -> Any:
    assert result.code == 0, result.out + result.err
    return result.json() if result.out.lstrip().startswith(("{", "[")) else result


def one_error(result: Any, code: int) -> str:
    assert result.code == code, result.out + result.err
    lines = log_free_lines(result.err)
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ") and "Traceback" not in result.err
    return lines[0]


# -- plan, run, ledger, verify ----------------------------------------------------------------
def test_plan_then_run_disposes_exactly_the_due_files(ws: Any, store: Store) -> None:
    setup_policy(ws, store, batch_size=2)
    before = snapshot(store.root)
    plan = ok(ws.invoke("plan", "--json"))
    assert snapshot(store.root) == before, "a dry run changed the tree"
    [rule] = plan["rules"]
    assert {k: rule[k] for k in ("rule", "store", "target", "action", "due", "held", "kept",
                                 "done", "failed", "null_clock", "bad_clock")} == {
        "rule": "old-uploads", "store": "uploads", "target": PATH, "action": "delete",
        "due": 6, "held": 0, "kept": 0, "done": 0, "failed": 0, "null_clock": 0,
        "bad_clock": 0}
    assert len(DUE) == 6

    run = ws.invoke("run", "--json")
    doc = ok(run)
    assert doc["totals"] == {"due": 6, "held": 0, "kept": 0, "done": 6, "failed": 0}
    assert store.live() == sorted(set(TREE) - set(DUE))
    assert ledgered(ws) == Counter(refs(ws, DUE))
    entries = ledger(ws.root / "state.db", "dispose")
    assert [e["record_refs"] for e in entries] == [refs(ws, DUE[i:i + 2]) for i in (0, 2, 4)]
    assert {(e["rule"], e["store"], e["target"], e["action"], e["reason"]) for e in entries} == {
        ("old-uploads", "uploads", PATH, "delete", "schedule")}
    ok(ws.invoke("audit", "verify"))
    again = ok(ws.invoke("run", "--json"))
    assert again["totals"]["due"] == 0
    no_personal_data(ws, run.out, run.err)


def test_clock_from_the_name_and_bad_clocks(ws: Any, store: Store) -> None:
    day = NOW.date()
    names = {f"logs/app-{(day - timedelta(days=d)):%Y-%m-%d}.log": d for d in (0, 6, 8, 30)}
    for rel in [*names, "logs/app-latest.log", "logs/app-.log", "logs/app-2023-02-30.log"]:
        store.put(rel, OLD)  # an old mtime: only the name counts
    rule = {"id": "app-logs", "store": "uploads", "path": "logs/app-{clock:%Y-%m-%d}.log",
            "dispose_after": "7d"}
    setup_policy(ws, store, [rule])
    validate = ws.invoke("config", "validate")
    assert validate.code == 0, validate.err
    assert ("warning: rules[0] (app-logs).path: 3 files have a {clock:%Y-%m-%d} field that "
            "does not parse; they are never due by time (plan and run count them bad_clock)"
            ) in validate.err
    [planned] = ok(ws.invoke("plan", "--json"))["rules"]
    assert (planned["due"], planned["bad_clock"], planned["null_clock"]) == (2, 3, 0)
    ok(ws.invoke("run", "--json"))
    due = sorted(k for k, d in names.items() if d > 7)
    assert [f for f in store.live() if f.startswith("logs/")] == sorted(
        {*names, "logs/app-latest.log", "logs/app-.log", "logs/app-2023-02-30.log"} - set(due))
    assert ledgered(ws) == Counter(refs(ws, due, rule["path"]))


def test_explain_a_file(ws: Any, store: Store) -> None:
    setup_policy(ws, store)
    key = "users/u1002/Jonas/invoice-2.pdf"
    doc = ok(ws.invoke("--json", "explain", "--rule", "old-uploads", "--key", key))
    young = datetime.fromtimestamp(int(YOUNG.timestamp()), UTC)
    assert {k: doc[k] for k in ("key", "record_ref", "clock", "due_at", "decision",
                                "matching_rules")} == {
        "key": key, "record_ref": refs(ws, [key])[0], "clock": young.isoformat(),
        "due_at": (young + timedelta(days=90)).isoformat(), "decision": "nothing",
        "matching_rules": ["old-uploads"]}
    due = ok(ws.invoke("--json", "explain", "--rule", "old-uploads", "--key", DUE[0]))
    assert (due["decision"], due["action"]) == ("dispose", "delete")
    for bad in ("users/u1002/Jonas/nope.pdf", "users/u1001/2019/notes.txt", "../etc/passwd",
                "/etc/passwd", "users/u1002/../u1001/Maria Schmidt - CV.pdf"):
        line = one_error(ws.invoke("explain", "--rule", "old-uploads", "--key", bad), 2)
        assert line == (f"error: --key {bad!r}: no such record in uploads.{PATH}")


def test_overlapping_rules_keep_a_floor(ws: Any, store: Store) -> None:
    """Two rules on the same files (SPEC 3.2): retention beats deletion, whatever the clock
    (here the mtime, which no clock: key names)."""
    store.put("users/u1004/recent.pdf", NOW - timedelta(days=200))
    rules = [RULE, {"id": "legal-hold-1y", "store": "uploads", "path": PATH,
                    "keep_for": "1y", "dispose_after": "2y"}]
    setup_policy(ws, store, rules)
    doc = ok(ws.invoke("run", "--json"))
    assert [r["done"] for r in doc["rules"]] == [6, 0]  # 400 days old: both floors passed
    assert "users/u1004/recent.pdf" in store.live()     # inside the 1y floor of the other


# -- holds and erasure requests ---------------------------------------------------------------
def test_a_hold_by_subject_protects_that_subjects_files(ws: Any, store: Store) -> None:
    setup_policy(ws, store)
    hold = ok(ws.invoke("--json", "hold", "add", "--subject", "u1001", "--reason",
                        "litigation"))
    doc = ok(ws.invoke("run", "--json"))
    assert doc["totals"] == {"due": 4, "held": 2, "kept": 0, "done": 4, "failed": 0}
    held = [k for k in DUE if k.startswith("users/u1001/")]
    assert store.live() == sorted((set(TREE) - set(DUE)) | set(held))
    ok(ws.invoke("hold", "release", hold["id"], "--reason", "settled"))
    doc = ok(ws.invoke("run", "--json"))
    assert doc["totals"] == {"due": 2, "held": 0, "kept": 0, "done": 2, "failed": 0}
    assert ledgered(ws) == Counter(refs(ws, DUE))


def test_an_erasure_request_by_subject_ignores_the_clock(ws: Any, store: Store) -> None:
    rule = {**RULE, "dispose_after": "10y"}  # nothing due by time
    setup_policy(ws, store, [rule])
    request = ok(ws.invoke("--json", "request", "erase", "u1002"))
    run = ws.invoke("run", "--json")
    doc = ok(run)
    assert doc["totals"] == {"due": 3, "held": 0, "kept": 0, "done": 3, "failed": 0}
    gone = sorted(k for k in TREE if k.startswith("users/u1002/"))
    assert store.live() == sorted(set(TREE) - set(gone))
    [entry] = ledger(ws.root / "state.db", "dispose")
    assert entry["reason"] == f"erasure:{request['id']}"
    assert entry["record_refs"] == refs(ws, gone)
    assert entry["subject_ref"] == ok(ws.invoke("--json", "request", "list"))[0]["subject_ref"]
    [listed] = ok(ws.invoke("--json", "request", "list"))
    assert listed["status"] == "done"
    ok(ws.invoke("audit", "verify"))
    no_personal_data(ws, run.out, run.err)


# -- prune_empty_dirs ---------------------------------------------------------------------------
@pytest.mark.parametrize("prune", [False, True])
def test_prune_empty_dirs(ws: Any, store: Store, prune: bool) -> None:
    setup_policy(ws, store, [{**RULE, "prune_empty_dirs": prune}])
    ok(ws.invoke("run", "--json"))
    dirs = sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_dir())
    emptied = ["users/u1003", "users/u1003/a", "users/u1003/a/b", "users/u1003/a/b/c"]
    kept = ["archive", "archive/users", "archive/users/u1001", "users", "users/u1001",
            "users/u1001/2019", "users/u1002", "users/u1002/Jonas"]
    assert dirs == sorted(kept if prune else kept + emptied)


# -- isolate and purge ----------------------------------------------------------------------------
def test_isolate_then_purge(ws: Any, store: Store) -> None:
    rule = {**RULE, "action": "isolate", "isolate": {"for": "1d"}}
    other = {"id": "everything", "store": "uploads", "path": "**", "dispose_after": "10y"}
    setup_policy(ws, store, [rule, other])
    doc = ok(ws.invoke("run", "--json"))
    assert doc["rules"][0]["done"] == 6
    iso = store.root / ".retentiond-isolated" / "old-uploads"
    [stamp] = os.listdir(iso)
    purge_after = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert NOW + timedelta(days=1) <= purge_after <= datetime.now(UTC) + timedelta(days=1,
                                                                                 seconds=1)
    assert store.live() == sorted(set(TREE) - set(DUE))
    assert store.files() == sorted([*store.live(), *(
        f".retentiond-isolated/old-uploads/{stamp}/{k}" for k in DUE)])
    for path in (iso / stamp).rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600)
    [entry] = ledger(ws.root / "state.db", "dispose")
    assert (entry["action"], entry["record_refs"]) == ("isolate", refs(ws, DUE))
    recorded = datetime.fromisoformat(json.loads(entry["detail"])["purge_after"])
    assert purge_after - timedelta(seconds=1) < recorded <= purge_after  # rounded up
    # No rule reads isolated files: "everything" sees only the live tree, less the young
    # upload that old-uploads (its earlier due date) takes first.
    later = (NOW + timedelta(days=3653 + 10)).isoformat()
    plan = ok(ws.invoke("plan", "--json", "--as-of", later))
    assert plan["rules"][1]["due"] == len(store.live()) - 1
    assert plan["rules"][0]["purged"] == 6  # by then
    assert ok(ws.invoke("plan", "--json"))["rules"][0]["purged"] == 0  # not yet

    # Time passes: the copies' purge time is the directory they are in.
    os.rename(iso / stamp, iso / "20200101T000000Z")
    assert ok(ws.invoke("plan", "--json"))["rules"][0]["purged"] == 6
    doc = ok(ws.invoke("run", "--json"))
    assert doc["rules"][0]["purged"] == 6
    assert store.files() == store.live()
    assert os.listdir(iso) == []
    assert ledgered(ws, "purge") == Counter(refs(ws, DUE))
    ok(ws.invoke("audit", "verify"))


def test_isolation_on_another_file_system_is_refused(ws: Any, store: Store) -> None:
    rule = {**RULE, "action": "isolate", "isolate": {"for": "1d", "dir": "/dev/shm/quarantine"}}
    setup_policy(ws, store, [rule])
    if os.stat("/dev/shm").st_dev == os.stat(store.root).st_dev:
        pytest.skip("/dev/shm is on the same file system here")
    result = ws.invoke("config", "validate")
    assert result.code == 2, result.err
    assert error_lines(result.err) == [
        f"error: rules[0] (old-uploads).isolate.dir: /dev/shm/quarantine is on another file "
        f"system than the root {store.root}; isolation renames files, which works within one "
        "file system only"]


# -- crash in the middle of a batch ---------------------------------------------------------------
CRASH = """
import os, sys
from retentiond.adapters.files import FilesAdapter
from retentiond.adapters.registry import register
from retentiond.cli import main

class Crash(FilesAdapter):
    calls = 0

    def delete(self, selection, keys):
        Crash.calls += 1
        if Crash.calls == 2:  # the second batch: two files gone, then the process dies
            super().delete(selection, list(keys)[:2])
            os._exit(9)
        return super().delete(selection, keys)

register("filescrash", Crash)
main(sys.argv[1:])
"""


@pytest.fixture
def crash_adapter() -> Iterator[None]:
    register("filescrash", FilesAdapter)  # what the next, healthy run uses
    try:
        yield
    finally:
        unregister("filescrash")


def test_a_crash_mid_batch_is_reconciled(ws: Any, store: Store, crash_adapter: None) -> None:
    setup_policy(ws, store, batch_size=3, adapter="filescrash")
    env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
    proc = subprocess.run([sys.executable, "-c", CRASH, "--config", str(ws.config), "run"],
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 9, proc.stderr
    assert store.live() == sorted(set(TREE) - set(DUE[:5]))
    assert ledgered(ws) == Counter(refs(ws, DUE[:3]))  # batch 2's entry never written
    [left] = state_rows(ws.root / "state.db", "select record_refs from pending")
    assert sorted(json.loads(left["record_refs"])) == sorted(refs(ws, DUE[3:]))

    doc = ok(ws.invoke("run", "--json"))
    assert doc["totals"]["done"] == 1
    assert store.live() == sorted(set(TREE) - set(DUE))
    assert ledgered(ws) == Counter(refs(ws, DUE))  # each exactly once
    assert state_rows(ws.root / "state.db", "select id from pending") == []
    reconciled = [e for e in ledger(ws.root / "state.db", "dispose")
                  if json.loads(e["detail"]).get("reconciled")]
    assert [sorted(e["record_refs"]) for e in reconciled] == [sorted(refs(ws, DUE[3:5]))]
    ok(ws.invoke("audit", "verify"))


# -- backup restored -----------------------------------------------------------------------------
def test_backup_restored_replays_the_disposals_since(ws: Any, store: Store,
                                                     tmp_path: Path) -> None:
    setup_policy(ws, store)
    backup = tmp_path / "backup"
    shutil.copytree(store.root, backup, symlinks=True)
    taken_at = datetime.now(UTC)
    ok(ws.invoke("run", "--json"))
    store.put("users/u1001/new-upload.pdf", NOW)  # written after the disposals
    shutil.rmtree(store.root / "users")
    shutil.copytree(backup / "users", store.root / "users", symlinks=True)
    assert set(DUE) <= set(store.live())

    doc = ok(ws.invoke("--json", "backup", "restored", "--store", "uploads", "--taken-at",
                       taken_at.isoformat()))
    assert (doc["total"], doc["reapplied"]) == (6, [
        {"rule": "old-uploads", "action": "delete", "count": 6, "held": 0}])
    assert store.live() == sorted(set(TREE) - set(DUE))
    assert ledgered(ws, "replay") == Counter(refs(ws, DUE))
    later = ok(ws.invoke("--json", "backup", "restored", "--store", "uploads", "--taken-at",
                         datetime.now(UTC).isoformat()))
    assert later["total"] == 0
    ok(ws.invoke("audit", "verify"))


# -- symlinks --------------------------------------------------------------------------------------
@pytest.fixture
def outside(tmp_path: Path) -> Store:
    """A directory outside the root with files the rule's pattern would match there."""
    s = Store(tmp_path / "elsewhere")
    s.root.mkdir()
    for name in ("victim.pdf", "Jonas/invoice-1.pdf", "Jonas/invoice-3.pdf", "x/y.pdf"):
        s.put(name, OLD, "must survive")
    return s


def test_symlinks_are_never_followed(ws: Any, store: Store, outside: Store) -> None:
    link = store.root / "users/u1009/link.pdf"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside.root / "victim.pdf")
    os.utime(link, (int(OLD.timestamp()),) * 2, follow_symlinks=False)
    (store.root / "users/u1010").symlink_to(outside.root)  # a symlinked directory
    (store.root / "users/u1011").mkdir()
    (store.root / "users/u1011/x").symlink_to(outside.root / "x")
    before = snapshot(outside.root)
    setup_policy(ws, store)
    plan = ok(ws.invoke("plan", "--json"))
    assert plan["rules"][0]["due"] == 6
    ok(ws.invoke("run", "--json"))
    assert snapshot(outside.root) == before
    assert link.is_symlink() and (store.root / "users/u1010").is_symlink()
    assert store.live() == sorted(set(TREE) - set(DUE))


class SwapBeforeDelete(FilesAdapter):
    """Between the scan and the delete of the first batch, ``users/u1002/Jonas`` is moved out
    of the root and a symlink to another directory with the same file names takes its
    place."""

    outside: Path

    def delete(self, selection: Selection, keys: Any) -> list[Any]:
        jonas = Path(str(self.store.root)) / "users/u1002/Jonas"
        if jonas.is_dir() and not jonas.is_symlink():
            jonas.rename(self.outside / "moved-away")
            jonas.symlink_to(self.outside / "Jonas")
        return super().delete(selection, keys)


@pytest.fixture
def swapping(outside: Store) -> Iterator[None]:
    SwapBeforeDelete.outside = outside.root
    register("filesswap", SwapBeforeDelete)
    try:
        yield
    finally:
        unregister("filesswap")


def test_a_directory_swapped_for_a_symlink_cannot_redirect_a_delete(
        ws: Any, store: Store, outside: Store, swapping: None) -> None:
    before = snapshot(outside.root / "Jonas")
    setup_policy(ws, store, adapter="filesswap")
    doc = ok(ws.invoke("run", "--json"))
    assert snapshot(outside.root / "Jonas") == before, "a delete followed the symlink"
    assert sorted(os.listdir(outside.root / "moved-away")) == [
        "invoice-1.pdf", "invoice-2.pdf", "invoice-3.pdf"]
    swapped = [k for k in DUE if k.startswith("users/u1002/")]
    assert doc["totals"] == {"due": 4, "held": 0, "kept": 0, "done": 4, "failed": 0}
    assert ledgered(ws) == Counter(refs(ws, [k for k in DUE if k not in swapped]))


# -- a file that cannot be removed fails alone ----------------------------------------------------
@pytest.fixture
def stuck(store: Store, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """One due file that cannot be removed, and the error it fails with: as root, a file with
    another bind-mounted over it (EBUSY; root ignores permissions); otherwise a file in a
    read-only directory (EACCES)."""
    key = "users/u1003/okafor@example.org.pdf"
    path = store.root / key
    if os.geteuid() != 0:
        path.parent.chmod(0o500)
        yield key, "permission denied (PermissionError)"
        path.parent.chmod(0o755)
        return
    decoy = tmp_path / "decoy"
    decoy.write_text("decoy")
    os.utime(decoy, (int(OLD.timestamp()),) * 2)
    done = subprocess.run(["mount", "--bind", str(decoy), str(path)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.strip()}")
    try:
        yield key, "device or resource busy (OSError)"
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_file_that_cannot_be_removed_fails_alone(ws: Any, store: Store,
                                                   stuck: tuple[str, str]) -> None:
    key, why = stuck
    setup_policy(ws, store, batch_size=10)
    run = ws.invoke("run", "--json")
    assert run.code == 1, run.err
    [rule] = run.json()["rules"]
    assert (rule["due"], rule["done"], rule["failed"]) == (6, 5, 1)
    assert rule["error"] == f"1 record failed: {why}"
    assert store.live() == sorted((set(TREE) - set(DUE)) | {key})
    assert ledgered(ws) == Counter(refs(ws, [k for k in DUE if k != key]))
    assert state_rows(ws.root / "state.db", "select id from pending") == []
    ok(ws.invoke("audit", "verify"))
    no_personal_data(ws, run.out, run.err)


# -- refused rules and hostile input ------------------------------------------------------------
@pytest.mark.parametrize(("change", "line"), [
    ({"action": "anonymize", "anonymize": {"marker": "m", "columns": {"c": {
        "strategy": "null"}}}},
     "rules[0] (old-uploads).action: adapter 'files' cannot anonymize; it supports delete, "
     "isolate"),
    ({"on_erasure": "anonymize"},
     "rules[0] (old-uploads).on_erasure: adapter 'files' cannot anonymize; it supports delete, "
     "isolate"),
    ({"match": {"status": "closed"}},
     "rules[0] (old-uploads).match: the files adapter cannot filter on columns; narrow the "
     "path glob instead"),
    ({"where": "1 = 1"},
     "rules[0] (old-uploads).where: the files adapter has no SQL; narrow the path glob instead"),
    ({"key": "id"},
     "rules[0] (old-uploads).key: the files adapter's key is the path relative to the root; "
     "remove key"),
    ({"subject": "user_id"},
     "rules[0] (old-uploads).subject: the files adapter takes the subject from a {subject} "
     "field in path, like users/{subject}/**; remove subject"),
    ({"clock": "created_at"},
     "rules[0] (old-uploads).clock: the files adapter's clock is mtime or a {clock:FORMAT} "
     "field in path; 'created_at' is neither"),
    ({"path": "logs/{clock:%Y}.log", "clock": "mtime"},
     "rules[0] (old-uploads).clock: the path's {clock:...} field is this rule's clock; remove "
     "clock"),
    ({"path": "users/{user}/**"},
     "rules[0] (old-uploads).path: unknown field {user}; use {subject} or {clock:FORMAT}"),
    ({"path": "/srv/uploads/**"},
     "rules[0] (old-uploads).path: path is absolute; write it relative to the store's root, "
     "like invoices/**/*.pdf"),
    ({"path": "users/../../etc/**"},
     "rules[0] (old-uploads).path: path has a '..' segment; write the path without it"),
    ({"path": ".retentiond-isolated/**"},
     "rules[0] (old-uploads).path: .retentiond-isolated holds isolated files; no rule may "
     "read it"),
    ({"prune_empty_dirs": "yes"},
     "rules[0] (old-uploads).prune_empty_dirs: expected true or false, got a string 'yes'"),
    ({"path": None},
     "rules[0] (old-uploads).path: required for the files adapter: a glob relative to the "
     "store's root, like invoices/**/*.pdf"),
    ({"action": "isolate"},
     "rules[0] (old-uploads).isolate: isolate needs isolate.for, or backups.retention on "
     "store 'uploads', to know when to purge"),
    ({"action": "isolate", "isolate": {"for": "1d", "dir": ".."}},
     "rules[0] (old-uploads).isolate.dir: {parent} is the root or contains it; isolated files "
     "must stay out of the rules' reach"),
])
def test_config_validate_refuses(ws: Any, store: Store, change: dict[str, Any],
                                 line: str) -> None:
    rule = {k: v for k, v in {**RULE, **change}.items() if v is not None}
    setup_policy(ws, store, [rule])
    before = snapshot(store.root)
    for args in (("config", "validate"), ("run",)):
        result = ws.invoke(*args)
        assert result.code == 2, result.err
        assert f"error: {line.replace('{parent}', str(store.root.parent))}" in error_lines(
            result.err)
    assert snapshot(store.root) == before


@pytest.mark.parametrize(("root", "line", "code"), [
    ("/", "error: rules[0] (old-uploads).store: store 'uploads': refusing root /: it is the "
          "file system root; name the directory that holds the records, like /srv/uploads", 2),
    ("/etc", "error: rules[0] (old-uploads).store: store 'uploads': refusing root /etc: it "
             "is a system directory; name the directory that holds the records, like "
             "/srv/uploads", 2),
    ("/usr/../lib64/", "error: rules[0] (old-uploads).store: store 'uploads': refusing root "
                       "/lib64: it is a system directory; name the directory that holds the "
                       "records, like /srv/uploads", 2),
    ("/usr/lib/..", "error: rules[0] (old-uploads).store: store 'uploads': refusing root "
                    "/usr: it is a system directory; name the directory that holds the "
                    "records, like /srv/uploads", 2),
    ("{missing}", "error: store uploads: root {missing} does not exist; create it or fix "
                  "root:", 3),
    ("{link}", "error: store uploads: root {link} is a symlink; name the directory it points "
               "to", 3),
    ("{file}", "error: store uploads: root {file} is not a directory", 3),
])
def test_bad_roots_are_refused(ws: Any, store: Store, tmp_path: Path, root: str, line: str,
                               code: int) -> None:
    names = {"missing": str(tmp_path / "nope"), "link": str(tmp_path / "link"),
             "file": str(tmp_path / "a-file")}
    (tmp_path / "link").symlink_to(store.root)
    (tmp_path / "a-file").write_text("x")
    ws.policy({"uploads": {"adapter": "files", "root": root.format(**names)}}, [RULE])
    before = snapshot(store.root)
    for args in (("config", "validate"), ("plan",), ("run",)):
        result = ws.invoke(*args)
        assert one_error(result, code) == line.format(**names), args
    assert snapshot(store.root) == before


def test_fifos_devices_and_odd_names_are_not_records(ws: Any, store: Store) -> None:
    fifo = store.root / "users/u1005/pipe.pdf"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)  # opening it would block the sweep
    os.utime(fifo, (int(OLD.timestamp()),) * 2)
    if os.geteuid() == 0:
        os.mknod(store.root / "users/u1005/null.pdf", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    bad_name = os.fsencode(str(store.root / "users/u1005")) + b"/caf\xe9.pdf"
    with open(bad_name, "wb") as f:
        f.write(b"latin-1 name")
    os.utime(bad_name, (int(OLD.timestamp()),) * 2)
    setup_policy(ws, store)
    run = ws.invoke("run", "--json")
    doc = ok(run)
    assert doc["totals"]["done"] == 6
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert os.path.exists(bad_name)
    assert any('"undecodable_names": 1' in line for line in run.err.splitlines())
    if os.geteuid() == 0:
        assert stat.S_ISCHR((store.root / "users/u1005/null.pdf").lstat().st_mode)
