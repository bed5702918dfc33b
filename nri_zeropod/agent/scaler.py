"""Scale to zero by itself: idle detection, steering, and the wake.

One :class:`Scaler` per managed container. While the app runs it watches the
container's ports: new connections from the steering program's counters
(connections from the node's own addresses, i.e. kubelet's probes, do not
count unless probe detection is off) and open connections with their last
data from sock_diag. After ``scaledown-duration`` without either it turns
steering on for the ports the app listens on, waits for the app's accept
queues to drain, and checkpoints. The activator wakes it on the first
connection; after the restore steering goes off, so later connections reach
the app directly.

The steering program and its maps are per pod (:class:`PodSteering`); each
managed container of a pod has its own activator socket at its own index.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from nri_zeropod import netns, pidfd, ports, sockdiag
from nri_zeropod.agent import criu
from nri_zeropod.agent.activator import Activator, Address
from nri_zeropod.agent.lifecycle import State
from nri_zeropod.agent.manager import fields, AgentError, Manager, NotIdle, keeper_alive
from nri_zeropod.agent.store import Record, safe_id
from nri_zeropod.bpf import BpfError, Steering
from nri_zeropod.bpf.steering import boot_ns

log = logging.getLogger("nri_zeropod.agent.scaler")

MAX_TICK = 2.0  # how late a scale-down may be, at most, past its due time
DRAIN_TIMEOUT = 0.5  # waiting for the app to accept what arrived before steering went on
SOCKET_TRIES = 100  # 20 ms apart: the keeper opens its socket within microseconds of starting
RETRY_MIN = 30.0  # after a failed checkpoint
RETRY_MAX = 600.0


class PodSteering:
    """The steering program of each pod with managed containers, attached on demand."""

    def __init__(self, *, pin_root: Path, obj_path: Path | None) -> None:
        self.pin_root = pin_root
        self.obj_path = obj_path
        self.pods: dict[str, Steering] = {}
        self.node_addrs: set[Address] = set()
        # The pods the runtime has (Synchronize, then RunPodSandbox and RemovePodSandbox).
        self.live: set[str] = set()

    def refresh_node_addrs(self) -> None:
        try:
            self.node_addrs = set(netns.host_addresses())
        except OSError as e:
            log.warning("cannot read the node's addresses", extra={"error": str(e)})
        for st in self.pods.values():
            st.set_node_addrs(self.node_addrs)

    def get(self, pod_id: str, netns_path: Path) -> Steering:
        st = self.pods.get(pod_id)
        if st is None:
            if not safe_id(pod_id) or pod_id not in self.live:
                raise BpfError(f"pod {pod_id[:80]!r} is gone or not a pod id", errno.ENOENT)
            st = Steering.attach(netns_path=netns_path, pin_dir=self.pin_root / pod_id, obj_path=self.obj_path)
            st.set_node_addrs(self.node_addrs)
            self.pods[pod_id] = st
        return st

    def remove(self, pod_id: str) -> None:
        if not safe_id(pod_id):
            return  # never a directory of ours
        st = self.pods.pop(pod_id, None)
        if st is not None:
            st.close()
        Steering.remove(self.pin_root / pod_id)

    def pod_ids_pinned(self) -> list[str]:
        if not self.pin_root.is_dir():
            return []
        return sorted(p.name for p in self.pin_root.iterdir() if p.is_dir())


def keeper_socket(keeper_pid: int) -> socket.socket:
    """A duplicate of the keeper's activator socket (its only listening TCP socket)."""
    fd_dir = Path(f"/proc/{keeper_pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            if not entry.readlink().name.startswith("socket:"):
                continue
        except OSError:
            continue
        fd = pidfd.getfd(keeper_pid, int(entry.name))
        sock = socket.socket(fileno=fd)
        if sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return sock
        sock.close()
    raise AgentError(f"the keeper (pid {keeper_pid}) holds no activator socket")


class Scaler:
    def __init__(
        self, *, manager: Manager, steering: PodSteering, rec: Record,
        on_wake: list[Callable[[Record, float], object]],
    ) -> None:
        self.manager = manager
        self.on_wake = on_wake
        self.pods = steering
        self.rec = rec
        self.activator: Activator | None = None
        self.steering: Steering | None = None
        self.netns_path = netns.pid_netns(rec.keeper_pid)
        self.busy = "starting"  # why it is not scaling down, for status
        self.ports: list[int] = []
        self.wakes = 0
        self.last_wake_seconds = 0.0
        self._restores_seen = rec.restores
        self._active_since = boot_ns()
        self._retry_after = 0.0
        self._retry_delay = RETRY_MIN
        self._tasks: list[asyncio.Task[None]] = []
        self._warned: set[str] = set()

    # ---- life cycle

    def start(self) -> None:
        """Set up steering and the activator, then watch for idleness (unless scale-down is off)."""
        self._tasks.append(asyncio.get_running_loop().create_task(self._setup()))

    async def _setup(self) -> None:
        rec = self.rec
        sock = None
        for attempt in range(SOCKET_TRIES):
            try:
                # The keeper opens its activator socket as it starts, which may
                # be a moment after containerd reports the container started.
                sock = keeper_socket(rec.keeper_pid)
                break
            except (OSError, AgentError) as e:
                if attempt == SOCKET_TRIES - 1 or not keeper_alive(rec):
                    return self._unavailable(e)
                await asyncio.sleep(0.02)
        assert sock is not None
        try:
            self.steering = self.pods.get(rec.pod_id, self.netns_path)
            if rec.activator_index < 0:
                rec.activator_index = self._free_index()
                self.manager.store.save(rec)
            self.steering.set_socket(rec.activator_index, sock)
            mine = sorted(p for p, i in self.steering.steered_ports().items() if i == rec.activator_index)
        except (OSError, BpfError) as e:
            sock.close()
            return self._unavailable(e)
        self.activator = Activator(
            fields=fields(rec), sock=sock, netns_path=self.netns_path, steering=self.steering,
            node_addrs=lambda: self.pods.node_addrs, probe_detection=rec.probe_detection,
            wake=self.wake, woken=self._woken,
        )
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.activator.run()))
        if rec.state == State.SCALED_DOWN:
            # Picked up after an agent restart: the steering is still on, in the kernel.
            self.ports = mine
        else:
            # An agent that died between a restore and turning steering off left it on.
            for port in mine:
                self.steering.unsteer(port)
        await self._watch()

    def _unavailable(self, e: Exception) -> None:
        self.busy = f"scale-to-zero unavailable: {e}"
        log.error("scale-to-zero unavailable, the container runs without it", extra={**fields(self.rec), "error": str(e)})

    def _free_index(self) -> int:
        used = {
            r.activator_index for r in self.manager.records.values()
            if r.pod_id == self.rec.pod_id and r.id != self.rec.id
        }
        return next(i for i in range(64) if i not in used)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._tasks.clear()
        if self.activator is not None:
            self.activator.close()
        if self.steering is not None:
            try:
                self._unsteer()
                if self.rec.activator_index >= 0:
                    self.steering.clear_socket(self.rec.activator_index)
            except (OSError, BpfError):
                pass  # the pod's steering may be gone already, or the socket with the keeper

    # ---- wake

    async def wake(self) -> None:
        """Make sure the app runs: restores once, however many connections ask."""
        await self.manager.ensure_running(self.rec.id)

    def _woken(self, seconds: float) -> None:
        """A steered connection reached the app; only the first one after each restore is a wake."""
        if self.rec.restores <= self._restores_seen:
            return
        self._restores_seen = self.rec.restores
        self.wakes += 1
        self.last_wake_seconds = seconds
        for hook in self.on_wake:
            hook(self.rec, seconds)

    def restored(self) -> None:
        """After a restore (or a failed one): new connections go straight to the app again."""
        self._unsteer()
        self._active_since = boot_ns()

    def _unsteer(self) -> None:
        if self.steering is not None:
            for port in self.ports:
                self.steering.unsteer(port)

    # ---- idle detection

    async def _watch(self) -> None:
        rec = self.rec
        if rec.scaledown_seconds <= 0:
            self.busy = "scale-down disabled (scaledown-duration 0)"
            return
        tick = min(MAX_TICK, max(0.05, rec.scaledown_seconds / 4))
        while True:
            await asyncio.sleep(tick)
            if rec.state != State.RUNNING or not keeper_alive(rec):
                continue
            if time.monotonic() < self._retry_after:
                continue
            try:
                if self._idle_for() >= rec.scaledown_seconds:
                    await self.scale_down()
            except Exception as e:  # noqa: BLE001 - one bad tick must not end the watch
                log.exception("idle check failed", extra={**fields(rec), "error": str(e)})

    def _listening(self) -> list[int]:
        app = criu.find_app(self.rec.keeper_pid)
        found = ports.listening_ports(app.host_pid) if app else set()
        if self.rec.ports is None:
            return sorted(found)
        missing = sorted(set(self.rec.ports) - found)
        if missing and str(missing) not in self._warned:
            self._warned.add(str(missing))
            log.warning("ports-map lists ports the app does not listen on; they are not steered",
                        extra={**fields(self.rec), "ports": missing})
        return sorted(set(self.rec.ports) & found)

    def _idle_for(self) -> float:
        """Seconds since the container's ports last saw a new connection or data (0: busy now)."""
        assert self.steering is not None
        listening = self._listening()
        if not listening:
            self.busy = "the app listens on no TCP port (nothing could wake it)"
            return 0.0
        for port in listening:
            self.steering.track(port)
        last = self._active_since
        for port in listening:
            act = self.steering.activity(port)
            if act is None:
                continue
            last = max(last, act.last_ns)
            if not self.rec.probe_detection:
                last = max(last, act.node_last_ns)
        # Every open connection counts, from the node too: a probe's lives for a
        # millisecond, while a quiet client (a NodePort keep-alive) must not be frozen.
        stats = sockdiag.snapshot(self.netns_path, listening)
        open_conns = sum(st.established for st in stats.values())
        if open_conns:
            self.busy = f"{open_conns} established connection{'s' if open_conns > 1 else ''}"
            return 0.0
        idle = (boot_ns() - last) / 1e9
        self.busy = f"idle for {idle:.0f}s of {self.rec.scaledown_seconds:g}s"
        return idle

    async def scale_down(self) -> None:
        try:
            await self.manager.checkpoint(self.rec.id, automatic=True)
        except NotIdle as e:
            self.busy = str(e)
            self._active_since = boot_ns()
            return
        except AgentError as e:
            self._retry_after = time.monotonic() + self._retry_delay
            self.busy = f"checkpoint failed: {e}"[:300]
            log.warning("scale-down failed; retrying later", extra={
                **fields(self.rec), "error": str(e), "retry_in": self._retry_delay})
            self._retry_delay = min(RETRY_MAX, self._retry_delay * 2)
            return
        self._retry_delay = RETRY_MIN
        self.busy = ""

    async def before_checkpoint(self, automatic: bool) -> None:
        """Steering on for the app's ports, accept queues drained; for an automatic
        scale-down, a last look that nobody came meanwhile (else :class:`NotIdle`)."""
        if self.steering is None:
            if automatic:
                raise NotIdle(self.busy)
            return
        listening = self._listening()
        if not listening:
            if automatic:
                raise NotIdle("the app listens on no TCP port")
            log.warning("checkpointing an app that listens on no TCP port: only a restore or an exec wakes it",
                        extra={**fields(self.rec)})
        before = {p: self.steering.activity(p) for p in listening}
        self.ports = listening
        for port in listening:
            self.steering.steer(port, self.rec.activator_index)
        stats = await self._drain(listening)
        if not automatic:
            return
        came = any(self.steering.activity(p) != before[p] for p in listening)
        open_conns = sum(st.established for st in stats.values())
        if came or open_conns:
            # Steered connections wait at the activator, which serves them with the app still up.
            self._unsteer()
            raise NotIdle("a connection came while scaling down" if came else f"{open_conns} open connections")

    def checkpoint_failed(self) -> None:
        self._unsteer()

    async def _drain(self, listening: list[int]) -> dict[int, sockdiag.PortStats]:
        """Wait (briefly) until the app has accepted what arrived before steering went on."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while True:
            stats = sockdiag.snapshot(self.netns_path, listening)
            if all(s.accept_queue == 0 for s in stats.values()) or time.monotonic() > deadline:
                return stats
            await asyncio.sleep(0.005)


class Scalers:
    """Every container's :class:`Scaler`, wired into the manager's hooks."""

    def __init__(self, *, manager: Manager, steering: PodSteering) -> None:
        self.manager = manager
        self.steering = steering
        self.scalers: dict[str, Scaler] = {}
        manager.hooks.before_checkpoint.append(self._before_checkpoint)
        manager.hooks.after_checkpoint.append(self._after_checkpoint)
        manager.hooks.after_restore.append(self._after_restore)
        self.on_wake: list[Callable[[Record, float], object]] = []

    async def _before_checkpoint(self, rec: Record, automatic: bool) -> None:
        sc = self.scalers.get(rec.id)
        if sc is not None:
            await sc.before_checkpoint(automatic)

    def _after_checkpoint(self, rec: Record, ok: bool) -> None:
        sc = self.scalers.get(rec.id)
        if sc is not None and not ok:
            sc.checkpoint_failed()

    def _after_restore(self, rec: Record, ok: bool) -> None:
        sc = self.scalers.get(rec.id)
        if sc is not None:
            sc.restored()

    def start(self, rec: Record) -> None:
        if rec.id in self.scalers or not keeper_alive(rec):
            return
        if not self.steering.node_addrs:
            self.steering.refresh_node_addrs()
        sc = Scaler(manager=self.manager, steering=self.steering, rec=rec, on_wake=self.on_wake)
        self.scalers[rec.id] = sc
        sc.start()

    async def stop(self, cid: str) -> None:
        sc = self.scalers.pop(cid, None)
        if sc is not None:
            await sc.stop()

    async def pod_removed(self, pod_id: str) -> None:
        for cid in [c for c, sc in self.scalers.items() if sc.rec.pod_id == pod_id]:
            await self.stop(cid)
        self._remove_pins(pod_id)

    def sweep(self) -> None:
        """Remove the pins of pods that no longer have a managed container (whatever events were missed)."""
        wanted = {r.pod_id for r in self.manager.records.values() if r.state != State.STOPPED}
        for pod_id in self.steering.pod_ids_pinned():
            if pod_id not in wanted:
                log.info("removing steering pins of a pod without managed containers", extra={"pod_id": pod_id[:12]})
                self._remove_pins(pod_id)

    def _remove_pins(self, pod_id: str) -> None:
        try:
            self.steering.remove(pod_id)
        except (OSError, BpfError) as e:
            log.warning("cannot remove a pod's steering pins", extra={"pod_id": pod_id[:12], "error": str(e)})

    def view(self, cid: str) -> dict[str, object]:
        sc = self.scalers.get(cid)
        if sc is None:
            return {}
        act = sc.activator
        return {
            "busy": sc.busy,
            "ports": sc.ports,
            "wakes": sc.wakes,
            "last_wake_seconds": sc.last_wake_seconds,
            "activator_accepted": act.accepted if act else 0,
            "probes_answered": act.probes_answered if act else 0,
        }
