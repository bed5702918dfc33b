"""sk_lookup steering in real network namespaces.

Set-up per test: a "pod" netns and a "client" netns joined by a veth (IPv4
and IPv6), a real server listening on PORT in the pod, an activator-like
listening socket (AF_INET6 dual stack, SO_REUSEADDR, ephemeral port) created
in the pod by this process, and a private bpffs mounted on a temp dir for
the pins. Every socket lives in this process, so a test sees which listener
got a connection by which one becomes readable. Everything created (netns,
veth, mount) is removed in finalizers, also on failure.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nri_zeropod import netns, proc
from nri_zeropod.bpf import libbpf
from nri_zeropod.bpf import Activity, BpfError, Steering, boot_ns, ensure_bpffs, is_bpffs, pack_addr
from nri_zeropod.bpf.steering import unpack_addr
from nri_zeropod.paths import REPO
from tests.helpers import need_binary, need_root

pytestmark = pytest.mark.root

PORT = 8080
SO_COOKIE = 57


@pytest.fixture(scope="session")
def steer_obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled program: $NRI_ZEROPOD_BPF_OBJ, else built into a temp dir with the repo's make rule."""
    env = os.environ.get("NRI_ZEROPOD_BPF_OBJ")
    if env:
        return Path(env)
    need_binary("clang-14")
    out = tmp_path_factory.mktemp("bpf")
    proc.run(["make", "-C", str(REPO), "bpf", f"BUILD={out}"], timeout=120)
    return out / "steer.bpf.o"


@pytest.fixture
def bpffs() -> Iterator[Path]:
    need_root()
    mnt = Path(tempfile.mkdtemp(prefix="nzt-bpffs-"))
    try:
        proc.run(["mount", "-t", "bpf", "bpf", str(mnt)], timeout=10)
        yield mnt
    finally:
        proc.run(["umount", str(mnt)], timeout=10, check=False)
        mnt.rmdir()


@dataclass
class Net:
    pod: Path
    client: Path
    pod_ip4: str
    client_ip4: str
    client_ip4_other: str  # a second client address, never a "node" address
    pod_ip6: str
    client_ip6: str


def _ip(*args: str) -> None:
    proc.run(["ip", *args], timeout=10)


@pytest.fixture
def net() -> Iterator[Net]:
    need_root()
    tag = secrets.token_hex(3)
    pod, cli = f"nzt-{tag}-pod", f"nzt-{tag}-cli"
    sub = int(tag[:2], 16)
    n = Net(
        pod=Path(f"/run/netns/{pod}"),
        client=Path(f"/run/netns/{cli}"),
        pod_ip4=f"10.213.{sub}.1",
        client_ip4=f"10.213.{sub}.2",
        client_ip4_other=f"10.213.{sub}.3",
        pod_ip6=f"fd77:{sub:x}::1",
        client_ip6=f"fd77:{sub:x}::2",
    )
    try:
        _ip("netns", "add", pod)
        _ip("netns", "add", cli)
        # Created straight inside the namespaces: the host never sees the veth,
        # and deleting the namespaces deletes it.
        _ip("link", "add", f"nzt{tag}p", "netns", pod, "type", "veth", "peer", "name", f"nzt{tag}c", "netns", cli)
        for ns, dev, addrs in (
            (pod, f"nzt{tag}p", (f"{n.pod_ip4}/24", f"{n.pod_ip6}/64")),
            (cli, f"nzt{tag}c", (f"{n.client_ip4}/24", f"{n.client_ip4_other}/24", f"{n.client_ip6}/64")),
        ):
            for a in addrs:
                _ip("-n", ns, "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield n
    finally:
        for name in (pod, cli):
            proc.run(["ip", "netns", "del", name], timeout=10, check=False)


def cookie(s: socket.socket) -> int:
    return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), sys.byteorder)


def listener(ns: Path, *, dual: bool, port: int = PORT) -> socket.socket:
    """A listening socket in ``ns``: the real server on ``port``, or (dual) an activator on an ephemeral port."""
    s = netns.socket_in_netns(ns, family=socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 0 if dual else port))
    s.listen(128)
    s.setblocking(False)
    return s


