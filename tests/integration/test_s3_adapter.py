"""The ``s3`` adapter through the real CLI (issue 12), against moto's S3 server over HTTP
(``tests/s3server.py``, one per xdist worker; ``S3Server.set_last_modified`` is its test
clock): plan counts, run results, the exact keys left, every version of a disposed key gone,
ledger references equal to recomputed HMACs, ``audit verify``, holds and erasure requests by
a ``{subject}`` path field and by a tag, ``versions: current``, Object Lock (blocked, never
attempted, explained), a key S3 refuses (failed alone), a crash in the middle of a batch,
``backup restored``, isolation and purge, and ``config validate``.

Keys are named like the personal data they stand for (a person's name, an e-mail address):
none of it may reach stdout, stderr or the ledger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from helpers import error_lines, ledger, log_free_lines, record_ref, state_rows

from retentiond.adapters.registry import register, unregister
from retentiond.adapters.s3 import S3Adapter

if TYPE_CHECKING:
    from conftest import S3Server

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=400)
YOUNG = NOW - timedelta(days=3)
PREFIX = "uploads/"
PATH = "{subject}/*.pdf"
TARGET = PREFIX + PATH
RULE = {"id": "old-uploads", "source": "Privacy policy §3", "store": "media",
        "prefix": PREFIX, "path": PATH, "dispose_after": "1y"}
SECRETS = ("maria.schmidt", "Maria Schmidt", "okafor@example.org", "u1001", "u1002", "u1003")

# key -> LastModified: due after a year
OBJECTS: dict[str, datetime] = {
    "uploads/u1001/Maria Schmidt - CV.pdf": OLD,
    "uploads/u1001/contract maria.schmidt.pdf": YOUNG,       # not due yet
    "uploads/u1002/invoice-1.pdf": OLD,
    "uploads/u1002/notes.txt": OLD,                          # not a .pdf: not the rule's
    "uploads/u1003/okafor@example.org.pdf": OLD,
    "uploads/u1003/a/deep.pdf": OLD,                         # * does not cross '/'
    "archive/u1001/old.pdf": OLD,                            # outside the prefix
}
DUE = ["uploads/u1001/Maria Schmidt - CV.pdf", "uploads/u1002/invoice-1.pdf",
       "uploads/u1003/okafor@example.org.pdf"]


class Bucket:
    """A test bucket on the session's server, and what it holds."""

    def __init__(self, server: S3Server, name: str) -> None:
        self.server = server
        self.name = name
        self.client = server.client()

    def put(self, objects: dict[str, datetime], *, versions: int = 1,
            tags: dict[str, str] | None = None) -> None:
        for key in objects:
            for n in range(versions):
                extra = ({"Tagging": f"user-id={tags[key]}"} if tags and key in tags else {})
                self.client.put_object(Bucket=self.name, Key=key, **extra,
                                       Body=f"{key} v{n}: Maria Schmidt +49 170".encode())
        self.server.set_last_modified(self.name, objects)

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def versions(self) -> Counter[str]:
        """Versions and delete markers per key (``key`` for a version, ``key (marker)``)."""
        pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.name)
        found: Counter[str] = Counter()
        for p in pages:
            found.update(v["Key"] for v in p.get("Versions", []))
            found.update(f"{m['Key']} (marker)" for m in p.get("DeleteMarkers", []))
        return found

    def deny_delete(self, key: str) -> None:
        self.client.put_bucket_policy(Bucket=self.name, Policy=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
                "Resource": f"arn:aws:s3:::{self.name}/{key}"}]}))


def make_bucket(server: S3Server, **kw: Any) -> Iterator[Bucket]:
    bucket = Bucket(server, server.new_bucket(**kw))
    yield bucket
    server.drop_bucket(bucket.name)


@pytest.fixture
def plain(s3_server: S3Server) -> Iterator[Bucket]:
    yield from make_bucket(s3_server)


@pytest.fixture
def versioned(s3_server: S3Server) -> Iterator[Bucket]:
    yield from make_bucket(s3_server, versioned=True)


