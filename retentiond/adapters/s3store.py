"""The S3 API as the s3 adapter uses it: one boto3 client per store, errors mapped to
retentiond's, and the few calls it makes (listing, heads, versions, tags, batched deletes,
copies, bucket settings).

Error messages carry the operation and the S3 error code only: never an object key (keys may
hold personal data), a server's message text (it can quote the key) or a credential.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from retentiond.errors import StoreError, StoreUnreachable
from retentiond.log import redact_url

if TYPE_CHECKING:
    from retentiond.policy.model import Store

T = TypeVar("T")
R = TypeVar("R")

#: Keys per DeleteObjects request (the S3 maximum).
DELETE_BATCH = 1000
#: Concurrent per-object requests (heads, versions, tags, copies).
WORKERS = 8
#: What S3 calls a missing bucket.
NO_BUCKET = frozenset({"NoSuchBucket", "404", "NotFound"})
NO_KEY = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion", "MethodNotAllowed", "405"})
#: Error codes that mean the credentials do not work: the store cannot be used at all.
BAD_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                             "InvalidToken", "TokenRefreshRequired", "InvalidClientTokenId"})
#: Copies up to this size are one CopyObject; larger ones are multipart (boto3's managed copy).
COPY_LIMIT = 5 * 1024**3


@dataclass(frozen=True)
class Head:
    """One object version as a listing or HeadObject shows it. ``locked``: under a legal hold
    or an unexpired retention (None when not read)."""

    key: str
    last_modified: datetime  # aware
    etag: str
    size: int = 0
    version_id: str | None = None
    locked: bool | None = None


@dataclass(frozen=True)
class Version:
    """One entry of ListObjectVersions for a key: a version or a delete marker."""

    version_id: str
    latest: bool
    marker: bool
    last_modified: datetime
    etag: str = ""
    size: int = 0


def code_of(exc: Exception) -> str:
    """The S3 error code of a ClientError (``NoSuchBucket``, ``AccessDenied``, ``404``)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or type(exc).__name__)


def locked(headers: dict[str, Any], now: datetime) -> bool:
    """Object Lock as HeadObject reports it: a legal hold, or a retention (GOVERNANCE or
    COMPLIANCE) whose date has not passed."""
    if headers.get("ObjectLockLegalHoldStatus") == "ON":
        return True
    until = headers.get("ObjectLockRetainUntilDate")
    if headers.get("ObjectLockMode") in ("GOVERNANCE", "COMPLIANCE") and until is not None:
        return bool(until.astimezone(UTC) > now)
    return False


def timestamp(text: str) -> datetime:
    """A timestamp of an S3 response: the ISO 8601 of listings by ``datetime.fromisoformat``
    (dateutil, botocore's default, costs as much as the rest of a listing's parsing), anything
    else (HTTP dates of HeadObject) by botocore's parser."""
    from botocore.utils import parse_timestamp

    try:
        at = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return parse_timestamp(text)  # type: ignore[no-any-return]
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # S3 speaks UTC


def _version(v: dict[str, Any], *, marker: bool) -> Version:
    return Version(str(v["VersionId"]), bool(v.get("IsLatest")), marker, v["LastModified"],
                   v.get("ETag", ""), v.get("Size", 0))


def _newest_first(versions: list[Version]) -> tuple[Version, ...]:
    return tuple(sorted(versions, key=lambda v: (not v.latest, -v.last_modified.timestamp())))


