"""The agent's settings: where things are and how long things may take.

Defaults are what a DaemonSet on a containerd 2.x node uses; the local node
overrides the paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nri_zeropod.agent.criu import CriuSettings

KEEPER = "/.zeropod/bin/zeropod-init"


@dataclass(frozen=True)
class KubeOptions:
    """What the agent does with the API, each a flag of ``nri-zeropod agent``."""

    kubeconfig: Path | None = None
    node_name: str | None = None
    status_labels: bool = True
    zeropod_status_labels: bool = False  # also zeropod's status.zeropod.ctrox.dev/<container>
    events: bool = True
    in_place_scaling: bool = False  # shrink requests while scaled down (needs InPlacePodVerticalScaling)


@dataclass(frozen=True)
class AgentSettings:
    """Paths and timing of one agent.

    ``containerd_state`` is containerd's state directory: the agent reads a
    task's bundle (``io.containerd.runtime.v2.task/k8s.io/<id>/config.json``)
    there to refuse starting a managed container without the keeper.
    """

    nri_socket: Path = Path("/var/run/nri/nri.sock")
    containerd_socket: Path = Path("/run/containerd/containerd.sock")
    containerd_state: Path = Path("/run/containerd")
    state_dir: Path = Path("/var/lib/nri-zeropod")
    toolbox: Path = Path("/opt/nri-zeropod/toolbox")
    admin_socket: Path = Path("/run/nri-zeropod/agent.sock")
    plugin_name: str = "nri-zeropod"
    # After resource-policy plugins (the community's default is 90): we only add mounts and args.
    plugin_idx: str = "95"
    criu_log_level: int = 4
    # Where each pod's steering link and maps are pinned (one directory per pod).
    bpf_pins: Path = Path("/sys/fs/bpf/nri-zeropod")
    bpf_object: Path | None = None  # default: NRI_ZEROPOD_BPF_OBJ or the build directory
    # Prometheus endpoint, HOST:PORT ("" = off). Every address, as zeropod's manager (which uses :8080).
    metrics_addr: str = ":9133"
    kube: KubeOptions = field(default_factory=KubeOptions)

    @property
    def criu(self) -> CriuSettings:
        return CriuSettings(kdat_dir=str(self.state_dir), log_level=self.criu_log_level)

    @property
    def keeper_args(self) -> list[str]:
        return [KEEPER, "--activator", "--"]

    def bundle_config(self, container_id: str) -> Path:
        return self.containerd_state / "io.containerd.runtime.v2.task/k8s.io" / container_id / "config.json"
