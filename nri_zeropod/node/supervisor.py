"""Keep the agent running on the local node, as a DaemonSet's restart policy would.

``python -m nri_zeropod.node.supervisor PREFIX`` runs ``nri-zeropod agent``
with the node's paths, restarts it whenever it exits (after a back-off that
grows while it keeps failing quickly), and stops it on SIGTERM. The agent's
pid is recorded in ``<prefix>/pids/agent.pid`` so that tests can kill it.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from nri_zeropod.node.config import NodeConfig

MIN_BACKOFF = 0.2
# Like a DaemonSet's restart back-off, shorter; tests that kill the agent often set it lower.
MAX_BACKOFF = float(os.environ.get("NRI_ZEROPOD_MAX_RESTART_BACKOFF", "5"))
GOOD_RUN = 10.0  # an agent that ran this long resets the back-off


def agent_argv(cfg: NodeConfig) -> list[str]:
    from nri_zeropod import paths

    return [
        sys.executable, "-m", "nri_zeropod", "agent",
        "--nri-socket", str(cfg.nri_sock),
        "--containerd-socket", str(cfg.containerd_sock),
        "--containerd-state", str(cfg.containerd_state),
        "--state-dir", str(cfg.agent_state),
        "--toolbox", str(paths.toolbox_dir()),
        "--admin-socket", str(cfg.prefix / "agent.sock"),
        "--bpf-pins", str(cfg.bpf_pins),
        "--metrics-addr", cfg.metrics_addr,
        "--log-format", "json",
        # Extra agent flags for this node (e.g. --kubeconfig); the tests use it.
        *shlex.split(os.environ.get("NRI_ZEROPOD_AGENT_ARGS", "")),
    ]


def main(argv: list[str]) -> int:
    from nri_zeropod.node.node import _record_pid

    cfg = NodeConfig.load(Path(argv[0]))
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    backoff = MIN_BACKOFF
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(agent_argv(cfg), stdin=subprocess.DEVNULL)
        _record_pid(cfg, "agent", child.pid)
        rc = child.wait()
        (cfg.pids / "agent.pid").unlink(missing_ok=True)
        if stopping:
            break
        ran = time.monotonic() - started
        backoff = MIN_BACKOFF if ran > GOOD_RUN else min(MAX_BACKOFF, backoff * 2)
        print(f"supervisor: agent exited with {rc} after {ran:.1f}s; restarting in {backoff:.1f}s", flush=True)
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.05)
    if child is not None and child.poll() is None:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main(sys.argv[1:]))
