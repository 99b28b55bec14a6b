"""``audit export``: the ledger as JSON (an array of entries), CSV (one row per record
reference) or HTML (a self-contained report, :mod:`retentiond.audit.report`).

Entries are streamed from the database page by page, so exporting a long ledger does not hold
it in memory. An export is a snapshot: it stops at the ledger head it saw when it started, so a
sweep appending at the same time does not leave half a run in the file.

``since``/``until`` bound the entry time (``since <= at < until``). Ledger times are stored as
ISO 8601 UTC text with microseconds, so the bounds are normalised to exactly that form before
they are compared as text.

The CSV names records, so it has one row per record reference and nothing else: entries that
name no record (a policy change, a hold, a request) are in the JSON export and the report.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy.engine import Engine

from retentiond.audit.ledger import head, iter_entries

FIELDS = ("seq", "at", "run_id", "kind", "rule", "store", "target", "action", "reason",
          "record_refs", "subject_ref", "hash")
CSV_FIELDS = ("seq", "at", "run_id", "kind", "rule", "store", "target", "action", "reason",
              "record_ref", "subject_ref", "hash")


def bound(value: str | None) -> str | None:
    """An ISO 8601 instant as the ledger writes times (UTC, microseconds), for text comparison.
    A value without an offset is taken as UTC."""
    if not value:
        return None
    at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def entries(engine: Engine, since: str | None, until: str | None) -> Iterator[dict[str, Any]]:
    """Ledger entries in sequence order within ``[since, until)``, up to the current head."""
    with engine.connect() as conn:
        top, _ = head(conn)
    for entry in iter_entries(engine, since=bound(since), until=bound(until)):
        if entry["seq"] > top:
            return
        yield entry


def public(entry: dict[str, Any]) -> dict[str, Any]:
    doc = {k: entry[k] for k in FIELDS}
    doc["detail"] = entry["detail"]
    return doc


def write_json(engine: Engine, out: TextIO, since: str | None, until: str | None) -> int:
    n = 0
    out.write("[")
    for entry in entries(engine, since, until):
        out.write(("," if n else "") + "\n  " + json.dumps(public(entry)))
        n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def csv_rows(entry: dict[str, Any]) -> Iterator[list[Any]]:
    base = [entry[k] for k in FIELDS]
    at = FIELDS.index("record_refs")
    for ref in entry["record_refs"]:
        row = list(base)
        row[at] = ref
        yield row


def write_csv(engine: Engine, out: TextIO, since: str | None, until: str | None) -> int:
    """Returns the number of rows (record references) written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    n = 0
    for entry in entries(engine, since, until):
        writer.writerows(csv_rows(entry))
        n += len(entry["record_refs"])
    return n