@dataclass
class Pod:
    net: Net
    pins: Path
    obj: Path
    server: socket.socket
    activator: socket.socket
    steering: Steering
    clients: list[socket.socket] = field(default_factory=list)

    def connect(self, dest: str, *, src_ns: Path | None = None, src: tuple[str, int] | None = None) -> socket.socket:
        family = socket.AF_INET6 if ":" in dest else socket.AF_INET
        c = netns.socket_in_netns(src_ns or self.net.client, family=family)
        self.clients.append(c)
        c.settimeout(5)
        if src is not None:
            c.bind(src)
        c.connect((dest, PORT))
        return c

    def landed(self) -> tuple[str, socket.socket]:
        """Which listener got the last connection ("real" or "activator"), and the accepted socket."""
        ready, _, _ = select.select([self.server, self.activator], [], [], 5)
        assert len(ready) == 1, f"expected exactly one listener with a connection, got {ready}"
        conn, _ = ready[0].accept()
        self.clients.append(conn)
        return ("real" if ready[0] is self.server else "activator"), conn


@pytest.fixture
def pod(net: Net, bpffs: Path, steer_obj: Path) -> Iterator[Pod]:
    server = listener(net.pod, dual=False)
    activator = listener(net.pod, dual=True)
    pins = bpffs / "pod"
    st = Steering.attach(netns_path=net.pod, pin_dir=pins, obj_path=steer_obj)
    p = Pod(net=net, pins=pins, obj=steer_obj, server=server, activator=activator, steering=st)
    try:
        st.set_socket(0, activator)
        st.track(PORT)
        yield p
    finally:
        st.close()
        for s in (p.server, p.activator, *p.clients):
            s.close()


def _dest(pod: Pod, case: str) -> tuple[str, Path | None]:
    return {
        "veth4": (pod.net.pod_ip4, None),
        "veth6": (pod.net.pod_ip6, None),
        "lo4": ("127.0.0.1", pod.net.pod),
        "lo6": ("::1", pod.net.pod),
    }[case]


CASES = ["veth4", "veth6", "lo4", "lo6"]


@pytest.mark.parametrize("case", CASES)
def test_steering_follows_the_control_map(pod: Pod, case: str) -> None:
    dest, src_ns = _dest(pod, case)
    pod.connect(dest, src_ns=src_ns)
    assert pod.landed()[0] == "real"

    pod.steering.steer(PORT, 0)
    assert pod.steering.steered_ports() == {PORT: 0}
    pod.connect(dest, src_ns=src_ns)
    where, conn = pod.landed()
    assert where == "activator"
    local = conn.getsockname()
    assert unpack_addr(pack_addr(local[0])) == ipaddress.ip_address(dest)  # ::ffff:a.b.c.d from the dual-stack socket
    assert local[1] == PORT  # the original destination, not the activator's port

    assert pod.steering.unsteer(PORT)
    assert not pod.steering.unsteer(PORT)
    pod.connect(dest, src_ns=src_ns)
    assert pod.landed()[0] == "real"


def test_steered_connection_survives_unsteer(pod: Pod) -> None:
    pod.steering.steer(PORT, 0)
    client = pod.connect(pod.net.pod_ip4)
    _, conn = pod.landed()
    pod.steering.unsteer(PORT)
    client.sendall(b"ping")
    conn.settimeout(5)
    assert conn.recv(4) == b"ping"


def test_activity_counts_every_connection_exactly(pod: Pod) -> None:
    st = pod.steering
    before = boot_ns()
    for _ in range(7):
        pod.connect(pod.net.pod_ip4)
        pod.landed()
    st.steer(PORT, 0)
    for case in CASES:
        dest, src_ns = _dest(pod, case)
        pod.connect(dest, src_ns=src_ns)
        pod.landed()
    act = st.activity(PORT)
    assert act is not None
    assert (act.count, act.node_count, act.node_last_ns) == (11, 0, 0)
    assert before <= act.last_ns <= boot_ns()

    # Not tracked: never counted; untracked ports have no entry at all.
    assert st.activity(PORT + 1) is None
    st.track(PORT)  # re-tracking keeps the counters
    assert st.activity(PORT) == act
    assert st.tracked_ports() == [PORT]


