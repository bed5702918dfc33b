"""Byte-level framing of the two layers NRI stacks on its unix socket.

Outside, the NRI multiplexer: ``conn id u32 BE | length u32 BE | payload``.
Inside each multiplexed connection, ttrpc: ``length u32 BE | stream id u32 BE |
type u8 | flags u8 | data``. Both decoders are incremental: feed them bytes in
any chunking with ``receive_data`` and pull whole frames with ``next_frame``
until it returns ``None``; bytes of an unfinished frame stay buffered.

Sizes follow the Go implementation (ttrpc v1.2.7, NRI v0.8): ttrpc data is at
most 4 MiB; a mux frame at most 10 bytes more. An oversized ttrpc message is
skipped and reported (Go does the same and answers ResourceExhausted); an
oversized mux frame breaks the trunk, since a Go runtime never sends one.

The writing side has one more rule, :func:`mux_frames_for_message`: the Go
reader sits on a 4096-byte ``bufio.Reader`` over the mux connection, and a mux
frame that starts a ttrpc message and is larger than that kills the
connection. So a message goes out as one frame when it fits in 4096 bytes,
else as its first 4096 bytes plus one frame with all the rest (what Go's own
``bufio.Writer`` does; many small frames would overflow Go's 256-frame queue).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from .errors import LocalProtocolError, RemoteProtocolError

TTRPC_HEADER = struct.Struct(">IIBB")
MUX_HEADER = struct.Struct(">II")
TTRPC_MAX_DATA = 4 << 20
MUX_MAX_PAYLOAD = TTRPC_HEADER.size + TTRPC_MAX_DATA
GO_READ_BUFFER = 4096


class MsgType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    DATA = 3  # streaming only; NRI has no streaming RPCs


@dataclass(frozen=True, slots=True)
class TtrpcFrame:
    stream_id: int
    msg_type: int
    flags: int
    data: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A ttrpc message larger than 4 MiB: its data is being skipped."""

    stream_id: int
    msg_type: int
    flags: int
    length: int


@dataclass(frozen=True, slots=True)
class MuxFrame:
    conn_id: int
    payload: bytes


def encode_ttrpc(*, stream_id: int, msg_type: int, flags: int = 0, data: bytes) -> bytes:
    if len(data) > TTRPC_MAX_DATA:
        raise LocalProtocolError(
            f"ttrpc message of {len(data)} bytes exceeds the {TTRPC_MAX_DATA}-byte limit", stream_id=stream_id
        )
    return TTRPC_HEADER.pack(len(data), stream_id, msg_type, flags) + data


def encode_mux(conn_id: int, payload: bytes) -> bytes:
    if len(payload) > MUX_MAX_PAYLOAD:
        raise LocalProtocolError(f"mux frame of {len(payload)} bytes exceeds {MUX_MAX_PAYLOAD}")
    return MUX_HEADER.pack(conn_id, len(payload)) + payload


def mux_frames_for_message(conn_id: int, message: bytes) -> bytes:
    """Frame one whole ttrpc message for the trunk, applying the 4096-byte rule."""
    if len(message) <= GO_READ_BUFFER:
        return encode_mux(conn_id, message)
    return encode_mux(conn_id, message[:GO_READ_BUFFER]) + encode_mux(conn_id, message[GO_READ_BUFFER:])


class TtrpcFrameDecoder:
    """Cuts one connection's byte stream into ttrpc frames."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discard = 0  # bytes of an oversized message still to skip

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def mid_frame(self) -> bool:
        return bool(self._buf) or self._discard > 0

    def next_frame(self) -> TtrpcFrame | OversizedFrame | None:
        if self._discard:
            n = min(self._discard, len(self._buf))
            del self._buf[:n]
            self._discard -= n
            if self._discard:
                return None
        if len(self._buf) < TTRPC_HEADER.size:
            return None
        length, stream_id, msg_type, flags = TTRPC_HEADER.unpack_from(self._buf)
        if length > TTRPC_MAX_DATA:
            del self._buf[: TTRPC_HEADER.size]
            self._discard = length
            return OversizedFrame(stream_id, msg_type, flags, length)
        end = TTRPC_HEADER.size + length
        if len(self._buf) < end:
            return None
        data = bytes(self._buf[TTRPC_HEADER.size : end])
        del self._buf[:end]
        return TtrpcFrame(stream_id, msg_type, flags, data)


class MuxFrameDecoder:
    """Cuts the trunk's byte stream into mux frames.

    After a :class:`RemoteProtocolError` the decoder stays broken: the frame
    boundaries are lost, so every later call raises again.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: RemoteProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def mid_frame(self) -> bool:
        return bool(self._buf)

    def next_frame(self) -> MuxFrame | None:
        if self._error is not None:
            raise self._error
        if len(self._buf) < MUX_HEADER.size:
            return None
        conn_id, length = MUX_HEADER.unpack_from(self._buf)
        if length > MUX_MAX_PAYLOAD:
            self._error = RemoteProtocolError(
                f"mux frame for conn {conn_id} announces {length} bytes, more than {MUX_MAX_PAYLOAD}"
            )
            raise self._error
        end = MUX_HEADER.size + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[MUX_HEADER.size : end])
        del self._buf[:end]
        return MuxFrame(conn_id, payload)
