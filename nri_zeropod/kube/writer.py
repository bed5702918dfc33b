"""Writes to the API in the background: status labels, Events, request resizes.

The agent's hot paths (a checkpoint finished, a connection woke a container)
must never wait on the API server, so every write is *queued* by a
synchronous, O(1) call and performed later by a per-pod worker task:

- **per-pod order**: one queue and at most one worker per pod, so a pod's
  writes land in the order they were queued; pods proceed independently
  (up to ``max_concurrency`` requests in flight), so one pod whose writes
  hang or fail does not hold up the others;
- **coalescing**: a label or annotation key written again before the earlier
  write started is taken out of the earlier write (only the newest value can
  matter), and a resize of a container supersedes a pending one of the same
  container; Events are never coalesced;
- **retries** with exponential back-off on 5xx, transport errors and
  timeouts; 429 waits at least its Retry-After; 409 re-reads the pod and
  tries again at once; 404 drops the write with a log line (the pod is gone);
  other 4xx (400/401/403/422) are not retried. After ``max_attempts`` the
  write is dropped with an error line: the next state change queues a new one.

Resizes are queued as *intents* ("shrink container c", "restore container c")
and computed from a fresh read of the pod when performed, with the pod's
resourceVersion as a precondition, so a conflict just means "read and plan
again" (see :mod:`.resize`). :meth:`Writer.drain` waits until everything
queued so far is done (for tests and for a clean shutdown).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from . import resize
from .client import KubeClient
from .errors import Conflict, Invalid, KubeError, NotFound, TooManyRequests
from .keys import Status, status_label, zeropod_status_label
from .objects import PodRef, event_body
from .settings import WriterSettings

log = logging.getLogger("nri_zeropod.kube.writer")

Kind = Literal["metadata", "event", "resize"]


@dataclass(eq=False)
class _Op:
    kind: Kind
    labels: dict[str, str | None] = field(default_factory=dict)
    annotations: dict[str, str | None] = field(default_factory=dict)
    event: dict[str, Any] | None = None
    container: str = ""
    shrink: bool = False
    started: bool = False
    cancelled: bool = False

    def describe(self) -> str:
        if self.kind == "metadata":
            return f"labels {sorted(self.labels)} annotations {sorted(self.annotations)}"
        if self.kind == "event":
            return f"event {self.event and self.event.get('reason')!r}"
        return f"{'shrink' if self.shrink else 'restore'} of {self.container}'s requests"


@dataclass(eq=False)
class _PodQueue:
    ops: collections.deque[_Op] = field(default_factory=collections.deque)
    # The pending op that holds each key / container's resize, for O(1) coalescing.
    owners: dict[tuple[str, str], _Op] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


@dataclass
class WriterStats:
    done: int = 0
    dropped: int = 0  # given up, not retryable, or the pod was gone
    coalesced: int = 0
    retries: int = 0


class Writer:
    """The background writer; create it inside the running event loop."""

    def __init__(
        self,
        client: KubeClient,
        *,
        settings: WriterSettings | None = None,
        component: str = "nri-zeropod",
        node: str | None = None,
    ) -> None:
        self.client = client
        self.settings = settings or WriterSettings()
        self.component = component
        self.node = node
        self.stats = WriterStats()
        self._queues: dict[PodRef, _PodQueue] = {}
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._slots = asyncio.Semaphore(self.settings.max_concurrency)
        self._closed = False

    # -- queueing (synchronous, never blocks) -----------------------------------

    @property
    def pending(self) -> int:
        """Writes queued or in flight."""
        return self._pending

    def set_status(self, pod: PodRef, container: str, status: Status, *, zeropod_label: bool = False) -> None:
        """Label the pod with the container's status (and zeropod's label too, if asked)."""
        labels: dict[str, str | None] = {status_label(container): status.value}
        if zeropod_label:
            labels[zeropod_status_label(container)] = status.value
        self.set_metadata(pod, labels=labels)

    def set_metadata(
        self, pod: PodRef, *, labels: Mapping[str, str | None] | None = None, annotations: Mapping[str, str | None] | None = None
    ) -> None:
        """Merge-patch labels and annotations (None removes a key)."""
        op = _Op("metadata", labels=dict(labels or {}), annotations=dict(annotations or {}))
        if not op.labels and not op.annotations:
            return
        q = self._queue(pod)
        for section, keys in (("l", op.labels), ("a", op.annotations)):
            for key in keys:
                self._supersede(q, (section, key), op)
        self._push(pod, q, op)

    def event(
        self, pod: PodRef, *, reason: str, message: str, type: str = "Normal", container: str | None = None
    ) -> None:
        """Create an Event about the pod (and container), stamped now."""
        body = event_body(
            pod, reason=reason, message=message, type=type, container=container,
            component=self.component, node=self.node,
        )
        q = self._queue(pod)
        if len(q.ops) >= self.settings.max_pending_per_pod:
            self._drop_oldest_event(pod, q)
        self._push(pod, q, _Op("event", event=body))

    def shrink_requests(self, pod: PodRef, container: str) -> None:
        """Lower the container's requests to 1m CPU / 1Ki memory, remembering the originals."""
        self._resize(pod, container, shrink=True)

    def restore_requests(self, pod: PodRef, container: str) -> None:
        """Put the container's remembered requests back."""
        self._resize(pod, container, shrink=False)

    def forget(self, pod: PodRef) -> None:
        """Drop the pod's writes that have not started (the pod is being removed)."""
        q = self._queues.get(pod)
        if q is None:
            return
        for op in q.ops:
            self._cancel(op)
        q.owners.clear()

    # -- waiting ---------------------------------------------------------------

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every write queued so far is done or dropped; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while self._pending:
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop every worker now; pending writes are abandoned (call drain first to keep them)."""
        self._closed = True
        tasks = [q.task for q in self._queues.values() if q.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals -------------------------------------------------------------

    def _resize(self, pod: PodRef, container: str, *, shrink: bool) -> None:
        op = _Op("resize", container=container, shrink=shrink)
        q = self._queue(pod)
        self._supersede(q, ("r", container), op)
        self._push(pod, q, op)

    def _queue(self, pod: PodRef) -> _PodQueue:
        if self._closed:
            raise RuntimeError("writer is closed")
        q = self._queues.get(pod)
        if q is None:
            q = self._queues[pod] = _PodQueue()
        return q

    def _push(self, pod: PodRef, q: _PodQueue, op: _Op) -> None:
        q.ops.append(op)
        self._pending += 1
        self._idle.clear()
        if q.task is None:
            q.task = asyncio.get_running_loop().create_task(self._work(pod, q), name=f"kube-writer {pod}")

    def _supersede(self, q: _PodQueue, key: tuple[str, str], op: _Op) -> None:
        old = q.owners.get(key)
        q.owners[key] = op
        if old is None or old.started or old.cancelled:
            return
        if key[0] == "r":
            self._cancel(old)
            return
        (old.labels if key[0] == "l" else old.annotations).pop(key[1], None)
        if not old.labels and not old.annotations:
            self._cancel(old)

    def _cancel(self, op: _Op) -> None:
        if not op.started and not op.cancelled:
            op.cancelled = True
            self.stats.coalesced += 1
            self._done()

    def _drop_oldest_event(self, pod: PodRef, q: _PodQueue) -> None:
        for op in q.ops:
            if op.kind == "event" and not op.started and not op.cancelled:
                log.warning("pod %s: too many queued writes; dropping %s", pod, op.describe())
                op.cancelled = True
                self.stats.dropped += 1
                self._done()
                return

    def _done(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    async def _work(self, pod: PodRef, q: _PodQueue) -> None:
        try:
            while q.ops:
                op = q.ops.popleft()
                if op.cancelled:
                    continue
                op.started = True
                try:
                    await self._perform(pod, op)
                finally:
                    self._done()
        finally:
            # No await between the empty check and here: a write queued now
            # finds no queue and starts a new worker.
            if self._queues.get(pod) is q:
                del self._queues[pod]

    async def _perform(self, pod: PodRef, op: _Op) -> None:
        s = self.settings
        reread = False
        for attempt in range(s.max_attempts):
            if attempt:
                self.stats.retries += 1
            try:
                async with self._slots:
                    await self._execute(pod, op, reread=reread)
                self.stats.done += 1
                return
            except NotFound as e:
                log.info("pod %s: gone (%s); dropping %s", pod, e.message, op.describe())
                self.stats.dropped += 1
                return
            except Conflict as e:
                log.debug("pod %s: conflict on %s (%s); reading the pod again", pod, op.describe(), e.message)
                reread = True
                continue
            except KubeError as e:
                if not e.retryable:
                    hint = " (is in-place pod resize enabled on this cluster?)" if isinstance(e, Invalid) and op.kind == "resize" else ""
                    log.error("pod %s: %s rejected: %s%s", pod, op.describe(), e, hint)
                    self.stats.dropped += 1
                    return
                delay = s.backoff.delay(attempt)
                if isinstance(e, TooManyRequests) and e.retry_after is not None:
                    delay = max(delay, e.retry_after)
                log.warning("pod %s: %s failed (attempt %d/%d): %s; retrying in %.2fs", pod, op.describe(), attempt + 1, s.max_attempts, e, delay)
                await asyncio.sleep(delay)
            except Exception:
                log.exception("pod %s: %s failed unexpectedly; dropping it", pod, op.describe())
                self.stats.dropped += 1
                return
        log.error("pod %s: giving up on %s after %d attempts", pod, op.describe(), s.max_attempts)
        self.stats.dropped += 1

    async def _execute(self, pod: PodRef, op: _Op, *, reread: bool) -> None:
        c = self.client
        if op.kind == "event":
            assert op.event is not None
            await c.create_event(pod.namespace, op.event)
        elif op.kind == "metadata":
            if reread:
                await c.get_pod(pod.namespace, pod.name)  # still there? (404 drops the write)
            await c.patch_pod_metadata(pod.namespace, pod.name, labels=op.labels or None, annotations=op.annotations or None)
        else:
            await self._resize_now(pod, op)

    async def _resize_now(self, pod: PodRef, op: _Op) -> None:
        c = self.client
        current = await c.get_pod(pod.namespace, pod.name)
        if pod.uid and (current.get("metadata") or {}).get("uid") not in (None, pod.uid):
            raise NotFound(404, {"message": f"pod {pod} was replaced by another with the same name", "reason": "NotFound"})
        plan = (resize.shrink_plan if op.shrink else resize.restore_plan)(current, op.container)
        if plan is None:
            return
        steps = [("annotation", plan.annotation), ("resize", plan.resize)]
        if not plan.annotation_first:
            steps.reverse()
        for what, patch in steps:
            if patch is None:
                continue
            rv = (current.get("metadata") or {}).get("resourceVersion")
            guarded = resize.with_resource_version(patch, rv)
            if what == "resize":
                current = await c.resize_pod(pod.namespace, pod.name, guarded)
            else:
                current = await c.patch_pod(pod.namespace, pod.name, guarded)