@pytest.fixture
def locked(s3_server: S3Server) -> Iterator[Bucket]:
    yield from make_bucket(s3_server, lock=True)


def setup_policy(ws: Any, bucket: Bucket, rules: list[dict[str, Any]] | None = None,
                 adapter: str = "s3", **top: Any) -> None:
    store = bucket.server.store(bucket.name, adapter=adapter, backups={"retention": "35d"})
    ws.policy({"media": store}, rules or [RULE], **top)


def ok(result: Any) -> Any:
    assert result.code == 0, result.out + result.err
    no_secrets(result)
    return result.json() if result.out.lstrip().startswith("{") else result


def no_secrets(result: Any) -> None:
    for secret in SECRETS:
        assert secret not in result.out + result.err, secret


def refs(ws: Any, keys: list[str], target: str = TARGET) -> list[str]:
    return [record_ref(ws.secret, "media", target, k) for k in keys]


def ledgered(ws: Any, kind: str = "dispose") -> Counter[str]:
    return Counter(r for e in ledger(ws.root / "state.db", kind) for r in e["record_refs"])


def ledger_text(ws: Any) -> str:
    return json.dumps(ledger(ws.root / "state.db"))


# -- plan and run ---------------------------------------------------------------------------------
def test_plan_then_run_removes_every_version_of_the_due_objects(ws: Any,
                                                               versioned: Bucket) -> None:
    versioned.put(OBJECTS, versions=2)
    setup_policy(ws, versioned)
    before = versioned.versions()

    plan = ok(ws.invoke("plan", "--json"))
    [rule] = plan["rules"]
    assert (rule["target"], rule["due"], rule["done"], rule["null_clock"],
            rule["blocked"]) == (TARGET, 3, 0, 0, 0)
    assert versioned.versions() == before  # a dry run changes nothing

    run = ok(ws.invoke("run", "--json"))
    [rule] = run["rules"]
    assert (rule["due"], rule["done"], rule["failed"]) == (3, 3, 0)
    assert versioned.keys() == sorted(set(OBJECTS) - set(DUE))
    # no version and no delete marker of a disposed key is left
    assert versioned.versions() == Counter({k: 2 for k in OBJECTS if k not in DUE})
    assert ledgered(ws) == Counter(refs(ws, DUE))
    for secret in SECRETS:
        assert secret not in ledger_text(ws)
    ok(ws.invoke("audit", "verify"))
    again = ok(ws.invoke("run", "--json"))
    assert again["totals"] == {"due": 0, "held": 0, "kept": 0, "done": 0, "failed": 0}


def test_holds_and_requests_by_path_subject(ws: Any, plain: Bucket) -> None:
    plain.put(OBJECTS)
    setup_policy(ws, plain)
    ok(ws.invoke("hold", "add", "--subject", "u1002", "--kind", "user", "--reason", "case 7"))
    ok(ws.invoke("request", "erase", "u1001", "--kind", "user"))

    plan = ok(ws.invoke("plan", "--json"))
    [rule] = plan["rules"]
    # u1001: both (the young one by the request); u1003 by time; u1002 is held
    assert (rule["due"], rule["held"]) == (3, 1)
    run = ok(ws.invoke("run", "--json"))
    assert (run["rules"][0]["done"], run["rules"][0]["held"]) == (3, 1)
    assert [q["status"] for q in run["requests"]] == ["done"]
    gone = ["uploads/u1001/Maria Schmidt - CV.pdf", "uploads/u1001/contract maria.schmidt.pdf",
            "uploads/u1003/okafor@example.org.pdf"]
    assert plain.keys() == sorted(set(OBJECTS) - set(gone))
    assert ledgered(ws) == Counter(refs(ws, gone))
    ok(ws.invoke("audit", "verify"))


