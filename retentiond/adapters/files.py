"""The ``files`` adapter: the files of a directory tree are the records.

A store names its ``root`` (``{adapter: files, root: /srv/uploads}``); a rule names its files
with ``path``, a glob relative to the root with optional named fields
(:mod:`retentiond.adapters.pathglob`): ``users/{subject}/**`` takes the subject from the path,
``logs/{clock:%Y-%m-%d}.log`` the clock from the name; otherwise the clock is the file's
modification time (``clock: mtime``, the default), read as wall-clock time in the policy's
``timezone``. A record's key is its path relative to the root (``invoices/2019/a.pdf``), and
its reference ``HMAC(secret_key, store \\0 path pattern \\0 relative path)``.

* **Scan**: depth first, each directory's entries sorted, so keys come in ascending string
  order with one directory listing per level in memory (:mod:`retentiond.adapters.filetree`);
  only the part of the tree the pattern can reach is listed. Symlinks are never followed: a
  symlinked directory is not entered and a symlink is not a record; FIFOs, sockets and device
  files are not records and are never opened. The isolation directories are never read.
* **delete** unlinks each file after re-checking it just before (still a regular file, still
  selected, and, when it was scanned, the same inode with the same mtime); with
  ``prune_empty_dirs: true`` the directories it leaves empty are removed too, up to (not
  including) the directory the pattern starts in. There are no transactions: a file that
  cannot be removed (permissions, a mount point, a read-only file system) fails alone
  (:class:`~retentiond.errors.RecordsFailed`), counted by error, never named.
* **isolate** renames each file into ``<isolation dir>/<rule id>/<purge-after>/<relative
  path>`` (:mod:`retentiond.adapters.files_isolate`).
* ``anonymize``, ``match``, ``where``, ``key`` and ``subject`` are refused by ``config
  validate``; so are a root that is ``/`` or a system directory.

Errors and logs name rules, counts and error classes, never a path below the root (folder and
file names can be personal data).
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from retentiond.adapters.base import Adapter, Candidate, Selection
from retentiond.adapters.files_checks import (
    ISOLATED,
    FilesChecks,
    inside,
    isolation_base,
    root_problem,
)
from retentiond.adapters.files_isolate import FilesIsolation
from retentiond.adapters.filetree import OPEN_DIR, Dirs, Tree, reason
from retentiond.adapters.pathglob import PathMatch, PathPattern, compiled
from retentiond.adapters.recordsel import Covers, Seen, instants_agree
from retentiond.errors import RecordsFailed, StoreError, StoreUnreachable
from retentiond.log import get_logger

if TYPE_CHECKING:
    from retentiond.planner import Facts
    from retentiond.policy.model import Policy, Rule, Store

log = get_logger(__name__)
#: The failure reason of a file with more than one name (hard link): unlinking or renaming
#: one name would leave its data in place under the other, so it is never disposed.
HARD_LINKED = "hard-linked (the data has another name)"

Found = tuple[str, PathMatch, os.stat_result | None]  # (key, match, lstat or None)


def parts_of(key: Any) -> list[str] | None:
    """A key as path components, or None when it cannot name a file below the root
    (absolute, ``.``/``..`` or empty components, NUL, not text)."""
    if not isinstance(key, str) or not key or "\0" in key:
        return None
    parts = key.split("/")
    if "" in parts or "." in parts or ".." in parts:
        return None
    return parts


class FilesAdapter(FilesChecks, FilesIsolation, Adapter):
    name: ClassVar[str] = "files"
    actions: ClassVar[frozenset[str]] = frozenset({"delete", "isolate"})

    def __init__(self, store_name: str, store: Store, policy: Policy) -> None:
        super().__init__(store_name, store, policy)
        self._root_fd: int | None = None
        # (inode, mtime, match) of the batch the scan handed out last, to re-check before
        # disposal that the file is the one scanned.
        self._scanned: dict[str, tuple[int, int, PathMatch]] = {}
        self._scanned_path: str | None = None  # the pattern those files were matched with
        self._clock_counts: dict[str, tuple[int, int]] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def root(self) -> str:
        return os.path.normpath(str(self.store.root))

    @property
    def root_fd(self) -> int:
        if self._root_fd is None:
            self.connect()
        assert self._root_fd is not None
        return self._root_fd

    def connect(self) -> None:
        if self._root_fd is not None:
            return
        where = f"store {self.store_name}"
        if not self.store.root:
            raise StoreUnreachable(f"{where}: no root; set root: to the directory the rules' "
                                   "paths are relative to")
        root = str(self.store.root)
        problem = root_problem(root) or root_problem(os.path.realpath(root))
        if problem:
            raise StoreUnreachable(f"{where}: {problem}")
        try:
            fd = os.open(root, OPEN_DIR)
        except FileNotFoundError:
            raise StoreUnreachable(f"{where}: root {root} does not exist; create it or fix "
                                   "root:") from None
        except OSError as exc:
            # O_DIRECTORY | O_NOFOLLOW on a symlink: ENOTDIR (or ELOOP).
            what = ("is a symlink; name the directory it points to" if os.path.islink(root)
                    else "is not a directory" if exc.errno == errno.ENOTDIR
                    else f"cannot be opened: {reason(exc)}")
            raise StoreUnreachable(f"{where}: root {root} {what}") from None
        self._root_fd = fd

    def close(self) -> None:
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None
        self._scanned.clear()

    def tree(self) -> Tree:
        """The live tree: every isolation directory inside the root is skipped."""
        skip = {ISOLATED}
        real_root = os.path.realpath(self.root)
        for rule in self.policy.rules:
            if rule.store == self.store_name and rule.isolate and rule.isolate.dir:
                base = isolation_base(self.root, rule)
                if inside(base, self.root):
                    skip.add(os.path.relpath(base, self.root))
                # The same directory named through a symlink on the way.
                real = os.path.realpath(base)
                if inside(real, real_root):
                    skip.add(os.path.relpath(real, real_root))
        return Tree(self.root_fd, frozenset(skip))

    def _walked(self, rule: Rule, tree: Tree) -> None:
        if tree.skipped:
            log.warning("files skipped", store=self.store_name, rule=rule.id,
                        unreadable_dirs=tree.skipped.unreadable,
                        undecodable_names=tree.skipped.undecodable)

    # -- reading ------------------------------------------------------------------------------
    def found(self, rule: Rule, *, with_stat: bool, tree: Tree | None = None
              ) -> Iterator[Found]:
        """The rule's files in key order, with their lstat when ``with_stat`` or the clock is
        the mtime."""
        pattern = compiled(str(rule.path))
        need = with_stat or pattern.clock_format is None
        tree = tree if tree is not None else self.tree()
        try:
            for key, name, fd in tree.walk(pattern.literal_prefix, pattern.could_contain):
                m = pattern.match(key)
                if m is None:
                    continue
                st = None
                if need:
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue  # gone since the listing
                    if not stat.S_ISREG(st.st_mode):
                        continue
                yield key, m, st
        except OSError as exc:
            raise StoreError(f"store {self.store_name}: {reason(exc)} while reading the "
                             f"files of rule {rule.id}") from None
        self._walked(rule, tree)

    def seen(self, pattern: PathPattern, m: PathMatch, st: os.stat_result | None) -> Seen:
        """A file as a rule with ``pattern`` sees it (clocks in the policy's zone)."""
        return self.reader(pattern)(m, st)

    def reader(self, pattern: PathPattern) -> Callable[[PathMatch, os.stat_result | None], Seen]:
        """How a rule with ``pattern`` reads a file: the clock from the name (naive, in the
        policy's zone), or the mtime (to the microsecond) in the policy's zone."""
        tz = self.policy.tz
        if pattern.clock_format is not None:
            def named(m: PathMatch, st: os.stat_result | None) -> Seen:
                return Seen(m.subject, None if m.clock is None else m.clock.replace(tzinfo=tz),
                            m.bad_clock)
            return named

        def modified(m: PathMatch, st: os.stat_result | None) -> Seen:
            assert st is not None
            return Seen(m.subject, datetime.fromtimestamp(st.st_mtime_ns // 1000 / 1e6, tz))
        return modified

    def judge(self, selection: Selection
              ) -> Callable[[str, PathMatch, os.stat_result | None], bool]:
        """Whether the selection covers a file (its key, match and lstat). The rules of one
        target share their pattern, so a file is read once for all of them."""
        fast = _by_mtime(selection)
        if fast is not None:
            return lambda key, m, st: fast.same((m.subject, _micros(st), False))
        covers = Covers(selection)
        rule = selection.rule
        if all(r.path == rule.path for r in covers.rules):
            read = self.reader(compiled(str(rule.path)))
            return lambda key, m, st: covers.same(read(m, st))
        return lambda key, m, st: covers(self.view(key, m, st, rule))

    def selected(self, selection: Selection, *, with_stat: bool) -> Iterator[Found]:
        """The files the selection covers, in key order, with their match and lstat (None
        when not ``with_stat`` and the clocks are in the names). One walk; per file one regex
        match and one ``lstat``: this is the hot loop of a sweep."""
        rule = selection.rule
        pattern = compiled(str(rule.path))
        fast = _by_mtime(selection)
        if fast is None:
            judge = self.judge(selection)
            yield from ((key, m, st) for key, m, st in self.found(
                rule, with_stat=with_stat or _mtime_in(selection)) if judge(key, m, st))
            return
        fullmatch, has_subject, same = pattern.regex.fullmatch, pattern.has_subject, fast.same
        cutoff = fast.cutoff if fast.cutoff_only else None  # the plain time selection
        tree = self.tree()
        try:
            for key, name, fd in tree.walk(pattern.literal_prefix, pattern.could_contain):
                raw = fullmatch(key)
                if raw is None:
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue  # gone since the listing
                if not stat.S_ISREG(st.st_mode):
                    continue
                if cutoff is not None:
                    if st.st_mtime_ns // 1000 <= cutoff:
                        yield key, PathMatch(raw.group("subject") if has_subject else None,
                                             None), st
                    continue
                subject = raw.group("subject") if has_subject else None
                if same((subject, st.st_mtime_ns // 1000, False)):
                    yield key, PathMatch(subject, None), st
        except OSError as exc:
            raise StoreError(f"store {self.store_name}: {reason(exc)} while reading the "
                             f"files of rule {rule.id}") from None
        self._walked(rule, tree)

    def view(self, key: str, m: PathMatch, st: os.stat_result | None, rule: Rule
             ) -> Callable[[Rule], Seen | None]:
        """The record as each rule of a selection sees it (rules of one target share their
        pattern; another pattern is matched again)."""
        mine = self.seen(compiled(str(rule.path)), m, st)

        def of(other: Rule) -> Seen | None:
            if other.path == rule.path:
                return mine
            pattern = compiled(str(other.path))
            again = pattern.match(key)
            if again is None or (st is None and pattern.clock_format is None):
                return None
            return self.seen(pattern, again, st)

        return of

    def count(self, selection: Selection) -> int:
        if selection.everything_excluded:
            return 0
        return sum(1 for _ in self.selected(selection, with_stat=False))

    def _bad_clocks(self, rule: Rule) -> int:
        pattern = compiled(str(rule.path))
        if pattern.clock_format is None:
            return 0
        return sum(1 for _, m, _ in self.found(rule, with_stat=False) if m.bad_clock)

    def count_null_clock(self, rule: Rule) -> int:
        """Always 0: an empty or unparseable ``{clock:...}`` field is a bad clock (as an
        empty text clock is on sql) and an mtime is always set. The bad clocks are counted
        in the same walk and kept for the :meth:`count_bad_clock` that follows (a sweep asks
        for both, one after the other)."""
        self._clock_counts[rule.id] = (0, self._bad_clocks(rule))
        return 0

    def count_bad_clock(self, rule: Rule) -> int:
        counted = self._clock_counts.pop(rule.id, None)
        return counted[1] if counted is not None else self._bad_clocks(rule)

    def scan(self, selection: Selection, batch_size: int) -> Iterator[list[Candidate]]:
        if selection.everything_excluded:
            return
        batch: list[Candidate] = []
        scanned: dict[str, tuple[int, int, PathMatch]] = {}
        for key, m, st in self.selected(selection, with_stat=True):
            assert st is not None
            batch.append(Candidate(key, m.subject))
            scanned[key] = (st.st_ino, st.st_mtime_ns, m)
            if len(batch) >= batch_size:
                self._scanned, self._scanned_path = scanned, selection.rule.path
                yield batch
                batch, scanned = [], {}
        if batch:
            self._scanned, self._scanned_path = scanned, selection.rule.path
            yield batch

    def refs_present(self, rule: Rule, refs: set[str], ref_of: Callable[[Any], str]
                     ) -> list[str]:
        """Keys of the rule's live files whose reference is in ``refs``. A walk that could
        not read a directory cannot say a file is gone (reconciliation would ledger it as
        disposed, replay would miss it): a StoreError, and the intent stays pending."""
        if not refs:
            return []
        tree = self.tree()
        keys = [key for key, _, _ in self.found(rule, with_stat=False, tree=tree)
                if ref_of(key) in refs]
        if tree.skipped.unreadable:
            raise StoreError(f"store {self.store_name}: {tree.skipped.unreadable} "
                             f"directories of rule {rule.id} could not be read; cannot tell "
                             "which files are gone")
        return keys

    def present(self, rule: Rule, action: str, refs: set[str],
                ref_of: Callable[[Any], str]) -> list[Any]:
        if action == "purge":
            return self.isolated_present(rule, refs, ref_of)
        return list(self.refs_present(rule, refs, ref_of))

    def remaining(self, rule: Rule, action: str, refs: set[str],
                  ref_of: Callable[[Any], str]) -> set[str]:
        return {ref_of(k) for k in self.present(rule, action, refs, ref_of)}

    def facts(self, rules: Sequence[Rule], key: Any) -> Facts | None:
        from retentiond.planner import Facts

        parts = parts_of(key)
        first = compiled(str(rules[0].path))
        m = first.match(key) if parts is not None else None
        if parts is None or m is None or self.tree().skipped_dir(key):
            return None
        with Dirs(self.root_fd) as dirs:
            try:
                fd = dirs.open(parts[:-1])
                st = None if fd is None else os.stat(parts[-1], dir_fd=fd,
                                                     follow_symlinks=False)
            except OSError:
                return None
        if st is None or not stat.S_ISREG(st.st_mode):
            return None
        clocks: dict[str, datetime | None] = {}
        matches: dict[str, bool] = {}
        broken: set[str] = set()
        for rule in rules:
            pattern = compiled(str(rule.path))
            mine = pattern.match(key)
            matches[rule.id] = mine is not None
            seen = None if mine is None else self.seen(pattern, mine, st)
            clocks[rule.id] = None if seen is None else seen.clock
            if seen is not None and seen.bad_clock:
                broken.add(rule.id)
        return Facts(subject=m.subject, clocks=clocks, matches=matches,
                     bad_clocks=frozenset(broken), key=key)

    # -- mutators -----------------------------------------------------------------------------
    def delete(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        return self.each(selection, keys, "deleting", self._unlink)

    @staticmethod
    def _unlink(fd: int, name: str, key: str) -> bool:
        os.unlink(name, dir_fd=fd)
        return True

    def each(self, selection: Selection, keys: Sequence[Any], doing: str,
             act: Callable[[int, str, str], bool]) -> list[Any]:
        """Re-check each key just before disposing it with ``act(parent fd, name, key)``
        (True when it was disposed, False when it was gone). Returns the keys disposed;
        raises :class:`RecordsFailed` when some failed alone."""
        if not keys or selection.everything_excluded:
            return []
        rule = selection.rule
        judge = self.judge(selection)
        pattern = compiled(str(rule.path))
        tree = self.tree()
        scanned = self._scanned if self._scanned_path == rule.path else {}
        disposed: list[Any] = []
        failed: Counter[str] = Counter()
        emptied: set[tuple[str, ...]] = set()
        with Dirs(self.root_fd) as dirs:
            for key in keys:
                try:
                    now = self._located(dirs, key, scanned, pattern, tree)
                    if now is None:
                        continue
                    fd, parts, m, st = now
                    if not judge(key, m, st):
                        continue
                    if st.st_nlink > 1:  # another name keeps the data: never "disposed"
                        failed[HARD_LINKED] += 1
                        continue
                    if not act(fd, parts[-1], key):
                        continue
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    failed[reason(exc)] += 1
                    continue
                disposed.append(key)
                if rule.prune_empty_dirs:
                    emptied.add(tuple(parts[:-1]))
            if emptied:
                self._prune(dirs, emptied, pattern)
        if failed:
            log.warning("records failed", store=self.store_name, rule=rule.id, doing=doing,
                        failed=sum(failed.values()), disposed=len(disposed))
            raise RecordsFailed(disposed, failed)
        return disposed

    @staticmethod
    def _located(dirs: Dirs, key: Any, scanned: dict[str, tuple[int, int, PathMatch]],
                 pattern: PathPattern, tree: Tree
                 ) -> tuple[int, list[str], PathMatch, os.stat_result] | None:
        """The file ``key`` names as it is now: its directory's fd, its path components,
        match and lstat; None when it is not (any more) one of the rule's regular files, or
        not the file the scan saw (another inode, another mtime). Raises OSError when it
        cannot be reached."""
        was = scanned.get(key)
        if was is not None:  # read from this tree by the scan: a valid path
            parts, m = key.split("/"), was[2]
        else:
            parts = parts_of(key)
            found = pattern.match(key) if parts is not None else None
            if parts is None or found is None or tree.skipped_dir(key):
                return None
            m = found
        fd = dirs.open(parts[:-1])
        if fd is None:
            return None
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or (
                was is not None and (st.st_ino, st.st_mtime_ns) != was[:2]):
            return None  # changed since the scan: the next sweep looks again
        return fd, parts, m, st

    def _prune(self, dirs: Dirs, emptied: set[tuple[str, ...]], pattern: PathPattern) -> None:
        keep = len([p for p in pattern.literal_prefix.split("/") if p])
        removed = sum(dirs.prune(list(names), keep)
                      for names in sorted(emptied, key=len, reverse=True))
        if removed:
            log.debug("empty directories removed", store=self.store_name, count=removed)


def _micros(st: os.stat_result | None) -> int:
    assert st is not None
    return st.st_mtime_ns // 1000


def _by_mtime(sel: Selection) -> Covers | None:
    """The selection compiled to compare mtimes as integer microseconds, when every rule it
    involves clocks by the mtime of the same pattern and instants compare as wall-clock times
    near its bounds (:func:`recordsel.instants_agree`); else None."""
    path = sel.rule.path
    if compiled(str(path)).clock_format is not None or not _same_path(sel, path):
        return None
    return Covers(sel, micros=True) if instants_agree(sel) else None


def _same_path(sel: Selection, path: str | None) -> bool:
    return sel.rule.path == path and all(_same_path(o, path) for o in sel.exclude)


def _mtime_in(sel: Selection) -> bool:
    """Whether a rule of the selection (or of what it excludes) clocks by mtime."""
    return (compiled(str(sel.rule.path)).clock_format is None
            or any(_mtime_in(o) for o in sel.exclude))

