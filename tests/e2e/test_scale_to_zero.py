"""Scale to zero by itself and wake on the first connection, on the local node.

Connections from the host come from a node address (like kubelet's probes);
connections from the client pod come from another network namespace (like
another pod in the cluster).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from nri_zeropod.node import agentctl, pods
from tests.e2e import kit
from tests.helpers import eventually

ECHO = r"""
import socket, threading
def serve(c):
    while True:
        data = c.recv(65536)
        if not data:
            c.shutdown(socket.SHUT_WR)
            break
        c.sendall(data)
    c.close()
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 9000))
s.listen(128)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# An HTTP server bound to one family only; argv: family ("4" or "6").
ONE_FAMILY = r"""
import http.server, socket, sys
class V6(http.server.HTTPServer):
    address_family = socket.AF_INET6
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()
if sys.argv[1] == "6":
    srv = V6(("::", 8080), http.server.SimpleHTTPRequestHandler)
else:
    srv = http.server.HTTPServer(("0.0.0.0", 8080), http.server.SimpleHTTPRequestHandler)
srv.serve_forever()
"""

# Listens on nothing at all.
NO_PORT = "import time\nwhile True: time.sleep(1)\n"


def state(node: kit.Node, cid: str) -> str:
    return str(kit.status_of(node, cid)["state"])


@pytest.fixture()
def sleepy(node: kit.Node) -> Iterator[Callable[..., pods.Pod]]:
    made: list[str] = []

    def make(*containers: pods.ContainerSpec, duration: str = "2s", annotations: dict[str, str] | None = None) -> pods.Pod:
        name = kit.unique("s2z")
        made.append(name)
        ann = {**kit.MANAGED, "nri-zeropod.dev/scaledown-duration": duration, **(annotations or {})}
        return node.run(pods.PodSpec(name=name, containers=list(containers), annotations=ann))

    yield make
    for name in made:
        try:
            node.rm(name)
        except pods.PodError:
            pass


@pytest.fixture(scope="module")
def client(node: kit.Node) -> Iterator[pods.Pod]:
    """An ordinary pod to make requests from another network namespace."""
    name = kit.unique("client")
    pod = node.run(pods.PodSpec(name=name, containers=[
        pods.ContainerSpec(name="client", image="busybox", command=["sleep", "1000000"])]))
    yield pod
    node.rm(name)


def wget(node: kit.Node, pod: pods.Pod, url: str, *, container: str | None = None) -> str:
    cid = pod.containers[container or next(iter(pod.containers))]
    res = node.cri.exec_sync(cid, ["wget", "-q", "-T", "10", "-O", "-", url], timeout=30)
    assert res.exit_code == 0, (url, res.stderr)
    return res.stdout.decode()


def busybox(name: str = "web") -> pods.ContainerSpec:
    return pods.ContainerSpec(name=name, image="busybox", ports=[8080])


def test_scales_down_by_itself_and_every_kind_of_client_wakes_it(node: kit.Node, sleepy, client: pods.Pod) -> None:
    pod = sleepy(busybox())
    cid = pod.containers["web"]
    want = "hello from nri-zeropod (busybox)"
    clients: list[tuple[str, Callable[[], str]]] = [
        ("host over IPv4", lambda: kit.http_get(pod.ip, 8080)[1].decode()),
        ("another network namespace", lambda: wget(node, client, f"http://{pod.ip}:8080/")),
        ("inside the pod on 127.0.0.1", lambda: wget(node, pod, "http://127.0.0.1:8080/")),
        ("inside the pod on [::1]", lambda: wget(node, pod, "http://[::1]:8080/")),
    ]
    for what, ask in clients:
        before = kit.wait_scaled_down(node, cid)
        assert kit.app_of(node, cid) is None
        assert want in ask(), what
        after = kit.status_of(node, cid)
        assert after["state"] == "RUNNING" and after["restores"] == before["restores"] + 1, what


def test_hundred_concurrent_first_connections_all_succeed(node: kit.Node, sleepy) -> None:
    pod = sleepy(busybox())
    cid = pod.containers["web"]
    before = kit.wait_scaled_down(node, cid)
    barrier = threading.Barrier(100)

    def one(_i: int) -> tuple[int, bytes]:
        barrier.wait()
        return kit.http_get(pod.ip, 8080, timeout=20)

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(one, range(100)))
    assert all(status == 200 and b"hello from nri-zeropod" in body for status, body in results)
    assert kit.status_of(node, cid)["restores"] == before["restores"] + 1, "exactly one restore"


