"""The ledger: a gapless, hash-chained, append-only record of everything retentiond did.

Each entry's hash is ``SHA-256(prev_hash || canonical entry)`` where ``prev_hash`` is the
previous entry's hash as 64 lowercase hex characters (64 zeros before the first entry) and the
canonical entry is the JSON object of its fields (``seq``, ``at``, ``run_id``, ``kind``,
``rule``, ``store``, ``target``, ``action``, ``reason``, ``record_refs``, ``subject_ref``,
``detail``) with sorted keys, no whitespace, ASCII only.

Records are named by reference only: ``HMAC-SHA256(secret_key, store \\0 target \\0 key)``,
where ``key`` is ``str(key)`` for a one-column key and :func:`key_text` (a JSON array of
canonical strings) for a composite key; subjects by
``HMAC-SHA256(secret_key, "subject" \\0 kind \\0 id)``. One disposal entry covers one batch
and lists the references of every record it disposed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Connection, Table, func, insert, select, update
from sqlalchemy.engine import Engine

from retentiond.state.models import LedgerEntry, LedgerHead

GENESIS = "0" * 64
ledger_t = cast(Table, LedgerEntry.__table__)
head_t = cast(Table, LedgerHead.__table__)


def now_text(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")


def _one_shot() -> Callable[[bytes, bytes], bytes]:
    """OpenSSL's one-shot HMAC when present (what hmac.digest calls, minus its Python layer)."""
    try:
        from _hashlib import hmac_digest
    except ImportError:  # pragma: no cover - CPython without OpenSSL
        return lambda key, msg: hmac.digest(key, msg, "sha256")
    return lambda key, msg: hmac_digest(key, msg, "sha256")


hmac_sha256 = _one_shot()
_BLOCK = 64  # SHA-256's block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def hmac_pads(secret: bytes, prefix: bytes = b"") -> tuple[Callable[[], Any], Callable[[], Any]]:
    """Copiers of the SHA-256 states of an HMAC-SHA256 keyed with ``secret`` (RFC 2104: a key
    longer than the block is hashed first): the inner one after its pad and ``prefix``, the
    outer one after its pad."""
    key = hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(key.translate(_IPAD))
    inner.update(prefix)
    return inner.copy, hashlib.sha256(key.translate(_OPAD)).copy


