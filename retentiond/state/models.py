"""SQLAlchemy models of retentiond's own database (runs, ledger, checkpoints, pending intents).

Timestamps retentiond writes are UTC. Ledger times are stored as their exact ISO 8601 text so
that the hash chain recomputes byte for byte on every backend.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Stored naive in UTC, returned aware in UTC, on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        when: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime())
    dry_run: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16))  # running, ok, failed, interrupted, crashed
    policy_digest: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)  # the run's JSON document
    # host:pid:random of the sweeping process; see retentiond.state.runs
    holder: Mapped[str | None] = mapped_column(String(128), nullable=True)


class LedgerEntry(Base):
    __tablename__ = "ledger"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(40))
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str | None] = mapped_column(String(64), nullable=True)
    store: Mapped[str | None] = mapped_column(String(64), nullable=True)
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    action: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(80), nullable=True)
    record_refs: Mapped[str] = mapped_column(Text)  # JSON list of hex HMACs
    record_count: Mapped[int] = mapped_column(Integer)
    subject_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text)  # JSON object: counts, digests, horizons
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_ledger_at", "at"), Index("ix_ledger_kind", "kind"))


class LedgerHead(Base):
    """One row: the last sequence number and hash. Updating it first serialises appenders."""

    __tablename__ = "ledger_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[str] = mapped_column(String(40))
    run_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    signature: Mapped[str | None] = mapped_column(String(128), nullable=True)
    public_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Pending(Base):
    """An intent written before a batch is disposed; removed in the transaction that ledgers
    the batch. Whatever is left after a crash is reconciled at the next start."""

    __tablename__ = "pending"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    run_id: Mapped[str] = mapped_column(String(32))
    rule: Mapped[str] = mapped_column(String(64))
    store: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(80))
    subject_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)
    record_refs: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)


class Request(Base):
    """An erasure request. The raw subject id is kept only while the request is open (the sweep
    needs it to find the records) and cleared once it is done or partial."""

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    subject_kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    subject_ref: Mapped[str] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))  # open, done, partial
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    outcome: Mapped[str] = mapped_column(Text, default="{}")  # JSON: per rule counts and basis

    __table_args__ = (Index("ix_requests_status", "status"),)


class Hold(Base):
    """A legal hold on a subject, a rule or a store. Holds are never deleted, only released."""

    __tablename__ = "holds"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # subject, rule, store
    subject_kind: Mapped[str | None] = mapped_column(String(64), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    subject_ref: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rule: Mapped[str | None] = mapped_column(String(64), nullable=True)
    store: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    release_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_holds_released_at", "released_at"),)


class Lease(Base):
    """Leases: one row per store (``store:<name>``), the replica that may sweep it and a
    version it bumps on every renewal, and one heartbeat row per ``serve`` replica
    (``replica:<id>``). See :mod:`retentiond.state.lease` and :mod:`retentiond.state.replicas`."""

    __tablename__ = "lease"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    version: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    renewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
