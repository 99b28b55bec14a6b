"""Printing results: exactly one JSON document with ``--json``, rich tables otherwise."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


def console() -> Console:
    from rich.console import Console  # imported on use: --json output never needs it

    tty = sys.stdout.isatty()
    return Console(file=sys.stdout, highlight=False, width=None if tty else 160)


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
          *, numeric_from: int | None = None, footer: Sequence[Any] | None = None) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_footer=footer is not None)
    for i, name in enumerate(columns):
        right = numeric_from is not None and i >= numeric_from
        t.add_column(name, justify="right" if right else "left",
                     footer=str(footer[i]) if footer is not None else "")
    for row in rows:
        t.add_row(*(str(v) for v in row))
    console().print(t)


def line(text: str) -> None:
    console().print(text)
