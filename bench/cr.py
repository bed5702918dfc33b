"""Checkpoint/restore cost against memory size.

Brings up its own local node, runs a synthetic app holding 1, 64, 256 and
1024 MiB of touched memory in a managed container, checkpoints and restores
it 5 times per size through the agent, and prints one JSON object as the last
line: per size the median dump and restore times and image size, and the
least-squares fits ``restore_fixed_ms``/``restore_ms_per_mib`` and
``dump_fixed_ms``/``dump_ms_per_mib``.

``restore`` is the wake path: the restore the agent prepared right after the
dump (helper already inside the container, CRIU's kernel-feature cache in
place) started and waited for. ``restore_cold`` is the same restore prepared
on the spot, for comparison.

    .venv/bin/python bench/cr.py [--sizes 1,64,256,1024] [--cycles 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ENV = {
    "NRI_ZEROPOD_RUN": "/run/nri-zeropod-bench-cr",
    "NRI_ZEROPOD_NODE_PREFIX": "/var/lib/nri-zeropod-bench-cr",
    "NRI_ZEROPOD_BRIDGE": "nzcbr0",
    "NRI_ZEROPOD_SUBNET": "10.213.81.0/24",
    "NRI_ZEROPOD_METRICS_ADDR": "",
    "NRI_ZEROPOD_CGROUP": "/nri-zeropod-bench-cr",
}
os.environ.update(ENV)

from nri_zeropod.node import pods  # noqa: E402
from tests.e2e import kit  # noqa: E402

APP = r"""
import os, socket, sys
n = int(sys.argv[1]) << 20
b = bytearray(n)
for i in range(0, n, 4096):
    b[i] = (i >> 12) & 0xff or 1
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000))
s.listen(16)
while True:
    c, _ = s.accept()
    c.sendall(b"%d %d\n" % (len(b), sum(b[::1 << 20])))
    c.close()
"""


def ask(ip: str) -> bytes:
    with socket.create_connection((ip, 9000), timeout=10) as s:
        return s.recv(100)


def wait_ready(ip: str, timeout: float = 120) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ask(ip)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def measure(node: kit.Node, mib: int, cycles: int) -> dict[str, float]:
    name = f"cr-{mib}m"
    spec = pods.PodSpec(
        name=name,
        annotations={**kit.MANAGED, "nri-zeropod.dev/scaledown-duration": "0"},
        containers=[pods.ContainerSpec(name="app", image="python", command=["python3", "-c", APP, str(mib)])],
    )
    pod = node.run(spec)
    cid = pod.containers["app"]
    try:
        before = wait_ready(pod.ip)
        dumps, restores, colds, images = [], [], [], []
        for cycle in range(cycles * 2):
            dumps.append(kit.checkpoint(node, cid)["seconds"] * 1000)
            images.append(kit.status_of(node, cid)["image_bytes"] / 1048576)
            time.sleep(0.2)  # the prepared restore gets ready in the background
            cold = cycle % 2 == 1  # alternate the two kinds of restore
            reply = kit.admin(node, "restore", cid) if not cold else kit.admin_restore_cold(node, cid)
            assert reply["ok"], reply
            (colds if cold else restores).append(reply["seconds"] * 1000)
            assert ask(pod.ip) == before, "the app's memory must come back unchanged"
        return {
            "dump_ms": round(statistics.median(dumps), 1),
            "restore_ms": round(statistics.median(restores), 1),
            "restore_cold_ms": round(statistics.median(colds), 1),
            "image_mib": round(statistics.median(images), 1),
        }
    finally:
        node.rm(name)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,64,256,1024")
    ap.add_argument("--cycles", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    node = kit.Node.start(Path(ENV["NRI_ZEROPOD_NODE_PREFIX"]))
    try:
        results = {}
        for mib in sizes:
            results[str(mib)] = measure(node, mib, args.cycles)
            print(f"{mib} MiB: {results[str(mib)]}", file=sys.stderr, flush=True)
    finally:
        node.stop()
    rf, rs = fit([(float(m), r["restore_ms"]) for m, r in results.items()])
    cf, cs = fit([(float(m), r["restore_cold_ms"]) for m, r in results.items()])
    df, ds = fit([(float(m), r["dump_ms"]) for m, r in results.items()])
    out = {
        "sizes_mib": results,
        "restore_fixed_ms": round(rf, 1),
        "restore_ms_per_mib": round(rs, 3),
        "restore_cold_fixed_ms": round(cf, 1),
        "restore_cold_ms_per_mib": round(cs, 3),
        "dump_fixed_ms": round(df, 1),
        "dump_ms_per_mib": round(ds, 3),
        "cycles_per_size": args.cycles,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
