"""Start and stop the agent on the local node, under its supervisor."""

from __future__ import annotations

import sys
import time

from nri_zeropod.node.config import NodeConfig

READY_TIMEOUT = 30.0


def start(cfg: NodeConfig) -> None:
    """Start the supervisor and wait until the agent has synchronized with containerd."""
    from nri_zeropod.agent import admin
    from nri_zeropod.node.node import NodeError, _alive_pid, spawn

    if _alive_pid(cfg, "agent-supervisor"):
        return
    spawn(cfg, "agent-supervisor", [sys.executable, "-m", "nri_zeropod.node.supervisor", str(cfg.prefix)],
          env={"PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + READY_TIMEOUT
    sock = cfg.prefix / "agent.sock"
    while time.monotonic() < deadline:
        try:
            if admin.request(sock, {"op": "ping"}, timeout=2).get("synchronized"):
                return
        except admin.AdminError:
            pass
        time.sleep(0.05)
    raise NodeError(f"the agent did not synchronize within {READY_TIMEOUT:g}s; see {cfg.logs / 'agent-supervisor.log'}")


def stop(cfg: NodeConfig) -> None:
    from nri_zeropod.node.node import stop_pid

    stop_pid(cfg, "agent-supervisor", grace=15)
    stop_pid(cfg, "agent", grace=5)  # only if the supervisor died and left it behind


def status_lines(cfg: NodeConfig) -> list[str]:
    lines = [f"admin:       {cfg.prefix / 'agent.sock'}", f"agent log:   {cfg.logs / 'agent-supervisor.log'}"]
    if cfg.metrics_addr:
        host, _, port = cfg.metrics_addr.rpartition(":")
        lines.append(f"metrics:     http://{host or '127.0.0.1'}:{port}/metrics")
    return lines
