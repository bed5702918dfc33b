"""The TCP ports a process tree listens on, from /proc.

A listening socket belongs to a process when one of its fds links to
``socket:[<inode>]``; ``/proc/<pid>/net/tcp`` and ``tcp6`` (the view of that
process's netns) list sockets with their state and inode. So: walk the tree
(``/proc/<pid>/task/<tid>/children``, falling back to scanning PPid when the
kernel lacks CONFIG_PROC_CHILDREN), collect socket inodes, and keep the
LISTEN (``0A``) entries whose inode is among them. Sockets of other processes
in the same netns (a sidecar's, the activator's) are left out that way.

Parsing is pure (:func:`parse_proc_net_tcp`) so it can be tested on text.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TCP_LISTEN_HEX = "0A"


@dataclass(frozen=True, order=True)
class Listener:
    """A listening TCP socket: port, family (socket.AF_INET/AF_INET6) and bound address."""

    port: int
    family: int
    address: str


def _decode_addr(hexaddr: str, byteorder: str) -> str:
    # The kernel prints each 32-bit word of the address (network order in
    # memory) with %08X, i.e. as a host-order integer.
    raw = bytes.fromhex(hexaddr)
    if byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def parse_proc_net_tcp(text: str, *, family: int, byteorder: str = sys.byteorder) -> list[tuple[Listener, int]]:
    """(listener, socket inode) for each LISTEN line of /proc/net/tcp (AF_INET) or tcp6 (AF_INET6)."""
    out: list[tuple[Listener, int]] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN_HEX:
            continue
        addr, _, port = fields[1].partition(":")
        out.append((Listener(int(port, 16), family, _decode_addr(addr, byteorder)), int(fields[9])))
    return out


def parse_children(text: str) -> list[int]:
    """The pids in a /proc/<pid>/task/<tid>/children file."""
    return [int(p) for p in text.split()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None  # the process (or thread) went away meanwhile


def _children_by_scan(pid: int, proc: Path) -> list[int]:
    kids = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            status = _read(entry / "status") or ""
            for line in status.splitlines():
                if line.startswith("PPid:") and int(line.split()[1]) == pid:
                    kids.append(int(entry.name))
    return kids


def process_tree(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """``pid`` and all its descendants that are still alive."""
    # A process's main thread has tid == pid.
    has_children_file = (proc / str(pid) / "task" / str(pid) / "children").exists()
    seen: list[int] = []
    todo = [pid]
    while todo:
        cur = todo.pop()
        if cur in seen:  # pid reuse could in theory make a cycle
            continue
        seen.append(cur)
        if not has_children_file:
            todo.extend(_children_by_scan(cur, proc))
            continue
        try:
            tids = os.listdir(proc / str(cur) / "task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tids:
            todo.extend(parse_children(_read(proc / str(cur) / "task" / tid / "children") or ""))
    return seen


def socket_inodes(pid: int, proc: Path = Path("/proc")) -> set[int]:
    """Inodes of the sockets among the fds of one process."""
    fd_dir = proc / str(pid) / "fd"
    inodes: set[int] = set()
    try:
        fds = os.listdir(fd_dir)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tree_socket_inodes(pid: int, proc: Path) -> set[int]:
    """Inodes of the sockets held by ``pid`` and its descendants."""
    inodes: set[int] = set()
    for p in process_tree(pid, proc):
        inodes |= socket_inodes(p, proc)
    return inodes


def _tcp_tables(pid: int, proc: Path) -> Iterator[tuple[int, str]]:
    """(family, text) of /proc/PID/net/tcp and tcp6: the tables of ``pid``'s netns."""
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        yield family, _read(proc / str(pid) / "net" / name) or ""


def listeners(pid: int, proc: Path = Path("/proc")) -> list[Listener]:
    """Sorted, distinct listening TCP sockets held by ``pid`` or its descendants."""
    inodes = _tree_socket_inodes(pid, proc)
    found: set[Listener] = set()
    for family, text in _tcp_tables(pid, proc):
        found.update(lst for lst, inode in parse_proc_net_tcp(text, family=family) if inode in inodes)
    return sorted(found)


def listening_ports(pid: int, proc: Path = Path("/proc")) -> set[int]:
    """Just the port numbers of :func:`listeners`."""
    return {lst.port for lst in listeners(pid, proc)}


def parse_socket_states(text: str) -> list[tuple[str, int]]:
    """(state as the kernel's hex code, socket inode) for every line of /proc/net/tcp or tcp6."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 10:
            out.append((fields[3], int(fields[9])))
    return out


def connections(pid: int, proc: Path = Path("/proc")) -> int:
    """How many connected (not listening) TCP sockets ``pid`` and its descendants hold."""
    inodes = _tree_socket_inodes(pid, proc)
    count = 0
    for _family, text in _tcp_tables(pid, proc):
        count += sum(1 for state, inode in parse_socket_states(text) if inode in inodes and state != TCP_LISTEN_HEX)
    return count
