"""The NRI plugin base class: subclass it, override the events you care about, ``await run()``.

The event subscription is derived from the handlers a subclass overrides, so
a plugin never subscribes to events it would only answer with "no change".
``run()`` connects, registers, serves requests until the connection ends and
then raises :class:`ConnectionLost`; the caller exits non-zero and lets its
supervisor restart it (the runtime sends a full Synchronize on reconnect).

Handlers run with a deadline under the runtime's request timeout; see
:mod:`.dispatch` for what each outcome becomes on the wire.

Example::

    class Logger(Plugin):
        async def create_container(self, pod, container):
            log.info("creating %s/%s", pod.name, container.name)
            return ContainerAdjustment(annotations={"example.com/seen": "yes"})

    await Logger(name="logger", idx="50").run("/var/run/nri/nri.sock")
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Iterable, Sequence

from . import api
from .api import Container, ContainerAdjustment, ContainerUpdate, Event, LinuxResources, PodSandbox
from .dispatch import Dispatcher
from .errors import ConnectionLost, RegistrationError, RemoteProtocolError, RpcError, UpdateInHandlerError
from .handlers import current_scope
from .runtime import DEFAULT_REGISTRATION_TIMEOUT, RuntimeInfo
from .transport import Transport, open_trunk

_NAME = re.compile(r"[a-zA-Z0-9_.+-]+", re.ASCII)
_IDX = re.compile(r"[0-9]{2}", re.ASCII)


def validate_identity(name: str, idx: str) -> None:
    """The runtime's rules (idx: two digits) and NRI >= 0.12's stricter name rule."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"invalid plugin name {name!r}: must match [a-zA-Z0-9_.+-]+")
    if not _IDX.fullmatch(idx):
        raise ValueError(f"invalid plugin index {idx!r}: must be exactly two digits, 00-99")