def test_subject_tag_and_versions_current(ws: Any, versioned: Bucket) -> None:
    """Subjects from the tag ``user-id`` (an object without it has none); ``versions:
    current`` only adds delete markers, and plan says so."""
    objects = {"invoices/2019/inv-1.pdf": OLD, "invoices/2019/inv-2.pdf": OLD,
               "invoices/2024/inv-3.pdf": YOUNG, "invoices/2019/untagged.pdf": OLD}
    versioned.put(objects, versions=2, tags={"invoices/2019/inv-1.pdf": "u1001",
                                             "invoices/2019/inv-2.pdf": "u1002",
                                             "invoices/2024/inv-3.pdf": "u1002"})
    rule = {"id": "invoices", "store": "media", "prefix": "invoices/", "subject_tag": "user-id",
            "versions": "current", "dispose_after": "10y"}
    setup_policy(ws, versioned, [rule])
    ok(ws.invoke("request", "erase", "u1002", "--kind", "user"))

    plan = ok(ws.invoke("plan", "--json"))
    [got] = plan["rules"]
    assert got["due"] == 2
    assert got["warnings"] == [
        f"rules[0] (invoices).versions: current: a disposal only adds a delete marker; every "
        f"earlier version of a disposed object stays in bucket {versioned.name} (versioning "
        "Enabled); versions: all removes them"]
    text = ok(ws.invoke("plan"))
    assert "warning: rules[0] (invoices).versions: current: a disposal only adds a delete " \
           "marker" in text.out

    run = ok(ws.invoke("run", "--json"))
    assert run["rules"][0]["done"] == 2
    erased = ["invoices/2019/inv-2.pdf", "invoices/2024/inv-3.pdf"]
    assert versioned.keys() == sorted(set(objects) - set(erased))
    assert versioned.versions() == Counter(
        {**dict.fromkeys(objects, 2), **{f"{k} (marker)": 1 for k in erased}})
    assert ledgered(ws) == Counter(refs(ws, erased, "invoices/"))


# -- Object Lock ----------------------------------------------------------------------------------
def test_objects_under_object_lock_are_blocked_never_attempted(ws: Any, locked: Bucket) -> None:
    locked.put(OBJECTS, versions=2)
    c = locked.client
    hold, kept = DUE[0], DUE[1]
    c.put_object_legal_hold(Bucket=locked.name, Key=hold, LegalHold={"Status": "ON"})
    older = [v["VersionId"] for v in c.list_object_versions(
        Bucket=locked.name, Prefix=kept)["Versions"] if not v["IsLatest"]]
    c.put_object_retention(Bucket=locked.name, Key=kept, VersionId=older[0], Retention={
        "Mode": "GOVERNANCE", "RetainUntilDate": NOW + timedelta(days=3650)})
    setup_policy(ws, locked)
    before = locked.versions()

    plan = ok(ws.invoke("plan", "--json"))
    [rule] = plan["rules"]
    assert (rule["due"], rule["blocked"], rule["blocked_by"]) == (
        1, 2, [{"constraint": "object-lock", "table": locked.name, "count": 2}])
    text = ok(ws.invoke("plan"))
    assert (f"rule old-uploads: 2 records blocked by Object Lock (object-lock on "
            f"{locked.name}: 2), not attempted") in text.out

    explain = ws.invoke("explain", "--rule", "old-uploads", "--key", kept, "--json")
    assert explain.code == 0, explain.err  # it shows the key it was given, nothing else
    explained = explain.json()
    assert (explained["decision"], explained["blocked_by"]) == (
        "blocked", [{"constraint": "object-lock", "table": locked.name}])
    text = ws.invoke("explain", "--rule", "old-uploads", "--key", kept)
    assert f"  blocked by: Object Lock in bucket {locked.name}\n" in text.out

    run = ok(ws.invoke("run", "--json"))
    [rule] = run["rules"]
    assert (rule["done"], rule["failed"], rule["blocked"]) == (1, 0, 2)
    assert locked.keys() == sorted(set(OBJECTS) - {DUE[2]})
    assert locked.versions() == before - Counter({DUE[2]: 2})  # locked keys: every version
    assert ledgered(ws) == Counter(refs(ws, [DUE[2]]))


