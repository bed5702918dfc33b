"""Remove what a stopped local node leaves on the host.

Each function is idempotent and touches only what belongs to the node: mounts
under its prefix, containers in its runc root, its bridge, and the cgroup
subtree it used as pod cgroup parent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nri_zeropod import paths
from nri_zeropod.node.config import NodeConfig
from nri_zeropod.proc import CommandError, run

CGROUP_ROOT = Path("/sys/fs/cgroup")


def containers(cfg: NodeConfig) -> None:
    """Kill and delete containers left in the node's runc root, then their shims."""
    root = cfg.runc_root / "k8s.io"
    if root.is_dir():
        runc = str(paths.runc_binary())
        for state in sorted(root.iterdir()):
            cid = state.name
            run([runc, "--root", str(root), "kill", "--all", cid, "KILL"], timeout=10, check=False)
            run([runc, "--root", str(root), "delete", "--force", cid], timeout=10, check=False)
    shim = str(paths.host_root() / "usr/bin/containerd-shim-runc-v2")
    for pid in _pids_with_exe(shim):
        if _cmdline_mentions(pid, str(cfg.containerd_sock)):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def _pids_with_exe(exe: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "exe") == exe:
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def _cmdline_mentions(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def mountpoints_under(prefix: Path) -> list[str]:
    base = str(prefix).rstrip("/") + "/"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp.startswith(base):
            out.append(mp)
    return out


def mounts(prefix: Path) -> None:
    # Deepest first; lazily if busy, so that a stuck mount never blocks teardown.
    for mp in sorted(set(mountpoints_under(prefix)), key=lambda m: m.count("/"), reverse=True):
        try:
            run(["umount", mp], timeout=10)
        except CommandError:
            run(["umount", "-l", mp], timeout=10, check=False)


def network(cfg: NodeConfig) -> None:
    if Path(f"/sys/class/net/{cfg.bridge}").exists():
        run(["ip", "link", "del", cfg.bridge], timeout=10, check=False)
    shutil.rmtree(cfg.cni_ipam_dir, ignore_errors=True)


def cgroups(parent: str) -> None:
    """rmdir the pod cgroup subtree ``parent`` in every hierarchy, bottom-up."""
    rel = parent.strip("/")
    if not rel or not CGROUP_ROOT.is_dir():
        return
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / rel
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: t[0].count("/"), reverse=True):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def bpf_pins(cfg: NodeConfig) -> None:
    """Pins the agent left (pods removed while it was down); the pins' directory itself."""
    if not cfg.bpf_pins.is_dir():
        return
    from nri_zeropod.bpf import Steering

    for pod_dir in cfg.bpf_pins.iterdir():
        try:
            Steering.remove(pod_dir)
        except OSError:
            pass
    try:
        cfg.bpf_pins.rmdir()
    except OSError:
        pass


def runtime_leftovers(cfg: NodeConfig) -> None:
    """Empty directories containerd's shims and libcni leave behind, and the node's run state."""
    shutil.rmtree(cfg.containerd_state, ignore_errors=True)
    for d in (Path("/run/containerd/s"), Path("/run/containerd"), Path("/var/lib/cni/results"), Path("/var/lib/cni")):
        try:
            d.rmdir()
        except OSError:
            pass