def test_node_addresses_are_counted_apart(pod: Pod) -> None:
    st = pod.steering
    st.set_node_addrs([pod.net.client_ip4, pod.net.client_ip6])
    assert st.node_addrs() == {ipaddress.ip_address(pod.net.client_ip4), ipaddress.ip_address(pod.net.client_ip6)}
    st.steer(PORT, 0)
    for _ in range(3):
        pod.connect(pod.net.pod_ip4)  # source: client_ip4, the first address of the subnet route
        pod.landed()
    pod.connect(pod.net.pod_ip6)
    pod.landed()
    for _ in range(2):
        pod.connect(pod.net.pod_ip4, src=(pod.net.client_ip4_other, 0))
        pod.landed()
    act = st.activity(PORT)
    assert act is not None and (act.count, act.node_count) == (2, 4), act
    assert act.node_last_ns > 0 and act.last_ns > 0

    st.set_node_addrs([])
    assert st.node_addrs() == set()


@pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"])
def test_bypass_is_neither_steered_nor_counted(pod: Pod, loopback: str) -> None:
    st = pod.steering
    st.steer(PORT, 0)
    # The agent's dial-out: bind first, register the source, then connect.
    dial = netns.socket_in_netns(pod.net.pod, family=socket.AF_INET6 if ":" in loopback else socket.AF_INET)
    pod.clients.append(dial)
    dial.bind((loopback, 0))
    src_port = dial.getsockname()[1]
    st.add_bypass(loopback, src_port)
    dial.settimeout(5)
    dial.connect((loopback, PORT))
    assert pod.landed()[0] == "real"
    assert st.activity(PORT) == Activity(0, 0, 0, 0)
    assert st.remove_bypass(loopback, src_port)
    assert not st.remove_bypass(loopback, src_port)

    pod.connect(loopback, src_ns=pod.net.pod)
    assert pod.landed()[0] == "activator"
    act = st.activity(PORT)
    assert act is not None and act.count == 1


def test_closed_activator_falls_back_to_normal_lookup(pod: Pod) -> None:
    st = pod.steering
    st.steer(PORT, 0)
    assert st.socket_cookie(0) == cookie(pod.activator)
    pod.activator.close()
    assert st.socket_cookie(0) is None  # the kernel drops it from the SOCKMAP
    pod.activator = listener(pod.net.pod, dual=True)  # only so that landed() can select on it
    pod.connect(pod.net.pod_ip4)
    assert pod.landed()[0] == "real"
    with pytest.raises(BpfError) as e:
        st.steer(PORT + 1, 0)
    assert e.value.errno == errno.ENOENT and "no activator socket" in str(e.value)


