"""The s3 adapter's isolation (mixed into S3Adapter): a server-side copy of each object to
``<isolation prefix><rule id>/<purge after>/<original key>`` in the isolation bucket, then the
original's deletion; and the purge of those copies once their time has come.

The purge time is part of the copy's key (UTC, ``YYYYMMDDTHHMMSSZ``), so one listing in key
order finds every copy due, without reading any object, and stops at the first one not due.
Copies keep the original's metadata and tags; no rule ever reads below an isolation prefix.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from retentiond.adapters.base import Candidate, Selection
from retentiond.adapters.s3select import isolated_key, isolation, parse_isolated
from retentiond.adapters.s3store import NO_KEY, Head, S3Store, Version
from retentiond.errors import RecordsFailed
from retentiond.log import get_logger

if TYPE_CHECKING:
    from retentiond.policy.model import Policy, Rule, Store

log = get_logger(__name__)


class S3Isolation:
    """Isolate, purge and the reading of isolated copies. Relies on S3Adapter's ``s3``,
    ``bucket()`` and ``remove()``."""

    s3: S3Store
    store: Store
    policy: Policy

    if TYPE_CHECKING:
        from retentiond.adapters.s3 import Bucket

        def bucket(self, name: str) -> Bucket: ...
        def remove(self, bucket: str,
                   items: Sequence[tuple[str, tuple[Version, ...] | None]]
                   ) -> dict[str, str]: ...

    def copy_out(self, sel: Selection, heads: Sequence[Head]
                 ) -> tuple[list[str], dict[str, str]]:
        """Copy each object (the version re-read) to the isolation area. Returns the keys
        copied and the keys S3 refused to copy, with their error codes; an object gone since
        it was re-read is neither."""
        rule = sel.rule
        target, prefix = isolation(self.store, rule)
        purge_after = sel.purge_after or datetime.now(UTC)
        source = str(self.store.bucket)
        codes = self.s3.map(lambda h: self.s3.copy(
            h, source, target, isolated_key(prefix, rule, purge_after, h.key)), heads)
        copied = [h.key for h, code in zip(heads, codes, strict=True) if code is None]
        failed = {h.key: code for h, code in zip(heads, codes, strict=True)
                  if code is not None and code not in NO_KEY}
        return copied, failed

    def drop_copies(self, sel: Selection, heads: Sequence[Head]) -> None:
        """Remove the copies of objects whose deletion S3 refused (they stay live, so they are
        not isolated). Best effort: a copy left behind is purged in its time."""
        rule = sel.rule
        target, prefix = isolation(self.store, rule)
        purge_after = sel.purge_after or datetime.now(UTC)
        names = [isolated_key(prefix, rule, purge_after, h.key) for h in heads]
        self._remove_all(target, names)

    def _remove_all(self, bucket: str, names: Sequence[str]) -> dict[str, str]:
        """Delete objects with every version (in a versioned bucket); refused ones by code."""
        if not self.bucket(bucket).versioned:
            return self.remove(bucket, [(n, None) for n in names])
        listed = self.s3.map(lambda n: tuple(self.s3.versions(bucket, n)), names)
        return self.remove(bucket, [(n, vs) for n, vs in zip(names, listed, strict=True)
                                    if vs])

    def _isolated(self, rule: Rule, until: datetime | None = None
                  ) -> Iterator[list[tuple[str, str]]]:
        """``(copy key, original key)`` of the rule's isolated copies, page by page, in purge
        time order; with ``until``, only those due by then."""
        target, prefix = isolation(self.store, rule)
        for page in self.s3.pages(target, f"{prefix}{rule.id}/"):
            out: list[tuple[str, str]] = []
            for h in page:
                parsed = parse_isolated(prefix, rule, h.key)
                if parsed is None:
                    continue
                when, original = parsed
                if until is not None and when > until:
                    if out:
                        yield out
                    return
                out.append((h.key, original))
            yield out

    def isolated_originals(self, rule: Rule) -> Iterator[str]:
        """The original keys of every isolated copy of the rule (due or not)."""
        for page in self._isolated(rule):
            yield from (original for _, original in page)

    def scan_isolated(self, rule: Rule, now: datetime, batch_size: int
                      ) -> Iterator[list[Candidate]]:
        batch: list[Candidate] = []
        seen: set[str] = set()
        for page in self._isolated(rule, now):
            for _, original in page:
                if original not in seen:
                    seen.add(original)
                    batch.append(Candidate(original))
                if len(batch) == batch_size:
                    yield batch
                    batch = []
                    seen.clear()
        if batch:
            yield batch

    def purge_isolated(self, rule: Rule, now: datetime, keys: Sequence[Any]) -> list[Any]:
        """Delete every due copy of these original keys, with all its versions. A key is
        purged when all its due copies are gone; RecordsFailed names them when S3 refused
        some."""
        wanted = {str(k) for k in keys}
        if not wanted:
            return []
        target, _ = isolation(self.store, rule)
        copies: dict[str, list[str]] = {}
        for page in self._isolated(rule, now):
            for name, original in page:
                if original in wanted:
                    copies.setdefault(original, []).append(name)
        refused = self._remove_all(target, [n for names in copies.values() for n in names])
        failed = {k: next(refused[n] for n in names if n in refused)
                  for k, names in copies.items() if any(n in refused for n in names)}
        purged = sorted(k for k in copies if k not in failed)
        if failed:
            log.warning("isolated records not purged", rule=rule.id, failed=len(failed))
            raise RecordsFailed(purged, Counter(failed.values()))
        return purged
