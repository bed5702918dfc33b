"""Pod annotations that configure nri-zeropod, and their parsing.

Every key exists under our prefix ``nri-zeropod.dev/`` and, for what zeropod
also has, under zeropod's ``zeropod.ctrox.dev/``; ours wins when both are set.
Parsing is strict: a value that does not parse makes the pod's containers run
unmanaged, and the error names the key and the value (the caller logs it once
with the pod and container).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

PREFIX = "nri-zeropod.dev/"
ZEROPOD_PREFIX = "zeropod.ctrox.dev/"

ENABLED = "enabled"
CONTAINER_NAMES = "container-names"
SCALEDOWN_DURATION = "scaledown-duration"
PORTS_MAP = "ports-map"
DISABLE_PROBE_DETECTION = "disable-probe-detection"

# zeropod keys we read; nri-zeropod's "enabled" has no zeropod twin (zeropod
# selects pods by RuntimeClass).
ALIASED = (CONTAINER_NAMES, SCALEDOWN_DURATION, PORTS_MAP, DISABLE_PROBE_DETECTION)

DEFAULT_SCALEDOWN = 60.0
MAX_VALUE_LEN = 4096
MAX_DURATION = 365 * 24 * 3600.0

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class AnnotationError(ValueError):
    def __init__(self, *, key: str, value: str, why: str) -> None:
        self.key, self.value, self.why = key, value, why
        shown = value if len(value) <= 80 else value[:77] + "..."
        super().__init__(f"annotation {key}={shown!r}: {why}")


@dataclass(frozen=True)
class Policy:
    """What the annotations say about one container."""

    managed: bool
    reason: str
    scaledown_seconds: float = DEFAULT_SCALEDOWN  # 0 = never scale down by itself
    ports: tuple[int, ...] | None = None  # None = the ports the app listens on
    probe_detection: bool = True


# zeropod annotations nri-zeropod does not implement; a pod using them gets one warning.
UNSUPPORTED = (
    "pre-dump", "disable-checkpointing", "probe-buffer-size", "connect-timeout", "proxy-timeout",
    "migrate", "live-migrate", "disable-migrate-data",
)


def unsupported(annotations: Mapping[str, str]) -> list[str]:
    return sorted(ZEROPOD_PREFIX + k for k in UNSUPPORTED if ZEROPOD_PREFIX + k in annotations)


def lookup(annotations: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(key, value) of ``name`` under our prefix, else under zeropod's."""
    for prefix in (PREFIX, ZEROPOD_PREFIX):
        if name == ENABLED and prefix == ZEROPOD_PREFIX:
            continue
        key = prefix + name
        if key in annotations:
            value = annotations[key]
            if len(value) > MAX_VALUE_LEN:
                raise AnnotationError(key=key, value=value, why=f"longer than {MAX_VALUE_LEN} characters")
            return key, value
    return None


def parse_bool(*, key: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise AnnotationError(key=key, value=value, why="not a boolean (true or false)")


def parse_duration(*, key: str, value: str) -> float:
    """A Go duration (``90s``, ``1m30s``, ``500ms``, ``0``) in seconds."""
    v = value.strip()
    if v == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(v):
        m = _DURATION_PART.match(v, pos)
        if not m:
            raise AnnotationError(key=key, value=value, why="not a duration (e.g. 30s, 5m, 1h30m, 0 for never)")
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not v:
        raise AnnotationError(key=key, value=value, why="empty duration")
    if total > MAX_DURATION:
        raise AnnotationError(key=key, value=value, why="longer than a year")
    return total


def parse_names(*, key: str, value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise AnnotationError(key=key, value=value, why="no container name given")
    for n in names:
        if not _NAME.match(n):
            raise AnnotationError(key=key, value=value, why=f"{n!r} is not a valid container name")
    return names


def parse_port(*, key: str, value: str, text: str) -> int:
    if not text.strip().isdigit():
        raise AnnotationError(key=key, value=value, why=f"{text.strip()!r} is not a port number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise AnnotationError(key=key, value=value, why=f"port {port} is out of range (1-65535)")
    return port


def parse_ports_map(*, key: str, value: str) -> dict[str, tuple[int, ...]]:
    """``c1=80,81;c2=8080`` → {"c1": (80, 81), "c2": (8080,)}."""
    out: dict[str, tuple[int, ...]] = {}
    for entry in (e.strip() for e in value.split(";")):
        if not entry:
            continue
        name, sep, ports = entry.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise AnnotationError(key=key, value=value, why=f"entry {entry!r} is not NAME=PORT[,PORT...]")
        if name in out:
            raise AnnotationError(key=key, value=value, why=f"container {name!r} is listed twice")
        out[name] = tuple(sorted({parse_port(key=key, value=value, text=p) for p in ports.split(",") if p.strip()}))
        if not out[name]:
            raise AnnotationError(key=key, value=value, why=f"no port given for {name!r}")
    if not out:
        raise AnnotationError(key=key, value=value, why="empty ports map")
    return out


def policy(annotations: Mapping[str, str], container: str, *, namespace_enabled: bool = False) -> Policy:
    """The policy for ``container`` of a pod with ``annotations``; raises AnnotationError on a bad value.

    A pod is enabled by ``nri-zeropod.dev/enabled: "true"`` or by its
    namespace (``namespace_enabled``); ``enabled: "false"`` opts a pod out of
    an enabled namespace.
    """
    found = lookup(annotations, ENABLED)
    enabled = namespace_enabled
    if found:
        enabled = parse_bool(key=found[0], value=found[1])
    # Every value is checked even when the pod is not enabled, so that typos show up.
    names = None
    if found := lookup(annotations, CONTAINER_NAMES):
        names = parse_names(key=found[0], value=found[1])
    scaledown = DEFAULT_SCALEDOWN
    if found := lookup(annotations, SCALEDOWN_DURATION):
        scaledown = parse_duration(key=found[0], value=found[1])
    ports_map = None
    if found := lookup(annotations, PORTS_MAP):
        ports_map = parse_ports_map(key=found[0], value=found[1])
    probes = True
    if found := lookup(annotations, DISABLE_PROBE_DETECTION):
        probes = not parse_bool(key=found[0], value=found[1])
    if not enabled:
        return Policy(False, "pod not enabled")
    if names is not None and container not in names:
        return Policy(False, "not listed in container-names")
    ports = ports_map.get(container) if ports_map else None
    return Policy(True, "enabled", scaledown_seconds=scaledown, ports=ports, probe_detection=probes)
