"""The adapter contract suite (retentiond.testing) for the sql adapter on SQLite, PostgreSQL
and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa

from retentiond.adapters import registry
from retentiond.adapters.base import Adapter
from retentiond.testing import AdapterContract, Harness, Record, make_policy

if TYPE_CHECKING:
    from conftest import Database

TABLE = "contract_records"
POISON = "contract-poison-9d41e7 the row of alice@example.org"


def _table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        TABLE, metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("user_id", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=True),
        sa.Column("email", sa.String(120), nullable=False),
    )


_POISON_DDL: dict[str, list[str]] = {
    "sqlite": [
        f"create trigger contract_poison before delete on {TABLE} when old.id = {{key}} "
        f"begin select raise(abort, '{POISON}'); end",
    ],
    "postgresql": [
        "create function contract_poison() returns trigger language plpgsql as $$ begin "
        f"if old.id = {{key}} then raise exception '{POISON}'; end if; return old; end $$",
        f"create trigger contract_poison before delete on {TABLE} for each row "
        "execute function contract_poison()",
    ],
    "mariadb": [
        f"create trigger contract_poison before delete on {TABLE} for each row begin "
        f"if old.id = {{key}} then signal sqlstate '45000' set message_text = '{POISON}'; "
        "end if; end",
    ],
}


class SqlHarness(Harness):
    def __init__(self, db: Database) -> None:
        self.db = db
        self.engine = db.engine()
        self.table = _table(sa.MetaData())
        self.table.metadata.create_all(self.engine)
        policy, rule = make_policy("sql", {"url": db.url}, {
            "table": TABLE, "key": "id", "subject": "user_id", "clock": "created_at"})
        adapter = registry.get("sql")("contract", policy.stores["contract"], policy)
        adapter.connect()
        super().__init__(adapter, rule)

    def key_for(self, i: int) -> int:
        return 10 + 3 * i

    def subject_for(self, n: int) -> int:
        return 100 + n

    def seed(self, records: Sequence[Record]) -> None:
        rows = [{"id": r.key, "user_id": r.subject, "created_at": r.clock,
                 "email": f"person{r.key}@example.org"} for r in records]
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), rows)

    def keys(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(self.table.c.id)).scalars())

    def set_clock(self, key: Any, clock: datetime | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.update().where(self.table.c.id == key).values(
                created_at=clock))

    def snapshot(self) -> object:
        with self.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(
                sa.select(self.table).order_by(self.table.c.id))]
        return sorted(sa.inspect(self.engine).get_table_names()), rows

    def poison(self, key: Any) -> str:
        with self.engine.begin() as conn:
            for ddl in _POISON_DDL[self.db.backend]:
                conn.exec_driver_sql(ddl.replace("{key}", str(int(key))))
        return POISON

    def unreachable(self) -> tuple[Adapter, str | None]:
        secret = "hunter2-contract"
        url = f"postgresql+psycopg://contract:{secret}@127.0.0.1:1/nowhere"
        policy, _ = make_policy("sql", {"url": url}, {
            "table": TABLE, "key": "id", "subject": "user_id", "clock": "created_at"},
            store_name="gone")
        return registry.get("sql")("gone", policy.stores["gone"], policy), secret

    def close(self) -> None:
        super().close()
        self.engine.dispose()


class TestSqlAdapterContract(AdapterContract):
    @pytest.fixture
    def harness(self, store_db: Database) -> Iterator[SqlHarness]:
        h = SqlHarness(store_db)
        yield h
        h.close()


COMPOSITE = "contract_payments"
_COMPOSITE_POISON: dict[str, list[str]] = {
    backend: [d.replace(TABLE, COMPOSITE).replace("old.id = {key}", "old.email = '{key}'")
              for d in ddl] for backend, ddl in _POISON_DDL.items()}


class CompositeSqlHarness(SqlHarness):
    """The contract on a composite key ``(paid_at, seq)``: a timestamp and an integer, three
    records per timestamp, so batches end inside a run of equal first components."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.engine = db.engine()
        self.table = sa.Table(
            COMPOSITE, sa.MetaData(),
            sa.Column("paid_at", sa.DateTime, primary_key=True),
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("user_id", sa.Integer, nullable=True),
            sa.Column("created_at", sa.DateTime, nullable=True),
            sa.Column("email", sa.String(120), nullable=False, unique=True))
        self.table.metadata.create_all(self.engine)
        policy, rule = make_policy("sql", {"url": db.url}, {
            "table": COMPOSITE, "key": ["paid_at", "seq"], "subject": "user_id",
            "clock": "created_at"})
        adapter = registry.get("sql")("contract", policy.stores["contract"], policy)
        adapter.connect()
        Harness.__init__(self, adapter, rule)

    def key_for(self, i: int) -> tuple[datetime, int]:
        return datetime(2024, 1, 1, 10, 0) + timedelta(days=i // 3), 30 + i % 3 * 7 - i // 3

    def _email(self, key: Any) -> str:
        return f"payment-{key[0]:%Y%m%d}-{key[1]}@example.org"

    def seed(self, records: Sequence[Record]) -> None:
        rows = [{"paid_at": r.key[0], "seq": r.key[1], "user_id": r.subject,
                 "created_at": r.clock, "email": self._email(r.key)} for r in records]
        with self.engine.begin() as conn:
            conn.execute(self.table.insert(), rows)

    def keys(self) -> list[Any]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                sa.select(self.table.c.paid_at, self.table.c.seq))]

    def set_clock(self, key: Any, clock: datetime | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(self.table.update().where(
                self.table.c.paid_at == key[0], self.table.c.seq == key[1]).values(
                created_at=clock))

    def snapshot(self) -> object:
        with self.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(
                sa.select(self.table).order_by(self.table.c.paid_at, self.table.c.seq))]
        return sorted(sa.inspect(self.engine).get_table_names()), rows

    def poison(self, key: Any) -> str:
        with self.engine.begin() as conn:
            for ddl in _COMPOSITE_POISON[self.db.backend]:
                conn.exec_driver_sql(ddl.replace("{key}", self._email(key)))
        return POISON


class TestSqlAdapterCompositeKeyContract(AdapterContract):
    """The whole contract again, with a composite key."""

    @pytest.fixture
    def harness(self, store_db: Database) -> Iterator[SqlHarness]:
        h = CompositeSqlHarness(store_db)
        yield h
        h.close()
