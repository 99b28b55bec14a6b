"""Database URLs in the policy file (``state:`` and a sql store's ``url:``), checked when the
policy loads: they parse as SQLAlchemy URLs, name a dialect and driver that are installed, have
a numeric port, and a SQLite file is not put on a kernel file system. So a typo is a policy
error with its path (exit 2) before anything is created or connected to.

Messages never echo a URL: it may carry a password.
"""

from __future__ import annotations

import os
from typing import Any

from retentiond.state.db import normalize_url

_KERNEL_FS = ("/proc", "/sys", "/dev")
_DRIVERS = "sqlite, postgresql+psycopg or mysql+pymysql"


def url_problem(url: str) -> str | None:
    """What is wrong with a database URL, in words, or None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(normalize_url(url))
    except ArgumentError:
        return ("not a database URL; use a SQLAlchemy URL such as "
                "sqlite:////var/lib/retentiond/state.db or postgresql+psycopg://user@host/db")
    except ValueError:  # make_url's int() of the port
        return "the port in the URL is not a number"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return f"port {parsed.port} is out of range; use 1-65535"
    return _driver_problem(parsed) or _sqlite_problem(parsed)


def _driver_problem(parsed: Any) -> str | None:
    from sqlalchemy.exc import NoSuchModuleError

    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return f"unknown database driver {parsed.drivername!r}; use {_DRIVERS}"
    try:
        dialect.import_dbapi()
    except ImportError:
        return (f"the driver of {parsed.drivername!r} is not installed; install it or use "
                f"{_DRIVERS}")
    return None


def _sqlite_problem(parsed: Any) -> str | None:
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:") or (
            database.startswith("file:")):
        return None
    real = os.path.realpath(database)
    for root in _KERNEL_FS:
        if real == root or real.startswith(root + "/"):
            return (f"SQLite database {database} is on the kernel file system {root}; put it "
                    "in a directory such as /var/lib/retentiond")
    if database.endswith("/") or os.path.isdir(real):
        return f"SQLite database {database} is a directory; name a file in it"
    return None


def check_url(url: str) -> str:
    """A pydantic validator: the URL, or ValueError saying what is wrong with it."""
    problem = url_problem(url)
    if problem:
        raise ValueError(problem)
    return url
