"""Checks that the host has the kernel features a node needs, with a message naming what is missing."""

from __future__ import annotations

import os
from pathlib import Path


class MissingFeature(Exception):
    pass


def _filesystems() -> set[str]:
    try:
        return {line.split()[-1] for line in Path("/proc/filesystems").read_text().splitlines() if line.strip()}
    except OSError:
        return set()


def missing_node_features() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root privileges (run as root)")
    fs = _filesystems()
    if "overlay" not in fs:
        missing.append("overlayfs (modprobe overlay)")
    if "bpf" not in fs:
        missing.append("bpf filesystem support (CONFIG_BPF_SYSCALL)")
    if not Path("/proc/self/ns/net").exists() or not Path("/proc/self/ns/pid").exists():
        missing.append("network and pid namespaces")
    cg = Path("/sys/fs/cgroup")
    if not (cg / "memory").is_dir() and not (cg / "cgroup.controllers").exists():
        missing.append("a mounted cgroup hierarchy with the memory controller at /sys/fs/cgroup")
    if not Path("/proc/self/task/%d/children" % os.getpid()).exists():
        missing.append("/proc/PID/task/TID/children (CONFIG_PROC_CHILDREN, needed by CRIU)")
    return missing


def require_node_features() -> None:
    missing = missing_node_features()
    if missing:
        raise MissingFeature("this machine lacks: " + "; ".join(missing))
