"""The namespace cache follows the fake through adds, label changes, deletes, 410s, dropped watches and 5xx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from nri_zeropod.kube import NamespaceCache
from tests.fakekube import FakeKube

from .conftest import WATCH, client_for
from .util import run, until

Body = Callable[[NamespaceCache], Awaitable[None]]
ENABLED = "nri-zeropod.dev/enabled"


def ns_labels(name: str, **labels: str) -> dict[str, str]:
    """What the API server stores: the given labels plus kubernetes.io/metadata.name."""
    return {"kubernetes.io/metadata.name": name, **labels}


def with_cache(kube: FakeKube, body: Body) -> None:
    async def main() -> None:
        async with client_for(kube) as client:
            cache = NamespaceCache(client, settings=WATCH)
            task = asyncio.create_task(cache.run())
            try:
                await body(cache)
                assert not task.done(), "run() must never end by itself"
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    run(main())


def test_follows_adds_label_changes_and_deletes(kube: FakeKube) -> None:
    kube.create_namespace("a", {ENABLED: "true"})

    async def body(cache: NamespaceCache) -> None:
        assert cache.labels("a") is None and not cache.ready  # nothing before the first list
        assert await cache.wait_ready(5)
        assert cache.labels("a") == ns_labels("a", **{ENABLED: "true"})
        await until(lambda: kube.watch_count() == 1)
        kube.create_namespace("b")
        await until(lambda: cache.labels("b") == ns_labels("b"))
        kube.set_namespace_labels("b", {ENABLED: "true"})
        await until(lambda: cache.labels("b") == ns_labels("b", **{ENABLED: "true"}))
        kube.set_namespace_labels("a", {ENABLED: None})
        await until(lambda: cache.labels("a") == ns_labels("a"))
        kube.delete_namespace("b")
        await until(lambda: cache.labels("b") is None)
        assert cache.lists == 1 and cache.names() == ["a"]
        copy = cache.labels("a")
        assert copy is not None
        copy["x"] = "y"  # callers get copies
        assert cache.labels("a") == ns_labels("a")

    with_cache(kube, body)
    watch = kube.requests("GET", "/api/v1/namespaces")[1]
    assert watch.query["watch"] == "true" and watch.query["allowWatchBookmarks"] == "true"
    assert watch.query["resourceVersion"].isdigit() and watch.query["timeoutSeconds"] == str(WATCH.timeout_seconds)


def test_a_dropped_watch_resumes_from_the_last_version_without_listing(kube: FakeKube) -> None:
    kube.create_namespace("a")

    async def body(cache: NamespaceCache) -> None:
        await cache.wait_ready(5)
        await until(lambda: kube.watch_count() == 1)
        kube.set_namespace_labels("a", {"v": "1"})
        await until(lambda: cache.labels("a") == ns_labels("a", v="1"))
        seen = cache.resource_version
        kube.drop_watches()
        kube.create_namespace("while-away")  # happens between the two watches
        await until(lambda: cache.labels("while-away") == ns_labels("while-away"))
        assert cache.lists == 1
        resumed = [r for r in kube.requests("GET", "/api/v1/namespaces") if r.query.get("watch")][-1]
        assert resumed.query["resourceVersion"] == seen

    with_cache(kube, body)


def test_410_gone_relists_and_drops_what_vanished(kube: FakeKube) -> None:
    kube.create_namespace("a")
    kube.create_namespace("doomed")

    async def body(cache: NamespaceCache) -> None:
        await cache.wait_ready(5)
        await until(lambda: kube.watch_count() == 1)
        # The test body runs on the client's loop: nothing below reaches the cache before the next await.
        kube.drop_watches()
        kube.delete_namespace("doomed")
        kube.create_namespace("new", {"l": "1"})
        kube.compact()  # and the history is gone: the resumed watch gets 410
        await until(lambda: cache.lists == 2, what="a second list")
        assert cache.labels("doomed") is None and cache.labels("new") == ns_labels("new", l="1")
        assert cache.last_error is not None and cache.ready

    with_cache(kube, body)


def test_410_as_an_http_answer_relists_too() -> None:
    with FakeKube(gone_as_event=False) as kube:
        kube.create_namespace("a")

        async def body(cache: NamespaceCache) -> None:
            await cache.wait_ready(5)
            await until(lambda: kube.watch_count() == 1)
            # The test body runs on the client's loop: nothing below reaches the cache before the next await.
            kube.drop_watches()
            kube.create_namespace("b")
            kube.compact()
            await until(lambda: cache.lists == 2)
            assert cache.labels("b") == ns_labels("b")
            await until(lambda: kube.watch_count() == 1)

        with_cache(kube, body)


def test_bookmarks_move_the_resource_version(kube: FakeKube) -> None:
    kube.create_namespace("a")

    async def body(cache: NamespaceCache) -> None:
        await cache.wait_ready(5)
        await until(lambda: kube.watch_count() == 1)
        before = cache.resource_version
        kube.create_pod("a", "p")  # a change the namespace watch does not see
        kube.send_bookmarks()
        await until(lambda: cache.resource_version != before)
        assert int(cache.resource_version or 0) == int(kube.call(lambda: kube.store.rv))
        kube.drop_watches()
        kube.compact()  # history gone, but the bookmark's version is current: no 410, no list
        await until(lambda: kube.watch_count() == 1)
        kube.create_namespace("b")
        await until(lambda: cache.labels("b") == ns_labels("b"))
        assert cache.lists == 1

    with_cache(kube, body)


def test_survives_500s_on_list_and_becomes_ready(kube: FakeKube) -> None:
    kube.create_namespace("a")
    kube.fail("/api/v1/namespaces", code=500, times=3, watch=False)

    async def body(cache: NamespaceCache) -> None:
        assert await cache.wait_ready(5)
        assert cache.labels("a") == ns_labels("a")
        assert cache.last_error is not None and "500" in str(cache.last_error)

    with_cache(kube, body)
    assert [r.code for r in kube.requests("GET", "/api/v1/namespaces")][:4] == [500, 500, 500, 200]


def test_lookups_never_wait_on_the_network(kube: FakeKube) -> None:
    kube.create_namespace("a", {"k": "v"})

    async def body(cache: NamespaceCache) -> None:
        await cache.wait_ready(5)
        await until(lambda: kube.watch_count() == 1)
        kube.hang("/api/v1/namespaces", times=100)  # the API stops answering...
        kube.drop_watches()
        started = time.perf_counter()
        for _ in range(10_000):
            assert cache.labels("a") == ns_labels("a", k="v")  # ...and lookups still answer from memory
            assert cache.labels("unknown") is None
        assert time.perf_counter() - started < 1.0

    with_cache(kube, body)
