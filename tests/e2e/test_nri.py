"""The NRI library against the real containerd 2.1 (NRI v0.8.0) of the local node.

Each test runs its own plugin (see :mod:`tests.e2e.nri_plugins`) in a thread,
connected to the node's NRI socket beside whatever else is connected there
(nri-zeropod's agent, idx 95), and looks only at the pods it created: the
plugins record events by pod-name prefix. Pods are driven through CRI the way
kubelet drives them; every pod is removed and every plugin disconnected at
the end of its test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


from nri_zeropod.node import cleanup, pods
from nri_zeropod.nri import ConnectionLost, ContainerAdjustment, ContainerUpdate, KeyValue, Mount, api
from nri_zeropod.nri.api import LinuxContainerUpdate, LinuxCPU, LinuxResources, OptionalUInt64
from tests.e2e import kit
from tests.e2e.nri_plugins import PluginThread, Recorder, SilentPlugin
from tests.helpers import eventually

REQUEST_TIMEOUT = 2.0  # plugin_request_timeout in the node's containerd.toml
SLEEPER = ["sleep", "3600"]  # for extra containers: the image's httpd would fight over port 8080

LIFECYCLE = [
    "run_pod_sandbox",
    "create_container",
    "post_create_container",
    "start_container",
    "post_start_container",
    "stop_container",
    "remove_container",
    "stop_pod_sandbox",
    "remove_pod_sandbox",
]


# -- helpers ------------------------------------------------------------------


@contextmanager
def pod_removed(node: kit.Node, *names: str) -> Iterator[None]:
    try:
        yield
    finally:
        for name in names:
            kit.remove_now(node, name)


def cri_pid(node: kit.Node, container_id: str) -> int:
    pid = node.cri.container_info(container_id)["pid"]
    assert isinstance(pid, int) and pid > 0, pid
    return pid


def sandbox_pid(node: kit.Node, pod_id: str) -> int:
    info = json.loads(node.cri.pod_sandbox_status(pod_id, verbose=True).info["info"])
    pid = info["pid"]
    assert isinstance(pid, int) and pid > 0, pid
    return pid


def timed_add(node: kit.Node, c: pods.ContainerSpec, *, spec: pods.PodSpec, pod: pods.Pod) -> tuple[str, float]:
    t0 = time.monotonic()
    cid = kit.add_container(node, c, spec=spec, pod=pod)
    return cid, time.monotonic() - t0


class ContainerdLog:
    """The lines containerd logged since this object was made."""

    def __init__(self, node: kit.Node) -> None:
        self.path = node.cfg.logs / "containerd.log"
        self.start = self.path.stat().st_size

    def lines(self, *words: str) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.start)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if all(w in line for w in words)]


def cgroup_of(pid: int, controller: str) -> tuple[str, Path]:
    """``pid``'s cgroup path in the cgroup v1 ``controller`` hierarchy, and that cgroup's directory."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path, Path("/sys/fs/cgroup", controllers, path.lstrip("/"))  # mounted as e.g. cpu or cpu,cpuacct
    raise AssertionError(f"pid {pid} is in no cgroup v1 {controller} hierarchy")


def busybox_pod(name: str, **kwargs: object) -> pods.PodSpec:
    return pods.PodSpec(name=name, containers=[pods.ContainerSpec(name="web", image="busybox")], **kwargs)  # type: ignore[arg-type]


# -- registration -------------------------------------------------------------