def test_long_first_connection_is_not_cut(node: kit.Node, sleepy) -> None:
    pod = sleepy(pods.ContainerSpec(name="echo", image="python", command=["python3", "-c", ECHO], ports=[9000]))
    cid = pod.containers["echo"]
    eventually(lambda: socket.create_connection((pod.ip, 9000), timeout=2).close() or True, timeout=20)
    kit.wait_scaled_down(node, cid)
    with socket.create_connection((pod.ip, 9000), timeout=10) as s:
        f = s.makefile("rb")
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < 30:
            line = f"line {n} {'x' * 1000}\n".encode()
            s.sendall(line)
            assert f.readline() == line, f"line {n} after {time.monotonic() - start:.1f}s"
            n += 1
            time.sleep(0.1)
        s.shutdown(socket.SHUT_WR)
        assert f.read() == b"", "the half-close reaches the app and its close comes back"
    assert n > 200


def _probe_loops(ip: str, port: int, seconds: float) -> tuple[int, int]:
    """kubelet-like HTTP and TCP probes from the node every 200 ms; (http ok, tcp ok)."""
    ok = [0, 0]

    def http() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with socket.create_connection((ip, port), timeout=5) as s:
                s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.34\r\n"
                          "Accept: */*\r\nConnection: close\r\n\r\n".encode())
                if s.recv(100).startswith(b"HTTP/1."):
                    ok[0] += 1
            time.sleep(0.2)

    def tcp() -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            socket.create_connection((ip, port), timeout=5).close()
            ok[1] += 1
            time.sleep(0.2)

    threads = [threading.Thread(target=http), threading.Thread(target=tcp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok[0], ok[1]


def test_probes_neither_wake_nor_keep_awake(node: kit.Node, sleepy) -> None:
    pod = sleepy(busybox())
    cid = pod.containers["web"]
    before = kit.wait_scaled_down(node, cid)
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(state(node, cid))
            stop.wait(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        http_ok, tcp_ok = _probe_loops(pod.ip, 8080, 10)
    finally:
        stop.set()
        watcher.join()
    assert seen == {"SCALED_DOWN"}, seen
    assert http_ok >= 30 and tcp_ok >= 30
    after = kit.status_of(node, cid)
    assert after["restores"] == before["restores"] and after["probes_answered"] >= http_ok + tcp_ok

    # Running, with the probes reaching the app itself: they still do not count as activity.
    assert kit.http_get(pod.ip, 8080)[0] == 200
    woke = kit.status_of(node, cid)["restores"]
    assert woke == before["restores"] + 1
    checkpoints = kit.status_of(node, cid)["checkpoints"]
    probing = threading.Thread(target=_probe_loops, args=(pod.ip, 8080, 8))
    probing.start()
    try:
        eventually(lambda: kit.status_of(node, cid)["checkpoints"] > checkpoints, timeout=8,
                   what="scale-down under probes")
    finally:
        probing.join()


def test_real_requests_and_silent_connections_keep_it_up(node: kit.Node, sleepy, client: pods.Pod) -> None:
    pod = sleepy(busybox())
    cid = pod.containers["web"]
    eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)
    base = kit.status_of(node, cid)["checkpoints"]
    loop = f"i=0; while [ $i -lt 30 ]; do wget -q -O /dev/null http://{pod.ip}:8080/ || exit 1; sleep 0.2; i=$((i+1)); done"
    res = node.cri.exec_sync(client.containers["client"], ["sh", "-c", loop], timeout=60)
    assert res.exit_code == 0, res.stderr
    assert kit.status_of(node, cid)["checkpoints"] == base, "real requests every 200 ms: no scale-down"

    # An established connection that says nothing keeps it up too.
    with socket.create_connection((pod.ip, 8080), timeout=5):
        time.sleep(5)
        assert kit.status_of(node, cid)["checkpoints"] == base
        assert "established" in str(kit.status_of(node, cid)["busy"])
    kit.wait_scaled_down(node, cid)


def test_connection_while_the_agent_is_down_is_served(node: kit.Node, sleepy) -> None:
    pod = sleepy(busybox())
    cid = pod.containers["web"]
    kit.wait_scaled_down(node, cid)
    # Kill the supervisor first so that it does not bring the agent back on its own.
    for name in ("agent-supervisor", "agent"):
        pid = int((node.cfg.pids / f"{name}.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
    result: list[tuple[int, bytes]] = []
    t = threading.Thread(target=lambda: result.append(kit.http_get(pod.ip, 8080, timeout=60)))
    t.start()
    time.sleep(1.0)  # the client sits in the keeper's accept queue meanwhile
    assert not result
    agentctl.start(node.cfg)
    t.join(timeout=60)
    assert result and result[0][0] == 200 and b"hello from nri-zeropod" in result[0][1]
    assert state(node, cid) == "RUNNING"


def test_after_a_wake_new_connections_go_straight_to_the_app(node: kit.Node, sleepy) -> None:
    pod = sleepy(busybox(), duration="30s")
    cid = pod.containers["web"]
    eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)
    kit.checkpoint(node, cid)
    assert kit.http_get(pod.ip, 8080)[0] == 200
    accepted = kit.status_of(node, cid)["activator_accepted"]
    assert accepted == 1
    for _ in range(20):
        assert kit.http_get(pod.ip, 8080)[0] == 200
    assert kit.status_of(node, cid)["activator_accepted"] == accepted


def test_ports_map_port_the_app_does_not_listen_on(node: kit.Node, sleepy) -> None:
    pod = sleepy(busybox(), annotations={"nri-zeropod.dev/ports-map": "web=8080,9999"})
    cid = pod.containers["web"]
    st = kit.wait_scaled_down(node, cid)
    assert st["ports"] == [8080], "only ports the app listens on are steered"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((pod.ip, 9999), timeout=5)
    assert kit.http_get(pod.ip, 8080)[0] == 200
    lines = [line for line in kit.agent_log(node).splitlines() if pod.name in line and "9999" in line]
    assert len(lines) == 1, lines


def test_app_without_a_port_is_never_scaled_down(node: kit.Node, sleepy) -> None:
    pod = sleepy(pods.ContainerSpec(name="quiet", image="python", command=["python3", "-c", NO_PORT]))
    cid = pod.containers["quiet"]
    time.sleep(5)
    st = kit.status_of(node, cid)
    assert st["state"] == "RUNNING" and st["checkpoints"] == 0
    assert "no TCP port" in str(st["busy"])


def test_several_managed_containers_sleep_and_wake_on_their_own(node: kit.Node, sleepy) -> None:
    pod = sleepy(busybox("a"), pods.ContainerSpec(name="b", image="python", command=["python3", "-c", ECHO], ports=[9000]))
    a, b = pod.containers["a"], pod.containers["b"]
    kit.wait_scaled_down(node, a)
    kit.wait_scaled_down(node, b)
    assert kit.http_get(pod.ip, 8080)[0] == 200
    assert state(node, a) == "RUNNING" and state(node, b) == "SCALED_DOWN"
    with socket.create_connection((pod.ip, 9000), timeout=10) as s:
        s.sendall(b"ping\n")
        assert s.recv(10) == b"ping\n"
    assert state(node, b) == "RUNNING"


@pytest.mark.parametrize(("family", "ok", "refused"), [("6", "[::1]", "127.0.0.1"), ("4", "127.0.0.1", "[::1]")])
def test_single_family_apps(node: kit.Node, sleepy, family: str, ok: str, refused: str) -> None:
    spec = pods.ContainerSpec(name="one", image="python", command=["python3", "-c", ONE_FAMILY, family], ports=[8080])
    pod = sleepy(spec)
    cid = pod.containers["one"]
    kit.wait_scaled_down(node, cid, timeout=30)
    # The family the app does not serve is refused, as it would be without nri-zeropod...
    res = node.cri.exec_sync(cid, ["wget", "-q", "-T", "5", "-O", "-", f"http://{refused}:8080/"], timeout=30)
    assert res.exit_code != 0
    # ...and it leaves nothing stuck: the app is up, steering is off, its own family works.
    st = kit.status_of(node, cid)
    assert st["state"] == "RUNNING"
    res = node.cri.exec_sync(cid, ["wget", "-q", "-T", "5", "-O", "-", f"http://{ok}:8080/"], timeout=30)
    assert res.exit_code == 0
    kit.wait_scaled_down(node, cid, timeout=30)
    res = node.cri.exec_sync(cid, ["wget", "-q", "-T", "10", "-O", "-", f"http://{ok}:8080/"], timeout=30)
    assert res.exit_code == 0, res.stderr
