"""Metrics, status and logs through a checkpoint and a wake."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from nri_zeropod.node import pods
from tests.e2e import kit
from tests.helpers import eventually


def scrape(node: kit.Node) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    host, _, port = node.cfg.metrics_addr.rpartition(":")
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_through_a_checkpoint_and_a_wake(node: kit.Node) -> None:
    name = kit.unique("metrics")
    pod = node.run(pods.PodSpec(name=name, annotations={**kit.MANAGED, "nri-zeropod.dev/scaledown-duration": "0"},
                                containers=[pods.ContainerSpec(name="web", image="busybox", ports=[8080])]))
    cid = pod.containers["web"]
    lbl = {"container": "web", "pod": name, "namespace": "default"}
    try:
        eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)
        before = scrape(node)
        assert val(before, "zeropod_running", **lbl) == 1.0
        assert val(before, "zeropod_checkpoint_duration_seconds_count", **lbl) is None
        for _ in range(2):
            kit.checkpoint(node, cid)
            down = scrape(node)
            assert val(down, "zeropod_running", **lbl) == 0.0
            assert val(down, "zeropod_memory_saved_bytes", **lbl) > 0
            assert val(down, "zeropod_checkpoint_image_bytes", **lbl) > 0
            assert kit.http_get(pod.ip, 8080)[0] == 200  # the wake
        up = scrape(node)
        # Every checkpoint and restore is observed, not only the last one before a scrape.
        assert val(up, "zeropod_checkpoint_duration_seconds_count", **lbl) == 2
        assert val(up, "zeropod_restore_duration_seconds_count", **lbl) == 2
        assert val(up, "zeropod_wake_latency_seconds_count", **lbl) == 2
        assert 0 < val(up, "zeropod_restore_duration_seconds_sum", **lbl) < 10
        assert val(up, "zeropod_running", **lbl) == 1.0
        assert val(up, "zeropod_checkpoint_errors_total", **lbl) == 0
        assert val(up, "zeropod_restore_errors_total", **lbl) == 0
        assert val(up, "zeropod_last_restore_time", **lbl) > val(up, "zeropod_last_checkpoint_time", **lbl) > 0
        assert val(up, "zeropod_managed_containers", state="RUNNING") >= 1
    finally:
        node.rm(name)
    def series_gone() -> dict | None:
        s = scrape(node)
        return s if val(s, "zeropod_running", **lbl) is None else None

    gone = eventually(series_gone, timeout=10, what="series gone after removal")
    assert not [k for k in gone if dict(k[1]).get("pod") == name]


def test_status_says_why_a_busy_container_is_not_scaling_down(node: kit.Node) -> None:
    name = kit.unique("busy")
    pod = node.run(pods.PodSpec(name=name, annotations={**kit.MANAGED, "nri-zeropod.dev/scaledown-duration": "1s"},
                                containers=[pods.ContainerSpec(name="web", image="busybox", ports=[8080])]))
    cid = pod.containers["web"]
    try:
        eventually(lambda: kit.http_get(pod.ip, 8080)[0] == 200, timeout=10)
        with socket.create_connection((pod.ip, 8080), timeout=5), socket.create_connection((pod.ip, 8080), timeout=5):
            time.sleep(3)
            st = kit.status_of(node, cid)
            assert st["state"] == "RUNNING" and st["busy"] == "2 established connections"
            res = kit.cli("status", "--json")
            assert res.returncode == 0, res.stderr
            row = next(c for c in json.loads(res.stdout)["containers"] if c["id"] == cid)
            assert row["busy"] == "2 established connections"
            table = kit.cli("status")
            line = next(line for line in table.stdout.splitlines() if name in line)
            assert "2 established connections" in line and "RUNNING" in line
        eventually(lambda: kit.status_of(node, cid)["state"] == "SCALED_DOWN", timeout=10)
    finally:
        node.rm(name)


def test_checkpoint_and_restore_log_lines_carry_pod_container_and_duration(node: kit.Node) -> None:
    name = kit.unique("logs")
    pod = node.run(pods.PodSpec(name=name, annotations={**kit.MANAGED, "nri-zeropod.dev/scaledown-duration": "0"},
                                containers=[pods.ContainerSpec(name="web", image="busybox", ports=[8080])]))
    try:
        kit.checkpoint(node, pod.containers["web"])
        kit.restore(node, pod.containers["web"])
    finally:
        node.rm(name)
    lines = [json.loads(line) for line in kit.agent_log(node).splitlines() if line.startswith("{") and name in line]
    ops = {e["msg"]: e for e in lines if e["msg"] in ("checkpointed", "restored")}
    assert set(ops) == {"checkpointed", "restored"}
    for e in ops.values():
        assert e["pod"] == f"default/{name}" and e["container"] == "web"
        assert 0 < e["duration"] < 10 and e["level"] == "info" and "time" in e