def test_registers_is_configured_and_synchronizes_pods_that_already_exist(node: kit.Node) -> None:
    base = kit.unique("nri-sync")
    name = f"{base}-before"
    spec = busybox_pod(name, annotations={"e2e.nri.test/when": "before"}, labels={"e2e-nri-test": "sync"})
    with pod_removed(node, name):
        pod = node.run(spec)
        cid = pod.containers["web"]
        plugin = Recorder(name="e2e-recorder", idx="10", watch=base)
        with PluginThread(plugin, node.cfg.nri_sock) as t:
            t.ready()
            assert plugin.registered.is_set() and plugin.configured.is_set()
            rt = plugin.runtime
            assert rt.name == "containerd"
            assert rt.version.startswith("2.1."), rt.version
            assert rt.request_timeout == REQUEST_TIMEOUT
            assert rt.nri_api == (0, 8)

            [p] = [p for p in plugin.synced_pods if p.name == name]
            assert (p.id, p.namespace, p.uid) == (pod.id, "default", pod.uid)
            assert p.annotations["e2e.nri.test/when"] == "before"
            assert p.labels["e2e-nri-test"] == "sync"
            assert p.pid == sandbox_pid(node, pod.id)
            [c] = [c for c in plugin.synced_containers if c.pod_sandbox_id == pod.id]
            assert (c.id, c.name) == (cid, "web")
            assert c.state == api.ContainerState.Value("CONTAINER_RUNNING")
            assert c.pid == cri_pid(node, cid)
            # Synchronize is the whole picture: nothing about this pod came as an event.
            assert plugin.seen() == []
            assert t.connected
        assert t.stop() is None


# -- events -------------------------------------------------------------------


def test_pod_and_container_events_arrive_in_order_with_metadata_and_pid(node: kit.Node) -> None:
    name = kit.unique("nri-order")
    annotations = {"e2e.nri.test/color": "blue", "e2e.nri.test/size": "small"}
    labels = {"e2e-nri-test": "order", "tier": "web"}
    plugin = Recorder(name="e2e-recorder", idx="10", watch=name)
    with PluginThread(plugin, node.cfg.nri_sock) as t, pod_removed(node, name):
        t.ready()
        pod = node.run(busybox_pod(name, annotations=annotations, labels=labels))
        cid = pod.containers["web"]
        pid = cri_pid(node, cid)
        # Kubelet's order for a pod going away after its container was removed.
        node.cri.stop_container(cid, timeout=0)
        node.cri.remove_container(cid)
        node.cri.stop_pod_sandbox(pod.id)
        node.cri.remove_pod_sandbox(pod.id)
        cleanup.cgroups(f"{node.cfg.cgroup_parent}/pod{pod.uid}")

        eventually(lambda: len(plugin.event_names(name)) >= len(LIFECYCLE), timeout=10, what="all lifecycle events")
        seen = plugin.seen(name)
        assert [s.event for s in seen] == LIFECYCLE
        assert [s.at for s in seen] == sorted(s.at for s in seen)
        for s in seen:
            assert s.pod.id == pod.id and s.pod.uid == pod.uid, s.event
            assert {k: s.pod.annotations.get(k) for k in annotations} == annotations, s.event
            assert {k: s.pod.labels.get(k) for k in labels} == labels, s.event
            assert s.pod.labels[pods.POD_NAME] == name
            if s.container is not None:
                assert (s.container.id, s.container.name, s.container.pod_sandbox_id) == (cid, "web", pod.id)
        by_event = {s.event: s.container for s in seen if s.container is not None}
        assert by_event["create_container"].pid == 0
        assert by_event["post_create_container"].pid == 0
        assert by_event["start_container"].pid == pid
        assert by_event["post_start_container"].pid == pid
        state = api.ContainerState.Value
        assert by_event["post_create_container"].state == state("CONTAINER_CREATED")
        assert by_event["post_start_container"].state == state("CONTAINER_RUNNING")
        assert t.connected


