"""The ``s3`` adapter where a review found objects deleted that must stay (issue 12), against
moto's S3 server over HTTP:

* two rules over the same objects written differently (``prefix: inv/`` and ``prefix: inv/,
  path: "{subject}/*.pdf"``): the first one's floor protects the second one's records;
* a store listing a whole bucket never disposes what another store on the same bucket
  isolated;
* the fast path deletes what one listing page picked before listing on: an object rewritten
  while later pages are listed stays;
* a key whose deletion the server does not confirm as sent is never ledgered as disposed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from test_s3_adapter import NOW, OLD, YOUNG, Bucket, ledgered, make_bucket, ok, refs, setup_policy

from retentiond.adapters.registry import register, unregister
from retentiond.adapters.s3 import S3Adapter

if TYPE_CHECKING:
    from conftest import S3Server

AFTER_FIRST_PAGE: list[Callable[[], None]] = []


class SlowList(S3Adapter):
    """The s3 adapter, with something happening right after its first listing page."""

    def connect(self) -> None:
        super().connect()
        pages = self.s3.pages

        def hooked(bucket: str, prefix: str, start_after: str | None = None) -> Iterator[Any]:
            for i, page in enumerate(pages(bucket, prefix, start_after)):
                yield page
                if i == 0 and AFTER_FIRST_PAGE:
                    AFTER_FIRST_PAGE.pop()()

        self.s3.pages = hooked  # type: ignore[method-assign]


@pytest.fixture
def plain(s3_server: S3Server) -> Iterator[Bucket]:
    yield from make_bucket(s3_server)


def live(bucket: Bucket) -> list[str]:
    return bucket.keys()


@pytest.fixture
def slow_list() -> Iterator[None]:
    register("s3slow", SlowList)
    yield
    unregister("s3slow")
    AFTER_FIRST_PAGE.clear()


def test_a_floor_protects_objects_another_rule_names_differently(ws: Any,
                                                                 plain: Bucket) -> None:
    objects = {"inv/u1/a.pdf": OLD, "inv/u2/b.pdf": OLD, "tmp/u1/c.pdf": OLD}
    plain.put(objects)
    setup_policy(ws, plain, [
        {"id": "keep", "store": "media", "prefix": "inv/", "keep_for": "10y",
         "dispose_after": "10y"},
        {"id": "del", "store": "media", "prefix": "inv/", "path": "{subject}/*.pdf",
         "dispose_after": "1y"},
        {"id": "tmp", "store": "media", "prefix": "tmp/", "dispose_after": "1y"}])
    run = ok(ws.invoke("run", "--json"))
    done = {r["rule"]: r.get("done", 0) for r in run["rules"]}
    assert done == {"keep": 0, "del": 0, "tmp": 1}  # the floor of keep; tmp/ is nobody else's
    assert live(plain) == ["inv/u1/a.pdf", "inv/u2/b.pdf"]


def test_another_stores_isolated_copies_in_the_same_bucket_stay(ws: Any,
                                                                plain: Bucket) -> None:
    plain.put({"a/u1/x.pdf": OLD, "b/keep.txt": YOUNG})
    server = plain.server
    ws.policy({"sa": server.store(plain.name, prefix="a/"), "sb": server.store(plain.name)}, [
        {"id": "iso", "store": "sa", "path": "{subject}/*.pdf", "dispose_after": "1y",
         "action": "isolate", "isolate": {"for": "1y"}},
        {"id": "all", "store": "sb", "path": "**", "dispose_after": "1d"}])
    ok(ws.invoke("run", "--json"))
    copies = [k for k in live(plain) if ".retentiond-isolated/" in k]
    assert len(copies) == 1
    # Days later the copy is older than the whole-bucket rule's 1 day: still not its record.
    server.set_last_modified(plain.name, {k: NOW - timedelta(days=5) for k in copies})
    run = ok(ws.invoke("run", "--json"))
    assert {r["rule"]: r.get("done", 0) for r in run["rules"]} == {"iso": 0, "all": 0}
    assert [k for k in live(plain) if ".retentiond-isolated/" in k] == copies


def test_an_object_rewritten_while_later_pages_are_listed_stays(ws: Any, plain: Bucket,
                                                               slow_list: None) -> None:
    items = [(f"p/{i:05d}", YOUNG, None) for i in range(2500)]
    items[0] = ("p/00000", OLD, None)  # due, on the first page
    items[-1] = ("p/02499", OLD, None)  # due, on the third
    plain.server.seed(plain.name, items)
    setup_policy(ws, plain, [{"id": "r", "store": "media", "prefix": "p/",
                              "dispose_after": "1y"}], adapter="s3slow")

    def rewrite() -> None:  # the application writes p/00000 anew
        plain.client.put_object(Bucket=plain.name, Key="p/00000", Body=b"fresh upload")

    AFTER_FIRST_PAGE.append(rewrite)
    run = ok(ws.invoke("run", "--json"))
    # The first page's batch was deleted before the rewrite could happen; the rewrite then
    # brought p/00000 back as a new object, which the sweep (already past it) leaves alone.
    assert run["rules"][0]["done"] == 2
    assert "p/00000" in live(plain) and "p/02499" not in live(plain)
    assert ledgered(ws) == Counter(refs(ws, ["p/00000", "p/02499"], "p/"))


@pytest.mark.parametrize("key", ["k/cr\rx", "k/plain"])
def test_a_refused_key_is_never_ledgered(ws: Any, plain: Bucket, key: str) -> None:
    plain.server.seed(plain.name, [(key, OLD, None), ("k/other", OLD, None)])
    plain.deny_delete(key)
    setup_policy(ws, plain, [{"id": "r", "store": "media", "prefix": "k/",
                              "dispose_after": "1y"}])
    run = ws.invoke("run", "--json")
    assert run.code == 1, run.out + run.err
    assert key in live(plain) and "k/other" not in live(plain)
    assert ledgered(ws) == Counter(refs(ws, ["k/other"], "k/"))
    assert run.json()["rules"][0]["failed"] == 1


def test_a_prefix_without_a_slash_is_warned_about(ws: Any, plain: Bucket) -> None:
    """``prefix: inv`` also selects ``inv-old/...``: plan selects it and warns (a prefix such
    as ``logs/2019-`` is legitimate, so it is a warning, not a refusal); ``inv/`` does not."""
    plain.put({"inv/a.pdf": OLD, "inv-old/b.pdf": OLD})
    setup_policy(ws, plain, [{"id": "inv", "store": "media", "prefix": "inv",
                              "dispose_after": "1y"}])
    [got] = ok(ws.invoke("plan", "--json"))["rules"]
    assert got["due"] == 2
    assert got["warnings"] == [
        "rules[0] (inv).prefix: inv does not end in /: it also selects keys that merely begin "
        "with it (inv-old/..., inv2/...); end it with / to select one folder"]
    setup_policy(ws, plain, [{"id": "inv", "store": "media", "prefix": "inv/",
                              "dispose_after": "1y"}])
    [got] = ok(ws.invoke("plan", "--json"))["rules"]
    assert (got["due"], got.get("warnings", [])) == (1, [])
