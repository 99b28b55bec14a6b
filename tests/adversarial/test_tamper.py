"""Tamper evidence an auditor can use (issue 8, defect 9).

The attacker can write the state database: they rewrite a ledger entry, recompute the chain,
move the head, and re-sign every checkpoint with their own Ed25519 key (storing its public key
next to it), or delete the checkpoints that would give them away. ``audit verify`` must never
trust a key found in the state database, and a rewritten tail whose checkpoints were deleted is
only detectable with checkpoints kept outside it (``checkpoints: {file: PATH}`` or
``audit checkpoint -o``).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from helpers import Row, create, state_exec, state_rows, users_table

from retentiond.audit.checkpoint import signed_payload
from retentiond.audit.ledger import chain

OLD = datetime(2019, 5, 17, 8, 30, 0)
RULE = {"id": "closed-accounts", "store": "app", "table": "users", "key": "id",
        "subject": "user_id", "clock": "created_at", "keep_for": "3y", "dispose_after": "3y"}
# Run 1: a policy entry and 3 dispose entries (5 rows, batches of 2) -> checkpoint at 4.
# Run 2: 3 more rows -> 2 dispose entries -> checkpoint at 6.
FIRST_CP, LAST_CP = 4, 6


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw).hex()


def _policy(ws: Any, *, signing: bool) -> None:
    top: dict[str, Any] = {"batch_size": 2,
                           "checkpoints": {"file": str(ws.root / "checkpoints.jsonl")}}
    if signing:
        top["signing_key"] = {"file": str(ws.root / "real.key")}
    ws.policy({"app": {"adapter": "sql", "url": f"sqlite:///{ws.root / 'store.db'}"}},
              [RULE], **top)


@pytest.fixture
def trail(ws: Any) -> Ed25519PrivateKey:
    """Two real sweeps over a SQLite store, signed with the real key; returns that key."""
    real = Ed25519PrivateKey.generate()
    (ws.root / "real.key").write_bytes(_pem(real))
    (ws.root / "real.key").chmod(0o600)
    (ws.root / "real.pem").write_bytes(_public_pem(real))
    engine = sa.create_engine(f"sqlite:///{ws.root / 'store.db'}")
    table = users_table(sa.MetaData())
    create(engine, table, [Row(i, OLD + timedelta(days=i)) for i in range(1, 6)])
    _policy(ws, signing=True)
    first = ws.invoke("run", "--json")
    assert first.code == 0, first.err
    with engine.begin() as conn:
        conn.execute(table.insert(), [Row(i, OLD).values() for i in range(6, 9)])
    second = ws.invoke("run", "--json")
    assert second.code == 0, second.err
    assert second.json()["totals"]["done"] == 3
    engine.dispose()
    seqs = [cp["seq"] for cp in state_rows(_state(ws), "select seq from checkpoints order by id")]
    assert seqs == [FIRST_CP, LAST_CP]
    return real


def _state(ws: Any) -> Path:
    return Path(ws.root / "state.db")


def _entries(state: Path) -> list[dict[str, Any]]:
    rows = state_rows(state, "select * from ledger order by seq")
    for r in rows:
        r["record_refs"] = json.loads(r["record_refs"])
        r["detail"] = json.loads(r["detail"])
    return rows


def _rewrite(state: Path, seq: int) -> dict[int, str]:
    """Drop one record reference from entry ``seq``, recompute every hash from there and move
    the head, as a careful forger would. Returns the new hash at each entry."""
    refs = _entries(state)[seq - 1]["record_refs"]
    assert state_exec(state, "update ledger set record_refs = ? where seq = ?",
                      json.dumps(refs[1:]), seq) == 1
    hashes: dict[int, str] = {}
    prev = "0" * 64
    for entry in _entries(state):
        prev = chain(prev, entry)
        hashes[entry["seq"]] = prev
        state_exec(state, "update ledger set hash = ? where seq = ?", prev, entry["seq"])
    state_exec(state, "update ledger_head set hash = ?", prev)
    return hashes


def _resign(state: Path, hashes: dict[int, str], forger: Ed25519PrivateKey) -> None:
    """Point every checkpoint at the forged chain and sign it with the forger's key, storing
    the forger's public key next to it."""
    for cp in state_rows(state, "select * from checkpoints"):
        cp["hash"] = hashes[cp["seq"]]
        state_exec(state, "update checkpoints set hash = ?, signature = ?, public_key = ? "
                   "where id = ?", cp["hash"], forger.sign(signed_payload(cp)).hex(),
                   _public_hex(forger), cp["id"])


