"""Prometheus metrics, with zeropod's ``zeropod_*`` names, types and labels.

Histograms observe every checkpoint, restore and wake as it happens (zeropod
observes at most one per scrape). Everything else is read from the agent's
state table at scrape time by a collector, so a removed container's series
are gone at the next scrape; its histogram series are removed explicitly.

Labels are zeropod's: ``container``, ``pod``, ``namespace``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nri_zeropod.agent.lifecycle import State
from nri_zeropod.agent.store import Record

LABELS = ("container", "pod", "namespace")
# zeropod's buckets, with finer ones below 25 ms where our restores land.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.5, 5.0, 10.0)


def labels_of(rec: Record) -> tuple[str, str, str]:
    return rec.name, rec.pod_name, rec.pod_namespace


class StateCollector(Collector):
    """Gauges and counters derived from the records at scrape time."""

    def __init__(self, records: Callable[[], Iterable[Record]]) -> None:
        self.records = records

    def collect(self) -> Iterable[Any]:
        last_cp = GaugeMetricFamily("zeropod_last_checkpoint_time", "Unix time of the last checkpoint (ns)", labels=LABELS)
        last_rs = GaugeMetricFamily("zeropod_last_restore_time", "Unix time of the last restore (ns)", labels=LABELS)
        running = GaugeMetricFamily("zeropod_running", "1 if the app runs, 0 if it is scaled down", labels=LABELS)
        cp_err = CounterMetricFamily("zeropod_checkpoint_errors", "Failed checkpoints", labels=LABELS)
        rs_err = CounterMetricFamily("zeropod_restore_errors", "Failed restores", labels=LABELS)
        saved = GaugeMetricFamily(
            "zeropod_memory_saved_bytes", "Memory the app used when it was checkpointed (scaled-down containers)",
            labels=LABELS,
        )
        image = GaugeMetricFamily("zeropod_checkpoint_image_bytes", "Size of the checkpoint image on disk", labels=LABELS)
        managed = GaugeMetricFamily("zeropod_managed_containers", "Managed containers by state", labels=["state"])
        by_state = dict.fromkeys((s.value for s in State), 0)
        for rec in self.records():
            lbl = labels_of(rec)
            by_state[rec.state.value] += 1
            if rec.state == State.STOPPED:
                continue
            last_cp.add_metric(lbl, rec.last_checkpoint_at * 1e9)
            last_rs.add_metric(lbl, rec.last_restore_at * 1e9)
            running.add_metric(lbl, 1.0 if rec.state in (State.RUNNING, State.CHECKPOINTING) else 0.0)
            cp_err.add_metric(lbl, rec.checkpoint_errors)
            rs_err.add_metric(lbl, rec.restore_errors)
            scaled_down = rec.state == State.SCALED_DOWN
            saved.add_metric(lbl, rec.rss_at_checkpoint if scaled_down else 0)
            image.add_metric(lbl, rec.image_bytes if scaled_down else 0)
        for state, n in by_state.items():
            managed.add_metric([state], n)
        return [last_cp, last_rs, running, cp_err, rs_err, saved, image, managed]


class Metrics:
    """The agent's metrics on ``registry`` (a fresh one by default)."""

    def __init__(self, records: Callable[[], Iterable[Record]], *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.checkpoint = Histogram(
            "zeropod_checkpoint_duration_seconds", "Checkpoint durations", LABELS, buckets=BUCKETS,
            registry=self.registry,
        )
        self.restore = Histogram(
            "zeropod_restore_duration_seconds", "Restore durations", LABELS, buckets=BUCKETS, registry=self.registry
        )
        self.wake = Histogram(
            "zeropod_wake_latency_seconds", "First steered connection accepted until the app accepted it",
            LABELS, buckets=BUCKETS, registry=self.registry,
        )
        self.registry.register(StateCollector(records))

    def after_checkpoint(self, rec: Record, ok: bool) -> None:
        if ok:
            self.checkpoint.labels(*labels_of(rec)).observe(rec.last_checkpoint_seconds)

    def after_restore(self, rec: Record, ok: bool) -> None:
        if ok:
            self.restore.labels(*labels_of(rec)).observe(rec.last_restore_seconds)

    def woken(self, rec: Record, seconds: float) -> None:
        self.wake.labels(*labels_of(rec)).observe(seconds)

    def forget(self, rec: Record) -> None:
        for h in (self.checkpoint, self.restore, self.wake):
            try:
                h.remove(*labels_of(rec))
            except KeyError:
                pass


async def serve(registry: CollectorRegistry, addr: str) -> asyncio.AbstractServer:
    """Serve ``GET /metrics`` on ``host:port`` (an empty host: every address) from the event loop."""
    host, _, port = addr.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"metrics address {addr!r} is not HOST:PORT")

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while await asyncio.wait_for(reader.readline(), 10) not in (b"\r\n", b"\n", b""):
                pass  # the headers: nothing in them matters here
            parts = request.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1].split(b"?")[0] in (b"/metrics", b"/"):
                body, status = generate_latest(registry), b"200 OK"
            else:
                body, status = b"not found; try /metrics\n", b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + CONTENT_TYPE_LATEST.encode()
                         + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(client, host or None, int(port))