class Plugin:
    """Base class of an NRI plugin. All handlers are optional ``async def`` methods.

    Attributes set while running: ``runtime`` (a :class:`RuntimeInfo`, after
    Configure), and the events ``registered``, ``configured`` and
    ``synchronized`` (set once each stage is done, cleared by a new ``run()``).
    """

    def __init__(
        self, *, name: str, idx: str, events: Iterable[Event] | None = None, logger: logging.Logger | None = None
    ) -> None:
        validate_identity(name, idx)
        self.name = name
        self.idx = idx
        self.log = logger or logging.getLogger(f"nri_zeropod.nri.plugin.{name}")
        self.event_mask = self._derive_mask(events)
        self.runtime = RuntimeInfo()
        self.registered = asyncio.Event()
        self.configured = asyncio.Event()
        self.synchronized = asyncio.Event()
        self._transport: Transport | None = None

    def _derive_mask(self, events: Iterable[Event] | None) -> int:
        implemented = {
            event for event, name in api.HANDLER_NAMES.items() if getattr(type(self), name) is not getattr(Plugin, name)
        }
        wanted = implemented if events is None else set(events)
        missing = wanted - implemented
        if missing:
            raise ValueError(f"plugin {self.name} has no handler for {', '.join(sorted(e.name for e in missing))}")
        if not wanted:
            # A mask of 0 would subscribe to every event, the opposite of what was meant.
            raise ValueError(f"plugin {self.name} implements no event handler")
        return api.event_mask(wanted)

    @property
    def events(self) -> frozenset[Event]:
        return frozenset(api.events_in_mask(self.event_mask))

    # -- running -------------------------------------------------------------

    async def run(self, socket_path: str | os.PathLike[str] | None = None) -> None:
        """Connect, register and serve until the connection ends.

        ``socket_path`` defaults to ``$NRI_PLUGIN_SOCKET`` (an inherited fd) if
        set, else /var/run/nri/nri.sock. Returns only after :meth:`stop`;
        raises :class:`ConnectionLost` when the runtime goes away or cannot be
        reached, :class:`RegistrationError` when it refuses the plugin.
        """
        if self._transport is not None:
            raise RuntimeError(f"plugin {self.name} is already running")
        for flag in (self.registered, self.configured, self.synchronized):
            flag.clear()
        self.runtime = RuntimeInfo()
        try:
            reader, writer = await open_trunk(socket_path)
        except ConnectionLost as e:
            self.log.error("plugin %s-%s: %s", self.idx, self.name, e)
            raise
        transport = Transport(reader, writer, serve=Dispatcher(self).serve)
        self._transport = transport
        reading = asyncio.create_task(transport.run(), name=f"nri {self.idx}-{self.name} reader")
        try:
            await self._register(transport)
            self.registered.set()
            self.log.info("registered as %s-%s", self.idx, self.name)
            await reading
        except ConnectionLost as e:
            self.log.error("plugin %s-%s: %s", self.idx, self.name, e)
            raise
        finally:
            self._transport = None
            if not reading.done():
                transport.close()
            await asyncio.gather(reading, return_exceptions=True)  # retrieve its error: run() already reports it

    async def _register(self, transport: Transport) -> None:
        request = api.RegisterPluginRequest(plugin_name=self.name, plugin_idx=self.idx)
        try:
            await transport.call(
                service=api.RUNTIME_SERVICE, method="RegisterPlugin",
                payload=request.SerializeToString(), timeout=DEFAULT_REGISTRATION_TIMEOUT,
            )
        except RemoteProtocolError as e:
            raise ConnectionLost(f"bad RegisterPlugin reply: {e}") from e
        except RpcError as e:
            # The runtime keeps the socket open after refusing; we close it.
            raise RegistrationError(method=e.method, code=e.code, message=e.status_message) from e

    def stop(self) -> None:
        """Close the connection on purpose: ``run()`` then returns normally."""
        if self._transport is not None:
            self._transport.close()

    async def update_containers(
        self,
        updates: Iterable[ContainerUpdate],
        evictions: Iterable[api.ContainerEviction] = (),
        *,
        timeout: float | None = None,
    ) -> list[ContainerUpdate]:
        """Ask the runtime for unsolicited updates; returns the updates it reports as failed.

        Not from inside a handler: the runtime holds its lock until the handler
        answers, so that raises :class:`UpdateInHandlerError`. A task started by
        a handler may call it; it waits until the handler has replied. Raises
        :class:`RpcError` when the runtime answers an error (containerd does so
        when any update fails, and the ``failed`` list is then lost).
        """
        scope = current_scope.get()
        if scope is not None and not scope.replied.is_set():
            if asyncio.current_task() is scope.task:
                raise UpdateInHandlerError(
                    f"update_containers() awaited inside the {scope.what} handler would deadlock: "
                    "return the updates in the handler's response, or call it from a task the handler does not await"
                )
            scope.waiting_tasks += 1
            try:
                await scope.replied.wait()
            finally:
                scope.waiting_tasks -= 1
        transport = self._transport
        if transport is None:
            raise ConnectionLost(f"plugin {self.name} is not connected")
        request = api.UpdateContainersRequest(update=list(updates), evict=list(evictions))
        wait = timeout if timeout is not None else 2 * self.runtime.request_timeout + 1.0  # it queues behind events
        payload = await transport.call(
            service=api.RUNTIME_SERVICE, method="UpdateContainers", payload=request.SerializeToString(), timeout=wait
        )
        response = api.UpdateContainersResponse()
        try:
            response.ParseFromString(payload)
        except Exception as e:  # noqa: BLE001 - protobuf backends differ in what they raise
            raise RemoteProtocolError(f"malformed UpdateContainersResponse: {e}") from e
        return list(response.failed)

    # -- hooks and handlers: override what you need ----------------------------

    async def configure(self, runtime: RuntimeInfo) -> None:
        """Called once Configure has arrived (``self.runtime`` is set). Raise Reject to refuse the runtime."""

    async def synchronize(
        self, pods: Sequence[PodSandbox], containers: Sequence[Container]
    ) -> Sequence[ContainerUpdate] | None:
        """The runtime's pods and containers (exited ones excluded), once, even when split. May return updates."""
        return None

    async def run_pod_sandbox(self, pod: PodSandbox) -> None:
        """May raise Reject to fail RunPodSandbox."""

    async def stop_pod_sandbox(self, pod: PodSandbox) -> None:
        pass

    async def remove_pod_sandbox(self, pod: PodSandbox) -> None:
        pass

    async def create_container(
        self, pod: PodSandbox, container: Container
    ) -> ContainerAdjustment | api.CreateContainerResponse | None:
        """Return an adjustment (or a full response, to also update other containers). May raise Reject."""
        return None

    async def post_create_container(self, pod: PodSandbox, container: Container) -> None:
        pass

    async def start_container(self, pod: PodSandbox, container: Container) -> None:
        """May raise Reject to fail StartContainer."""

    async def post_start_container(self, pod: PodSandbox, container: Container) -> None:
        pass

    async def update_container(
        self, pod: PodSandbox, container: Container, *, resources: LinuxResources
    ) -> Sequence[ContainerUpdate] | api.UpdateContainerResponse | None:
        """May return updates (one for this container replaces the kubelet's resources). May raise Reject."""
        return None

    async def post_update_container(self, pod: PodSandbox, container: Container) -> None:
        pass

    async def stop_container(
        self, pod: PodSandbox, container: Container
    ) -> Sequence[ContainerUpdate] | api.StopContainerResponse | None:
        """May return updates to other containers."""
        return None

    async def remove_container(self, pod: PodSandbox, container: Container) -> None:
        pass