def test_udp_is_left_alone(pod: Pod) -> None:
    pod.steering.steer(PORT, 0)
    rx = netns.socket_in_netns(pod.net.pod, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    tx = netns.socket_in_netns(pod.net.client, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("0.0.0.0", PORT))
        rx.settimeout(5)
        tx.sendto(b"hi", (pod.net.pod_ip4, PORT))
        assert rx.recv(2) == b"hi"
    assert pod.steering.activity(PORT) == Activity(0, 0, 0, 0)


_ATTACH_AND_EXIT = """
import sys
from nri_zeropod.bpf import Steering
st = Steering.attach(netns_path=sys.argv[1], pin_dir=sys.argv[2], obj_path=sys.argv[3])
st.set_socket(0, int(sys.argv[4]))
st.track(8080)
st.steer(8080, 0)
"""


def test_pins_outlive_the_agent(net: Net, bpffs: Path, steer_obj: Path) -> None:
    server = listener(net.pod, dual=False)
    activator = listener(net.pod, dual=True)  # "parked": this process keeps the fd
    pins = bpffs / "pod"
    with server, activator:
        # Agent A attaches, fills the maps and exits.
        subprocess.run(
            [sys.executable, "-c", _ATTACH_AND_EXIT, str(net.pod), str(pins), str(steer_obj), str(activator.fileno())],
            check=True,
            timeout=60,
            pass_fds=[activator.fileno()],
            cwd=REPO,
        )
        assert sorted(p.name for p in pins.iterdir()) == sorted(
            ["link", "steer_ports", "activator_socks", "activity", "node_addrs", "bypass"]
        )
        # No agent at all: the kernel completes the handshake into the parked socket.
        c = netns.socket_in_netns(net.client, family=socket.AF_INET)
        with c:
            c.settimeout(5)
            c.connect((net.pod_ip4, PORT))
            assert not select.select([server], [], [], 0)[0]
            # Agent B re-opens the pins and serves the queued client.
            with Steering.open(pins) as st:
                assert st.steered_ports() == {PORT: 0}
                assert st.socket_cookie(0) == cookie(activator)
                assert (a := st.activity(PORT)) is not None and a.count == 1
                conn, _ = activator.accept()
                with conn:
                    assert conn.getsockname()[1] == PORT
            # attach() on existing pins for the same netns re-opens them, state kept.
            with Steering.attach(netns_path=net.pod, pin_dir=pins, obj_path=steer_obj) as st:
                assert st.steered_ports() == {PORT: 0}
                Steering.remove(pins)
                assert not pins.exists()
                # Link gone: steering stops even while this object holds the map fds.
                c2 = netns.socket_in_netns(net.client, family=socket.AF_INET)
                with c2:
                    c2.settimeout(5)
                    c2.connect((net.pod_ip4, PORT))
                    assert select.select([server, activator], [], [], 5)[0] == [server]
                    server.accept()[0].close()
        Steering.remove(pins)  # idempotent
        with pytest.raises(BpfError) as e:
            Steering.open(pins)
        assert e.value.errno == errno.ENOENT


def test_attach_replaces_pins_of_another_netns(net: Net, bpffs: Path, steer_obj: Path) -> None:
    pins = bpffs / "pod"
    with Steering.attach(netns_path=net.client, pin_dir=pins, obj_path=steer_obj) as st:
        st.track(PORT)
    with Steering.attach(netns_path=net.pod, pin_dir=pins, obj_path=steer_obj) as st:
        assert st.tracked_ports() == []  # fresh maps: the old pins were for the client netns
    with Steering.attach(netns_path=net.pod, pin_dir=pins, obj_path=steer_obj) as st:
        st.track(PORT)
    with Steering.attach(netns_path=net.pod, pin_dir=pins, obj_path=steer_obj) as st:
        assert st.tracked_ports() == [PORT]


def test_errors_name_the_operation(net: Net, bpffs: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.o"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(BpfError) as e:
        Steering.attach(netns_path=net.pod, pin_dir=bpffs / "pod", obj_path=bogus)
    assert f"open {bogus}" in str(e.value) and e.value.errno
    assert not (bpffs / "pod").exists()  # nothing half-pinned is left
    with pytest.raises(BpfError) as e:
        Steering.attach(netns_path=net.pod, pin_dir=tmp_path / "pins", obj_path=bogus)
    assert "not on a bpf filesystem" in str(e.value)


def test_ensure_bpffs_mounts_when_missing() -> None:
    need_root()
    mnt = Path(tempfile.mkdtemp(prefix="nzt-bpffs-"))
    try:
        assert not is_bpffs(mnt)
        assert ensure_bpffs(mnt) is True
        assert is_bpffs(mnt)
        assert ensure_bpffs(mnt) is False
    finally:
        proc.run(["umount", str(mnt)], timeout=10, check=False)
        mnt.rmdir()


def test_netns_helpers(net: Net) -> None:
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(RuntimeError):
        with netns.entered(net.pod):
            assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat(net.pod).st_ino
            raise RuntimeError("inside")
    assert os.stat("/proc/thread-self/ns/net").st_ino == before
    addrs = netns.host_addresses(net.client)
    assert ipaddress.ip_address(net.client_ip4) in addrs
    assert ipaddress.ip_address(net.client_ip6) in addrs
    assert all(not a.is_loopback for a in addrs)
    assert ipaddress.ip_address(net.pod_ip4) not in addrs
    assert all(not a.is_loopback for a in netns.host_addresses())


class _TestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (libbpf 1.1)."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


def _sk_lookup_ctx(*, remote: str, remote_port: int, local_port: int) -> ctypes.Array[ctypes.c_char]:
    """struct bpf_sk_lookup (72 bytes) for a TCP lookup from ``remote``."""
    ip = ipaddress.ip_address(remote)
    ctx = ctypes.create_string_buffer(72)
    struct.pack_into("=II", ctx, 8, socket.AF_INET if ip.version == 4 else socket.AF_INET6, socket.IPPROTO_TCP)
    struct.pack_into(f"{len(ip.packed)}s", ctx, 16 if ip.version == 4 else 20, ip.packed)  # network order
    struct.pack_into(">H", ctx, 36, remote_port)
    struct.pack_into("=I", ctx, 60, local_port)
    return ctx


def test_prog_test_run(pod: Pod) -> None:
    """BPF_PROG_TEST_RUN: the program's verdict and selected socket without any packet."""
    link = libbpf.obj_get(str(pod.pins / "link"))
    prog_id = struct.unpack_from("=I", libbpf.obj_info(link, 48), 8)[0]
    os.close(link)
    prog = libbpf.check(libbpf.lib.bpf_prog_get_fd_by_id(prog_id), "bpf_prog_get_fd_by_id")
    try:

        def run(remote: str) -> tuple[int, int]:
            ctx = _sk_lookup_ctx(remote=remote, remote_port=40000, local_port=PORT)
            out = ctypes.create_string_buffer(72)
            opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), ctx_in=ctypes.addressof(ctx), ctx_size_in=72)
            opts.ctx_out, opts.ctx_size_out, opts.repeat = ctypes.addressof(out), 72, 1
            libbpf.check(libbpf.lib.bpf_prog_test_run_opts(prog, ctypes.byref(opts)), "bpf_prog_test_run_opts")
            return opts.retval, struct.unpack_from("=Q", out.raw)[0]  # verdict, cookie of the selected socket

        st = pod.steering
        assert run("10.9.9.9") == (1, 0)  # SK_PASS, nothing selected
        st.steer(PORT, 0)
        st.set_node_addrs(["10.9.9.8"])
        assert run("10.9.9.9") == (1, cookie(pod.activator))
        assert run("fd00::9") == (1, cookie(pod.activator))
        assert run("10.9.9.8") == (1, cookie(pod.activator))
        st.add_bypass("10.9.9.7", 40000)
        assert run("10.9.9.7") == (1, 0)
        act = st.activity(PORT)
        assert act is not None and (act.count, act.node_count) == (3, 1)
    finally:
        os.close(prog)


