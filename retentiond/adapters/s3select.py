"""Pure parts of the s3 adapter: where a rule's records are in a bucket, what one object is
as a record (key, subject, clock), and where isolated objects go.

Keys are full object keys, in S3's order (UTF-8 bytes), which is Python's ``str`` order for
every key without surrogate code points (S3 keys are valid UTF-8, so they have none).

A record's clock is ``LastModified`` (UTC) in the policy's zone, or the date a
``{clock:...}`` field of the path pattern reads from the key (wall-clock time in that zone);
:mod:`retentiond.adapters.recordsel` compares them with a selection's bounds as the sql
adapter compares a naive timestamp column.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from retentiond.adapters.pathglob import PathPattern, compiled
from retentiond.adapters.recordsel import Seen, View

if TYPE_CHECKING:
    from retentiond.policy.model import Policy, Rule, Store

#: Where isolated objects go when the rule does not say (below the store's prefix).
ISOLATED = ".retentiond-isolated/"
#: The purge time in an isolated object's key: ``<prefix><rule>/<purge after>/<key>``.
PURGE_FORMAT = "%Y%m%dT%H%M%SZ"


def pattern_of(rule: Rule) -> PathPattern | None:
    """The rule's ``path`` as a pattern (ValueError with a one-line message when it is bad)."""
    return compiled(rule.path) if rule.path else None


def clock_from_key(rule: Rule, pattern: PathPattern | None) -> bool:
    """The clock is a ``{clock:...}`` field of the key unless the rule says last_modified."""
    return rule.clock is None and pattern is not None and pattern.clock_format is not None


def isolation(store: Store, rule: Rule) -> tuple[str, str]:
    """The bucket and the prefix a rule's isolated objects go to (``isolate.bucket`` /
    ``isolate.prefix``; by default the store's bucket, ``<store prefix>.retentiond-isolated/``).
    Isolated objects of a rule are ``<prefix><rule id>/<purge after>/<original key>``."""
    opts = rule.isolate
    bucket = (opts.bucket if opts and opts.bucket else None) or str(store.bucket)
    if opts and opts.prefix:
        prefix = opts.prefix
    else:
        prefix = (store.prefix if bucket == store.bucket else "") + ISOLATED
    return bucket, prefix if prefix.endswith("/") else prefix + "/"


def isolated_prefixes(store_name: str, store: Store, policy: Policy) -> tuple[str, ...]:
    """Prefixes of the store's bucket holding isolated objects, which no rule reads: the
    default one of every s3 store of the policy on the same bucket and endpoint (copies from
    an earlier policy stay there) and every such store's rules' own: a store listing a whole
    bucket must not dispose of what another store on it isolated."""
    found: set[str] = set()
    for name, other in policy.stores.items():
        if (other.adapter != store.adapter or other.bucket != store.bucket
                or other.endpoint_url != store.endpoint_url) and name != store_name:
            continue
        found.add(other.prefix + ISOLATED)
    for r in policy.rules:
        of = policy.stores.get(r.store)
        if of is None or of.adapter != store.adapter:
            continue
        bucket, prefix = isolation(of, r)
        if bucket == store.bucket and (of.endpoint_url == store.endpoint_url
                                       or r.store == store_name):
            found.add(prefix)
    return tuple(sorted(found))


def isolated_key(prefix: str, rule: Rule, purge_after: datetime, key: str) -> str:
    """The copy's key; its purge time is rounded up to the second (never purged early)."""
    at = purge_after.astimezone(UTC)
    if at.microsecond:
        at = at.replace(microsecond=0) + timedelta(seconds=1)
    return f"{prefix}{rule.id}/{at.strftime(PURGE_FORMAT)}/{key}"


def parse_isolated(prefix: str, rule: Rule, name: str) -> tuple[datetime, str] | None:
    """``(purge after, original key)`` of an isolated object's key, None if it is not one."""
    head = f"{prefix}{rule.id}/"
    if not name.startswith(head):
        return None
    stamp, sep, key = name[len(head):].partition("/")
    try:
        when = datetime.strptime(stamp, PURGE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return (when, key) if sep and key else None


@dataclass(frozen=True)
class Layout:
    """Where one rule's records are: every key below ``base`` that the path pattern matches
    (all of them without one), outside the isolation prefixes. ``listing`` narrows the
    ListObjectsV2 prefix with the pattern's literal beginning."""

    bucket: str
    base: str
    listing: str
    pattern: PathPattern | None
    key_clock: bool
    subject_tag: str | None
    excluded: tuple[str, ...]

    @classmethod
    def of(cls, store_name: str, store: Store, rule: Rule, policy: Policy) -> Layout:
        pattern = pattern_of(rule)
        base = store.prefix + (rule.prefix or "")
        return cls(bucket=str(store.bucket), base=base,
                   listing=base + (pattern.literal_prefix if pattern is not None else ""),
                   pattern=pattern, key_clock=clock_from_key(rule, pattern),
                   subject_tag=rule.subject_tag,
                   excluded=isolated_prefixes(store_name, store, policy))

    def parse(self, key: str) -> Named | None:
        """The subject and clock the key names (None: not a record of this rule)."""
        if not key.startswith(self.base) or key.startswith(self.excluded):
            return None
        if self.pattern is None:
            return Named(None, None, bad_clock=False, has_clock=False)
        m = self.pattern.match(key[len(self.base):])
        if m is None:
            return None
        return Named(m.subject, m.clock, bad_clock=bool(m.bad_clock),
                     has_clock=self.pattern.clock_format is not None)


@dataclass(frozen=True)
class Named:
    """What a key says: its subject, and its date when the pattern has a clock field."""

    subject: str | None
    clock: datetime | None  # naive, from the key
    bad_clock: bool
    has_clock: bool


def view(named: Named, last_modified: datetime, subject: str | None, tz: ZoneInfo) -> View:
    """The record as each rule sees it (:mod:`recordsel`): its subject, and the clock the
    rule reads — the key's date when the pattern has a clock field and the rule names no
    clock, else LastModified — in the policy's zone."""
    modified = Seen(subject, last_modified.astimezone(tz))
    if not named.has_clock:
        return lambda rule: modified
    dated = Seen(subject, None if named.clock is None else named.clock.replace(tzinfo=tz),
                 named.bad_clock)
    return lambda rule: dated if rule.clock is None else modified
