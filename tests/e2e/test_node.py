"""The local node end to end: pods through CRI the way kubelet creates them, and a clean teardown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nri_zeropod.node import cleanup, pods
from nri_zeropod.procevents import stat_fields
from tests.e2e import kit
from tests.helpers import eventually


def test_redis_set_get_from_host(node: kit.Node) -> None:
    name = kit.unique("redis")
    pod = node.run(pods.PodSpec(name=name, containers=[pods.ContainerSpec(name="redis", image="redis", ports=[6379])]))
    try:
        eventually(lambda: kit.redis(pod.ip, 6379, "PING") == "PONG", timeout=20, what="redis answers PING")
        assert kit.redis(pod.ip, 6379, "SET", "greeting", "hello") == "OK"
        assert kit.redis(pod.ip, 6379, "GET", "greeting") == "hello"
    finally:
        node.rm(name)


def test_run_rejects_bad_input_and_leaves_nothing(node: kit.Node) -> None:
    before = kit.cli("pods")
    assert before.returncode == 0
    cases = [
        (["run", "bad1", "--image", "no-such-image"], "image 'no-such-image' not found"),
        (["run", "bad2", "--image", "busybox", "--port", "70000"], "invalid port 70000"),
        (["run", "bad3", "--image", "busybox", "--port", "http"], "invalid port 'http'"),
        (["run", "Bad_Name", "--image", "busybox"], "not a valid name"),
        (["run", "bad4", "--image", "busybox", "--annotation", "novalue"], "is not KEY=VALUE"),
    ]
    for argv, expected in cases:
        res = kit.cli(*argv)
        assert res.returncode != 0, argv
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (argv, res.stderr)
    assert kit.cli("pods").stdout == before.stdout, "a rejected run must not create anything"


def test_duplicate_name_is_refused_and_original_keeps_running(node: kit.Node) -> None:
    name = kit.unique("dup")
    first = kit.cli("run", name, "--image", "busybox", "--port", "8080")
    assert first.returncode == 0, first.stderr
    ip = first.stdout.strip()
    try:
        again = kit.cli("run", name, "--image", "busybox")
        assert again.returncode == 1
        assert again.stderr.strip() == f"nri-zeropod: error: pod default/{name} already exists"
        assert len(pods.find(node.cri, name)) == 1
        eventually(lambda: kit.http_get(ip, 8080)[0] == 200, timeout=10, what="original pod serves")
    finally:
        assert kit.cli("rm", name).returncode == 0
    gone = kit.cli("rm", name)
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_commands_without_a_node_say_so(tmp_path: Path) -> None:
    env = {"NRI_ZEROPOD_RUN": str(tmp_path / "run"), "NRI_ZEROPOD_NODE_PREFIX": str(tmp_path / "none")}
    for argv in (["pods"], ["run", "x", "--image", "busybox"], ["rm", "x"]):
        res = kit.cli(*argv, env=env)
        assert res.returncode == 1
        assert res.stderr.strip() == "nri-zeropod: error: no node is up (start one with: nri-zeropod node up)"
    down = kit.cli("node", "down", env=env)
    assert down.returncode == 0 and "no node is up" in down.stderr
    assert kit.cli("node", "status", env=env).returncode == 3


LC_ENV = {
    "NRI_ZEROPOD_RUN": "/run/nri-zeropod-lc",
    "NRI_ZEROPOD_NODE_PREFIX": "/var/lib/nri-zeropod-lc",
    "NRI_ZEROPOD_BRIDGE": "nzlbr0",
    "NRI_ZEROPOD_SUBNET": "10.213.79.0/24",
    "NRI_ZEROPOD_CGROUP": "/nri-zeropod-lc",
    "NRI_ZEROPOD_METRICS_ADDR": "127.0.0.1:9135",
}


def _our_processes(prefix: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = stat_fields(int(d.name))[0]
        except OSError:
            continue
        if prefix in cmd and state != "Z" and int(d.name) != os.getpid():
            found.append(f"{d.name}: {cmd}")
    return found


@pytest.mark.usefixtures("node")
def test_node_lifecycle_leaves_nothing_behind() -> None:
    """up → busybox httpd pod → HTTP 200 → ExecSync echo → rm → down: no process, bridge, mount or cgroup left."""
    env = LC_ENV
    prefix = env["NRI_ZEROPOD_NODE_PREFIX"]
    up = kit.cli("node", "up", env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert f"prefix:      {prefix}" in up.stdout
        again = kit.cli("node", "up", env=env)
        assert again.returncode == 0 and "node already up" in again.stderr
        st = kit.cli("node", "status", env=env)
        assert st.returncode == 0 and f"{prefix}/containerd.sock" in st.stdout

        run = kit.cli("run", "web", "--image", "busybox", "--port", "8080", env=env)
        assert run.returncode == 0, run.stderr
        ip = run.stdout.strip()
        assert ip.startswith("10.213.79.")
        status, body = eventually(lambda: kit.http_get(ip, 8080), timeout=10, what="httpd answers")
        assert status == 200 and b"hello from nri-zeropod (busybox)" in body

        from nri_zeropod.cri import CRIClient

        with CRIClient(f"{prefix}/containerd.sock") as cri:
            [c] = cri.list_containers(labels={"io.kubernetes.pod.name": "web"})
            res = cri.exec_sync(c.id, ["echo", "hello", "exec"], timeout=10)
            assert res.exit_code == 0 and res.stdout == b"hello exec\n"

        listing = kit.cli("pods", env=env)
        assert "web" in listing.stdout and "RUNNING" in listing.stdout and ip in listing.stdout
        rm = kit.cli("rm", "web", env=env)
        assert rm.returncode == 0, rm.stderr
    finally:
        down = kit.cli("node", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert _our_processes(prefix) == []
    assert not Path(f"/sys/class/net/{env['NRI_ZEROPOD_BRIDGE']}").exists()
    assert cleanup.mountpoints_under(Path(prefix)) == []
    left = [str(h / "nri-zeropod-lc") for h in Path("/sys/fs/cgroup").iterdir() if (h / "nri-zeropod-lc").exists()]
    assert left == []
    assert not Path(env["NRI_ZEROPOD_RUN"], "node.json").exists()
    again = kit.cli("node", "down", env=env)
    assert again.returncode == 0 and "no node is up" in again.stderr
