"""The metrics on a fresh registry, for a given state table."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from nri_zeropod.agent.lifecycle import State
from nri_zeropod.agent.metrics import Metrics
from nri_zeropod.agent.store import Record


def rec(name: str, state: State, **kw: object) -> Record:
    r = Record(id=f"id-{name}", name=name, pod_id="pod-1", pod_name="web", pod_namespace="shop")
    r.state = state
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def sample(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_state_table_samples() -> None:
    table = [
        rec("a", State.RUNNING, last_checkpoint_at=100.0, last_restore_at=200.5, checkpoint_errors=2,
            rss_at_checkpoint=5 << 20, image_bytes=6 << 20),
        rec("b", State.SCALED_DOWN, last_checkpoint_at=300.0, restore_errors=1, rss_at_checkpoint=7 << 20,
            image_bytes=8 << 20),
        rec("c", State.STOPPED),
    ]
    reg = CollectorRegistry()
    Metrics(lambda: table, registry=reg)
    a = {"container": "a", "pod": "web", "namespace": "shop"}
    b = {**a, "container": "b"}
    assert sample(reg, "zeropod_running", **a) == 1.0
    assert sample(reg, "zeropod_running", **b) == 0.0
    assert sample(reg, "zeropod_last_checkpoint_time", **a) == 100e9
    assert sample(reg, "zeropod_last_restore_time", **a) == 200.5e9
    assert sample(reg, "zeropod_checkpoint_errors_total", **a) == 2
    assert sample(reg, "zeropod_restore_errors_total", **b) == 1
    # Memory saved and image size only while scaled down.
    assert sample(reg, "zeropod_memory_saved_bytes", **a) == 0
    assert sample(reg, "zeropod_memory_saved_bytes", **b) == 7 << 20
    assert sample(reg, "zeropod_checkpoint_image_bytes", **b) == 8 << 20
    # A stopped container has no per-container series, but is counted by state.
    assert sample(reg, "zeropod_running", container="c", pod="web", namespace="shop") is None
    assert sample(reg, "zeropod_managed_containers", state="RUNNING") == 1
    assert sample(reg, "zeropod_managed_containers", state="SCALED_DOWN") == 1
    assert sample(reg, "zeropod_managed_containers", state="STOPPED") == 1
    assert sample(reg, "zeropod_managed_containers", state="RESTORING") == 0


def test_histograms_observe_every_event_and_forget_removes_series() -> None:
    table: list[Record] = []
    reg = CollectorRegistry()
    m = Metrics(lambda: table, registry=reg)
    r = rec("a", State.RUNNING, last_checkpoint_seconds=0.04, last_restore_seconds=0.012)
    lbl = {"container": "a", "pod": "web", "namespace": "shop"}
    for _ in range(3):
        m.after_checkpoint(r, True)
        m.after_restore(r, True)
    m.after_checkpoint(r, False)  # a failure is an error count, not a duration
    m.woken(r, 0.02)
    assert sample(reg, "zeropod_checkpoint_duration_seconds_count", **lbl) == 3
    assert sample(reg, "zeropod_checkpoint_duration_seconds_sum", **lbl) == 3 * 0.04
    assert sample(reg, "zeropod_restore_duration_seconds_count", **lbl) == 3
    assert sample(reg, "zeropod_restore_duration_seconds_bucket", le="0.025", **lbl) == 3
    assert sample(reg, "zeropod_restore_duration_seconds_bucket", le="0.01", **lbl) == 0
    assert sample(reg, "zeropod_wake_latency_seconds_count", **lbl) == 1
    m.forget(r)
    assert sample(reg, "zeropod_checkpoint_duration_seconds_count", **lbl) is None
    assert sample(reg, "zeropod_wake_latency_seconds_count", **lbl) is None
    m.forget(r)  # twice is fine
