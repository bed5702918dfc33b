"""Label and annotation keys, and values, that the agent writes on pods.

Ours live under ``nri-zeropod.dev``; zeropod's status label
(``status.zeropod.ctrox.dev/<container>``, reference §2.2) can be written too,
so dashboards and selectors built for zeropod keep working.
"""

from __future__ import annotations

import enum

STATUS_LABEL_PREFIX = "status.nri-zeropod.dev/"
ZEROPOD_STATUS_LABEL_PREFIX = "status.zeropod.ctrox.dev/"
ORIGINAL_REQUESTS = "nri-zeropod.dev/original-requests"  # JSON {container: {cpu, memory}}
NAMESPACE_ENABLED = "nri-zeropod.dev/enabled"  # namespace label, value "true"


class Status(str, enum.Enum):
    """The values of the status labels (the same words as zeropod's)."""

    RUNNING = "RUNNING"
    SCALED_DOWN = "SCALED_DOWN"


def status_label(container: str) -> str:
    return STATUS_LABEL_PREFIX + container


def zeropod_status_label(container: str) -> str:
    return ZEROPOD_STATUS_LABEL_PREFIX + container