def test_create_adjustment_adds_env_and_read_only_bind_mount(node: kit.Node, tmp_path: Path) -> None:
    name = kit.unique("nri-adjust")
    share = tmp_path / "share"
    share.mkdir()
    (share / "greeting").write_text("hello from the host\n")

    async def adjust(pod: api.PodSandbox, container: api.Container) -> ContainerAdjustment:
        return ContainerAdjustment(
            env=[KeyValue(key="NRI_E2E_GREETING", value="hello-from-nri")],
            mounts=[Mount(destination="/nri-e2e", type="bind", source=str(share), options=["rbind", "ro"])],
        )

    plugin = Recorder(name="e2e-adjuster", idx="10", watch=name, adjust=adjust)
    spec = pods.PodSpec(name, containers=[pods.ContainerSpec("web", "busybox", env={"FROM_CRI": "yes"})])
    with PluginThread(plugin, node.cfg.nri_sock) as t, pod_removed(node, name):
        t.ready()
        pod = node.run(spec)
        cid = pod.containers["web"]

        env = node.cri.exec_sync(cid, ["env"], timeout=10)
        assert env.exit_code == 0, env.stderr
        lines = env.stdout.decode().splitlines()
        assert "NRI_E2E_GREETING=hello-from-nri" in lines
        assert "FROM_CRI=yes" in lines  # added to, not replaced

        cat = node.cri.exec_sync(cid, ["cat", "/nri-e2e/greeting"], timeout=10)
        assert (cat.exit_code, cat.stdout) == (0, b"hello from the host\n"), cat.stderr

        write = node.cri.exec_sync(cid, ["sh", "-c", "echo x > /nri-e2e/new"], timeout=10)
        assert write.exit_code != 0
        assert b"Read-only file system" in write.stderr, write.stderr
        assert not (share / "new").exists()
        assert t.connected


# -- big messages -------------------------------------------------------------


def test_messages_over_4096_bytes_go_both_ways_and_the_plugin_stays(node: kit.Node) -> None:
    """Runtime → plugin: a pod with 200 annotations of 50-byte values (the runtime splits the frame).
    Plugin → runtime: an adjustment with 100 annotations and a 6000-byte env var (we split it).
    """
    name = kit.unique("nri-big")
    incoming = {f"e2e.nri.test/in-{i:03d}": f"{i:03d}" + "x" * 47 for i in range(200)}
    outgoing = {f"e2e.nri.test/out-{i:03d}": f"{i:03d}" + "y" * 47 for i in range(100)}
    long_value = "z" * 6000
    reply = ContainerAdjustment(annotations=outgoing, env=[KeyValue(key="NRI_E2E_LONG", value=long_value)])
    assert reply.ByteSize() > 2 * 4096

    async def adjust(pod: api.PodSandbox, container: api.Container) -> ContainerAdjustment:
        return reply

    log = ContainerdLog(node)
    plugin = Recorder(name="e2e-big", idx="10", watch=name, adjust=adjust)
    with PluginThread(plugin, node.cfg.nri_sock) as t, pod_removed(node, name):
        t.ready()
        pod = node.run(busybox_pod(name, annotations=incoming))
        cid = pod.containers["web"]

        [run] = [s for s in plugin.seen(name) if s.event == "run_pod_sandbox"]
        assert run.pod.ByteSize() > 2 * 4096
        assert {k: run.pod.annotations.get(k) for k in incoming} == incoming

        spec_annotations = node.cri.container_info(cid)["runtimeSpec"]["annotations"]
        assert {k: spec_annotations.get(k) for k in outgoing} == outgoing
        env = node.cri.exec_sync(cid, ["env"], timeout=10)
        assert env.exit_code == 0 and f"NRI_E2E_LONG={long_value}" in env.stdout.decode().splitlines()

        # The next events still arrive, on the same connection.
        assert plugin.event_names(name) == LIFECYCLE[:5]
        kit.remove_now(node, name)
        eventually(lambda: plugin.event_names(name)[-1] == "remove_pod_sandbox", timeout=10, what="removal events")
        assert plugin.event_names(name) == LIFECYCLE[:5] + ["stop_container", "stop_pod_sandbox", "remove_container", "remove_pod_sandbox"]
        assert t.connected
        assert log.lines("closing plugin 10-e2e-big") == []


# -- unsolicited updates --------------------------------------------------------


