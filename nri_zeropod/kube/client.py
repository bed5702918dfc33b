"""The Kubernetes API calls the agent makes, over :mod:`.http`.

Every non-2xx answer becomes the error class of its status code
(:func:`.errors.api_error`), and so does an ``ERROR`` event inside a watch
stream (the API server reports an expired resourceVersion either way: a 410
answer, or a 200 answer whose first event is an ERROR carrying a 410 Status).

Pod resizes go to the ``pods/{name}/resize`` subresource (Kubernetes 1.33+;
in-place resize needs it from 1.32 on). A cluster without it answers 404 with
no object name in the Status; then the same patch is sent to the pod itself
(older clusters with the InPlacePodVerticalScaling feature gate), and the
client remembers not to try the subresource again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .config import KubeConfig
from .errors import NotFound, TransportError, api_error
from .http import HttpClient, Response
from .settings import HttpSettings

log = logging.getLogger("nri_zeropod.kube")

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


@dataclass(frozen=True)
class WatchEvent:
    """One line of a watch stream: ADDED, MODIFIED, DELETED or BOOKMARK, and the object."""

    type: str
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion") or "")


def _seg(value: str) -> str:
    return quote(value, safe="")


def pod_path(namespace: str, name: str, subresource: str | None = None) -> str:
    path = f"/api/v1/namespaces/{_seg(namespace)}/pods/{_seg(name)}"
    return f"{path}/{subresource}" if subresource else path


class KubeClient:
    """An API client for one server; safe to share between tasks of one event loop."""

    def __init__(self, config: KubeConfig, *, settings: HttpSettings | None = None) -> None:
        self.config = config
        self.http = HttpClient(config, settings)
        # None: not tried yet; False: this server has no pods/resize (older than 1.32).
        self.resize_subresource: bool | None = None

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- generic verbs ---------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float | None = None,
    ) -> Any:
        """One request; the decoded JSON answer, or the error class of the status code."""
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        response = await self.http.request(method, path, query=query, body=data, content_type=content_type, timeout=timeout)
        return _decode(response, f"{method} {path}")

    async def watch(
        self,
        path: str,
        *,
        resource_version: str | None,
        timeout_seconds: int | None = None,
        idle_timeout: float,
    ) -> AsyncIterator[WatchEvent]:
        """The events of a watch on the collection at ``path``, until the server ends it.

        An ERROR event raises its error (410 → :class:`Gone`).
        """
        query = {
            "watch": "true",
            "resourceVersion": resource_version or None,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        async with aclosing(self.http.lines(path, query=query, idle_timeout=idle_timeout)) as stream:
            async for item in stream:
                if isinstance(item, Response):
                    if not 200 <= item.status < 300:
                        raise api_error(item.status, item.body, item.headers)
                    continue
                yield _event(item, path)

    # -- namespaces ------------------------------------------------------------

    async def list_namespaces(self) -> dict[str, Any]:
        return dict(await self.call("GET", "/api/v1/namespaces"))

    def watch_namespaces(self, *, resource_version: str | None, timeout_seconds: int | None, idle_timeout: float) -> AsyncIterator[WatchEvent]:
        return self.watch("/api/v1/namespaces", resource_version=resource_version, timeout_seconds=timeout_seconds, idle_timeout=idle_timeout)

    # -- pods ------------------------------------------------------------------

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(await self.call("GET", pod_path(namespace, name)))

    async def patch_pod(
        self, namespace: str, name: str, patch: Mapping[str, Any], *, strategic: bool = False, subresource: str | None = None
    ) -> dict[str, Any]:
        """PATCH the pod (or a subresource) with a JSON merge patch, or a strategic merge patch."""
        content_type = STRATEGIC_MERGE_PATCH if strategic else MERGE_PATCH
        return dict(await self.call("PATCH", pod_path(namespace, name, subresource), body=patch, content_type=content_type))

    async def patch_pod_metadata(
        self,
        namespace: str,
        name: str,
        *,
        labels: Mapping[str, str | None] | None = None,
        annotations: Mapping[str, str | None] | None = None,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Set (or, with None, remove) labels and annotations; other keys are left alone (RFC 7386)."""
        metadata: dict[str, Any] = {}
        if labels:
            metadata["labels"] = dict(labels)
        if annotations:
            metadata["annotations"] = dict(annotations)
        if resource_version:
            metadata["resourceVersion"] = resource_version  # fail with 409 if the pod changed since
        return await self.patch_pod(namespace, name, {"metadata": metadata})

    async def resize_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a strategic merge patch of container resources through pods/resize, or the pod on old clusters."""
        if self.resize_subresource is not False:
            try:
                pod = await self.patch_pod(namespace, name, patch, strategic=True, subresource="resize")
                self.resize_subresource = True
                return pod
            except NotFound as e:
                if e.details.get("name") or self.resize_subresource:
                    raise  # the pod itself is gone
        pod = await self.patch_pod(namespace, name, patch, strategic=True)
        if self.resize_subresource is None:
            log.info("the API server has no pods/resize subresource; resizing through pod patches")
            self.resize_subresource = False
        return pod

    # -- events ----------------------------------------------------------------

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        return dict(await self.call("POST", f"/api/v1/namespaces/{_seg(namespace)}/events", body=event))


def _decode(response: Response, what: str) -> Any:
    if not 200 <= response.status < 300:
        raise api_error(response.status, response.body, response.headers)
    try:
        return response.json()
    except ValueError as e:
        raise TransportError(f"{what}: answer is not JSON: {response.body[:80]!r}") from e


def _event(line: bytes, path: str) -> WatchEvent:
    try:
        raw = json.loads(line)
        kind, obj = raw["type"], raw["object"]
    except (ValueError, KeyError, TypeError) as e:
        raise TransportError(f"watch {path}: malformed event {line[:80]!r}") from e
    if kind == "ERROR":
        raise api_error(int(obj.get("code") or 500), obj)
    return WatchEvent(str(kind), dict(obj))
