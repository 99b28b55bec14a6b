"""``audit export``: the ledger as JSON (an array of entries), CSV (one row per record
reference) or HTML (a self-contained report, :mod:`retentiond.audit.report`).

Entries are streamed from the database page by page, so exporting a long ledger does not hold
it in memory.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any, TextIO

from sqlalchemy.engine import Engine

from retentiond.audit.ledger import iter_entries

FIELDS = ("seq", "at", "run_id", "kind", "rule", "store", "target", "action", "reason",
          "record_refs", "subject_ref", "hash")
CSV_FIELDS = ("seq", "at", "run_id", "kind", "rule", "store", "target", "action", "reason",
              "record_ref", "subject_ref", "hash")


def public(entry: dict[str, Any]) -> dict[str, Any]:
    doc = {k: entry[k] for k in FIELDS}
    doc["detail"] = entry["detail"]
    return doc


def write_json(engine: Engine, out: TextIO, since: str | None, until: str | None) -> int:
    n = 0
    out.write("[")
    for entry in iter_entries(engine, since=since, until=until):
        out.write(("," if n else "") + "\n  " + json.dumps(public(entry), sort_keys=False))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def csv_rows(entry: dict[str, Any]) -> Iterator[list[Any]]:
    base = [entry[k] for k in FIELDS]
    refs = entry["record_refs"] or [""]
    for ref in refs:
        row = list(base)
        row[FIELDS.index("record_refs")] = ref
        yield row


def write_csv(engine: Engine, out: TextIO, since: str | None, until: str | None) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    n = 0
    for entry in iter_entries(engine, since=since, until=until):
        writer.writerows(csv_rows(entry))
        n += 1
    return n
