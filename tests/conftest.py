"""Shared fixtures: real databases, a policy writer, and the CLI in a subprocess.

SQLite is always available. PostgreSQL (127.0.0.1:5432, trust auth) and MariaDB (127.0.0.1:3306,
root, empty password) are used when they answer; locally a missing server skips its tests, in
CI (CI=true) it fails them. Every test database is created fresh and dropped afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

PG_ADMIN = os.environ.get("RETENTIOND_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MY_ADMIN = os.environ.get("RETENTIOND_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
BACKENDS = ("sqlite", "postgresql", "mariadb")


def _unavailable(what: str, exc: Exception) -> None:
    first = str(exc).splitlines()[0] if str(exc) else ""
    msg = f"{what} is unreachable: {type(exc).__name__}: {first}"
    if IN_CI:
        pytest.fail(f"CI requires {msg}", pytrace=False)
    pytest.skip(msg)


@dataclass
class Database:
    backend: str
    url: str

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.url)


def _new_pg() -> Iterator[Database]:
    name = f"rtd_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'create database "{name}"'))
    except Exception as exc:
        _unavailable("PostgreSQL", exc)
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield Database("postgresql", url)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


def _new_my() -> Iterator[Database]:
    name = f"rtd_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(MY_ADMIN)
        with admin.begin() as c:
            c.execute(sa.text(f"create database `{name}`"))
    except Exception as exc:
        _unavailable("MariaDB", exc)
    url = MY_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield Database("mariadb", url)
    finally:
        with admin.begin() as c:
            c.execute(sa.text(f"drop database if exists `{name}`"))
        admin.dispose()


def _new_sqlite(tmp_path: Path) -> Iterator[Database]:
    yield Database("sqlite", f"sqlite:///{tmp_path / 'store.db'}")


@pytest.fixture(params=BACKENDS)
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty store database on each backend."""
    yield from _make(request.param, tmp_path)


@pytest.fixture(params=("sqlite", "postgresql"))
def store_db_sp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh store database on SQLite and PostgreSQL."""
    yield from _make(request.param, tmp_path)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    yield from _new_sqlite(tmp_path)


@pytest.fixture
def pg_db() -> Iterator[Database]:
    yield from _new_pg()


@pytest.fixture
def mariadb_db() -> Iterator[Database]:
    yield from _new_my()


def _make(backend: str, tmp_path: Path) -> Iterator[Database]:
    makers = {"sqlite": lambda: _new_sqlite(tmp_path), "postgresql": _new_pg,
              "mariadb": _new_my}
    yield from makers[backend]()


# -- policy files and the CLI ----------------------------------------------------------------
@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret.key"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Workspace:
    """A directory with a policy file and a state database, and the CLI to run against it."""

    root: Path
    secret: Path

    @property
    def config(self) -> Path:
        return self.root / "retentiond.yaml"

    @property
    def state_url(self) -> str:
        return f"sqlite:///{self.root / 'state.db'}"

    def policy(self, stores: dict[str, Any], rules: list[dict[str, Any]], **top: Any) -> Path:
        doc = {"version": 1, "state": self.state_url, "secret_key": {"file": str(self.secret)},
               **top, "stores": stores, "rules": rules}
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        return self.config

    def invoke(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """The CLI in this process (a fresh App per call): stdout, stderr and the exit code
        as the shell would see them. Use :meth:`cli` where signals, ``serve`` or a real
        process boundary matter."""
        return invoke_cli(["--config", str(self.config), *args], env)

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        full_env = {**os.environ, **(env or {})}
        full_env.pop("RETENTIOND_CONFIG", None)
        proc = subprocess.run(
            [sys.executable, "-m", "retentiond", "--config", str(self.config), *args],
            capture_output=True, text=True, env=full_env, timeout=timeout, check=False)
        return Result(proc.returncode, proc.stdout, proc.stderr)


# What one in-process call may change and the next must not inherit: the environment variables
# retentiond reads, the logging that log.setup() installs, adapters registered at run time.
_ENV_PREFIXES = ("RETENTIOND_", "CREDENTIALS_DIRECTORY")


def _universal_newlines(text: str) -> str:
    """What ``subprocess.run(text=True)`` hands back: \\r\\n and \\r read as \\n."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def invoke_cli(argv: list[str], env: dict[str, str] | None = None) -> Result:
    """``retentiond.cli.main(argv)`` in this process, as a subprocess would run it: a fresh App,
    stdout and stderr captured as text with universal newlines, the exit status the shell would
    see, ``$RETENTIOND_CONFIG`` unset and ``env`` added. Everything the call changes in the
    process (environment, root logger, structlog, library loggers' levels, registered adapters)
    is put back afterwards, so calls do not leak into each other or into pytest."""
    import contextlib
    import io
    import logging

    import structlog

    from retentiond import log as logsetup
    from retentiond.adapters import registry
    from retentiond.cli import main

    saved_env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    named = ("alembic", "apscheduler", "faker", *logsetup.VALUE_LOGGERS)
    saved_levels = {n: logging.getLogger(n).level for n in named}
    saved_structlog = structlog.get_config()
    saved_adapters = dict(registry._registered)

    os.environ.pop("RETENTIOND_CONFIG", None)
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:  # the interpreter prints a non-integer status and exits 1
                    print(exc.code, file=sys.stderr)
                    code = 1
    finally:
        for k in [k for k in os.environ if k.startswith(_ENV_PREFIXES)]:
            del os.environ[k]
        for k in (env or {}):
            os.environ.pop(k, None)
        os.environ.update(saved_env)
        root.handlers[:], level = saved_root
        root.setLevel(level)
        for n, lvl in saved_levels.items():
            logging.getLogger(n).setLevel(lvl)
        structlog.configure(**saved_structlog)
        registry._registered.clear()
        registry._registered.update(saved_adapters)
    return Result(code, _universal_newlines(out.getvalue()), _universal_newlines(err.getvalue()))


@pytest.fixture
def ws(tmp_path: Path, secret_file: Path) -> Workspace:
    return Workspace(tmp_path, secret_file)
