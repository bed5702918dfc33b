"""Command-line verbs of the agent: ``agent``, ``status``, ``checkpoint``, ``restore``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from nri_zeropod import log as logsetup
from nri_zeropod.agent import admin
from nri_zeropod.agent.settings import AgentSettings, KubeOptions


def register(sub: argparse._SubParsersAction) -> None:
    d = AgentSettings()
    a = sub.add_parser("agent", help="run the node agent (the NRI plugin)")
    a.add_argument("--nri-socket", type=Path, default=d.nri_socket)
    a.add_argument("--containerd-socket", type=Path, default=d.containerd_socket,
                   help="containerd's gRPC socket, for the spec rewrite on containerd < 2.2")
    a.add_argument("--containerd-state", type=Path, default=d.containerd_state,
                   help="containerd's state directory, where task bundles are")
    a.add_argument("--state-dir", type=Path, default=d.state_dir)
    a.add_argument("--toolbox", type=Path, default=d.toolbox)
    a.add_argument("--admin-socket", type=Path, default=d.admin_socket)
    a.add_argument("--plugin-idx", default=d.plugin_idx)
    a.add_argument("--bpf-pins", type=Path, default=d.bpf_pins, help="bpffs directory for per-pod steering pins")
    a.add_argument("--bpf-object", type=Path, default=None, help="the compiled steering program (steer.bpf.o)")
    a.add_argument("--metrics-addr", default=d.metrics_addr,
                   help=f"Prometheus endpoint HOST:PORT, '' to turn it off (default {d.metrics_addr!r}, path /metrics)")
    k = a.add_argument_group("Kubernetes", "without API access the agent works from pod annotations alone")
    k.add_argument("--kubeconfig", type=Path, default=None, help="default: $KUBECONFIG, else the service account")
    k.add_argument("--node-name", default=os.environ.get("NODE_NAME"), help="for Events (default: $NODE_NAME)")
    k.add_argument("--no-status-labels", action="store_true", help="do not label pods status.nri-zeropod.dev/<c>")
    k.add_argument("--zeropod-status-labels", action="store_true",
                   help="also set zeropod's status.zeropod.ctrox.dev/<container> labels")
    k.add_argument("--no-events", action="store_true", help="do not create Events")
    k.add_argument("--in-place-scaling", action="store_true",
                   help="shrink CPU/memory requests while scaled down (pods/resize; InPlacePodVerticalScaling)")
    a.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    a.add_argument("--log-format", default="auto", choices=["auto", "json", "text"])
    a.set_defaults(func=cmd_agent)

    s = sub.add_parser("status", help="show the managed containers")
    s.add_argument("--json", action="store_true")
    s.add_argument("--watch", "-w", type=float, nargs="?", const=2.0, default=0.0, metavar="SECONDS",
                   help="refresh every SECONDS (2 by default) until interrupted")
    s.set_defaults(func=cmd_status)
    for verb in ("checkpoint", "restore"):
        c = sub.add_parser(verb, help=f"{verb} a managed container now")
        c.add_argument("container", help="container id prefix, POD/CONTAINER or NAMESPACE/POD/CONTAINER")
        c.set_defaults(func=cmd_operation, op=verb)


def cmd_agent(args: argparse.Namespace) -> int:
    from nri_zeropod.agent.daemon import Agent

    logsetup.setup(level=args.log_level, fmt=args.log_format)
    settings = replace(
        AgentSettings(),
        nri_socket=args.nri_socket,
        containerd_socket=args.containerd_socket,
        containerd_state=args.containerd_state,
        state_dir=args.state_dir,
        toolbox=args.toolbox,
        admin_socket=args.admin_socket,
        plugin_idx=args.plugin_idx,
        bpf_pins=args.bpf_pins,
        bpf_object=args.bpf_object,
        metrics_addr=args.metrics_addr,
        kube=KubeOptions(
            kubeconfig=args.kubeconfig, node_name=args.node_name, status_labels=not args.no_status_labels,
            zeropod_status_labels=args.zeropod_status_labels, events=not args.no_events,
            in_place_scaling=args.in_place_scaling,
        ),
    )
    return asyncio.run(Agent(settings).run())


def admin_socket() -> Path:
    """The local node's agent if a node is up, else the node-wide default."""
    from nri_zeropod.node import node

    cfg = node.current()
    return cfg.prefix / "agent.sock" if cfg is not None else AgentSettings().admin_socket


def _call(req: dict[str, Any]) -> dict[str, Any]:
    try:
        reply = admin.request(admin_socket(), req)
    except admin.AdminError as e:
        from nri_zeropod.cli import UserError

        raise UserError(str(e)) from None
    return reply


def cmd_operation(args: argparse.Namespace) -> int:
    reply = _call({"op": args.op, "container": args.container})
    if not reply.get("ok"):
        from nri_zeropod.cli import UserError

        raise UserError(str(reply.get("error")))
    print(f"{args.op} of {str(reply['id'])[:12]} done in {float(reply['seconds']) * 1000:.0f} ms: {reply['state']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    while True:
        reply = _call({"op": "status"})
        if args.json:
            print(json.dumps(reply, indent=1), flush=True)
        else:
            if args.watch:
                print("\033[H\033[2J", end="")
            print_status(reply)
        if not args.watch:
            return 0
        time.sleep(args.watch)


def print_status(reply: dict[str, Any]) -> None:
    rows: list[tuple[str, ...]] = []
    for c in reply.get("containers", []):
        up_for = time.time() - c["since"]
        reason = "-"
        if c["state"] == "RUNNING" and c["scaledown_seconds"] and up_for > c["scaledown_seconds"]:
            reason = c.get("busy") or c.get("last_error") or "-"
        elif c["state"] == "RUNNING" and not c["scaledown_seconds"]:
            reason = "scale-down disabled"
        memory = _size(c["rss_bytes"]) if c["state"] != "SCALED_DOWN" else f"saved {_size(c['rss_at_checkpoint'])}"
        rows.append(
            (
                c["namespace"], c["pod"], c["container"], c["state"], _ago(c["since"]), memory,
                str(c.get("wakes", 0)), _ms(c["last_checkpoint_seconds"]), _ms(c["last_restore_seconds"]), reason,
            )
        )
    for u in reply.get("unmanaged", []):
        rows.append((u["namespace"], u["pod"], u["container"], "UNMANAGED", "-", "-", "-", "-", "-",
                     "started while nri-zeropod was away"))
    from nri_zeropod.node.cli import _table

    _table(["NAMESPACE", "POD", "CONTAINER", "STATE", "SINCE", "RSS/SAVED", "WAKES", "LAST CHECKPOINT",
            "LAST RESTORE", "NOT SCALING DOWN BECAUSE"], rows)


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _size(n: int) -> str:
    return "-" if not n else f"{n / 1048576:.1f}Mi"


def _ms(s: float) -> str:
    return "-" if not s else f"{s * 1000:.0f}ms"
