"""Sans-I/O NRI trunk: the multiplexer plus one ttrpc connection per channel.

NRI runs two ttrpc connections over one unix socket. Mux conn 1 carries the
Plugin service (the runtime calls, the plugin serves); conn 2 carries the
Runtime service (the plugin calls RegisterPlugin and UpdateContainers). An
:class:`NriConnection` is built for one side of that arrangement, so the same
code serves a plugin and, in tests, a runtime.

Incoming mux frames are appended to their channel's ttrpc byte stream, so a
ttrpc message split over several frames (as the runtime does for anything
over 4096 bytes) is reassembled there. Frames for any other conn ID are
dropped, as Go's mux does, and reported as :class:`FrameDropped`. Outgoing
messages are framed by :func:`frames.mux_frames_for_message`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError
from .frames import MuxFrameDecoder, mux_frames_for_message
from .ttrpc import NEED_DATA, NeedData, Request, Response, Role, TtrpcConnection, TtrpcEvent

PLUGIN_SERVICE_CONN = 1
RUNTIME_SERVICE_CONN = 2


class Side(enum.Enum):
    PLUGIN = "plugin"
    RUNTIME = "runtime"


_ROLES: dict[Side, dict[int, Role]] = {
    Side.PLUGIN: {PLUGIN_SERVICE_CONN: Role.SERVER, RUNTIME_SERVICE_CONN: Role.CLIENT},
    Side.RUNTIME: {PLUGIN_SERVICE_CONN: Role.CLIENT, RUNTIME_SERVICE_CONN: Role.SERVER},
}


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    conn_id: int
    event: TtrpcEvent


@dataclass(frozen=True, slots=True)
class FrameDropped:
    """A mux frame for a conn ID nobody serves (0 is reserved, 3+ unused)."""

    conn_id: int
    size: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the trunk. ``unfinished`` names channels left mid-message."""

    unfinished: tuple[int, ...] = ()


MuxEvent = ChannelEvent | FrameDropped | ConnectionClosed


class NriConnection:
    def __init__(self, side: Side = Side.PLUGIN) -> None:
        self.side = side
        self._mux = MuxFrameDecoder()
        self._channels = {cid: TtrpcConnection(role) for cid, role in _ROLES[side].items()}
        self._eof = False

    @property
    def client_conn(self) -> int:
        return next(cid for cid, ch in self._channels.items() if ch.role is Role.CLIENT)

    def channel(self, conn_id: int) -> TtrpcConnection:
        return self._channels[conn_id]

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket; ``b""`` means end of file."""
        if not data:
            self._eof = True
        else:
            self._mux.receive_data(data)

    def next_event(self) -> MuxEvent | NeedData:
        while True:
            for cid, channel in self._channels.items():
                event = channel.next_event()
                if not isinstance(event, NeedData):
                    return ChannelEvent(cid, event)
            frame = self._mux.next_frame()
            if frame is None:
                return self._no_frame()
            channel_for = self._channels.get(frame.conn_id)
            if channel_for is None:
                return FrameDropped(frame.conn_id, len(frame.payload))
            channel_for.receive_data(frame.payload)

    def _no_frame(self) -> ConnectionClosed | NeedData:
        if not self._eof:
            return NEED_DATA
        if self._mux.mid_frame:
            raise RemoteProtocolError("connection closed in the middle of a mux frame")
        unfinished = tuple(cid for cid, ch in self._channels.items() if ch.mid_message)
        return ConnectionClosed(unfinished)

    def start_request(self, *, service: str, method: str, payload: bytes = b"", timeout_nano: int = 0) -> Request:
        """A request on this side's client channel, with its stream ID allocated."""
        return self._channels[self.client_conn].start_request(
            service=service, method=method, payload=payload, timeout_nano=timeout_nano
        )

    def send(self, conn_id: int, event: Request | Response) -> bytes:
        """The bytes to write to the trunk for one whole ttrpc message."""
        channel = self._channels.get(conn_id)
        if channel is None:
            raise LocalProtocolError(f"no channel {conn_id} on the {self.side.value} side")
        return mux_frames_for_message(conn_id, channel.send(event))
