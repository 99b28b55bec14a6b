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

A second one seeds large data sets fast (``bench/s3_delete.py``): ``POST
/_retentiond/put-objects`` with ``[[bucket, key, iso8601], ...]`` creates each object (a short
body) in the backend and sets its ``LastModified``, without an HTTP request per object.
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
SEED_ROUTE = "/_retentiond/put-objects"

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _set_last_modified(items: list[list[str]]) -> int:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
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


def _put_objects(items: list[list[str]]) -> int:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for bucket_name, key, _ in items:
        backend.put_object(bucket_name, key, f"object {key}".encode())
    return _set_last_modified(items)


ROUTES = {CLOCK_ROUTE: _set_last_modified, SEED_ROUTE: _put_objects}


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
