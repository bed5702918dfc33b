"""Shrinking a scaled-down container's resource requests in place, and restoring them.

While a container is checkpointed it uses no CPU and almost no memory, yet its
requests still reserve node capacity. Like zeropod's manager (reference
§1.4k) we lower the CPU request to ``1m`` and the memory request to ``1Ki``
through an in-place resize, and put the originals back on restore:

- only resources that *have* a request are changed (adding one where there
  was none would change the pod's QoS class, which a resize may not do);
- limits are never touched;
- a Guaranteed pod is left alone: lowering a request below its limit would
  make it Burstable, which the API server rejects;
- a resource whose ``resizePolicy`` is ``RestartContainer`` is left alone: the
  kubelet would restart the very container we just checkpointed.

The originals are stored before the shrink in the pod annotation
``nri-zeropod.dev/original-requests`` (JSON ``{container: {cpu, memory}}``)
so that an agent restart between shrink and restore loses nothing; the
container's entry is removed after the restore, so that a later, legitimate
resize by the user is never undone with stale numbers.

Everything here is pure: pod dicts in, patch dicts out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .keys import ORIGINAL_REQUESTS

SHRUNK = {"cpu": "1m", "memory": "1Ki"}


@dataclass(frozen=True)
class Plan:
    """The writes of one shrink or restore, in the order they must happen."""

    annotation: dict[str, Any] | None  # JSON merge patch of the pod (metadata.annotations)
    resize: dict[str, Any] | None  # strategic merge patch for pods/{name}/resize
    annotation_first: bool  # shrink: store originals, then resize; restore: resize, then forget


def container_spec(pod: Mapping[str, Any], container: str) -> dict[str, Any] | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            return dict(c)
    return None


def requests_of(pod: Mapping[str, Any], container: str) -> dict[str, str]:
    """The container's cpu and memory requests that are set, as quantity strings."""
    return _requests(container_spec(pod, container) or {})


def _requests(c: Mapping[str, Any]) -> dict[str, str]:
    requests = (c.get("resources") or {}).get("requests") or {}
    return {k: str(requests[k]) for k in SHRUNK if requests.get(k) is not None}


def originals(pod: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The stored originals of every container; {} when absent or unreadable."""
    raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(ORIGINAL_REQUESTS)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(c): {str(k): str(v) for k, v in r.items()} for c, r in value.items() if isinstance(r, dict)}


def is_guaranteed(pod: Mapping[str, Any]) -> bool:
    qos = (pod.get("status") or {}).get("qosClass")
    if qos:
        return bool(qos == "Guaranteed")
    containers = (pod.get("spec") or {}).get("containers") or []
    if not containers:
        return False
    for c in containers:
        res = c.get("resources") or {}
        limits, requests = res.get("limits") or {}, res.get("requests") or {}
        for k in SHRUNK:
            if k not in limits or str(requests.get(k, limits[k])) != str(limits[k]):
                return False
    return True


def resize_patch(container: str, requests: Mapping[str, str]) -> dict[str, Any]:
    """A strategic merge patch setting ``requests`` of one container (merged by name)."""
    return {"spec": {"containers": [{"name": container, "resources": {"requests": dict(requests)}}]}}


def annotation_patch(stored: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """A JSON merge patch storing ``stored`` as the originals annotation (removing it when empty)."""
    value = json.dumps(dict(stored), sort_keys=True, separators=(",", ":")) if stored else None
    return {"metadata": {"annotations": {ORIGINAL_REQUESTS: value}}}


def with_resource_version(patch: Mapping[str, Any], resource_version: str | None) -> dict[str, Any]:
    """``patch`` that fails with 409 Conflict unless the pod is still at ``resource_version``."""
    out = dict(patch)
    if resource_version:
        out["metadata"] = {**(out.get("metadata") or {}), "resourceVersion": resource_version}
    return out


def shrinkable(pod: Mapping[str, Any], container: str) -> dict[str, str]:
    """The current requests of ``container`` that may be shrunk (see the module docstring)."""
    c = container_spec(pod, container)
    if c is None or is_guaranteed(pod):
        return {}
    restart = {p.get("resourceName") for p in c.get("resizePolicy") or [] if p.get("restartPolicy") == "RestartContainer"}
    return {k: v for k, v in _requests(c).items() if k not in restart}


def shrink_plan(pod: Mapping[str, Any], container: str) -> Plan | None:
    """The writes that lower ``container``'s requests to 1m CPU / 1Ki memory; None if there is nothing to do."""
    current = shrinkable(pod, container)
    if not current:
        return None
    stored = originals(pod)
    annotation = None
    if container not in stored:
        # Never record already-shrunk values as originals (a shrink whose
        # annotation was lost, or one made by someone else).
        keep = {k: v for k, v in current.items() if v != SHRUNK[k]}
        if keep:
            annotation = annotation_patch({**stored, container: keep})
    target = {k: SHRUNK[k] for k, v in current.items() if v != SHRUNK[k]}
    if not target and annotation is None:
        return None
    return Plan(annotation, resize_patch(container, target) if target else None, annotation_first=True)


def restore_plan(pod: Mapping[str, Any], container: str) -> Plan | None:
    """The writes that put ``container``'s stored original requests back; None if none are stored."""
    stored = originals(pod)
    saved = stored.get(container)
    if saved is None:
        return None
    current = requests_of(pod, container)
    target = {k: v for k, v in saved.items() if k in current and current[k] != v}
    rest = {c: r for c, r in stored.items() if c != container}
    return Plan(annotation_patch(rest), resize_patch(container, target) if target else None, annotation_first=False)
