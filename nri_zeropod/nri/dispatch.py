"""Serving the Plugin service: one ttrpc request in, one response out.

:class:`Dispatcher` is the single place where requests become handler calls
and handler outcomes become wire statuses:

- unknown service or method: Unimplemented (12), so newer runtimes that try
  per-event RPCs fall back to StateChange;
- undecodable payload: InvalidArgument (3), as Go's ttrpc does;
- :class:`Reject` from a handler of RunPodSandbox, CreateContainer,
  StartContainer or UpdateContainer: its code and reason (the runtime fails
  the operation); from any other handler: logged, OK;
- any other exception, or an overrun of the deadline: logged, OK with an
  empty result, because the runtime would go on without us anyway (fail open).

The handler deadline is the runtime's request timeout (from Configure, or the
request's own ``timeout_nano`` if shorter) minus a margin for the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from . import api
from .api import Event, PLUGIN_SERVICE
from .errors import Code, Reject
from .frames import TTRPC_MAX_DATA
from .handlers import HandlerScope, describe, invoke
from .runtime import RuntimeInfo
from .ttrpc import Request, Response

if TYPE_CHECKING:
    from .plugin import Plugin

# Margin kept between a handler's deadline and the runtime's: at least 100 ms
# or a fifth of the timeout, for encoding, writing and the runtime's scheduling.
MARGIN_FRACTION = 0.2
MIN_MARGIN = 0.1
MIN_BUDGET = 0.01
_ENVELOPE = 16  # Response envelope bytes around the payload

Route = Callable[[Request, HandlerScope], Awaitable[Response]]

_OWN_RPC = frozenset({Event.CREATE_CONTAINER, Event.UPDATE_CONTAINER, Event.STOP_CONTAINER})


class Dispatcher:
    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin
        self.log = plugin.log
        self._sync_pods: list[api.PodSandbox] = []
        self._sync_containers: list[api.Container] = []
        self._routes: dict[str, Route] = {
            "Configure": self._configure,
            "Synchronize": self._synchronize,
            "Shutdown": self._shutdown,
            "CreateContainer": self._create_container,
            "UpdateContainer": self._update_container,
            "StopContainer": self._stop_container,
            "StateChange": self._state_change,
        }

    async def serve(self, request: Request) -> Response:
        if request.service != PLUGIN_SERVICE:
            return self._refuse(request, code=Code.UNIMPLEMENTED, message=f"service {request.service}")
        route = self._routes.get(request.method)
        if route is None:
            return self._refuse(request, code=Code.UNIMPLEMENTED, message=f"method {request.method}")
        scope = HandlerScope(request.method, self.budget(request))
        try:
            return await route(request, scope)
        except _BadPayload as e:
            self.log.warning("conn 1 stream %d: %s; answering INVALID_ARGUMENT", request.stream_id, e)
            return Response(request.stream_id, code=Code.INVALID_ARGUMENT, message=str(e))
        finally:
            scope.replied.set()  # the transport writes the response right after we return

    def _refuse(self, request: Request, *, code: Code, message: str) -> Response:
        self.log.info("conn 1 stream %d: %s %s: answering %s", request.stream_id, request.service, request.method, code.name)
        return Response(request.stream_id, code=code, message=message)

    def _decode(self, request: Request, cls: type[Message]) -> Any:
        msg = cls()
        try:
            msg.ParseFromString(request.payload)
        except Exception as e:  # noqa: BLE001 - protobuf backends differ in what they raise
            raise _BadPayload(f"malformed {cls.__name__}: {e}") from e
        return msg

    def _ok(self, request: Request, message: Message) -> Response:
        payload = message.SerializeToString()
        if len(payload) > TTRPC_MAX_DATA - _ENVELOPE:
            # Too big to send: the runtime would drop us; answer "no change" instead.
            self.log.error("stream %d: %s reply of %d bytes is too big; sending an empty one",
                           request.stream_id, request.method, len(payload))
            payload = b""
        return Response(request.stream_id, code=Code.OK, message="", payload=payload)

    def budget(self, request: Request) -> float:
        timeout = self.plugin.runtime.request_timeout
        if request.timeout_nano > 0:  # <= 0: already late (split sync); use our own
            timeout = min(timeout, request.timeout_nano / 1e9)
        return max(timeout - max(MIN_MARGIN, timeout * MARGIN_FRACTION), MIN_BUDGET)

    async def _run(self, scope: HandlerScope, call: Callable[[], Awaitable[Any]]) -> Any:
        return await invoke(call, scope=scope, log=self.log)

    def _rejected(self, request: Request, *, event: Event, subject: str, reject: Reject) -> Response:
        if event in api.BLOCKING_EVENTS:
            self.log.info("%s for %s rejected: %s", event.name, subject, reject.reason)
            return Response(request.stream_id, code=reject.code, message=reject.reason)
        self.log.warning("%s for %s: Reject has no effect on this event; answering OK (%s)",
                         event.name, subject, reject.reason)
        return Response(request.stream_id)

    # -- routes ---------------------------------------------------------------

    async def _configure(self, request: Request, scope: HandlerScope) -> Response:
        req = self._decode(request, api.ConfigureRequest)
        runtime = RuntimeInfo.from_configure(
            runtime_name=req.runtime_name, runtime_version=req.runtime_version, nri_version=req.nri_version,
            request_ms=req.request_timeout, registration_ms=req.registration_timeout, config=req.config,
        )
        plugin = self.plugin
        plugin.runtime = runtime
        mask = plugin.event_mask & runtime.valid_events
        if mask != plugin.event_mask:
            dropped = api.events_in_mask(plugin.event_mask & ~mask)
            self.log.warning("runtime %s does not offer %s; not subscribing to them",
                             runtime.describe(), ", ".join(e.name for e in dropped))
        self.log.info("configured by %s; subscribing to events 0x%x", runtime.describe(), mask)
        try:
            scope.what, scope.subject = "configure", runtime.describe()
            await self._run(scope, lambda: plugin.configure(runtime))
        except Reject as reject:  # refusing this runtime: it closes the connection
            self.log.error("configure rejected %s: %s", runtime.describe(), reject.reason)
            return Response(request.stream_id, code=reject.code, message=reject.reason)
        plugin.configured.set()
        return self._ok(request, api.ConfigureResponse(events=mask))

    async def _synchronize(self, request: Request, scope: HandlerScope) -> Response:
        req = self._decode(request, api.SynchronizeRequest)
        self._sync_pods.extend(req.pods)
        self._sync_containers.extend(req.containers)
        if req.more:
            # The runtime drops a plugin that does not echo `more` on a split sync.
            return self._ok(request, api.SynchronizeResponse(more=True))
        pods, containers = self._sync_pods, self._sync_containers
        self._sync_pods, self._sync_containers = [], []
        scope.what, scope.subject = "synchronize", f"{len(pods)} pods and {len(containers)} containers"
        try:
            updates = await self._run(scope, lambda: self.plugin.synchronize(pods, containers))
        except Reject as reject:  # an error here only gets the plugin dropped
            self.log.warning("synchronize: Reject has no effect; answering OK (%s)", reject.reason)
            updates = None
        self.plugin.synchronized.set()
        response = api.SynchronizeResponse(update=_updates(updates, log=self.log, subject=scope.subject))
        return self._ok(request, response)

    async def _shutdown(self, request: Request, scope: HandlerScope) -> Response:
        self.log.info("the runtime announced its shutdown")
        return self._ok(request, api.Empty())

    async def _create_container(self, request: Request, scope: HandlerScope) -> Response:
        req = self._decode(request, api.CreateContainerRequest)
        subject = scope.subject = describe(req.pod, req.container)
        scope.what = "create_container"
        try:
            result = await self._run(scope, lambda: self.plugin.create_container(req.pod, req.container))
        except Reject as reject:
            return self._rejected(request, event=Event.CREATE_CONTAINER, subject=subject, reject=reject)
        if result is None or isinstance(result, api.CreateContainerResponse):
            response = result or api.CreateContainerResponse()
        elif isinstance(result, api.ContainerAdjustment):
            response = api.CreateContainerResponse(adjust=result)
        else:
            self.log.error("create_container for %s returned %r; answering no adjustment", subject, type(result))
            response = api.CreateContainerResponse()
        if response.adjust.args and not self.plugin.runtime.supports_args_adjustment:
            self.log.warning("create_container for %s adjusts args, which %s ignores",
                             subject, self.plugin.runtime.describe())
        return self._ok(request, response)

    async def _update_container(self, request: Request, scope: HandlerScope) -> Response:
        req = self._decode(request, api.UpdateContainerRequest)
        subject = scope.subject = describe(req.pod, req.container)
        scope.what = "update_container"
        try:
            result = await self._run(
                scope, lambda: self.plugin.update_container(req.pod, req.container, resources=req.linux_resources)
            )
        except Reject as reject:
            return self._rejected(request, event=Event.UPDATE_CONTAINER, subject=subject, reject=reject)
        if isinstance(result, api.UpdateContainerResponse):
            return self._ok(request, result)
        return self._ok(request, api.UpdateContainerResponse(update=_updates(result, log=self.log, subject=subject)))

    async def _stop_container(self, request: Request, scope: HandlerScope) -> Response:
        req = self._decode(request, api.StopContainerRequest)
        subject = scope.subject = describe(req.pod, req.container)
        scope.what = "stop_container"
        try:
            result = await self._run(scope, lambda: self.plugin.stop_container(req.pod, req.container))
        except Reject as reject:
            return self._rejected(request, event=Event.STOP_CONTAINER, subject=subject, reject=reject)
        if isinstance(result, api.StopContainerResponse):
            return self._ok(request, result)
        return self._ok(request, api.StopContainerResponse(update=_updates(result, log=self.log, subject=subject)))

    async def _state_change(self, request: Request, scope: HandlerScope) -> Response:
        req = self._decode(request, api.StateChangeEvent)
        try:
            event = Event(req.event)
            name = api.HANDLER_NAMES[event]
        except (ValueError, KeyError):
            self.log.info("StateChange for event %d, which this library does not handle; answering OK", req.event)
            return Response(request.stream_id)
        if event in _OWN_RPC:
            # These events have RPCs of their own; a runtime never sends them as a StateChange.
            self.log.warning("conn 1 stream %d: StateChange for %s, which has its own RPC; answering OK",
                             request.stream_id, event.name)
            return Response(request.stream_id)
        handler = getattr(self.plugin, name)
        is_pod_event = event in (Event.RUN_POD_SANDBOX, Event.STOP_POD_SANDBOX, Event.REMOVE_POD_SANDBOX)
        subject = scope.subject = describe(req.pod, None if is_pod_event else req.container)
        scope.what = name

        def call() -> Awaitable[Any]:
            return handler(req.pod) if is_pod_event else handler(req.pod, req.container)  # type: ignore[no-any-return]

        try:
            await self._run(scope, call)
        except Reject as reject:
            return self._rejected(request, event=event, subject=subject, reject=reject)
        return Response(request.stream_id)


class _BadPayload(Exception):
    pass


def _updates(result: Any, *, log: logging.Logger, subject: str) -> list[api.ContainerUpdate]:
    """A handler's list of ContainerUpdate, or [] (logged) if it returned something else."""
    if result is None:
        return []
    try:
        updates = list(result)
    except TypeError:
        updates = [None]
    if all(isinstance(u, api.ContainerUpdate) for u in updates):
        return updates
    log.error("handler for %s returned %r instead of ContainerUpdates; ignoring it", subject, result)
    return []
