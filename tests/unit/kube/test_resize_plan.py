"""Shrink and restore plans for in-place request resizing (pure)."""

from __future__ import annotations

import json
from typing import Any

from nri_zeropod.kube import ORIGINAL_REQUESTS
from nri_zeropod.kube.resize import originals, restore_plan, shrink_plan, with_resource_version
from tests.fakekube.patch import merge_patch, strategic_merge_patch


def pod(*containers: dict[str, Any], annotations: dict[str, str] | None = None, qos: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"metadata": {"name": "p", "resourceVersion": "7", "annotations": annotations or {}},
                           "spec": {"containers": list(containers)}}
    if qos:
        out["status"] = {"qosClass": qos}
    return out


def ctr(name: str, **resources: Any) -> dict[str, Any]:
    return {"name": name, "image": "x", "resources": resources}


def apply(p: dict[str, Any], plan: Any) -> dict[str, Any]:
    if plan.annotation_first and plan.annotation:
        p = merge_patch(p, plan.annotation)
    if plan.resize:
        p = strategic_merge_patch(p, plan.resize)
    if not plan.annotation_first and plan.annotation:
        p = merge_patch(p, plan.annotation)
    return p


def test_shrink_sets_requests_keeps_limits_and_stores_originals() -> None:
    p = pod(ctr("app", requests={"cpu": "250m", "memory": "128Mi"}, limits={"memory": "256Mi"}), ctr("side", requests={"cpu": "10m"}))
    plan = shrink_plan(p, "app")
    assert plan is not None and plan.annotation_first
    assert plan.resize == {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "1m", "memory": "1Ki"}}}]}}
    assert plan.annotation == {"metadata": {"annotations": {ORIGINAL_REQUESTS: '{"app":{"cpu":"250m","memory":"128Mi"}}'}}}
    shrunk = apply(p, plan)
    app = shrunk["spec"]["containers"][0]["resources"]
    assert app == {"requests": {"cpu": "1m", "memory": "1Ki"}, "limits": {"memory": "256Mi"}}
    assert shrunk["spec"]["containers"][1]["resources"] == {"requests": {"cpu": "10m"}}
    assert shrink_plan(shrunk, "app") is None  # already done
    back = restore_plan(shrunk, "app")
    assert back is not None and not back.annotation_first
    assert back.resize == {"spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}}}]}}
    restored = apply(shrunk, back)
    assert restored["spec"] == p["spec"]
    assert ORIGINAL_REQUESTS not in restored["metadata"]["annotations"]
    assert restore_plan(restored, "app") is None


def test_only_resources_with_a_request_are_shrunk() -> None:
    p = pod(ctr("app", requests={"memory": "64Mi"}))
    plan = shrink_plan(p, "app")
    assert plan is not None and plan.resize is not None
    assert plan.resize["spec"]["containers"][0]["resources"]["requests"] == {"memory": "1Ki"}
    assert json.loads(plan.annotation["metadata"]["annotations"][ORIGINAL_REQUESTS]) == {"app": {"memory": "64Mi"}}  # type: ignore[index]
    assert shrink_plan(pod(ctr("app")), "app") is None  # BestEffort: nothing to shrink
    assert shrink_plan(p, "missing") is None


def test_guaranteed_pods_and_restart_policies_are_left_alone() -> None:
    g = pod(ctr("app", requests={"cpu": "1", "memory": "1Gi"}, limits={"cpu": "1", "memory": "1Gi"}))
    assert shrink_plan(g, "app") is None
    assert shrink_plan({**g, "status": {"qosClass": "Guaranteed"}}, "app") is None
    restart = pod({**ctr("app", requests={"cpu": "1", "memory": "1Gi"}), "resizePolicy": [{"resourceName": "memory", "restartPolicy": "RestartContainer"}]})
    plan = shrink_plan(restart, "app")
    assert plan is not None and plan.resize is not None
    assert plan.resize["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1m"}


def test_other_containers_originals_are_kept_and_shrunk_values_never_recorded() -> None:
    stored = {ORIGINAL_REQUESTS: json.dumps({"side": {"cpu": "10m"}})}
    p = pod(ctr("app", requests={"cpu": "1m", "memory": "32Mi"}), ctr("side", requests={"cpu": "1m"}), annotations=stored)
    plan = shrink_plan(p, "app")
    assert plan is not None and plan.annotation is not None
    assert json.loads(plan.annotation["metadata"]["annotations"][ORIGINAL_REQUESTS]) == {"app": {"memory": "32Mi"}, "side": {"cpu": "10m"}}
    after = apply(p, plan)
    back = restore_plan(after, "app")
    assert back is not None and back.annotation is not None
    assert json.loads(back.annotation["metadata"]["annotations"][ORIGINAL_REQUESTS]) == {"side": {"cpu": "10m"}}
    assert originals(pod(annotations={ORIGINAL_REQUESTS: "not json"})) == {}


def test_with_resource_version() -> None:
    assert with_resource_version({"metadata": {"annotations": {"a": "b"}}}, "9") == {"metadata": {"annotations": {"a": "b"}, "resourceVersion": "9"}}
    assert with_resource_version({"spec": {}}, None) == {"spec": {}}
