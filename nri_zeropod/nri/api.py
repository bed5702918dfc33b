"""The NRI API surface: service names, events, masks and the message classes.

The message classes come from our own ``proto/nri_api.proto`` and are
re-exported here, so plugins write ``from nri_zeropod.nri import
ContainerAdjustment`` and never touch generated modules.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from .proto.nri_api_pb2 import (  # re-exported: plugins import message classes from here
    Empty as Empty,
    RegisterPluginRequest as RegisterPluginRequest,
    ConfigureRequest as ConfigureRequest,
    ConfigureResponse as ConfigureResponse,
    SynchronizeRequest as SynchronizeRequest,
    SynchronizeResponse as SynchronizeResponse,
    UpdateContainersRequest as UpdateContainersRequest,
    UpdateContainersResponse as UpdateContainersResponse,
    StateChangeEvent as StateChangeEvent,
    CreateContainerRequest as CreateContainerRequest,
    CreateContainerResponse as CreateContainerResponse,
    UpdateContainerRequest as UpdateContainerRequest,
    UpdateContainerResponse as UpdateContainerResponse,
    StopContainerRequest as StopContainerRequest,
    StopContainerResponse as StopContainerResponse,
    PodSandbox as PodSandbox,
    LinuxPodSandbox as LinuxPodSandbox,
    Container as Container,
    ContainerState as ContainerState,
    LinuxContainer as LinuxContainer,
    Mount as Mount,
    Hooks as Hooks,
    Hook as Hook,
    LinuxNamespace as LinuxNamespace,
    LinuxDevice as LinuxDevice,
    LinuxDeviceCgroup as LinuxDeviceCgroup,
    CDIDevice as CDIDevice,
    POSIXRlimit as POSIXRlimit,
    KeyValue as KeyValue,
    LinuxResources as LinuxResources,
    LinuxMemory as LinuxMemory,
    LinuxCPU as LinuxCPU,
    HugepageLimit as HugepageLimit,
    LinuxPids as LinuxPids,
    ContainerAdjustment as ContainerAdjustment,
    LinuxContainerAdjustment as LinuxContainerAdjustment,
    ContainerUpdate as ContainerUpdate,
    LinuxContainerUpdate as LinuxContainerUpdate,
    ContainerEviction as ContainerEviction,
    OptionalString as OptionalString,
    OptionalInt as OptionalInt,
    OptionalInt32 as OptionalInt32,
    OptionalUInt32 as OptionalUInt32,
    OptionalInt64 as OptionalInt64,
    OptionalUInt64 as OptionalUInt64,
    OptionalBool as OptionalBool,
    OptionalFileMode as OptionalFileMode,
)

# ttrpc service names as the Go code registers them (the proto package there).
PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"

DEFAULT_SOCKET_PATH = "/var/run/nri/nri.sock"
SOCKET_FD_ENV = "NRI_PLUGIN_SOCKET"  # set for plugins the runtime launches itself


class Event(enum.IntEnum):
    RUN_POD_SANDBOX = 1
    STOP_POD_SANDBOX = 2
    REMOVE_POD_SANDBOX = 3
    CREATE_CONTAINER = 4
    POST_CREATE_CONTAINER = 5
    START_CONTAINER = 6
    POST_START_CONTAINER = 7
    UPDATE_CONTAINER = 8
    POST_UPDATE_CONTAINER = 9
    STOP_CONTAINER = 10
    REMOVE_CONTAINER = 11
    UPDATE_POD_SANDBOX = 12  # NRI >= 0.10
    POST_UPDATE_POD_SANDBOX = 13  # NRI >= 0.10
    VALIDATE_CONTAINER_ADJUSTMENT = 14  # NRI >= 0.10

    @property
    def bit(self) -> int:
        return 1 << (self.value - 1)


# Masks the runtime accepts in ConfigureResponse: (1 << (LAST - 1)) - 1.
# Any bit beyond makes Configure fail and the runtime drop the plugin.
VALID_EVENTS_V0_8 = 0x7FF
VALID_EVENTS_V0_10 = 0x3FFF

# The handler method of the Plugin class for each event it can deliver.
HANDLER_NAMES: dict[Event, str] = {
    Event.RUN_POD_SANDBOX: "run_pod_sandbox",
    Event.STOP_POD_SANDBOX: "stop_pod_sandbox",
    Event.REMOVE_POD_SANDBOX: "remove_pod_sandbox",
    Event.CREATE_CONTAINER: "create_container",
    Event.POST_CREATE_CONTAINER: "post_create_container",
    Event.START_CONTAINER: "start_container",
    Event.POST_START_CONTAINER: "post_start_container",
    Event.UPDATE_CONTAINER: "update_container",
    Event.POST_UPDATE_CONTAINER: "post_update_container",
    Event.STOP_CONTAINER: "stop_container",
    Event.REMOVE_CONTAINER: "remove_container",
}

# Events whose error reply makes containerd fail the CRI operation; for all
# others an error is only logged by the runtime.
BLOCKING_EVENTS = frozenset(
    {Event.RUN_POD_SANDBOX, Event.CREATE_CONTAINER, Event.START_CONTAINER, Event.UPDATE_CONTAINER}
)


def event_mask(events: Iterable[Event]) -> int:
    mask = 0
    for event in events:
        mask |= event.bit
    return mask


def events_in_mask(mask: int) -> list[Event]:
    return [event for event in Event if mask & event.bit]
