"""Small value types and object bodies shared by the writer and its callers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

EVENT_TYPES = ("Normal", "Warning")
MAX_EVENT_MESSAGE = 1024  # the events.k8s.io limit; core/v1 has none, but kubectl shows no more
MAX_GENERATE_NAME = 200  # the server appends 5 characters; names may have 253


@dataclass(frozen=True)
class PodRef:
    """Which pod a write is for; ``uid`` ties Events to this incarnation of the name."""

    namespace: str
    name: str
    uid: str | None = None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def event_body(
    pod: PodRef,
    *,
    reason: str,
    message: str,
    type: str = "Normal",
    container: str | None = None,
    component: str = "nri-zeropod",
    node: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A core/v1 Event about ``pod`` (and one of its containers), in the form kubelet writes them.

    ``kubectl describe pod`` finds it through ``involvedObject``; ``fieldPath``
    names the container the way kubelet's own container events do.
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"event type must be one of {EVENT_TYPES}, not {type!r}")
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    involved: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "namespace": pod.namespace, "name": pod.name}
    if pod.uid:
        involved["uid"] = pod.uid
    if container:
        involved["fieldPath"] = f"spec.containers{{{container}}}"
    source: dict[str, Any] = {"component": component}
    if node:
        source["host"] = node
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{pod.name}."[:MAX_GENERATE_NAME], "namespace": pod.namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:MAX_EVENT_MESSAGE],
        "type": type,
        "source": source,
        "reportingComponent": component,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    if node:
        body["reportingInstance"] = node[:128]
    return body
