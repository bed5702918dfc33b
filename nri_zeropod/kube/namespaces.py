"""A local copy of every namespace's labels, kept current by list + watch.

The agent decides whether a container is managed from a namespace label
inside the 2 s NRI deadline, so :meth:`NamespaceCache.labels` answers from
memory and never touches the network. :meth:`NamespaceCache.run` does the
work in the background, the way client-go's reflector does:

1. list the namespaces and replace the whole copy (namespaces deleted while
   we were not watching disappear here);
2. watch from the list's resourceVersion with bookmarks allowed, applying
   ADDED/MODIFIED/DELETED and remembering the resourceVersion of every event
   and bookmark, so a watch that ends (server timeout, dropped connection)
   resumes where it stopped without a new list;
3. on 410 Gone (an HTTP answer or an ERROR event: our resourceVersion fell out
   of the server's history) list again; on any other failure wait with
   exponential back-off and resume.

The copy stays readable while the loop recovers: stale labels are better than
none for a decision that is re-made on the next container. ``ready`` turns
true after the first successful list and stays true.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .client import KubeClient, WatchEvent
from .errors import ApiError, Gone, KubeError
from .settings import WatchSettings

log = logging.getLogger("nri_zeropod.kube.namespaces")


class NamespaceCache:
    """Labels of every namespace, by name."""

    def __init__(self, client: KubeClient, *, settings: WatchSettings | None = None) -> None:
        self.client = client
        self.settings = settings or WatchSettings()
        self._labels: dict[str, dict[str, str]] = {}
        self._ready = asyncio.Event()
        self.resource_version: str | None = None
        self.lists = 0  # how many times the whole copy was (re)loaded
        self.last_error: KubeError | None = None

    # -- the synchronous side --------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once a list succeeded: an unknown name then really is an unknown namespace."""
        return self._ready.is_set()

    def labels(self, namespace: str) -> dict[str, str] | None:
        """The namespace's labels (a copy), or None if it is unknown or the cache is not ready."""
        found = self._labels.get(namespace)
        return dict(found) if found is not None else None

    def names(self) -> list[str]:
        return sorted(self._labels)

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the first list; False if ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    # -- the background side ---------------------------------------------------

    async def run(self) -> None:
        """List and watch until cancelled; never returns and never raises a KubeError."""
        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                healthy = await self._watch()
                failures = 0 if healthy else failures + 1
                if healthy:
                    continue
                log.debug("namespace watch ended early without events")
            except Gone as e:
                log.info("namespace watch: resourceVersion %s expired (%s); listing again", self.resource_version, e.message)
                self.resource_version = None
                self.last_error = e
                failures += 1
                if failures == 1:
                    continue  # the normal case: re-list at once; back off only if it repeats
            except KubeError as e:
                self.last_error = e
                failures += 1
                level = logging.ERROR if isinstance(e, ApiError) and e.code in (401, 403) else logging.WARNING
                log.log(level, "namespace list/watch failed (attempt %d): %s", failures, e)
            await asyncio.sleep(self.settings.backoff.delay(failures - 1))

    async def _list(self) -> None:
        answer = await self.client.list_namespaces()
        fresh: dict[str, dict[str, str]] = {}
        for item in answer.get("items") or []:
            meta = item.get("metadata") or {}
            if meta.get("name"):
                fresh[meta["name"]] = dict(meta.get("labels") or {})
        self._labels = fresh  # one assignment: readers see the old copy or the new one
        self.resource_version = str((answer.get("metadata") or {}).get("resourceVersion") or "") or None
        self.lists += 1
        self._ready.set()
        log.debug("listed %d namespaces at resourceVersion %s", len(fresh), self.resource_version)

    async def _watch(self) -> bool:
        """One watch connection; True if it was worth having (an event, or it lasted)."""
        started, events = time.monotonic(), 0
        stream = self.client.watch_namespaces(
            resource_version=self.resource_version,
            timeout_seconds=self.settings.timeout_seconds,
            idle_timeout=self.settings.timeout_seconds + self.settings.idle_margin,
        )
        async for event in stream:
            events += 1
            self._apply(event)
        return events > 0 or time.monotonic() - started >= self.settings.min_healthy_watch

    def _apply(self, event: WatchEvent) -> None:
        if event.resource_version:
            self.resource_version = event.resource_version
        if event.type == "BOOKMARK":
            return
        meta: dict[str, Any] = event.object.get("metadata") or {}
        name = meta.get("name")
        if not name:
            return
        if event.type == "DELETED":
            self._labels.pop(name, None)
        elif event.type in ("ADDED", "MODIFIED"):
            self._labels[name] = dict(meta.get("labels") or {})
