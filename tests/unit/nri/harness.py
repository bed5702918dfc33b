"""Running a plugin against the fake runtime: socket set-up, handshake, teardown."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nri_zeropod.nri import Plugin, Reject, api

from .fake_runtime import RUNTIME, FakeRuntime, FakeRuntimeServer


@dataclass
class Env:
    server: FakeRuntimeServer
    path: str

    async def connect(
        self,
        plugin: Plugin,
        *,
        runtime_name: str = "containerd",
        runtime_version: str = "2.1.9+unknown",
        request_timeout_ms: int = 2000,
        pods: Sequence[Any] = (),
        containers: Sequence[Any] = (),
        sync_chunks: int = 1,
    ) -> tuple[FakeRuntime, asyncio.Task[None], int]:
        """Run ``plugin`` and take it through registration, Configure and Synchronize."""
        task = asyncio.create_task(plugin.run(self.path))
        rt = await self.server.accept()
        register = await rt.next_call()
        assert (register.service, register.method) == (RUNTIME, "RegisterPlugin")
        # Configure goes out BEFORE the RegisterPlugin reply, as a real runtime does.
        cfg = api.ConfigureRequest(
            runtime_name=runtime_name, runtime_version=runtime_version,
            registration_timeout=5000, request_timeout=request_timeout_ms,
        )
        reply = await rt.call("Configure", cfg, timeout_nano=request_timeout_ms * 1_000_000)
        assert reply.code == 0, reply
        mask = api.ConfigureResponse.FromString(reply.payload).events
        assert not plugin.registered.is_set()
        rt.reply(register.stream_id)
        await synchronize(rt, pods, containers, sync_chunks)
        await asyncio.wait_for(plugin.registered.wait(), 5)
        await asyncio.wait_for(plugin.synchronized.wait(), 5)
        return rt, task, mask


async def synchronize(rt: FakeRuntime, pods: Sequence[Any], containers: Sequence[Any], chunks: int) -> list[Any]:
    """Send Synchronize in ``chunks`` parts; returns the final reply's updates."""
    updates: list[Any] = []
    for i in range(chunks):
        more = i < chunks - 1
        req = api.SynchronizeRequest(pods=list(pods)[i::chunks], containers=list(containers)[i::chunks], more=more)
        reply = await rt.call("Synchronize", req)
        assert reply.code == 0
        resp = api.SynchronizeResponse.FromString(reply.payload)
        assert resp.more == more
        if more:
            assert not resp.update
        else:
            updates = list(resp.update)
    return updates


async def stop(plugin: Plugin, task: asyncio.Task[None], rt: FakeRuntime) -> None:
    plugin.stop()
    await asyncio.wait_for(task, 5)
    await rt.close()
    assert rt.violations == []


def run(body: Callable[[Env], Awaitable[None]], timeout: float = 30.0) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="nri-", dir="/tmp") as tmp:  # short: sun_path is 108 bytes
            path = os.path.join(tmp, "nri.sock")
            server = FakeRuntimeServer()
            await server.start(path)
            try:
                async with asyncio.timeout(timeout):
                    await body(Env(server, path))
            finally:
                await server.stop()

    asyncio.run(main())


def pod(name: str = "web-0", namespace: str = "default", uid: str = "u1") -> Any:
    return api.PodSandbox(id=f"pod-{name}", name=name, namespace=namespace, uid=uid)


def container(name: str = "app", cid: str = "c0ffee", pod_id: str = "pod-web-0") -> Any:
    return api.Container(id=cid, name=name, pod_sandbox_id=pod_id, args=["/bin/app"])


Action = Callable[..., Awaitable[Any]]


class Recorder(Plugin):
    """Implements every handler; records calls and runs per-event test behaviour."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("name", "test")
        kwargs.setdefault("idx", "10")
        super().__init__(**kwargs)
        self.seen: list[tuple[str, str, str | None]] = []
        self.synced: list[tuple[list[str], list[str]]] = []
        self.actions: dict[str, Action] = {}

    async def _do(self, event: str, pod: Any, container: Any = None, *extra: Any) -> Any:
        self.seen.append((event, pod.name, container.name if container is not None else None))
        action = self.actions.get(event)
        return await action(pod, container, *extra) if action else None

    async def synchronize(self, pods: Any, containers: Any) -> Any:
        self.synced.append(([p.name for p in pods], [c.name for c in containers]))
        action = self.actions.get("synchronize")
        return await action(pods, containers) if action else None

    async def run_pod_sandbox(self, pod: Any) -> None:
        await self._do("run_pod_sandbox", pod)

    async def stop_pod_sandbox(self, pod: Any) -> None:
        await self._do("stop_pod_sandbox", pod)

    async def remove_pod_sandbox(self, pod: Any) -> None:
        await self._do("remove_pod_sandbox", pod)

    async def create_container(self, pod: Any, container: Any) -> Any:
        return await self._do("create_container", pod, container)

    async def post_create_container(self, pod: Any, container: Any) -> None:
        await self._do("post_create_container", pod, container)

    async def start_container(self, pod: Any, container: Any) -> None:
        await self._do("start_container", pod, container)

    async def post_start_container(self, pod: Any, container: Any) -> None:
        await self._do("post_start_container", pod, container)

    async def update_container(self, pod: Any, container: Any, *, resources: Any) -> Any:
        return await self._do("update_container", pod, container, resources)

    async def post_update_container(self, pod: Any, container: Any) -> None:
        await self._do("post_update_container", pod, container)

    async def stop_container(self, pod: Any, container: Any) -> Any:
        return await self._do("stop_container", pod, container)

    async def remove_container(self, pod: Any, container: Any) -> None:
        await self._do("remove_container", pod, container)


def rejecting(reason: str) -> Action:
    async def action(*_: Any) -> None:
        raise Reject(reason)

    return action


def failing(error: Exception) -> Action:
    async def action(*_: Any) -> None:
        raise error

    return action
