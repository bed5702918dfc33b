"""Running one plugin handler: deadline, error policy, and the "inside a handler" marker.

:func:`invoke` runs a handler coroutine in its own task under a deadline and
turns every outcome into either its result or ``None``: an overrun is
cancelled and logged, an unexpected exception is logged with the pod and
container it was about; only :class:`Reject` passes through, for the caller
to turn into an error status where the runtime honours one.

The task runs with a :class:`HandlerScope` in a context variable, which
``Plugin.update_containers()`` consults: awaited by the handler itself, the
call would deadlock against the runtime's lock, so it raises; from a task the
handler started, it waits until the handler's reply has gone out.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .api import Container, PodSandbox
from .errors import Reject

T = TypeVar("T")


@dataclass
class HandlerScope:
    """One request being served; ``replied`` is set just before its response is written."""

    what: str  # the handler's name, for log lines
    budget: float  # seconds the handler may take
    subject: str = ""  # the pod and container it is about, for log lines
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[Any] | None = None
    waiting_tasks: int = 0  # tasks started by the handler, blocked in update_containers()


current_scope: contextvars.ContextVar[HandlerScope | None] = contextvars.ContextVar("nri_handler_scope", default=None)


def describe(pod: PodSandbox | None, container: Container | None = None) -> str:
    """``pod ns/name container c (id 1234abcd)`` for log lines."""
    parts = []
    if pod is not None and (pod.name or pod.namespace):
        parts.append(f"pod {pod.namespace}/{pod.name}")
    if container is not None and (container.name or container.id):
        parts.append(f"container {container.name} ({container.id[:12]})")
    return " ".join(parts) or "no pod or container"


async def invoke(call: Callable[[], Awaitable[T]], *, scope: HandlerScope, log: logging.Logger) -> T | None:
    """Run ``call()`` as ``scope``'s handler task; None after an overrun or an unexpected error."""

    async def handler() -> T:
        return await call()  # inside the task, so even a non-async handler's error is caught

    context = contextvars.copy_context()
    context.run(current_scope.set, scope)
    task = asyncio.create_task(handler(), name=f"nri handler {scope.what}", context=context)
    scope.task = task
    # asyncio.wait, not wait_for: a handler that swallows cancellation must not
    # hold the reply past the deadline.
    try:
        done, _ = await asyncio.wait({task}, timeout=scope.budget)
    except asyncio.CancelledError:  # the connection is going away: so is the handler
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_log_late_failure(what=scope.what, subject=scope.subject, log=log))
        hint = ""
        if scope.waiting_tasks:
            hint = " while a task it started waited in update_containers() (awaiting that from a handler deadlocks)"
        log.error("%s for %s overran its %.3fs budget%s; answering without it",
                  scope.what, scope.subject, scope.budget, hint)
        return None
    if task.cancelled():
        log.error("%s for %s was cancelled; answering without it", scope.what, scope.subject)
        return None
    error = task.exception()
    if error is None:
        return task.result()
    if isinstance(error, Reject):
        raise error
    log.error("%s for %s failed; answering as if it had done nothing", scope.what, scope.subject, exc_info=error)
    return None


def _log_late_failure(*, what: str, subject: str, log: logging.Logger) -> Any:
    def done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s for %s failed after its deadline", what, subject, exc_info=task.exception())

    return done
