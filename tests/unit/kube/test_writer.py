"""The background writer against the fake: retries, back-off, order, coalescing, events, resizes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from nri_zeropod.kube import ORIGINAL_REQUESTS, HttpSettings, PodRef, Status, Writer, WriterSettings
from tests.fakekube import FakeKube

from .conftest import FAST, HTTP, WRITER, client_for
from .util import run, until

POD = "/api/v1/namespaces/ns/pods/p"
REF = PodRef("ns", "p")
RES = {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}


def with_writer(
    kube: FakeKube, body: Callable[[Writer], Awaitable[None]], *, settings: WriterSettings = WRITER, http: HttpSettings = HTTP
) -> Writer:
    async def main() -> Writer:
        async with client_for(kube, http=http) as client:
            writer = Writer(client, settings=settings, node="node-1")
            try:
                await body(writer)
                assert await writer.drain(10), "writes left pending"
            finally:
                await writer.close()
            return writer

    return run(main())


def setup(kube: FakeKube, **pod: Any) -> None:
    kube.create_namespace("ns")
    kube.create_pod("ns", "p", containers=[{"name": "app", "image": "nginx", "resources": RES}], **pod)


def labels(kube: FakeKube) -> dict[str, str]:
    p = kube.pod("ns", "p")
    assert p is not None
    return dict(p["metadata"].get("labels") or {})


def test_status_labels_and_event_fields(kube: FakeKube) -> None:
    setup(kube)
    uid = (kube.pod("ns", "p") or {})["metadata"]["uid"]

    async def body(w: Writer) -> None:
        ref = PodRef("ns", "p", uid)
        w.set_status(ref, "app", Status.SCALED_DOWN, zeropod_label=True)
        w.event(ref, reason="ScaledDown", message="Scaled down container app in 120ms", container="app")
        w.event(ref, reason="RestoreFailed", message="x" * 5000, type="Warning")
        with pytest.raises(ValueError):
            w.event(ref, reason="Bad", message="", type="Error")

    with_writer(kube, body)
    assert labels(kube) == {"status.nri-zeropod.dev/app": "SCALED_DOWN", "status.zeropod.ctrox.dev/app": "SCALED_DOWN"}
    first, second = kube.events("ns")
    assert first["metadata"]["name"].startswith("p.") and first["metadata"]["generateName"] == "p."
    assert first["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "namespace": "ns", "name": "p", "uid": uid, "fieldPath": "spec.containers{app}"}
    assert (first["reason"], first["type"], first["count"]) == ("ScaledDown", "Normal", 1)
    assert first["source"] == {"component": "nri-zeropod", "host": "node-1"}
    assert (first["reportingComponent"], first["reportingInstance"]) == ("nri-zeropod", "node-1")
    assert first["firstTimestamp"] == first["lastTimestamp"] and first["firstTimestamp"].endswith("Z")
    assert "fieldPath" not in second["involvedObject"] and second["type"] == "Warning" and len(second["message"]) == 1024


def test_retries_through_500s_and_transport_errors(kube: FakeKube) -> None:
    setup(kube)
    kube.fail(POD, code=500, times=2, method="PATCH")
    kube.close_connection(POD, method="PATCH")

    writer = with_writer(kube, calls(lambda w: w.set_status(REF, "app", Status.RUNNING)))
    assert labels(kube) == {"status.nri-zeropod.dev/app": "RUNNING"}
    assert [r.code for r in kube.requests("PATCH", POD)] == [500, 500, None, 200]
    # the closed connection was a pooled one: the HTTP layer resent at once, not the writer
    assert writer.stats.retries == 2 and writer.stats.done == 1


def test_429_waits_at_least_retry_after(kube: FakeKube) -> None:
    setup(kube)
    kube.fail(POD, code=429, retry_after=0.3, method="PATCH")
    with_writer(kube, calls(lambda w: w.set_status(REF, "app", Status.RUNNING)))
    first, second = kube.requests("PATCH", POD)
    assert (first.code, second.code) == (429, 200)
    assert second.at - first.at >= 0.3  # the back-off alone would be 10 ms


def test_409_rereads_the_pod_and_retries(kube: FakeKube) -> None:
    setup(kube)
    kube.fail(POD, code=409, method="PATCH")
    with_writer(kube, calls(lambda w: w.set_status(REF, "app", Status.RUNNING)))
    assert [(r.method, r.code) for r in kube.requests(path=POD)] == [("PATCH", 409), ("GET", 200), ("PATCH", 200)]
    assert labels(kube) == {"status.nri-zeropod.dev/app": "RUNNING"}


def test_404_drops_the_write_with_a_log_line(kube: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    kube.create_namespace("ns")
    caplog.set_level(logging.INFO, "nri_zeropod.kube.writer")
    writer = with_writer(kube, calls(lambda w: w.set_status(REF, "app", Status.RUNNING)))
    assert len(kube.requests("PATCH", POD)) == 1 and writer.stats.dropped == 1
    assert any("pod ns/p: gone" in r.getMessage() for r in caplog.records)


def test_other_4xx_are_not_retried_and_attempts_are_bounded(kube: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    setup(kube)
    kube.fail(POD + "/resize", code=422, message="resize not allowed")
    kube.fail("/api/v1/namespaces/ns/events", code=503, times=100)
    writer = with_writer(kube, calls(lambda w: w.shrink_requests(REF, "app"), lambda w: w.event(REF, reason="R", message="m")))
    assert [r.code for r in kube.requests("PATCH", POD + "/resize")] == [422]
    assert len(kube.requests("POST", "/api/v1/namespaces/ns/events")) == WRITER.max_attempts
    assert writer.stats.dropped == 2
    assert any("in-place pod resize" in r.getMessage() for r in caplog.records)
    assert any("giving up" in r.getMessage() for r in caplog.records)


def test_a_hanging_api_never_blocks_the_caller_nor_other_pods(kube: FakeKube) -> None:
    setup(kube)
    kube.create_pod("ns", "other")
    kube.hang(POD, method="PATCH")  # the first write for p hangs until the client's 1 s timeout

    async def body(w: Writer) -> None:
        started = time.perf_counter()
        for i in range(1000):
            if i % 100 == 0:
                w.event(REF, reason=f"E{i}", message="m")
            w.set_status(REF, "app", Status.RUNNING if i % 2 else Status.SCALED_DOWN)
        enqueue_seconds = time.perf_counter() - started
        assert enqueue_seconds < 0.5, enqueue_seconds
        w.set_status(PodRef("ns", "other"), "app", Status.RUNNING)
        # the other pod is written while p's first request still hangs
        await until(lambda: ((kube.pod("ns", "other") or {}).get("metadata", {}).get("labels")), timeout=0.9)
        assert w.pending > 0

    writer = with_writer(kube, body, http=HttpSettings(request_timeout=1.0))
    assert labels(kube) == {"status.nri-zeropod.dev/app": "RUNNING"}
    patches = kube.requests("PATCH", POD)
    assert patches[0].code is None  # the hung one
    assert len(patches) <= 4, [p.body for p in patches]  # 1000 label writes coalesced
    assert writer.stats.coalesced >= 990


def test_per_pod_order_is_kept_through_failures(kube: FakeKube) -> None:
    setup(kube)
    kube.fail("/api/v1/namespaces/ns/events", code=500, times=2)

    async def body(w: Writer) -> None:
        for i in range(5):
            w.event(REF, reason=f"R{i}", message="m")
        w.set_status(REF, "app", Status.SCALED_DOWN)
        w.event(REF, reason="after-label", message="m")

    with_writer(kube, body)
    assert [e["reason"] for e in kube.events("ns")] == ["R0", "R1", "R2", "R3", "R4", "after-label"]
    order = [(r.method, r.path.rsplit("/", 1)[-1]) for r in kube.log if r.code == 200 or r.code == 201]
    assert order[-2:] == [("PATCH", "p"), ("POST", "events")]


def test_label_writes_superseded_before_they_start_are_coalesced(kube: FakeKube) -> None:
    setup(kube)

    async def body(w: Writer) -> None:
        w.set_status(REF, "app", Status.SCALED_DOWN)
        w.set_metadata(REF, labels={"other": "1"}, annotations={"a": "1"})
        w.set_status(REF, "app", Status.RUNNING)
        w.set_metadata(REF, annotations={"a": None})

    writer = with_writer(kube, body)
    bodies = [r.body for r in kube.requests("PATCH", POD)]
    assert bodies == [
        {"metadata": {"labels": {"other": "1"}}},
        {"metadata": {"labels": {"status.nri-zeropod.dev/app": "RUNNING"}}},
        {"metadata": {"annotations": {"a": None}}},
    ]
    assert writer.stats.coalesced == 1


def test_shrink_and_restore_requests(kube: FakeKube) -> None:
    setup(kube)
    kube.fail(POD + "/resize", code=409, method="PATCH")  # someone else changed the pod: re-read, re-plan

    async def shrink(w: Writer) -> None:
        w.shrink_requests(REF, "app")

    with_writer(kube, shrink)
    pod = kube.pod("ns", "p") or {}
    assert pod["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "1m", "memory": "1Ki"}, "limits": {"memory": "256Mi"}}
    assert json.loads(pod["metadata"]["annotations"][ORIGINAL_REQUESTS]) == {"app": {"cpu": "250m", "memory": "128Mi"}}
    resizes = kube.requests("PATCH", POD + "/resize")
    assert [r.code for r in resizes] == [409, 200] and resizes[0].content_type == "application/strategic-merge-patch+json"
    assert resizes[1].body["metadata"]["resourceVersion"]  # guarded by a precondition

    async def restore(w: Writer) -> None:
        w.restore_requests(REF, "app")

    with_writer(kube, restore)
    pod = kube.pod("ns", "p") or {}
    assert pod["spec"]["containers"][0]["resources"] == RES
    assert ORIGINAL_REQUESTS not in (pod["metadata"].get("annotations") or {})


def test_resize_on_a_cluster_without_the_subresource_and_superseded_intents() -> None:
    with FakeKube(resize_subresource=False) as kube:
        setup(kube)

        async def body(w: Writer) -> None:
            w.shrink_requests(REF, "app")
            w.restore_requests(REF, "app")  # supersedes the shrink if it has not started
            await w.drain(5)
            w.shrink_requests(REF, "app")

        with_writer(kube, body)
        pod = kube.pod("ns", "p") or {}
        assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1m", "memory": "1Ki"}


def test_a_replaced_pod_is_not_resized(kube: FakeKube) -> None:
    setup(kube)
    with_writer(kube, calls(lambda w: w.shrink_requests(PodRef("ns", "p", "some-older-uid"), "app")))
    assert not kube.requests("PATCH")


def test_forget_drops_pending_writes(kube: FakeKube) -> None:
    setup(kube)
    kube.hang(POD, method="PATCH")

    async def body(w: Writer) -> None:
        w.set_status(REF, "app", Status.RUNNING)
        await until(lambda: kube.requests("PATCH", POD))  # in flight
        w.event(REF, reason="R", message="m")
        w.shrink_requests(REF, "app")
        w.forget(REF)

    with_writer(kube, body, settings=WriterSettings(max_attempts=1, backoff=FAST))
    assert not kube.events("ns") and not kube.requests("GET", POD)


def calls(*fns: Callable[[Writer], None]) -> Callable[[Writer], Awaitable[None]]:
    """A test body that just queues writes."""

    async def body(w: Writer) -> None:
        for fn in fns:
            fn(w)

    return body