def test_unsolicited_update_changes_cpu_shares_of_a_running_container(node: kit.Node) -> None:
    name = kit.unique("nri-update")
    plugin = Recorder(name="e2e-updater", idx="10", watch=name)
    spec = pods.PodSpec(name, containers=[pods.ContainerSpec("web", "busybox", memory_limit=64 << 20)])
    with pod_removed(node, name):
        pod = node.run(spec)
        cid = pod.containers["web"]
        pid = cri_pid(node, cid)
        cpu_path, cpu_dir = cgroup_of(pid, "cpu")
        shares = cpu_dir / "cpu.shares"
        memory = cgroup_of(pid, "memory")[1] / "memory.limit_in_bytes"
        assert shares.read_text().strip() == "2"  # what the pod spec asked for (pods.py)
        assert memory.read_text().strip() == str(64 << 20)
        with PluginThread(plugin, node.cfg.nri_sock) as t:
            t.ready()
            [synced] = [c for c in plugin.synced_containers if c.id == cid]
            assert synced.linux.cgroups_path == cpu_path

            update = ContainerUpdate(
                container_id=cid,
                linux=LinuxContainerUpdate(resources=LinuxResources(cpu=LinuxCPU(shares=OptionalUInt64(value=512)))),
            )
            failed = t.call(plugin.update_containers([update]), timeout=15)
            assert failed == []
            eventually(lambda: shares.read_text().strip() == "512", timeout=5, what="cpu.shares 512")
            status = node.cri.container_status(cid).status
            assert status.resources.linux.cpu_shares == 512
            # Only what the update names changes; the memory limit stays.
            assert memory.read_text().strip() == str(64 << 20)
            assert status.resources.linux.memory_limit_in_bytes == 64 << 20
            # containerd 2.1 applies it without an UpdateContainer event to the plugins.
            assert plugin.event_names(name) == []
            assert t.connected


# -- a plugin that does not answer ---------------------------------------------


def _pod_then_plugin(node: kit.Node, name: str) -> tuple[pods.PodSpec, pods.Pod]:
    spec = busybox_pod(name)
    return spec, node.run(spec)


def test_unanswered_create_container_drops_the_plugin_and_creates_the_container(node: kit.Node) -> None:
    """Containerd is fail-open on a plugin that stops answering.

    A raw plugin registers, subscribes to CreateContainer and then never
    answers it. Containerd waits for plugin_request_timeout (2 s), closes that
    plugin's connection, and creates the container anyway, without anything the
    plugin might have wanted to change. Later containers are not delayed: the
    dropped plugin is gone. This is why the agent must never rely on
    CreateContainer alone for anything that has to happen (it checks again in
    StartContainer).
    """
    name = kit.unique("nri-silent")
    with pod_removed(node, name):
        spec, pod = _pod_then_plugin(node, name)
        log = ContainerdLog(node)
        silent = SilentPlugin(node.cfg.nri_sock)
        try:
            silent.ready()
            assert silent.configure is not None
            assert silent.configure.runtime_name == "containerd"
            assert silent.configure.request_timeout == int(REQUEST_TIMEOUT * 1000)
            assert silent.configure.registration_timeout == 5000

            late, took = timed_add(node, pods.ContainerSpec("late", "busybox", command=SLEEPER), spec=spec, pod=pod)
            assert silent.closed.wait(5), "containerd did not drop the silent plugin"
            assert len(log.lines("closing plugin 30-e2e-silent", "CreateContainer", "context deadline exceeded")) == 1
            assert silent.created == ["late"]
            assert REQUEST_TIMEOUT - 0.05 <= took < REQUEST_TIMEOUT + 1.5, took
            assert REQUEST_TIMEOUT - 0.05 <= silent.closed_at - silent.create_at < REQUEST_TIMEOUT + 0.5

            node.cri.start_container(late)
            echo = node.cri.exec_sync(late, ["echo", "created anyway"], timeout=10)
            assert (echo.exit_code, echo.stdout) == (0, b"created anyway\n")

            _, again = timed_add(node, pods.ContainerSpec("after", "busybox", command=SLEEPER), spec=spec, pod=pod)
            assert again < 1.0, again
            assert silent.created == ["late"]
        finally:
            silent.close()