def _fails(result: Any, entry: int) -> str:
    assert result.code == 4, (result.out, result.err)
    assert "audit trail verified" not in result.out
    lines = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.err
    assert f"entry {entry} " in lines[0], lines[0]
    return lines[0]


# -- a chain re-signed with the attacker's own key -----------------------------------------------
def test_resigned_chain_fails_with_the_real_public_key(ws: Any, trail: Ed25519PrivateKey) -> None:
    hashes = _rewrite(_state(ws), 2)
    _resign(_state(ws), hashes, Ed25519PrivateKey.generate())

    line = _fails(ws.invoke("audit", "verify", "--public-key", str(ws.root / "real.pem")),
                  FIRST_CP)
    assert line == (f"error: checkpoint at entry {FIRST_CP} is signed by a key that is not the "
                    "trusted public key: it was re-signed outside retentiond")
    # The policy's signing_key is a trusted key too; the stored one never is.
    _fails(ws.invoke("audit", "verify"), FIRST_CP)


def test_stored_key_swapped_but_real_signature_kept_fails(ws: Any,
                                                          trail: Ed25519PrivateKey) -> None:
    """A checkpoint whose stored public key is not the trusted one fails even if its signature
    is still the real one."""
    state_exec(_state(ws), "update checkpoints set public_key = ? where seq = ?",
               _public_hex(Ed25519PrivateKey.generate()), LAST_CP)
    _fails(ws.invoke("audit", "verify", "--public-key", str(ws.root / "real.pem")), LAST_CP)


def test_without_a_trusted_key_signatures_are_reported_unchecked(
        ws: Any, trail: Ed25519PrivateKey) -> None:
    hashes = _rewrite(_state(ws), 2)
    _resign(_state(ws), hashes, Ed25519PrivateKey.generate())
    _policy(ws, signing=False)

    text = ws.invoke("audit", "verify")
    assert text.code == 0, text.err
    assert text.out.splitlines()[1:] == [
        "signatures NOT checked against a trusted key: give --public-key FILE (from `audit "
        "public-key`) or set signing_key",
        "no external checkpoint: a rewritten tail whose checkpoints were deleted cannot be "
        "detected, nor entries appended after the latest checkpoint (give --checkpoint FILE)"]
    doc = ws.invoke("--json", "audit", "verify").json()
    assert (doc["ok"], doc["signed"], doc["signatures_checked"], doc["trusted_key"]) == (
        True, 2, False, None)
    # The same forged trail against the real public key: caught.
    _fails(ws.invoke("audit", "verify", "--public-key", str(ws.root / "real.pem")), FIRST_CP)


# -- audit public-key ---------------------------------------------------------------------------
def test_public_key_output_round_trips_with_verify(ws: Any, trail: Ed25519PrivateKey) -> None:
    printed = ws.invoke("audit", "public-key")
    assert printed.code == 0, printed.err
    assert printed.out.encode() == _public_pem(trail)
    (ws.root / "printed.pem").write_text(printed.out)
    _policy(ws, signing=False)  # the auditor's side: no private key at all

    doc = ws.invoke("--json", "audit", "verify", "--public-key", str(ws.root / "printed.pem"))
    assert doc.code == 0, doc.err
    assert (doc.json()["signatures_checked"], doc.json()["trusted_key"],
            doc.json()["signed"]) == (True, "public-key-file", 2)
    text = ws.invoke("audit", "verify", "--public-key", str(ws.root / "printed.pem"))
    assert text.out.splitlines()[1] == ("signatures checked against the trusted public key "
                                        "from the --public-key file")
    other = ws.root / "other.pem"
    other.write_bytes(_public_pem(Ed25519PrivateKey.generate()))
    _fails(ws.invoke("audit", "verify", "--public-key", str(other)), FIRST_CP)


