"""Test NRI plugins for the real containerd, and a thread to run one beside a synchronous test.

The e2e tests drive the node through the synchronous CRI client, so a plugin
runs on its own asyncio loop in a :class:`PluginThread`; the test talks to it
only through thread-safe calls (``wait_for``, ``call``, ``stop``).

:class:`Recorder` implements every handler and records the events about the
pods it watches (by name prefix), so a test never looks at another test's
pods or at the pods nri-zeropod's own agent handles on the same node.

:class:`SilentPlugin` is a raw-socket plugin built on the sans-I/O
:class:`NriConnection`: it registers, answers Configure (subscribing to
CreateContainer only) and Synchronize, and then never answers CreateContainer.
It stands for a plugin that hangs for reasons outside its own control, which
the library's handler deadline cannot cover.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nri_zeropod.nri import Container, ContainerAdjustment, Event, LinuxResources, Plugin, PodSandbox, ProtocolError, api
from nri_zeropod.nri.mux import ChannelEvent, ConnectionClosed, NriConnection, Side
from nri_zeropod.nri.ttrpc import NeedData, Request, Response

T = TypeVar("T")

Adjust = Callable[[PodSandbox, Container], Coroutine[Any, Any, ContainerAdjustment | None]]


@dataclass(frozen=True)
class Seen:
    """One event as the plugin received it; ``at`` is time.monotonic() on arrival."""

    event: str  # the handler's name: "run_pod_sandbox", "create_container", ...
    pod: PodSandbox
    container: Container | None
    at: float


def _copy(message: Any) -> Any:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


class Recorder(Plugin):
    """Implements every event; records those about pods whose name starts with ``watch``.

    ``adjust`` (an async callable) answers CreateContainer for watched pods.
    """

    def __init__(self, *, name: str, idx: str, watch: str, adjust: Adjust | None = None) -> None:
        super().__init__(name=name, idx=idx)
        self.watch = watch
        self.adjust = adjust
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self.synced_pods: list[PodSandbox] = []
        self.synced_containers: list[Container] = []

    def _watched(self, pod: PodSandbox) -> bool:
        return pod.name.startswith(self.watch)

    def _record(self, event: str, pod: PodSandbox, container: Container | None = None) -> None:
        if self._watched(pod):
            seen = Seen(event, _copy(pod), None if container is None else _copy(container), time.monotonic())
            with self._lock:
                self._seen.append(seen)

    def seen(self, pod_name: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self._seen if pod_name is None or s.pod.name == pod_name]

    def event_names(self, pod_name: str) -> list[str]:
        return [s.event for s in self.seen(pod_name)]

    async def synchronize(self, pods: Sequence[PodSandbox], containers: Sequence[Container]) -> None:
        with self._lock:
            self.synced_pods = [_copy(p) for p in pods]
            self.synced_containers = [_copy(c) for c in containers]
        return None

    async def run_pod_sandbox(self, pod: PodSandbox) -> None:
        self._record("run_pod_sandbox", pod)

    async def stop_pod_sandbox(self, pod: PodSandbox) -> None:
        self._record("stop_pod_sandbox", pod)

    async def remove_pod_sandbox(self, pod: PodSandbox) -> None:
        self._record("remove_pod_sandbox", pod)

    async def create_container(self, pod: PodSandbox, container: Container) -> ContainerAdjustment | None:
        self._record("create_container", pod, container)
        if self.adjust is not None and self._watched(pod):
            return await self.adjust(pod, container)
        return None

    async def post_create_container(self, pod: PodSandbox, container: Container) -> None:
        self._record("post_create_container", pod, container)

    async def start_container(self, pod: PodSandbox, container: Container) -> None:
        self._record("start_container", pod, container)

    async def post_start_container(self, pod: PodSandbox, container: Container) -> None:
        self._record("post_start_container", pod, container)

    async def update_container(self, pod: PodSandbox, container: Container, *, resources: LinuxResources) -> None:
        self._record("update_container", pod, container)

    async def post_update_container(self, pod: PodSandbox, container: Container) -> None:
        self._record("post_update_container", pod, container)

    async def stop_container(self, pod: PodSandbox, container: Container) -> None:
        self._record("stop_container", pod, container)

    async def remove_container(self, pod: PodSandbox, container: Container) -> None:
        self._record("remove_container", pod, container)


class Noop(Plugin):
    """Subscribes to every pod and container event and changes nothing (the benchmark's plugin)."""

    async def run_pod_sandbox(self, pod: PodSandbox) -> None:
        pass

    async def stop_pod_sandbox(self, pod: PodSandbox) -> None:
        pass

    async def remove_pod_sandbox(self, pod: PodSandbox) -> None:
        pass

    async def create_container(self, pod: PodSandbox, container: Container) -> None:
        return None

    async def post_create_container(self, pod: PodSandbox, container: Container) -> None:
        pass

    async def start_container(self, pod: PodSandbox, container: Container) -> None:
        pass

    async def post_start_container(self, pod: PodSandbox, container: Container) -> None:
        pass

    async def stop_container(self, pod: PodSandbox, container: Container) -> None:
        return None

    async def remove_container(self, pod: PodSandbox, container: Container) -> None:
        pass


class PluginThread:
    """Runs ``plugin.run(socket_path)`` on an asyncio loop in a daemon thread."""

    def __init__(self, plugin: Plugin, socket_path: str | os.PathLike[str]) -> None:
        self.plugin = plugin
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"nri-{plugin.name}", daemon=True)
        self._thread.start()
        self.running: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
            plugin.run(os.fspath(socket_path)), self._loop
        )
        self._stopped = False

    def __enter__(self) -> PluginThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return not self.running.done()

    def call(self, coro: Coroutine[Any, Any, T], *, timeout: float = 10.0) -> T:
        """Run ``coro`` on the plugin's loop (from outside any handler) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def wait_for(self, flag: asyncio.Event, *, timeout: float = 10.0, what: str = "the plugin") -> None:
        """Block until ``flag`` is set; fail at once if the plugin's run() ends first."""
        waiter: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(flag.wait(), timeout), self._loop
        )
        pending: list[concurrent.futures.Future[Any]] = [waiter, self.running]
        concurrent.futures.wait(pending, timeout=timeout + 1, return_when=concurrent.futures.FIRST_COMPLETED)
        if waiter.done():
            waiter.result()
            return
        waiter.cancel()
        ended = self.running.exception() if self.running.done() else None
        raise AssertionError(f"{what} did not get there within {timeout:g}s (run() ended: {ended!r})")

    def ready(self, *, timeout: float = 10.0) -> None:
        """Registered, configured and synchronized."""
        self.wait_for(self.plugin.synchronized, timeout=timeout, what=f"plugin {self.plugin.name} synchronizing")

    def stop(self, *, timeout: float = 10.0) -> BaseException | None:
        """Disconnect and end the thread; returns how run() ended (None: stopped by us)."""
        if self._stopped:
            return self.running.exception() if self.running.done() else None
        self._stopped = True
        if not self.running.done():
            self._loop.call_soon_threadsafe(self.plugin.stop)
        try:
            concurrent.futures.wait([self.running], timeout=timeout)
            outcome = self.running.exception() if self.running.done() else TimeoutError("run() did not end")
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()
        return outcome


