"""The files adapter's checks (mixed into FilesAdapter): what ``config validate`` refuses
without looking at the disk (:meth:`FilesChecks.check_rule`), the live checks
(:meth:`FilesChecks.validate`) and the warnings.

Roots that are ``/`` or a system directory (``/etc``, ``/usr``, ``/bin``, ``/sbin``, ``/lib*``,
``/boot``, ``/dev``, ``/proc``, ``/sys``, ``/var``, ``/root``, ``/home``; exactly those, not their
subdirectories) are refused, as written and as resolved through symlinks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from retentiond.adapters.base import Problem
from retentiond.adapters.pathglob import PathPattern, compiled

if TYPE_CHECKING:
    from retentiond.policy.model import Policy, Rule, Store

ISOLATED = ".retentiond-isolated"
SYSTEM_DIRS = frozenset({"/", "/etc", "/usr", "/bin", "/sbin", "/boot", "/dev", "/proc",
                         "/sys", "/var", "/root", "/home"})
_LIB = re.compile(r"/lib[^/]*")


def _system_dirs() -> frozenset[str]:
    """The system directories, and where they resolve to on this host (``/lib64`` is
    ``/usr/lib64`` on a merged-/usr system): a root given either way is refused."""
    try:
        libs = {f"/{n}" for n in os.listdir("/") if _LIB.fullmatch(f"/{n}")}
    except OSError:
        libs = set()
    named = SYSTEM_DIRS | libs
    return frozenset(named | {os.path.realpath(d) for d in named})


_RESOLVED_SYSTEM = _system_dirs()

# Rule keys that mean nothing to the files adapter, and what to do instead.
REFUSED: dict[str, str] = {
    "table": "the files adapter uses path, not table",
    "prefix": "the files adapter uses path only; put the directories in path",
    "key": "the files adapter's key is the path relative to the root; remove key",
    "subject": "the files adapter takes the subject from a {subject} field in path, like "
               "users/{subject}/**; remove subject",
    "match": "the files adapter cannot filter on columns; narrow the path glob instead",
    "where": "the files adapter has no SQL; narrow the path glob instead",
    "clock_format": "clock_format is for integer sql clocks; a file name's clock format goes "
                    "in path, like {clock:%Y-%m-%d}",
    "subject_tag": "subject_tag is for s3 objects; use a {subject} field in path",
    "anonymize": "the files adapter cannot anonymize a file; use delete or isolate",
}


def normal(path: str) -> str:
    """An absolute path without ``.``, ``..``, doubled or trailing slashes."""
    return "/" + os.path.normpath(path).lstrip("/")


def root_problem(root: str) -> str | None:
    """Why ``root`` cannot be a files store's root (no disk access), or None."""
    if not os.path.isabs(root):
        return (f"root {root!r} is not an absolute path; give the directory that holds the "
                "records, like /srv/uploads")
    norm = normal(root)
    if norm in _RESOLVED_SYSTEM or _LIB.fullmatch(norm):
        what = "the file system root" if norm == "/" else "a system directory"
        return (f"refusing root {root}: it is {what}; name the directory that holds the "
                "records, like /srv/uploads")
    return None


def inside(path: str, base: str) -> bool:
    """Whether ``path`` is ``base`` or below it (both normal)."""
    return path == base or path.startswith(base.rstrip("/") + "/")


def isolation_base(root: str, rule: Rule) -> str:
    """Where the rule isolates files: ``isolate.dir`` (absolute, or relative to the root), by
    default ``<root>/.retentiond-isolated``."""
    given = rule.isolate.dir if rule.isolate is not None else None
    return normal(os.path.join(normal(root), given or ISOLATED))


def _overlapping_roots(rule: Rule, store: Store, policy: Policy) -> list[Problem]:
    """Two files stores on one tree (the same root, or one inside the other, through
    symlinks too) would not see each other's floors, holds and isolation directories: one
    tree, one store."""
    if not store.root or root_problem(store.root):
        return []
    mine = os.path.realpath(store.root)
    for name, other in policy.stores.items():
        if name == rule.store or other.adapter != store.adapter or not other.root:
            continue
        if root_problem(other.root):
            continue
        theirs = os.path.realpath(other.root)
        if inside(mine, theirs) or inside(theirs, mine):
            return [("store", f"store {rule.store!r}: root {store.root} overlaps the root of "
                     f"store {name!r} ({other.root}); rules on one tree belong to one store, "
                     "so that their floors, holds and isolation directories apply to each "
                     "other")]
    return []


def _store_problems(rule: Rule, store: Store) -> list[Problem]:
    if not store.root:
        return [("store", f"store {rule.store!r} (files) needs a root: the directory the "
                 "rules' paths are relative to")]
    problem = root_problem(store.root)
    return [("store", f"store {rule.store!r}: {problem}")] if problem else []


