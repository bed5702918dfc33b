"""What a connected no-op NRI plugin adds to creating and starting a container on the real containerd.

The benchmark brings up its own node (its own prefix, run dir, bridge, subnet
and cgroup parent, set through the same environment variables the e2e tests
use, and without nri-zeropod's agent), creates one pod, and then times
CRI CreateContainer + StartContainer for N containers in that pod with a
no-op plugin connected and N without, in the same run. The two modes
alternate in blocks in ABBA order (without, with, with, without, ...) so that
slow drift of the node (containerd's state, page cache, the clock) affects
both modes alike. Each block begins with one untimed container, which absorbs
the plugin's connection (Synchronize) and containerd's pruning of the plugin
disconnected at the end of the previous block. Every container is stopped
and removed right after it is timed, untimed, so the pod never holds more
than two containers; the pod and the node go away at the end.

Figures go to stderr as it runs; the last line on stdout is one JSON object
with the medians and 99th percentiles (linear interpolation) in milliseconds.
It never fails on a time.

    sudo .venv/bin/python bench/nri_overhead.py [--containers 50] [--block 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nri_zeropod.node import pods  # noqa: E402
from tests.e2e import kit  # noqa: E402
from tests.e2e.nri_plugins import Noop, PluginThread  # noqa: E402

BENCH_ENV = {
    "NRI_ZEROPOD_RUN": "/run/nri-zeropod-bench",
    "NRI_ZEROPOD_NODE_PREFIX": "/var/lib/nri-zeropod-bench",
    "NRI_ZEROPOD_BRIDGE": "nzbbr0",
    "NRI_ZEROPOD_SUBNET": "10.213.80.0/24",
    "NRI_ZEROPOD_METRICS_ADDR": "",
    "NRI_ZEROPOD_CGROUP": "/nri-zeropod-bench",
}
POD = "nri-bench"
SLEEPER = ["sleep", "3600"]
WITHOUT, WITH = "without_plugin", "with_plugin"


def say(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, node: kit.Node) -> None:
        self.node = node
        self.spec = pods.PodSpec(POD, containers=[pods.ContainerSpec("anchor", "busybox", command=SLEEPER)])
        self.pod = node.run(self.spec)
        self.sandbox = pods.sandbox_config(node.cfg, self.spec, self.pod.uid)
        self.image = pods.resolve_image(node.cri, "busybox")
        self.count = 0

    def one(self) -> float:
        """Create and start one container; the seconds that took. It is removed afterwards, untimed."""
        self.count += 1
        c = pods.ContainerSpec(f"c{self.count}", "busybox", command=SLEEPER)
        config = pods.container_config(self.spec, c, uid=self.pod.uid, image=self.image)
        t0 = time.perf_counter()
        cid = self.node.cri.create_container(self.pod.id, config, self.sandbox)
        self.node.cri.start_container(cid)
        took = time.perf_counter() - t0
        self.node.cri.stop_container(cid, timeout=0)
        self.node.cri.remove_container(cid)
        return took

    def block(self, size: int, *, plugin: bool) -> list[float]:
        thread = None
        if plugin:
            thread = PluginThread(Noop(name="bench-noop", idx="50"), self.node.cfg.nri_sock)
            thread.ready()
        try:
            self.one()  # untimed: see the module docstring
            return [self.one() for _ in range(size)]
        finally:
            if thread is not None:
                if not thread.connected:
                    raise RuntimeError(f"the no-op plugin was dropped: {thread.running.exception()!r}")
                thread.stop()


def abba(blocks: int) -> Iterator[str]:
    """without, with, with, without, without, with, ...: any even number of blocks is balanced."""
    pattern = (WITHOUT, WITH, WITH, WITHOUT)
    for i in range(blocks):
        yield pattern[i % 4]


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def summary(times: dict[str, list[float]]) -> dict[str, float | int]:
    ms = {mode: [t * 1000 for t in ts] for mode, ts in times.items()}
    out: dict[str, float | int] = {}
    for mode in (WITHOUT, WITH):
        out[f"{mode}_p50_ms"] = round(statistics.median(ms[mode]), 2)
        out[f"{mode}_p99_ms"] = round(p99(ms[mode]), 2)
    out["added_p50_ms"] = round(out[f"{WITH}_p50_ms"] - out[f"{WITHOUT}_p50_ms"], 2)
    out["p50_ratio"] = round(out[f"{WITH}_p50_ms"] / out[f"{WITHOUT}_p50_ms"], 3)
    out["containers_per_mode"] = len(ms[WITH])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--containers", type=int, default=50, help="timed containers per mode")
    parser.add_argument("--block", type=int, default=5, help="containers per block of one mode")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root (it runs containerd)")
    if args.containers % args.block:
        parser.error("--containers must be a multiple of --block")

    os.environ.update(BENCH_ENV)  # never the developer's own node, never the e2e tests' node
    say(f"bringing up a node under {BENCH_ENV['NRI_ZEROPOD_NODE_PREFIX']} (no agent)")
    node = kit.Node.start(Path(BENCH_ENV["NRI_ZEROPOD_NODE_PREFIX"]), agent=False)
    try:
        bench = Bench(node)
        bench.one()  # warm the image, snapshotter and shim paths once
        times: dict[str, list[float]] = {WITHOUT: [], WITH: []}
        for mode in abba(2 * args.containers // args.block):
            block = bench.block(args.block, plugin=mode == WITH)
            times[mode].extend(block)
            say(f"{mode:15s} " + " ".join(f"{t * 1000:6.1f}" for t in block) + " ms")
        result = summary(times)
    finally:
        try:
            kit.remove_now(node, POD)  # sleep as pid 1 ignores SIGTERM
        finally:
            node.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
