"""``kubectl exec`` into a scaled-down container finds its app there.

A process that enters a container's pid namespace from outside (runc exec,
which is what kubelet's Exec and CRI ExecSync run) is seen through the
kernel's process-events connector the moment it is forked into the
namespace, stopped (SIGSTOP) before it does anything, and let go (SIGCONT)
once the app is restored. A namespace is watched from the start of a
checkpoint until the app is back; the keeper's tree (the app, restored or
not) and the agent's own (its CRIU helpers) are not execs.

While an exec runs, a container is not scaled down.
"""

from __future__ import annotations

import asyncio
import logging
import os

from nri_zeropod import procevents
from nri_zeropod.agent.lifecycle import State
from nri_zeropod.agent.manager import AgentError, Manager, NotIdle, fields
from nri_zeropod.agent.store import Record

log = logging.getLogger("nri_zeropod.agent.exec")


class ExecWaker:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.events: procevents.ProcEvents | None = None
        self.watch: procevents.ExecWatch | None = None
        self.watched: dict[int, procevents.OnNew] = {}
        self.ns_of: dict[str, int] = {}  # container id -> the pid namespace watched for it
        self.exclude: set[int] = {os.getpid()}
        self.stopped: dict[str, list[int]] = {}
        self.waking: dict[str, asyncio.Task[None]] = {}
        manager.hooks.before_checkpoint.append(self._before_checkpoint)
        manager.hooks.after_checkpoint.append(self._after_checkpoint)
        manager.hooks.after_restore.append(self._after_restore)
        manager.hooks.forget.append(self.unwatch_container)

    async def start(self) -> None:
        """Listen for new processes; without the connector, exec just does not wake (said once)."""
        events = procevents.ProcEvents()
        try:
            await events.start()
        except procevents.ProcEventsError as e:
            log.error(f"process events unavailable, exec will not wake scaled-down containers: {e}")
            return
        self.events = events
        self.watch = procevents.ExecWatch(events, self.watched, exclude=self.exclude)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        if self.events is not None:
            self.events.close()

    # ---- which namespaces are watched

    def watch_container(self, rec: Record) -> None:
        ns = procevents.pid_ns_of(rec.keeper_pid)
        if ns is None:
            return
        self.exclude.add(rec.keeper_pid)
        self.ns_of[rec.id] = ns
        self.watched[ns] = lambda pid: self._exec_seen(rec, pid)

    def adopted(self, rec: Record) -> None:
        """After an agent restart: a container found scaled down is watched again."""
        if rec.state == State.SCALED_DOWN:
            self.watch_container(rec)

    def unwatch_container(self, rec: Record) -> None:
        # By the namespace recorded at watch time: when a container is
        # forgotten its keeper is gone, and /proc no longer names it.
        ns = self.ns_of.pop(rec.id, None)
        if ns is not None:
            self.watched.pop(ns, None)
        self.exclude.discard(rec.keeper_pid)

    def execs_running(self, rec: Record) -> list[int]:
        ns = procevents.pid_ns_of(rec.keeper_pid)
        if ns is None:
            return []
        return procevents.processes_in_pidns(ns, exclude_tree_of=[rec.keeper_pid, os.getpid()])

    # ---- hooks

    def _before_checkpoint(self, rec: Record, automatic: bool) -> None:
        if automatic and (running := self.execs_running(rec)):
            raise NotIdle(f"exec running ({len(running)} process{'es' if len(running) > 1 else ''})")
        self.watch_container(rec)

    def _after_checkpoint(self, rec: Record, ok: bool) -> None:
        if not ok:
            self.unwatch_container(rec)

    def _after_restore(self, rec: Record, ok: bool) -> None:
        self.unwatch_container(rec)
        for pid in self.stopped.pop(rec.id, []):
            procevents.continue_process(pid)

    # ---- the wake

    def _exec_seen(self, rec: Record, pid: int) -> None:
        # Runs inside the event callback: stop it first, think later.
        procevents.stop_process(pid)
        self.stopped.setdefault(rec.id, []).append(pid)
        log.info("exec into a scaled-down container: restoring the app first",
                 extra={**fields(rec), "pid": pid, "command": _comm(pid), "parent": procevents.parent_of(pid)})
        if rec.id not in self.waking:
            task = asyncio.get_running_loop().create_task(self._wake(rec))
            self.waking[rec.id] = task

    async def _wake(self, rec: Record) -> None:
        try:
            # Asked once the container's lock is held (a checkpoint may have been
            # waited out): an exec that has ended meanwhile needs no app.
            def wanted() -> bool:
                if any(_alive(pid) for pid in self.stopped.get(rec.id, [])):
                    return True
                log.info("the exec ended before the app was restored; not restoring", extra=fields(rec))
                return False

            await self.manager.ensure_running(rec.id, still_wanted=wanted)
        except AgentError as e:
            if self.manager.get(rec.id) is not None:  # else the container went away meanwhile
                log.error("cannot restore for an exec", extra={**fields(rec), "error": str(e)})
        finally:
            self.waking.pop(rec.id, None)
            # On success the restore hook let them go already; on failure they go anyway.
            for pid in self.stopped.pop(rec.id, []):
                procevents.continue_process(pid)
            if rec.state != State.SCALED_DOWN:  # still asleep (nothing left to wake for): keep watching
                self.unwatch_container(rec)


def _alive(pid: int) -> bool:
    try:
        return procevents.stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"