@dataclass
class SilentPlugin:
    """A raw NRI plugin that never answers CreateContainer (see the module docstring)."""

    socket_path: Path
    name: str = "e2e-silent"
    idx: str = "30"
    configure: api.ConfigureRequest | None = None
    registered: threading.Event = field(default_factory=threading.Event)
    synchronized: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    create_at: float = 0.0  # when the unanswered CreateContainer arrived
    closed_at: float = 0.0  # when the runtime closed the connection
    created: list[str] = field(default_factory=list)  # names of containers it was asked about

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(os.fspath(self.socket_path))
        self._conn = NriConnection(Side.PLUGIN)
        self._register_sid = 0
        self._thread = threading.Thread(target=self._serve, name=f"nri-{self.name}", daemon=True)
        self._thread.start()

    def _send(self, cid: int, message: Request | Response) -> None:
        self._sock.sendall(self._conn.send(cid, message))

    def _serve(self) -> None:
        register = self._conn.start_request(
            service=api.RUNTIME_SERVICE, method="RegisterPlugin", timeout_nano=5_000_000_000,
            payload=api.RegisterPluginRequest(plugin_name=self.name, plugin_idx=self.idx).SerializeToString(),
        )
        self._register_sid = register.stream_id
        self._send(self._conn.client_conn, register)
        try:
            while True:
                data = self._sock.recv(65536)
                self._conn.receive_data(data)
                if not self._drain():
                    break
        except (OSError, ProtocolError):
            pass  # either way the runtime is gone for us
        self.closed_at = time.monotonic()
        self.closed.set()

    def _drain(self) -> bool:
        while True:
            event = self._conn.next_event()
            if isinstance(event, NeedData):
                return True
            if isinstance(event, ConnectionClosed):
                return False
            if isinstance(event, ChannelEvent):
                self._handle(event.conn_id, event.event)

    def _handle(self, cid: int, event: object) -> None:
        if isinstance(event, Response) and event.stream_id == self._register_sid:
            self.registered.set()
        elif isinstance(event, Request) and event.method == "Configure":
            self.configure = api.ConfigureRequest.FromString(event.payload)
            mask = api.ConfigureResponse(events=Event.CREATE_CONTAINER.bit).SerializeToString()
            self._send(cid, Response(event.stream_id, payload=mask))
        elif isinstance(event, Request) and event.method == "Synchronize":
            more = api.SynchronizeRequest.FromString(event.payload).more
            self._send(cid, Response(event.stream_id, payload=api.SynchronizeResponse(more=more).SerializeToString()))
            if not more:
                self.synchronized.set()
        elif isinstance(event, Request) and event.method == "CreateContainer":
            self.created.append(api.CreateContainerRequest.FromString(event.payload).container.name)
            self.create_at = self.create_at or time.monotonic()  # and no reply, ever
        elif isinstance(event, Request):
            self._send(cid, Response(event.stream_id))

    def ready(self, *, timeout: float = 10.0) -> None:
        if not self.synchronized.wait(timeout):
            raise AssertionError(f"raw plugin {self.name} did not synchronize within {timeout:g}s")

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(5)
        self._sock.close()
