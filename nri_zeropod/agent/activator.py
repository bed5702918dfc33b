"""The activator: where new connections wait while a container's app sleeps.

The socket is the keeper's (a dual-stack listener in the pod's network
namespace, taken with pidfd_getfd), so it outlives the agent: connections
that arrive while the agent restarts wait in its accept queue. The
steering program hands it every new connection for the container's ports.

For each accepted connection: kubelet probes from the node are answered
(when probe detection is on) without waking anything; anything else asks for
the app (one restore, however many connections ask), dials the original
destination from inside the pod every millisecond until the app accepts, and
proxies the connection for its whole life, half-closes included.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

from nri_zeropod import netns
from nri_zeropod.agent import probes
from nri_zeropod.bpf import Steering

log = logging.getLogger("nri_zeropod.agent.activator")

SNIFF_TIMEOUT = 0.2  # a kubelet probe sends its request (or closes) at once
DIAL_PERIOD = 0.001
DIAL_TIMEOUT = 30.0  # after the restore returned: the app listens already, this is a safety net
BUF = 65536

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def plain(addr: str) -> Address:
    """An address as the activator's dual-stack socket reports it, IPv4-mapped ones unmapped."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def sniff(conn: socket.socket, *, timeout: float) -> tuple[probes.Kind, bytes]:
    """Read what a node-sourced connection sends first and say what it is."""
    loop = asyncio.get_running_loop()
    data, eof = b"", False
    deadline = loop.time() + timeout
    while True:
        kind = probes.classify(data, eof=eof)
        if kind is not probes.Kind.MORE:
            return kind, data
        left = deadline - loop.time()
        if left <= 0:
            return probes.Kind.TRAFFIC, data  # a silent client: maybe the server speaks first
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(conn, probes.MAX_HEAD), left)
        except asyncio.TimeoutError:
            return probes.Kind.TRAFFIC, data
        except OSError:
            return probes.Kind.TCP_PROBE, data
        if chunk:
            data += chunk
        else:
            eof = True


async def dial(*, netns_path: Path, addr: Address, port: int, steering: Steering, timeout: float) -> socket.socket:
    """Connect to ``addr:port`` from inside the pod, retrying every millisecond while refused.

    The source is bound first (to ``addr`` itself, a local address of the
    pod) so that its port can be put in the bypass map: the steering program
    must let this connection reach the app.
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    deadline = loop.time() + timeout
    while True:
        s = netns.socket_in_netns(netns_path, family=family, type=socket.SOCK_STREAM)
        s.setblocking(False)
        bypass = None
        try:
            s.bind((str(addr), 0))
            bypass = s.getsockname()[1]
            steering.add_bypass(addr, bypass)
            await loop.sock_connect(s, (str(addr), port))
            return s
        except OSError as e:
            s.close()
            if e.errno not in (errno.ECONNREFUSED, errno.ECONNRESET) or loop.time() > deadline:
                raise
        finally:
            if bypass is not None:
                steering.remove_bypass(addr, bypass)
        await asyncio.sleep(DIAL_PERIOD)


async def _pipe(src: socket.socket, dst: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await loop.sock_recv(src, BUF):
            await loop.sock_sendall(dst, data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)  # pass the half-close on
    except OSError:
        pass


async def proxy(client: socket.socket, upstream: socket.socket, first: bytes) -> None:
    """Copy both ways until both sides are done; no time limit."""
    loop = asyncio.get_running_loop()
    try:
        if first:
            await loop.sock_sendall(upstream, first)
        await asyncio.gather(_pipe(client, upstream), _pipe(upstream, client))
    except OSError:
        pass
    finally:
        client.close()
        upstream.close()


class Activator:
    """Accepts and serves the connections steered to one container."""

    def __init__(
        self,
        *,
        fields: dict[str, str],
        sock: socket.socket,
        netns_path: Path,
        steering: Steering,
        node_addrs: Callable[[], Collection[Address]],
        probe_detection: bool,
        wake: Callable[[], Awaitable[None]],
        woken: Callable[[float], None],
    ) -> None:
        self.fields = fields
        self.sock = sock
        self.netns_path = netns_path
        self.steering = steering
        self.node_addrs = node_addrs
        self.probe_detection = probe_detection
        self.wake = wake
        self.woken = woken
        self.own_port = sock.getsockname()[1]
        self.accepted = 0
        self.probes_answered = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        while not self._closed:
            try:
                conn, _peer = await loop.sock_accept(self.sock)
            except OSError as e:
                if self._closed:
                    return
                log.warning("activator accept failed", extra={**self.fields, "error": str(e)})
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._serve(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        """Stop accepting (the keeper keeps the socket) and drop the connections being served."""
        self._closed = True
        for task in list(self.tasks):
            task.cancel()
        self.sock.close()

    async def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            local, peer = conn.getsockname(), conn.getpeername()
        except OSError:
            conn.close()
            return
        if local[1] == self.own_port:
            conn.close()  # someone dialled the activator's own port: nothing to wake for
            return
        self.accepted += 1
        accepted_at = time.monotonic()
        first = b""
        if self.probe_detection and plain(peer[0]) in self.node_addrs():
            kind, first = await sniff(conn, timeout=SNIFF_TIMEOUT)
            if kind in (probes.Kind.TCP_PROBE, probes.Kind.HTTP_PROBE):
                self.probes_answered += 1
                if kind is probes.Kind.HTTP_PROBE:
                    try:
                        await asyncio.get_running_loop().sock_sendall(conn, probes.PROBE_RESPONSE)
                    except OSError:
                        pass
                conn.close()
                return
        try:
            await self.wake()
            upstream = await dial(
                netns_path=self.netns_path, addr=plain(local[0]), port=local[1],
                steering=self.steering, timeout=DIAL_TIMEOUT,
            )
        except Exception as e:  # noqa: BLE001 - the client gets a closed connection, the agent goes on
            log.error("cannot hand a connection to the app", extra={**self.fields, "error": str(e)})
            conn.close()
            return
        self.woken(time.monotonic() - accepted_at)
        await proxy(conn, upstream, first)