def _component(value: Any) -> str:
    """One component of a composite key as canonical text, whatever the driver returned:
    aware times in UTC and naive ones as ISO 8601 with ``T`` (microseconds only when not
    zero), dates ISO 8601, decimals without exponent or trailing zeros, booleans ``true`` /
    ``false``, bytes as lowercase hex, anything else (integers, text, UUIDs) as ``str``."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo is not None else value).isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        text = format(value.normalize(), "f")
        return "0" if text in ("-0", "0") else text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def key_text(key: Any) -> str:
    """The text a record reference is computed over: ``str(key)`` for a one-column key (as it
    always was, so existing ledgers keep verifying and replaying), and for a composite key
    (a tuple) the compact JSON array of its components' canonical texts (:func:`_component`),
    e.g. ``["2024-01-03T10:00:00","17"]``.

    A date/time key component is the column type's value, never the text the store holds: on
    SQLite, where the sql adapter reads such key columns raw (to bind them back byte for
    byte), ``2010-01-01 00:00:00`` (raw SQL, ``CURRENT_TIMESTAMP``, Django) and ``2010-01-01
    00:00:00.000000`` (SQLAlchemy) are both the datetime 2010-01-01 00:00, so a reference is
    ``["2010-01-01T00:00:00",...]`` for a composite key and ``str(datetime)``, ``2010-01-01
    00:00:00``, for a one-column key (what ledgers written before hold), on every path: scan,
    ``RETURNING``, ``explain``, replay and reconciliation."""
    if isinstance(key, tuple):
        parts = [(_BY_TYPE.get(type(v)) or _component)(v) for v in key]
        if _PLAIN.issuperset(map(type, key)):
            return '["' + '","'.join(parts) + '"]'  # what JSON makes of texts it never escapes
        return _KEY_JSON(parts)
    return str(key)


# json.dumps with these arguments builds a new encoder per call (most of a composite key's
# cost on a partition drop); one encoder gives the same text.
_KEY_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# Components whose canonical text holds no quote, backslash or control character.
_PLAIN = frozenset({int, datetime, date, time, Decimal})


def _time_text(value: datetime) -> str:
    return (value.astimezone(UTC) if value.tzinfo is not None else value).isoformat()


# _component of the commonest exact types without its isinstance chain (same text).
_BY_TYPE: dict[type, Callable[[Any], str]] = {int: str, str: str, datetime: _time_text,
                                              date: date.isoformat}


def _texts(keys: list[Any]) -> Iterator[str]:
    """:func:`key_text` of each key. A batch of two-column keys whose first key's components
    are of types written without escapes (``int``, ``datetime``, ``date``: a partition's
    ``(id, created_at)``) is formatted without the general path's per-key type scan and join,
    for every key of exactly those types (the same text); any other key takes
    :func:`key_text`."""
    first = keys[0] if keys else None
    if not any(issubclass(t, tuple) for t in set(map(type, keys))):
        yield from map(str, keys)  # one-column keys: key_text is str()
        return
    if not (type(first) is tuple and len(first) == 2):
        yield from (key_text(k) if isinstance(k, tuple) else str(k) for k in keys)
        return
    ta, tb = type(first[0]), type(first[1])
    fa, fb = _BY_TYPE.get(ta), _BY_TYPE.get(tb)
    if fa is None or fb is None or not _PLAIN.issuperset((ta, tb)):
        yield from (key_text(k) if isinstance(k, tuple) else str(k) for k in keys)
        return
    for k in keys:
        if type(k) is tuple and len(k) == 2 and type(k[0]) is ta and type(k[1]) is tb:
            yield f'["{fa(k[0])}","{fb(k[1])}"]'
        else:
            yield key_text(k) if isinstance(k, tuple) else str(k)


class Refs:
    """Keyed pseudonyms for records and subjects (HMAC-SHA256, hex)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def record_fn(self, store: str, target: str) -> Callable[[Any], str]:
        secret, prefix = self._secret, f"{store}\0{target}\0".encode()

        def ref(key: Any) -> str:
            return hmac_sha256(secret, prefix + key_text(key).encode()).hex()

        return ref

    def records(self, store: str, target: str, keys: Iterable[Any]) -> list[str]:
        """:meth:`record_fn` over a whole batch, the same bytes: HMAC-SHA256 as RFC 2104
        builds it, ``SHA-256(K ^ opad || SHA-256(K ^ ipad || message))``, with both pads and
        the ``store \0 target \0`` prefix hashed once per batch and their SHA-256 states
        copied per record (a third less time a batch than a one-shot HMAC per record)."""
        inner, outer = hmac_pads(self._secret, f"{store}\0{target}\0".encode())
        out = []
        for text in _texts(keys if isinstance(keys, list) else list(keys)):
            i = inner()
            i.update(text.encode())
            o = outer()
            o.update(i.digest())
            out.append(o.hexdigest())
        return out

    def record(self, store: str, target: str, key: Any) -> str:
        return self.record_fn(store, target)(key)

    def subject(self, kind: str, subject: Any) -> str:
        return hmac_sha256(self._secret, f"subject\0{kind}\0{subject}".encode()).hex()


@dataclass
class Draft:
    """An entry before it has a sequence number and hash."""

    kind: str
    run_id: str | None = None
    rule: str | None = None
    store: str | None = None
    target: str | None = None
    action: str | None = None
    reason: str | None = None
    record_refs: Sequence[str] = ()
    subject_ref: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    at: str | None = None
    refs_json: str | None = None  # record_refs already encoded with refs_json()


_FIELDS = ("seq", "at", "run_id", "kind", "rule", "store", "target", "action", "reason",
           "record_refs", "subject_ref", "detail")
_REFS_SLOT = '"\\u0000refs\\u0000"'


def refs_json(refs: Sequence[str]) -> str:
    """The record references as canonical JSON (also how the ledger column stores them)."""
    return json.dumps(list(refs), separators=(",", ":"), ensure_ascii=True)


