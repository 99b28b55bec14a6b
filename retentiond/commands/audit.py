"""``audit verify``, ``audit export``, ``audit checkpoint`` and ``audit public-key``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from retentiond import output
from retentiond.app import App
from retentiond.audit import checkpoint, export
from retentiond.audit.verify import Verified
from retentiond.audit.verify import verify as verify_chain
from retentiond.errors import AuditError, UsageError
from retentiond.policy.keys import read_regular_file
from retentiond.timeutil import parse_instant


def verify(app: App, checkpoint_file: str | None, public_key_files: Sequence[str] = ()) -> int:
    external = _read_checkpoints(checkpoint_file) if checkpoint_file else []
    trusted, source = _trusted_keys(app, public_key_files)
    result = verify_chain(app.state, trusted=trusted, external=external)
    notes = _notes(result, source, checkpoint_file)
    if app.json:
        output.emit_json({"ok": True, "entries": result.entries, "head": result.head_hash,
                          "checkpoints": result.checkpoints, "signed": result.signed,
                          "signatures_checked": result.signatures_checked,
                          "trusted_key": source, "external_checkpoints": result.external,
                          "external_seq": result.external_seq, "notes": notes})
    else:
        output.line(f"audit trail verified: {result.entries} entries, head {result.head_hash}, "
                    f"{result.checkpoints} checkpoints ({result.signed} signed)")
        sys.stdout.write("".join(f"{note}\n" for note in notes))  # plain: paths, no markup
    return 0


def _trusted_keys(app: App, files: Sequence[str]) -> tuple[list[str], str | None]:
    """The public keys (hex) signatures are checked against, and where they came from: the
    --public-key files, else the policy's signing_key. Never a key from the state database."""
    if files:
        return [checkpoint.public_hex(checkpoint.load_public_key(
            _read_bytes(path, "--public-key"), f"--public-key {path}")) for path in files], \
            "public-key-file"
    key = app.policy.signing_private_key
    return ([checkpoint.public_hex(key)], "signing-key") if key is not None else ([], None)


def _notes(result: Verified, source: str | None, checkpoint_file: str | None) -> list[str]:
    where = {"public-key-file": "the --public-key file", "signing-key": "the policy's signing_key"}
    notes = [f"signatures checked against the trusted public key from {where[source]}"
             if source else "signatures NOT checked against a trusted key: give "
             "--public-key FILE (from `audit public-key`) or set signing_key"]
    if not checkpoint_file:
        notes.append("no external checkpoint: a rewritten tail whose checkpoints were deleted "
                     "cannot be detected, nor entries appended after the latest checkpoint "
                     "(give --checkpoint FILE)")
        return notes
    later = result.entries - (result.external_seq or 0)
    newer = f"; {later} later entries are not covered by it" if later > 0 else ""
    notes.append(f"checked against {result.external} external checkpoint(s) in "
                 f"{checkpoint_file}, the latest at entry {result.external_seq}{newer}")
    return notes


READ_LIMITS = {"--public-key": 64 * 1024, "--checkpoint": 64 * 1024 * 1024}


def _read_bytes(path: str, option: str) -> bytes:
    """A regular file of bounded size (a FIFO or /dev/zero is refused, not read)."""
    try:
        return read_regular_file(Path(path), READ_LIMITS[option])
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise UsageError(f"{option} {path}: {exc}") from None


def _read_checkpoints(path: str) -> list[dict[str, Any]]:
    """One exported checkpoint (``audit checkpoint -o``) or a ``checkpoints.file`` of JSON
    lines, one checkpoint each."""
    text = _read_bytes(path, "--checkpoint").decode("utf-8", "replace")
    try:
        docs = [json.loads(text)]
    except ValueError:
        docs = [_json_line(path, n, line) for n, line in enumerate(text.splitlines(), 1)
                if line.strip()]
    if not docs:
        raise AuditError(f"--checkpoint {path}: has no checkpoint in it")
    return [_as_checkpoint(path, doc) for doc in docs]


def _json_line(path: str, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise UsageError(f"--checkpoint {path}: line {number} is not JSON ({exc}); expected a "
                         "checkpoint from `audit checkpoint -o` or a checkpoints.file") from None


def _as_checkpoint(path: str, doc: Any) -> dict[str, Any]:
    if isinstance(doc, dict) and "checkpoint" in doc:
        doc = doc["checkpoint"]
    if not isinstance(doc, dict) or "seq" not in doc or "hash" not in doc:
        raise AuditError(f"--checkpoint {path}: has no seq and hash")
    return doc


def public_key_cmd(app: App) -> int:
    key = app.policy.signing_private_key
    if key is None:
        raise UsageError(f"{app.config_path}: no signing_key is set, so checkpoints are not "
                         "signed and there is no public key; set signing_key (an Ed25519 "
                         "private key, PEM) first")
    pem = checkpoint.public_pem(key)
    if app.json:
        output.emit_json({"public_key": checkpoint.public_hex(key), "pem": pem})
    else:
        sys.stdout.write(pem)
    return 0


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
