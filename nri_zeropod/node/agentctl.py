"""Start and stop the agent on the local node (filled in once the agent exists)."""

from __future__ import annotations

from nri_zeropod.node.config import NodeConfig


def start(cfg: NodeConfig) -> None:
    """The agent arrives with issue #4; until then the node runs without it."""


def stop(cfg: NodeConfig) -> None:
    from nri_zeropod.node.node import stop_pid

    stop_pid(cfg, "agent-supervisor")
