"""Wake latency against cold start, and throughput after a wake.

Brings up its own local node and, for busybox httpd, python http.server and
redis holding 50 MB: checkpoints the managed app (as an idle scale-down would)
and measures a client's connect → first response byte, 30 times; measures the
same images' cold start in the same run (CRI CreateContainer + StartContainer
in a running pod → first byte, as kubelet restarting a container); and runs wrk
against a woken nginx and an unmanaged one, alternately. Prints one JSON
object as the last line:

    {"apps": {NAME: {"wake_p50_ms", "wake_p99_ms", "cold_p50_ms", "wake_cold_ratio"}}, "throughput_ratio"}

    .venv/bin/python bench/wake.py [--wakes 30] [--colds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ENV = {
    "NRI_ZEROPOD_RUN": "/run/nri-zeropod-bench-wake",
    "NRI_ZEROPOD_NODE_PREFIX": "/var/lib/nri-zeropod-bench-wake",
    "NRI_ZEROPOD_BRIDGE": "nzwbr0",
    "NRI_ZEROPOD_SUBNET": "10.213.82.0/24",
    "NRI_ZEROPOD_METRICS_ADDR": "",
    "NRI_ZEROPOD_CGROUP": "/nri-zeropod-bench-wake",
}
os.environ.update(ENV)

from nri_zeropod.node import pods  # noqa: E402
from tests.e2e import kit  # noqa: E402

HTTP_GET = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nConnection: close\r\n\r\n"
REDIS_PING = b"*1\r\n$4\r\nPING\r\n"


def first_byte(ip: str, port: int, request: bytes, *, timeout: float = 30) -> float:
    """Seconds from starting to connect to the first byte of the answer."""
    start = time.perf_counter()
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.sendall(request)
        if not s.recv(1):
            raise RuntimeError("connection closed without an answer")
    return time.perf_counter() - start


def first_byte_retrying(ip: str, port: int, request: bytes, *, since: float, timeout: float = 60) -> float:
    """Like first_byte, but keeps trying every millisecond while nothing listens yet."""
    while True:
        try:
            with socket.create_connection((ip, port), timeout=5) as s:
                s.sendall(request)
                if s.recv(1):
                    return time.perf_counter() - since
        except OSError:
            pass
        if time.perf_counter() - since > timeout:
            raise TimeoutError(f"{ip}:{port} never answered")
        time.sleep(0.001)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


APPS: dict[str, dict] = {
    "busybox": {"image": "busybox", "port": 8080, "request": HTTP_GET},
    "python": {"image": "python", "port": 8080, "request": HTTP_GET},
    "redis-50mb": {"image": "redis", "port": 6379, "request": REDIS_PING, "fill": 50},
}


def wake_samples(node: kit.Node, name: str, app: dict, wakes: int) -> list[float]:
    spec = pods.PodSpec(name=f"wake-{name}", annotations={**kit.MANAGED, "nri-zeropod.dev/scaledown-duration": "0"},
                        containers=[pods.ContainerSpec(name="app", image=app["image"], ports=[app["port"]])])
    pod = node.run(spec)
    cid = pod.containers["app"]
    try:
        first_byte_retrying(pod.ip, app["port"], app["request"], since=time.perf_counter())
        if app.get("fill"):
            kit.fill_redis(pod.ip, app["fill"], key="blob", fill="x")
        samples = []
        for _ in range(wakes):
            kit.checkpoint(node, cid)
            time.sleep(0.3)  # a scaled-down app sits idle a while before anyone comes
            samples.append(first_byte(pod.ip, app["port"], app["request"]))
            assert kit.status_of(node, cid)["state"] == "RUNNING"
        return samples
    finally:
        node.rm(spec.name)


def cold_samples(node: kit.Node, name: str, app: dict, colds: int) -> list[float]:
    spec = pods.PodSpec(name=f"cold-{name}", containers=[pods.ContainerSpec(name="app", image=app["image"])])
    pod = node.run(spec)  # the sandbox stays; the container is created and started again and again
    node.cri.stop_container(pod.containers["app"], timeout=5)
    node.cri.remove_container(pod.containers["app"])
    sandbox = pods.sandbox_config(node.cfg, spec, pod.uid)
    samples = []
    try:
        for i in range(colds):
            c = pods.ContainerSpec(name="app", image=app["image"])
            config = pods.container_config(spec, c, uid=pod.uid, image=pods.resolve_image(node.cri, app["image"]))
            config.metadata.attempt = i + 1
            config.log_path = f"app/{i + 1}.log"
            start = time.perf_counter()
            cid = node.cri.create_container(pod.id, config, sandbox)
            node.cri.start_container(cid)
            samples.append(first_byte_retrying(pod.ip, app["port"], app["request"], since=start))
            node.cri.stop_container(cid, timeout=5)
            node.cri.remove_container(cid)
        return samples
    finally:
        node.rm(spec.name)


def wrk_rps(url: str, seconds: int = 3) -> float:
    # One wrk thread: the machine has two cores and the app needs its share.
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{seconds}s", url], capture_output=True, text=True, timeout=60)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if not m:
        raise RuntimeError(f"wrk: {out.stdout}{out.stderr}")
    return float(m.group(1))


def throughput_ratio(node: kit.Node, rounds: int = 12) -> dict[str, float]:
    """Requests/s of a woken nginx over an unmanaged one, from alternating rounds (medians).

    A managed nginx that was never checkpointed runs alongside, so that what a
    wake costs can be told from what being managed costs. Single wrk runs on
    this 2-vCPU machine vary by +-15 %, hence many short rounds.
    """
    spec = lambda name, managed: pods.PodSpec(  # noqa: E731
        name=name, annotations={**kit.MANAGED, "nri-zeropod.dev/scaledown-duration": "0"} if managed else {},
        containers=[pods.ContainerSpec(name="app", image="nginx", ports=[8080])])
    arms = {"woken": node.run(spec("tp-woken", True)), "unmanaged": node.run(spec("tp-plain", False)),
            "managed_never_checkpointed": node.run(spec("tp-fresh", True))}
    try:
        for p in arms.values():
            first_byte_retrying(p.ip, 8080, HTTP_GET, since=time.perf_counter())
        kit.checkpoint(node, arms["woken"].containers["app"])
        first_byte(arms["woken"].ip, 8080, HTTP_GET)  # the wake
        results: dict[str, list[float]] = {k: [] for k in arms}
        for i in range(rounds):
            order = list(arms.items())
            for name, target in order if i % 2 == 0 else order[::-1]:
                results[name].append(wrk_rps(f"http://{target.ip}:8080/"))
        med = {k: statistics.median(v) for k, v in results.items()}
        return {"ratio": med["woken"] / med["unmanaged"], **{f"{k}_rps": round(v) for k, v in med.items()}}
    finally:
        for p in arms.values():
            node.rm(p.name)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wakes", type=int, default=30)
    ap.add_argument("--colds", type=int, default=10)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wake.py: wrk is missing (hack/setup.sh installs it)")
    node = kit.Node.start(Path(ENV["NRI_ZEROPOD_NODE_PREFIX"]))
    results: dict[str, dict[str, float]] = {}
    try:
        for name, app in APPS.items():
            wakes = [s * 1000 for s in wake_samples(node, name, app, args.wakes)]
            colds = [s * 1000 for s in cold_samples(node, name, app, args.colds)]
            results[name] = {
                "wake_p50_ms": round(statistics.median(wakes), 1),
                "wake_p99_ms": round(pct(wakes, 99), 1),
                "wake_max_ms": round(max(wakes), 1),
                "cold_p50_ms": round(statistics.median(colds), 1),
                "wake_cold_ratio": round(statistics.median(wakes) / statistics.median(colds), 3),
            }
            print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
        tp = throughput_ratio(node)
    finally:
        node.stop()
    ratio = tp.pop("ratio")
    print(json.dumps({
        "apps": results,
        "throughput_ratio": round(ratio, 3),
        "throughput_rps": tp,
        "wakes_per_app": args.wakes,
        "colds_per_app": args.colds,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
