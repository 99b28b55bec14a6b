"""Checkpoints: the ledger's sequence and head hash at the end of a run, signed with Ed25519
when ``signing_key`` is set, kept in the state database, written to the log and, with
``checkpoints: {file: PATH}``, appended as one JSON line to a file outside the state database.

A signature is only ever checked against a *trusted* public key (``audit verify --public-key``
or the one derived from ``signing_key``), never against the key stored next to it: whoever can
rewrite the state database can also store their own key there.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from sqlalchemy import Table, insert, select
from sqlalchemy.engine import Engine

from retentiond.audit.ledger import head, now_text
from retentiond.errors import RetentiondError, UsageError
from retentiond.state.models import Checkpoint

if TYPE_CHECKING:
    from retentiond.policy.model import CheckpointsFile

checkpoint_t = cast(Table, Checkpoint.__table__)


def load_public_key(pem: bytes, where: str) -> Ed25519PublicKey:
    """A PEM Ed25519 public key (what ``audit public-key`` prints); UsageError otherwise."""
    hint = "; give the output of `retentiond audit public-key`"
    if b"PRIVATE KEY" in pem:
        raise UsageError(f"{where}: is a private key, not a public key{hint}")
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise UsageError(f"{where}: not a PEM public key{hint}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{where}: not an Ed25519 public key{hint}")
    return key


def public_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM,
                                         PublicFormat.SubjectPublicKeyInfo).decode()


def public_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def signed_payload(cp: dict[str, Any]) -> bytes:
    body = {"seq": cp["seq"], "hash": cp["hash"], "at": cp["at"]}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write(engine: Engine, run_id: str | None, signing_key: Ed25519PrivateKey | None
          ) -> dict[str, Any]:
    with engine.begin() as conn:
        seq, h = head(conn)
        cp: dict[str, Any] = {"seq": seq, "hash": h, "at": now_text(), "run_id": run_id,
                              "signature": None, "public_key": None}
        if signing_key is not None:
            cp["signature"] = signing_key.sign(signed_payload(cp)).hex()
            cp["public_key"] = public_hex(signing_key)
        conn.execute(insert(checkpoint_t).values(**cp))
    return cp


def latest(engine: Engine) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(select(checkpoint_t).order_by(checkpoint_t.c.id.desc()).limit(1)).first()
    return _as_dict(row) if row else None


def all_checkpoints(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [_as_dict(r) for r in conn.execute(select(checkpoint_t).order_by(checkpoint_t.c.id))]


def _as_dict(row: Any) -> dict[str, Any]:
    return {"seq": row.seq, "hash": row.hash, "at": row.at, "run_id": row.run_id,
            "signature": row.signature, "public_key": row.public_key}


def signature_ok(cp: dict[str, Any], trusted: Collection[str]) -> bool:
    """Whether ``cp`` carries one of the ``trusted`` public keys (hex) and a valid signature by
    it. The stored key only selects among trusted keys; it is never trusted itself."""
    key_hex = cp.get("public_key")
    if not cp.get("signature") or key_hex not in trusted:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(key_hex))).verify(
            bytes.fromhex(cp["signature"]), signed_payload(cp))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def append_to_file(target: CheckpointsFile | None, cp: dict[str, Any]) -> None:
    """Append ``cp`` as one JSON line to ``checkpoints.file`` (created 0600, fsynced), so an
    auditor can verify the ledger against checkpoints its writers cannot rewrite."""
    if target is None:
        return
    path = Path(target.file)
    line = (json.dumps(cp, sort_keys=True, separators=(",", ":")) + "\n").encode()
    try:
        _append(path, line)
    except OSError as exc:
        raise RetentiondError(
            f"checkpoints.file {path}: cannot append the checkpoint at entry {cp['seq']} "
            f"({exc.strerror}); it is in the state database (`audit checkpoint -o FILE`)"
        ) from None


def _append(path: Path, line: bytes) -> None:
    created = not path.exists()
    # O_NONBLOCK: a FIFO put in the file's place fails instead of blocking the sweep's end
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC,
                 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:  # make the new directory entry durable too
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
