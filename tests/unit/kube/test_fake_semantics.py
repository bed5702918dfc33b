"""The fake API server's own semantics, over raw HTTP (http.client), independent of our client."""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as hs

from tests.fakekube import FakeKube
from tests.fakekube.patch import merge_patch, strategic_merge_patch

from .test_fake_examples import request

MERGE, SMP = "application/merge-patch+json", "application/strategic-merge-patch+json"
RES = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}


def pod_with_resources(kube: FakeKube) -> dict[str, Any]:
    kube.create_namespace("ns")
    return kube.create_pod("ns", "p", containers=[{"name": "app", "image": "nginx", "resources": RES}, {"name": "side", "image": "busybox"}])


def test_resource_versions_increase_across_kinds_and_no_op_patches_keep_them(kube: FakeKube) -> None:
    a = kube.create_namespace("a")
    p = kube.create_pod("a", "p")
    b = kube.create_namespace("b")
    assert int(a["metadata"]["resourceVersion"]) < int(p["metadata"]["resourceVersion"]) < int(b["metadata"]["resourceVersion"])
    _, same = request(kube, "PATCH", "/api/v1/namespaces/a/pods/p", {"metadata": {"labels": {}}}, MERGE)
    assert same["metadata"]["resourceVersion"] == p["metadata"]["resourceVersion"]


def test_strategic_merge_patch_merges_containers_by_name_through_resize(kube: FakeKube) -> None:
    pod_with_resources(kube)
    patch = {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "1m"}}}]}}
    resp, body = request(kube, "PATCH", "/api/v1/namespaces/ns/pods/p/resize", patch, SMP)
    assert resp.status == 200, body
    app, side = body["spec"]["containers"]
    assert app["resources"] == {"requests": {"cpu": "1m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    assert app["image"] == "nginx" and side == {"name": "side", "image": "busybox"}


def test_merge_patch_replaces_lists_so_a_containers_change_is_refused(kube: FakeKube) -> None:
    pod_with_resources(kube)
    patch = {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "1m"}}}]}}
    resp, body = request(kube, "PATCH", "/api/v1/namespaces/ns/pods/p/resize", patch, MERGE)
    assert resp.status == 422 and body["reason"] == "Invalid"  # the list was replaced: "side" would vanish


def test_resize_changes_resources_only_and_keeps_qos(kube: FakeKube) -> None:
    pod_with_resources(kube)
    image = {"spec": {"containers": [{"name": "app", "image": "evil"}]}}
    resp, _ = request(kube, "PATCH", "/api/v1/namespaces/ns/pods/p/resize", image, SMP)
    assert resp.status == 422
    best_effort = {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": None, "memory": None}, "limits": None}}]}}
    resp, body = request(kube, "PATCH", "/api/v1/namespaces/ns/pods/p/resize", best_effort, SMP)
    assert resp.status == 422 and "QoS" in body["message"]


def test_pod_patch_may_not_change_resources_when_resize_exists(kube: FakeKube) -> None:
    pod_with_resources(kube)
    patch = {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "1m"}}}]}}
    resp, _ = request(kube, "PATCH", "/api/v1/namespaces/ns/pods/p", patch, SMP)
    assert resp.status == 422
    resp, body = request(kube, "PATCH", "/api/v1/namespaces/ns/pods/p", {"spec": {"containers": [{"name": "app", "image": "nginx:2"}]}}, SMP)
    assert resp.status == 200 and body["spec"]["containers"][0]["image"] == "nginx:2"


def test_a_cluster_without_the_resize_subresource() -> None:
    with FakeKube(resize_subresource=False) as kube:
        pod_with_resources(kube)
        patch = {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "1m"}}}]}}
        resp, body = request(kube, "PATCH", "/api/v1/namespaces/ns/pods/p/resize", patch, SMP)
        assert resp.status == 404 and body["details"] == {} and body["message"] == "the server could not find the requested resource"
        resp, body = request(kube, "PATCH", "/api/v1/namespaces/ns/pods/p", patch, SMP)
        assert resp.status == 200 and body["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "1m"


def test_preconditions_in_put_and_patch(kube: FakeKube) -> None:
    pod = kube.create_namespace("ns") and kube.create_pod("ns", "p")
    rv = pod["metadata"]["resourceVersion"]
    resp, body = request(kube, "PUT", "/api/v1/namespaces/ns/pods/p", {**pod, "metadata": {**pod["metadata"], "labels": {"a": "1"}}})
    assert resp.status == 200 and body["metadata"]["resourceVersion"] != rv
    resp, body = request(kube, "PUT", "/api/v1/namespaces/ns/pods/p", {**pod, "metadata": {**pod["metadata"], "labels": {"a": "2"}}})
    assert resp.status == 409 and body["reason"] == "Conflict"
    no_rv = {**pod, "metadata": {"name": "p", "namespace": "ns"}}
    resp, body = request(kube, "PUT", "/api/v1/namespaces/ns/pods/p", no_rv)
    assert resp.status == 422
    resp, _ = request(kube, "PATCH", "/api/v1/namespaces/ns/pods/p", {"metadata": {"resourceVersion": rv, "labels": {"b": "1"}}}, SMP)
    assert resp.status == 409


def test_create_with_generate_name_and_errors(kube: FakeKube) -> None:
    resp, body = request(kube, "POST", "/api/v1/namespaces/nope/events", {"metadata": {"generateName": "p."}, "reason": "X"})
    assert resp.status == 404 and body["details"] == {"name": "nope", "kind": "namespaces"}
    kube.create_namespace("ns")
    resp, body = request(kube, "POST", "/api/v1/namespaces/ns/events", {"metadata": {"generateName": "p."}, "reason": "X"})
    assert resp.status == 201 and body["metadata"]["name"].startswith("p.") and len(body["metadata"]["name"]) == 7
    resp, body = request(kube, "POST", "/api/v1/namespaces", {"metadata": {"name": "ns"}})
    assert resp.status == 409 and body["reason"] == "AlreadyExists"
    resp, body = request(kube, "GET", "/api/v1/nodes")
    assert resp.status == 404 and body["details"] == {}
    resp, body = request(kube, "PATCH", "/api/v1/namespaces/ns", [{"op": "add"}], "application/json-patch+json")
    assert resp.status == 415


def test_strategic_merge_patch_directives() -> None:
    target = {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}], "nodeSelector": {"k": "v"}}}
    patch = {"spec": {"containers": [{"name": "a", "$patch": "delete"}, {"name": "b", "image": "z"}],
                      "$setElementOrder/containers": [{"name": "b"}], "nodeSelector": {"$patch": "replace", "n": "m"}}}
    assert strategic_merge_patch(target, patch) == {"spec": {"containers": [{"name": "b", "image": "z"}], "nodeSelector": {"n": "m"}}}
    keeps_order = strategic_merge_patch(target, {"spec": {"containers": [{"name": "b", "image": "z"}]}})
    assert [c["name"] for c in keeps_order["spec"]["containers"]] == ["a", "b"]