class S3Store:
    """A connected client for one store, with retentiond's error mapping."""

    def __init__(self, store_name: str, store: Store) -> None:
        self.store_name = store_name
        self.store = store
        self.endpoint = redact_url(store.endpoint_url) if store.endpoint_url else "AWS S3"
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        import botocore.session
        from botocore.config import Config

        store = self.store
        config = Config(
            connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=WORKERS + 2,
            # S3-compatible servers are addressed by path; AWS itself by virtual host.
            s3={"addressing_style": "path"} if store.endpoint_url else {})
        keys = {"aws_access_key_id": store.access_key_id,
                "aws_secret_access_key": store.secret_access_key,
                "aws_session_token": store.session_token}
        session = botocore.session.get_session()
        session.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=timestamp)
        with self.errors("creating the S3 client"):
            return boto3.session.Session(botocore_session=session).client(
                "s3", endpoint_url=store.endpoint_url, region_name=store.region, config=config,
                **{k: str(v) for k, v in keys.items() if v is not None})

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items``, up to :data:`WORKERS` at once, results in order."""
        if len(items) <= 1:
            return [fn(i) for i in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="retentiond-s3")
        return list(self._pool.map(fn, items))

    @contextmanager
    def errors(self, doing: str, bucket: str | None = None) -> Iterator[None]:
        """botocore's errors as retentiond's: one line naming the store, the operation and the
        S3 error code; StoreUnreachable when the endpoint or the credentials fail."""
        from botocore import exceptions as bx

        where = f"store {self.store_name}"
        try:
            yield
        except (bx.ConnectionError, bx.HTTPClientError):
            raise StoreUnreachable(f"{where}: cannot reach {self.endpoint} while {doing}; "
                                   "check endpoint_url and the network") from None
        except (bx.NoCredentialsError, bx.PartialCredentialsError,
                bx.CredentialRetrievalError):
            raise StoreUnreachable(f"{where}: no usable S3 credentials while {doing}; set "
                                   "access_key_id and secret_access_key on the store or "
                                   "configure boto3's credential chain") from None
        except bx.ClientError as exc:
            code = code_of(exc)
            if code in BAD_CREDENTIALS:
                raise StoreUnreachable(f"{where}: the S3 credentials were refused ({code}) "
                                       f"while {doing}") from None
            if code == "NoSuchBucket" and bucket is not None:
                raise StoreError(f"{where}: bucket {bucket} does not exist at "
                                 f"{self.endpoint}") from None
            raise StoreError(f"{where}: {code} while {doing}") from None
        except bx.BotoCoreError as exc:
            raise StoreError(f"{where}: {type(exc).__name__} while {doing}") from None

    # -- bucket ---------------------------------------------------------------------------------
    def bucket_exists(self, bucket: str) -> bool:
        """HeadBucket: True, False when there is no such bucket; other refusals raise."""
        from botocore.exceptions import ClientError

        with self.errors(f"reading bucket {bucket}", bucket):
            try:
                self.client.head_bucket(Bucket=bucket)
            except ClientError as exc:
                if code_of(exc) in NO_BUCKET:
                    return False
                raise
        return True

    def versioning(self, bucket: str) -> str | None:
        """``Enabled``, ``Suspended`` or None (never enabled)."""
        with self.errors(f"reading the versioning of bucket {bucket}", bucket):
            status = self.client.get_bucket_versioning(Bucket=bucket).get("Status")
        return str(status) if status else None

    def object_lock(self, bucket: str) -> dict[str, Any] | None:
        """The bucket's Object Lock configuration, None when Object Lock is not enabled."""
        from botocore.exceptions import ClientError

        with self.errors(f"reading the Object Lock configuration of bucket {bucket}", bucket):
            try:
                found = self.client.get_object_lock_configuration(Bucket=bucket)
            except ClientError as exc:
                if code_of(exc) == "ObjectLockConfigurationNotFoundError":
                    return None
                raise
        conf: dict[str, Any] = found.get("ObjectLockConfiguration") or {}
        return conf if conf.get("ObjectLockEnabled") == "Enabled" else None

    # -- reading --------------------------------------------------------------------------------
    def probe(self, bucket: str, prefix: str) -> None:
        """One ListObjectsV2 request of one key: raises when the prefix cannot be listed."""
        with self.errors(f"listing bucket {bucket}", bucket):
            self.client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)

    def pages(self, bucket: str, prefix: str, start_after: str | None = None
              ) -> Iterator[list[Head]]:
        """ListObjectsV2 pages under ``prefix`` (after ``start_after``), in key order."""
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
        if start_after:
            args["StartAfter"] = start_after
        while True:
            with self.errors(f"listing bucket {bucket}", bucket):
                page = self.client.list_objects_v2(**args)
            yield [Head(o["Key"], o["LastModified"], o.get("ETag", ""), o.get("Size", 0))
                   for o in page.get("Contents", ())]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            args.pop("StartAfter", None)
            args["ContinuationToken"] = token

    def version_pages(self, bucket: str, prefix: str
                      ) -> Iterator[list[tuple[str, tuple[Version, ...]]]]:
        """ListObjectVersions pages under ``prefix``, as ``(key, its versions and delete
        markers, newest first)`` in key order; a key split across two pages is held back and
        given whole with the next."""
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
        held: dict[str, list[Version]] = {}
        while True:
            with self.errors(f"listing the versions in bucket {bucket}", bucket):
                page = self.client.list_object_versions(**args)
            for v, marker in [*((v, False) for v in page.get("Versions", ())),
                              *((m, True) for m in page.get("DeleteMarkers", ()))]:
                held.setdefault(str(v["Key"]), []).append(_version(v, marker=marker))
            more = bool(page.get("IsTruncated"))
            keys = sorted(held)
            ready = keys[:-1] if more and keys else keys
            yield [(k, _newest_first(held.pop(k))) for k in ready]
            if not more:
                return
            args["KeyMarker"] = page.get("NextKeyMarker")
            args["VersionIdMarker"] = page.get("NextVersionIdMarker")

    def head(self, bucket: str, key: str, version_id: str | None = None, *,
             lock: bool = False) -> Head | None:
        """HeadObject (of a version); None when there is no such object. ``lock``: read its
        Object Lock headers."""
        from botocore.exceptions import ClientError

        args: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id is not None:
            args["VersionId"] = version_id
        with self.errors(f"reading an object of bucket {bucket}", bucket):
            try:
                h = self.client.head_object(**args)
            except ClientError as exc:
                if code_of(exc) in NO_KEY:
                    return None
                raise
        return Head(key, h["LastModified"], h.get("ETag", ""), h.get("ContentLength", 0),
                    h.get("VersionId"), locked(h, datetime.now(UTC)) if lock else None)

    def versions(self, bucket: str, key: str) -> list[Version]:
        """Every version and delete marker of exactly ``key``, newest first."""
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
        found: list[Version] = []
        while True:
            with self.errors(f"listing the versions of an object of bucket {bucket}", bucket):
                page = self.client.list_object_versions(**args)
            entries = [(v, False) for v in page.get("Versions", ())]
            entries += [(m, True) for m in page.get("DeleteMarkers", ())]
            others = False
            for v, marker in entries:
                if v["Key"] != key:
                    others = True
                    continue
                found.append(_version(v, marker=marker))
            # Keys sharing the prefix sort after it: once one shows, the key's versions are all.
            if others or not page.get("IsTruncated"):
                break
            args["KeyMarker"] = page.get("NextKeyMarker")
            args["VersionIdMarker"] = page.get("NextVersionIdMarker")
        return list(_newest_first(found))

    def tag(self, bucket: str, key: str, name: str) -> str | None:
        """The value of one tag of an object (None without it, or without the object)."""
        from botocore.exceptions import ClientError

        with self.errors(f"reading the tags of an object of bucket {bucket}", bucket):
            try:
                tags = self.client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", ())
            except ClientError as exc:
                if code_of(exc) in NO_KEY:
                    return None
                raise
        return next((str(t["Value"]) for t in tags if t.get("Key") == name), None)

    # -- writing --------------------------------------------------------------------------------
    def delete(self, bucket: str, objects: Iterable[tuple[str, str | None]]
               ) -> dict[str, str]:
        """DeleteObjects, up to :data:`DELETE_BATCH` per request, never with a bypass header.
        Returns the keys S3 refused, each with the error code of its first refused version;
        every other key given was deleted. A key counts as deleted only where the answer names
        it under ``Deleted`` (verbose mode): a key the answer does not name as sent (a server
        that normalises it, or drops it) is refused (``NotConfirmed``), never ledgered as
        gone."""
        batch: list[dict[str, str]] = []
        refused: dict[str, str] = {}

        def flush() -> None:
            with self.errors(f"deleting from bucket {bucket}", bucket):
                answer = self.client.delete_objects(
                    Bucket=bucket, Delete={"Objects": batch, "Quiet": False})
            sent = {(o["Key"], o.get("VersionId")) for o in batch}
            done = {(str(d.get("Key")), d.get("VersionId")) for d in answer.get("Deleted", ())}
            done_keys = {k for k, _ in done}
            for err in answer.get("Errors", ()):
                key = str(err.get("Key"))
                if (key, err.get("VersionId")) in sent or key in {k for k, _ in sent}:
                    refused.setdefault(key, str(err.get("Code") or "Error"))
            for key, version in sent:
                confirmed = (key, version) in done or (version is None and key in done_keys)
                if not confirmed:
                    refused.setdefault(key, "NotConfirmed")
            batch.clear()

        for key, version_id in objects:
            batch.append({"Key": key} if version_id is None
                         else {"Key": key, "VersionId": version_id})
            if len(batch) == DELETE_BATCH:
                flush()
        if batch:
            flush()
        return refused

    def copy(self, source: Head, bucket: str, target_bucket: str, target_key: str
             ) -> str | None:
        """A server-side copy of one object version (metadata and tags with it). Returns the
        S3 error code when S3 refuses this object (the others go on), None when copied."""
        from botocore.exceptions import ClientError

        src: dict[str, str] = {"Bucket": bucket, "Key": source.key}
        if source.version_id is not None:
            src["VersionId"] = source.version_id
        with self.errors(f"copying into bucket {target_bucket}", target_bucket):
            try:
                if source.size < COPY_LIMIT:
                    self.client.copy_object(CopySource=src, Bucket=target_bucket,
                                            Key=target_key)
                else:
                    self.client.copy(src, target_bucket, target_key)
            except ClientError as exc:
                code = code_of(exc)
                if code in BAD_CREDENTIALS or code == "NoSuchBucket":
                    raise
                return code
        return None
