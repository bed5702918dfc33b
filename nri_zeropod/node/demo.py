"""``nri-zeropod demo``: scale-to-zero on the local node, start to finish, in half a minute.

Brings the node up (if it is not), runs a Python web server that opted in
with a 3-second scale-down, shows its memory, waits for it to scale down by
itself, shows the memory again, wakes it with a request and prints how long
that took, then cleans up (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import socket
import time

from nri_zeropod.agent import admin
from nri_zeropod.cri import CRIClient
from nri_zeropod.node import node, pods
from nri_zeropod.node.config import NodeConfig

POD = "demo-web"
PORT = 8080
SCALEDOWN = 3


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="show scale-to-zero and the wake on the local node")
    d.add_argument("--keep", action="store_true", help="leave the node and the demo pod running")
    d.set_defaults(func=cmd_demo)


def _get(ip: str) -> tuple[float, str]:
    start = time.perf_counter()
    with socket.create_connection((ip, PORT), timeout=30) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
        data = s.recv(65536)
        took = time.perf_counter() - start
        while chunk := s.recv(65536):
            data += chunk
    status = data.split(b"\r\n", 1)[0].decode()
    body = data.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()
    return took, f"{status}: {body}"


def _status(cfg: NodeConfig, cid: str) -> dict:
    reply = admin.request(cfg.prefix / "agent.sock", {"op": "status"})
    return next(c for c in reply["containers"] if c["id"] == cid)


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n / 1024:.0f} KiB"


def cmd_demo(args: argparse.Namespace) -> int:
    from nri_zeropod import paths

    started = node.current() is None
    print("1. bringing the local node up (containerd with CRI and NRI, the nri-zeropod agent)")
    cfg = node.up(NodeConfig.from_env(paths.default_node_prefix()), log=lambda m: None)
    with CRIClient(str(cfg.containerd_sock)) as cri:
        if pods.find(cri, POD):
            pods.remove_pod(cri, cfg, POD, grace=2)  # left by an earlier --keep
        print(f"2. running pod {POD}: python http.server, annotations nri-zeropod.dev/enabled=true, "
              f"scaledown-duration={SCALEDOWN}s")
        pod = pods.run_pod(cri, cfg, pods.PodSpec(
            name=POD,
            annotations={"nri-zeropod.dev/enabled": "true", "nri-zeropod.dev/scaledown-duration": f"{SCALEDOWN}s"},
            containers=[pods.ContainerSpec(name="web", image="python", ports=[PORT])],
        ))
        cid = pod.containers["web"]
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    _, answer = _get(pod.ip)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            st = _status(cfg, cid)
            print(f"   http://{pod.ip}:{PORT}/ answers {answer!r}")
            print(f"   memory in use by the container: {_mib(st['rss_bytes'])}")
            print(f"3. no traffic now: waiting for it to scale down by itself ({SCALEDOWN}s idle)...")
            t0 = time.monotonic()
            while (st := _status(cfg, cid))["state"] != "SCALED_DOWN":
                if time.monotonic() - t0 > 60:
                    raise RuntimeError(f"it did not scale down: {st.get('busy') or st.get('last_error')}")
                time.sleep(0.1)
            print(f"   scaled down after {time.monotonic() - t0:.1f}s: checkpoint took "
                  f"{st['last_checkpoint_seconds'] * 1000:.0f} ms, image {_mib(st['image_bytes'])} on disk")
            print(f"   memory in use by the container now: {_mib(st['rss_bytes'])} (the keeper alone); "
                  f"the pod is still Running")
            time.sleep(1)
            print("4. a request arrives...")
            took, answer = _get(pod.ip)
            st = _status(cfg, cid)
            print(f"   answered {answer!r}")
            print(f"   woken in {took * 1000:.0f} ms from connect to first byte "
                  f"(restore {st['last_restore_seconds'] * 1000:.0f} ms); state {st['state']}, "
                  f"memory {_mib(st['rss_bytes'])}")
        finally:
            if args.keep:
                print(f"5. kept: try `nri-zeropod status`, `curl http://{pod.ip}:{PORT}/`; "
                      f"clean up with `nri-zeropod rm {POD}` and `nri-zeropod node down`")
            else:
                pods.remove_pod(cri, cfg, POD, grace=2)
    if not args.keep:
        if started:
            node.down(cfg, log=lambda m: None)
            print("5. cleaned up: pod removed, node down")
        else:
            print("5. cleaned up: pod removed (the node was up before the demo and stays up)")
    return 0
