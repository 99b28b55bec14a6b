"""Isolation of files (mixed into FilesAdapter): ``isolate``, ``scan_isolated``,
``purge_isolated`` and reading isolated copies for replay and reconciliation.

A file is isolated by one ``rename`` (atomic, on the root's file system) to::

    <isolation dir>/<rule id>/<purge after>/<relative path>

where the isolation directory is ``isolate.dir`` (absolute, or relative to the root) or by
default ``<root>/.retentiond-isolated``, and ``<purge after>`` is the time (UTC, whole seconds
rounded up, ``20260131T030000Z``) from which the copy is purged: ``isolate.for`` (or the
store's ``backups.retention``) after the sweep. The purge time is the directory the file lands
in, so it is recorded by the same rename that isolates the file: no sidecar to lose in a crash.
Directories are created mode 0700 and files set to 0600. No rule ever reads an isolation
directory (the walks skip it); a sweep purges the copies whose time has come (``scan_isolated``
/ ``purge_isolated``) and removes the directories that leaves empty.
"""

from __future__ import annotations

import errno
import heapq
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, suppress
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from retentiond.adapters.base import Candidate, Selection
from retentiond.adapters.files_checks import inside, isolation_base
from retentiond.adapters.filetree import OPEN_DIR, Dirs, Tree, listing, reason
from retentiond.errors import RecordsFailed, StoreError
from retentiond.log import get_logger

if TYPE_CHECKING:
    from retentiond.policy.model import Policy, Rule

log = get_logger(__name__)
STAMP = "%Y%m%dT%H%M%SZ"


def stamp_of(at: datetime) -> str:
    """A purge time as a directory name: UTC, rounded up to the second."""
    utc = at.astimezone(UTC)
    if utc.microsecond:
        utc = utc.replace(microsecond=0) + timedelta(seconds=1)
    return utc.strftime(STAMP)


