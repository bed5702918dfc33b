"""A Python NRI (containerd Node Resource Interface) plugin library.

Layers, bottom up: :mod:`.frames` (byte framing), :mod:`.ttrpc` and
:mod:`.mux` (sans-I/O protocol state), :mod:`.transport` (asyncio),
:mod:`.dispatch` and :mod:`.plugin` (the plugin surface). Most users need
only what is exported here.
"""

from __future__ import annotations

from .api import (
    BLOCKING_EVENTS,
    DEFAULT_SOCKET_PATH,
    PLUGIN_SERVICE,
    RUNTIME_SERVICE,
    Container,
    ContainerAdjustment,
    ContainerEviction,
    ContainerUpdate,
    Event,
    KeyValue,
    LinuxContainerAdjustment,
    LinuxContainerUpdate,
    LinuxResources,
    Mount,
    PodSandbox,
)
from .errors import (
    Code,
    ConnectionLost,
    LocalProtocolError,
    NriError,
    ProtocolError,
    RegistrationError,
    Reject,
    RemoteProtocolError,
    RpcError,
    UpdateInHandlerError,
)
from .plugin import Plugin, validate_identity
from .runtime import RuntimeInfo

__all__ = [
    "BLOCKING_EVENTS",
    "DEFAULT_SOCKET_PATH",
    "PLUGIN_SERVICE",
    "RUNTIME_SERVICE",
    "Code",
    "ConnectionLost",
    "Container",
    "ContainerAdjustment",
    "ContainerEviction",
    "ContainerUpdate",
    "Event",
    "KeyValue",
    "LinuxContainerAdjustment",
    "LinuxContainerUpdate",
    "LinuxResources",
    "LocalProtocolError",
    "Mount",
    "NriError",
    "Plugin",
    "PodSandbox",
    "ProtocolError",
    "RegistrationError",
    "Reject",
    "RemoteProtocolError",
    "RpcError",
    "RuntimeInfo",
    "UpdateInHandlerError",
    "validate_identity",
]
