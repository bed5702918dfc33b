"""The local node's settings and the containerd and CNI configuration derived from them.

A node lives under one prefix directory: containerd's root and state, its
sockets (``containerd.sock``, ``nri.sock``), logs, pod logs and CNI state. The
settings are written to ``<prefix>/node.json`` at ``node up`` and read back by
every other command.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from nri_zeropod import paths

PAUSE_IMAGE = "nri-zeropod.local/pause:latest"


@dataclass(frozen=True)
class NodeConfig:
    """Where a local node keeps its files and how its pod network looks.

    The bridge, subnet, cgroup parent and the agent's metrics address can be
    changed with the environment variables NRI_ZEROPOD_BRIDGE,
    NRI_ZEROPOD_SUBNET, NRI_ZEROPOD_CGROUP and NRI_ZEROPOD_METRICS_ADDR ("" =
    off) at ``node up`` so that two nodes can run side by side (the tests do that).
    """

    prefix: Path
    bridge: str = "nzbr0"
    subnet: str = "10.213.77.0/24"
    cgroup_parent: str = "/nri-zeropod-node"
    agent: bool = True
    metrics_addr: str = "127.0.0.1:9133"

    @classmethod
    def from_env(cls, prefix: Path, *, agent: bool = True) -> NodeConfig:
        return cls(
            prefix=prefix.resolve(),
            bridge=os.environ.get("NRI_ZEROPOD_BRIDGE", cls.bridge),
            subnet=os.environ.get("NRI_ZEROPOD_SUBNET", cls.subnet),
            cgroup_parent=os.environ.get("NRI_ZEROPOD_CGROUP", cls.cgroup_parent),
            agent=agent,
            metrics_addr=os.environ.get("NRI_ZEROPOD_METRICS_ADDR", cls.metrics_addr),
        )

    def validate(self) -> None:
        if not (1 <= len(self.bridge) <= 15) or not self.bridge.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"bridge name {self.bridge!r} is not a valid interface name")
        try:
            net = ipaddress.ip_network(self.subnet)
        except ValueError as e:
            raise ValueError(f"subnet {self.subnet!r}: {e}") from None
        if net.version != 4 or net.prefixlen > 28:
            raise ValueError(f"subnet {self.subnet!r} must be an IPv4 network of /28 or larger")
        if not self.cgroup_parent.startswith("/") or ".." in self.cgroup_parent:
            raise ValueError(f"cgroup parent {self.cgroup_parent!r} must be an absolute cgroup path")

    # ---- derived paths

    @property
    def containerd_sock(self) -> Path:
        return self.prefix / "containerd.sock"

    @property
    def nri_sock(self) -> Path:
        return self.prefix / "nri.sock"

    @property
    def config_file(self) -> Path:
        return self.prefix / "containerd.toml"

    @property
    def logs(self) -> Path:
        return self.prefix / "logs"

    @property
    def pod_logs(self) -> Path:
        return self.prefix / "pods"

    @property
    def cni_conf_dir(self) -> Path:
        return self.prefix / "cni/net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.prefix / "cni/ipam"

    @property
    def containerd_root(self) -> Path:
        return self.prefix / "var"

    @property
    def containerd_state(self) -> Path:
        return self.prefix / "run"

    @property
    def runc_root(self) -> Path:
        return self.prefix / "runc-root"

    @property
    def agent_state(self) -> Path:
        """The agent's state directory on this node (``/var/lib/nri-zeropod`` in a cluster)."""
        return self.prefix / "agent"

    @property
    def bpf_pins(self) -> Path:
        """Per-pod steering pins of this node's agent (kept apart from other nodes' on this host)."""
        return Path("/sys/fs/bpf") / f"nri-zeropod-{self.prefix.name}"

    @property
    def pids(self) -> Path:
        return self.prefix / "pids"

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    # ---- persistence

    def save(self) -> None:
        data = asdict(self)
        data["prefix"] = str(self.prefix)
        (self.prefix / "node.json").write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, prefix: Path) -> NodeConfig:
        data = json.loads((prefix / "node.json").read_text())
        data["prefix"] = Path(data["prefix"])
        return cls(**data)


def containerd_toml(cfg: NodeConfig) -> str:
    """containerd 2.x config (version 3) with CRI, NRI and CNI for this node."""
    p = cfg.prefix
    runc = paths.runc_binary()
    return f"""version = 3
root = '{cfg.containerd_root}'
state = '{cfg.containerd_state}'

[grpc]
  address = '{cfg.containerd_sock}'
[ttrpc]
  address = '{cfg.containerd_sock}.ttrpc'

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '{PAUSE_IMAGE}'

[plugins.'io.containerd.cri.v1.runtime']
  enable_cdi = false
  # Hosts without CAP_SYS_RESOURCE cannot lower oom_score_adj below the parent's.
  restrict_oom_score_adj = {str(_restrict_oom()).lower()}
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '{runc}'
        SystemdCgroup = false
        Root = '{cfg.runc_root}'
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['{paths.cni_bin_dir()}']
    conf_dir = '{cfg.cni_conf_dir}'
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'

[plugins.'io.containerd.internal.v1.opt']
  path = '{p}/opt'

[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = '{cfg.nri_sock}'
  plugin_path = '{p}/nri-plugins'
  plugin_config_path = '{p}/nri-conf'
  plugin_registration_timeout = '5s'
  plugin_request_timeout = '2s'
  disable_connections = false
"""


def cni_conflist(cfg: NodeConfig) -> str:
    conf = {
        "cniVersion": "1.0.0",
        "name": "nri-zeropod",
        "plugins": [
            {
                "type": "bridge",
                "bridge": cfg.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cfg.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(cfg.cni_ipam_dir),
                },
            }
        ],
    }
    return json.dumps(conf, indent=1) + "\n"


def _restrict_oom() -> bool:
    """True when this process lacks CAP_SYS_RESOURCE (bit 24) in its effective set."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return not (int(line.split()[1], 16) >> 24) & 1
    except OSError:
        pass
    return True