def test_public_key_without_signing_key_is_a_usage_error(ws: Any,
                                                         trail: Ed25519PrivateKey) -> None:
    _policy(ws, signing=False)
    result = ws.invoke("audit", "public-key")
    assert (result.code, result.out) == (2, "")
    assert result.err.splitlines() == [
        f"error: {ws.config}: no signing_key is set, so checkpoints are not signed and there is "
        "no public key; set signing_key (an Ed25519 private key, PEM) first"]


@pytest.mark.parametrize(("content", "says"), [
    (lambda: b"not a key\n", "not a PEM public key"),
    (lambda: _pem(Ed25519PrivateKey.generate()), "is a private key, not a public key"),
    (lambda: _public_pem(ec.generate_private_key(ec.SECP256R1())),
     "not an Ed25519 public key"),
], ids=["garbage", "private-key", "ec-public-key"])
def test_public_key_file_that_is_not_ed25519_is_a_usage_error(
        ws: Any, trail: Ed25519PrivateKey, content: Any, says: str) -> None:
    bad = ws.root / "bad.pem"
    bad.write_bytes(content())
    result = ws.invoke("audit", "verify", "--public-key", str(bad))
    assert (result.code, result.out) == (2, "")
    assert result.err.splitlines() == [
        f"error: --public-key {bad}: {says}; give the output of `retentiond audit public-key`"]


# -- checkpoints kept outside the state database ------------------------------------------------
def test_checkpoints_file_gets_one_line_per_run(ws: Any, trail: Ed25519PrivateKey) -> None:
    path = ws.root / "checkpoints.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    stored = state_rows(_state(ws), "select * from checkpoints order by id")
    assert [{k: cp[k] for k in ("seq", "hash", "at", "signature", "public_key")}
            for cp in lines] == [
        {k: cp[k] for k in ("seq", "hash", "at", "signature", "public_key")} for cp in stored]
    assert {cp["public_key"] for cp in lines} == {_public_hex(trail)}
    ok = ws.invoke("audit", "verify", "--checkpoint", str(path))
    assert ok.code == 0, ok.err
    assert ok.out.splitlines()[2] == (f"checked against 2 external checkpoint(s) in {path}, "
                                      f"the latest at entry {LAST_CP}")
    # An entry appended after the latest checkpoint is covered by none: verify says so.
    assert ws.invoke("hold", "add", "--rule", "closed-accounts", "--reason", "audit").code == 0
    later = ws.invoke("audit", "verify", "--checkpoint", str(path))
    assert later.code == 0, later.err
    assert later.out.splitlines()[2] == (f"checked against 2 external checkpoint(s) in {path}, "
                                         f"the latest at entry {LAST_CP}; 1 later entries are "
                                         "not covered by it")
    schema = ws.invoke("config", "schema").json()
    assert schema["properties"]["checkpoints"]["anyOf"] == [
        {"$ref": "#/$defs/CheckpointsFile"}, {"type": "null"}]
    assert schema["$defs"]["CheckpointsFile"]["required"] == ["file"]


def test_rewritten_tail_with_checkpoints_deleted_needs_an_external_checkpoint(
        ws: Any, trail: Ed25519PrivateKey) -> None:
    """Without a checkpoint kept outside the state database this attack is NOT detectable: the
    chain is consistent and the remaining checkpoint (entry 4) is genuine and really signed."""
    exported = ws.root / "exported.json"
    assert ws.invoke("audit", "checkpoint", "-o", str(exported)).code == 0
    assert json.loads(exported.read_text())["seq"] == LAST_CP
    state = _state(ws)
    _rewrite(state, FIRST_CP + 1)  # entry 5: after the first checkpoint
    assert state_exec(state, "delete from checkpoints where seq > ?", FIRST_CP) == 1

    real = str(ws.root / "real.pem")
    blind = ws.invoke("audit", "verify", "--public-key", real)
    assert blind.code == 0, blind.err
    assert blind.out.splitlines()[2].startswith("no external checkpoint: a rewritten tail")
    _fails(ws.invoke("audit", "verify", "--public-key", real, "--checkpoint",
                     str(ws.root / "checkpoints.jsonl")), LAST_CP)
    _fails(ws.invoke("audit", "verify", "--checkpoint", str(exported)), LAST_CP)


