"""Per-port TCP state of a pod netns from NETLINK_SOCK_DIAG (inet_diag), stdlib only.

A netlink socket answers for the netns it was created in, so :func:`snapshot`
creates it inside the pod's netns (:func:`nri_zeropod.netns.socket_in_netns`)
and dumps LISTEN and ESTABLISHED TCP sockets for AF_INET and AF_INET6, with
``INET_DIAG_INFO`` (struct tcp_info) attached. The kernel ignores the ports
of a dump request, so filtering happens here.

Parsing (:func:`parse_dump`, :func:`summarize`) is separate from I/O so it
can be tested on recorded bytes. For a LISTEN socket ``idiag_rqueue`` is the
accept queue length; for an established one tcp_info's ``last_data_recv`` and
``last_data_sent`` (ms, at HZ granularity) tell how long it has been idle.
A dump walks the host-wide TCP hash table, about 0.3 ms per family on a big
host: cheap at one poll every few seconds, too slow for a 1 ms loop.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from . import netns

NETLINK_SOCK_DIAG = 4  # not in the socket module
SOCK_DIAG_BY_FAMILY = 20
INET_DIAG_INFO = 2
TCP_ESTABLISHED = 1
TCP_LISTEN = 10

# struct inet_diag_req_v2: family, protocol, ext, pad, states, then the 48-byte sockid.
_REQ = struct.Struct("=BBBxI48x")
# struct inet_diag_msg: family, state, timer, retrans; sockid (sport and dport
# big endian, src[16], dst[16], if, cookie[2]); expires, rqueue, wqueue, uid, inode.
_MSG_HEAD = struct.Struct("=BBBB")
_MSG_PORTS = struct.Struct(">HH")
_MSG_TAIL = struct.Struct("=IIIII")
_MSG_SIZE = 72
_TCPI_LAST_DATA_SENT = 44  # offsets in struct tcp_info
_TCPI_LAST_DATA_RECV = 52


@dataclass(frozen=True)
class DiagSocket:
    """One socket of a dump."""

    family: int
    state: int
    local: tuple[str, int]
    remote: tuple[str, int]
    rqueue: int
    wqueue: int
    inode: int
    last_data_sent_ms: int | None
    last_data_recv_ms: int | None


@dataclass(frozen=True)
class PortStats:
    """What a pod has on one local TCP port."""

    listening: bool
    accept_queue: int  # connections waiting for accept(), summed over the port's listeners
    established: int
    ms_since_last_data: int | None  # min over established sockets of min(recv, sent); None without any
    remotes: tuple[tuple[str, int], ...] = ()  # peers of the established sockets


def build_request(family: int) -> bytes:
    """The inet_diag_req_v2 payload: TCP sockets of ``family`` in LISTEN or ESTABLISHED, with tcp_info."""
    states = (1 << TCP_LISTEN) | (1 << TCP_ESTABLISHED)
    return _REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), states)


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    ip = ipaddress.IPv6Address(raw)
    return str(ip.ipv4_mapped or ip)  # a dual-stack socket's IPv4 peer


def parse_message(payload: bytes) -> DiagSocket:
    """Decode one SOCK_DIAG_BY_FAMILY reply payload."""
    if len(payload) < _MSG_SIZE:
        raise ValueError(f"inet_diag_msg too short: {len(payload)} bytes")
    family, state, _timer, _retrans = _MSG_HEAD.unpack_from(payload, 0)
    sport, dport = _MSG_PORTS.unpack_from(payload, 4)
    src, dst = payload[8:24], payload[24:40]
    _expires, rqueue, wqueue, _uid, inode = _MSG_TAIL.unpack_from(payload, 52)
    sent = recv = None
    for atype, value in netns.iter_attrs(payload[_MSG_SIZE:]):
        if atype == INET_DIAG_INFO and len(value) >= _TCPI_LAST_DATA_RECV + 4:
            (sent,) = struct.unpack_from("=I", value, _TCPI_LAST_DATA_SENT)
            (recv,) = struct.unpack_from("=I", value, _TCPI_LAST_DATA_RECV)
    return DiagSocket(
        family=family,
        state=state,
        local=(_addr(family, src), sport),
        remote=(_addr(family, dst), dport),
        rqueue=rqueue,
        wqueue=wqueue,
        inode=inode,
        last_data_sent_ms=sent,
        last_data_recv_ms=recv,
    )


def parse_dump(data: bytes) -> list[DiagSocket]:
    """All sockets in the reply messages of one dump."""
    return [parse_message(p) for t, p in netns.iter_messages(data) if t == SOCK_DIAG_BY_FAMILY]


def summarize(records: Iterable[DiagSocket], ports: Iterable[int]) -> dict[int, PortStats]:
    """Per-port stats for ``ports`` (every one present in the result, even if nothing uses it)."""
    wanted = set(ports)
    listening: dict[int, bool] = {p: False for p in wanted}
    queue = dict.fromkeys(wanted, 0)
    est = dict.fromkeys(wanted, 0)
    idle: dict[int, int | None] = dict.fromkeys(wanted)
    remotes: dict[int, list[tuple[str, int]]] = {p: [] for p in wanted}
    for r in records:
        port = r.local[1]
        if port not in wanted:
            continue
        if r.state == TCP_LISTEN:
            listening[port] = True
            queue[port] += r.rqueue
        elif r.state == TCP_ESTABLISHED:
            est[port] += 1
            remotes[port].append(r.remote)
            times = [t for t in (r.last_data_recv_ms, r.last_data_sent_ms) if t is not None]
            if times:
                cur = idle[port]
                idle[port] = min(times) if cur is None else min(cur, *times)
    return {
        p: PortStats(
            listening=listening[p],
            accept_queue=queue[p],
            established=est[p],
            ms_since_last_data=idle[p],
            remotes=tuple(sorted(remotes[p])),
        )
        for p in sorted(wanted)
    }


def dump(sock: socket.socket, family: int) -> bytes:
    """The raw reply of one dump on a NETLINK_SOCK_DIAG socket."""
    return netns.netlink_dump(sock, msg_type=SOCK_DIAG_BY_FAMILY, payload=build_request(family))


def snapshot(netns_path: netns.NetnsRef | None, ports: Iterable[int]) -> dict[int, PortStats]:
    """Per-port TCP state in ``netns_path`` (None: our own netns)."""
    with netns.netlink_socket(NETLINK_SOCK_DIAG, netns_path) as sock:
        data = dump(sock, socket.AF_INET) + dump(sock, socket.AF_INET6)
    return summarize(parse_dump(data), ports)