# -- a key S3 refuses -----------------------------------------------------------------------------
def test_a_key_s3_refuses_fails_alone(ws: Any, plain: Bucket) -> None:
    plain.put(OBJECTS)
    plain.deny_delete(DUE[1])
    setup_policy(ws, plain)

    run = ws.invoke("run", "--json")
    assert run.code == 1, run.err
    no_secrets(run)
    [rule] = run.json()["rules"]
    assert (rule["due"], rule["done"], rule["failed"]) == (3, 2, 1)
    assert rule["error"] == "1 record failed: AccessDenied"
    assert plain.keys() == sorted(set(OBJECTS) - {DUE[0], DUE[2]})
    assert ledgered(ws) == Counter(refs(ws, [DUE[0], DUE[2]]))

    plain.client.delete_bucket_policy(Bucket=plain.name)
    again = ok(ws.invoke("run", "--json"))
    assert again["rules"][0]["done"] == 1
    assert ledgered(ws) == Counter(refs(ws, DUE))
    ok(ws.invoke("audit", "verify"))


# -- crash in the middle of a batch ---------------------------------------------------------------
CRASH = """
import os, sys
from retentiond.adapters.s3 import S3Adapter
from retentiond.adapters.registry import register
from retentiond.cli import main

class Crash(S3Adapter):
    calls = 0

    def remove(self, bucket, items):
        Crash.calls += 1
        if Crash.calls == 2:  # the second batch: one object gone, then the process dies
            super().remove(bucket, list(items)[:1])
            os._exit(9)
        return super().remove(bucket, items)

register("s3crash", Crash)
main(sys.argv[1:])
"""


@pytest.fixture
def crash_adapter() -> Iterator[None]:
    register("s3crash", S3Adapter)  # what the next, healthy run uses
    try:
        yield
    finally:
        unregister("s3crash")


def test_a_crash_mid_batch_is_reconciled(ws: Any, plain: Bucket, crash_adapter: None) -> None:
    many = {f"uploads/u{1000 + i}/scan-{i}.pdf": OLD for i in range(5)}
    plain.put(many)
    due = sorted(many)
    setup_policy(ws, plain, adapter="s3crash", batch_size=2)
    env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
    proc = subprocess.run([sys.executable, "-c", CRASH, "--config", str(ws.config), "run"],
                          capture_output=True, text=True, timeout=120, check=False, env=env)
    assert proc.returncode == 9, proc.stderr
    assert plain.keys() == due[3:]
    assert ledgered(ws) == Counter(refs(ws, due[:2]))  # batch 2's entry never written
    [left] = state_rows(ws.root / "state.db", "select record_refs from pending")
    assert sorted(json.loads(left["record_refs"])) == sorted(refs(ws, due[2:4]))

    doc = ok(ws.invoke("run", "--json"))
    assert doc["totals"]["done"] == 2
    assert plain.keys() == []
    assert ledgered(ws) == Counter(refs(ws, due))  # each exactly once
    assert state_rows(ws.root / "state.db", "select id from pending") == []
    reconciled = [e for e in ledger(ws.root / "state.db", "dispose")
                  if json.loads(e["detail"]).get("reconciled")]
    assert [e["record_refs"] for e in reconciled] == [refs(ws, due[2:3])]
    ok(ws.invoke("audit", "verify"))


# -- backup restored ------------------------------------------------------------------------------
def test_backup_restored_replays_the_disposals_since(ws: Any, plain: Bucket) -> None:
    plain.put(OBJECTS)
    setup_policy(ws, plain)
    taken_at = datetime.now(UTC) - timedelta(seconds=1)
    ok(ws.invoke("run", "--json"))
    assert plain.keys() == sorted(set(OBJECTS) - set(DUE))

    plain.put(dict.fromkeys(DUE[:2], OLD))  # the restore brings two of them back
    result = ok(ws.invoke("backup", "restored", "--store", "media", "--taken-at",
                          taken_at.isoformat(), "--json"))
    assert (result["total"], result["reapplied"]) == (
        2, [{"rule": "old-uploads", "action": "delete", "count": 2, "held": 0}])
    assert plain.keys() == sorted(set(OBJECTS) - set(DUE))
    assert ledgered(ws, "replay") == Counter(refs(ws, DUE[:2]))
    ok(ws.invoke("audit", "verify"))


