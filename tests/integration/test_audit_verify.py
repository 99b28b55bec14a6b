"""``audit verify`` and ``audit checkpoint`` against a real ledger: a sweep's trail verifies,
every kind of tampering is caught (exit 4, naming the entry), signed checkpoints cannot be
forged, and a ``kill -9`` in the middle of a sweep loses no ledger entry."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from conftest import invoke_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import (
    Row,
    copy_sqlite,
    create,
    error_lines,
    ids,
    ledger,
    now_seconds,
    record_ref,
    state_exec,
    state_rows,
    users_table,
)

from retentiond.audit.ledger import chain

RULE = {"id": "closed-accounts", "store": "app", "table": "users", "key": "id",
        "subject": "user_id", "clock": "created_at", "keep_for": "3y", "dispose_after": "3y"}
OLD = datetime(2019, 5, 17, 8, 30, 0)
# One policy entry and four dispose entries (10 due records in batches of 3).
ENTRIES = 5


def _signing_key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return key


def _public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw).hex()


def _policy(root: Path, signing: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1, "state": f"sqlite:///{root / 'state.db'}",
                           "secret_key": {"file": str(root / "secret.key")}, "batch_size": 3}
    if signing:
        doc["signing_key"] = {"file": str(root / "signing.pem")}
    doc["stores"] = {"app": {"adapter": "sql", "url": f"sqlite:///{root / 'store.db'}"}}
    doc["rules"] = [RULE]
    return doc


def _build(root: Path, signing: bool) -> Path:
    """A store with 10 due and 3 young rows, swept once (batch_size 3)."""
    root.mkdir()
    (root / "secret.key").write_text(secrets.token_hex(32))
    (root / "secret.key").chmod(0o600)
    if signing:
        _signing_key(root / "signing.pem")
    engine = sa.create_engine(f"sqlite:///{root / 'store.db'}")
    young = now_seconds() - timedelta(days=10)
    create(engine, users_table(sa.MetaData()),
           [Row(i, OLD + timedelta(days=i) if i <= 10 else young) for i in range(1, 14)])
    engine.dispose()
    config = root / "retentiond.yaml"
    config.write_text(yaml.safe_dump(_policy(root, signing), sort_keys=False))
    result = invoke_cli(["--config", str(config), "run", "--json"])
    assert result.code == 0, result.err
    assert result.json()["totals"]["done"] == 10
    return root


@pytest.fixture(scope="module")
def unsigned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("audit") / "unsigned", signing=False)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("audit") / "signed", signing=True)


def _copy(template: Path, ws: Any) -> Path:
    """The template's store, state database and keys in this test's workspace."""
    ws.secret.write_bytes((template / "secret.key").read_bytes())
    shutil.copy(template / "store.db", ws.root / "store.db")
    copy_sqlite(template / "state.db", ws.root / "state.db")
    top: dict[str, Any] = {"batch_size": 3}
    if (template / "signing.pem").exists():
        shutil.copy(template / "signing.pem", ws.root / "signing.pem")
        top["signing_key"] = {"file": str(ws.root / "signing.pem")}
    ws.policy({"app": {"adapter": "sql", "url": f"sqlite:///{ws.root / 'store.db'}"}},
              [RULE], **top)
    return ws.root / "state.db"


def _entry(state: Path, seq: int) -> dict[str, Any]:
    (row,) = state_rows(state, "select * from ledger where seq = ?", seq)
    return row


def _rehash_from(state: Path, seq: int) -> str:
    """What a careful forger does after editing entry ``seq``: recompute every hash from there
    and move the head. Returns the new head hash."""
    prev = _entry(state, seq - 1)["hash"]
    for entry in ledger(state):
        if entry["seq"] < seq:
            continue
        entry["detail"] = json.loads(entry["detail"])
        prev = chain(prev, entry)
        state_exec(state, "update ledger set hash = ? where seq = ?", prev, entry["seq"])
    state_exec(state, "update ledger_head set hash = ?", prev)
    return prev


def _verify_fails(ws: Any, entry: int, *args: str) -> str:
    result = ws.invoke("audit", "verify", *args)
    assert result.code == 4, (result.out, result.err)
    assert "audit trail verified" not in result.out
    lines = error_lines(result.err)
    assert len(lines) == 1, result.err
    assert f"entry {entry} " in lines[0] or lines[0].endswith(f"entry {entry}"), lines[0]
    assert "Traceback" not in result.err
    return lines[0]


NO_EXTERNAL = ("no external checkpoint: a rewritten tail whose checkpoints were deleted cannot "
               "be detected, nor entries appended after the latest checkpoint (give "
               "--checkpoint FILE)")

# -- an honest trail ---------------------------------------------------------------------------
def test_sweep_trail_verifies(unsigned: Path, ws: Any) -> None:
    state = _copy(unsigned, ws)
    entries = ledger(state)
    assert [(e["seq"], e["kind"], e["record_count"]) for e in entries] == [
        (1, "policy", 0), (2, "dispose", 3), (3, "dispose", 3), (4, "dispose", 3),
        (5, "dispose", 1)]
    assert sorted(r for e in entries for r in e["record_refs"]) == sorted(
        record_ref(ws.secret, "app", "users", i) for i in range(1, 11))
    (head,) = state_rows(state, "select seq, hash from ledger_head")
    assert head == {"seq": ENTRIES, "hash": entries[-1]["hash"]}
    result = ws.invoke("audit", "verify")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"audit trail verified: {ENTRIES} entries, head {entries[-1]['hash']}, 1 checkpoints "
        "(0 signed)",
        "signatures NOT checked against a trusted key: give --public-key FILE (from `audit "
        "public-key`) or set signing_key",
        NO_EXTERNAL]


# -- tampering with the state database ---------------------------------------------------------
def _change_refs(state: Path) -> None:
    refs = json.loads(_entry(state, 3)["record_refs"])
    refs[1] = "0" * 64
    assert state_exec(state, "update ledger set record_refs = ? where seq = 3",
                      json.dumps(refs)) == 1


def _change_at(state: Path) -> None:
    at = _entry(state, 3)["at"]
    earlier = datetime.fromisoformat(at) - timedelta(days=1)
    assert state_exec(state, "update ledger set at = ? where seq = 3",
                      earlier.isoformat(timespec="microseconds")) == 1


def _delete_middle(state: Path) -> None:
    assert state_exec(state, "delete from ledger where seq = 3") == 1


def _delete_last_fix_head(state: Path) -> None:
    assert state_exec(state, "delete from ledger where seq = ?", ENTRIES) == 1
    prev = _entry(state, ENTRIES - 1)["hash"]
    assert state_exec(state, "update ledger_head set seq = ?, hash = ?", ENTRIES - 1, prev) == 1


@pytest.mark.parametrize(("tamper", "entry"), [
    (_change_refs, 3), (_change_at, 3), (_delete_middle, 3), (_delete_last_fix_head, ENTRIES),
], ids=["record_refs", "at", "delete-middle", "delete-last-fix-head"])
def test_tampered_ledger_fails_verify(unsigned: Path, ws: Any, tamper: Any, entry: int) -> None:
    state = _copy(unsigned, ws)
    tamper(state)
    _verify_fails(ws, entry)


def test_checkpoint_file_catches_a_truncated_tail(unsigned: Path, ws: Any) -> None:
    state = _copy(unsigned, ws)
    out = ws.root / "checkpoint.json"
    saved = ws.invoke("audit", "checkpoint", "-o", str(out))
    assert saved.code == 0, saved.err
    cp = json.loads(out.read_text())
    assert (cp["seq"], cp["hash"]) == (ENTRIES, _entry(state, ENTRIES)["hash"])

    # Remove the last two entries and cover the tracks inside the state database.
    state_exec(state, "delete from ledger where seq > 3")
    state_exec(state, "update ledger_head set seq = 3, hash = ?", _entry(state, 3)["hash"])
    state_exec(state, "delete from checkpoints where seq > 3")
    inside = ws.invoke("audit", "verify")
    assert inside.code == 0, inside.err
    assert inside.out.startswith("audit trail verified: 3 entries")
    _verify_fails(ws, ENTRIES, "--checkpoint", str(out))


def test_checkpoint_file_catches_a_rewritten_tail(unsigned: Path, ws: Any) -> None:
    state = _copy(unsigned, ws)
    out = ws.root / "checkpoint.json"
    assert ws.invoke("audit", "checkpoint", "-o", str(out)).code == 0
    refs = json.loads(_entry(state, 4)["record_refs"])
    state_exec(state, "update ledger set record_refs = ? where seq = 4", json.dumps(refs[:2]))
    head = _rehash_from(state, 4)
    state_exec(state, "update checkpoints set hash = ?", head)
    inside = ws.invoke("audit", "verify")
    assert inside.code == 0, inside.err
    _verify_fails(ws, ENTRIES, "--checkpoint", str(out))


# -- signed checkpoints ------------------------------------------------------------------------
def test_signed_checkpoints_verify(signed: Path, ws: Any) -> None:
    state = _copy(signed, ws)
    key = serialization.load_pem_private_key((signed / "signing.pem").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    public = _public_hex(key)
    (cp,) = state_rows(state, "select * from checkpoints")
    assert (cp["seq"], cp["public_key"], len(cp["signature"])) == (ENTRIES, public, 128)
    result = ws.invoke("audit", "verify")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].endswith("1 checkpoints (1 signed)")
    assert lines[1:] == ["signatures checked against the trusted public key from the policy's "
                         "signing_key", NO_EXTERNAL]
    out = ws.root / "checkpoint.json"
    assert ws.invoke("audit", "checkpoint", "-o", str(out)).code == 0
    assert ws.invoke("audit", "verify", "--checkpoint", str(out)).code == 0


def _flip(hex_text: str) -> str:
    return ("1" if hex_text[0] == "0" else "0") + hex_text[1:]


def test_forged_checkpoint_signature_fails(signed: Path, ws: Any) -> None:
    state = _copy(signed, ws)
    (cp,) = state_rows(state, "select id, signature from checkpoints")
    state_exec(state, "update checkpoints set signature = ? where id = ?",
               _flip(cp["signature"]), cp["id"])
    _verify_fails(ws, ENTRIES)


def test_checkpoint_resigned_with_another_key_fails(signed: Path, ws: Any) -> None:
    """A forger rewrites the tail, rehashes, and signs the checkpoint with their own key."""
    from retentiond.audit.checkpoint import signed_payload

    state = _copy(signed, ws)
    state_exec(state, "update ledger set record_refs = '[]' where seq = ?", ENTRIES)
    head = _rehash_from(state, ENTRIES)
    (cp,) = state_rows(state, "select * from checkpoints")
    cp["hash"] = head
    forger = Ed25519PrivateKey.generate()
    state_exec(state, "update checkpoints set hash = ?, signature = ?, public_key = ?", head,
               forger.sign(signed_payload(cp)).hex(), _public_hex(forger))
    _verify_fails(ws, ENTRIES)


def test_stripped_checkpoint_signature_fails_when_signing_key_is_set(signed: Path,
                                                                      ws: Any) -> None:
    state = _copy(signed, ws)
    state_exec(state, "update ledger set record_refs = '[]' where seq = ?", ENTRIES)
    head = _rehash_from(state, ENTRIES)
    state_exec(state, "update checkpoints set hash = ?, signature = null, public_key = null",
               head)
    _verify_fails(ws, ENTRIES)


def test_forged_signature_on_checkpoint_file_fails(signed: Path, ws: Any) -> None:
    _copy(signed, ws)
    out = ws.root / "checkpoint.json"
    assert ws.invoke("audit", "checkpoint", "-o", str(out)).code == 0
    cp = json.loads(out.read_text())
    cp["signature"] = _flip(cp["signature"])
    out.write_text(json.dumps(cp))
    _verify_fails(ws, ENTRIES, "--checkpoint", str(out))


# -- crash safety ------------------------------------------------------------------------------
ROWS = 30_000


def _progress(state: Path) -> tuple[int, int]:
    """(dispose entries in the ledger, intents pending) as another process sees them."""
    try:
        conn = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("select (select count(*) from ledger where kind = 'dispose'), "
                               "(select count(*) from pending)").fetchone()
            return int(row[0]), int(row[1])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0, 0  # not created or not migrated yet


def _kill_mid_sweep(ws: Any) -> None:
    """Start a sweep and SIGKILL it once it has ledgered a batch and has the intent of the
    next one pending (so the kill lands between intent, disposal and ledger)."""
    state = ws.root / "state.db"
    with (ws.root / "killed.log").open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "retentiond", "--config", str(ws.config), "run"],
            stdout=log, stderr=log,
            env={k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"})
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None:
                entries, pending = _progress(state)
                if entries and pending:
                    break
                assert time.monotonic() < deadline, "the sweep wrote no ledger entry"
                time.sleep(0.001)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"the sweep finished (exit {proc.returncode}) before it could be killed; "
        "give it more rows")


def test_kill_9_mid_sweep_loses_no_ledger_entry(sqlite_db: Any, ws: Any) -> None:
    engine = sqlite_db.engine()
    young = now_seconds() - timedelta(days=10)
    table = users_table(sa.MetaData())
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [
            {"id": i, "user_id": i, "created_at": OLD if i % 3 else young, "full_name": "-",
             "email": "-", "status": "closed", "flagged": 0} for i in range(1, ROWS + 1)])
    due = {i for i in range(1, ROWS + 1) if i % 3}
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE], batch_size=500)
    state = ws.root / "state.db"

    _kill_mid_sweep(ws)
    gone = due - ids(engine, "users")
    ledgered = Counter(r for e in ledger(state, "dispose") for r in e["record_refs"])
    assert 0 < len(gone) < len(due)
    assert max(ledgered.values()) == 1
    assert set(ledgered) <= {record_ref(ws.secret, "app", "users", i) for i in gone}

    final = ws.invoke("run", "--json")
    assert final.code == 0, final.err
    assert ids(engine, "users") == set(range(1, ROWS + 1)) - due
    ledgered = Counter(r for e in ledger(state, "dispose") for r in e["record_refs"])
    assert ledgered == Counter({record_ref(ws.secret, "app", "users", i): 1 for i in due})
    assert state_rows(state, "select count(*) as n from pending") == [{"n": 0}]
    verified = ws.invoke("audit", "verify")
    assert verified.code == 0, verified.err
    engine.dispose()


def test_batch_disposed_but_not_ledgered_is_ledgered_once(sqlite_db: Any, ws: Any) -> None:
    """The crash window between the store's commit and the ledger's, made deterministic: an
    intent left in ``pending`` whose records are gone is ledgered once at the next start; its
    records still present are left to the sweep."""
    engine = sqlite_db.engine()
    young = now_seconds() - timedelta(days=10)
    create(engine, users_table(sa.MetaData()),
           [Row(i, OLD if i <= 12 else young) for i in range(1, 16)])
    ws.policy({"app": {"adapter": "sql", "url": sqlite_db.url}}, [RULE], batch_size=5)
    assert ws.invoke("db", "upgrade").code == 0
    state = ws.root / "state.db"
    ref = {i: record_ref(ws.secret, "app", "users", i) for i in range(1, 16)}
    state_exec(state, "insert into pending (created_at, run_id, rule, store, target, action, "
               "reason, subject_ref, record_refs, detail) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               "2026-01-01 00:00:00.000000", "c" * 32, "closed-accounts", "app", "users",
               "delete", "schedule", None, json.dumps([ref[i] for i in (1, 2, 3, 4, 5)]), "{}")
    with engine.begin() as conn:
        conn.execute(sa.text("delete from users where id in (1, 2, 3)"))

    run = ws.invoke("run", "--json")
    assert run.code == 0, run.err
    assert run.json()["totals"]["done"] == 9
    assert ids(engine, "users") == set(range(13, 16))
    entries = ledger(state, "dispose")
    assert sorted(entries[0]["record_refs"]) == sorted(ref[i] for i in (1, 2, 3))
    assert json.loads(entries[0]["detail"])["reconciled"] is True
    ledgered = Counter(r for e in entries for r in e["record_refs"])
    assert ledgered == Counter({ref[i]: 1 for i in range(1, 13)})
    assert state_rows(state, "select count(*) as n from pending") == [{"n": 0}]
    assert ws.invoke("audit", "verify").code == 0
    engine.dispose()
