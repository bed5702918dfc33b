"""inet_diag per-port stats in a real network namespace (loopback only)."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_zeropod import netns, proc, sockdiag
from nri_zeropod.sockdiag import PortStats
from tests.helpers import eventually, need_root

pytestmark = pytest.mark.root

PORT = 8080
PORT6 = 8443  # a dual-stack listener


@pytest.fixture
def ns() -> Iterator[Path]:
    need_root()
    name = f"nzt-{secrets.token_hex(3)}-diag"
    try:
        proc.run(["ip", "netns", "add", name], timeout=10)
        proc.run(["ip", "-n", name, "link", "set", "lo", "up"], timeout=10)
        yield Path(f"/run/netns/{name}")
    finally:
        proc.run(["ip", "netns", "del", name], timeout=10, check=False)


@pytest.fixture
def socks() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def _open(ns: Path, socks: list[socket.socket], *, family: int = socket.AF_INET) -> socket.socket:
    s = netns.socket_in_netns(ns, family=family)
    socks.append(s)
    s.settimeout(5)
    return s


def test_listening_queue_established_and_idle_time(ns: Path, socks: list[socket.socket]) -> None:
    assert sockdiag.snapshot(ns, [PORT]) == {PORT: PortStats(False, 0, 0, None)}

    server = _open(ns, socks)
    server.bind(("0.0.0.0", PORT))
    server.listen(16)
    assert sockdiag.snapshot(ns, [PORT]) == {PORT: PortStats(True, 0, 0, None)}

    clients = []
    for _ in range(3):
        c = _open(ns, socks)
        c.connect(("127.0.0.1", PORT))
        clients.append(c)
    # Not accepted yet: in the accept queue, and already ESTABLISHED on PORT.
    st = sockdiag.snapshot(ns, [PORT])[PORT]
    assert (st.listening, st.accept_queue, st.established) == (True, 3, 3)
    assert sorted(st.remotes) == sorted(c.getsockname() for c in clients)

    conns = [server.accept()[0] for _ in clients]
    socks.extend(conns)
    time.sleep(0.3)
    st = sockdiag.snapshot(ns, [PORT])[PORT]
    assert (st.accept_queue, st.established) == (0, 3)
    assert st.ms_since_last_data is not None and st.ms_since_last_data >= 250

    clients[1].sendall(b"x")
    assert conns[1].recv(1) == b"x"
    st = sockdiag.snapshot(ns, [PORT])[PORT]
    assert st.ms_since_last_data is not None and st.ms_since_last_data < 200

    for c in clients:
        c.close()
    for c in conns:
        c.close()
    # Both ends closed: the sockets leave ESTABLISHED (FIN_WAIT/TIME_WAIT are not dumped).
    eventually(lambda: sockdiag.snapshot(ns, [PORT])[PORT].established == 0, timeout=5, what="connections gone")


def test_both_families_and_unrelated_ports(ns: Path, socks: list[socket.socket]) -> None:
    dual = _open(ns, socks, family=socket.AF_INET6)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dual.bind(("::", PORT6))
    dual.listen(16)
    other = _open(ns, socks)
    other.bind(("127.0.0.1", PORT))
    other.listen(16)
    v4 = _open(ns, socks)
    v4.connect(("127.0.0.1", PORT6))
    v6 = _open(ns, socks, family=socket.AF_INET6)
    v6.connect(("::1", PORT6))

    snap = sockdiag.snapshot(ns, [PORT6, 9999])
    assert set(snap) == {PORT6, 9999}
    st = snap[PORT6]
    assert (st.listening, st.accept_queue, st.established) == (True, 2, 2)
    # The dual-stack socket's IPv4 peer is reported as plain IPv4.
    assert sorted(st.remotes) == sorted([("127.0.0.1", v4.getsockname()[1]), ("::1", v6.getsockname()[1])])
    assert snap[9999] == PortStats(False, 0, 0, None)


def test_snapshot_of_own_netns_runs() -> None:
    need_root()
    snap = sockdiag.snapshot(None, [1])
    assert snap[1].established >= 0