# -- isolation ------------------------------------------------------------------------------------
def test_isolate_then_purge(ws: Any, versioned: Bucket) -> None:
    versioned.put(OBJECTS, versions=2)
    rule = {**RULE, "action": "isolate", "isolate": {"for": "1d"}}
    other = {"id": "everything", "store": "media", "path": "**", "dispose_after": "10y"}
    setup_policy(ws, versioned, [rule, other])
    run = ok(ws.invoke("run", "--json"))
    assert run["rules"][0]["done"] == 3
    live = sorted(set(OBJECTS) - set(DUE))
    copies = [k for k in versioned.keys() if k not in live]  # noqa: SIM118 - not a dict
    [stamp] = {c.split("/")[2] for c in copies}
    assert copies == [f".retentiond-isolated/old-uploads/{stamp}/{k}" for k in DUE]
    purge_after = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    [entry] = ledger(ws.root / "state.db", "dispose")
    assert (entry["action"], entry["record_refs"]) == ("isolate", refs(ws, DUE))
    recorded = datetime.fromisoformat(json.loads(entry["detail"])["purge_after"])
    assert purge_after - timedelta(seconds=1) < recorded <= purge_after  # rounded up
    # every version of the originals is gone; each copy is one version
    assert versioned.versions() == Counter({**dict.fromkeys(live, 2), **dict.fromkeys(copies, 1)})
    # No rule reads isolated objects: "everything" sees only the live ones, less the young
    # upload that old-uploads (its earlier due date) takes first.
    later = (NOW + timedelta(days=3653 + 10)).isoformat()
    plan = ok(ws.invoke("plan", "--json", "--as-of", later))
    assert plan["rules"][1]["due"] == len(live) - 1
    assert plan["rules"][0]["purged"] == 3  # by then
    assert ok(ws.invoke("plan", "--json"))["rules"][0]["purged"] == 0  # not yet

    # Time passes: the copies' purge time is part of their keys.
    c = versioned.client
    for old in copies:
        c.copy_object(Bucket=versioned.name, Key=old.replace(stamp, "20200101T000000Z"),
                      CopySource={"Bucket": versioned.name, "Key": old})
        for v in c.list_object_versions(Bucket=versioned.name, Prefix=old)["Versions"]:
            c.delete_object(Bucket=versioned.name, Key=old, VersionId=v["VersionId"])
    assert ok(ws.invoke("plan", "--json"))["rules"][0]["purged"] == 3
    doc = ok(ws.invoke("run", "--json"))
    assert doc["rules"][0]["purged"] == 3
    assert versioned.versions() == Counter(dict.fromkeys(live, 2))  # every version of a copy
    assert ledgered(ws, "purge") == Counter(refs(ws, DUE))
    ok(ws.invoke("audit", "verify"))


# -- config validate ------------------------------------------------------------------------------
def test_config_validate_shows_the_bucket(ws: Any, locked: Bucket) -> None:
    setup_policy(ws, locked)
    doc = ok(ws.invoke("config", "validate", "--json"))
    assert doc["store_details"] == {"media": {
        "bucket": locked.name, "endpoint": locked.server.endpoint, "versioning": "Enabled",
        "object_lock": "enabled"}}
    text = ok(ws.invoke("config", "validate"))
    assert (f"store media: bucket {locked.name}, endpoint {locked.server.endpoint}, "
            "versioning Enabled, object_lock enabled") in text.out


def test_config_validate_refuses_a_missing_bucket_and_anonymize(ws: Any,
                                                                s3_server: S3Server) -> None:
    rules = [RULE, {**RULE, "id": "scrub", "action": "anonymize",
                    "anonymize": {"marker": "done_at", "columns": {"x": {"strategy": "null"}}}}]
    ws.policy({"media": s3_server.store("no-such-bucket")}, rules)
    result = ws.invoke("config", "validate")
    assert result.code == 2, result.err
    assert error_lines(result.err) == [
        f"error: rules[0] (old-uploads).store: bucket no-such-bucket does not exist at "
        f"{s3_server.endpoint}; create it or fix stores.media.bucket",
        "error: rules[1] (scrub).action: adapter 's3' cannot anonymize; it supports delete, "
        "isolate"]
    assert "Traceback" not in result.err


