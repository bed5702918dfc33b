"""Checkpoint and restore of a container's app in place, in the style of CRIU's zdtm.

For each workload (one of them running as nobody): record the visible state,
checkpoint, check the container is still RUNNING for CRI with the same
started_at and that the app and its memory are gone, restore, check the same
pid inside the container, the same state, and that the app's new output
reaches the CRI log; twenty times.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from nri_zeropod.cri import pb
from nri_zeropod.node import pods
from tests.e2e import kit
from tests.helpers import eventually

CYCLES = 20
MiB = 1 << 20

# A workload with several processes and threads: three threads bump counters,
# a forked child keeps its own counter and reports it through a pipe, and a
# TCP server on 9000 answers with all of it as JSON. It prints a tick line.
MULTI = r"""
import json, os, socket, threading, time
counters = [0, 0, 0]
def bump(i):
    while True:
        counters[i] += 1
        time.sleep(0.01)
for i in range(3):
    threading.Thread(target=bump, args=(i,), daemon=True).start()
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.close(r)
    n = 0
    while True:
        n += 1
        os.write(w, b"%d\n" % n)
        time.sleep(0.05)
os.close(w)
child_count = [0]
def read_child():
    f = os.fdopen(r)
    for line in f:
        child_count[0] = int(line)
threading.Thread(target=read_child, daemon=True).start()
def tick():
    n = 0
    while True:
        n += 1
        print("tick", n, flush=True)
        time.sleep(0.2)
threading.Thread(target=tick, daemon=True).start()
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 9000))
s.listen(64)
while True:
    c, _ = s.accept()
    alive = sum(t.is_alive() for t in threading.enumerate())
    c.sendall(json.dumps({"counters": counters, "threads": alive, "child": child,
                          "child_count": child_count[0], "pid": os.getpid()}).encode())
    c.close()
"""


# An app running as nobody, as most production images do: it counts the
# requests it answered, so every answer shows that its memory came back.
NOBODY = r"""
import os, socket
os.setgroups([]); os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 9000))
s.listen(64)
n = 0
while True:
    c, _ = s.accept()
    n += 1
    c.sendall(b"%d %d %d" % (os.getuid(), os.getgid(), n))
    c.close()
