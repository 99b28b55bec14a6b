"""``audit verify``, ``audit export`` and ``audit checkpoint``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from retentiond import output
from retentiond.app import App
from retentiond.audit import checkpoint, export
from retentiond.audit.verify import verify as verify_chain
from retentiond.errors import AuditError, UsageError
from retentiond.timeutil import parse_instant


def verify(app: App, checkpoint_file: str | None) -> int:
    external = _read_checkpoint(checkpoint_file) if checkpoint_file else None
    public_key = None
    if app.policy.signing_key is not None:
        key = checkpoint.load_signing_key(app.policy.signing_key.get_secret_value())
        public_key = checkpoint.public_hex(key)
    result = verify_chain(app.state, public_key=public_key, external=external)
    if app.json:
        output.emit_json({"ok": True, "entries": result.entries, "head": result.head_hash,
                          "checkpoints": result.checkpoints, "signed": result.signed})
    else:
        output.line(f"audit trail verified: {result.entries} entries, head {result.head_hash}, "
                    f"{result.checkpoints} checkpoints ({result.signed} signed)")
    return 0


def _read_checkpoint(path: str) -> dict[str, object]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--checkpoint {path}: not a readable checkpoint JSON file ({exc})"
                         ) from None
    if isinstance(doc, dict) and "checkpoint" in doc:
        doc = doc["checkpoint"]
    if not isinstance(doc, dict) or "seq" not in doc or "hash" not in doc:
        raise AuditError(f"--checkpoint {path}: has no seq and hash")
    return doc


def export_cmd(app: App, fmt: str, since: str | None, until: str | None,
               out_path: str | None) -> int:
    tz = app.policy.tz
    try:
        lo = parse_instant(since, tz).isoformat(timespec="microseconds") if since else None
        hi = parse_instant(until, tz).isoformat(timespec="microseconds") if until else None
    except ValueError as exc:
        raise UsageError(f"--since/--until: {exc}; use ISO 8601 like 2026-01-31T00:00Z") from None
    with _open(out_path) as out:
        if fmt == "json":
            export.write_json(app.state, out, lo, hi)
        elif fmt == "csv":
            export.write_csv(app.state, out, lo, hi)
        else:
            from retentiond.audit import report

            report.write_html(app, out, lo, hi)
    if out_path:
        print(f"wrote {fmt} audit export to {out_path}", file=sys.stderr)
    return 0


@contextmanager
def _open(path: str | None) -> Iterator[TextIO]:
    if not path:
        yield sys.stdout
        return
    tmp = Path(path).with_name(Path(path).name + ".part")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            yield fh
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def checkpoint_cmd(app: App, out_path: str | None) -> int:
    cp = checkpoint.latest(app.state)
    if cp is None:
        raise AuditError("no checkpoint yet: run a sweep first")
    text = json.dumps(cp, indent=2) + "\n"
    if out_path:
        Path(out_path).write_text(text)
        print(f"wrote checkpoint at entry {cp['seq']} to {out_path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
