"""Bring a local node up and down: containerd with CRI, NRI and CNI, plus the agent.

``up`` writes the configuration under the prefix, starts containerd (and the
agent's supervisor once the agent exists) as detached processes whose pids are
kept in ``<prefix>/pids``, imports the local images and records the prefix in
the node pointer file so that other commands find the node. ``down`` removes
every pod through CRI (so CNI releases addresses and veths), stops what ``up``
started by pid, deletes leftover containers through runc, unmounts everything
under the prefix and removes the bridge and the pod cgroups.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nri_zeropod import paths
from nri_zeropod.procevents import stat_fields
from nri_zeropod.node import hostcheck
from nri_zeropod.node.config import NodeConfig, cni_conflist, containerd_toml
from nri_zeropod.proc import CommandError, run


class NodeError(Exception):
    """A node operation failed; the message says what and where to look."""


@dataclass(frozen=True)
class NodeStatus:
    config: NodeConfig
    containerd_pid: int | None
    agent_pid: int | None

    @property
    def up(self) -> bool:
        return self.containerd_pid is not None


def current() -> NodeConfig | None:
    """The node recorded in the pointer file, if that node's containerd is running."""
    ptr = paths.node_pointer()
    try:
        prefix = Path(json.loads(ptr.read_text())["prefix"])
        cfg = NodeConfig.load(prefix)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cfg if _alive_pid(cfg, "containerd") else None


def require_current() -> NodeConfig:
    cfg = current()
    if cfg is None:
        raise NodeError("no node is up (start one with: nri-zeropod node up)")
    return cfg


def status(cfg: NodeConfig) -> NodeStatus:
    return NodeStatus(cfg, _alive_pid(cfg, "containerd"), _alive_pid(cfg, "agent-supervisor"))


# ---- pid files


def _pid_file(cfg: NodeConfig, name: str) -> Path:
    return cfg.pids / f"{name}.pid"


def _alive_pid(cfg: NodeConfig, name: str) -> int | None:
    """The recorded pid of ``name`` if that process is still the one we started."""
    try:
        pid, start = _pid_file(cfg, name).read_text().split()
        # The start time guards against a recycled pid; a zombie counts as gone.
        fields = stat_fields(int(pid))
        if fields[19] == start and fields[0] != "Z":
            return int(pid)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _record_pid(cfg: NodeConfig, name: str, pid: int) -> None:
    cfg.pids.mkdir(parents=True, exist_ok=True)
    _pid_file(cfg, name).write_text(f"{pid} {stat_fields(pid)[19]}\n")


