"""The ``s3`` adapter: objects in one bucket of any S3-compatible store, through boto3.

A record is an object: its key is the full object key, its clock the object's
``LastModified`` (or a ``{clock:...}`` field of the rule's ``path``), its subject the
``{subject}`` field of the path or the value of the tag ``subject_tag``. A rule's records are
the keys below ``<store prefix><rule prefix>`` that its ``path`` pattern matches (all of them
without a pattern), never those below an isolation prefix.

Reading is ListObjectsV2 pages, in key order, one page at a time; a selection is evaluated in
Python (:mod:`retentiond.adapters.recordsel`). S3 has no transactions: a disposal re-reads
each given object (a re-listing of the batch's key range, or one request per key where that is
cheaper), keeps those the selection still covers and no Object Lock protects, and deletes them
with DeleteObjects (up to 1,000 keys a request), each key's outcome taken from the response.

Versioned buckets: ``versions: all`` (the default) deletes every version and delete marker of
a disposed key, the older ones first and the current one last, so a key whose deletion fails
keeps its current version; ``versions: current`` deletes without a version id, which only adds
a delete marker (the older versions stay; ``plan`` and ``config validate`` say so).

Object Lock: with ``versions: all`` an object any version of which is under a legal hold or an
unexpired retention is left out and counted ``blocked`` (``object-lock``), read from
HeadObject's lock headers; nothing is ever sent with a bypass header. A delete marker is never
refused by Object Lock, so ``versions: current`` is never blocked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from retentiond.adapters.base import OBJECT_LOCK, Adapter, Candidate, Problem, Selection
from retentiond.adapters.pathglob import compiled
from retentiond.adapters.recordsel import Covers, Seen, View
from retentiond.adapters.s3dispose import Current, S3Disposal
from retentiond.adapters.s3isolate import S3Isolation
from retentiond.adapters.s3select import Layout, Named, isolated_prefixes, isolation, view
from retentiond.adapters.s3store import Head, S3Store, Version
from retentiond.errors import StoreError, StoreUnreachable

if TYPE_CHECKING:
    from retentiond.planner import Facts
    from retentiond.policy.model import Policy, Rule, Store

@dataclass(frozen=True)
class Bucket:
    """What retentiond needs to know of a bucket: versioning (``Enabled``, ``Suspended`` or
    None) and Object Lock (``None``: not enabled; unreadable settings count as enabled)."""

    versioning: str | None
    lock: dict[str, Any] | None

    @property
    def versioned(self) -> bool:
        return self.versioning is not None


class S3Adapter(S3Disposal, S3Isolation, Adapter):
    name: ClassVar[str] = "s3"
    actions: ClassVar[frozenset[str]] = frozenset({"delete", "isolate"})

    def __init__(self, store_name: str, store: Store, policy: Policy) -> None:
        super().__init__(store_name, store, policy)
        self.s3 = S3Store(store_name, store)
        self._connected = False
        self._problem: str | None = None
        self._buckets: dict[str, Bucket] = {}
        self._layouts: dict[str, Layout] = {}
        self._scanned: dict[str, tuple[str, int]] = {}

    # -- static checks ------------------------------------------------------------------------
    @classmethod
    def check_rule(cls, rule: Rule, policy: Policy) -> list[Problem]:
        problems = super().check_rule(rule, policy)
        store = policy.stores[rule.store]
        if not store.bucket:
            problems.append(("store", f"store {rule.store!r} (s3) needs a bucket"))
        refused = {
            "table": "the s3 adapter reads objects; use prefix and path, not table",
            "key": "the s3 adapter's key is the object key; remove key",
            "subject": "the s3 adapter reads the subject from a {subject} field in path or "
                       "from an object tag (subject_tag), not from a column",
            "clock_format": "the s3 adapter's clocks are times (LastModified, or a "
                            "{clock:FORMAT} field in path); remove clock_format",
            "where": "the s3 adapter has no SQL; narrow the rule with prefix and path",
            "match": "the s3 adapter cannot filter on columns; narrow the rule with prefix "
                     "and path",
            "prune_empty_dirs": "only the files adapter prunes directories; S3 has none",
        }
        problems += [(k, msg) for k, msg in refused.items() if getattr(rule, k)]
        if not rule.prefix and not rule.path:
            problems.append(("prefix", "required for the s3 adapter: the key prefix the rule "
                             "lists (and/or a path pattern below it)"))
        if rule.clock not in (None, "last_modified"):
            problems.append(("clock", "the s3 adapter's clock is last_modified (the "
                             "default) or a {clock:FORMAT} field in path"))
        problems += cls._check_path(rule)
        problems += cls._check_isolation(rule, policy, store)
        return problems

    @staticmethod
    def _check_path(rule: Rule) -> list[Problem]:
        if not rule.path:
            return []
        try:
            pattern = compiled(rule.path)
        except ValueError as exc:
            return [("path", str(exc))]
        if pattern.has_subject and rule.subject_tag:
            return [("subject_tag", "the path's {subject} field already names the subject; "
                     "use one of them")]
        return []

    @staticmethod
    def _check_isolation(rule: Rule, policy: Policy, store: Store) -> list[Problem]:
        problems: list[Problem] = []
        if "isolate" in (rule.action, rule.on_erasure):
            if not ((rule.isolate and rule.isolate.for_) or store.backups):
                problems.append(("isolate", "isolate needs isolate.for, or backups.retention "
                                 f"on store {rule.store!r}, to know when to purge"))
            if rule.isolate and (rule.isolate.table or rule.isolate.dir):
                problems.append(("isolate", "the s3 adapter isolates into isolate.bucket and "
                                 "isolate.prefix, not a table or directory"))
        listing = store.prefix + (rule.prefix or "")
        held = [p for p in isolated_prefixes(rule.store, store, policy) if listing.startswith(p)]
        if held:
            problems.append(("prefix", f"{held[0]} holds isolated objects; no rule may read "
                             "it"))
        return problems

    # -- lifecycle ----------------------------------------------------------------------------
    def connect(self) -> None:
        """Reach the endpoint with the credentials (StoreUnreachable otherwise) and read the
        bucket's versioning and Object Lock settings. A missing or unreadable bucket is a
        problem of every rule (``validate``, ``preflight``), not an unreachable store."""
        if self._connected:
            return
        bucket = str(self.store.bucket or "")
        if not bucket:
            self._problem = f"store {self.store_name} names no bucket"
        else:
            try:
                if self.s3.bucket_exists(bucket):
                    self.bucket(bucket)
                else:
                    self._problem = (f"bucket {bucket} does not exist at {self.s3.endpoint}; "
                                     f"create it or fix stores.{self.store_name}.bucket")
            except StoreUnreachable:
                raise
            except StoreError as exc:
                why = str(exc).removeprefix(f"store {self.store_name}: ")
                self._problem = f"bucket {bucket} cannot be read: {why}"
        self._connected = True

    def close(self) -> None:
        self.s3.close()
        self._connected = False
        self._buckets.clear()
        self._layouts.clear()

    def bucket(self, name: str) -> Bucket:
        """A bucket's versioning and Object Lock settings (read once). A setting that cannot
        be read counts as on: every version is listed and Object Lock is checked."""
        if name not in self._buckets:
            try:
                versioning = self.s3.versioning(name)
            except StoreUnreachable:
                raise
            except StoreError:
                versioning = "Unknown"
            try:
                lock = self.s3.object_lock(name)
            except StoreUnreachable:
                raise
            except StoreError:
                lock = {"ObjectLockEnabled": "Unknown"}
            self._buckets[name] = Bucket(versioning, lock)
        return self._buckets[name]

    def layout(self, rule: Rule) -> Layout:
        if rule.id not in self._layouts:
            self._layouts[rule.id] = Layout.of(self.store_name, self.store, rule, self.policy)
        return self._layouts[rule.id]

    def describe(self) -> dict[str, Any]:
        """The bucket as ``config validate`` shows it."""
        self.connect()
        bucket = str(self.store.bucket)
        doc: dict[str, Any] = {"bucket": bucket, "endpoint": self.s3.endpoint}
        if self._problem:
            return {**doc, "problem": self._problem}
        info = self.bucket(bucket)
        doc["versioning"] = info.versioning or "never enabled"
        doc["object_lock"] = "disabled" if info.lock is None else str(
            info.lock.get("ObjectLockEnabled", "Enabled")).lower()
        retention = ((info.lock or {}).get("Rule") or {}).get("DefaultRetention")
        if retention:
            span = ", ".join(f"{v} {k.lower()}" for k, v in retention.items() if k != "Mode")
            doc["default_retention"] = f"{retention.get('Mode')} {span}".strip()
        return doc

    # -- live checks ----------------------------------------------------------------------------
    def preflight(self, rule: Rule) -> list[Problem]:
        self.connect()
        return [("store", self._problem)] if self._problem else []

    def validate(self, rule: Rule) -> list[Problem]:
        problems = self.preflight(rule)
        if problems:
            return problems
        layout = self.layout(rule)
        try:
            self.s3.probe(layout.bucket, layout.listing)
        except StoreUnreachable:
            raise
        except StoreError as exc:
            why = str(exc).removeprefix(f"store {self.store_name}: ")
            problems.append(("prefix", f"cannot list bucket {layout.bucket}: {why}"))
        if "isolate" in (rule.action, rule.on_erasure):
            target, _ = isolation(self.store, rule)
            if target != layout.bucket and not self.s3.bucket_exists(target):
                problems.append(("isolate.bucket", f"bucket {target} does not exist at "
                                 f"{self.s3.endpoint}"))
        return problems

    def warnings(self, rule: Rule, ledgered: Callable[[str], bool], *,
                 count_bad: bool = True) -> list[Problem]:
        found: list[Problem] = []
        layout = self.layout(rule)
        if self._problem:
            return found
        info = self.bucket(layout.bucket)
        if rule.versions == "current" and info.versioned:
            found.append(("versions", f"current: a disposal only adds a delete marker; every "
                          f"earlier version of a disposed object stays in bucket "
                          f"{layout.bucket} (versioning {info.versioning}); versions: all "
                          "removes them"))
        if rule.prefix and not rule.prefix.endswith("/"):
            found.append(("prefix", f"{rule.prefix} does not end in /: it also selects keys "
                          f"that merely begin with it ({rule.prefix}-old/..., "
                          f"{rule.prefix}2/...); end it with / to select one folder"))
        if count_bad and layout.key_clock and (n := self.count_bad_clock(rule)):
            found.append(("path", f"{n} keys have a date that does not parse with "
                          f"{layout.pattern.clock_format if layout.pattern else ''}; they "
                          "are never due by time"))
        return found

    # -- reading ------------------------------------------------------------------------------
    def _subjects(self, layout: Layout, items: Sequence[tuple[Current, Named]]
                  ) -> list[str | None]:
        if layout.subject_tag is None:
            return [n.subject for _, n in items]
        tag = layout.subject_tag
        return self.s3.map(lambda c: self.s3.tag(layout.bucket, c.head.key, tag),
                           [c for c, _ in items])

    def objects(self, rule: Rule, *, versions: bool = False
                ) -> Iterator[list[tuple[Current, Named]]]:
        """The rule's objects, page by page, in key order: ListObjectsV2, or with
        ``versions`` ListObjectVersions (each current object with all its versions)."""
        layout = self.layout(rule)
        if not versions:
            for page in self.s3.pages(layout.bucket, layout.listing):
                yield [(Current(h), n) for h in page if (n := layout.parse(h.key)) is not None]
            return
        for listed in self.s3.version_pages(layout.bucket, layout.listing):
            out: list[tuple[Current, Named]] = []
            for key, vs in listed:
                latest = vs[0] if vs and vs[0].latest and not vs[0].marker else None
                if latest is not None and (n := layout.parse(key)) is not None:
                    out.append((Current(Head(key, latest.last_modified, latest.etag,
                                             latest.size, latest.version_id), vs), n))
            yield out

    def _covered(self, sel: Selection, items: Sequence[tuple[Current, Named]]
                 ) -> list[tuple[Current, str | None]]:
        """The objects the selection covers, with their subjects (tags are read only for the
        objects whose clock the selection takes)."""
        layout = self.layout(sel.rule)
        tz = self.policy.tz
        if layout.subject_tag is not None and not sel.unconditional:
            clocks = Covers(replace(sel, subjects=None, exclude_subjects=(), exclude=()))
            items = [(c, n) for c, n in items
                     if clocks(view(n, c.head.last_modified, None, tz))]
        full = Covers(sel)
        return [(c, s) for (c, n), s in zip(items, self._subjects(layout, items), strict=True)
                if full(self._view(sel.rule, c, n, s))]

    def _view(self, rule: Rule, c: Current, named: Named, subject: str | None) -> View:
        """The object as each rule of a selection sees it: ``rule``'s own reading, and for a
        rule with another pattern or subject tag (two rules over one prefix, written
        differently) its own match of the key (None: not its record) and its own subject,
        the tag read when it names another one."""
        tz = self.policy.tz
        mine = view(named, c.head.last_modified, subject, tz)
        mine_layout = self.layout(rule)

        def of(other: Rule) -> Seen | None:
            theirs = self.layout(other)
            if _reads(theirs) == _reads(mine_layout):
                return mine(other)
            again = theirs.parse(c.head.key)
            if again is None:
                return None
            who = again.subject
            if theirs.subject_tag is not None:
                who = (subject if theirs.subject_tag == mine_layout.subject_tag
                       else self.s3.tag(theirs.bucket, c.head.key, theirs.subject_tag))
            return view(again, c.head.last_modified, who, tz)(other)

        return of

    def _pages(self, sel: Selection, *, locks: bool
               ) -> Iterator[list[tuple[Current, str | None, bool]]]:
        """Per page, the objects the selection covers: ``(object, subject, locked)``; with
        ``locks``, Object Lock is read (every version's HeadObject), else ``locked`` is
        False."""
        bucket = self.layout(sel.rule).bucket
        for items in self.objects(sel.rule, versions=locks):
            chosen = self._covered(sel, items)
            held = (self.locks(bucket, [c.head.key for c, _ in chosen],
                               {c.head.key: c.versions for c, _ in chosen})
                    if locks and chosen else [False] * len(chosen))
            yield [(c, s, h) for (c, s), h in zip(chosen, held, strict=True)]

    def lock_applies(self, rule: Rule) -> bool:
        """Object Lock can refuse this rule's disposals: they delete versions (``versions:
        all``) in a bucket with Object Lock."""
        return rule.versions == "all" and self.bucket(self.layout(rule).bucket).lock is not None

    def locks(self, bucket: str, keys: Sequence[str],
              versions: dict[str, tuple[Version, ...] | None] | None = None) -> list[bool]:
        """Whether any version of each object is under Object Lock (HeadObject per version;
        the versions are listed where not given)."""
        info = self.bucket(bucket)
        if not info.versioned:
            heads = self.s3.map(lambda k: self.s3.head(bucket, k, lock=True), keys)
            return [bool(h and h.locked) for h in heads]
        known = versions or {}
        listed = [known.get(k) or tuple(self.s3.versions(bucket, k)) for k in keys]
        pairs = [(k, v.version_id) for k, vs in zip(keys, listed, strict=True) for v in vs
                 if not v.marker]
        heads = self.s3.map(lambda p: self.s3.head(bucket, p[0], p[1], lock=True), pairs)
        held = {k for (k, _), h in zip(pairs, heads, strict=True) if h and h.locked}
        return [k in held for k in keys]

    def count(self, selection: Selection) -> int:
        return sum(len(page) for page in self._selected(selection))

    def count_null_clock(self, rule: Rule) -> int:
        return 0  # LastModified is always set; a key's date that does not parse is bad

    def count_bad_clock(self, rule: Rule) -> int:
        if not self.layout(rule).key_clock:
            return 0
        return sum(n.bad_clock for items in self.objects(rule) for _, n in items)

    def _selected(self, selection: Selection) -> Iterator[list[tuple[Current, str | None]]]:
        """Per page, the objects the selection covers, without those under Object Lock when
        it skips blocked records."""
        if selection.everything_excluded:
            return
        skip = selection.skip_blocked and self.lock_applies(selection.rule)
        for chosen in self._pages(selection, locks=skip):
            yield [(c, s) for c, s, locked in chosen if not locked]

    def scan(self, selection: Selection, batch_size: int) -> Iterator[list[Candidate]]:
        batch: list[tuple[Current, str | None]] = []
        for chosen in self._selected(selection):
            batch += chosen
            while len(batch) >= batch_size:
                yield self.scanned(batch[:batch_size])
                batch = batch[batch_size:]
        if batch:
            yield self.scanned(batch)

    def blocked(self, selection: Selection) -> tuple[int, list[dict[str, Any]]]:
        rule = selection.rule
        if selection.everything_excluded or not self.lock_applies(rule):
            return 0, []
        n = sum(locked for chosen in self._pages(selection, locks=True)
                for _, _, locked in chosen)
        bucket = self.layout(rule).bucket
        return (n, [{"constraint": OBJECT_LOCK, "table": bucket, "count": n}]) if n else (0, [])

    def blocking_record(self, selection: Selection, key: Any) -> list[dict[str, str]]:
        bucket = self.layout(selection.rule).bucket
        if self.lock_applies(selection.rule) and self.locks(bucket, [str(key)])[0]:
            return [{"constraint": OBJECT_LOCK, "table": bucket}]
        return []

    def facts(self, rules: Sequence[Rule], key: Any) -> Facts | None:
        from retentiond.planner import Facts

        layout = self.layout(rules[0])
        key = str(key)
        head = self.s3.head(layout.bucket, key)
        if head is None:
            return None
        named = layout.parse(key)
        if named is None:
            return Facts(subject=None, clocks={r.id: None for r in rules},
                         matches={r.id: False for r in rules}, key=key)
        subject = self._subjects(layout, [(Current(head), named)])[0]
        seen = view(named, head.last_modified, subject, self.policy.tz)
        as_seen = {r.id: s for r in rules if (s := seen(r)) is not None}
        return Facts(subject=subject, clocks={r: s.clock for r, s in as_seen.items()},
                     matches={r.id: True for r in rules}, key=key,
                     bad_clocks=frozenset(r for r, s in as_seen.items() if s.bad_clock))

    def present_keys(self, rule: Rule, action: str, refs: set[str],
                     ref_of: Callable[[Any], str]) -> list[str]:
        """Keys of the rule's objects (isolated copies for ``purge``) named by ``refs``."""
        found: list[str] = []
        if not refs:
            return found
        keys = (self.isolated_originals(rule) if action == "purge" else
                (c.head.key for items in self.objects(rule) for c, _ in items))
        seen: set[str] = set()
        for key in keys:
            if key not in seen and ref_of(key) in refs:
                seen.add(key)
                found.append(key)
                if len(found) == len(refs):
                    break
        return sorted(found)

    def remaining(self, rule: Rule, action: str, refs: set[str],
                  ref_of: Callable[[Any], str]) -> set[str]:
        return {ref_of(k) for k in self.present_keys(rule, action, refs, ref_of)}

    def present(self, rule: Rule, action: str, refs: set[str],
                ref_of: Callable[[Any], str]) -> list[Any]:
        return list(self.present_keys(rule, action, refs, ref_of))


def _reads(layout: Layout) -> tuple[str, str | None, str | None]:
    """What decides how a rule reads an object: its prefix, pattern and subject tag."""
    return (layout.base, layout.pattern.pattern if layout.pattern is not None else None,
            layout.subject_tag)
