"""Steering for one pod network namespace: the agent's handle on the pinned maps.

A :class:`Steering` holds one fd per pinned map (see ``bpf/steer.bpf.c`` for
what each map means) and nothing else: closing it, or the agent exiting,
changes nothing in the kernel. Keys and values are packed here exactly as
``bpf/steer.h`` lays them out: ports and indexes in host byte order,
addresses as 16 network-order bytes with IPv4 mapped to ``::ffff:a.b.c.d``.
Sizes of the pinned maps are checked on open, so an object built from a
different ``steer.h`` fails loudly instead of corrupting entries.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from . import libbpf as bpf
from . import pins
from .libbpf import BpfError

Address = str | ipaddress.IPv4Address | ipaddress.IPv6Address

_PORT = struct.Struct("=H")
_INDEX = struct.Struct("=I")
_FD = struct.Struct("=Q")
_ACTIVITY = struct.Struct("=4Q")  # last_ns, count, node_last_ns, node_count
_REMOTE_TAIL = struct.Struct("=HH")  # port, pad
_PRESENT = b"\x01"

# map name -> (key size, value size), as declared in steer.bpf.c / steer.h
_SIZES = {
    "steer_ports": (2, 4),
    "activator_socks": (4, 8),
    "activity": (2, 32),
    "node_addrs": (16, 1),
    "bypass": (20, 1),
}


@dataclass(frozen=True)
class Activity:
    """New TCP connections seen on a tracked port (timestamps: CLOCK_BOOTTIME ns, 0 = never)."""

    count: int
    last_ns: int
    node_count: int
    node_last_ns: int


def boot_ns() -> int:
    """Now on the clock the program stamps activity with (bpf_ktime_get_boot_ns)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def pack_addr(addr: Address) -> bytes:
    """16-byte key form of an address: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def unpack_addr(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.IPv6Address(raw)
    return ip.ipv4_mapped or ip


def _port_key(port: int) -> bytes:
    if not 0 < port < 65536:
        raise ValueError(f"bad TCP port {port}")
    return _PORT.pack(port)


class Steering:
    """The pinned maps of one pod netns; build with :meth:`attach` or :meth:`open`."""

    def __init__(self, pin_dir: Path, fds: dict[str, int]) -> None:
        self.pin_dir = pin_dir
        self._fds = fds

    # -- life cycle -----------------------------------------------------

    @classmethod
    def attach(cls, *, netns_path: str | Path, pin_dir: str | Path, obj_path: str | Path | None = None) -> Steering:
        """Attach steering to a netns, or re-open it if ``pin_dir`` already holds it for that netns.

        Pins found for another (or a vanished) netns are replaced.
        """
        netns_path, pin_dir = Path(netns_path), Path(pin_dir)
        if pin_dir.exists():
            ino = pins.link_netns_ino(pin_dir)
            if ino is not None and ino == os.stat(netns_path).st_ino:
                return cls.open(pin_dir)
        pins.load_and_pin(netns_path=netns_path, pin_dir=pin_dir, obj_path=Path(obj_path or pins.default_obj_path()))
        return cls.open(pin_dir)

    @classmethod
    def open(cls, pin_dir: str | Path) -> Steering:
        """Re-open the pinned maps (e.g. after an agent restart)."""
        pin_dir = Path(pin_dir)
        if pins.link_netns_ino(pin_dir) is None:
            raise BpfError(f"open steering in {pin_dir}: no pinned link", errno.ENOENT)
        fds: dict[str, int] = {}
        try:
            for name, (key_size, value_size) in _SIZES.items():
                fds[name] = fd = bpf.obj_get(str(pin_dir / name))
                # struct bpf_map_info: type, id, key_size, value_size, ...
                got = struct.unpack_from("=II", bpf.obj_info(fd, 80), 8)
                if got != (key_size, value_size):
                    what = f"open map {name} in {pin_dir}: key/value sizes {got}, want {(key_size, value_size)}"
                    raise BpfError(what, errno.EINVAL)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        return cls(pin_dir, fds)

    @staticmethod
    def remove(pin_dir: str | Path) -> None:
        """Unpin link and maps: the program is detached once no fd holds the link."""
        pins.unpin(Path(pin_dir))

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> Steering:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _fd(self, name: str) -> int:
        try:
            return self._fds[name]
        except KeyError:
            raise BpfError(f"{name}: steering for {self.pin_dir} is closed", errno.EBADF) from None

    # -- activator sockets ------------------------------------------------

    def set_socket(self, index: int, sock: socket.socket | int) -> None:
        """Put a listening socket (or its fd) at ``index`` of activator_socks."""
        fd = sock if isinstance(sock, int) else sock.fileno()
        try:
            bpf.map_update(self._fd("activator_socks"), _INDEX.pack(index), value=_FD.pack(fd))
        except BpfError as e:
            raise BpfError(f"set_socket({index}, fd {fd})", e.errno or errno.EINVAL) from e

    def clear_socket(self, index: int) -> bool:
        return bpf.map_delete(self._fd("activator_socks"), _INDEX.pack(index))

    def socket_cookie(self, index: int) -> int | None:
        """SO_COOKIE of the socket at ``index``; None if there is none (e.g. it was closed)."""
        raw = bpf.map_lookup(self._fd("activator_socks"), _INDEX.pack(index), value_size=8)
        return None if raw is None else int(_FD.unpack(raw)[0])

    # -- steering ---------------------------------------------------------

    def steer(self, port: int, index: int = 0) -> None:
        """Send new connections to ``port`` to the activator socket at ``index``."""
        if self.socket_cookie(index) is None:
            raise BpfError(f"steer({port}, {index}): no activator socket at index {index}", errno.ENOENT)
        bpf.map_update(self._fd("steer_ports"), _port_key(port), value=_INDEX.pack(index))

    def unsteer(self, port: int) -> bool:
        """Let new connections to ``port`` reach the normal listener again; False if it was not steered."""
        return bpf.map_delete(self._fd("steer_ports"), _port_key(port))

    def steered_ports(self) -> dict[int, int]:
        """port -> activator socket index."""
        fd = self._fd("steer_ports")
        out: dict[int, int] = {}
        for key in bpf.map_keys(fd, key_size=2, max_entries=4096):
            raw = bpf.map_lookup(fd, key, value_size=4)
            if raw is not None:
                out[_PORT.unpack(key)[0]] = _INDEX.unpack(raw)[0]
        return out

    # -- activity ---------------------------------------------------------

    def track(self, port: int) -> None:
        """Start counting new connections to ``port`` (kept if already tracked)."""
        try:
            bpf.map_update(self._fd("activity"), _port_key(port), value=bytes(_ACTIVITY.size), flags=1)  # BPF_NOEXIST
        except BpfError as e:
            if e.errno != errno.EEXIST:
                raise

    def untrack(self, port: int) -> bool:
        return bpf.map_delete(self._fd("activity"), _port_key(port))

    def tracked_ports(self) -> list[int]:
        return sorted(_PORT.unpack(k)[0] for k in bpf.map_keys(self._fd("activity"), key_size=2, max_entries=4096))

    def activity(self, port: int) -> Activity | None:
        """Counters of a tracked port; None if it is not tracked."""
        raw = bpf.map_lookup(self._fd("activity"), _port_key(port), value_size=_ACTIVITY.size)
        if raw is None:
            return None
        last_ns, count, node_last_ns, node_count = _ACTIVITY.unpack(raw)
        return Activity(count=count, last_ns=last_ns, node_count=node_count, node_last_ns=node_last_ns)

    # -- node addresses and bypass -------------------------------------------

    def set_node_addrs(self, addrs: Iterable[Address]) -> None:
        """Make node_addrs exactly ``addrs`` (added before stale ones are removed)."""
        fd = self._fd("node_addrs")
        want = {pack_addr(a) for a in addrs}
        for key in want:
            bpf.map_update(fd, key, value=_PRESENT)
        for key in bpf.map_keys(fd, key_size=16, max_entries=1024):
            if key not in want:
                bpf.map_delete(fd, key)

    def node_addrs(self) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return {unpack_addr(k) for k in bpf.map_keys(self._fd("node_addrs"), key_size=16, max_entries=1024)}

    def add_bypass(self, addr: Address, port: int) -> None:
        """Exempt connections from source ``addr``:``port`` (the agent's own dial-out)."""
        bpf.map_update(self._fd("bypass"), pack_addr(addr) + _REMOTE_TAIL.pack(port, 0), value=_PRESENT)

    def remove_bypass(self, addr: Address, port: int) -> bool:
        return bpf.map_delete(self._fd("bypass"), pack_addr(addr) + _REMOTE_TAIL.pack(port, 0))
