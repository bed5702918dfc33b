"""The fake API server's objects, resourceVersions, history and watchers.

One counter gives every change a resourceVersion, across all kinds, like
etcd's revision. Each change is also kept in a bounded history; a watch from
resourceVersion R replays the history after R and then follows live changes.
A watch from an R older than what the history still holds gets 410 Gone,
which is exactly when a real server whose etcd compacted (or whose watch
cache wrapped) answers so. :meth:`Store.compact` forgets the whole history,
to make that happen on demand.

All methods run on the fake server's event loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

KINDS = {"namespaces": "Namespace", "pods": "Pod", "events": "Event"}
NAMESPACED = {"pods", "events"}


@dataclass
class Change:
    rv: int
    resource: str
    namespace: str
    type: str  # ADDED, MODIFIED, DELETED
    object: dict[str, Any]


@dataclass(eq=False)
class Watcher:
    resource: str
    namespace: str | None  # None: all namespaces
    queue: asyncio.Queue[Change | None] = field(default_factory=asyncio.Queue)

    def wants(self, change: Change) -> bool:
        return change.resource == self.resource and (self.namespace is None or change.namespace == self.namespace)


class Store:
    def __init__(self, *, history: int = 200) -> None:
        self.rv = 0
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in KINDS}
        self.history: collections.deque[Change] = collections.deque(maxlen=history)
        self.compacted = 0  # changes at or below this rv may be missing from the history
        self.watchers: set[Watcher] = set()

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects[resource].get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def items(self, resource: str, namespace: str | None) -> list[dict[str, Any]]:
        found = [o for (ns, _), o in self.objects[resource].items() if namespace is None or ns == namespace]
        return [copy.deepcopy(o) for o in sorted(found, key=lambda o: int(o["metadata"]["resourceVersion"]))]

    def put(self, resource: str, obj: dict[str, Any], *, created: bool) -> dict[str, Any]:
        """Store a created or updated object: bump the resourceVersion, record and notify."""
        self.rv += 1
        meta = obj.setdefault("metadata", {})
        if created:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
        meta["resourceVersion"] = str(self.rv)
        obj["kind"], obj["apiVersion"] = KINDS[resource], "v1"
        namespace = meta.get("namespace", "") if resource in NAMESPACED else ""
        self.objects[resource][(namespace, meta["name"])] = obj
        self._record(Change(self.rv, resource, namespace, "ADDED" if created else "MODIFIED", copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def delete(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects[resource].pop((namespace, name), None)
        if obj is None:
            return None
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)  # a deletion is a change too
        self._record(Change(self.rv, resource, namespace, "DELETED", copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def compact(self) -> None:
        """Forget every recorded change: any watch from an older resourceVersion now gets 410."""
        self.compacted = self.rv
        self.history.clear()

    def since(self, watcher: Watcher, rv: int) -> list[Change] | None:
        """The recorded changes after ``rv`` the watcher wants; None if some may be lost (410)."""
        if rv < self.compacted:
            return None
        return [c for c in self.history if c.rv > rv and watcher.wants(c)]

    def _record(self, change: Change) -> None:
        if len(self.history) == self.history.maxlen:
            self.compacted = self.history[0].rv
        self.history.append(change)
        for w in list(self.watchers):
            if w.wants(change):
                w.queue.put_nowait(change)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
