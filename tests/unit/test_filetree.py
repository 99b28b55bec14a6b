"""The fd-based tree walk of the files adapter (retentiond/adapters/filetree.py): keys in
Python string order on any tree, only regular files, no symlink followed, skipped directories
never entered, pruning bounded by the pattern."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retentiond.adapters.filetree import OPEN_DIR, Dirs, Tree, reason
from retentiond.adapters.pathglob import PathPattern


@pytest.fixture
def root(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    top = tmp_path / "root"
    top.mkdir()
    fd = os.open(top, OPEN_DIR)
    yield top, fd
    os.close(fd)


def keys(tree: Tree, start: str = "", pattern: PathPattern | None = None) -> list[str]:
    enter = pattern.could_contain if pattern is not None else (lambda rel: True)
    return [k for k, _, _ in tree.walk(start, enter)]


# Names chosen so that '/' sorts between them: ' ' '!' '-' '.' < '/' < '0' 'a' '~'.
NAME = st.sampled_from(["a", "a b", "a-b", "a.b", "a!", "a0", "ab", "a~", "b", "é", "z"])


@settings(max_examples=60, deadline=None)
@given(st.sets(st.lists(NAME, min_size=1, max_size=4).map(tuple), min_size=1, max_size=25))
def test_walk_yields_every_file_in_python_string_order(paths: set[tuple[str, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        made: set[str] = set()
        for parts in sorted(paths, key=len):
            # a name is a file or a directory, never both: skip paths through a file
            if any("/".join(parts[:i]) in made for i in range(1, len(parts))):
                continue
            target = Path(tmp, *parts)
            if target.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("x")
            made.add("/".join(parts))
        fd = os.open(tmp, OPEN_DIR)
        try:
            assert keys(Tree(fd)) == sorted(made)
        finally:
            os.close(fd)


def test_only_regular_files_and_no_symlink_is_followed(root: tuple[Path, int],
                                                       tmp_path: Path) -> None:
    top, fd = root
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret.pdf").write_text("x")
    (top / "a").mkdir()
    (top / "a" / "file.pdf").write_text("x")
    (top / "a" / "link.pdf").symlink_to(outside / "deep" / "secret.pdf")
    (top / "a" / "dirlink").symlink_to(outside)
    os.mkfifo(top / "a" / "fifo.pdf")
    (top / "a" / "dangling").symlink_to(tmp_path / "nowhere")
    tree = Tree(fd)
    assert keys(tree) == ["a/file.pdf"]
    assert not tree.skipped


def test_a_start_or_directory_that_is_a_symlink_yields_nothing(root: tuple[Path, int],
                                                               tmp_path: Path) -> None:
    top, fd = root
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.pdf").write_text("x")
    (top / "users").symlink_to(tmp_path / "outside")
    assert keys(Tree(fd), "users/") == []
    assert keys(Tree(fd), "missing/deeper/") == []


def test_skipped_directories_are_never_entered(root: tuple[Path, int]) -> None:
    top, fd = root
    for rel in (".retentiond-isolated/r/x.pdf", "q/iso/y.pdf", "q/z.pdf", "w.pdf"):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text("x")
    tree = Tree(fd, frozenset({".retentiond-isolated", "q/iso"}))
    assert keys(tree) == ["q/z.pdf", "w.pdf"]
    assert keys(tree, ".retentiond-isolated/r/") == []
    assert tree.skipped_dir("q/iso/y.pdf") and not tree.skipped_dir("q/z.pdf")


def test_the_pattern_prunes_directories(root: tuple[Path, int]) -> None:
    top, fd = root
    for rel in ("users/1/invoices/a.pdf", "users/1/photos/b.pdf", "other/c.pdf"):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text("x")
    (top / "users/1/photos").chmod(0o000)  # never opened, so never counted unreadable
    pattern = PathPattern("users/{subject}/invoices/*.pdf")
    tree = Tree(fd)
    assert keys(tree, pattern.literal_prefix, pattern) == ["users/1/invoices/a.pdf"]
    assert not tree.skipped
    (top / "users/1/photos").chmod(0o755)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_directories_are_counted(root: tuple[Path, int]) -> None:
    top, fd = root
    (top / "locked").mkdir()
    (top / "locked" / "x").write_text("x")
    (top / "locked").chmod(0o000)
    tree = Tree(fd)
    try:
        assert keys(tree) == []
        assert tree.skipped.unreadable == 1
    finally:
        (top / "locked").chmod(0o755)


def test_names_that_are_not_utf8_are_skipped_and_counted(root: tuple[Path, int]) -> None:
    top, fd = root
    with open(os.fsencode(top) + b"/caf\xe9.pdf", "wb") as f:
        f.write(b"x")
    (top / "café.pdf").write_text("x")
    tree = Tree(fd)
    assert keys(tree) == ["café.pdf"]
    assert tree.skipped.undecodable == 1


def test_dirs_opens_creates_and_prunes_without_following_symlinks(root: tuple[Path, int],
                                                                  tmp_path: Path) -> None:
    top, fd = root
    (tmp_path / "outside").mkdir()
    (top / "a" / "b").mkdir(parents=True)
    (top / "link").symlink_to(tmp_path / "outside")
    with Dirs(fd) as dirs:
        assert dirs.open(["a", "b"]) is not None
        assert dirs.open(["link"]) is None
        assert dirs.open(["a", "missing"]) is None
    with Dirs(fd, create=True) as dirs:
        assert dirs.open(["link", "x"]) is None  # not created through the symlink
        assert dirs.open(["n", "m"]) is not None
        assert (top / "n" / "m").stat().st_mode & 0o777 == 0o700
        assert dirs.prune(["n", "m"], 1) == 1  # n/m removed, n kept
    assert (top / "n").is_dir() and not (top / "n" / "m").exists()
    assert os.listdir(tmp_path / "outside") == []


def test_reason_names_no_path() -> None:
    exc = PermissionError(13, "Permission denied", "/srv/uploads/Maria Schmidt/cv.pdf")
    assert reason(exc) == "permission denied (PermissionError)"
    assert reason(OSError(16, "busy", "/x")) == "device or resource busy (OSError)"
