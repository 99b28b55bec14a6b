"""``audit verify``: recompute the chain, compare the head, check every checkpoint.

Signatures are checked only against ``trusted`` public keys (hex) given by the caller; the key
stored with a checkpoint is never trusted. Without a trusted key the chain, the head and the
checkpoints' hashes are still checked, and :attr:`Verified.signatures_checked` says so.
``external`` checkpoints (kept outside the state database) must each match the ledger's hash at
their entry, and the ledger must reach the latest of them.

The first problem found is raised as :class:`AuditError` naming the entry (exit 4).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from retentiond.audit import checkpoint as checkpoints
from retentiond.audit.ledger import GENESIS, chain, head, iter_entries
from retentiond.errors import AuditError


@dataclass(frozen=True)
class Verified:
    entries: int
    head_hash: str
    checkpoints: int
    signed: int
    signatures_checked: bool
    external: int
    external_seq: int | None


def verify(engine: Engine, *, trusted: Collection[str] = (),
           external: Sequence[dict[str, Any]] = ()) -> Verified:
    stored = checkpoints.all_checkpoints(engine)
    wanted = {_int(cp, "seq") for cp in [*stored, *external]}
    count, last_hash, at_seq = _walk_chain(engine, wanted)
    if trusted:
        _require_signed(stored[-1:], "checkpoint")
        _require_signed(external[-1:], "the given checkpoint")
    for cp in stored:
        _check_checkpoint(cp, at_seq, count, trusted, "checkpoint")
    for cp in external:
        _check_checkpoint(cp, at_seq, count, trusted, "the given checkpoint")
    return Verified(entries=count, head_hash=last_hash, checkpoints=len(stored),
                    signed=sum(bool(cp.get("signature")) for cp in stored),
                    signatures_checked=bool(trusted), external=len(external),
                    external_seq=max((_int(cp, "seq") for cp in external), default=None))


def _walk_chain(engine: Engine, wanted: set[int]) -> tuple[int, str, dict[int, str]]:
    """Recompute every hash; returns the entry count, the last hash and the hash at each
    ``wanted`` entry."""
    at_seq: dict[int, str] = {0: GENESIS}
    prev, expected = GENESIS, 1
    for entry in iter_entries(engine):
        if entry["seq"] != expected:
            raise AuditError(f"ledger entry {expected} is missing (next entry is {entry['seq']})")
        if chain(prev, entry) != entry["hash"]:
            raise AuditError(f"ledger entry {entry['seq']} does not match its hash: "
                             "it was altered after it was written")
        prev = entry["hash"]
        if entry["seq"] in wanted:
            at_seq[entry["seq"]] = prev
        expected += 1
    count = expected - 1
    with engine.connect() as conn:
        head_seq, head_hash = head(conn)
    if (head_seq, head_hash) != (count, prev):
        raise AuditError(f"ledger head says entry {head_seq} but the chain ends at entry {count}: "
                         "entries were removed or added outside retentiond")
    return count, prev, at_seq


def _require_signed(latest: Sequence[dict[str, Any]], what: str) -> None:
    """The latest checkpoint must be signed when there is a trusted key (older ones may predate
    ``signing_key``)."""
    for cp in latest:
        if not cp.get("signature"):
            raise AuditError(f"{what} at entry {cp.get('seq')} is not signed although a trusted "
                             "public key was given: it was replaced or its signature removed")


def _int(cp: dict[str, Any], key: str) -> int:
    try:
        return int(cp[key])
    except (KeyError, TypeError, ValueError):
        raise AuditError(f"checkpoint has no valid {key!r}") from None


def _check_checkpoint(cp: dict[str, Any], at_seq: dict[int, str], count: int,
                      trusted: Collection[str], what: str) -> None:
    seq = _int(cp, "seq")
    if seq > count:
        raise AuditError(f"{what} at entry {seq} is past the end of the ledger (entry {count}): "
                         "the ledger was truncated")
    if at_seq.get(seq) != cp.get("hash"):
        raise AuditError(f"ledger entry {seq} does not match {what} taken at {cp.get('at')}: "
                         "the ledger was rewritten")
    if not trusted or not cp.get("signature"):
        return
    if cp.get("public_key") not in trusted:
        raise AuditError(f"{what} at entry {seq} is signed by a key that is not the trusted "
                         "public key: it was re-signed outside retentiond")
    if not checkpoints.signature_ok(cp, trusted):
        raise AuditError(f"{what} at entry {seq} has an invalid signature")
