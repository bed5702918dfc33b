"""Listening ports of a process tree, from /proc text (recorded on x86_64, kernel 6.18)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from nri_zeropod import ports
from nri_zeropod.ports import Listener

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 32158 2 000000008d9c0bd4 100 0 0 10 0
   1: 0100007F:B074 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 32161 2 0000000071c1a595 20 0 0 10 -1
   2: 0100007F:1F90 0100007F:B074 01 00000000:00000000 00:00000000 00000000     0        0 0 1 000000004e0c081c 20 0 0 10 -1
   3: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 40000 1 0000000000000000 100 0 0 10 0
"""

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2382 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 32159 1 00000000fcaf3f73 100 0 0 10 0
   1: 00000000000000000000000001000000:1B9E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 32162 1 00000000de31378d 100 0 0 10 0
   2: 000000FD000000000000000002000100:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 32170 1 0000000000000000 100 0 0 10 0
   3: 0000000000000000FFFF00000100000A:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 32171 1 0000000000000000 100 0 0 10 0
"""


def test_parse_tcp_keeps_only_listeners() -> None:
    got = ports.parse_proc_net_tcp(TCP, family=socket.AF_INET, byteorder="little")
    assert got == [
        (Listener(8080, socket.AF_INET, "127.0.0.1"), 32158),
        (Listener(80, socket.AF_INET, "0.0.0.0"), 40000),
    ]


def test_parse_tcp6_addresses() -> None:
    got = ports.parse_proc_net_tcp(TCP6, family=socket.AF_INET6, byteorder="little")
    assert [lst.address for lst, _ in got] == ["::", "::1", "fd00::1:2", "::ffff:a00:1"]
    assert [lst.port for lst, _ in got] == [9090, 7070, 443, 22]
    assert [inode for _, inode in got] == [32159, 32162, 32170, 32171]


def test_parse_big_endian_host() -> None:
    text = TCP.replace("0100007F:1F90 00000000:0000 0A", "7F000001:1F90 00000000:0000 0A")
    got = ports.parse_proc_net_tcp(text, family=socket.AF_INET, byteorder="big")
    assert got[0][0] == Listener(8080, socket.AF_INET, "127.0.0.1")


def test_parse_ignores_junk() -> None:
    assert ports.parse_proc_net_tcp("header\n\n  garbage line\n", family=socket.AF_INET) == []
    assert ports.parse_children("101 102 \n") == [101, 102]
    assert ports.parse_children("") == []


def _fake_proc(root: Path) -> Path:
    """pid 100 (threads 100, 102) -> child 101 (thread 100) and 103 (thread 102); 200 is unrelated."""
    proc = root / "proc"
    tree = {100: {100: "101 ", 102: "103 "}, 101: {101: ""}, 103: {103: ""}, 200: {200: ""}}
    parents = {100: 1, 101: 100, 103: 100, 200: 1}
    fds = {100: ["socket:[32158]", "/dev/null"], 101: ["socket:[32159]"], 103: ["socket:[32170]"], 200: ["socket:[40000]"]}
    for pid, threads in tree.items():
        for tid, children in threads.items():
            d = proc / str(pid) / "task" / str(tid)
            d.mkdir(parents=True)
            (d / "children").write_text(children)
        (proc / str(pid) / "status").write_text(f"Name:\tx\nPid:\t{pid}\nPPid:\t{parents[pid]}\n")
        (proc / str(pid) / "fd").mkdir()
        for i, target in enumerate(fds[pid]):
            os.symlink(target, proc / str(pid) / "fd" / str(i))
    net = proc / "100" / "net"
    net.mkdir()
    (net / "tcp").write_text(TCP)
    (net / "tcp6").write_text(TCP6)
    return proc


def test_process_tree_and_listeners(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path)
    assert sorted(ports.process_tree(100, proc)) == [100, 101, 103]
    assert ports.socket_inodes(100, proc) == {32158}
    if sys.byteorder != "little":
        return  # the recorded text is from a little-endian host
    assert ports.listeners(100, proc) == [
        Listener(443, socket.AF_INET6, "fd00::1:2"),
        Listener(8080, socket.AF_INET, "127.0.0.1"),
        Listener(9090, socket.AF_INET6, "::"),
    ]
    assert ports.listening_ports(100, proc) == {443, 8080, 9090}  # 80 belongs to pid 200


def test_process_tree_without_children_files(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path)
    for f in proc.glob("*/task/*/children"):
        f.unlink()
    assert sorted(ports.process_tree(100, proc)) == [100, 101, 103]


def test_vanished_process_is_skipped(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path)
    assert ports.listeners(999, proc) == []
    assert ports.socket_inodes(999, proc) == set()


def test_this_process(tmp_path: Path) -> None:
    s = socket.socket()
    with s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert Listener(port, socket.AF_INET, "127.0.0.1") in ports.listeners(os.getpid())


def test_parse_socket_states_and_connected_count() -> None:
    from nri_zeropod.ports import parse_socket_states

    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1\n"
        "   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 222 1\n"
        "   2: 0100007F:C350 0100007F:1F90 06 00000000:00000000 03:00000000 00000000     0        0 0 3\n"
    )
    assert parse_socket_states(text) == [("0A", 111), ("01", 222), ("06", 0)]
