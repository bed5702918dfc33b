"""Faults: every container and every connection survives what we can do to the agent and the node.

Counts of what was injected and what was lost are printed (``-s`` shows them)
and asserted to be what the issue demands: no container lost, no connection
refused, no orphaned files.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from nri_zeropod.agent import admin
from nri_zeropod.cri import pb
from nri_zeropod.node import agentctl, node as nodemod, pods
from tests.e2e import kit
from tests.helpers import eventually

FIGURES: dict[str, int] = {}


def count(what: str, n: int = 1) -> None:
    FIGURES[what] = FIGURES.get(what, 0) + n


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print("\nfault figures:", ", ".join(f"{k}={v}" for k, v in sorted(FIGURES.items())))


@pytest.fixture()
def managed(node: kit.Node) -> Iterator[Callable[..., pods.Pod]]:
    made: list[str] = []

    def make(spec: pods.ContainerSpec, duration: str = "0", **ann: str) -> pods.Pod:
        name = kit.unique(spec.name)
        made.append(name)
        annotations = {**kit.MANAGED, **ann}
        if not any(k.endswith("/scaledown-duration") for k in ann):
            annotations["nri-zeropod.dev/scaledown-duration"] = duration
        return node.run(pods.PodSpec(name=name, containers=[spec], annotations=annotations))

    yield make
    for name in made:
        try:
            pods.remove_pod(node.cri, node.cfg, name, grace=1)
        except pods.PodError:
            pass


def agent_pid(node: kit.Node) -> int:
    return int((node.cfg.pids / "agent.pid").read_text().split()[0])


def agent_ready(node: kit.Node) -> bool:
    try:
        return bool(kit.admin(node, "ping", timeout=2).get("synchronized"))
    except admin.AdminError:
        return False


def kill_agent(node: kit.Node) -> None:
    os.kill(agent_pid(node), signal.SIGKILL)
    count("agent SIGKILLs")


def wait_agent_back(node: kit.Node, old: int) -> None:
    eventually(lambda: agent_pid(node) != old and agent_ready(node), timeout=30, what="agent restarted and synced")


def redis_spec() -> pods.ContainerSpec:
    return pods.ContainerSpec(name="redis", image="redis", ports=[6379])


def test_restore_failure_ends_the_container_cleanly(node: kit.Node, managed) -> None:
    pod = managed(pods.ContainerSpec(name="web", image="busybox", ports=[8080]))
    cid = pod.containers["web"]
    eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)
    pid_before = agent_pid(node)
    kit.checkpoint(node, cid)
    images = node.cfg.agent_state / cid / "images"
    for img in images.glob("pages-*.img"):
        img.write_bytes(b"\0" * 7)  # corrupt the memory image
    count("restore failures injected")
    t0 = time.monotonic()
    with socket.create_connection((pod.ip, 8080), timeout=30) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            answer = s.recv(100)
        except OSError:
            answer = b""
    assert answer == b"", "nothing could serve it..."
    assert time.monotonic() - t0 < 20, "...but it was not left hanging"
    st = kit.wait_exited(node, cid, timeout=15, what="the container ends")
    assert st.exit_code != 0
    assert "restore-failed" in kit.cri_log(node, pod, "web"), "the keeper says why it ended the container"
    line = next(line for line in kit.agent_log(node).splitlines() if '"restore failed"' in line and pod.name in line)
    assert "restore.log" in line and '"container": "web"' in line
    assert agent_pid(node) == pid_before, "the agent neither crashed nor restarted"
    # The runtime restarts it (kubelet would create the container again): that works.
    spec = pods.PodSpec(name=pod.name, annotations={**kit.MANAGED}, containers=[
        pods.ContainerSpec(name="web", image="busybox", ports=[8080])])
    again = kit.add_container(node, spec.containers[0], spec=spec, pod=pod, attempt=1)
    node.cri.start_container(again)
    assert eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)


def _gone(node: kit.Node, cid: str, pod_id: str) -> bool:
    return not (node.cfg.agent_state / cid).exists() and not (node.cfg.bpf_pins / pod_id).exists()


@pytest.mark.parametrize("phase", ["CHECKPOINTING", "RESTORING", "SCALED_DOWN"])
def test_stop_and_remove_at_any_moment(node: kit.Node, managed, phase: str) -> None:
    pod = managed(redis_spec())
    cid = pod.containers["redis"]
    eventually(lambda: kit.redis(pod.ip, 6379, "PING") == "PONG", timeout=20)
    kit.fill_redis(pod.ip, 300, key="fill", fill="y")  # big enough for the dump and the restore to take a while
    if phase in ("RESTORING", "SCALED_DOWN"):
        kit.checkpoint(node, cid)
    op = {"CHECKPOINTING": "checkpoint", "RESTORING": "restore"}.get(phase)
    worker = None
    if op:
        worker = threading.Thread(target=lambda: kit.admin(node, op, cid), daemon=True)
        worker.start()
        eventually(lambda: kit.status_of(node, cid)["state"] == phase, timeout=10, period=0.002, what=phase)
    t0 = time.monotonic()
    node.cri.stop_container(cid, timeout=10)
    took = time.monotonic() - t0
    assert took < 10 + 2, f"stop took {took:.1f}s"
    assert node.cri.container_status(cid).status.state == pb.CONTAINER_EXITED
    node.rm(pod.name)
    count(f"stops while {phase.lower()}")
    eventually(lambda: _gone(node, cid, pod.id), timeout=15, what="images, state and pins removed")
    if worker:
        worker.join(timeout=30)


def test_sweep_at_agent_start_removes_orphans(node: kit.Node) -> None:
    agentctl.stop(node.cfg)
    orphan = node.cfg.agent_state / ("f" * 64)
    (orphan / "images").mkdir(parents=True)
    (orphan / "images/pages-1.img").write_bytes(b"secret memory")
    pins = node.cfg.bpf_pins / ("e" * 64)
    pins.mkdir(parents=True)
    agentctl.start(node.cfg)
    eventually(lambda: not orphan.exists() and not pins.exists(), timeout=10, what="orphans swept")
    count("orphans swept", 2)


def test_agent_killed_at_random_points(node: kit.Node, managed) -> None:
    """50 SIGKILLs of the agent while idle, mid-checkpoint, mid-restore and mid-proxy."""
    rnd = random.Random(20261130)
    pod = managed(redis_spec())
    cid = pod.containers["redis"]
    eventually(lambda: kit.redis(pod.ip, 6379, "PING") == "PONG", timeout=20)
    kit.fill_redis(pod.ip, 20, key="fill", fill="y")
    refused = cut = 0
    for run in range(50):
        phase = rnd.choice(["idle", "checkpoint", "restore", "proxy"])
        kit.redis(pod.ip, 6379, "SET", f"run{run}", str(run))
        old = agent_pid(node)
        if phase == "idle":
            kill_agent(node)
        elif phase == "checkpoint":
            threading.Thread(target=_quietly(lambda: kit.admin(node, "checkpoint", cid)), daemon=True).start()
            time.sleep(rnd.uniform(0, 0.08))
            kill_agent(node)
        else:
            if kit.status_of(node, cid)["state"] != "SCALED_DOWN":
                kit.checkpoint(node, cid)
            s = socket.create_connection((pod.ip, 6379), timeout=30)
            try:
                if phase == "restore":
                    s.sendall(b"*1\r\n$4\r\nPING\r\n")
                    time.sleep(rnd.uniform(0, 0.03))
                    kill_agent(node)
                    # Accepted by the agent before it died: served, or cut with it; never refused.
                    try:
                        if s.recv(7) != b"+PONG\r\n":
                            cut += 1
                    except OSError:
                        cut += 1
                else:
                    assert kit.redis_on(s, "PING") == "PONG"
                    kill_agent(node)
                    try:
                        # The proxy lived in the agent: this connection is cut, never refused.
                        kit.redis_on(s, "PING")
                    except (OSError, RuntimeError):
                        cut += 1
            except ConnectionRefusedError:
                refused += 1
            finally:
                s.close()
        count(f"kills while {phase}")
        wait_agent_back(node, old)
        eventually(lambda: kit.status_of(node, cid)["state"] in ("RUNNING", "SCALED_DOWN"), timeout=30,
                   what=f"run {run} ({phase}): a settled state")
        try:
            for i in range(run + 1):
                assert kit.redis(pod.ip, 6379, "GET", f"run{i}") == str(i), f"run {run} ({phase}): key run{i}"
        except ConnectionRefusedError:
            refused += 1
        assert node.cri.container_status(cid).status.state == pb.CONTAINER_RUNNING, f"run {run}: container lost"
    count("connections refused", refused)
    count("agent-held connections cut by an agent kill", cut)
    assert refused == 0


def _quietly(fn: Callable[[], object]) -> Callable[[], None]:
    """For a thread whose connection to the agent dies with the agent."""

    def run() -> None:
        try:
            fn()
        except admin.AdminError:
            pass

    return run


def test_containerd_restart(node: kit.Node, managed) -> None:
    running = managed(pods.ContainerSpec(name="up", image="busybox", ports=[8080]))
    sleeping = managed(redis_spec())
    plain = node.run(pods.PodSpec(name=kit.unique("plain"), containers=[
        pods.ContainerSpec(name="plain", image="busybox", ports=[8080])]))
    try:
        up, down = running.containers["up"], sleeping.containers["redis"]
        eventually(lambda: kit.redis(sleeping.ip, 6379, "PING") == "PONG", timeout=20)
        kit.redis(sleeping.ip, 6379, "SET", "survives", "containerd")
        kit.checkpoint(node, down)
        app_before = kit.app_of(node, up)
        restores_before = kit.status_of(node, down)["restores"]
        plain_pid = kit.keeper_pid(node, plain.containers["plain"])
        old = agent_pid(node)
        nodemod.restart_containerd(node.cfg)
        node.cri.close()
        node.cri = type(node.cri)(str(node.cfg.containerd_sock))
        count("containerd restarts")
        wait_agent_back(node, old)
        assert "lost the NRI connection" in kit.agent_log(node) or "NRI connection closed" in kit.agent_log(node)
        # Nothing was restored or restarted that did not need it.
        assert kit.app_of(node, up) == app_before
        assert kit.status_of(node, down)["state"] == "SCALED_DOWN"
        assert kit.status_of(node, down)["restores"] == restores_before
        assert kit.keeper_pid(node, plain.containers["plain"]) == plain_pid
        assert kit.redis(sleeping.ip, 6379, "GET", "survives") == "containerd"
        assert kit.http_get(running.ip, 8080)[0] == 200
    finally:
        node.rm(plain.name)


def test_disk_full_while_dumping(node: kit.Node, managed) -> None:
    pod = managed(pods.ContainerSpec(name="py", image="python", ports=[8080]), duration="1s")
    cid = pod.containers["py"]
    images = node.cfg.agent_state / cid / "images"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "nzfull", str(images)], check=True)
    try:
        st = eventually(lambda: (s := kit.status_of(node, cid))["checkpoint_errors"] >= 1 and s, timeout=20,
                        what="a failed checkpoint")
        count("disk-full dumps")
        assert kit.app_of(node, cid) is not None, "the app keeps running"
        assert kit.http_get(pod.ip, 8080)[0] == 200
        assert "checkpoint failed" in st["busy"] and "dump.log" in st["last_error"]
        time.sleep(6)  # several scale-down periods: the next attempt waits (backs off)
        st = kit.status_of(node, cid)
        assert st["checkpoint_errors"] == 1 and st["state"] == "RUNNING"
    finally:
        subprocess.run(["umount", str(images)], check=True)


def test_200_cycles_of_redis_with_writes(node: kit.Node, managed) -> None:
    pod = managed(redis_spec())
    cid = pod.containers["redis"]
    eventually(lambda: kit.redis(pod.ip, 6379, "PING") == "PONG", timeout=20)
    for i in range(200):
        kit.redis(pod.ip, 6379, "SET", f"key{i}", f"value{i}")
        kit.checkpoint(node, cid)
        if i % 2:
            kit.restore(node, cid)  # half by hand, half woken by the next write
    count("redis cycles", 200)
    assert kit.redis(pod.ip, 6379, "DBSIZE") == 200
    for i in range(200):
        assert kit.redis(pod.ip, 6379, "GET", f"key{i}") == f"value{i}"


BAD = [
    ("nri-zeropod.dev/scaledown-duration", "banana"),
    ("nri-zeropod.dev/scaledown-duration", "-5s"),
    ("nri-zeropod.dev/scaledown-duration", ""),
    ("zeropod.ctrox.dev/scaledown-duration", "1d"),
    ("nri-zeropod.dev/ports-map", "web=99999"),
    ("zeropod.ctrox.dev/ports-map", "web=http"),
    ("nri-zeropod.dev/ports-map", "=8080"),
    ("nri-zeropod.dev/container-names", "Bad_Name"),
    ("zeropod.ctrox.dev/container-names", ","),
    ("nri-zeropod.dev/disable-probe-detection", "maybe"),
    ("nri-zeropod.dev/scaledown-duration", "9" * 5000),
]


@pytest.mark.parametrize(("key", "value"), BAD, ids=[f"{k.split('/')[1]}={v[:12]!r}" for k, v in BAD])
def test_invalid_annotation_values(node: kit.Node, managed, key: str, value: str) -> None:
    pod = managed(pods.ContainerSpec(name="web", image="busybox", ports=[8080]), **{key: value})
    cid = pod.containers["web"]
    eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)
    assert node.cri.exec_sync(cid, ["cat", "/proc/1/cmdline"]).stdout.split(b"\0")[0] == b"/bin/httpd"
    lines = [line for line in kit.agent_log(node).splitlines() if pod.name in line and "invalid annotation" in line]
    assert len(lines) == 1, lines
    assert key in lines[0]
    count("invalid annotations")


def test_invalid_enabled_value(node: kit.Node) -> None:
    name = kit.unique("badbool")
    pod = node.run(pods.PodSpec(name=name, annotations={"nri-zeropod.dev/enabled": "yes please"},
                                containers=[pods.ContainerSpec(name="web", image="busybox", ports=[8080])]))
    try:
        assert node.cri.exec_sync(pod.containers["web"], ["cat", "/proc/1/cmdline"]).stdout.startswith(b"/bin/httpd")
        lines = [line for line in kit.agent_log(node).splitlines() if name in line and "invalid annotation" in line]
        assert len(lines) == 1 and "nri-zeropod.dev/enabled" in lines[0]
    finally:
        node.rm(name)


def _orphans(node: kit.Node) -> list[str]:
    containers = {c.id for c in node.cri.list_containers()}
    pod_ids = {p.id for p in node.cri.list_pod_sandbox()}
    found = [f"state {p.name}" for p in node.cfg.agent_state.iterdir() if p.is_dir() and p.name not in containers]
    if node.cfg.bpf_pins.exists():
        found += [f"pins {p.name}" for p in node.cfg.bpf_pins.iterdir() if p.name not in pod_ids]
    for c in containers:
        if (node.cfg.agent_state / c).is_dir() and kit.status_of(node, c)["state"] != "SCALED_DOWN":
            found += [f"image {p}" for p in (node.cfg.agent_state / c / "images").glob("*.img")]
    return found


def test_zz_no_orphans_left(node: kit.Node) -> None:
    """After everything above: state and pins exist only for containers and pods the runtime has."""
    # Removal cleans up in the background, right after containerd's RemoveContainer.
    try:
        eventually(lambda: not _orphans(node), timeout=15, what="no orphans")
    except AssertionError:
        pass
    left = _orphans(node)
    count("orphaned files", len(left))
    log = (node.cfg.logs / "containerd.log").read_text(errors="replace").splitlines()
    context = {o: [line[:300] for line in log if o.split()[-1][:12] in line][:3] for o in left}
    assert left == [], context


@pytest.fixture(autouse=True)
def _agent_stays_up(node: kit.Node) -> Iterator[None]:
    yield
    if not agent_ready(node):
        agentctl.start(node.cfg)
        assert agent_ready(node)
