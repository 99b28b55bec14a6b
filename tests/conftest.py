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
    msg = f"{what} is unreachable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
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
    except Exception as exc:  # noqa: BLE001
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
    except Exception as exc:  # noqa: BLE001
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


def invoke_cli(argv: list[str], env: dict[str, str] | None = None) -> Result:
    """Run ``retentiond.cli.main(argv)`` in-process, capturing stdout/stderr and exit code."""
    import contextlib
    import io

    from retentiond.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def ws(tmp_path: Path, secret_file: Path) -> Workspace:
    return Workspace(tmp_path, secret_file)
