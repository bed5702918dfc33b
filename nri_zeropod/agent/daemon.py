"""``nri-zeropod agent``: the node daemon.

It checks the toolbox, opens the admin socket, connects to NRI and serves
until the NRI connection ends; then it exits non-zero so that its supervisor
(the DaemonSet, or the local node's supervisor) restarts it and containerd
sends a full Synchronize again. Containers keep running meanwhile: the
keeper, not the agent, holds them up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

from nri_zeropod.agent import admin
from nri_zeropod.agent.criu import RLIMITS_SHIM
from nri_zeropod.agent.execwake import ExecWaker
from nri_zeropod.agent.kubelink import KubeLink
from nri_zeropod.agent.manager import Manager
from nri_zeropod.agent.metrics import Metrics
from nri_zeropod.agent.metrics import serve as serve_metrics
from nri_zeropod.agent.plugin import AgentPlugin
from nri_zeropod.agent.scaler import PodSteering, Scalers
from nri_zeropod.agent.settings import AgentSettings
from nri_zeropod.agent.store import Store
from nri_zeropod.nri import ConnectionLost, RegistrationError
from nri_zeropod.bpf.pins import ensure_bpffs
from nri_zeropod.proc import CommandError, run

log = logging.getLogger("nri_zeropod.agent")

MIN_CRIU = (4, 2)
SWEEP_PERIOD = 30.0


def check_toolbox(toolbox: Path) -> str | None:
    """None if the toolbox can checkpoint on this kernel, else why not (one line)."""
    ld, criu = toolbox / "lib/ld-linux-x86-64.so.2", toolbox / "bin/criu"
    for need in (ld, criu, toolbox / "bin/zeropod-init", toolbox / "bin/zeropod-criu", toolbox / "state"):
        if not need.exists():
            return f"the toolbox at {toolbox} lacks {need.relative_to(toolbox)}"
    try:
        out = run([str(ld), "--library-path", str(toolbox / "lib"), str(criu), "--version"], timeout=10).stdout
    except CommandError as e:
        return f"the toolbox's CRIU does not run: {e}"
    version = out.split("Version:")[1].split()[0] if "Version:" in out else ""
    try:
        have = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        return f"cannot read the toolbox's CRIU version from {out.strip()!r}"
    if have < MIN_CRIU:
        return f"the toolbox's CRIU is {version}; nri-zeropod needs >= {'.'.join(map(str, MIN_CRIU))}"
    return None


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.store = Store(settings.state_dir)
        self.manager = Manager(settings, self.store)
        problem = check_toolbox(settings.toolbox)
        if problem:
            log.error(f"containers will run unmanaged: {problem}")
        elif not (settings.toolbox / "lib" / RLIMITS_SHIM).exists():
            log.warning(f"the toolbox at {settings.toolbox} predates lib/{RLIMITS_SHIM}: apps running as "
                        "another user than root cannot be checkpointed where the agent lacks CAP_SYS_RESOURCE")
        self.scalers = Scalers(
            manager=self.manager, steering=PodSteering(pin_root=settings.bpf_pins, obj_path=settings.bpf_object)
        )
        self.metrics = Metrics(lambda: list(self.manager.records.values()))
        self.manager.hooks.after_checkpoint.append(self.metrics.after_checkpoint)
        self.manager.hooks.after_restore.append(self.metrics.after_restore)
        self.manager.hooks.forget.append(self.metrics.forget)
        self.scalers.on_wake.append(self.metrics.woken)
        self.kube = KubeLink(settings.kube)
        self.execs = ExecWaker(self.manager)
        self.plugin = AgentPlugin(
            settings=settings, manager=self.manager, scalers=self.scalers, kube=self.kube, toolbox_ok=problem is None
        )
        self.plugin.on_adopted.append(self.execs.adopted)

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "ping":
            return {"ok": True, "synchronized": self.plugin.synchronized.is_set()}
        if op == "namespace":
            name = str(req.get("name", ""))
            return {"ok": True, "enabled": self.kube.namespace_enabled(name), "api": self.kube.client is not None}
        if op == "status":
            unmanaged = [{**u, "id": cid, "state": "UNMANAGED"} for cid, u in sorted(self.plugin.unmanaged.items())]
            rows = [{**row, **self.scalers.view(str(row["id"]))} for row in self.manager.status()]
            return {"ok": True, "containers": rows, "unmanaged": unmanaged}
        if op in ("checkpoint", "restore"):
            try:
                rec = self.manager.resolve(str(req.get("container", "")))
                if op == "checkpoint":
                    rec = await self.manager.checkpoint(rec.id)
                    took = rec.last_checkpoint_seconds
                else:
                    rec = await self.manager.restore(rec.id, prepared=bool(req.get("prepared", True)))
                    took = rec.last_restore_seconds
            except Exception as e:  # noqa: BLE001 - AgentError, IllegalTransition and friends: report, do not die
                return {"ok": False, "error": str(e)}
            return {"ok": True, "id": rec.id, "state": rec.state.value, "seconds": took}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def _sweep_now_and_then(self) -> None:
        """Pins of pods removed while an event was missed (an agent restart) go within SWEEP_PERIOD."""
        while True:
            await asyncio.sleep(SWEEP_PERIOD)
            if self.plugin.synchronized.is_set():
                self.scalers.sweep()

    async def run(self) -> int:
        self.store.ensure()
        try:
            ensure_bpffs()
        except OSError as e:
            log.error(f"no bpf filesystem, scale-to-zero steering will fail: {e}")
        server = await admin.serve(self.settings.admin_socket, self.handle)
        metrics_server = None
        if self.settings.metrics_addr:
            try:
                metrics_server = await serve_metrics(self.metrics.registry, self.settings.metrics_addr)
            except (OSError, ValueError) as e:
                log.error(f"cannot serve metrics on {self.settings.metrics_addr}: {e}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            # A process entering a scaled-down container must be stopped before it does much.
            os.setpriority(os.PRIO_PROCESS, 0, -10)
        except OSError as e:
            log.warning(f"cannot raise the agent's priority (execs may run a little before they are held): {e}")
        await self.execs.start()
        self.kube.start(self.manager)
        sweeper = asyncio.create_task(self._sweep_now_and_then())
        runner = asyncio.create_task(self.plugin.run(str(self.settings.nri_socket)))
        stopper = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                log.info("stopping on signal")
                self.plugin.stop()
                await asyncio.wait({runner}, timeout=5)
                return 0
            runner.result()
            log.error("the NRI connection closed")
            return 1
        except ConnectionLost as e:
            log.error(f"lost the NRI connection: {e}")
            return 1
        except (RegistrationError, OSError) as e:
            log.error(f"cannot connect to NRI at {self.settings.nri_socket}: {e}")
            return 1
        finally:
            stopper.cancel()
            sweeper.cancel()
            server.close()
            if metrics_server is not None:
                metrics_server.close()
            await self.plugin.rewriter.close()
            await self.kube.close()
            self.execs.close()
            self.settings.admin_socket.unlink(missing_ok=True)
