"""The agent against a Kubernetes API: namespace opt-in, status labels, Events, in-place resize.

No kube-apiserver binary exists on these machines, so the API is the fake of
``tests/fakekube`` (real HTTP, real watch and patch semantics; its behaviour
is itself checked against documented API responses in tests/unit/kube). The
node, containerd and the agent are real; the agent is restarted with a
kubeconfig pointing at the fake.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from nri_zeropod.node import agentctl, pods
from tests.e2e import kit
from tests.fakekube import FakeKube
from tests.helpers import eventually

ON, OFF = "zp-on", "zp-off"
REQUESTS = {"cpu": "100m", "memory": "64Mi"}
LIMITS = {"cpu": "1", "memory": "256Mi"}


@pytest.fixture(scope="module")
def kube(node: kit.Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKube]:
    fake = FakeKube().start()
    config = tmp_path_factory.mktemp("kube") / "kubeconfig"
    fake.write_kubeconfig(config)
    fake.create_namespace(ON, labels={"nri-zeropod.dev/enabled": "true"})
    fake.create_namespace(OFF)
    os.environ["NRI_ZEROPOD_AGENT_ARGS"] = (
        f"--kubeconfig {config} --in-place-scaling --zeropod-status-labels --node-name local-node"
    )
    agentctl.stop(node.cfg)
    agentctl.start(node.cfg)
    try:
        eventually(lambda: kit.admin(node, "namespace", name=ON)["enabled"], timeout=15, what="namespace cache")
        yield fake
    finally:
        del os.environ["NRI_ZEROPOD_AGENT_ARGS"]
        agentctl.stop(node.cfg)
        agentctl.start(node.cfg)
        fake.stop()


def run_pod(node: kit.Node, fake: FakeKube, namespace: str, *, annotations: dict[str, str] | None = None,
            duration: str = "0") -> pods.Pod:
    """As a cluster would: the API has the pod first, then kubelet creates it through CRI with its uid."""
    name = kit.unique("kp")
    ann = {"nri-zeropod.dev/scaledown-duration": duration, **(annotations or {})}
    obj = fake.create_pod(namespace, name, containers=[
        {"name": "web", "image": "busybox", "resources": {"requests": dict(REQUESTS), "limits": dict(LIMITS)},
         "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"},
                          {"resourceName": "memory", "restartPolicy": "NotRequired"}]}],
        metadata={"annotations": ann})
    return node.run(pods.PodSpec(name=name, namespace=namespace, uid=obj["metadata"]["uid"], annotations=ann,
                                 containers=[pods.ContainerSpec(name="web", image="busybox", ports=[8080])]))


def managed_ids(node: kit.Node) -> set[str]:
    return {c["id"] for c in kit.admin(node, "status")["containers"]}


def test_namespace_label_opts_pods_in_and_a_pod_can_opt_out(node: kit.Node, kube: FakeKube) -> None:
    labelled = run_pod(node, kube, ON)
    unlabelled = run_pod(node, kube, OFF)
    opted_out = run_pod(node, kube, ON, annotations={"nri-zeropod.dev/enabled": "false"})
    try:
        ids = managed_ids(node)
        assert labelled.containers["web"] in ids
        assert unlabelled.containers["web"] not in ids
        assert opted_out.containers["web"] not in ids
        # The label can also come later: new pods follow the namespace's labels, from the watch.
        kube.set_namespace_labels(OFF, {"nri-zeropod.dev/enabled": "true"})
        eventually(lambda: kit.admin(node, "namespace", name=OFF)["enabled"], timeout=10)
        later = run_pod(node, kube, OFF)
        assert later.containers["web"] in managed_ids(node)
        node.rm(later.name, OFF)
    finally:
        kube.set_namespace_labels(OFF, {"nri-zeropod.dev/enabled": None})
        for pod in (labelled, unlabelled, opted_out):
            node.rm(pod.name, pod.namespace)


def _pod_requests(kube: FakeKube, pod: pods.Pod) -> dict[str, str]:
    obj = kube.pod(pod.namespace, pod.name)
    assert obj is not None
    return obj["spec"]["containers"][0]["resources"]["requests"]


def _labels(kube: FakeKube, pod: pods.Pod) -> dict[str, str]:
    obj = kube.pod(pod.namespace, pod.name)
    assert obj is not None
    return obj["metadata"].get("labels", {})


def _writes(kube: FakeKube, pod: pods.Pod, since: int) -> list[str]:
    """What the agent wrote about ``pod`` since request number ``since``, in order."""
    out = []
    for r in kube.log[since:]:
        text = json.dumps(r.body)
        if r.method == "PATCH" and r.path.endswith(f"/pods/{pod.name}/resize"):
            out.append("resize " + ("shrink" if '"1m"' in text else "restore"))
        elif r.method == "PATCH" and r.path.endswith(f"/pods/{pod.name}"):
            body = r.body if isinstance(r.body, dict) else {}
            label = (body.get("metadata", {}).get("labels") or {}).get("status.nri-zeropod.dev/web")
            if label:
                out.append(f"label {label}")
            elif "resources" in text:
                out.append("resize " + ("shrink" if '"1m"' in text else "restore"))
        elif r.method == "POST" and r.path.endswith("/events") and pod.name in str(r.body):
            out.append("event " + r.body["reason"])
    return out


def test_status_labels_events_and_resize_in_order(node: kit.Node, kube: FakeKube) -> None:
    pod = run_pod(node, kube, ON)
    cid = pod.containers["web"]
    try:
        eventually(lambda: _labels(kube, pod).get("status.nri-zeropod.dev/web") == "RUNNING", timeout=10)
        assert _labels(kube, pod).get("status.zeropod.ctrox.dev/web") == "RUNNING"
        mark = len(kube.log)
        kit.checkpoint(node, cid)
        eventually(lambda: _pod_requests(kube, pod) == {"cpu": "1m", "memory": "1Ki"}, timeout=10,
                   what="requests shrunk while scaled down")
        obj = kube.pod(pod.namespace, pod.name)
        assert obj["spec"]["containers"][0]["resources"]["limits"] == LIMITS, "limits untouched"
        assert "nri-zeropod.dev/original-requests" in obj["metadata"]["annotations"]
        assert _labels(kube, pod)["status.nri-zeropod.dev/web"] == "SCALED_DOWN"
        assert _labels(kube, pod)["status.zeropod.ctrox.dev/web"] == "SCALED_DOWN"
        assert kit.http_get(pod.ip, 8080)[0] == 200  # the wake
        eventually(lambda: _pod_requests(kube, pod) == REQUESTS, timeout=10, what="requests restored")
        eventually(lambda: _labels(kube, pod)["status.nri-zeropod.dev/web"] == "RUNNING", timeout=10)
        events = eventually(lambda: [e for e in kube.events(ON) if e["involvedObject"]["name"] == pod.name
                                     and e["reason"] == "Restored"] and kube.events(ON), timeout=10)
        mine = [e for e in events if e["involvedObject"]["name"] == pod.name]
        reasons = [e["reason"] for e in mine]
        assert reasons == ["ScaledDown", "Restored"], reasons
        for e in mine:
            assert e["involvedObject"]["fieldPath"] == "spec.containers{web}"
            assert e["reportingComponent"] == "nri-zeropod" and e["source"]["component"] == "nri-zeropod"
            assert e["involvedObject"]["uid"] == pod.uid
        assert mine[0]["message"].startswith("Scaled down container web in ")
        assert mine[1]["message"].startswith("Restored container web in ")
        # One pod's writes are made in the order they were asked for.
        assert _writes(kube, pod, mark) == [
            "label SCALED_DOWN", "event ScaledDown", "resize shrink",  # the checkpoint
            "resize restore", "label RUNNING", "event Restored",  # the wake
        ]
    finally:
        node.rm(pod.name, ON)


def test_api_errors_never_stop_a_checkpoint_or_a_wake(node: kit.Node, kube: FakeKube) -> None:
    pod = run_pod(node, kube, ON)
    cid = pod.containers["web"]
    path = f"/api/v1/namespaces/{ON}/pods/{pod.name}"
    try:
        eventually(lambda: _labels(kube, pod).get("status.nri-zeropod.dev/web") == "RUNNING", timeout=10)
        kube.fail(path, code=500, times=3)
        kube.fail(path, code=409, times=2, method="PATCH")
        kube.hang(path + "/resize", times=1)
        kube.fail(f"/api/v1/namespaces/{ON}/events", code=429, times=2, retry_after=1)
        t0 = time.monotonic()
        took_cp = kit.checkpoint(node, cid)["seconds"]
        assert kit.http_get(pod.ip, 8080)[0] == 200
        assert time.monotonic() - t0 < 5, "API trouble must not slow a checkpoint or a wake down"
        assert took_cp < 2
        # The writes get through in the end, retried with back-off.
        eventually(lambda: _labels(kube, pod).get("status.nri-zeropod.dev/web") == "RUNNING"
                   and _pod_requests(kube, pod) == REQUESTS, timeout=60, what="writes converge")
        eventually(lambda: any(e["reason"] == "Restored" and e["involvedObject"]["name"] == pod.name
                               for e in kube.events(ON)), timeout=30)
    finally:
        node.rm(pod.name, ON)