def test_handler_blocking_the_event_loop_gets_the_plugin_dropped(node: kit.Node) -> None:
    """A handler that blocks the plugin's event loop (a synchronous call in an async handler).

    The library's handler deadline runs on that same loop, so it cannot answer
    in time: containerd drops the plugin after 2 s and creates the container
    without the adjustment; the plugin's run() then ends with ConnectionLost.
    """
    name = kit.unique("nri-blocked")

    async def adjust(pod: api.PodSandbox, container: api.Container) -> ContainerAdjustment | None:
        if container.name != "late":
            return None
        time.sleep(REQUEST_TIMEOUT + 1)  # blocks the loop on purpose
        return ContainerAdjustment(env=[KeyValue(key="NRI_E2E_LATE", value="1")])

    with pod_removed(node, name):
        spec, pod = _pod_then_plugin(node, name)
        plugin = Recorder(name="e2e-blocked", idx="10", watch=name, adjust=adjust)
        log = ContainerdLog(node)
        with PluginThread(plugin, node.cfg.nri_sock) as t:
            t.ready()
            late, took = timed_add(node, pods.ContainerSpec("late", "busybox", command=SLEEPER), spec=spec, pod=pod)
            assert REQUEST_TIMEOUT - 0.05 <= took < REQUEST_TIMEOUT + 0.9, took  # before the handler woke up
            eventually(lambda: not t.connected, timeout=5, what="the plugin's run() ending")
            assert isinstance(t.running.exception(), ConnectionLost)
            assert len(log.lines("closing plugin 10-e2e-blocked", "CreateContainer", "context deadline exceeded")) == 1
        node.cri.start_container(late)
        env = node.cri.exec_sync(late, ["env"], timeout=10)
        assert env.exit_code == 0 and b"NRI_E2E_LATE" not in env.stdout


def test_slow_async_handler_is_cut_short_by_the_library_and_the_plugin_stays(node: kit.Node) -> None:
    """An async handler that takes longer than the request timeout (awaiting, not blocking).

    The library answers "no change" when the handler's budget (request timeout
    minus a margin: 1.6 s) runs out, so containerd gets its answer in time,
    creates the container without the adjustment and keeps the plugin.
    """
    name = kit.unique("nri-slow")

    async def adjust(pod: api.PodSandbox, container: api.Container) -> ContainerAdjustment | None:
        if container.name != "late":
            return None
        await asyncio.sleep(REQUEST_TIMEOUT + 1)
        return ContainerAdjustment(env=[KeyValue(key="NRI_E2E_LATE", value="1")])

    log = ContainerdLog(node)
    with pod_removed(node, name):
        spec, pod = _pod_then_plugin(node, name)
        plugin = Recorder(name="e2e-slow", idx="10", watch=name, adjust=adjust)
        with PluginThread(plugin, node.cfg.nri_sock) as t:
            t.ready()
            late, took = timed_add(node, pods.ContainerSpec("late", "busybox", command=SLEEPER), spec=spec, pod=pod)
            budget = REQUEST_TIMEOUT - 0.4
            assert budget - 0.05 <= took < REQUEST_TIMEOUT + 0.5, took
            node.cri.start_container(late)
            env = node.cri.exec_sync(late, ["env"], timeout=10)
            assert env.exit_code == 0 and b"NRI_E2E_LATE" not in env.stdout
            late_events = [s.event for s in plugin.seen(name) if s.container is not None and s.container.name == "late"]
            assert late_events == ["create_container", "post_create_container", "start_container", "post_start_container"]
            assert t.connected
            assert log.lines("closing plugin 10-e2e-slow") == []
        assert t.stop() is None
