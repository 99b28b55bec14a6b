"""Table builders and state-database readers shared by the integration tests.

Tables are created with SQLAlchemy Core in the store database; timestamps are naive (wall-clock
time in the policy's zone, UTC here) and whole seconds, because MariaDB's DATETIME keeps none.
Text columns hold personal-looking values so a test can prove they never reach the audit trail.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

FIRST = ("Maria", "Jonas", "Aylin", "Kwame", "Sofia", "Lukas", "Priya", "Mateo", "Ingrid")
LAST = ("Schmidt", "Okafor", "Yilmaz", "Lindqvist", "Moreau", "Tanaka", "Novak", "Haddad")


def person(i: int) -> tuple[str, str]:
    """A distinctive full name and e-mail address for row ``i``."""
    first, last = FIRST[i % len(FIRST)], LAST[i % len(LAST)]
    return f"{first} {last}", f"{first.lower()}.{last.lower()}.{i}@mail.example.org"


def users_table(metadata: sa.MetaData, name: str = "users") -> sa.Table:
    return sa.Table(
        name, metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=True),
        sa.Column("full_name", sa.String(120), nullable=False),
        sa.Column("email", sa.String(120), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("flagged", sa.Integer, nullable=False),
    )


@dataclass(frozen=True)
class Row:
    id: int
    clock: datetime | None
    status: str = "closed"
    flagged: int = 0

    def values(self) -> dict[str, Any]:
        name, email = person(self.id)
        return {"id": self.id, "user_id": 1000 + self.id, "created_at": self.clock,
                "full_name": name, "email": email, "status": self.status,
                "flagged": self.flagged}


def create(engine: sa.Engine, table: sa.Table, rows: list[Row]) -> None:
    table.metadata.create_all(engine, tables=[table])
    if rows:
        with engine.begin() as conn:
            conn.execute(table.insert(), [r.values() for r in rows])


def ids(engine: sa.Engine, table: str) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(f"select id from {table}")).scalars())


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order."""
    md = sa.MetaData()
    md.reflect(engine)
    out = {}
    with engine.connect() as conn:
        for name, table in sorted(md.tables.items()):
            order = list(table.primary_key.columns) or list(table.columns)
            out[name] = [tuple(r) for r in conn.execute(sa.select(table).order_by(*order))]
    return out


def now_seconds() -> datetime:
    """Now in UTC as a naive datetime, truncated to whole seconds."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def sqlite_path(url: str) -> Path:
    return Path(url.split(":///", 1)[1])


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_ref(secret_file: Path, store: str, target: str, key: Any) -> str:
    secret = secret_file.read_bytes().rstrip(b"\r\n")
    return hmac.new(secret, f"{store}\0{target}\0{key}".encode(), hashlib.sha256).hexdigest()


def state_rows(state_db: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def ledger(state_db: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Ledger entries in sequence order, ``record_refs`` decoded."""
    sql = "select * from ledger" + (" where kind = ?" if kind else "") + " order by seq"
    rows = state_rows(state_db, sql, *([kind] if kind else []))
    for r in rows:
        r["record_refs"] = json.loads(r["record_refs"])
    return rows


def log_free_lines(text: str) -> list[str]:
    """Output lines that are not structlog JSON lines."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("{")]


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database, whatever its journal mode."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def state_exec(state_db: Path, sql: str, *args: Any) -> int:
    """Change the state database behind retentiond's back (tampering); returns rows changed."""
    conn = sqlite3.connect(state_db, timeout=30)
    try:
        with conn:
            return conn.execute(sql, args).rowcount
    finally:
        conn.close()


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]
