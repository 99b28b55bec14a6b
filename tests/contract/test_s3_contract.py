"""The adapter contract suite (retentiond.testing) for the s3 adapter, against moto's S3
server over HTTP (``tests/s3server.py``), twice:

* a plain bucket; records ``contract/rec-NNNNN``, the subject in the tag ``user-id`` (an
  object without it has no subject), the clock LastModified, which the harness sets through
  the server's test clock (``S3Server.set_last_modified``), as an application's writes would;
* a bucket with versioning and Object Lock (every version of a disposed key removed, locks
  read per version); records ``named/NNN/<subject>/<clock>.bin``, subject and clock in the key
  (``path: "*/{subject}/{clock:%Y%m%dT%H%M%S}.bin"``).

An object always has a clock (LastModified, or its name), and a key naming its subject always
names one: the harnesses say so (``null_clocks``, ``null_subjects``; see retentiond/testing.py).
A failing record (``poison``) is an object a bucket policy denies deleting: DeleteObjects
reports it (AccessDenied, with its key, which must not leak) and deletes the others."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from retentiond.adapters import registry
from retentiond.adapters.base import Adapter
from retentiond.testing import AdapterContract, Harness, Record, make_policy

if TYPE_CHECKING:
    from conftest import S3Server

PREFIX = "contract/"
TAG = "user-id"
RULE = {"prefix": PREFIX, "subject_tag": TAG}


class S3Harness(Harness):
    null_clocks: ClassVar[bool] = False
    PREFIX = PREFIX
    RULE: ClassVar[dict[str, Any]] = RULE

    def __init__(self, server: S3Server, *, versioned: bool) -> None:
        self.server = server
        self.bucket = server.new_bucket(lock=versioned)
        self.client = server.client()
        policy, rule = make_policy("s3", server.store(self.bucket), dict(self.RULE))
        adapter = registry.get("s3")("contract", policy.stores["contract"], policy)
        adapter.connect()
        super().__init__(adapter, rule)

    def key_for(self, i: int) -> str:
        return f"{PREFIX}rec-{i:05d}"

    def subject_for(self, n: int) -> str:
        return f"user-{n}"

    def seed(self, records: Sequence[Record]) -> None:
        """The objects, created in the server's backend in one request (as many PutObject
        requests would; the adapter under test only ever talks S3 to the server)."""
        assert all(r.clock is not None for r in records)
        self.server.seed(self.bucket, [
            (r.key, r.clock.replace(tzinfo=UTC) if r.clock else None,
             {TAG: str(r.subject)} if r.subject is not None else None) for r in records])

    def keys(self) -> list[Any]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                      Prefix=self.PREFIX)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def set_clock(self, key: Any, clock: datetime | None) -> None:
        assert clock is not None, "an object always has a LastModified"
        self.server.set_last_modified(self.bucket, {key: clock.replace(tzinfo=UTC)})

    def snapshot(self) -> object:
        pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket)
        versions = sorted(
            (v["Key"], v["VersionId"], v.get("ETag"), v["LastModified"].isoformat(),
             v.get("IsLatest"), "ETag" not in v)
            for page in pages for v in page.get("Versions", []) + page.get("DeleteMarkers", []))
        buckets = sorted(b["Name"] for b in self.client.list_buckets()["Buckets"]
                         if b["Name"] == self.bucket)
        return buckets, versions

    def poison(self, key: Any) -> str:
        """A bucket policy that denies deleting this one object: DeleteObjects reports it
        (AccessDenied, naming the key) and deletes the others."""
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
            "Resource": f"arn:aws:s3:::{self.bucket}/{key}"}]}
        self.client.put_bucket_policy(Bucket=self.bucket, Policy=json.dumps(policy))
        return str(key)

    def unreachable(self) -> tuple[Adapter, str | None]:
        secret = "hunter2-contract-s3-secret"
        policy, _ = make_policy("s3", {
            "bucket": "gone", "endpoint_url": "http://127.0.0.1:1", "region": "us-east-1",
            "access_key_id": "contract", "secret_access_key": secret}, dict(RULE),
            store_name="gone")
        return registry.get("s3")("gone", policy.stores["gone"], policy), secret

    def close(self) -> None:
        super().close()
        self.server.drop_bucket(self.bucket)


class NamedS3Harness(S3Harness):
    """Subject and clock in the key; LastModified means nothing to the rule. A clock that
    moves is the application rewriting the object (its key cannot change, or it would be
    another record): the re-check before disposal sees its new ETag / LastModified and leaves
    it."""

    null_subjects: ClassVar[bool] = False
    PREFIX = "named/"
    RULE: ClassVar[dict[str, Any]] = {"prefix": "named/",
                                      "path": "*/{subject}/{clock:%Y%m%dT%H%M%S}.bin"}

    def key_for(self, i: int) -> str:
        return f"named/{i:03d}/nobody/20200101T000000.bin"

    def record_key(self, i: int, subject: Any, clock: datetime | None) -> str:
        assert clock is not None
        return f"named/{i:03d}/{subject}/{clock:%Y%m%dT%H%M%S}.bin"

    def seed(self, records: Sequence[Record]) -> None:
        now = datetime.now(UTC)
        self.server.seed(self.bucket, [(r.key, now, None) for r in records])

    def set_clock(self, key: Any, clock: datetime | None) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=f"rewritten {clock}".encode())


class TestS3AdapterContract(AdapterContract):
    @pytest.fixture
    def harness(self, s3_server: S3Server) -> Iterator[S3Harness]:
        h = S3Harness(s3_server, versioned=False)
        yield h
        h.close()


class TestS3VersionedNamedContract(AdapterContract):
    """The whole contract again on a bucket with versioning and Object Lock, subject and clock
    in the key."""

    @pytest.fixture
    def harness(self, s3_server: S3Server) -> Iterator[S3Harness]:
        h = NamedS3Harness(s3_server, versioned=True)
        yield h
        h.close()
