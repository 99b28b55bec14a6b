"""Shared fixtures: real databases, a policy writer, and the CLI in-process or in a subprocess.

SQLite is always available. PostgreSQL (127.0.0.1:5432, trust auth) and MariaDB (127.0.0.1:3306,
root, empty password) are used when they answer; locally a missing server skips its tests, in
CI (CI=true) it fails them. Every test gets an empty store of its own, dropped afterwards: a
SQLite file, a MariaDB database, and on PostgreSQL a schema of its own in one database per
xdist worker (``store_db``, ``store_db_sp``, ``pg_schema``: the URL's search_path names it), since
creating and force-dropping a PostgreSQL database costs about half a second. ``pg_db`` is still
a whole database, for tests that terminate its sessions or tell databases apart by name.
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


@dataclass
class _SharedPg:
    """This worker's PostgreSQL database (or why it could not be created)."""

    url: str = ""
    engine: sa.Engine | None = None
    error: Exception | None = None


@pytest.fixture(scope="session")
def _pg_worker_db(worker_id: str) -> Iterator[_SharedPg]:
    name = f"rtd_{worker_id}_{uuid.uuid4().hex[:8]}"
    try:
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'create database "{name}"'))
    except Exception as exc:
        yield _SharedPg(error=exc)
        return
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        yield _SharedPg(url, engine)
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.execute(sa.text(f'drop database if exists "{name}" with (force)'))
        admin.dispose()


def _new_pg_schema(shared: _SharedPg) -> Iterator[Database]:
    """An empty schema in this worker's database, first and only on the URL's search_path, so
    everything a test creates (tables, functions, triggers, retentiond's state tables) is in it
    and reflection sees nothing else. Dropped afterwards with whatever sessions the test left,
    as ``drop database ... with (force)`` did."""
    if shared.error is not None or shared.engine is None:
        _unavailable("PostgreSQL", shared.error or RuntimeError("no database"))
    assert shared.engine is not None
    name = f"t_{uuid.uuid4().hex[:12]}"
    with shared.engine.connect() as c:
        c.execute(sa.text(f'create schema "{name}"'))
    try:
        yield Database("postgresql", f"{shared.url}?options=-csearch_path%3D{name}")
    finally:
        with shared.engine.connect() as c:
            c.execute(sa.text("select pg_terminate_backend(pid, 5000) from pg_stat_activity "
                              "where datname = current_database() and pid <> pg_backend_pid()"))
            c.execute(sa.text(f'drop schema "{name}" cascade'))


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
    yield from _make(request, request.param, tmp_path)


@pytest.fixture(params=("sqlite", "postgresql"))
def store_db_sp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh store database on SQLite and PostgreSQL."""
    yield from _make(request, request.param, tmp_path)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    yield from _new_sqlite(tmp_path)


@pytest.fixture
def pg_db() -> Iterator[Database]:
    """A whole PostgreSQL database of the test's own."""
    yield from _new_pg()


@pytest.fixture
def pg_schema(_pg_worker_db: _SharedPg) -> Iterator[Database]:
    """An empty PostgreSQL schema of the test's own (see the module's docstring)."""
    yield from _new_pg_schema(_pg_worker_db)


@pytest.fixture
def mariadb_db() -> Iterator[Database]:
    yield from _new_my()


def _make(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[Database]:
    if backend == "postgresql":
        yield from _new_pg_schema(request.getfixturevalue("_pg_worker_db"))
    elif backend == "mariadb":
        yield from _new_my()
    else:
        yield from _new_sqlite(tmp_path)


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


# -- S3: moto's real HTTP server, one per xdist worker (the s3 adapter's tests) ---------------
S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing-secret"}


@dataclass
class S3Server:
    """moto's S3 server (``tests/s3server.py``), started for the session: boto3 talks HTTP to
    it as to any S3-compatible store. ``set_last_modified`` is its test clock."""

    endpoint: str

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=S3_KEYS["access_key_id"],
                            aws_secret_access_key=S3_KEYS["secret_access_key"],
                            config=Config(s3={"addressing_style": "path"}))

    def store(self, bucket: str, **extra: Any) -> dict[str, Any]:
        """A policy's store entry for ``bucket`` on this server."""
        return {"adapter": "s3", "bucket": bucket, "endpoint_url": self.endpoint,
                "region": "us-east-1", **S3_KEYS, **extra}

    def new_bucket(self, *, versioned: bool = False, lock: bool = False) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        c = self.client()
        c.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
        if versioned and not lock:  # Object Lock turns versioning on by itself
            c.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def _post(self, route: str, doc: Any) -> int:
        import urllib.request

        req = urllib.request.Request(f"{self.endpoint}/_retentiond/{route}",
                                     data=json.dumps(doc).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=60) as answer:
            return int(json.loads(answer.read())["updated"])

    def set_last_modified(self, bucket: str, items: dict[str, Any]) -> None:
        """Set objects' LastModified (``{key: aware datetime}``) through the test clock."""
        done = self._post("last-modified", [[bucket, k, v.isoformat()] for k, v in items.items()])
        assert done == len(items)

    def seed(self, bucket: str, items: list[tuple[str, Any, dict[str, str] | None]]) -> None:
        """Create objects ``(key, LastModified, tags)`` in one request (the server's backend)."""
        done = self._post("put-objects", [[bucket, k, at.isoformat(), tags or {}]
                                          for k, at, tags in items])
        assert done == len(items)

    def drop_bucket(self, name: str) -> None:
        """Remove a test bucket with everything in it (Object Lock too)."""
        self._post("drop-buckets", [name])


def _start_s3_server() -> tuple[subprocess.Popen[str], str]:
    import select
    import time
    import urllib.error
    import urllib.request

    script = Path(__file__).with_name("s3server.py")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("PORT "):
        proc.kill()
        pytest.fail(f"the S3 test server (moto) did not start: {line!r}", pytrace=False)
    endpoint = f"http://127.0.0.1:{int(line.split()[1])}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/", timeout=5).close()
            return proc, endpoint
        except urllib.error.HTTPError:
            return proc, endpoint  # it answers
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the S3 test server (moto) does not answer", pytrace=False)
            time.sleep(0.1)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server in a child process of this worker; never skipped (moto[server] is a
    development dependency)."""
    proc, endpoint = _start_s3_server()
    try:
        yield S3Server(endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh bucket with versioning and Object Lock enabled, deleted afterwards."""
    name = s3_server.new_bucket(lock=True)
    yield name
    s3_server.drop_bucket(name)
