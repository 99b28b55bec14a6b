"""``audit verify``: recompute the chain, compare the head, check every checkpoint.

The first problem found is raised as :class:`AuditError` naming the entry (exit 4).
"""

from __future__ import annotations

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


def verify(engine: Engine, *, public_key: str | None = None,
           external: dict[str, Any] | None = None) -> Verified:
    stored = checkpoints.all_checkpoints(engine)
    wanted = {int(cp["seq"]) for cp in stored}
    if external is not None:
        wanted.add(_int(external, "seq"))
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
    if public_key is not None and stored and not stored[-1].get("signature"):
        raise AuditError(f"checkpoint at entry {stored[-1]['seq']} is not signed although "
                         "signing_key is set: it was replaced or its signature removed")
    if public_key is not None and external is not None and not external.get("signature"):
        raise AuditError(f"the given checkpoint at entry {external.get('seq')} is not signed "
                         "although signing_key is set")
    signed = 0
    for cp in stored:
        _check_checkpoint(cp, at_seq, count, public_key, "checkpoint")
        signed += bool(cp.get("signature"))
    if external is not None:
        _check_checkpoint(external, at_seq, count, public_key, "the given checkpoint")
    return Verified(entries=count, head_hash=prev, checkpoints=len(stored), signed=signed)


def _int(cp: dict[str, Any], key: str) -> int:
    try:
        return int(cp[key])
    except (KeyError, TypeError, ValueError):
        raise AuditError(f"checkpoint has no valid {key!r}") from None


def _check_checkpoint(cp: dict[str, Any], at_seq: dict[int, str], count: int,
                      public_key: str | None, what: str) -> None:
    seq = _int(cp, "seq")
    if seq > count:
        raise AuditError(f"{what} at entry {seq} is past the end of the ledger (entry {count}): "
                         "the ledger was truncated")
    if at_seq.get(seq) != cp.get("hash"):
        raise AuditError(f"ledger entry {seq} does not match {what} taken at {cp.get('at')}: "
                         "the ledger was rewritten")
    if cp.get("signature") and not checkpoints.signature_ok(cp, public_key):
        raise AuditError(f"{what} at entry {seq} has an invalid signature")