"""


def _nobody_prepare(pod: pods.Pod) -> Callable[[int], None]:
    def ask() -> list[int]:
        with socket.create_connection((pod.ip, 9000), timeout=5) as s:
            return [int(x) for x in s.recv(100).split()]

    first = eventually(ask, timeout=20, what="the app serves")
    assert first[:2] == [65534, 65534]
    seen = [first[2]]

    def check(_cycle: int) -> None:
        now = ask()
        assert now == [65534, 65534, seen[0] + 1], "still nobody, and the count went on"
        seen[0] = now[2]

    return check


def _multi_state(ip: str) -> dict:
    with socket.create_connection((ip, 9000), timeout=5) as s:
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return json.loads(data)


@dataclass
class Workload:
    name: str
    spec: Callable[[str], pods.ContainerSpec]
    # Records state before the first checkpoint; returns a checker run after each restore.
    prepare: Callable[[pods.Pod], Callable[[int], None]]
    # Something that makes the app write a line to its log after a restore.
    poke: Callable[[pods.Pod], None]
    log_marker: Callable[[int], str] = field(default=lambda _n: "")


def _http_check(port: int, expected: bytes) -> Callable[[pods.Pod], Callable[[int], None]]:
    def prepare(pod: pods.Pod) -> Callable[[int], None]:
        status, body = eventually(lambda: kit.http_get(pod.ip, port), timeout=20, what="app answers")
        assert status == 200 and expected in body

        def check(_cycle: int) -> None:
            assert kit.http_get(pod.ip, port) == (status, body)

        return check

    return prepare


def _redis_prepare(pod: pods.Pod) -> Callable[[int], None]:
    eventually(lambda: kit.redis(pod.ip, 6379, "PING") == "PONG", timeout=20, what="redis up")
    for i in range(100):
        kit.redis(pod.ip, 6379, "SET", f"key{i}", f"value{i}")

    def check(cycle: int) -> None:
        assert kit.redis(pod.ip, 6379, "DBSIZE") == 100 + cycle
        for i in (0, 42, 99):
            assert kit.redis(pod.ip, 6379, "GET", f"key{i}") == f"value{i}"
        for c in range(cycle):
            assert kit.redis(pod.ip, 6379, "GET", f"cycle{c}") == str(c)
        kit.redis(pod.ip, 6379, "SET", f"cycle{cycle}", str(cycle))

    return check


def _multi_prepare(pod: pods.Pod) -> Callable[[int], None]:
    first = eventually(lambda: _multi_state(pod.ip), timeout=20, what="workload serves")
    assert first["threads"] >= 5  # main, 3 bumpers, reader, ticker
    last = [first]

    def check(_cycle: int) -> None:
        now = _multi_state(pod.ip)
        assert now["pid"] == first["pid"] and now["child"] == first["child"]
        assert now["threads"] == first["threads"]
        assert all(a >= b for a, b in zip(now["counters"], last[0]["counters"])), (now, last[0])
        eventually(lambda: _multi_state(pod.ip)["child_count"] > now["child_count"], timeout=5, what="child counts")
        last[0] = now

    return check


WORKLOADS = [
    Workload(
        "busybox",
        lambda n: pods.ContainerSpec(name=n, image="busybox", ports=[8080]),
        _http_check(8080, b"hello from nri-zeropod (busybox)"),
        lambda pod: kit.http_get(pod.ip, 8080),
        lambda _n: "response:200",
    ),
    Workload(
        "python",
        lambda n: pods.ContainerSpec(name=n, image="python", ports=[8080]),
        _http_check(8080, b"hello from nri-zeropod (python)"),
        lambda pod: kit.http_get(pod.ip, 8080, f"/?cycle={time.monotonic_ns()}"),
        lambda _n: '"GET /?cycle=',
    ),
    Workload(  # a root master and two workers running as www-data
        "nginx",
        lambda n: pods.ContainerSpec(name=n, image="nginx", ports=[8080]),
        _http_check(8080, b"hello from nri-zeropod (nginx)"),
        lambda pod: kit.http_get(pod.ip, 8080, f"/?cycle={time.monotonic_ns()}"),
        lambda _n: '"GET /?cycle=',
    ),
    Workload(
        "redis",
        lambda n: pods.ContainerSpec(name=n, image="redis", ports=[6379]),
        _redis_prepare,
        lambda pod: None,
    ),
    Workload(
        "nobody",
        lambda n: pods.ContainerSpec(name=n, image="python", command=["python3", "-c", NOBODY], ports=[9000]),
        _nobody_prepare,
        lambda pod: None,
    ),
    Workload(
        "multi",
        lambda n: pods.ContainerSpec(name=n, image="python", command=["python3", "-c", MULTI], ports=[9000]),
        _multi_prepare,
        lambda pod: None,
        lambda _n: "tick",
    ),
]


class StatusPoller:
    """Polls CRI ContainerStatus every 50 ms and remembers every (state, started_at) it saw."""

    def __init__(self, node: kit.Node, cid: str) -> None:
        self.node, self.cid = node, cid
        self.seen: set[tuple[int, int]] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            st = self.node.cri.container_status(self.cid).status
            self.seen.add((st.state, st.started_at))
            self.polls += 1
            self._stop.wait(0.05)

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture()
def managed(node: kit.Node) -> Iterator[Callable[[pods.ContainerSpec], pods.Pod]]:
    made: list[str] = []

    def make(spec: pods.ContainerSpec, annotations: dict[str, str] | None = None) -> pods.Pod:
        name = kit.unique(spec.name)
        made.append(name)
        ann = {**kit.MANAGED, "nri-zeropod.dev/scaledown-duration": "0", **(annotations or {})}
        return node.run(pods.PodSpec(name=name, containers=[spec], annotations=ann))

    yield make
    for name in made:
        try:
            node.rm(name)
        except pods.PodError:
            pass


@pytest.mark.parametrize("workload", WORKLOADS, ids=[w.name for w in WORKLOADS])
def test_cycles_keep_state_pid_and_logs(node: kit.Node, managed, workload: Workload) -> None:
    pod = managed(workload.spec(workload.name))
    cid = pod.containers[workload.name]
    check = workload.prepare(pod)
    app = kit.app_of(node, cid)
    assert app is not None, "the keeper runs the app as its child"
    started = node.cri.container_status(cid).status.started_at
    with StatusPoller(node, cid) as poller:
        for cycle in range(CYCLES):
            kit.checkpoint(node, cid)
            assert kit.app_of(node, cid) is None, "the app is gone while checkpointed"
            assert kit.anon_memory(node, cid) < MiB, f"cycle {cycle}: {kit.anon_memory(node, cid)} bytes left"
            st = node.cri.container_status(cid).status
            assert (st.state, st.started_at) == (pb.CONTAINER_RUNNING, started)
            assert kit.status_of(node, cid)["state"] == "SCALED_DOWN"
            log_before = len(kit.cri_log(node, pod, workload.name))
            kit.restore(node, cid)
            back = kit.app_of(node, cid)
            assert back is not None and back.ns_pid == app.ns_pid, "same pid inside the container"
            check(cycle)
            workload.poke(pod)
            marker = workload.log_marker(cycle)
            if marker:
                eventually(
                    lambda: marker in kit.cri_log(node, pod, workload.name)[log_before:],
                    timeout=5, what=f"cycle {cycle}: the app's output after restore reaches the CRI log",
                )
    assert poller.polls > 10
    assert poller.seen == {(pb.CONTAINER_RUNNING, started)}, poller.seen
    s = kit.status_of(node, cid)
    assert s["checkpoints"] == CYCLES and s["restores"] == CYCLES
    assert s["state"] == "RUNNING"
    # Nobody exec'd into it: the restored app (CRIU forks it, then exits) is never taken for an exec.
    me = f'"{pod.namespace}/{pod.name}"'
    execs = [line for line in kit.agent_log(node).splitlines() if "exec into" in line and me in line]
    assert execs == []


def test_app_exit_ends_the_container_with_its_code(node: kit.Node, managed) -> None:
    spec = pods.ContainerSpec(
        name="exits", image="busybox",
        command=["sh", "-c", "while [ ! -f /tmp/stop ]; do sleep 0.05; done; exit 3"],
    )
    pod = managed(spec)
    cid = pod.containers["exits"]
    eventually(lambda: kit.app_of(node, cid), timeout=5, what="the app started")
    assert node.cri.exec_sync(cid, ["touch", "/tmp/stop"]).exit_code == 0
    st = kit.wait_exited(node, cid)
    assert st.exit_code == 3


def test_app_killed_from_an_exec_ends_the_container(node: kit.Node, managed) -> None:
    pod = managed(pods.ContainerSpec(name="killed", image="busybox", ports=[8080]))
    cid = pod.containers["killed"]
    app = eventually(lambda: kit.app_of(node, cid), timeout=5, what="the app started")
    node.cri.exec_sync(cid, ["kill", "-KILL", str(app.ns_pid)])
    st = kit.wait_exited(node, cid)
    assert st.exit_code == 137


def test_stop_while_scaled_down_is_quick(node: kit.Node, managed) -> None:
    pod = managed(pods.ContainerSpec(name="stopme", image="busybox", ports=[8080]))
    cid = pod.containers["stopme"]
    eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)
    kit.checkpoint(node, cid)
    t0 = time.monotonic()
    node.cri.stop_container(cid, timeout=30)
    took = time.monotonic() - t0
    st = node.cri.container_status(cid).status
    assert st.state == pb.CONTAINER_EXITED and st.exit_code == 0
    assert took < 1.0, f"StopContainer took {took:.2f}s"


# A ghost (open, deleted) file over CRIU's 1 MiB default ghost limit: CRIU refuses to dump it.
GHOST = "dd if=/dev/zero of=/tmp/big bs=1M count=3 2>/dev/null; exec 3</tmp/big; rm /tmp/big; exec httpd -f -p 8080 -h /www"


def test_refused_checkpoint_leaves_the_app_running(node: kit.Node, managed) -> None:
    pod = managed(pods.ContainerSpec(name="ghost", image="busybox", command=["sh", "-c", GHOST], ports=[8080]))
    cid = pod.containers["ghost"]
    eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)
    app = kit.app_of(node, cid)
    reply = kit.admin(node, "checkpoint", cid)
    assert not reply["ok"]
    assert "criu dump" in reply["error"] and "log: " in reply["error"] and reply["error"].rstrip().endswith("dump.log")
    log_path = reply["error"].rsplit("log: ", 1)[1].strip()
    assert "Error" in open(log_path).read()
    assert kit.app_of(node, cid) == app, "the app keeps running, same process"
    assert kit.http_get(pod.ip, 8080)[0] == 200
    assert node.cri.container_status(cid).status.state == pb.CONTAINER_RUNNING
    s = kit.status_of(node, cid)
    assert s["state"] == "RUNNING" and "checkpoint failed" in s["last_error"]


def test_unmanaged_pod_is_untouched(node: kit.Node) -> None:
    name = kit.unique("plain")
    pod = node.run(pods.PodSpec(name=name, containers=[pods.ContainerSpec(name="plain", image="busybox", ports=[8080])]))
    try:
        cid = pod.containers["plain"]
        mounts = node.cri.exec_sync(cid, ["cat", "/proc/mounts"]).stdout.decode()
        assert "/.zeropod" not in mounts
        init = node.cri.exec_sync(cid, ["cat", "/proc/1/cmdline"]).stdout.split(b"\0")
        assert init[0] == b"/bin/httpd"
        assert all(c["id"] != cid for c in kit.admin(node, "status")["containers"])
    finally:
        node.rm(name)


def test_invalid_annotation_runs_unmanaged_with_one_clear_line(node: kit.Node, managed) -> None:
    spec = pods.ContainerSpec(name="badann", image="busybox", ports=[8080])
    pod = managed(spec, {"nri-zeropod.dev/scaledown-duration": "banana"})
    cid = pod.containers["badann"]
    eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)
    assert node.cri.exec_sync(cid, ["cat", "/proc/1/cmdline"]).stdout.split(b"\0")[0] == b"/bin/httpd"
    lines = [json.loads(line) for line in kit.agent_log(node).splitlines() if pod.name in line and "banana" in line]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line["pod"] == f"default/{pod.name}" and line["container"] == "badann"
    assert line["key"] == "nri-zeropod.dev/scaledown-duration" and line["value"] == "banana"


def test_missed_creation_is_refused_at_start_and_works_when_recreated(node: kit.Node) -> None:
    from nri_zeropod.node import agentctl

    name = kit.unique("missed")
    spec = pods.PodSpec(name=name, annotations=kit.MANAGED,
                        containers=[pods.ContainerSpec(name="missed", image="busybox", ports=[8080])])
    agentctl.stop(node.cfg)
    try:
        pod = pods.run_pod(node.cri, node.cfg, spec, start=False)
    finally:
        agentctl.start(node.cfg)
    try:
        cid = pod.containers["missed"]
        with pytest.raises(Exception) as err:
            node.cri.start_container(cid)
        assert "created while nri-zeropod was not connected" in str(err.value)
        node.cri.remove_container(cid)
        again = kit.add_container(node, spec.containers[0], spec=spec, pod=pod)
        node.cri.start_container(again)
        init = node.cri.exec_sync(again, ["cat", "/proc/1/cmdline"]).stdout.split(b"\0")[0]
        assert init == b"/.zeropod/bin/zeropod-init"
    finally:
        node.rm(name)


def test_container_started_without_the_agent_is_reported_unmanaged(node: kit.Node) -> None:
    from nri_zeropod.node import agentctl

    name = kit.unique("early")
    spec = pods.PodSpec(name=name, annotations=kit.MANAGED,
                        containers=[pods.ContainerSpec(name="early", image="busybox", ports=[8080])])
    agentctl.stop(node.cfg)
    try:
        pod = node.run(spec)
    finally:
        agentctl.start(node.cfg)
    try:
        cid = pod.containers["early"]
        assert kit.http_get(pod.ip, 8080)[0] == 200
        unmanaged = kit.admin(node, "status")["unmanaged"]
        assert [u["id"] for u in unmanaged if u["pod"] == name] == [cid]
        assert node.cri.container_status(cid).status.state == pb.CONTAINER_RUNNING
        assert kit.admin(node, "checkpoint", cid)["ok"] is False
    finally:
        node.rm(name)
