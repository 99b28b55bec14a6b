"""A sql adapter that records every batch's time window (store, pid, start, end) in the file
named by ``RETENTIOND_TEST_WINDOWS`` and sleeps a little in each, so that two processes
sweeping one store at once would show overlapping windows. Run ``python -m
tests.integration.slowsql ARGS`` to get the retentiond CLI with it registered as ``slowsql``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retentiond.adapters.base import NextBatch, Selection
from retentiond.adapters.registry import register
from retentiond.adapters.sql import SqlAdapter

PAUSE = 0.05  # seconds inside each batch: widens the windows, decides nothing


class SlowSql(SqlAdapter):
    def delete_next(self, selection: Selection, after: Any, limit: int,
                    intent: Callable[[list[Any]], None]) -> NextBatch | None:
        start = time.time()
        time.sleep(PAUSE)
        try:
            return super().delete_next(selection, after, limit, intent)
        finally:
            record(self.store_name, start, time.time())


def record(store: str, start: float, end: float) -> None:
    path = os.environ.get("RETENTIOND_TEST_WINDOWS")
    if path:
        with open(path, "a", encoding="ascii") as f:  # one short append: one line, whole
            f.write(f"{store} {os.getpid()} {start:.6f} {end:.6f}\n")


def windows(path: Path) -> list[tuple[str, int, float, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        store, pid, start, end = line.split()
        out.append((store, int(pid), float(start), float(end)))
    return out


if __name__ == "__main__":
    register("slowsql", SlowSql)
    from retentiond.cli import main

    sys.argv[0] = "retentiond"
    main()
