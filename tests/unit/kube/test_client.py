"""The client against the fake: error classes by status code, transport failures, keep-alive, resize fallback."""

from __future__ import annotations

import socket

import pytest

from nri_zeropod.kube import (
    Conflict, Forbidden, Gone, HttpSettings, Invalid, KubeClient, KubeConfig, NotFound, RequestTimeout, ServerError,
    TooManyRequests, TransportError, Unauthorized,
)
from nri_zeropod.kube.errors import ApiError, api_error
from tests.fakekube import FakeKube

from .conftest import client_for
from .util import run

POD = "/api/v1/namespaces/ns/pods/p"
RES = {"requests": {"cpu": "100m", "memory": "64Mi"}}


@pytest.mark.parametrize(
    ("code", "cls"),
    [(401, Unauthorized), (403, Forbidden), (404, NotFound), (409, Conflict), (410, Gone), (422, Invalid),
     (429, TooManyRequests), (500, ServerError), (503, ServerError)],
)
def test_status_codes_become_error_classes_with_the_status_message(kube: FakeKube, code: int, cls: type[ApiError]) -> None:
    kube.create_namespace("ns")
    kube.create_pod("ns", "p")
    kube.fail(POD, code=code, message="said the server", retry_after=0.5 if code == 429 else None)

    async def body() -> None:
        async with client_for(kube) as c:
            with pytest.raises(cls) as info:
                await c.get_pod("ns", "p")
            assert info.value.code == code and info.value.status["kind"] == "Status"
            if code == 429:
                assert info.value.retry_after == 0.5 and info.value.retryable
            elif code != 500 and code != 503:
                assert "said the server" in info.value.message

    run(body())


def test_not_found_carries_the_details(kube: FakeKube) -> None:
    kube.create_namespace("ns")

    async def body() -> None:
        async with client_for(kube) as c:
            with pytest.raises(NotFound) as info:
                await c.get_pod("ns", "missing")
            assert info.value.details == {"name": "missing", "kind": "pods"}
            assert info.value.reason == "NotFound" and 'pods "missing" not found' in str(info.value)

    run(body())


def test_non_status_bodies_still_give_the_right_class() -> None:
    err = api_error(502, b"<html>bad gateway</html>", {})
    assert isinstance(err, ServerError) and "bad gateway" in err.message
    assert api_error(429, b"", {"retry-after": "7"}).retry_after == 7.0


def test_connection_refused_is_a_transport_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there

    async def body() -> None:
        async with KubeClient(KubeConfig(server=f"http://127.0.0.1:{port}")) as c:
            with pytest.raises(TransportError) as info:
                await c.list_namespaces()
            assert info.value.retryable

    run(body())


def test_a_hung_request_times_out(kube: FakeKube) -> None:
    kube.hang("/api/v1/namespaces")

    async def body() -> None:
        async with client_for(kube, http=HttpSettings(request_timeout=0.2)) as c:
            with pytest.raises(RequestTimeout):
                await c.list_namespaces()
            assert (await c.list_namespaces())["kind"] == "NamespaceList"  # a fresh connection works

    run(body())


def test_keep_alive_reuses_one_connection_and_survives_a_stale_one(kube: FakeKube) -> None:
    kube.create_namespace("ns")

    async def body() -> None:
        async with client_for(kube) as c:
            for _ in range(3):
                await c.list_namespaces()
            assert len(c.http._idle) == 1
            kube.close_connection("/api/v1/namespaces")  # the idle connection dies under us
            assert (await c.list_namespaces())["kind"] == "NamespaceList"
        async with client_for(kube) as fresh:
            kube.close_connection("/api/v1/namespaces")
            with pytest.raises(TransportError):  # no retry on a fresh connection
                await fresh.list_namespaces()

    run(body())


def test_patches_send_the_right_content_types(kube: FakeKube) -> None:
    kube.create_namespace("ns")
    kube.create_pod("ns", "p", metadata={"labels": {"keep": "1", "drop": "1"}})

    async def body() -> None:
        async with client_for(kube) as c:
            pod = await c.patch_pod_metadata("ns", "p", labels={"a": "b", "drop": None}, annotations={"x": "y"})
            assert pod["metadata"]["labels"] == {"keep": "1", "a": "b"} and pod["metadata"]["annotations"] == {"x": "y"}
            await c.patch_pod("ns", "p", {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}, strategic=True)
            with pytest.raises(Conflict):
                await c.patch_pod_metadata("ns", "p", labels={"a": "c"}, resource_version="1")

    run(body())
    types = [(r.method, r.content_type) for r in kube.requests("PATCH")]
    assert types == [("PATCH", "application/merge-patch+json"), ("PATCH", "application/strategic-merge-patch+json"),
                     ("PATCH", "application/merge-patch+json")]


def test_resize_uses_the_subresource(kube: FakeKube) -> None:
    kube.create_namespace("ns")
    kube.create_pod("ns", "p", containers=[{"name": "app", "image": "nginx", "resources": RES}])
    patch = {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "1m"}}}]}}

    async def body() -> None:
        async with client_for(kube) as c:
            pod = await c.resize_pod("ns", "p", patch)
            assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1m", "memory": "64Mi"}
            assert c.resize_subresource is True
            with pytest.raises(NotFound):
                await c.resize_pod("ns", "gone", patch)

    run(body())
    assert [r.path for r in kube.requests("PATCH")] == [POD + "/resize", "/api/v1/namespaces/ns/pods/gone/resize"]


def test_resize_falls_back_to_the_pod_on_older_clusters() -> None:
    with FakeKube(resize_subresource=False) as kube:
        kube.create_namespace("ns")
        kube.create_pod("ns", "p", containers=[{"name": "app", "image": "nginx", "resources": RES}])
        patch = {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "1m"}}}]}}

        async def body() -> None:
            async with client_for(kube) as c:
                await c.resize_pod("ns", "p", patch)
                assert c.resize_subresource is False
                await c.resize_pod("ns", "p", {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "2m"}}}]}})

        run(body())
        assert [r.path for r in kube.requests("PATCH")] == [POD + "/resize", POD, POD]  # the subresource is tried once
        pod = kube.pod("ns", "p")
        assert pod is not None and pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2m"