def test_checkpoints_file_catches_a_truncated_ledger(ws: Any, trail: Ed25519PrivateKey) -> None:
    state = _state(ws)
    state_exec(state, "delete from ledger where seq > ?", FIRST_CP)
    (cp,) = state_rows(state, "select hash from ledger where seq = ?", FIRST_CP)
    state_exec(state, "update ledger_head set seq = ?, hash = ?", FIRST_CP, cp["hash"])
    state_exec(state, "delete from checkpoints where seq > ?", FIRST_CP)
    assert ws.invoke("audit", "verify").code == 0
    line = _fails(ws.invoke("audit", "verify", "--checkpoint",
                            str(ws.root / "checkpoints.jsonl")), LAST_CP)
    assert "the ledger was truncated" in line


def test_a_checkpoints_file_that_cannot_be_written_is_a_policy_error(ws: Any) -> None:
    """Caught when the policy loads, before anything is disposed (not after the sweep)."""
    engine = sa.create_engine(f"sqlite:///{ws.root / 'store.db'}")
    create(engine, users_table(sa.MetaData()), [Row(1, OLD)])
    missing = ws.root / "no-such-dir" / "checkpoints.jsonl"
    fifo = ws.root / "checkpoints.fifo"
    os.mkfifo(fifo)
    for bad, why in ((missing, f"directory {missing.parent} does not exist"),
                     (fifo, "is a FIFO, not a regular file")):
        ws.policy({"app": {"adapter": "sql", "url": f"sqlite:///{ws.root / 'store.db'}"}},
                  [RULE], checkpoints={"file": str(bad)})
        for command in (("config", "validate"), ("run",)):
            result = ws.invoke(*command)
            assert result.code == 2, (command, result.out, result.err)
            [line] = [x for x in result.err.splitlines() if x.startswith("error: ")]
            assert line == f"error: checkpoints.file: {why}", line
    with engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from users")).scalar_one() == 1
    engine.dispose()


def test_a_checkpoints_file_lost_during_the_run_fails_it_and_records_why(ws: Any) -> None:
    """The directory vanishes after the policy loaded: the run disposed (and ledgered) its
    records, its checkpoint is in the state database, the run row says failed, exit 1."""
    from retentiond.app import App
    from retentiond.errors import RetentiondError
    from retentiond.sweep import sweep

    engine = sa.create_engine(f"sqlite:///{ws.root / 'store.db'}")
    create(engine, users_table(sa.MetaData()), [Row(1, OLD)])
    engine.dispose()
    target = ws.root / "audit" / "checkpoints.jsonl"
    target.parent.mkdir()
    ws.policy({"app": {"adapter": "sql", "url": f"sqlite:///{ws.root / 'store.db'}"}}, [RULE],
              checkpoints={"file": str(target)})
    app = App(str(ws.config))
    assert app.policy.checkpoints is not None
    target.parent.rmdir()
    with pytest.raises(RetentiondError) as failed:
        sweep(app, dry_run=False)
    app.close()
    assert failed.value.exit_code == 1
    assert str(failed.value) == (
        f"checkpoints.file {target}: cannot append the checkpoint at entry 2 (No such file or "
        "directory); it is in the state database (`audit checkpoint -o FILE`)")
    assert [cp["seq"] for cp in state_rows(_state(ws), "select seq from checkpoints")] == [2]
    assert [r["status"] for r in state_rows(_state(ws), "select status from runs")] == [
        "failed"]


@pytest.mark.parametrize("option", ["--public-key", "--checkpoint"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_verify_reads_no_file_that_is_not_a_regular_one(ws: Any, option: str,
                                                        kind: str) -> None:
    """A FIFO would block, /dev/zero would read until memory runs out: refused at once."""
    ws.policy({}, [])
    paths = {"fifo": ws.root / "in.fifo", "dev-zero": Path("/dev/zero"), "directory": ws.root}
    if kind == "fifo":
        os.mkfifo(paths["fifo"])
    what = {"fifo": "a FIFO", "dev-zero": "a character device", "directory": "a directory"}
    result = ws.cli("audit", "verify", option, str(paths[kind]), timeout=20)
    assert result.code == 2, result.err
    assert [x for x in result.err.splitlines() if x.startswith("error: ")] == [
        f"error: {option} {paths[kind]}: is {what[kind]}, not a regular file"]
