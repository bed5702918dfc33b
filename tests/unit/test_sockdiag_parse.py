"""Parsing of NETLINK_SOCK_DIAG replies, on recorded and built bytes."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nri_zeropod import netns, sockdiag
from nri_zeropod.sockdiag import DiagSocket, PortStats

# An AF_INET dump recorded on kernel 6.18 in a test netns: a listener on
# 127.0.0.1:8080, one accepted connection from port 46210 (client sent 300 ms
# and the server 100 ms before the dump), and one from port 46222 still in
# the accept queue (idle since its handshake, 300 ms).
RECORDED_V4 = bytes.fromhex(
    "9801000014000200010000001b290000020a00001f9000007f0000010000000000000000000000000000000000000000"
    "000000000000000000000000470000000000000000000000010000000800000000000000767400000500080000000000"
    "08000f00000000000c001500010000000000000006001600520000001c0102000a000000000000000000000000000000"
    "000000000000000001000000080000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000a0000000000000003000000000000000000000000000000ffffffffffffffff"
    "ffffffffffffffff00000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000009801000014000200010000001b290000020100001f90b48e"
    "7f0000010000000000000000000000007f00000100000000000000000000000000000000480000000000000000000000"
    "00000000000000000000000000000000050008000000000008000f00000000000c001500010000000000000006001600"
    "520000001c010200010000000007aa01e01c030000000000008000001802000000000000000000000000000000000000"
    "000000002c010000000000002c0100002c010000ffff0000cbff00000700000003000000ffffff7f0a000000cbff0000"
    "0300000000000000cbff0000000000001582ea251f000000ffffffffffffffff00000000000000000000000000000000"
    "000000000200000000000000070000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000001000000000000000000000000000000000000000000000000000000000000000000000000000100"
    "cbff00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "9801000014000200010000001b29000002010000b4821f907f0000010000000000000000000000007f00000100000000"
    "000000000000000000000000490000000000000000000000000000000000000000000000777400000500080000000000"
    "08000f00000000000c001500010000000000000006001600520000001c010200010000000007aa01e01c0300409c0000"
    "008000001802000000000000000000000000000000000000000000002c010000000000006400000064000000ffff0000"
    "d7ff00001e00000010000000ffffff7f0b000000cbff00000300000000000000d7ff000000000000edf30a9a06000000"
    "ffffffffffffffff03000000000000000200000000000000040000000300000000000000090000000100000001000000"
    "388e03d90000000000000000000000000000000000000000000000000000000002000000000000000200000000000000"
    "000000000000000000000000000000000000000000000100000001000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000009801000014000200010000001b29000002010000b48e1f90"
    "7f0000010000000000000000000000007f000001000000000000000000000000000000004a0000000000000000000000"
    "00000000000000000000000078740000050008000000000008000f00000000000c001500010000000000000006001600"
    "520000001c010200010000000007aa01e01c030000000000e57f00001802000000000000000000000000000000000000"
    "000000002c010000000000002c0100002c010000ffff0000d7ff00000500000002000000ffffff7f0a000000cbff0000"
    "0300000000000000d7ff000000000000efc348922b000000ffffffffffffffff01000000000000000000000000000000"
    "020000000100000000000000050000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000010000000000000000000000000000000000000000000000000000000000000000000000cbff0000"
    "000001000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "9801000014000200010000001b290000020100001f90b4827f0000010000000000000000000000007f00000100000000"
    "0000000000000000000000004b0000000000000000000000000000000000000000000000797400000500080000000000"
    "08000f00000000000c001500010000000000000006001600520000001c010200010000000007aa01e01c0300409c0000"
    "0080000018020000000000000000000000000000000000000000000064000000000000002c01000064000000ffff0000"
    "cbff0000170000000c000000ffffff7f0b000000cbff00000300000000000000cbff000000000000c2cef8610a000000"
    "ffffffffffffffff02000000000000000200000000000000020000000400000000000000150000000100000001000000"
    "0de565330000000000000000000000000000000000000000000000000000000002000000000000000200000000000000"
    "000000000000000000000000000000000000000000000100000001000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000"
)


def test_recorded_dump_parses() -> None:
    recs = sockdiag.parse_dump(RECORDED_V4)
    assert len(recs) == 5
    lst = recs[0]
    assert (lst.family, lst.state) == (socket.AF_INET, sockdiag.TCP_LISTEN)
    assert (lst.local, lst.remote) == (("127.0.0.1", 8080), ("0.0.0.0", 0))
    assert (lst.rqueue, lst.wqueue) == (1, 8)  # accept queue length, backlog
    child = recs[4]
    assert child.state == sockdiag.TCP_ESTABLISHED
    assert (child.local, child.remote) == (("127.0.0.1", 8080), ("127.0.0.1", 46210))
    assert (child.last_data_sent_ms, child.last_data_recv_ms) == (100, 300)


def test_recorded_dump_summary() -> None:
    snap = sockdiag.summarize(sockdiag.parse_dump(RECORDED_V4), [8080, 9090])
    assert snap == {
        8080: PortStats(
            listening=True,
            accept_queue=1,
            established=2,
            ms_since_last_data=100,
            remotes=(("127.0.0.1", 46210), ("127.0.0.1", 46222)),
        ),
        9090: PortStats(False, 0, 0, None),
    }


def build_msg(
    *,
    family: int,
    state: int,
    local: tuple[str, int],
    remote: tuple[str, int],
    rqueue: int = 0,
    info: tuple[int, int] | None = None,
) -> bytes:
    """One SOCK_DIAG_BY_FAMILY netlink message as the kernel lays it out."""

    def addr(a: str) -> bytes:
        return socket.inet_pton(family, a).ljust(16, b"\0")

    body = struct.pack("=BBBB", family, state, 0, 0) + struct.pack(">HH", local[1], remote[1])
    body += addr(local[0]) + addr(remote[0]) + struct.pack("=IQ", 0, 0)
    body += struct.pack("=IIIII", 0, rqueue, 0, 0, 1234)
    if info is not None:
        tcp_info = bytearray(232)
        struct.pack_into("=I", tcp_info, 44, info[0])
        struct.pack_into("=I", tcp_info, 52, info[1])
        body += struct.pack("=HH", 4 + len(tcp_info), sockdiag.INET_DIAG_INFO) + bytes(tcp_info)
    return netns.NLMSG_HDR.pack(16 + len(body), sockdiag.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def test_ipv6_and_mapped_addresses() -> None:
    data = build_msg(family=socket.AF_INET6, state=10, local=("::", 80), remote=("::", 0), rqueue=2)
    data += build_msg(
        family=socket.AF_INET6, state=1, local=("::ffff:10.0.0.1", 80), remote=("::ffff:10.0.0.9", 5555), info=(40, 20)
    )
    data += build_msg(family=socket.AF_INET6, state=1, local=("fd00::1", 80), remote=("fd00::9", 6666), info=(7, 900))
    data += build_msg(family=socket.AF_INET6, state=1, local=("fd00::1", 81), remote=("fd00::9", 6667), info=(1, 1))
    recs = sockdiag.parse_dump(data)
    assert recs[1].local == ("10.0.0.1", 80) and recs[1].remote == ("10.0.0.9", 5555)
    assert recs[2].remote == ("fd00::9", 6666)
    assert sockdiag.summarize(recs, [80])[80] == PortStats(
        listening=True,
        accept_queue=2,
        established=2,
        ms_since_last_data=7,
        remotes=(("10.0.0.9", 5555), ("fd00::9", 6666)),
    )


def test_missing_tcp_info_gives_no_idle_time() -> None:
    data = build_msg(family=socket.AF_INET, state=1, local=("10.0.0.1", 80), remote=("10.0.0.2", 1))
    (rec,) = sockdiag.parse_dump(data)
    assert rec.last_data_recv_ms is None
    assert sockdiag.summarize([rec], [80])[80].ms_since_last_data is None


def test_request_layout() -> None:
    req = sockdiag.build_request(socket.AF_INET6)
    assert len(req) == 56
    family, proto, ext, _pad, states = struct.unpack_from("=BBBBI", req)
    assert (family, proto, ext, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 2, (1 << 10) | (1 << 1))


def test_short_message_is_an_error() -> None:
    with pytest.raises(ValueError):
        sockdiag.parse_message(b"\0" * 40)
    with pytest.raises(ValueError):
        sockdiag.parse_dump(RECORDED_V4[:100])


@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), min_size=1, max_size=8))
def test_idle_time_is_min_of_both_directions(times: list[tuple[int, int]]) -> None:
    recs = [
        DiagSocket(socket.AF_INET, 1, ("10.0.0.1", 80), ("10.0.0.2", 1000 + i), 0, 0, 0, sent, recv)
        for i, (sent, recv) in enumerate(times)
    ]
    assert sockdiag.summarize(recs, [80])[80].ms_since_last_data == min(min(t) for t in times)


def _newaddr(*, family: int, index: int, local: str | None, address: str | None = None) -> bytes:
    body = struct.pack("=BBBBI", family, 24, 0, 0, index)
    for atype, a in ((netns.IFA_ADDRESS, address), (netns.IFA_LOCAL, local)):
        if a is not None:
            raw = socket.inet_pton(family, a)
            body += struct.pack("=HH", 4 + len(raw), atype) + raw
    return netns.NLMSG_HDR.pack(16 + len(body), netns.RTM_NEWADDR, 2, 1, 0) + body


def test_rtnetlink_addresses_skip_loopback() -> None:
    """The same netlink framing, for netns.host_addresses (RTM_GETADDR)."""
    data = _newaddr(family=socket.AF_INET, index=1, local="127.0.0.1")
    data += _newaddr(family=socket.AF_INET, index=2, local="10.0.0.5", address="10.0.0.5")
    data += _newaddr(family=socket.AF_INET, index=3, local="192.168.1.1", address="192.168.1.2")  # point-to-point
    data += _newaddr(family=socket.AF_INET6, index=2, local=None, address="fd00::5")
    data += _newaddr(family=socket.AF_INET6, index=1, local=None, address="::1")
    assert [str(a) for a in netns.parse_addresses(data)] == ["10.0.0.5", "192.168.1.1", "fd00::5"]