def canonical(entry: dict[str, Any], encoded_refs: str | None = None) -> bytes:
    """The bytes an entry's hash covers. ``encoded_refs`` (= :func:`refs_json` of the entry's
    references) spares encoding a batch's 5000 references a second time; the result is the
    same."""
    body = {k: entry[k] for k in _FIELDS}
    if encoded_refs is None:
        return json.dumps(body, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True).encode()
    body["record_refs"] = "\0refs\0"
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.replace(_REFS_SLOT, encoded_refs, 1).encode()


def chain(prev_hash: str, entry: dict[str, Any], encoded_refs: str | None = None) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical(entry, encoded_refs)).hexdigest()


def append(conn: Connection, drafts: Iterable[Draft]) -> list[int]:
    """Append entries inside the caller's transaction. The first statement locks the head row,
    so concurrent appenders (a sweep and a ``hold add``) serialise and the sequence stays
    gapless."""
    conn.execute(update(head_t).where(head_t.c.id == 1).values(seq=head_t.c.seq))
    seq, prev = conn.execute(select(head_t.c.seq, head_t.c.hash).where(head_t.c.id == 1)).one()
    rows = []
    for d in drafts:
        seq += 1
        entry = {
            "seq": seq, "at": d.at or now_text(), "run_id": d.run_id, "kind": d.kind,
            "rule": d.rule, "store": d.store, "target": d.target, "action": d.action,
            "reason": d.reason, "record_refs": list(d.record_refs), "subject_ref": d.subject_ref,
            "detail": d.detail,
        }
        encoded = d.refs_json or refs_json(entry["record_refs"])
        prev = chain(prev, entry, encoded)
        rows.append({**entry, "record_refs": encoded,
                     "record_count": len(entry["record_refs"]),
                     "detail": json.dumps(d.detail, sort_keys=True), "hash": prev})
    if rows:
        conn.execute(insert(ledger_t), rows)
        conn.execute(update(head_t).where(head_t.c.id == 1).values(seq=seq, hash=prev))
    return [r["seq"] for r in rows]


def append_now(engine: Engine, drafts: Iterable[Draft]) -> list[int]:
    with engine.begin() as conn:
        return append(conn, drafts)


def head(conn: Connection) -> tuple[int, str]:
    seq, h = conn.execute(select(head_t.c.seq, head_t.c.hash).where(head_t.c.id == 1)).one()
    return int(seq), str(h)


def row_to_entry(row: Any) -> dict[str, Any]:
    return {
        "seq": row.seq, "at": row.at, "run_id": row.run_id, "kind": row.kind, "rule": row.rule,
        "store": row.store, "target": row.target, "action": row.action, "reason": row.reason,
        "record_refs": json.loads(row.record_refs), "subject_ref": row.subject_ref,
        "detail": json.loads(row.detail), "hash": row.hash,
    }


def iter_entries(engine: Engine, *, since: str | None = None, until: str | None = None,
                 page: int = 500) -> Iterator[dict[str, Any]]:
    """Entries in sequence order, read in pages so memory stays flat on a long ledger."""
    last = 0
    while True:
        q = select(ledger_t).where(ledger_t.c.seq > last).order_by(ledger_t.c.seq).limit(page)
        if since:
            q = q.where(ledger_t.c.at >= since)
        if until:
            q = q.where(ledger_t.c.at < until)
        with engine.connect() as conn:
            rows = conn.execute(q).all()
        if not rows:
            return
        for row in rows:
            yield row_to_entry(row)
        last = rows[-1].seq


def anonymised_by(engine: Engine, rule_id: str) -> bool:
    """Whether the ledger holds an anonymisation by this rule."""
    with engine.connect() as conn:
        return conn.execute(select(ledger_t.c.seq).where(
            ledger_t.c.rule == rule_id, ledger_t.c.action == "anonymize").limit(1)
        ).first() is not None


def last_of_kind(engine: Engine, kind: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        top = conn.execute(select(func.max(ledger_t.c.seq)).where(ledger_t.c.kind == kind)).scalar()
        if top is None:
            return None
        return row_to_entry(conn.execute(select(ledger_t).where(ledger_t.c.seq == top)).one())
