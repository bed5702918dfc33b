"""The agent's NRI plugin: which containers are managed, and how they are rewritten.

CreateContainer decides from the pod's annotations whether a container is
managed; a managed one gets the toolbox and its state directory mounted
read-only and the keeper as its entrypoint (the args adjustment on NRI >=
0.10, the stored-spec rewrite in PostCreateContainer on older runtimes).
StartContainer refuses a managed container whose bundle lacks the keeper,
because NRI fails open. Every handler only touches the manager's table; an
unmanaged container is never touched and never refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from pathlib import Path

from nri_zeropod.agent import podconfig
from nri_zeropod.agent.lifecycle import State
from nri_zeropod.agent.kubelink import KubeLink
from nri_zeropod.agent.manager import fields, Manager, keeper_alive, start_time
from nri_zeropod.agent.scaler import Scalers
from nri_zeropod.agent.settings import KEEPER, AgentSettings
from nri_zeropod.agent.specrewrite import SpecRewriteError, SpecRewriter
from nri_zeropod.agent.store import Record, safe_id
from nri_zeropod.nri import Container, ContainerAdjustment, ContainerUpdate, Mount, Plugin, PodSandbox, Reject

log = logging.getLogger("nri_zeropod.agent")


def _names(pod: PodSandbox, container: Container) -> dict[str, str]:
    return {"pod": f"{pod.namespace}/{pod.name}", "container": container.name}


def keeper_in_args(args: Sequence[str]) -> bool:
    return bool(args) and args[0] == KEEPER


def keeper_running(pid: int) -> bool:
    """Whether ``pid`` (a container's init) is the keeper."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode() == KEEPER
    except OSError:
        return False


class AgentPlugin(Plugin):
    def __init__(
        self, *, settings: AgentSettings, manager: Manager, scalers: Scalers, kube: KubeLink, toolbox_ok: bool
    ) -> None:
        super().__init__(name=settings.plugin_name, idx=settings.plugin_idx)
        self.settings = settings
        self.manager = manager
        self.scalers = scalers
        self.kube = kube
        self.toolbox_ok = toolbox_ok
        self.rewriter = SpecRewriter(str(settings.containerd_socket))
        # Containers of opted-in pods that run without the keeper (started while we were away).
        self.unmanaged: dict[str, dict[str, str]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        # Containers seen at creation and left unmanaged: not re-examined at start.
        self.passed_over: set[str] = set()
        self.warned_pods: set[str] = set()
        self.on_adopted: list[Callable[[Record], object]] = []

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` outside the handler (a handler must answer fast); failures are logged."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def policy(self, pod: PodSandbox, container: Container) -> podconfig.Policy:
        if pod.runtime_handler == "zeropod":
            return podconfig.Policy(False, "runs under zeropod's own runtime")
        if pod.id not in self.warned_pods and (extra := podconfig.unsupported(pod.annotations)):
            self.warned_pods.add(pod.id)
            log.warning("zeropod annotations nri-zeropod does not implement are ignored",
                        extra={"pod": f"{pod.namespace}/{pod.name}", "keys": extra})
        try:
            return podconfig.policy(
                pod.annotations, container.name, namespace_enabled=self.kube.namespace_enabled(pod.namespace)
            )
        except podconfig.AnnotationError as e:
            log.warning(
                f"invalid annotation, container runs unmanaged: {e}",
                extra={**_names(pod, container), "key": e.key, "value": e.value[:200]},
            )
            return podconfig.Policy(False, str(e))

    # ---- create

    async def create_container(self, pod: PodSandbox, container: Container) -> ContainerAdjustment | None:
        pol = self.policy(pod, container)
        if pol.managed and not (safe_id(container.id) and safe_id(pod.id)):
            log.error("container or pod id unfit for a directory name; container runs unmanaged",
                      extra={**_names(pod, container), "id": container.id[:80]})
            pol = podconfig.Policy(False, "bad id")
        if not pol.managed or not self.toolbox_ok:
            if pol.managed:
                log.error("toolbox unusable, container runs unmanaged", extra=_names(pod, container))
            self.passed_over.add(container.id)
            return None
        store = self.manager.store
        store.prepare(container.id)
        rec = Record(
            id=container.id, name=container.name, pod_id=pod.id, pod_name=pod.name,
            pod_namespace=pod.namespace, pod_uid=pod.uid, scaledown_seconds=pol.scaledown_seconds,
            ports=list(pol.ports) if pol.ports is not None else None, probe_detection=pol.probe_detection,
        )
        self.manager.add(rec)
        adjust = ContainerAdjustment(
            mounts=[
                Mount(destination="/.zeropod", type="bind", source=str(self.settings.toolbox),
                      options=["rbind", "ro", "nosuid", "nodev"]),
                Mount(destination="/.zeropod/state", type="bind", source=str(store.state_dir(container.id)),
                      options=["rbind", "ro", "nosuid", "nodev", "noexec"]),
            ]
        )
        if self.runtime.supports_args_adjustment:
            adjust.args.extend([*self.settings.keeper_args, *container.args])
        log.info("managing container", extra={**_names(pod, container), "id": container.id[:12]})
        return adjust

    async def post_create_container(self, pod: PodSandbox, container: Container) -> None:
        if self.manager.get(container.id) is None or self.runtime.supports_args_adjustment:
            return
        try:
            await self.rewriter.prepend_args(container.id, self.settings.keeper_args)
        except SpecRewriteError as e:
            # StartContainer will refuse the container: better than running it keeper-less.
            log.error(f"cannot put the keeper in the spec: {e}", extra=_names(pod, container))

    # ---- start

    async def start_container(self, pod: PodSandbox, container: Container) -> None:
        rec = self.manager.get(container.id)
        if rec is None:
            if container.id in self.passed_over:
                return  # decided (and logged) at creation
            if self.policy(pod, container).managed and self.toolbox_ok:
                raise Reject(
                    f"nri-zeropod: container {container.name} of pod {pod.namespace}/{pod.name} was created while "
                    "nri-zeropod was not connected, so it lacks the keeper; remove it and create it again"
                )
            return
        args = self._bundle_args(container.id)
        if args is not None and not keeper_in_args(args):
            self.manager.stopped(container.id)
            raise Reject(
                f"nri-zeropod: container {container.name} of pod {pod.namespace}/{pod.name} lacks the keeper "
                "(its spec was not rewritten in time); remove it and create it again"
            )
        self._set_keeper(rec, container.pid)

    def _bundle_args(self, cid: str) -> list[str] | None:
        try:
            spec = json.loads(self.settings.bundle_config(cid).read_text())
            return list(spec.get("process", {}).get("args", []))
        except (OSError, ValueError):
            return None

    def _set_keeper(self, rec: Record, pid: int) -> None:
        if pid and (pid != rec.keeper_pid or not rec.keeper_start):
            rec.keeper_pid = pid
            rec.keeper_start = start_time(pid)
            self.manager.store.save(rec)

    async def post_start_container(self, pod: PodSandbox, container: Container) -> None:
        rec = self.manager.get(container.id)
        if rec is not None:
            self._set_keeper(rec, container.pid)
            self.scalers.start(rec)
            self.kube.started(rec)

    # ---- stop and remove

    async def stop_container(self, pod: PodSandbox, container: Container) -> Sequence[ContainerUpdate] | None:
        if self.manager.get(container.id) is not None:
            self.manager.stopped(container.id)
            self.background(self.scalers.stop(container.id))
        return None

    async def remove_container(self, pod: PodSandbox, container: Container) -> None:
        self.unmanaged.pop(container.id, None)
        self.passed_over.discard(container.id)
        if not safe_id(container.id):
            return
        if self.manager.get(container.id) is not None or self.manager.store.dir(container.id).exists():
            self.background(self._remove(container.id))

    async def _remove(self, cid: str) -> None:
        await self.scalers.stop(cid)
        await self.manager.forget(cid)
        self.scalers.sweep()  # the pod's steering goes with its last managed container

    async def run_pod_sandbox(self, pod: PodSandbox) -> None:
        self.scalers.steering.live.add(pod.id)

    async def remove_pod_sandbox(self, pod: PodSandbox) -> None:
        self.warned_pods.discard(pod.id)
        self.scalers.steering.live.discard(pod.id)
        if not safe_id(pod.id):
            log.warning("RemovePodSandbox for a pod id that is not one; ignored", extra={"pod_id": pod.id[:80]})
            return
        if any(r.pod_id == pod.id for r in self.manager.records.values()) or (
            self.scalers.steering.pin_root / pod.id
        ).exists():
            self.background(self.scalers.pod_removed(pod.id))

    # ---- synchronize

    async def synchronize(
        self, pods: Sequence[PodSandbox], containers: Sequence[Container]
    ) -> Sequence[ContainerUpdate] | None:
        by_id = {p.id: p for p in pods}
        seen = set()
        for c in containers:
            pod = by_id.get(c.pod_sandbox_id)
            if pod is None:
                continue
            if not safe_id(c.id):
                continue
            seen.add(c.id)
            rec = self.manager.store.load(c.id)
            if rec is not None:
                self._adopt(rec, c)
            elif self.policy(pod, c).managed:
                self.unmanaged[c.id] = {"namespace": pod.namespace, "pod": pod.name, "container": c.name}
                log.warning(
                    "container of an opted-in pod runs without the keeper (started while nri-zeropod was away); "
                    "it stays unmanaged until it is recreated",
                    extra=_names(pod, c),
                )
        for cid in self.manager.store.ids():
            if cid not in seen:
                log.info("removing state of a container the runtime no longer has", extra={"id": cid[:12]})
                self.manager.store.remove(cid)
        self.scalers.steering.live = set(by_id)
        self.scalers.sweep()
        return None

    def _adopt(self, rec: Record, c: Container) -> None:
        if c.pid and keeper_running(c.pid):
            self._set_keeper(rec, c.pid)
        # A container created but not started yet (pid 0) keeps its state: PostStart comes later.
        if c.pid and not keeper_alive(rec) and rec.state != State.STOPPED:
            rec.state = State.STOPPED
        self.manager.add(rec)
        log.info("adopted container", extra={**fields(rec), "state": rec.state.value})
        self.background(self._resume(rec))

    async def _resume(self, rec: Record) -> None:
        await self.manager.recover(rec)
        if rec.state in (State.RUNNING, State.SCALED_DOWN):
            self.scalers.start(rec)
            for hook in self.on_adopted:
                hook(rec)
