"""Command-line verbs for the local node: ``node up|down|status``, ``run``, ``pods``, ``rm``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nri_zeropod import paths
from nri_zeropod.cri import CRIClient
from nri_zeropod.node import node, pods
from nri_zeropod.node.config import NodeConfig


def register(sub: argparse._SubParsersAction) -> None:
    n = sub.add_parser("node", help="run a local node: containerd with CRI, NRI and CNI, plus the agent")
    nsub = n.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    up = nsub.add_parser("up", help="start the local node (a no-op if it is up)")
    up.add_argument("--prefix", type=Path, default=None, help=f"state directory (default {paths.default_node_prefix()})")
    up.add_argument("--no-agent", action="store_true", help="do not start the nri-zeropod agent")
    up.set_defaults(func=cmd_up)
    down = nsub.add_parser("down", help="stop the local node and remove what it left behind")
    down.add_argument("--prefix", type=Path, default=None)
    down.set_defaults(func=cmd_down)
    st = nsub.add_parser("status", help="show where the node's sockets and logs are")
    st.add_argument("--prefix", type=Path, default=None)
    st.set_defaults(func=cmd_status)

    r = sub.add_parser("run", help="create a pod with one container (like kubectl run) and print its IP")
    r.add_argument("name")
    r.add_argument("--image", required=True, help="a local image: busybox, python, redis, nginx, or a full reference")
    r.add_argument("--port", type=_port, action="append", default=[], help="a container port (recorded like kubelet does)")
    r.add_argument("--annotation", type=_kv, action="append", default=[], metavar="K=V", help="pod annotation")
    r.add_argument("--label", type=_kv, action="append", default=[], metavar="K=V", help="pod label")
    r.add_argument("--env", type=_kv, action="append", default=[], metavar="K=V", help="container environment variable")
    r.add_argument("--namespace", "-n", default="default")
    r.add_argument("--memory-limit", type=int, default=0, metavar="BYTES")
    r.set_defaults(func=cmd_run, takes_command=True)

    p = sub.add_parser("pods", help="list the pods on the node with their containers, state and IP")
    p.set_defaults(func=cmd_pods)

    rm = sub.add_parser("rm", help="remove a pod")
    rm.add_argument("name")
    rm.add_argument("--namespace", "-n", default="default")
    rm.add_argument("--grace", type=int, default=10, help="seconds to wait for containers to stop")
    rm.set_defaults(func=cmd_rm)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: not a number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: must be 1-65535")
    return port


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _selected(prefix: Path | None) -> NodeConfig | None:
    if prefix is None:
        cur = node.current()
        if cur is not None:
            return cur
        prefix = paths.default_node_prefix()
    try:
        return NodeConfig.load(prefix.resolve())
    except (OSError, ValueError):
        return None


def cmd_up(args: argparse.Namespace) -> int:
    prefix = (args.prefix or paths.default_node_prefix()).resolve()
    cfg = node.up(NodeConfig.from_env(prefix, agent=not args.no_agent), log=lambda m: print(m, file=sys.stderr))
    _print_status(node.status(cfg))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cfg = _selected(args.prefix)
    if cfg is None or not node.down(cfg, log=lambda m: print(m, file=sys.stderr)):
        print("no node is up", file=sys.stderr)
        return 0
    print(f"node at {cfg.prefix} is down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _selected(args.prefix)
    st = node.status(cfg) if cfg is not None else None
    if st is None or not st.up:
        print("no node is up")
        return 3
    _print_status(st)
    return 0


def _print_status(st: node.NodeStatus) -> None:
    cfg = st.config
    agent = f"running (supervisor pid {st.agent_pid})" if st.agent_pid else ("not started" if cfg.agent else "disabled")
    print(f"node:        up (containerd pid {st.containerd_pid})")
    print(f"prefix:      {cfg.prefix}")
    print(f"containerd:  {cfg.containerd_sock}")
    print(f"nri socket:  {cfg.nri_sock}")
    print(f"agent:       {agent}")
    print(f"pod network: {cfg.subnet} on bridge {cfg.bridge}")
    print(f"logs:        {cfg.logs} (pod logs: {cfg.pod_logs})")
    from nri_zeropod.node import agentctl

    for line in agentctl.status_lines(cfg):
        print(line)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = node.require_current()
    spec = pods.PodSpec(
        name=args.name,
        namespace=args.namespace,
        labels=dict(args.label),
        annotations=dict(args.annotation),
        containers=[
            pods.ContainerSpec(
                name=args.name,
                image=args.image,
                command=list(args.rest),
                env=dict(args.env),
                ports=list(args.port),
                memory_limit=args.memory_limit,
            )
        ],
    )
    with CRIClient(str(cfg.containerd_sock)) as cri:
        pod = pods.run_pod(cri, cfg, spec)
    print(pod.ip)
    return 0


def cmd_pods(args: argparse.Namespace) -> int:
    cfg = node.require_current()
    with CRIClient(str(cfg.containerd_sock)) as cri:
        rows: list[tuple[str, ...]] = []
        by_pod: dict[str, list[pods.pb.Container]] = {}
        for c in cri.list_containers():
            by_pod.setdefault(c.pod_sandbox_id, []).append(c)
        for pod in pods.list_pods(cri):
            containers = by_pod.get(pod.id, [])
            for c in containers:
                cstate = pods.pb.ContainerState.Name(c.state).removeprefix("CONTAINER_")
                rows.append((pod.namespace, pod.name, c.metadata.name, cstate, pod.ip or "-"))
            if not containers:
                rows.append((pod.namespace, pod.name, "-", "-", pod.ip or "-"))
    _table(["NAMESPACE", "POD", "CONTAINER", "STATE", "IP"], rows)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    cfg = node.require_current()
    with CRIClient(str(cfg.containerd_sock)) as cri:
        pods.remove_pod(cri, cfg, args.name, namespace=args.namespace, grace=args.grace)
    print(f"pod {args.namespace}/{args.name} removed")
    return 0


def _table(headers: list[str], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [tuple(headers), *rows]:
        print("   ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
