"""retentiond's own database: engine, Alembic upgrade, and the unreachable-database error.

The Alembic scripts live in the top-level ``migrations/`` folder of the source tree and are
copied into the wheel as ``retentiond/_migrations``; :func:`migrations_dir` finds either.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from retentiond.errors import StateUnreachable
from retentiond.log import get_logger, redact_url
from retentiond.state import faults

if TYPE_CHECKING:
    from alembic.config import Config

# The newest migration in migrations/versions. Commands compare it with the database's
# alembic_version and skip loading Alembic when they match (a test keeps the two in step).
HEAD_REVISION = "0005"

log = get_logger(__name__)


def normalize_url(url: str) -> str:
    """Pick the drivers retentiond ships with when a URL names none."""
    for plain, full in (("postgresql://", "postgresql+psycopg://"),
                        ("postgres://", "postgresql+psycopg://"),
                        ("mysql://", "mysql+pymysql://"), ("mariadb://", "mariadb+pymysql://")):
        if url.startswith(plain):
            return full + url[len(plain):]
    return url


def migrations_dir() -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError("retentiond's migrations are missing from this installation")


def make_engine(url: str, *, store: bool = False) -> Engine:
    """An engine for the state database, or with ``store=True`` for a data store: a store's
    SQLite file is used as it is (no directories created, journal mode left alone)."""
    url = normalize_url(url)
    # hide_parameters: an error's text never carries the bound values (subject ids, keys)
    kwargs: dict[str, Any] = {"future": True, "hide_parameters": True}
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:" and not store:
            _make_parent(Path(path.split("?")[0]), url)
        kwargs["connect_args"] = {"timeout": 60}
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _store_pragmas if store else _sqlite_pragmas)
    if not store:
        faults.watch(engine, url)  # its errors become one line and exit 3 (cli.main)
    return engine


def _make_parent(path: Path, url: str) -> None:
    """Create the directory of the state database's SQLite file (StateUnreachable if it
    cannot be created)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateUnreachable(
            f"state database {redact_url(url)}: cannot create {path.parent}: {exc.strerror}; "
            "check `state:` in the policy") from None


def _store_pragmas(dbapi_conn: Any, _: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_state(url: str, *, upgrade: bool = True) -> Engine:
    """Connect to the state database (exit 3 if unreachable) and migrate it to head."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except (OperationalError, DBAPIError):
        raise StateUnreachable(
            f"state database {redact_url(url)} is unreachable; check `state:` in the policy"
        ) from None
    if upgrade and stored_revision(engine) != HEAD_REVISION:
        upgrade_state(engine)
    return engine


def stored_revision(engine: Engine) -> str | None:
    """The revision recorded in the database, without loading Alembic (None if unknown)."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("select version_num from alembic_version")).scalar()
    except DBAPIError:
        return None


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade_state(engine: Engine, revision: str = "head") -> None:
    """Migrate, one process at a time: replicas, a timer's run and the daemon may all start
    on a fresh state database at once. PostgreSQL serialises them with a transaction-scoped
    advisory lock (the others then find the database migrated); elsewhere a process that
    lost the race accepts the database once it is at head."""
    from alembic import command

    cfg = alembic_config(engine)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("select pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
                if revision == "head" and _revision(conn) == HEAD_REVISION:
                    return
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except DBAPIError:
        if revision != "head" or stored_revision(engine) != HEAD_REVISION:
            raise


MIGRATION_LOCK = 0x7265_7465  # "rete": retentiond's advisory lock key for migrations


def _revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("select version_num from alembic_version")).scalar()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