def spawn(cfg: NodeConfig, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` detached from this process, logging to ``<prefix>/logs/<name>.log``."""
    cfg.logs.mkdir(parents=True, exist_ok=True)
    log = open(cfg.logs / f"{name}.log", "ab")
    try:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            close_fds=True,
        )
    finally:
        log.close()
    _record_pid(cfg, name, p.pid)
    return p.pid


def stop_pid(cfg: NodeConfig, name: str, *, grace: float = 10.0) -> bool:
    """SIGTERM the recorded process, SIGKILL it after ``grace`` seconds; True if it was running."""
    pid = _alive_pid(cfg, name)
    if pid is None:
        _pid_file(cfg, name).unlink(missing_ok=True)
        return False
    _kill_and_wait(pid, grace=grace)
    _pid_file(cfg, name).unlink(missing_ok=True)
    return True


def _kill_and_wait(pid: int, *, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _exists(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while _exists(pid):
        time.sleep(0.02)


def _exists(pid: int) -> bool:
    try:
        # A zombie we do not own still shows up; treat state Z as gone.
        return stat_fields(pid)[0] != "Z"
    except OSError:
        return False


# ---- up


def up(cfg: NodeConfig, *, log=print) -> NodeConfig:
    """Start the node; a no-op (returning the running node) if one is already up."""
    running = current()
    if running is not None:
        log(f"node already up at {running.prefix}")
        return running
    hostcheck.require_node_features()
    for binary in (paths.containerd_binary(), paths.runc_binary()):
        if not binary.exists():
            raise NodeError(f"{binary} is missing: run hack/setup.sh (or make setup) first")
    cfg.validate()
    for d in (cfg.prefix, cfg.logs, cfg.pod_logs, cfg.cni_conf_dir, cfg.pids, cfg.agent_state):
        d.mkdir(parents=True, exist_ok=True)
    cfg.config_file.write_text(containerd_toml(cfg))
    (cfg.cni_conf_dir / "10-nri-zeropod.conflist").write_text(cni_conflist(cfg))
    cfg.save()
    _start_containerd(cfg)
    try:
        _import_images(cfg, log=log)
        paths.run_dir().mkdir(parents=True, exist_ok=True)
        paths.node_pointer().write_text(json.dumps({"prefix": str(cfg.prefix)}) + "\n")
        if cfg.agent:
            from nri_zeropod.node import agentctl

            agentctl.start(cfg)
    except BaseException:
        down(cfg, log=lambda *_a, **_k: None)
        raise
    return cfg


def _start_containerd(cfg: NodeConfig) -> None:
    for sock in (cfg.containerd_sock, cfg.nri_sock):
        sock.unlink(missing_ok=True)
    bin_path = f"{paths.host_root() / 'usr/bin'}:{paths.host_root() / 'usr/sbin'}:/usr/sbin:/usr/bin:/sbin:/bin"
    spawn(cfg, "containerd", [str(paths.containerd_binary()), "--config", str(cfg.config_file)], env={"PATH": bin_path})
    deadline = time.monotonic() + 30
    from nri_zeropod.cri import CRIClient, CRIError

    while True:
        if _alive_pid(cfg, "containerd") is None:
            raise NodeError(f"containerd exited at start; see {cfg.logs / 'containerd.log'}")
        if cfg.containerd_sock.exists() and cfg.nri_sock.exists():
            try:
                with CRIClient(str(cfg.containerd_sock)) as cri:
                    cri.version()
                return
            except CRIError:
                pass
        if time.monotonic() > deadline:
            raise NodeError(f"containerd did not come up within 30s; see {cfg.logs / 'containerd.log'}")
        time.sleep(0.05)


def restart_containerd(cfg: NodeConfig) -> None:
    """Stop and start containerd alone, as a node's service manager would; containers keep running."""
    stop_pid(cfg, "containerd", grace=15)
    _start_containerd(cfg)


def ctr(cfg: NodeConfig, *args: str, timeout: float = 60) -> str:
    argv = [str(paths.ctr_binary()), "-a", str(cfg.containerd_sock), "-n", "k8s.io", *args]
    return run(argv, timeout=timeout).stdout


def _import_images(cfg: NodeConfig, *, log) -> None:
    metas = sorted(paths.images_dir().glob("*.json"))
    if not metas:
        raise NodeError(f"no images in {paths.images_dir()}: run hack/setup.sh (or make setup) first")
    have = {}
    for line in ctr(cfg, "images", "ls").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            have[fields[0]] = fields[2]
    for meta_path in metas:
        meta = json.loads(meta_path.read_text())
        if have.get(meta["name"]) == meta["manifest"]:
            continue
        tar = meta_path.with_suffix(".tar")
        try:
            ctr(cfg, "images", "import", str(tar), timeout=300)
        except CommandError as e:
            raise NodeError(f"importing {tar}: {e}") from None
        log(f"imported {meta['name']}")


# ---- down


def down(cfg: NodeConfig, *, log=print) -> bool:
    """Stop the node and remove what it left on the host; False if nothing was running."""
    was_up = _alive_pid(cfg, "containerd") is not None
    from nri_zeropod.node import agentctl

    if was_up:
        # With the agent still up, so that it deletes its per-container state as pods go.
        _remove_all_pods(cfg, log=log)
    agentctl.stop(cfg)
    stop_pid(cfg, "containerd", grace=15)
    from nri_zeropod.node import cleanup

    cleanup.containers(cfg)
    cleanup.mounts(cfg.prefix)
    cleanup.network(cfg)
    cleanup.cgroups(cfg.cgroup_parent)
    cleanup.bpf_pins(cfg)
    cleanup.runtime_leftovers(cfg)
    try:
        ptr = json.loads(paths.node_pointer().read_text())
        if Path(ptr["prefix"]) == cfg.prefix:
            paths.node_pointer().unlink()
    except (OSError, ValueError, KeyError):
        pass
    return was_up


def _remove_all_pods(cfg: NodeConfig, *, log) -> None:
    from nri_zeropod.cri import CRIClient, CRIError
    from nri_zeropod.node.pods import remove_sandbox

    try:
        with CRIClient(str(cfg.containerd_sock), timeout=60) as cri:
            for pod in cri.list_pod_sandbox():
                try:
                    remove_sandbox(cri, pod.id, grace=2)
                except CRIError as e:
                    log(f"warning: removing pod {pod.metadata.namespace}/{pod.metadata.name}: {e}")
    except CRIError as e:
        log(f"warning: listing pods: {e}")
