"""The adapter contract suite (retentiond.testing) for the files adapter, on a temporary tree.

Twice: with the clock as each file's mtime (``records/*/{subject}/data.bin``), and with the
clock in the file name (``records/*/{subject}/{clock:%Y%m%dT%H%M%S}.bin``). A file's path always
names its subject and a file always has a clock (an mtime, or a name), so the harnesses say
so (``null_subjects``, ``null_clocks``: see retentiond/testing.py).

A failing record (``poison``) is a file the kernel will not unlink: as root, a file with
another file bind-mounted over it (EBUSY); otherwise a file whose directory is read-only
(EACCES). The error text the OS would report names the path, which must not leak.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from retentiond.adapters import registry
from retentiond.adapters.base import Adapter
from retentiond.testing import AdapterContract, Harness, Record, make_policy

STAMP = "%Y%m%dT%H%M%S"


def mtime_ns(clock: datetime) -> int:
    """A naive wall-clock time in the contract's zone (UTC) as an mtime."""
    return int(clock.replace(tzinfo=UTC).timestamp()) * 1_000_000_000


def tree_snapshot(top: Path) -> list[tuple[Any, ...]]:
    """Every entry below ``top``: path, type, mode, and for files size, mtime and digest."""
    out: list[tuple[Any, ...]] = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(top))
            if stat.S_ISREG(st.st_mode):
                out.append((rel, "file", st.st_mode, st.st_size, st.st_mtime_ns,
                            hashlib.sha256(path.read_bytes()).hexdigest()))
            else:
                out.append((rel, stat.S_IFMT(st.st_mode), st.st_mode))
    return sorted(out)


class FilesHarness(Harness):
    null_subjects: ClassVar[bool] = False
    null_clocks: ClassVar[bool] = False
    PATH = "records/*/{subject}/data.bin"

    def __init__(self, tmp_path: Path) -> None:
        self.top = tmp_path
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.mounts: list[Path] = []
        self.locked: list[Path] = []
        policy, rule = make_policy("files", {"root": str(self.root)}, {"path": self.PATH})
        adapter = registry.get("files")("contract", policy.stores["contract"], policy)
        adapter.connect()
        super().__init__(adapter, rule)

    def subject_for(self, n: int) -> str:
        return f"u{100 + n}"

    def key_for(self, i: int) -> str:
        return f"records/{i:03d}/nobody/data.bin"

    def record_key(self, i: int, subject: Any, clock: datetime | None) -> str:
        return f"records/{i:03d}/{subject}/data.bin"

    def seed(self, records: Sequence[Record]) -> None:
        for r in records:
            path = self.root / r.key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"the file of {r.subject}, Maria Schmidt's invoice {r.key}\n")
            assert r.clock is not None
            os.utime(path, ns=(mtime_ns(r.clock), mtime_ns(r.clock)))

    def keys(self) -> list[Any]:
        return [str(p.relative_to(self.root)) for p in self.root.rglob("*")
                if p.is_file() and not p.is_symlink()
                and ".retentiond-isolated" not in p.parts]

    def set_clock(self, key: Any, clock: datetime | None) -> None:
        assert clock is not None
        os.utime(self.root / key, ns=(mtime_ns(clock), mtime_ns(clock)))

    def snapshot(self) -> object:
        return tree_snapshot(self.top)

    def poison(self, key: Any) -> str:
        path = self.root / key
        if os.geteuid() == 0:
            decoy = self.top / "decoy"
            decoy.write_text("decoy")
            was = path.stat()  # the mounted file still looks due
            os.utime(decoy, ns=(was.st_atime_ns, was.st_mtime_ns))
            done = subprocess.run(["mount", "--bind", str(decoy), str(path)],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise NotImplementedError(f"cannot bind-mount: {done.stderr.strip()}")
            self.mounts.append(path)
        else:
            path.parent.chmod(0o500)
            self.locked.append(path.parent)
        return str(key)

    def unreachable(self) -> tuple[Adapter, str | None]:
        gone = self.top / "no-such-root"
        policy, _ = make_policy("files", {"root": str(gone)}, {"path": self.PATH},
                                store_name="gone")
        return registry.get("files")("gone", policy.stores["gone"], policy), None

    def close(self) -> None:
        for path in self.mounts:
            subprocess.run(["umount", str(path)], check=True)
        for path in self.locked:
            path.chmod(0o755)
        super().close()


class NamedClockHarness(FilesHarness):
    """The clock is the time in the file name; the mtime means nothing to the rule. A clock
    that moves is the application rewriting the file (its name cannot change, or it would be
    another record): the re-check before disposal sees its new mtime and leaves it."""

    PATH = "records/*/{subject}/{clock:%Y%m%dT%H%M%S}.bin"

    def record_key(self, i: int, subject: Any, clock: datetime | None) -> str:
        assert clock is not None
        return f"records/{i:03d}/{subject}/{clock:{STAMP}}.bin"

    def key_for(self, i: int) -> str:
        return f"records/{i:03d}/nobody/20200101T000000.bin"

    def seed(self, records: Sequence[Record]) -> None:
        for r in records:
            path = self.root / r.key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"log of {r.subject}\n")
            os.utime(path, ns=(0, 0))  # 1970: an mtime clock would make every file due

    def set_clock(self, key: Any, clock: datetime | None) -> None:
        path = self.root / key
        path.write_text(f"rewritten at {clock}\n")
        os.utime(path)  # now


class TestFilesAdapterContract(AdapterContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[FilesHarness]:
        h = FilesHarness(tmp_path)
        yield h
        h.close()


class TestFilesAdapterNamedClockContract(AdapterContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[FilesHarness]:
        h = NamedClockHarness(tmp_path)
        yield h
        h.close()

