"""The s3 adapter's disposals (mixed into S3Adapter): delete and isolate a batch of keys.

S3 has no transactions, so a disposal re-reads the objects first: each given key must still
be an object of the rule that the selection covers, not under Object Lock (``versions: all``),
and — when the key came from the adapter's last scanned batch — unchanged since that scan
(same ETag and LastModified: an object rewritten since is another record, left alone, also
when its clock lives in its name). The re-read is a re-listing of the batch's key range
(ListObjectsV2), switching to one HeadObject per key once that costs fewer requests; with
``versions: all`` in a versioned bucket, one ListObjectVersions per key, which also gives the
versions to delete. A write racing the milliseconds between the re-read and the delete is not
seen (S3 has no conditional delete that every S3-compatible store supports); with ``versions:
all`` a version written after the re-read is never deleted (deletes name version ids).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retentiond.adapters.base import Candidate, NextBatch, Selection
from retentiond.adapters.s3store import Head, S3Store, Version
from retentiond.errors import RecordsFailed
from retentiond.log import get_logger

if TYPE_CHECKING:
    from retentiond.adapters.s3 import Bucket
    from retentiond.adapters.s3select import Layout, Named
    from retentiond.policy.model import Rule

log = get_logger(__name__)


@dataclass(frozen=True)
class Current:
    """An object as it is now: its current version and (when listed with its versions) every
    version and delete marker of its key, newest first."""

    head: Head
    versions: tuple[Version, ...] | None = None

    @property
    def stamp(self) -> tuple[str, int]:
        """What a rewrite changes: the ETag and LastModified (whole seconds: listings and
        HeadObject give different precisions)."""
        return self.head.etag, int(self.head.last_modified.timestamp())


class S3Disposal:
    """delete / isolate. Relies on S3Adapter's ``s3``, ``layout()``, ``bucket()``,
    ``_covered()``, ``lock_applies()``, ``locks()`` and S3Isolation's ``copy_out()`` /
    ``drop_copies()``."""

    s3: S3Store
    _scanned: dict[str, tuple[str, int]]

    if TYPE_CHECKING:
        def layout(self, rule: Rule) -> Layout: ...
        def bucket(self, name: str) -> Bucket: ...
        def lock_applies(self, rule: Rule) -> bool: ...
        def locks(self, bucket: str, keys: Sequence[str],
                  versions: dict[str, tuple[Version, ...] | None] | None = None
                  ) -> list[bool]: ...
        def _covered(self, sel: Selection, items: Sequence[tuple[Current, Named]]
                     ) -> list[tuple[Current, str | None]]: ...
        def copy_out(self, sel: Selection, heads: Sequence[Head]
                     ) -> tuple[list[str], dict[str, str]]: ...
        def drop_copies(self, sel: Selection, heads: Sequence[Head]) -> None: ...

    def scanned(self, batch: list[tuple[Current, str | None]]) -> list[Candidate]:
        """A batch the scan yields, remembered (only the last one) for the disposal's check
        that its objects did not change since."""
        self._scanned = {c.head.key: c.stamp for c, _ in batch}
        return [Candidate(c.head.key, s) for c, s in batch]

    def delete(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        return self.dispose_objects(selection, keys, isolate=False)

    def delete_next(self, selection: Selection, after: Any, limit: int,
                    intent: Callable[[list[Any]], None]) -> NextBatch | None:
        """The fast path of a delete sweep: list on from ``after`` until a listing page holds
        objects the selection covers (at most ``limit``), announce them (``intent``), delete
        them. The listing page that picks a batch is as fresh as the re-read a scanned batch
        gets, so each object is listed once instead of twice. Every version of a key
        (``versions: all`` in a versioned bucket) is listed per key: that takes the scan path
        (None)."""
        rule = selection.rule
        layout = self.layout(rule)
        if rule.versions == "all" and self.bucket(layout.bucket).versioned:
            return None
        if selection.everything_excluded:
            return NextBatch([], None)
        picked: list[str] = []
        last_read: str | None = None
        for page in self.s3.pages(layout.bucket, layout.listing, start_after=after):
            items = [(Current(h), n) for h in page if (n := layout.parse(h.key)) is not None]
            chosen = [c.head.key for c, _ in self._covered(selection, items)]
            room = limit - len(picked)
            picked += chosen[:room]
            if len(chosen) >= room:
                last_read = picked[-1]
                break
            if picked:
                # Delete what one page picked before listing on: an object rewritten while
                # later pages were listed (and their tags read) would go unseen.
                last_read = page[-1].key
                break
        if not picked:
            return NextBatch([], last_read)
        intent(picked)
        refused = self.remove(layout.bucket, [(k, None) for k in picked])
        if refused:
            log.warning("records failed", rule=rule.id, failed=len(refused),
                        disposed=len(picked) - len(refused))
        return NextBatch([k for k in picked if k not in refused], last_read,
                         Counter(refused.values()))

    def isolate(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        return self.dispose_objects(selection, keys, isolate=True)

    def dispose_objects(self, sel: Selection, keys: Sequence[Any], *, isolate: bool
                        ) -> list[Any]:
        """Re-read the objects, keep those the selection covers, unchanged since the scan and
        not under Object Lock, (copy them out,) delete them. RecordsFailed names the disposed
        ones when S3 refused some (counted by S3 error code)."""
        rule = sel.rule
        layout = self.layout(rule)
        wanted = sorted({str(k) for k in keys if layout.parse(str(k)) is not None})
        if not wanted or sel.everything_excluded:
            return []
        every = rule.versions == "all" and self.bucket(layout.bucket).versioned
        now = self.reread(layout, wanted, every=every)
        items = [(c, n) for c in now.values() if (n := layout.parse(c.head.key))
                 and self._scanned.get(c.head.key, c.stamp) == c.stamp]
        chosen = [c.head.key for c, _ in self._covered(sel, items)]
        if chosen and sel.skip_blocked and self.lock_applies(rule):
            held = self.locks(layout.bucket, chosen, {k: now[k].versions for k in chosen})
            chosen = [k for k, locked in zip(chosen, held, strict=True) if not locked]
        failed: dict[str, str] = {}
        if isolate:
            chosen, failed = self.copy_out(sel, [now[k].head for k in chosen])
        refused = self.remove(layout.bucket, [(k, now[k].versions) for k in chosen])
        if isolate and refused:
            self.drop_copies(sel, [now[k].head for k in refused])
        failed.update(refused)
        disposed = [k for k in chosen if k not in failed]
        if failed:
            log.warning("records failed", rule=rule.id, failed=len(failed),
                        disposed=len(disposed))
            raise RecordsFailed(disposed, Counter(failed.values()))
        return disposed

    def reread(self, layout: Layout, keys: list[str], *, every: bool) -> dict[str, Current]:
        """The objects present now among ``keys`` (ascending): with ``every``, each key with
        its versions; else a re-listing of the keys' range (:meth:`relist`)."""
        bucket = layout.bucket
        if not every:
            return {k: Current(h) for k, h in self.relist(bucket, layout.listing, keys).items()}
        found: dict[str, Current] = {}
        listed = self.s3.map(lambda k: tuple(self.s3.versions(bucket, k)), keys)
        for key, versions in zip(keys, listed, strict=True):
            latest = next((v for v in versions if v.latest), None)
            if latest is not None and not latest.marker:
                found[key] = Current(Head(key, latest.last_modified, latest.etag, latest.size,
                                          latest.version_id), versions)
        return found

    def relist(self, bucket: str, prefix: str, keys: list[str]) -> dict[str, Head]:
        """The current objects among ``keys`` (ascending) by ListObjectsV2 from just before
        the first; once the pages read outnumber the keys still to find, HeadObject each."""
        wanted = set(keys)
        found: dict[str, Head] = {}
        listed = self.s3.pages(bucket, prefix, start_after=keys[0][:-1] or None)
        for pages, page in enumerate(listed, 1):
            found.update((h.key, h) for h in page if h.key in wanted)
            if not page or page[-1].key >= keys[-1]:
                return found
            left = [k for k in keys if k > page[-1].key]
            if len(left) <= pages:
                heads = self.s3.map(lambda k: self.s3.head(bucket, k), left)
                found.update((k, h) for k, h in zip(left, heads, strict=True) if h)
                return found
        return found

    def remove(self, bucket: str, items: Sequence[tuple[str, tuple[Version, ...] | None]]
               ) -> dict[str, str]:
        """Delete objects: with their versions given, every older version and delete marker
        first, then the current version of each key none of whose older ones was refused
        (so a key S3 refuses keeps its current version); else by key alone (in a versioned
        bucket, a delete marker). Returns the refused keys with their S3 error codes."""
        older = [(k, v.version_id) for k, vs in items if vs for v in vs if not v.latest]
        refused = self.s3.delete(bucket, older) if older else {}
        last = [(k, next((v.version_id for v in vs if v.latest), None) if vs else None)
                for k, vs in items if k not in refused]
        if last:
            refused.update(self.s3.delete(bucket, last))
        return refused
