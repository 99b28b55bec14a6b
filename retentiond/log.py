"""structlog setup: JSON lines off a terminal (journald), console rendering on one.

One-shot commands log to stderr so that stdout carries only the command's output; ``serve``
logs to stdout, which systemd hands to the journal. Standard-library loggers (SQLAlchemy,
Alembic, APScheduler) go through the same processors.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO


def _import_structlog() -> Any:
    """Import structlog without letting structlog.dev pull in rich's traceback machinery
    (about a fifth of every CLI call's start-up); rich stays importable afterwards, and the
    console renderer, which is only built on a terminal, still uses it."""
    missing = object()
    saved = sys.modules.get("rich", missing)
    # None in sys.modules blocks an import (importlib); typeshed types the values as modules.
    sys.modules["rich"] = None  # type: ignore[assignment]  # None blocks the import
    try:
        import structlog as module
    finally:
        if saved is missing:
            del sys.modules["rich"]
        else:
            sys.modules["rich"] = saved  # type: ignore[assignment]  # a module, or None
    return module


structlog = _import_structlog()

# Libraries whose INFO/DEBUG records carry values (SQLAlchemy: bound parameters and result
# rows; botocore/urllib3: request URLs and bodies naming object keys); even --debug keeps them
# at WARNING.
VALUE_LOGGERS = ("sqlalchemy", "botocore", "urllib3")

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)")


# ?password=..., &PWD=..., ;sslpassword=... in a query string or a libpq/ODBC parameter list
_QUERY_PASSWORD = re.compile(
    r"(?P<head>[?&;](?:[a-z0-9_.-]*(?:password|passwd|passphrase|secret|token)|pwd|pass)=)"
    r"(?P<pw>[^&;#\s]*)",
    re.IGNORECASE)


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db?sslpassword=k`` ->
    ``postgresql://user:***@host/db?sslpassword=***``."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", str(url))
    return _QUERY_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def _redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for k, v in event.items():
        if isinstance(v, str) and "://" in v:
            event[k] = redact_url(v)
    return event


def setup(*, debug: bool = False, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    tty = hasattr(stream, "isatty") and stream.isatty()
    renderer: Any = (
        _console_renderer()
        if tty
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    level = logging.DEBUG if debug else logging.INFO
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if tty else [structlog.processors.format_exc_info]),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("alembic", "apscheduler", "faker"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    for leaky in VALUE_LOGGERS:  # their debug output holds bound values, rows and bodies
        logging.getLogger(leaky).setLevel(logging.WARNING)


def _console_renderer() -> Any:
    import structlog.dev  # imports rich; only worth it on a terminal

    return structlog.dev.ConsoleRenderer(colors=True)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
