"""The managed containers of one node and the operations on them.

The manager owns the table of :class:`~nri_zeropod.agent.store.Record` s,
persists every change through the :class:`~nri_zeropod.agent.store.Store`,
and runs checkpoints and restores, one at a time per container (a lock each).
A state change always goes through the lifecycle table, so an operation in
the wrong state fails with an error that names both. NRI handlers only touch
the table; the slow work (CRIU) happens in operations started outside them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nri_zeropod import procevents
from nri_zeropod.agent import criu
from nri_zeropod.agent.lifecycle import Event, State, next_state
from nri_zeropod.agent.settings import AgentSettings
from nri_zeropod.agent.store import Record, Store

log = logging.getLogger("nri_zeropod.agent")


class AgentError(Exception):
    """An operation on a container failed; the message names the container."""


class NotIdle(AgentError):
    """An automatic scale-down found the container busy after all; nothing was changed."""


def label(rec: Record) -> str:
    return f"{rec.pod_namespace}/{rec.pod_name}/{rec.name}"


def fields(rec: Record) -> dict[str, str]:
    """What every log line about a container carries."""
    return {"pod": f"{rec.pod_namespace}/{rec.pod_name}", "container": rec.name}


def start_time(pid: int) -> str:
    try:
        return procevents.stat_fields(pid)[19]
    except (OSError, IndexError):
        return ""


def keeper_alive(rec: Record) -> bool:
    return rec.keeper_pid > 0 and start_time(rec.keeper_pid) == rec.keeper_start


def container_memory(keeper_pid: int) -> int:
    """Anonymous memory of the container's memory cgroup, in bytes (0 if unknown)."""
    try:
        for f in criu.cgroup_procs_files(keeper_pid):
            stat = Path(f).with_name("memory.stat")
            if stat.exists():
                values = dict(line.split() for line in stat.read_text().splitlines() if line.count(" ") == 1)
                for key in ("total_rss", "rss", "anon"):
                    if key in values:
                        return int(values[key])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Hooks:
    """Callbacks around checkpoints and restores (steering, metrics, events), in order.

    ``before_checkpoint(rec, automatic)`` runs under the container's lock
    before anything changes and may raise :class:`NotIdle` to call an
    automatic scale-down off. ``after_*(rec, ok)`` run after each outcome;
    ``forget(rec)`` when a container is gone.
    """

    before_checkpoint: list[Callable[[Record, bool], object]] = field(default_factory=list)
    after_checkpoint: list[Callable[[Record, bool], object]] = field(default_factory=list)
    after_restore: list[Callable[[Record, bool], object]] = field(default_factory=list)
    forget: list[Callable[[Record], object]] = field(default_factory=list)


async def _run_hooks(hooks: list[Callable[..., object]], *args: object) -> None:
    for hook in hooks:
        await _maybe_await(hook(*args))


