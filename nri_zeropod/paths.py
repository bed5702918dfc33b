"""Where things live on a node.

``/opt/nri-zeropod`` holds what ``hack/setup.sh`` installs (unpacked Debian
packages under ``root/``, the CRIU toolbox under ``toolbox/``, built images
under ``images/``). The local node keeps its containerd state, sockets and logs
under its prefix (default ``/var/lib/nri-zeropod-node``), and records the
prefix of the running node in ``/run/nri-zeropod/node.json`` so that commands
find it without flags. The agent keeps per-container state under
``/var/lib/nri-zeropod``.

Each location can be moved with an environment variable (``NRI_ZEROPOD_OPT``,
``NRI_ZEROPOD_NODE_PREFIX``, ``NRI_ZEROPOD_RUN``) so that tests can run side by
side with a node that is already up.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def opt_dir() -> Path:
    return Path(os.environ.get("NRI_ZEROPOD_OPT", "/opt/nri-zeropod"))


def host_root() -> Path:
    """Unpacked packages (containerd, runc, CNI plugins, nft, busybox, catatonit)."""
    return opt_dir() / "root"


def toolbox_dir() -> Path:
    """The relocatable CRIU toolbox bind-mounted into managed containers at /.zeropod."""
    return Path(os.environ.get("NRI_ZEROPOD_TOOLBOX", str(opt_dir() / "toolbox")))


def images_dir() -> Path:
    return opt_dir() / "images"


def default_node_prefix() -> Path:
    return Path(os.environ.get("NRI_ZEROPOD_NODE_PREFIX", "/var/lib/nri-zeropod-node"))


def run_dir() -> Path:
    return Path(os.environ.get("NRI_ZEROPOD_RUN", "/run/nri-zeropod"))


def node_pointer() -> Path:
    """JSON file naming the prefix of the node that is up."""
    return run_dir() / "node.json"


def build_dir() -> Path:
    """Artefacts built from this repository (keeper, eBPF object)."""
    return Path(os.environ.get("NRI_ZEROPOD_BUILD", str(REPO / "build")))


def runc_binary() -> Path:
    return host_root() / "usr/sbin/runc"


def containerd_binary() -> Path:
    return host_root() / "usr/bin/containerd"


def ctr_binary() -> Path:
    return host_root() / "usr/bin/ctr"


def cni_bin_dir() -> Path:
    return host_root() / "usr/lib/cni"
