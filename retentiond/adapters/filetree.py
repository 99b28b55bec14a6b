"""A directory tree reached only through directory file descriptors, never through a symlink.

Every directory below the root is opened from its parent's descriptor with ``O_NOFOLLOW |
O_DIRECTORY`` (``openat``), and files are examined, unlinked and renamed relative to their
parent's descriptor (``fstatat``, ``unlinkat``, ``renameat``). A symlink anywhere below the
root is therefore never followed: a symlinked directory is not entered, a symlink is not a
record, and a directory swapped for a symlink between a scan and a delete makes the open fail
(``ELOOP``) instead of redirecting the delete out of the root.

:meth:`Tree.walk` lists the tree depth first with each directory's entries sorted by name
(a directory's name with ``/`` appended), which yields the relative paths in ascending Python
string order while only one directory listing per level is held in memory. Only regular files
(by ``d_type``, falling back to ``lstat``) are yielded: FIFOs, sockets and device files are never
opened. Names that are not valid UTF-8 cannot be keys (a record reference hashes the key's
UTF-8 bytes); they are skipped and counted.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Errors that mean "not there (any more), or not a directory we may enter": skipped silently.
GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


def reason(exc: OSError) -> str:
    """An OS error in words that name no path: ``permission denied (PermissionError)``."""
    if exc.errno is None:
        return type(exc).__name__
    return f"{os.strerror(exc.errno).lower()} ({type(exc).__name__})"


def _utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Skipped:
    """What a walk could not look at, counted (never named)."""

    unreadable: int = 0  # directories that could not be opened or listed
    undecodable: int = 0  # names that are not valid UTF-8

    def __bool__(self) -> bool:
        return bool(self.unreadable or self.undecodable)


def listing(fd: int, skipped: Skipped) -> list[str]:
    """The names of the directories (with ``/`` appended, which no name contains) and regular
    files of the directory ``fd``, sorted (see the module). Only names are kept: memory grows
    with the largest directory, not with the tree."""
    out: list[str] = []
    try:
        with os.scandir(fd) as it:
            append = out.append
            for entry in it:
                name = entry.name
                if not name.isascii() and not _utf8(name):
                    skipped.undecodable += 1
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        append(name)
                    elif entry.is_dir(follow_symlinks=False):
                        append(name + "/")
                    # else a symlink, FIFO, socket or device: never a record
                except OSError:
                    continue
    except OSError as exc:
        if exc.errno not in GONE:
            skipped.unreadable += 1
        return []
    out.sort()
    return out


@dataclass
class Tree:
    """The tree below an open root directory. ``skip``: relative paths of directories never
    entered (isolation directories)."""

    root_fd: int
    skip: frozenset[str] = frozenset()
    skipped: Skipped = field(default_factory=Skipped)

    def __post_init__(self) -> None:
        self._below_skip = tuple(f"{s}/" for s in self.skip)

    def skipped_dir(self, rel: str) -> bool:
        """Whether ``rel`` (a relative path) is in or below a skipped directory."""
        return rel in self.skip or rel.startswith(self._below_skip)

    def walk(self, start: str = "", enter: Callable[[str], bool] = lambda rel: True
             ) -> Iterator[tuple[str, str, int]]:
        """``(relative path, name, parent fd)`` of every regular file below the directory
        ``start`` (relative, ``""`` or ending in ``/``), ascending. ``enter(rel_dir)`` says
        whether a directory may hold wanted files. The parent fd is valid until the next
        item is asked for."""
        names = [n for n in start.split("/") if n]
        if names and self.skipped_dir("/".join(names)):
            return
        opened: list[int] = []
        try:
            fd = self.root_fd
            for name in names:
                try:
                    fd = os.open(name, OPEN_DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in GONE:
                        self.skipped.unreadable += 1
                    return
                opened.append(fd)
            yield from self._below(start, fd, enter, opened)
        finally:
            for fd in opened:
                os.close(fd)

    def _below(self, start: str, top: int, enter: Callable[[str], bool],
               opened: list[int]) -> Iterator[tuple[str, str, int]]:
        stack: list[tuple[str, int, Iterator[str]]] = [
            (start, top, iter(listing(top, self.skipped)))]
        while stack:
            prefix, fd, entries = stack[-1]
            item = next(entries, None)
            if item is None:
                stack.pop()
                if fd != top:
                    os.close(opened.pop())
                continue
            key = item
            if not key.endswith("/"):
                yield prefix + key, key, fd
                continue
            rel = prefix + key  # ends with "/"
            if rel[:-1] in self.skip or not enter(rel):
                continue
            try:
                child = os.open(key[:-1], OPEN_DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in GONE:
                    self.skipped.unreadable += 1
                continue
            opened.append(child)
            stack.append((rel, child, iter(listing(child, self.skipped))))


class Dirs:
    """The directories of one batch's records, opened from a base directory without
    following symlinks and kept open while consecutive records share them."""

    def __init__(self, base_fd: int, *, create: bool = False) -> None:
        self.base_fd = base_fd
        self.create = create
        self.names: list[str] = []  # the open chain: names[i] is opened as fds[i]
        self.fds: list[int] = []

    def __enter__(self) -> Dirs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._cut(0)

    def _cut(self, keep: int) -> None:
        while len(self.fds) > keep:
            self.names.pop()
            os.close(self.fds.pop())

    def open(self, names: list[str]) -> int | None:
        """The directory ``base/names[0]/names[1]/...``, or None when a component is missing
        (and not ``create``), a symlink or not a directory. Raises OSError for anything else
        (a directory that may not be entered)."""
        if names == self.names:
            return self.fds[-1] if self.fds else self.base_fd  # the previous record's
        same = 0
        while (same < len(self.names) and same < len(names)
               and self.names[same] == names[same]):
            same += 1
        self._cut(same)
        fd = self.fds[-1] if self.fds else self.base_fd
        for name in names[same:]:
            try:
                fd = self._child(fd, name)
            except OSError as exc:
                if exc.errno in GONE:
                    return None
                raise
            self.names.append(name)
            self.fds.append(fd)
        return fd

    def _child(self, fd: int, name: str) -> int:
        try:
            return os.open(name, OPEN_DIR, dir_fd=fd)
        except FileNotFoundError:
            if not self.create:
                raise
        with suppress(FileExistsError):  # made meanwhile; opened (or refused) below
            os.mkdir(name, 0o700, dir_fd=fd)
        return os.open(name, OPEN_DIR, dir_fd=fd)

    def prune(self, names: list[str], keep: int) -> int:
        """Remove the directory ``names`` and its parents while they are empty, never the
        first ``keep`` components (nor the base). Returns how many were removed."""
        removed = 0
        for depth in range(len(names), keep, -1):
            parent = self.open(names[:depth - 1])
            if parent is None:
                break
            try:
                os.rmdir(names[depth - 1], dir_fd=parent)
            except OSError:
                break  # not empty (or not ours to remove): its parents are not empty either
            removed += 1
        return removed
