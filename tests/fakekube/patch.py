"""JSON merge patch (RFC 7386) and the subset of strategic merge patch that pods need.

Strategic merge patch differs from merge patch only for lists: a list whose
field has ``patchStrategy: merge`` is merged item by item by its merge key
(``containers`` by ``name``) instead of replaced. The merge keys here are the
ones of the core/v1 Pod fields, looked up by field name, so the same table
serves a Pod and a Deployment's pod template. Supported directives:
``$patch: delete`` on a list item or a map, ``$patch: replace`` on a map;
``$setElementOrder/...``, ``$retainKeys`` and ``$deleteFromPrimitiveList/...``
are accepted and ignored. Order of a merged list follows apimachinery's
``mergeSortedSlice``: patch items in patch order, each item found only on the
server placed before the first patch item that came after it on the server,
so new items come first (as the kubectl patch task page shows).
"""

from __future__ import annotations

import copy
from typing import Any

# field name -> merge key, for fields with patchStrategy=merge in core/v1 (pods).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ownerReferences": "uid",
    "conditions": "type",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 MergePatch(Target, Patch): objects merge, null removes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply a strategic merge patch to ``target`` (a JSON document); a new document is returned."""
    return _merge_map(target if isinstance(target, dict) else {}, patch) if isinstance(patch, dict) else copy.deepcopy(patch)


def _merge_map(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(target)
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # $patch handled above; $setElementOrder/$retainKeys/... ignored
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            if value.get("$patch") == "delete":
                out.pop(key, None)
            else:
                out[key] = _merge_map(out[key] if isinstance(out.get(key), dict) else {}, value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, MERGE_KEYS[key])
        elif isinstance(value, list) and key in MERGE_KEYS:
            out[key] = [copy.deepcopy(v) for v in value if not (isinstance(v, dict) and v.get("$patch") == "delete")]
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_list(target: list[Any], patch: list[Any], key: str) -> list[Any]:
    server_index = {item.get(key): i for i, item in enumerate(target) if isinstance(item, dict)}
    by_key = {item.get(key): item for item in target if isinstance(item, dict)}
    deleted: set[Any] = set()
    patched: list[dict[str, Any]] = []
    for item in patch:
        if not isinstance(item, dict):
            raise ValueError(f"list merged by {key!r} has a non-object item: {item!r}")
        k = item.get(key)
        if item.get("$patch") == "delete":
            deleted.add(k)
            continue
        patched.append(_merge_map(by_key.get(k, {}), item))
    in_patch = {p.get(key) for p in patched}
    server_only = [t for t in target if isinstance(t, dict) and t.get(key) not in in_patch and t.get(key) not in deleted]
    # mergeSortedSlice: insert each server-only item before the first patch item
    # that the server had after it; patch items the server lacks rank lowest.
    out: list[Any] = list(patched)
    patched_ids = {id(p) for p in patched}
    cursor = 0
    for item in server_only:
        rank = server_index[item.get(key)]
        pos = cursor
        while pos < len(out) and not (id(out[pos]) in patched_ids and server_index.get(out[pos].get(key), -1) > rank):
            pos += 1
        out.insert(pos, copy.deepcopy(item))
        cursor = pos + 1
    return out
