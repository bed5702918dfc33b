"""The agent's link to the Kubernetes API: namespace opt-in, status labels, Events, request shrinking.

Everything here is optional: without API access (no kubeconfig, no service
account) the agent says so once and works from pod annotations alone. With
it, a namespace watch keeps a local copy of namespace labels, so the managed
decision inside NRI's 2 s deadline never waits for the network; and every
write (labels, Events, resizes) is queued to the background writer, which
retries with back-off and never blocks a checkpoint or a wake.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from nri_zeropod.agent.criu import log_tail
from nri_zeropod.agent.manager import Manager
from nri_zeropod.agent.settings import KubeOptions
from nri_zeropod.agent.store import Record
from nri_zeropod.kube import (
    NAMESPACE_ENABLED,
    ConfigError,
    KubeClient,
    KubeConfig,
    NamespaceCache,
    PodRef,
    Status,
    Writer,
    load_config,
)

log = logging.getLogger("nri_zeropod.agent.kube")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


class KubeLink:
    def __init__(self, options: KubeOptions) -> None:
        self.options = options
        self.config: KubeConfig | None = None
        self.client: KubeClient | None = None
        self.namespaces: NamespaceCache | None = None
        self.writer: Writer | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, manager: Manager) -> None:
        """Connect if there is a configuration; say once if there is none. Never raises."""
        try:
            self.config = load_config(kubeconfig=self.options.kubeconfig)
        except ConfigError as e:
            log.error(f"cannot use the Kubernetes API, namespace labels and status writes are off: {e}")
            return
        if self.config is None:
            log.warning("no Kubernetes API access (no kubeconfig, no service account): namespace labels are off, "
                        "pod annotations still work")
            return
        self.client = KubeClient(self.config)
        self.namespaces = NamespaceCache(self.client)
        self.writer = Writer(self.client, node=self.options.node_name)
        self._task = asyncio.get_running_loop().create_task(self._watch_namespaces())
        manager.hooks.after_checkpoint.append(self.after_checkpoint)
        manager.hooks.after_restore.append(self.after_restore)
        log.info("using the Kubernetes API", extra={"server": f"{self.config.host}:{self.config.port}"})

    async def _watch_namespaces(self) -> None:
        assert self.namespaces is not None
        while True:
            try:
                await self.namespaces.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - supervised: the cache must come back
                log.exception("namespace watch failed; restarting it")
                await asyncio.sleep(1)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.writer is not None:
            await self.writer.drain(timeout=2)
            await self.writer.close()
        if self.client is not None:
            await self.client.close()

    # ---- what the plugin asks

    def namespace_enabled(self, namespace: str) -> bool:
        """From the local copy only: unknown (or no API) means not enabled."""
        if self.namespaces is None:
            return False
        labels = self.namespaces.labels(namespace) or {}
        return labels.get(NAMESPACE_ENABLED) == "true"

    # ---- writes, all queued

    def _pod(self, rec: Record) -> PodRef:
        return PodRef(namespace=rec.pod_namespace, name=rec.pod_name, uid=rec.pod_uid or None)

    def _status(self, rec: Record, status: Status) -> None:
        if self.writer is not None and self.options.status_labels:
            self.writer.set_status(self._pod(rec), rec.name, status, zeropod_label=self.options.zeropod_status_labels)

    def _event(self, rec: Record, *, reason: str, message: str, warning: bool = False) -> None:
        if self.writer is not None and self.options.events:
            self.writer.event(self._pod(rec), reason=reason, message=message,
                              type="Warning" if warning else "Normal", container=rec.name)

    def started(self, rec: Record) -> None:
        self._status(rec, Status.RUNNING)

    def after_checkpoint(self, rec: Record, ok: bool) -> None:
        if not ok:
            self._event(rec, reason="CheckpointFailed", message=self._failure(rec), warning=True)
            return
        self._status(rec, Status.SCALED_DOWN)
        self._event(rec, reason="ScaledDown",
                    message=f"Scaled down container {rec.name} in {_ms(rec.last_checkpoint_seconds)}")
        if self.writer is not None and self.options.in_place_scaling:
            self.writer.shrink_requests(self._pod(rec), rec.name)

    def after_restore(self, rec: Record, ok: bool) -> None:
        if not ok:
            self._event(rec, reason="RestoreFailed", message=self._failure(rec), warning=True)
            return
        if self.writer is not None and self.options.in_place_scaling:
            self.writer.restore_requests(self._pod(rec), rec.name)
        self._status(rec, Status.RUNNING)
        self._event(rec, reason="Restored", message=f"Restored container {rec.name} in {_ms(rec.last_restore_seconds)}")

    def _failure(self, rec: Record) -> str:
        tail = log_tail(Path(rec.last_criu_log), lines=8) if rec.last_criu_log else []
        return "\n".join([rec.last_error, *tail])
