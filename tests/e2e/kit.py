"""What e2e tests use to drive the local node: the CLI, CRI, HTTP and redis clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from nri_zeropod.cri import CRIClient, pb
from nri_zeropod.node import node as nodemod
from nri_zeropod.node import pods
from nri_zeropod.node.config import NodeConfig
from tests.helpers import eventually

TEST_ENV = {
    "NRI_ZEROPOD_RUN": "/run/nri-zeropod-test",
    "NRI_ZEROPOD_NODE_PREFIX": "/var/lib/nri-zeropod-test",
    "NRI_ZEROPOD_BRIDGE": "nztbr0",
    "NRI_ZEROPOD_SUBNET": "10.213.78.0/24",
    "NRI_ZEROPOD_CGROUP": "/nri-zeropod-test",
    "NRI_ZEROPOD_METRICS_ADDR": "127.0.0.1:9134",
    # The fault tests kill the agent 50 times in a row.
    "NRI_ZEROPOD_MAX_RESTART_BACKOFF": "0.5",
}

CLI = [sys.executable, "-m", "nri_zeropod"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=str(Path(__file__).resolve().parents[2]),
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass
class Node:
    cfg: NodeConfig
    cri: CRIClient

    @classmethod
    def start(cls, prefix: Path, *, agent: bool = True) -> Node:
        cfg = nodemod.up(NodeConfig.from_env(prefix, agent=agent), log=lambda *_: None)
        return cls(cfg, CRIClient(str(cfg.containerd_sock)))

    def stop(self) -> None:
        self.cri.close()
        nodemod.down(self.cfg, log=lambda *_: None)

    def run(self, spec: pods.PodSpec) -> pods.Pod:
        return pods.run_pod(self.cri, self.cfg, spec)

    def rm(self, name: str, namespace: str = "default") -> None:
        pods.remove_pod(self.cri, self.cfg, name, namespace=namespace, grace=5)


def add_container(n: Node, c: pods.ContainerSpec, *, spec: pods.PodSpec, pod: pods.Pod, attempt: int = 0) -> str:
    """CreateContainer in an existing pod, with the configs kubelet would send (not started).

    ``attempt`` > 0 is a re-creation, as kubelet's after a container ended.
    """
    config = pods.container_config(spec, c, uid=pod.uid, image=pods.resolve_image(n.cri, c.image))
    if attempt:
        config.metadata.attempt = attempt
        config.log_path = f"{c.name}/{attempt}.log"
    return n.cri.create_container(pod.id, config, pods.sandbox_config(n.cfg, spec, pod.uid))


def remove_now(n: Node, name: str) -> None:
    """Remove the pod if it (still) exists; containers are killed at once, not after a grace period."""
    for sandbox in pods.find(n.cri, name):
        for c in n.cri.list_containers(pod_id=sandbox.id):
            n.cri.stop_container(c.id, timeout=0)
    if pods.find(n.cri, name):
        n.rm(name)


def http_get(host: str, port: int, path: str = "/", *, timeout: float = 5.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET: (status code, body)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def redis(host: str, port: int, *args: str, timeout: float = 15.0) -> object:
    """Send one command with the redis protocol (RESP) and return the decoded reply."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        return redis_on(s, *args)


def fill_redis(host: str, mib: int, *, key: str, fill: str) -> None:
    """SET ``{key}0`` ... ``{key}{mib-1}`` to 1 MiB of ``fill`` each, over one connection."""
    value = fill * (1 << 20)
    with socket.create_connection((host, 6379), timeout=30) as s:
        for i in range(mib):
            assert redis_on(s, "SET", f"{key}{i}", value) == "OK"


def redis_on(s: socket.socket, *args: str) -> object:
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    s.sendall(cmd.encode())
    f = s.makefile("rb")
    try:
        return _resp(f)
    finally:
        f.close()


def _resp(f) -> object:
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    if kind == b"*":
        return [_resp(f) for _ in range(int(rest))]
    raise RuntimeError(f"bad RESP reply {line!r}")


# ---- the agent


MANAGED = {"nri-zeropod.dev/enabled": "true"}


def admin(n: Node, op: str, container: str | None = None, *, timeout: float = 120, **fields: object) -> dict:
    from nri_zeropod.agent import admin as adm

    req: dict[str, object] = {"op": op, **fields}
    if container is not None:
        req["container"] = container
    return adm.request(n.cfg.prefix / "agent.sock", req, timeout=timeout)


def checkpoint(n: Node, cid: str) -> dict:
    reply = admin(n, "checkpoint", cid)
    assert reply.get("ok"), reply
    return reply


def restore(n: Node, cid: str) -> dict:
    reply = admin(n, "restore", cid)
    assert reply.get("ok"), reply
    return reply


def status_of(n: Node, cid: str) -> dict:
    for c in admin(n, "status")["containers"]:
        if c["id"] == cid:
            return c
    raise AssertionError(f"{cid[:12]} is not in the agent's status")


def wait_scaled_down(n: Node, cid: str, timeout: float = 15) -> dict:
    """The container's status row once the agent reports it SCALED_DOWN."""
    return eventually(lambda: (s := status_of(n, cid))["state"] == "SCALED_DOWN" and s, timeout=timeout,
                      what="scaled down")


def wait_exited(n: Node, cid: str, *, timeout: float = 10, what: str = "container exits"):
    """The container's CRI status once it is EXITED."""
    return eventually(lambda: (s := n.cri.container_status(cid).status).state == pb.CONTAINER_EXITED and s,
                      timeout=timeout, what=what)


def keeper_pid(n: Node, cid: str) -> int:
    return int(n.cri.container_info(cid)["pid"])


def app_of(n: Node, cid: str):
    from nri_zeropod.agent import criu

    return criu.find_app(keeper_pid(n, cid))


def anon_memory(n: Node, cid: str) -> int:
    from nri_zeropod.agent.manager import container_memory

    return container_memory(keeper_pid(n, cid))


def cri_log(n: Node, pod: pods.Pod, container: str) -> str:
    status = n.cri.container_status(pod.containers[container]).status
    return Path(status.log_path).read_text(errors="replace")


def agent_log(n: Node) -> str:
    return (n.cfg.logs / "agent-supervisor.log").read_text(errors="replace")


def admin_restore_cold(n: Node, cid: str) -> dict:
    """A restore prepared on the spot rather than the one made ready after the checkpoint."""
    return admin(n, "restore", cid, prepared=False)
