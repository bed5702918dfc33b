"""``kubectl exec`` (CRI ExecSync, the same runc exec path) into a scaled-down container."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from nri_zeropod.node import pods
from tests.e2e import kit
from tests.helpers import eventually


@pytest.fixture()
def web(node: kit.Node) -> Iterator[pods.Pod]:
    name = kit.unique("exec")
    pod = node.run(pods.PodSpec(name=name, annotations={**kit.MANAGED, "nri-zeropod.dev/scaledown-duration": "1s"},
                                containers=[pods.ContainerSpec(name="web", image="busybox", ports=[8080])]))
    eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)
    yield pod
    pods.remove_pod(node.cri, node.cfg, name, grace=1)


def test_exec_finds_the_app_before_it_does_anything(node: kit.Node, web: pods.Pod) -> None:
    cid = web.containers["web"]
    app = kit.app_of(node, cid)
    assert app is not None
    for _ in range(3):
        before = kit.wait_scaled_down(node, cid)
        assert kit.app_of(node, cid) is None
        # The very first thing the command does is look for the app.
        res = node.cri.exec_sync(cid, ["sh", "-c", f"kill -0 {app.ns_pid} && echo present"], timeout=30)
        assert (res.exit_code, res.stdout) == (0, b"present\n"), res.stderr
        after = kit.status_of(node, cid)
        assert after["restores"] == before["restores"] + 1


def test_exec_wget_localhost_gets_the_apps_answer(node: kit.Node, web: pods.Pod) -> None:
    cid = web.containers["web"]
    kit.wait_scaled_down(node, cid)
    res = node.cri.exec_sync(cid, ["wget", "-q", "-O", "-", "http://localhost:8080/"], timeout=30)
    assert res.exit_code == 0 and b"hello from nri-zeropod (busybox)" in res.stdout


def test_no_scale_down_while_an_exec_runs(node: kit.Node, web: pods.Pod) -> None:
    cid = web.containers["web"]
    assert kit.http_get(web.ip, 8080)[0] == 200
    base = kit.status_of(node, cid)["checkpoints"]
    done = threading.Event()

    def long_exec() -> None:
        node.cri.exec_sync(cid, ["sleep", "6"], timeout=30)
        done.set()

    t = threading.Thread(target=long_exec)
    t.start()
    time.sleep(1)
    try:
        eventually(lambda: "exec running" in str(kit.status_of(node, cid)["busy"]), timeout=10,
                   what="status says an exec runs")
        while not done.is_set():
            assert kit.status_of(node, cid)["checkpoints"] == base, "scaled down under a running exec"
            time.sleep(0.2)
    finally:
        t.join()
    kit.wait_scaled_down(node, cid)
