"""Errors of the state database, told in one line that cannot echo a value.

A driver's error text and SQLAlchemy's rendering of it carry the statement and its bound
parameters (raw subject ids, reasons, keys). :func:`watch` marks every error raised by the
state engine with the engine's redacted URL; :func:`state_error` turns a marked error (or one
chained to it) into :class:`~retentiond.errors.StateUnreachable` (exit 3) whose message names
only the URL, the error class and a values-free reason derived from the driver's error code.
Errors of the stores are never marked: their adapters map them to ``StoreError`` themselves.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from retentiond.errors import StateUnreachable
from retentiond.log import redact_url

MARK = "retentiond_state_url"

# Driver error codes (SQLite's names, PostgreSQL's SQLSTATE, MySQL's numbers) in words.
REASONS = {
    "SQLITE_BUSY": "it is locked by another process", "55P03": "it is locked",
    "SQLITE_LOCKED": "it is locked by another process", "1205": "it is locked",
    "SQLITE_READONLY": "it is read-only", "25006": "it is read-only",
    "SQLITE_FULL": "its disk is full", "53100": "its disk is full",
    "SQLITE_IOERR": "a disk I/O error occurred",
    "SQLITE_CORRUPT": "it is corrupt", "SQLITE_NOTADB": "it is not a SQLite database",
    "SQLITE_CANTOPEN": "it cannot be opened", "3D000": "it does not exist",
    "1049": "it does not exist",
    "42P01": "a table is missing", "1146": "a table is missing",
    "42703": "a column is missing", "1054": "a column is missing",
    "SQLITE_CONSTRAINT": "it refused a write (constraint or trigger)",
    "57P01": "its connection was terminated by the server",
    "57P02": "its server crashed", "57P03": "its server is not accepting connections",
    "08000": "connection lost", "08003": "connection lost", "08006": "connection lost",
}
# SQLite reports a missing table or column as a plain SQLITE_ERROR; its text says which.
SQLITE_MISSING = (("no such table", "a table is missing"),
                  ("no such column", "a column is missing"))


def watch(engine: Engine, url: str) -> None:
    """Mark every error the state engine raises (connecting included) as the state's."""
    event.listen(engine, "handle_error", lambda ctx: _mark(ctx, redact_url(url)))


def _mark(ctx: Any, url: str) -> None:
    setattr(ctx.sqlalchemy_exception, MARK, url)


def state_error(exc: BaseException) -> StateUnreachable | None:
    """The one-line error for a state-database failure in ``exc`` or its chain, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        url = getattr(current, MARK, None)
        if url is not None and isinstance(current, DBAPIError):
            return StateUnreachable(
                f"state database {url} failed ({type(current).__name__}: "
                f"{reason(current)}); check `state:` in the policy, that the database is "
                "reachable and writable, and run `retentiond db upgrade`")
        current = current.__cause__ or current.__context__
    return None


def is_state_error(exc: BaseException) -> bool:
    return isinstance(exc, StateUnreachable) or state_error(exc) is not None


def reason(exc: DBAPIError) -> str:
    """What went wrong, in words chosen here, never the driver's text."""
    orig = exc.orig
    code = (getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None)
            or getattr(orig, "pgcode", None)
            or (orig.args[0] if orig is not None and orig.args
                and isinstance(orig.args[0], int) else None))
    if code == "SQLITE_ERROR":
        text = str(orig)
        return next((words for prefix, words in SQLITE_MISSING if text.startswith(prefix)),
                    "SQLITE_ERROR")
    if code is None:
        return "connection lost" if exc.connection_invalidated else "no error code"
    base = "_".join(str(code).split("_")[:2])  # SQLITE_IOERR_WRITE -> SQLITE_IOERR
    return REASONS.get(str(code)) or REASONS.get(base) or f"error code {code}"
