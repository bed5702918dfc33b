"""The fake API server's answers against documented examples of the real one (tests/fakekube/examples).

Each example is compared field by field: every field the example has must be
in the answer with the same value, except values that differ by nature
(resourceVersion, uid, timestamps), which must only be present; digits in
messages stand for resourceVersions and are compared as such.
"""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.fakekube import FakeKube
from tests.fakekube.patch import merge_patch, strategic_merge_patch

EXAMPLES = Path(__file__).resolve().parents[2] / "fakekube" / "examples"
BY_NATURE = {"resourceVersion", "uid", "creationTimestamp"}


def example(name: str) -> Any:
    text = (EXAMPLES / name).read_text()
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def same_shape(expected: Any, actual: Any, where: str = "$") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}: missing {key!r} in {sorted(actual)}"
            if key in BY_NATURE:
                assert isinstance(actual[key], str) and actual[key], f"{where}.{key}: {actual[key]!r}"
            elif key == "message" and isinstance(value, str):
                assert re.sub(r"\d+", "N", actual[key]) == re.sub(r"\d+", "N", value), f"{where}.message: {actual[key]!r}"
            else:
                same_shape(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        if expected:  # an empty list in an example stands for "[...]"
            assert len(actual) == len(expected), f"{where}: {len(actual)} items, expected {len(expected)}"
            for i, (e, a) in enumerate(zip(expected, actual)):
                same_shape(e, a, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def request(fake: FakeKube, method: str, path: str, body: Any = None, content_type: str = "application/json") -> tuple[http.client.HTTPResponse, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": content_type} if data else {})
    resp = conn.getresponse()
    return resp, json.loads(resp.read())


def check_http(expected: dict[str, Any], resp: http.client.HTTPResponse) -> None:
    assert resp.status == expected["code"]
    assert resp.getheader("Content-Type") == expected["content-type"]
    if "retry-after" in expected:
        assert resp.getheader("Retry-After") == expected["retry-after"]


def test_404_status_for_a_missing_pod(kube: FakeKube) -> None:
    kube.create_namespace("default")
    ex = example("status-404-pod-not-found.json")
    resp, body = request(kube, "GET", "/api/v1/namespaces/default/pods/grafana")
    check_http(ex["http"], resp)
    same_shape(ex["body"], body)
    assert set(body) == set(ex["body"])  # nothing more either


def test_409_status_for_a_stale_resource_version(kube: FakeKube) -> None:
    kube.create_namespace("test")
    pod = kube.create_pod("test", "web")
    kube.set_namespace_labels("test", {"x": "y"})  # other objects' changes do not matter
    request(kube, "PATCH", "/api/v1/namespaces/test/pods/web", {"metadata": {"labels": {"a": "b"}}}, "application/merge-patch+json")
    ex = example("status-409-conflict.json")
    stale = {"metadata": {"resourceVersion": pod["metadata"]["resourceVersion"], "labels": {"a": "c"}}}
    resp, body = request(kube, "PATCH", "/api/v1/namespaces/test/pods/web", stale, "application/merge-patch+json")
    check_http(ex["http"], resp)
    same_shape(ex["body"], body)


def test_429_status_and_retry_after(kube: FakeKube) -> None:
    kube.create_namespace("test")
    kube.fail("/api/v1/namespaces/test/pods", code=429, retry_after=1)
    ex = example("status-429-too-many-requests.json")
    resp, body = request(kube, "GET", "/api/v1/namespaces/test/pods")
    check_http(ex["http"], resp)
    same_shape(ex["body"], body)


def test_pod_list(kube: FakeKube) -> None:
    kube.create_namespace("test")
    kube.create_pod("test", "a")
    kube.create_pod("test", "b")
    ex = example("list-pods.json")
    resp, body = request(kube, "GET", "/api/v1/namespaces/test/pods")
    check_http(ex["http"], resp)
    same_shape(ex["body"], body)
    assert [p["metadata"]["name"] for p in body["items"]] == ["a", "b"]
    assert int(body["metadata"]["resourceVersion"]) >= max(int(p["metadata"]["resourceVersion"]) for p in body["items"])


def open_watch(fake: FakeKube, query: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    conn.request("GET", f"/api/v1/namespaces/test/pods?watch=1&{query}")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    return resp


def test_watch_stream_of_json_objects(kube: FakeKube) -> None:
    kube.create_namespace("test")
    _, listed = request(kube, "GET", "/api/v1/namespaces/test/pods")
    resp = open_watch(kube, f"resourceVersion={listed['metadata']['resourceVersion']}")
    kube.create_pod("test", "web")
    request(kube, "PATCH", "/api/v1/namespaces/test/pods/web", {"metadata": {"labels": {"a": "b"}}}, "application/merge-patch+json")
    events = [json.loads(resp.readline()) for _ in range(2)]
    same_shape(example("watch-pods.jsonl"), events)
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs[0] < rvs[1]


def test_watch_bookmark_carries_only_the_resource_version(kube: FakeKube) -> None:
    kube.create_namespace("test")
    _, listed = request(kube, "GET", "/api/v1/namespaces/test/pods")
    resp = open_watch(kube, f"resourceVersion={listed['metadata']['resourceVersion']}&allowWatchBookmarks=true")
    kube.create_pod("test", "web")
    first = json.loads(resp.readline())
    kube.create_namespace("other")  # a change elsewhere moves the bookmark past the pod's version
    kube.send_bookmarks()
    second = json.loads(resp.readline())
    same_shape(example("watch-pods-bookmark.jsonl"), [first, second])
    assert set(second["object"]) == {"kind", "apiVersion", "metadata"}
    assert set(second["object"]["metadata"]) == {"resourceVersion"}
    assert int(second["object"]["metadata"]["resourceVersion"]) > int(first["object"]["metadata"]["resourceVersion"])


@pytest.mark.parametrize("as_event", [True, False])
def test_watch_from_an_expired_resource_version(as_event: bool) -> None:
    with FakeKube(gone_as_event=as_event) as kube:
        kube.create_namespace("test")
        _, listed = request(kube, "GET", "/api/v1/namespaces/test/pods")
        kube.create_pod("test", "web")
        kube.compact()
        expected = example("watch-410-expired.jsonl")
        path = f"/api/v1/namespaces/test/pods?watch=1&resourceVersion={listed['metadata']['resourceVersion']}"
        conn = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=5)
        conn.request("GET", path)
        resp = conn.getresponse()
        if as_event:  # the watch cache's way: 200, then one ERROR event, then the end
            assert resp.status == 200
            events = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
            same_shape(expected, events)
        else:  # etcd's way: a 410 answer with the same Status
            assert resp.status == 410
            same_shape(expected[0]["object"], json.loads(resp.read()))


def test_json_merge_patch_rfc7386_example() -> None:
    ex = example("merge-patch-rfc7386.json")
    assert merge_patch(ex["target"], ex["patch"]) == ex["result"]


def test_json_merge_patch_over_http_on_pod_metadata(kube: FakeKube) -> None:
    kube.create_namespace("test")
    kube.create_pod("test", "web", metadata={"labels": {"title": "Goodbye!", "tag": "sample"}, "annotations": {"content": "unchanged"}})
    patch = {"metadata": {"labels": {"title": "Hello!", "tag": None, "phone": "123"}}}
    resp, body = request(kube, "PATCH", "/api/v1/namespaces/test/pods/web", patch, "application/merge-patch+json")
    assert resp.status == 200
    assert body["metadata"]["labels"] == {"title": "Hello!", "phone": "123"}
    assert body["metadata"]["annotations"] == {"content": "unchanged"}


def test_strategic_merge_patch_docs_example() -> None:
    ex = example("strategic-merge-containers.json")
    assert strategic_merge_patch(ex["target"], ex["strategic"]["patch"]) == ex["strategic"]["result"]
    assert merge_patch(ex["target"], ex["merge"]["patch"]) == ex["merge"]["result"]
    tol = ex["tolerations"]  # no patchStrategy on tolerations: replaced, not merged
    assert strategic_merge_patch(tol["target"], tol["patch"]) == tol["result"]
