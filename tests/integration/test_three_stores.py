"""One erasure request across three kinds of store at once (issue 12): a SQL table, a folder
tree (``files``) and a bucket (``s3``, moto's real HTTP server). One request, one sweep, one
outcome: every record of the subject in every store is gone, nothing of anyone else's, each
disposal ledgered under the request with recomputed references, the request closed with its
outcome per rule, and the audit trail verifies."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from helpers import ledger, record_ref

if TYPE_CHECKING:
    from conftest import S3Server

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)
YOUNG = NOW - timedelta(days=3)
ASKED, OTHER = "u1001", "u1002"
FILES = {f"users/{ASKED}/id-scan.png": YOUNG, f"users/{ASKED}/export/all.csv": YOUNG,
         f"users/{OTHER}/id-scan.png": YOUNG}
OBJECTS = {f"invoices/{ASKED}/2025-01.pdf": YOUNG, f"invoices/{OTHER}/2025-01.pdf": YOUNG}
RULES = [
    {"id": "accounts", "store": "app", "table": "accounts", "key": "id", "subject": "user_ref",
     "clock": "created_at", "dispose_after": "10y", "action": "delete"},
    {"id": "uploads", "store": "uploads", "path": "users/{subject}/**", "dispose_after": "10y"},
    {"id": "invoices", "store": "media", "prefix": "invoices/", "path": "{subject}/*.pdf",
     "dispose_after": "10y"},
]


@pytest.fixture
def bucket(s3_server: S3Server) -> Iterator[str]:
    name = s3_server.new_bucket(versioned=True)
    yield name
    s3_server.drop_bucket(name)


def test_one_request_three_stores_one_outcome(ws: Any, tmp_path: Path, s3_server: S3Server,
                                              bucket: str) -> None:
    db = tmp_path / "app.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as c:
        c.exec_driver_sql("create table accounts (id integer primary key, user_ref text,"
                          " created_at timestamp)")
        c.exec_driver_sql(f"insert into accounts values (1, '{ASKED}', '2025-01-01 00:00:00'),"
                          f" (2, '{OTHER}', '2025-01-01 00:00:00')")
    root = tmp_path / "uploads"
    for rel, at in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"scan")
        os.utime(path, (at.timestamp(), at.timestamp()))
    client = s3_server.client()
    for key in OBJECTS:
        for version in (1, 2):  # two versions each: both must go
            client.put_object(Bucket=bucket, Key=key, Body=f"v{version}".encode())
    s3_server.set_last_modified(bucket, OBJECTS)
    ws.policy({"app": {"adapter": "sql", "url": f"sqlite:///{db}"},
               "uploads": {"adapter": "files", "root": str(root)},
               "media": s3_server.store(bucket)}, RULES)

    asked = ws.invoke("--json", "request", "erase", ASKED)
    assert asked.code == 0, asked.err
    request = asked.json()["id"]
    run = ws.invoke("run", "--json")
    assert run.code == 0, run.out + run.err
    assert run.json()["totals"]["done"] == 1 + 2 + 1

    with engine.connect() as c:
        assert c.exec_driver_sql("select id from accounts").scalars().all() == [2]
    engine.dispose()
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert left == [f"users/{OTHER}/id-scan.png"]
    pages = client.get_paginator("list_object_versions").paginate(Bucket=bucket)
    versions = sorted(v["Key"] for p in pages for v in (*p.get("Versions", []),
                                                        *p.get("DeleteMarkers", [])))
    assert versions == [f"invoices/{OTHER}/2025-01.pdf"] * 2

    entries = list(ledger(ws.root / "state.db", "dispose"))
    assert {e["reason"] for e in entries} == {f"erasure:{request}"}
    got = sorted(r for e in entries for r in e["record_refs"])
    want = sorted([record_ref(ws.secret, "app", "accounts", 1),
                   *(record_ref(ws.secret, "uploads", "users/{subject}/**", k)
                     for k in FILES if ASKED in k),
                   record_ref(ws.secret, "media", "invoices/{subject}/*.pdf",
                              f"invoices/{ASKED}/2025-01.pdf")])
    assert got == want
    [listed] = ws.invoke("--json", "request", "list").json()
    assert listed["status"] == "done"
    assert {rule: out["disposed"] for rule, out in listed["outcome"].items()} == {
        "accounts": 1, "uploads": 2, "invoices": 1}
    assert ws.invoke("audit", "verify").code == 0
    for text in (run.out, run.err):
        assert ASKED not in text and OTHER not in text
