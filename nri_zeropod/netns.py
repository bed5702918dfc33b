"""Network namespaces: run a short block inside one, and the host's own addresses.

:func:`entered` switches only the calling thread into another netns with
``setns(CLONE_NEWNET)`` and always switches it back, so a synchronous block
(no ``await`` in it) can create sockets there. A socket belongs to the netns
it was created in for its whole life, which is how the agent gets listening
sockets and netlink sockets that live in a pod's netns while it stays in
the host's (:func:`socket_in_netns`).

:func:`host_addresses` lists the addresses of the host's interfaces with an
rtnetlink ``RTM_GETADDR`` dump (stdlib sockets only); :func:`netlink_dump` is
the small request/multipart-reply loop shared with :mod:`.sockdiag`.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.restype = ctypes.c_int
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

NetnsRef = str | Path


def pid_netns(pid: int) -> Path:
    """The netns of a process, as a path usable with :func:`entered`."""
    return Path(f"/proc/{pid}/ns/net")


def _setns(fd: int, what: str) -> None:
    # os.setns only exists from Python 3.12.
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}, CLONE_NEWNET): {os.strerror(err)}")


@contextmanager
def entered(netns: NetnsRef) -> Iterator[None]:
    """Run the block with this thread in ``netns``; the original netns is restored even on error."""
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, str(netns))
            try:
                yield
            finally:
                # If this failed the thread would keep running in the pod's
                # netns; let that error win over the block's.
                _setns(original, "original netns")
        finally:
            os.close(original)
    finally:
        os.close(target)


def socket_in_netns(
    netns: NetnsRef, *, family: int = socket.AF_INET6, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """A new socket that lives in ``netns`` (about 12 µs of setns round trip)."""
    with entered(netns):
        return socket.socket(family, type, proto)


# -- netlink --------------------------------------------------------------

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300


def netlink_socket(proto: int, netns: NetnsRef | None = None) -> socket.socket:
    """A raw netlink socket of ``proto`` in ``netns`` (None: ours), with a timeout
    that only guards against a kernel bug: the kernel always answers."""
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    else:
        sock = socket_in_netns(netns, family=socket.AF_NETLINK, type=socket.SOCK_RAW, proto=proto)
    sock.settimeout(5.0)
    return sock


def netlink_dump(sock: socket.socket, *, msg_type: int, payload: bytes) -> bytes:
    """Send one dump request and return the concatenated reply messages (without NLMSG_DONE).

    An NLMSG_ERROR reply raises OSError with the kernel's errno.
    """
    seq = 1
    sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(payload), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + payload)
    chunks: list[bytes] = []
    while True:
        data = sock.recv(1 << 16)
        off = 0
        while off + NLMSG_HDR.size <= len(data):
            length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, off)
            if length < NLMSG_HDR.size:
                raise OSError(f"netlink: bad message length {length}")
            if mtype == NLMSG_DONE:
                return b"".join(chunks)
            if mtype == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, off + NLMSG_HDR.size)[0]
                raise OSError(err, f"netlink dump type {msg_type}: {os.strerror(err)}")
            aligned = (length + 3) & ~3
            chunks.append(data[off : off + length].ljust(aligned, b"\0"))
            off += aligned


def iter_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in ``data``."""
    off = 0
    while off + NLMSG_HDR.size <= len(data):
        length, mtype = NLMSG_HDR.unpack_from(data, off)[:2]
        if length < NLMSG_HDR.size or off + length > len(data):
            raise ValueError(f"truncated netlink message at offset {off}")
        yield mtype, data[off + NLMSG_HDR.size : off + length]
        off += (length + 3) & ~3


def iter_attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each rtattr in ``data``."""
    off = 0
    while off + 4 <= len(data):
        length, atype = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        yield atype & 0x3FFF, data[off + 4 : off + length]  # strip NLA_F_NESTED / NET_BYTEORDER
        off += (length + 3) & ~3


# -- host addresses ---------------------------------------------------------

RTM_GETADDR = 22
RTM_NEWADDR = 20
IFA_ADDRESS = 1
IFA_LOCAL = 2
LOOPBACK_IFINDEX = 1  # lo is ifindex 1 in every netns
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index


def parse_addresses(data: bytes) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses of an RTM_GETADDR dump, leaving out the loopback interface's."""
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for mtype, payload in iter_messages(data):
        if mtype != RTM_NEWADDR:
            continue
        family, _plen, _flags, _scope, index = _IFADDRMSG.unpack_from(payload)
        if index == LOOPBACK_IFINDEX:
            continue
        attrs = dict(iter_attrs(payload[_IFADDRMSG.size :]))
        # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer
        # on point-to-point links, and the same as IFA_LOCAL elsewhere.
        raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(raw)
        if not ip.is_loopback and ip not in out:
            out.append(ip)
    return out


def host_addresses(netns: NetnsRef | None = None) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """All IPv4/IPv6 addresses on the interfaces of ``netns`` (default: ours), loopback excluded."""
    with netlink_socket(socket.NETLINK_ROUTE, netns) as sock:
        req = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        return parse_addresses(netlink_dump(sock, msg_type=RTM_GETADDR, payload=req))
