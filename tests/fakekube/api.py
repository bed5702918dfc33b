"""Routing and semantics of the fake API: what each verb on each path does.

Served paths (core/v1 only): namespaces (list, watch, get, create, update,
merge/strategic patch, delete), pods (the same, per namespace and across all
namespaces, plus ``pods/{name}/resize``), events (list, create). Everything
else is a 404 "the server could not find the requested resource", like a real
server without that route.

Semantics kept from the real server: resourceVersion bumps only on a real
change (a no-op patch returns the object unchanged); a ``resourceVersion`` in
a patch or update body is a precondition (409 Conflict when stale); PUT must
carry one (422); ``generateName`` gets five random characters; creating in a
missing namespace is 404; namespaces get the ``kubernetes.io/metadata.name``
label; empty label and annotation maps are not stored (omitempty); metadata
name/namespace/uid and the status of a pod cannot be changed through the main resource; a pod's containers can change
only their image through the pod, and their resources only through
``pods/{name}/resize`` (or through the pod when the fake plays a cluster
without the resize subresource, as Kubernetes 1.27-1.31 with the
InPlacePodVerticalScaling gate did); a resize may not change the QoS class.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from typing import Any

from . import status as st
from .patch import merge_patch, strategic_merge_patch
from .store import KINDS, NAMESPACED, Store, Watcher

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's generateName alphabet


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    @property
    def is_watch(self) -> bool:
        return self.query.get("watch") in ("1", "true", "True")


@dataclass
class Reply:
    code: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class WatchReply:
    watcher: Watcher
    initial: list[dict[str, Any]]  # events to send before live ones (replay / synthetic ADDED)
    timeout: float | None
    bookmarks: bool
    kind: str


class Api:
    def __init__(self, store: Store, *, resize_subresource: bool = True, gone_as_event: bool = True) -> None:
        self.store = store
        self.resize_subresource = resize_subresource
        self.gone_as_event = gone_as_event  # the watch cache answers 200 + ERROR event; etcd answers 410
        self.rng = random.Random()

    def handle(self, req: Request) -> Reply | WatchReply:
        parts = [p for p in req.path.split("/") if p]
        if parts[:2] != ["api", "v1"]:
            return Reply(404, st.no_such_path())
        rest = parts[2:]
        route = _route(rest)
        if route is None or (route[3] == "resize" and not self.resize_subresource):
            return Reply(404, st.no_such_path())
        resource, namespace, name, sub = route
        try:
            if name is None:
                return self._collection(req, resource, namespace)
            return self._object(req, resource, namespace or "", name, sub)
        except _Fail as f:
            return Reply(f.code, f.body)

    # -- collections -----------------------------------------------------------

    def _collection(self, req: Request, resource: str, namespace: str | None) -> Reply | WatchReply:
        if req.method == "GET":
            return self._watch(req, resource, namespace) if req.is_watch else self._list(req, resource, namespace)
        if req.method == "POST" and (namespace is not None or resource == "namespaces"):
            return self._create(req, resource, namespace or "")
        return Reply(405, st.status(405, "the server does not allow this method on the requested resource"))

    def _list(self, req: Request, resource: str, namespace: str | None) -> Reply:
        rv = req.query.get("resourceVersion")
        if rv and rv != "0" and int(rv) > self.store.rv:
            return Reply(504, st.status(504, f"Too large resource version: {rv}, current: {self.store.rv}",
                                        details={"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}))
        items = self.store.items(resource, namespace)
        for item in items:
            item.pop("kind", None)  # items of a typed list carry no kind/apiVersion
            item.pop("apiVersion", None)
        body = {"kind": KINDS[resource] + "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.store.rv)}, "items": items}
        return Reply(200, body)

    def _watch(self, req: Request, resource: str, namespace: str | None) -> Reply | WatchReply:
        watcher = Watcher(resource, namespace)
        rv = req.query.get("resourceVersion", "")
        if rv in ("", "0"):
            initial = [{"type": "ADDED", "object": o} for o in self.store.items(resource, namespace)]
        else:
            changes = self.store.since(watcher, int(rv))
            if changes is None:
                gone = st.expired(int(rv), self.store.compacted)
                if not self.gone_as_event:
                    return Reply(410, gone)
                return WatchReply(watcher, [{"type": "ERROR", "object": gone}], timeout=0, bookmarks=False, kind=KINDS[resource])
            initial = [{"type": c.type, "object": copy.deepcopy(c.object)} for c in changes]
        self.store.watchers.add(watcher)
        timeout = float(req.query["timeoutSeconds"]) if req.query.get("timeoutSeconds") else None
        bookmarks = req.query.get("allowWatchBookmarks") in ("1", "true", "True")
        return WatchReply(watcher, initial, timeout, bookmarks, KINDS[resource])

    def _create(self, req: Request, resource: str, namespace: str) -> Reply:
        obj = _json_body(req)
        meta = obj.setdefault("metadata", {})
        if resource in NAMESPACED:
            if self.store.get("namespaces", "", namespace) is None:
                raise _Fail(404, st.not_found("namespaces", namespace))
            meta["namespace"] = namespace
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _Fail(422, st.invalid(KINDS[resource], "", "metadata.name", "Required value: name or generateName is required"))
            meta["name"] = meta["generateName"] + "".join(self.rng.choice(NAME_CHARS) for _ in range(5))
        if self.store.get(resource, namespace if resource in NAMESPACED else "", meta["name"]) is not None:
            raise _Fail(409, st.already_exists(resource, meta["name"]))
        for k in ("resourceVersion", "uid", "creationTimestamp"):
            meta.pop(k, None)
        if resource == "pods":
            obj.setdefault("status", {})["qosClass"] = qos_class(obj)
            obj["status"].setdefault("phase", "Pending")
        if resource == "namespaces":
            obj.setdefault("status", {"phase": "Active"})
        _normalize(obj, resource)
        return Reply(201, self.store.put(resource, obj, created=True))

    # -- single objects --------------------------------------------------------

    def _object(self, req: Request, resource: str, namespace: str, name: str, sub: str | None) -> Reply:
        current = self.store.get(resource, namespace, name)
        if current is None:
            raise _Fail(404, st.not_found(resource, name))
        if req.method == "GET":
            return Reply(200, current)
        if req.method == "DELETE" and sub is None:
            if resource == "namespaces":
                for pod in self.store.items("pods", name):
                    self.store.delete("pods", name, pod["metadata"]["name"])
            return Reply(200, self.store.delete(resource, namespace, name))
        if req.method == "PATCH":
            new = self._patched(req, current)
        elif req.method == "PUT":
            new = _json_body(req)
            if not (new.get("metadata") or {}).get("resourceVersion"):
                raise _Fail(422, st.invalid(KINDS[resource], name, "metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update"))
        else:
            return Reply(405, st.status(405, "the server does not allow this method on the requested resource"))
        wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and str(wanted_rv) != current["metadata"]["resourceVersion"]:
            raise _Fail(409, st.conflict(resource, name))
        _keep_identity(new, current)
        _normalize(new, resource)
        if resource == "pods":
            self._check_pod_change(current, new, resize=sub == "resize")
        if _comparable(new) == _comparable(current):
            return Reply(200, current)  # a no-op: no new resourceVersion, no watch event
        return Reply(200, self.store.put(resource, new, created=False))

    def _patched(self, req: Request, current: dict[str, Any]) -> dict[str, Any]:
        if req.content_type not in (MERGE, STRATEGIC):
            raise _Fail(415, st.status(415, f"the body of the request was in an unknown format - accepted media types include: {MERGE}, {STRATEGIC}"))
        patch = _json_body(req)
        if req.content_type == MERGE:
            out = merge_patch(current, patch)
        elif req.content_type == STRATEGIC:
            try:
                out = strategic_merge_patch(current, patch)
            except ValueError as e:
                raise _Fail(400, st.status(400, str(e))) from e
        if not isinstance(out, dict):
            raise _Fail(400, st.status(400, "the patch did not produce an object"))
        return out

    def _check_pod_change(self, current: dict[str, Any], new: dict[str, Any], *, resize: bool) -> None:
        name = current["metadata"]["name"]
        new["status"] = copy.deepcopy(current.get("status", {}))  # status is a subresource of its own
        before, after = current.get("spec") or {}, new.get("spec") or {}
        if resize:
            new["metadata"] = current["metadata"]  # the resize subresource changes resources only
            allowed = {"resources"}
        else:
            allowed = {"image"} | ({"resources"} if not self.resize_subresource else set())
        if _strip_containers(before, allowed) != _strip_containers(after, allowed):
            what = "resources" if resize else "image" + (" or resources" if not self.resize_subresource else "")
            raise _Fail(422, st.invalid("Pod", name, "spec", f"Forbidden: only container {what} may be changed here"))
        if qos_class(new) != current.get("status", {}).get("qosClass", qos_class(current)):
            raise _Fail(422, st.invalid("Pod", name, "spec.containers[*].resources", "Invalid value: Pod QoS is immutable"))


class _Fail(Exception):
    def __init__(self, code: int, body: dict[str, Any]) -> None:
        super().__init__(code)
        self.code, self.body = code, body


def _route(rest: list[str]) -> tuple[str, str | None, str | None, str | None] | None:
    """(resource, namespace, name, subresource) of a path below /api/v1."""
    if rest in (["namespaces"], ["pods"], ["events"]):
        return rest[0], None, None, None
    if len(rest) == 2 and rest[0] == "namespaces":
        return "namespaces", None, rest[1], None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in NAMESPACED:
        ns, resource = rest[1], rest[2]
        if len(rest) == 3:
            return resource, ns, None, None
        if len(rest) == 4:
            return resource, ns, rest[3], None
        if len(rest) == 5 and resource == "pods" and rest[4] == "resize":
            return resource, ns, rest[3], "resize"
    return None


def _json_body(req: Request) -> dict[str, Any]:
    try:
        body = json.loads(req.body or b"null")
    except ValueError as e:
        raise _Fail(400, st.status(400, f"invalid JSON in the request body: {e}")) from e
    if not isinstance(body, dict):
        raise _Fail(400, st.status(400, "the request body must be a JSON object"))
    return body


def _keep_identity(new: dict[str, Any], current: dict[str, Any]) -> None:
    meta, old = new.setdefault("metadata", {}), current["metadata"]
    for key in ("name", "namespace", "uid", "creationTimestamp", "resourceVersion"):
        if key in old:
            meta[key] = old[key]
        else:
            meta.pop(key, None)
    new["kind"], new["apiVersion"] = current["kind"], current["apiVersion"]


def _normalize(obj: dict[str, Any], resource: str) -> None:
    meta = obj.setdefault("metadata", {})
    if resource == "namespaces":  # set by the API server on every namespace since 1.21
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    for key in ("labels", "annotations"):
        if meta.get(key) == {}:
            del meta[key]  # omitempty: an empty map is not stored


def _comparable(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True)


def _strip_containers(spec: dict[str, Any], allowed: set[str]) -> str:
    spec = copy.deepcopy(spec)
    for c in spec.get("containers") or []:
        for key in allowed:
            c.pop(key, None)
    return json.dumps(spec, sort_keys=True)


def qos_class(pod: dict[str, Any]) -> str:
    """Guaranteed, Burstable or BestEffort, from the containers' cpu and memory requests and limits."""
    containers = (pod.get("spec") or {}).get("containers") or []
    any_set, guaranteed = False, bool(containers)
    for c in containers:
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        for r in ("cpu", "memory"):
            request = requests.get(r, limits.get(r))  # a limit alone defaults the request
            if request is not None or r in limits:
                any_set = True
            if r not in limits or str(request) != str(limits[r]):
                guaranteed = False
    if guaranteed:
        return "Guaranteed"
    return "Burstable" if any_set else "BestEffort"