def test_config_validate_names_every_rule_problem(ws: Any, plain: Bucket) -> None:
    rules = [
        {**RULE, "action": "isolate", "isolate": {"for": "30d", "bucket": "no-quarantine"}},
        {"id": "peek", "store": "media", "prefix": ".retentiond-isolated/old-uploads/",
         "dispose_after": "1d"},
        {"id": "columns", "store": "media", "prefix": "x/", "key": "id", "subject": "user_id",
         "clock": "created_at", "match": {"status": "closed"}, "dispose_after": "1d"},
        {"id": "two-subjects", "store": "media", "path": "{subject}/*", "subject_tag": "user"},
    ]
    setup_policy(ws, plain, rules)
    result = ws.invoke("config", "validate")
    assert result.code == 2, result.err
    assert error_lines(result.err) == [
        f"error: rules[0] (old-uploads).isolate.bucket: bucket no-quarantine does not exist "
        f"at {plain.server.endpoint}",
        "error: rules[1] (peek).prefix: .retentiond-isolated/ holds isolated objects; no rule "
        "may read it",
        "error: rules[2] (columns).clock: the s3 adapter's clock is last_modified (the "
        "default) or a {clock:FORMAT} field in path",
        "error: rules[2] (columns).key: the s3 adapter's key is the object key; remove key",
        "error: rules[2] (columns).match: the s3 adapter cannot filter on columns; narrow the "
        "rule with prefix and path",
        "error: rules[2] (columns).subject: the s3 adapter reads the subject from a {subject} "
        "field in path or from an object tag (subject_tag), not from a column",
        "error: rules[3] (two-subjects).subject_tag: the path's {subject} field already names "
        "the subject; use one of them"]


def test_an_unreachable_endpoint_is_exit_3(ws: Any) -> None:
    store = {"adapter": "s3", "bucket": "media", "endpoint_url": "http://127.0.0.1:1",
             "region": "us-east-1", "access_key_id": "k",
             "secret_access_key": "hunter2-s3-secret"}
    ws.policy({"media": store}, [RULE])
    result = ws.invoke("plan")
    assert result.code == 3, result.err
    assert log_free_lines(result.err)[-1] == (
        "error: store media: cannot reach http://127.0.0.1:1 while reading bucket media; "
        "check endpoint_url and the network")
    assert "hunter2" not in result.out + result.err


# -- credentials ----------------------------------------------------------------------------------
NO_AMBIENT = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
              "AWS_CONFIG_FILE": "/nonexistent"}


def test_credentials_from_the_policy_or_boto3s_chain(ws: Any, plain: Bucket,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    plain.put(OBJECTS)
    store = {"adapter": "s3", "bucket": plain.name, "endpoint_url": plain.server.endpoint,
             "region": "us-east-1"}
    ws.policy({"media": store}, [RULE])
    none = ws.invoke("plan", env=NO_AMBIENT)
    assert none.code == 3, none.err
    assert log_free_lines(none.err)[-1] == (
        f"error: store media: no usable S3 credentials while reading bucket {plain.name}; set "
        "access_key_id and secret_access_key on the store or configure boto3's credential "
        "chain")

    chain = ws.invoke("plan", "--json", env={**NO_AMBIENT, "AWS_ACCESS_KEY_ID": "from-env",
                                             "AWS_SECRET_ACCESS_KEY": "env-secret-1"})
    assert ok(chain)["rules"][0]["due"] == 3

    ws.policy({"media": {**store, "access_key_id": "media-key",
                         "secret_access_key": {"env": "MEDIA_S3_SECRET"}}}, [RULE])
    given = ws.invoke("plan", "--json", env={**NO_AMBIENT, "MEDIA_S3_SECRET": "s3cr3t-9f2"})
    assert ok(given)["rules"][0]["due"] == 3
    assert "s3cr3t-9f2" not in given.out + given.err
