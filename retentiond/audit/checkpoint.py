"""Checkpoints: the ledger's sequence and head hash at the end of a run, signed with Ed25519
when ``signing_key`` is set, kept in the state database and written to the log."""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from retentiond.audit.ledger import head, now_text
from retentiond.errors import PolicyError
from retentiond.state.models import Checkpoint

checkpoint_t = Checkpoint.__table__


def load_signing_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise PolicyError([("signing_key", "not a PEM private key")]) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PolicyError([("signing_key", "must be an Ed25519 private key (PEM)")])
    return key


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


def signature_ok(cp: dict[str, Any], public_key: str | None) -> bool:
    key_hex = public_key or cp.get("public_key")
    if not cp.get("signature") or not key_hex:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)).verify(
            bytes.fromhex(cp["signature"]), signed_payload(cp))
    except (InvalidSignature, ValueError):
        return False
    return True