def _path_problems(rule: Rule) -> tuple[list[Problem], PathPattern | None]:
    if not rule.path:
        return [("path", "required for the files adapter: a glob relative to the store's "
                 "root, like invoices/**/*.pdf")], None
    try:
        pattern = compiled(rule.path)
    except ValueError as exc:
        return [("path", str(exc))], None
    head = pattern.literal_prefix.split("/")[0]
    if head == ISOLATED:
        return [("path", f"{ISOLATED} holds isolated files; no rule may read it")], None
    return [], pattern


def _clock_problems(rule: Rule, pattern: PathPattern) -> list[Problem]:
    if pattern.clock_format is not None and rule.clock is not None:
        return [("clock", "the path's {clock:...} field is this rule's clock; remove clock")]
    if rule.clock not in (None, "mtime"):
        return [("clock", f"the files adapter's clock is mtime or a {{clock:FORMAT}} field in "
                 f"path; {rule.clock!r} is neither")]
    return []


def _isolate_problems(rule: Rule, store: Store) -> list[Problem]:
    if "isolate" not in (rule.action, rule.on_erasure):
        return []
    problems: list[Problem] = []
    opts = rule.isolate
    if not ((opts and opts.for_) or store.backups):
        problems.append(("isolate", "isolate needs isolate.for, or backups.retention on "
                         f"store {rule.store!r}, to know when to purge"))
    for key in ("table", "bucket", "prefix"):
        if opts is not None and getattr(opts, key):
            problems.append((f"isolate.{key}", "the files adapter isolates into a directory; "
                             "use isolate.dir"))
    if store.root and not root_problem(store.root):
        base, root = isolation_base(store.root, rule), normal(store.root)
        if inside(root, base):
            problems.append(("isolate.dir", f"{base} is the root or contains it; isolated "
                             "files must stay out of the rules' reach"))
    return problems


class FilesChecks:
    """``check_rule``, ``validate`` and ``warnings`` of the files adapter."""

    store_name: str
    store: Store
    policy: Policy

    if TYPE_CHECKING:
        @property
        def root(self) -> str: ...
        @property
        def root_fd(self) -> int: ...
        def count_bad_clock(self, rule: Rule) -> int: ...

    @classmethod
    def check_rule(cls, rule: Rule, policy: Policy) -> list[Problem]:
        base: Any = super()
        problems: list[Problem] = list(base.check_rule(rule, policy))
        store = policy.stores[rule.store]
        problems += _store_problems(rule, store)
        problems += _overlapping_roots(rule, store, policy)
        problems += [(key, msg) for key, msg in REFUSED.items() if getattr(rule, key)]
        if rule.versions != "all":
            problems.append(("versions", "versions is for s3 objects; remove it"))
        found, pattern = _path_problems(rule)
        problems += found
        if pattern is not None:
            problems += _clock_problems(rule, pattern)
        return problems + _isolate_problems(rule, store)

    def validate(self, rule: Rule) -> list[Problem]:
        """The root can be read and written; an isolation directory is on its file system."""
        problems: list[Problem] = []
        root = self.root
        wanted = os.R_OK | os.X_OK | os.W_OK
        if not os.access(root, wanted):
            problems.append(("store", f"root {root} is not readable and writable by this "
                             "user; retentiond removes and moves files below it"))
        if "isolate" in (rule.action, rule.on_erasure):
            problems += self._isolation_fs(rule)
        return problems

    def _isolation_fs(self, rule: Rule) -> list[Problem]:
        base = isolation_base(self.root, rule)
        where = "isolate.dir" if rule.isolate is not None and rule.isolate.dir else "isolate"
        if os.path.islink(base):
            return [(where, f"{base} is a symlink; isolated files are never moved through one")]
        existing = base
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if os.stat(existing).st_dev != os.fstat(self.root_fd).st_dev:
            return [(where, f"{base} is on another file system than the root {self.root}; "
                     "isolation renames files, which works within one file system only")]
        return []

    def warnings(self, rule: Rule, ledgered: Callable[[str], bool], *,
                 count_bad: bool = True) -> list[Problem]:
        """The directory the path starts in does not exist (yet); names whose clock field
        does not parse (``config validate`` only)."""
        out: list[Problem] = []
        pattern = compiled(str(rule.path))
        start = pattern.literal_prefix.rstrip("/")
        if start and not os.path.isdir(os.path.join(self.root, start)):
            out.append(("path", f"{start}/ does not exist below the root {self.root}; the "
                        "rule matches no file yet"))
        if count_bad and pattern.clock_format is not None:
            bad = self.count_bad_clock(rule)
            if bad:
                out.append(("path", f"{bad} files have a {{clock:{pattern.clock_format}}} "
                            "field that does not parse; they are never due by time (plan and "
                            "run count them bad_clock)"))
        return out