def test_address_keys() -> None:
    """Pure: the 16-byte key layout shared with steer.h."""
    assert pack_addr("10.1.2.3") == bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])
    assert pack_addr(ipaddress.ip_address("fd00::1")) == ipaddress.IPv6Address("fd00::1").packed
    assert unpack_addr(pack_addr("10.1.2.3")) == ipaddress.IPv4Address("10.1.2.3")
    assert unpack_addr(pack_addr("::1")) == ipaddress.IPv6Address("::1")


_BAD_PROG = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1); __type(key, __u32); __type(value, __u32); } m SEC(".maps");
SEC("sk_lookup") int steer(struct bpf_sk_lookup *ctx) {
    __u32 k = 0;
    return *(__u32 *)bpf_map_lookup_elem(&m, &k) ? SK_PASS : SK_DROP;  /* no NULL check */
}
char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""


def test_load_failure_carries_the_verifier_log(net: Net, bpffs: Path, tmp_path: Path) -> None:
    need_binary("clang-14")
    src, obj = tmp_path / "bad.bpf.c", tmp_path / "bad.bpf.o"
    src.write_text(_BAD_PROG)
    include = f"-I/usr/include/{os.uname().machine}-linux-gnu"
    proc.run(["clang-14", "-O2", "-g", "-target", "bpf", include, "-c", str(src), "-o", str(obj)], timeout=60)
    with pytest.raises(BpfError) as e:
        Steering.attach(netns_path=net.pod, pin_dir=bpffs / "pod", obj_path=obj)
    assert e.value.errno == errno.EACCES
    assert str(e.value).startswith(f"load {obj}: [Errno 13]")
    assert "invalid mem access 'map_value_or_null'" in e.value.log
    assert not (bpffs / "pod").exists()