def stamp_time(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None


def open_dir(base_fd: int, names: list[str], *, create: bool = False) -> int | None:
    """An fd of its own for ``base/names...`` (no symlink followed), or None."""
    with Dirs(base_fd, create=create) as dirs:
        fd = dirs.open(names)
        return None if fd is None else os.dup(fd)


class FilesIsolation:
    store_name: str
    policy: Policy

    if TYPE_CHECKING:
        @property
        def root(self) -> str: ...
        @property
        def root_fd(self) -> int: ...
        def each(self, selection: Selection, keys: Sequence[Any], doing: str,
                 act: Callable[[int, str, str], bool]) -> list[Any]: ...

    # -- where isolated files go --------------------------------------------------------------
    def rule_dir(self, rule: Rule, *, create: bool = False) -> int | None:
        """An fd for ``<isolation dir>/<rule id>``; None when it does not exist (and not
        ``create``)."""
        base = isolation_base(self.root, rule)
        try:
            if inside(base, self.root):
                names = [n for n in os.path.relpath(base, self.root).split("/") if n != "."]
                top = open_dir(self.root_fd, names, create=create)
            else:
                if create:
                    os.makedirs(base, mode=0o700, exist_ok=True)
                try:
                    top = os.open(base, OPEN_DIR)
                except FileNotFoundError:
                    top = None
            if top is None:
                if create:
                    raise StoreError(f"store {self.store_name}: the isolation directory of "
                                     f"rule {rule.id} cannot be created (a symlink or a file "
                                     "is in the way)")
                return None
            try:
                return open_dir(top, [rule.id], create=create)
            finally:
                os.close(top)
        except OSError as exc:
            raise StoreError(f"store {self.store_name}: {reason(exc)} while opening the "
                             f"isolation directory of rule {rule.id}") from None

    def _due_stamps(self, rule_fd: int, now: datetime) -> list[str]:
        """The purge-time directories of a rule whose time has come, oldest first."""
        names = [key[:-1] for key in listing(rule_fd, Tree(rule_fd).skipped)
                 if key.endswith("/")]
        return [n for n in names if (at := stamp_time(n)) is not None and at <= now]

    # -- isolate ------------------------------------------------------------------------------
    def isolate(self, selection: Selection, keys: Sequence[Any]) -> list[Any]:
        if not keys or selection.everything_excluded:
            return []
        rule = selection.rule
        stamp = stamp_of(selection.purge_after or datetime.now(UTC))
        try:
            rule_fd = self.rule_dir(rule, create=True)
            assert rule_fd is not None
            with ExitStack() as stack:
                stack.callback(os.close, rule_fd)
                stamp_fd = open_dir(rule_fd, [stamp], create=True)
                assert stamp_fd is not None
                stack.callback(os.close, stamp_fd)
                target = stack.enter_context(Dirs(stamp_fd, create=True))
                return self.each(selection, keys, "isolating", self._mover(target))
        except RecordsFailed:
            raise
        except OSError as exc:
            raise StoreError(f"store {self.store_name}: {reason(exc)} while preparing the "
                             f"isolation directory of rule {rule.id}") from None

    def _mover(self, target: Dirs) -> Callable[[int, str, str], bool]:
        loose = [0]

        def move(fd: int, name: str, key: str) -> bool:
            parts = key.split("/")
            dst = target.open(parts[:-1])
            if dst is None:
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            try:
                os.stat(parts[-1], dir_fd=dst, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:  # isolated already in this sweep: never replace an isolated copy
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
            os.rename(name, parts[-1], src_dir_fd=fd, dst_dir_fd=dst)
            try:
                os.chmod(parts[-1], 0o600, dir_fd=dst)
            except OSError:
                loose[0] += 1  # isolated all the same, in a 0700 directory
                log.warning("isolated file mode not set", store=self.store_name,
                            count=loose[0])
            return True

        return move

    # -- purge --------------------------------------------------------------------------------
    def scan_isolated(self, rule: Rule, now: datetime, batch_size: int
                      ) -> Iterator[list[Candidate]]:
        with ExitStack() as stack:
            merged = self._isolated_keys(rule, now, stack)
            batch: list[Candidate] = []
            for key in merged:
                batch.append(Candidate(key))
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
            if batch:
                yield batch

    def _isolated_keys(self, rule: Rule, now: datetime, stack: ExitStack) -> Iterator[str]:
        """The keys of the rule's isolated copies due for purging, ascending, each once."""
        rule_fd = self.rule_dir(rule)
        if rule_fd is None:
            return iter(())
        stack.callback(os.close, rule_fd)
        walks = []
        for name in self._due_stamps(rule_fd, now):
            fd = open_dir(rule_fd, [name])
            if fd is None:
                continue
            stack.callback(os.close, fd)
            walks.append(key for key, _, _ in Tree(fd).walk())
        return _unique(heapq.merge(*walks))

    def purge_isolated(self, rule: Rule, now: datetime, keys: Sequence[Any]) -> list[Any]:
        if not keys:
            return []
        purged: set[str] = set()
        failed: Counter[str] = Counter()
        rule_fd = self.rule_dir(rule)
        if rule_fd is None:
            return []
        try:
            for name in self._due_stamps(rule_fd, now):
                stamp_fd = open_dir(rule_fd, [name])
                if stamp_fd is None:
                    continue
                try:
                    self._purge_stamp(stamp_fd, keys, purged, failed)
                finally:
                    os.close(stamp_fd)
                with suppress(OSError):
                    os.rmdir(name, dir_fd=rule_fd)  # only when empty
        finally:
            os.close(rule_fd)
        done = [k for k in keys if k in purged]
        if failed:
            log.warning("records failed", store=self.store_name, rule=rule.id, doing="purging",
                        failed=sum(failed.values()), disposed=len(done))
            raise RecordsFailed(done, failed)
        return done

    @staticmethod
    def _purge_stamp(stamp_fd: int, keys: Sequence[Any], purged: set[str],
                     failed: Counter[str]) -> None:
        emptied: set[tuple[str, ...]] = set()
        with Dirs(stamp_fd) as dirs:
            for key in keys:
                if not isinstance(key, str):
                    continue
                parts = key.split("/")
                if any(p in ("", ".", "..") for p in parts):
                    continue
                try:
                    fd = dirs.open(parts[:-1])
                    if fd is None:
                        continue
                    st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    os.unlink(parts[-1], dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    failed[reason(exc)] += 1
                    continue
                purged.add(key)
                emptied.add(tuple(parts[:-1]))
            for names in sorted(emptied, key=len, reverse=True):
                dirs.prune(list(names), 0)

    def isolated_present(self, rule: Rule, refs: set[str], ref_of: Callable[[Any], str]
                         ) -> list[Any]:
        """Keys of the rule's isolated copies due for purging whose reference is in ``refs``
        (replay of a purge, reconciliation of an interrupted one)."""
        if not refs:
            return []
        with ExitStack() as stack:
            return [k for k in self._isolated_keys(rule, datetime.now(UTC), stack)
                    if ref_of(k) in refs]


def _unique(keys: Iterator[str]) -> Iterator[str]:
    last = None
    for key in keys:
        if key != last:
            yield key
        last = key
