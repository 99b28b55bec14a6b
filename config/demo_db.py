"""Build the demo marketplace database for config/retentiond.yaml.

    python config/demo_db.py [--dir .demo] [--users 300] [--seed 7] [--now ISO8601]

Creates ``<dir>/marketplace.db`` (SQLite) with users, messages, invitations, cards and invoices
whose dates lie around "now", so that every rule of the demo policy has something due and
something not yet due, and a 32-byte ``<dir>/secret.key`` (mode 0600) if there is none.
Deterministic for a given seed and --now.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from faker import Faker

SCHEMA = """
create table users (
    id integer primary key, email text not null, name text, phone text, birth_date date,
    status text not null, created_at timestamp not null, closed_at timestamp,
    anonymized_at timestamp);
create index ix_users_closed_at on users (closed_at);
create table messages (
    id integer primary key, sender_id integer not null, recipient_id integer not null,
    body text not null, sent_at timestamp not null);
create index ix_messages_sent_at on messages (sent_at);
create table invitations (
    id integer primary key, inviter_id integer not null, friend_email text not null,
    created_at timestamp not null, sent_at timestamp);
create table cards (
    id integer primary key, user_id integer not null, card_number text not null,
    added_at timestamp not null, lost_at timestamp);
create table invoices (
    id integer primary key, user_id integer not null, amount_cents integer not null,
    billing_name text not null, billing_address text not null, issued_at timestamp not null);
"""


def ts(value: datetime) -> str:
    return value.replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")


def build(path: Path, *, users: int, seed: int, now: datetime) -> dict[str, int]:
    fake = Faker("en_US")
    Faker.seed(seed)
    rnd = random.Random(seed)  # noqa: S311 - seeded on purpose: the demo data is reproducible
    if path.exists():
        path.unlink()
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)

    def days(lo: int, hi: int) -> timedelta:
        return timedelta(days=rnd.randint(lo, hi))

    rows: dict[str, list[tuple[object, ...]]] = {t: [] for t in
                                                ("users", "messages", "invitations", "cards",
                                                 "invoices")}
    for uid in range(1, users + 1):
        created = now - days(30, 3650)
        minor = rnd.random() < 0.04
        born = (now - days(13 * 365, 17 * 365) if minor else now - days(19 * 365, 70 * 365))
        closed = None
        if rnd.random() < 0.35:
            closed = min(now - days(1, 5), created + days(1, 3000))
        rows["users"].append((uid, fake.unique.email(), fake.name(), fake.phone_number(),
                              born.date().isoformat(), "closed" if closed else "active",
                              ts(created), ts(closed) if closed else None, None))
        for _ in range(rnd.randint(0, 6)):
            rows["messages"].append((len(rows["messages"]) + 1, uid, rnd.randint(1, users),
                                     fake.sentence(), ts(now - days(0, 2500))))
        if rnd.random() < 0.3:
            sent = now - days(0, 60) if rnd.random() < 0.8 else None
            rows["invitations"].append((len(rows["invitations"]) + 1, uid, fake.email(),
                                        ts((sent or now) - timedelta(hours=1)),
                                        ts(sent) if sent else None))
        if rnd.random() < 0.5:
            lost = now - days(0, 400) if rnd.random() < 0.15 else None
            rows["cards"].append((len(rows["cards"]) + 1, uid, fake.credit_card_number(),
                                  ts(created), ts(lost) if lost else None))
        for _ in range(rnd.randint(0, 3)):
            rows["invoices"].append((len(rows["invoices"]) + 1, uid, rnd.randint(500, 90000),
                                     fake.name(), fake.address().replace("\n", ", "),
                                     ts(now - days(0, 3650))))
    for table, data in rows.items():
        if data:
            marks = ",".join("?" * len(data[0]))
            db.executemany(f"insert into {table} values ({marks})", data)
    db.commit()
    db.close()
    return {t: len(v) for t, v in rows.items()}


def ensure_key(path: Path) -> None:
    if path.exists():
        return
    path.write_text(secrets.token_hex(32))
    os.chmod(path, 0o600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=".demo")
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--now", help="ISO 8601 instant the data is built around (default: now)")
    args = ap.parse_args()
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)
    counts = build(out / "marketplace.db", users=args.users, seed=args.seed, now=now)
    ensure_key(out / "secret.key")
    for stale in ("state.db", "state.db-wal", "state.db-shm"):
        (out / stale).unlink(missing_ok=True)
    summary = ", ".join(f"{n} {t}" for t, n in counts.items())
    print(f"demo database {out / 'marketplace.db'}: {summary}")


if __name__ == "__main__":
    main()
