"""A real S3-compatible HTTP endpoint for the tests and ``bench/s3_delete.py``: moto's server
(the same WSGI application as ``python -m moto.server``), run in this process.

Usage: ``python tests/s3server.py [--host 127.0.0.1]``. It binds a free port and prints
``PORT <n>`` on its first line of stdout once it accepts connections; it stops on SIGTERM.

One test-only route is added in front of moto, the **test clock**:
``POST /_retentiond/last-modified`` with a JSON body ``[[bucket, key, iso8601], ...]`` sets
the ``LastModified`` of each object's current version in the server's backend, as
``os.utime`` sets a file's mtime (its older versions move along, one second apart each, so
that they stay older: moto orders versions by LastModified). A client cannot set
``LastModified`` through the S3 API, and the adapter contract moves a record's clock;
retentiond itself never calls this route.

Two more save the tests and the benchmark an HTTP request per object: ``POST
/_retentiond/put-objects`` with ``[[bucket, key, iso8601, {tag: value}?], ...]`` creates each
object (a short body, the tags if given) in the backend and sets its ``LastModified``; ``POST
/_retentiond/drop-buckets`` with ``[bucket, ...]`` removes buckets with everything in them
(Object Lock included: a test's COMPLIANCE retention must not outlive it).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

CLOCK_ROUTE = "/_retentiond/last-modified"

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _set_last_modified(items: list[list[str]]) -> int:
    backend = _backend()
    done = 0
    for bucket_name, key, at in items:
        bucket = backend.get_bucket(bucket_name)
        versions = bucket.keys.getlist(key)  # oldest first
        if not versions:
            continue
        # moto keeps naive UTC times, and takes the newest LastModified for the current
        # version: older versions move along, one second apart, to stay older.
        when = datetime.fromisoformat(at).astimezone(UTC).replace(tzinfo=None)
        for age, version in enumerate(reversed(versions)):
            version.last_modified = when - timedelta(seconds=age)
        done += 1
    return done


def _backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def _put_objects(items: list[list[Any]]) -> int:
    backend = _backend()
    for item in items:
        obj = backend.put_object(item[0], item[1], f"object {item[1]}".encode())
        if len(item) > 3 and item[3]:
            backend.put_object_tagging(obj, item[3])
    return _set_last_modified([item[:3] for item in items])


def _drop_buckets(names: list[str]) -> int:
    from moto.s3.models import s3_backends

    backend = _backend()
    dropped = 0
    for name in names:
        bucket = backend.buckets.pop(name, None)
        s3_backends.bucket_accounts.pop(name, None)
        if bucket is not None:
            for _, versions in bucket.keys.iterlists():
                for version in versions:
                    if hasattr(version, "dispose"):
                        version.dispose()
            dropped += 1
    return dropped


ROUTES: dict[str, Callable[[Any], int]] = {
    CLOCK_ROUTE: _set_last_modified, "/_retentiond/put-objects": _put_objects,
    "/_retentiond/drop-buckets": _drop_buckets}


def with_test_clock(app: Wsgi) -> Wsgi:
    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        route = ROUTES.get(environ.get("PATH_INFO", ""))
        if route is None or environ.get("REQUEST_METHOD") != "POST":
            return app(environ, start_response)
        size = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            done = route(json.loads(environ["wsgi.input"].read(size)))
        except Exception as exc:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [f"{type(exc).__name__}: {exc}".encode()]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"updated": done}).encode()]

    return wrapped


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    app = with_test_clock(DomainDispatcherApplication(create_backend_app))
    server = make_server(args.host, args.port, app, threaded=True,
                         request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"PORT {server.server_port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