json_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.text(max_size=3),
    lambda inner: hs.lists(inner, max_size=3) | hs.dictionaries(hs.text(max_size=2), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(json_values, json_values)
def test_merge_patch_is_idempotent_and_leaves_no_nulls(target: Any, patch: Any) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once  # RFC 7386: applying a patch twice changes nothing more
    if isinstance(patch, dict):
        for key, value in patch.items():
            assert (key not in once) if value is None else (key in once)  # null removes, anything else sets
    else:
        assert once == patch  # a non-object patch replaces the whole target


def test_history_is_bounded_and_older_watches_get_410() -> None:
    with FakeKube(history=3) as kube:
        kube.create_namespace("ns")
        _, listed = request(kube, "GET", "/api/v1/namespaces")
        rv = listed["metadata"]["resourceVersion"]
        for i in range(2):
            kube.set_namespace_labels("ns", {"i": str(i)})
        conn = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=5)
        conn.request("GET", f"/api/v1/namespaces?watch=1&resourceVersion={rv}&timeoutSeconds=1")
        lines = [json.loads(x) for x in conn.getresponse().read().splitlines() if x.strip()]
        assert [e["type"] for e in lines] == ["MODIFIED", "MODIFIED"]  # replayed from history, then timeoutSeconds ended it
        for i in range(3):
            kube.set_namespace_labels("ns", {"i": str(i + 10)})
        conn = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=5)
        conn.request("GET", f"/api/v1/namespaces?watch=1&resourceVersion={rv}")
        lines = [json.loads(x) for x in conn.getresponse().read().splitlines() if x.strip()]
        assert lines[0]["type"] == "ERROR" and lines[0]["object"]["code"] == 410


def test_watch_without_resource_version_starts_with_the_current_objects(kube: FakeKube) -> None:
    kube.create_namespace("a")
    kube.create_namespace("b")
    conn = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=5)
    conn.request("GET", "/api/v1/namespaces?watch=true&timeoutSeconds=1")
    lines = [json.loads(x) for x in conn.getresponse().read().splitlines() if x.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in lines] == [("ADDED", "a"), ("ADDED", "b")]


def test_faults_fail_n_times_then_pass_and_everything_is_logged(kube: FakeKube) -> None:
    kube.create_namespace("ns")
    kube.fail("/api/v1/namespaces/*", code=500, times=2, method="GET")
    codes = [request(kube, "GET", "/api/v1/namespaces/ns")[0].status for _ in range(3)]
    assert codes == [500, 500, 200]
    log = kube.requests("GET", "/api/v1/namespaces/ns")
    assert [r.code for r in log] == [500, 500, 200]
    request(kube, "PATCH", "/api/v1/namespaces/ns", {"metadata": {"labels": {"a": "b"}}}, MERGE)
    last = kube.log[-1]
    assert (last.method, last.content_type, last.body) == ("PATCH", MERGE, {"metadata": {"labels": {"a": "b"}}})


def test_hang_keeps_the_request_unanswered(kube: FakeKube) -> None:
    kube.hang("/api/v1/namespaces")
    conn = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=0.2)
    started = time.monotonic()
    conn.request("GET", "/api/v1/namespaces")
    try:
        conn.getresponse()
        raise AssertionError("a hung request was answered")
    except (socket.timeout, TimeoutError):
        pass
    assert time.monotonic() - started >= 0.2
    conn.close()
    assert request(kube, "GET", "/api/v1/namespaces")[0].status == 200  # only once


def test_token_is_required_when_set() -> None:
    with FakeKube(token="s3cret") as kube:
        resp, body = request(kube, "GET", "/api/v1/namespaces")
        assert resp.status == 401 and body["reason"] == "Unauthorized"
        conn = http.client.HTTPConnection("127.0.0.1", kube.port, timeout=5)
        conn.request("GET", "/api/v1/namespaces", headers={"Authorization": "Bearer s3cret"})
        assert conn.getresponse().status == 200