class Manager:
    def __init__(self, settings: AgentSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.records: dict[str, Record] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.hooks = Hooks()
        # Restores made ready right after each checkpoint (see criu.Restorer).
        self.restorers: dict[str, criu.Restorer] = {}

    # ---- table

    def add(self, rec: Record) -> None:
        self.records[rec.id] = rec
        self.locks.setdefault(rec.id, asyncio.Lock())
        self.store.save(rec)

    def get(self, cid: str) -> Record | None:
        return self.records.get(cid)

    def lock(self, cid: str) -> asyncio.Lock:
        return self.locks.setdefault(cid, asyncio.Lock())

    def _move(self, rec: Record, event: Event) -> None:
        if rec.state == State.STOPPED:
            return  # stopped meanwhile (StopContainer does not wait for an operation): nothing left to track
        rec.state = next_state(rec.state, event)
        rec.since = time.time()
        try:
            self.store.write_keeper_state(rec.id, rec.state)
            self.store.save(rec)
        except OSError as e:
            if self.store.dir(rec.id).exists():
                raise
            log.info("container state is gone (removed meanwhile)", extra={**fields(rec), "error": str(e)})

    def resolve(self, ref: str) -> Record:
        """A record by container id prefix, ``pod/container`` or ``namespace/pod/container``."""
        parts = ref.split("/")
        if len(parts) == 1:
            found = [r for r in self.records.values() if r.id.startswith(ref)] if ref else []
        elif len(parts) == 2:
            found = [r for r in self.records.values() if (r.pod_name, r.name) == tuple(parts)]
        elif len(parts) == 3:
            found = [r for r in self.records.values() if (r.pod_namespace, r.pod_name, r.name) == tuple(parts)]
        else:
            found = []
        if not found:
            raise AgentError(f"no managed container matches {ref!r}")
        if len(found) > 1:
            names = ", ".join(sorted(label(r) for r in found))
            raise AgentError(f"{ref!r} matches several containers: {names}")
        return found[0]

    async def forget(self, cid: str) -> None:
        """The container is gone: drop it and delete its files (images included)."""
        rec = self.records.get(cid)
        if rec is not None and rec.state != State.STOPPED:
            rec.state = State.STOPPED
        async with self.lock(cid):
            await self._drop_restorer(cid)
            if rec is not None:
                await _run_hooks(self.hooks.forget, rec)
            self.records.pop(cid, None)
            self.locks.pop(cid, None)
            self.store.remove(cid)

    async def _drop_restorer(self, cid: str) -> None:
        restorer = self.restorers.pop(cid, None)
        if restorer is not None:
            await restorer.cancel()

    async def _prepare_restore(self, rec: Record) -> None:
        """Make the next restore ready now; on failure the restore prepares one itself."""
        await self._drop_restorer(rec.id)
        try:
            self.restorers[rec.id] = await criu.Restorer.spawn(
                keeper_pid=rec.keeper_pid, images=self.store.images_dir(rec.id), label=label(rec),
                settings=self.settings.criu,
            )
        except criu.CriuError as e:
            log.warning("cannot prepare the restore ahead", extra={**fields(rec), "error": str(e)})

    def stopped(self, cid: str) -> None:
        restorer = self.restorers.pop(cid, None)
        if restorer is not None:
            asyncio.get_running_loop().create_task(restorer.cancel())
        rec = self.records.get(cid)
        if rec is not None and rec.state != State.STOPPED:
            rec.state = next_state(rec.state, Event.STOP)
            rec.since = time.time()
            self.store.save(rec)

    # ---- operations

    async def checkpoint(self, cid: str, *, automatic: bool = False) -> Record:
        rec = self._must(cid)
        async with self.lock(cid):
            return await self._checkpoint_locked(rec, automatic=automatic)

    async def ensure_running(self, cid: str, *, still_wanted: Callable[[], bool] | None = None) -> Record:
        """Restore if scaled down (once: later callers find it running); wait out a checkpoint first.

        ``still_wanted``, asked with the lock held, can call the restore off
        (the record is then returned still scaled down).
        """
        rec = self._must(cid)
        async with self.lock(cid):
            if rec.state == State.SCALED_DOWN:
                if still_wanted is not None and not still_wanted():
                    return rec
                return await self._restore_locked(rec)
            if rec.state != State.RUNNING:
                raise AgentError(f"{label(rec)} is {rec.state.value}")
            return rec

    async def _checkpoint_locked(self, rec: Record, *, automatic: bool) -> Record:
        if rec.state != State.RUNNING:
            next_state(rec.state, Event.CHECKPOINT)  # raises the named error
        if not keeper_alive(rec):
            raise AgentError(f"{label(rec)}: the keeper (pid {rec.keeper_pid}) is not running")
        app = criu.find_app(rec.keeper_pid)
        if app is None:
            raise AgentError(f"{label(rec)}: no app process under the keeper (pid {rec.keeper_pid})")
        await _run_hooks(self.hooks.before_checkpoint, rec, automatic)
        rss = container_memory(rec.keeper_pid)
        self._move(rec, Event.CHECKPOINT)
        self.store.clear_images(rec.id)
        started = time.monotonic()
        try:
            took = await criu.dump(
                keeper_pid=rec.keeper_pid, app=app, images=self.store.images_dir(rec.id),
                label=label(rec), settings=self.settings.criu,
            )
        except criu.CriuError as e:
            rec.checkpoint_errors += 1
            rec.last_error = f"checkpoint failed: {e}"
            rec.last_criu_log = str(e.log)
            self._move(rec, Event.CHECKPOINT_FAILED)
            log.warning("checkpoint failed", extra={
                **fields(rec), "duration": round(time.monotonic() - started, 4), "error": str(e), "criu_log": str(e.log)})
            await _run_hooks(self.hooks.after_checkpoint, rec, False)
            raise AgentError(str(e)) from None
        rec.checkpoints += 1
        rec.last_checkpoint_at = time.time()
        rec.last_checkpoint_seconds = took
        rec.rss_at_checkpoint = rss
        rec.image_bytes = self.store.image_bytes(rec.id)
        rec.last_error = ""
        self._move(rec, Event.CHECKPOINTED)
        await self._prepare_restore(rec)
        log.info(
            "checkpointed",
            extra={**fields(rec), "duration": round(took, 4), "rss": rss, "image_bytes": rec.image_bytes},
        )
        await _run_hooks(self.hooks.after_checkpoint, rec, True)
        return rec

    async def restore(self, cid: str, *, prepared: bool = True) -> Record:
        """Restore now; ``prepared=False`` ignores the restore made ready after the checkpoint."""
        rec = self._must(cid)
        async with self.lock(cid):
            if not prepared:
                await self._drop_restorer(cid)
            return await self._restore_locked(rec)

    async def _restore_locked(self, rec: Record) -> Record:
        if rec.state != State.SCALED_DOWN:
            next_state(rec.state, Event.RESTORE)
        if not keeper_alive(rec):
            raise AgentError(f"{label(rec)}: the keeper (pid {rec.keeper_pid}) is not running")
        self._move(rec, Event.RESTORE)
        restorer = self.restorers.pop(rec.id, None)
        started = time.monotonic()
        try:
            if restorer is None or not restorer.ready:
                if restorer is not None:
                    await restorer.cancel()
                restorer = await criu.Restorer.spawn(
                    keeper_pid=rec.keeper_pid, images=self.store.images_dir(rec.id),
                    label=label(rec), settings=self.settings.criu,
                )
            took = await restorer.fire(timeout=criu.restore_budget(rec.image_bytes))
        except criu.CriuError as e:
            rec.restore_errors += 1
            rec.last_error = f"restore failed: {e}"
            rec.last_criu_log = str(e.log)
            # The keeper sees "restore-failed" with no app and ends the container,
            # so that the runtime restarts it: a clean start beats a hang.
            self._move(rec, Event.RESTORE_FAILED)
            criu.kill_all_but_keeper(rec.keeper_pid)
            log.error("restore failed", extra={
                **fields(rec), "duration": round(time.monotonic() - started, 4), "error": str(e), "criu_log": str(e.log)})
            await _run_hooks(self.hooks.after_restore, rec, False)
            raise AgentError(str(e)) from None
        rec.restores += 1
        rec.last_restore_at = time.time()
        rec.last_restore_seconds = took
        rec.last_error = ""
        self._move(rec, Event.RESTORED)
        # The image holds process memory and its page cache is charged to the container.
        self.store.clear_images(rec.id)
        log.info("restored", extra={**fields(rec), "duration": round(took, 4)})
        await _run_hooks(self.hooks.after_restore, rec, True)
        return rec

    def _must(self, cid: str) -> Record:
        rec = self.records.get(cid)
        if rec is None:
            raise AgentError(f"container {cid} is not managed")
        return rec

    # ---- recovery after an agent restart

    async def recover(self, rec: Record) -> None:
        """Settle a record a previous agent left in the middle of a checkpoint or restore."""
        if rec.state not in (State.CHECKPOINTING, State.RESTORING):
            return
        async with self.lock(rec.id):
            # A CRIU the old agent started may still be running: let it finish first.
            deadline = time.monotonic() + max(self.settings.criu.dump_timeout, self.settings.criu.restore_timeout)
            while criu.running_in(rec.keeper_pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            app = criu.find_app(rec.keeper_pid) if keeper_alive(rec) else None
            images = self.store.images_dir(rec.id)
            before = rec.state
            if app is not None:
                rec.state = State.RUNNING
                self.store.clear_images(rec.id)
            elif criu.dump_complete(images):  # a finished dump, whether or not a restore began
                rec.state = State.SCALED_DOWN
            else:
                rec.state = State.RESTORE_FAILED
                rec.last_error = f"app lost: the agent stopped while {before.value.lower()}"
            rec.since = time.time()
            self.store.write_keeper_state(rec.id, rec.state)
            self.store.save(rec)
            log.warning(
                "recovered a container left mid-operation",
                extra={**fields(rec), "was": before.value, "now": rec.state.value},
            )

    # ---- views

    def status(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for rec in sorted(self.records.values(), key=lambda r: (r.pod_namespace, r.pod_name, r.name)):
            alive = keeper_alive(rec)
            app = criu.find_app(rec.keeper_pid) if rec.state == State.RUNNING and alive else None
            rows.append(
                {
                    "id": rec.id,
                    "namespace": rec.pod_namespace,
                    "pod": rec.pod_name,
                    "container": rec.name,
                    "state": rec.state.value,
                    "since": rec.since,
                    "keeper_pid": rec.keeper_pid,
                    "app_pid": app.ns_pid if app else None,
                    "rss_bytes": container_memory(rec.keeper_pid) if alive else 0,
                    "rss_at_checkpoint": rec.rss_at_checkpoint,
                    "image_bytes": rec.image_bytes,
                    "scaledown_seconds": rec.scaledown_seconds,
                    "checkpoints": rec.checkpoints,
                    "restores": rec.restores,
                    "checkpoint_errors": rec.checkpoint_errors,
                    "restore_errors": rec.restore_errors,
                    "last_checkpoint_seconds": rec.last_checkpoint_seconds,
                    "last_restore_seconds": rec.last_restore_seconds,
                    "last_error": rec.last_error,
                }
            )
        return rows


async def _maybe_await(value: object) -> None:
    if asyncio.iscoroutine(value):
        await value
