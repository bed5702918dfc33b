"""A small asyncio client for the parts of the Kubernetes API the agent uses.

No third-party Kubernetes library: :mod:`.config` finds the server and
credentials (in-cluster, a kubeconfig, or none), :mod:`.http` speaks
HTTP/1.1 over asyncio streams, :mod:`.client` maps calls and status codes
(:mod:`.errors`), :mod:`.namespaces` keeps a never-blocking copy of namespace
labels by list + watch, :mod:`.writer` performs status labels, Events and
request resizes in the background, and :mod:`.resize` computes the resize
patches. Settings are in :mod:`.settings`.
"""

from __future__ import annotations

from .client import MERGE_PATCH, STRATEGIC_MERGE_PATCH, KubeClient, WatchEvent
from .config import KubeConfig, load_config
from .errors import (
    ApiError,
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    KubeError,
    NotFound,
    RequestTimeout,
    ServerError,
    TooManyRequests,
    TransportError,
    Unauthorized,
)
from .keys import NAMESPACE_ENABLED, ORIGINAL_REQUESTS, Status, status_label, zeropod_status_label
from .namespaces import NamespaceCache
from .objects import PodRef, event_body
from .settings import Backoff, HttpSettings, WatchSettings, WriterSettings
from .writer import Writer, WriterStats

__all__ = [
    "MERGE_PATCH", "NAMESPACE_ENABLED", "ORIGINAL_REQUESTS", "STRATEGIC_MERGE_PATCH",
    "ApiError", "Backoff", "BadRequest", "ConfigError", "Conflict", "Forbidden", "Gone", "HttpSettings",
    "Invalid", "KubeClient", "KubeConfig", "KubeError", "NamespaceCache", "NotFound",
    "PodRef", "RequestTimeout", "ServerError", "Status", "TooManyRequests", "TransportError", "Unauthorized",
    "WatchEvent", "WatchSettings", "Writer", "WriterSettings", "WriterStats",
    "event_body", "load_config", "status_label", "zeropod_status_label",
]
