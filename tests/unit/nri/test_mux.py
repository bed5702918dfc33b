"""The NRI trunk: reassembly across mux frames, dropped channels, end of file."""

from __future__ import annotations

import pytest

from nri_zeropod.nri.errors import LocalProtocolError, RemoteProtocolError
from nri_zeropod.nri.frames import encode_mux
from nri_zeropod.nri.mux import ChannelEvent, ConnectionClosed, FrameDropped, NriConnection, Side
from nri_zeropod.nri.ttrpc import NEED_DATA, Request, Response


def drain(conn: NriConnection) -> list[object]:
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return out


def runtime_request(sid: int, payload: bytes) -> bytes:
    """A whole ttrpc request as the runtime's client on conn 1 would encode it."""
    runtime = NriConnection(Side.RUNTIME)
    for _ in range(sid // 2):
        runtime.send(1, runtime.start_request(service="S", method="skip"))
    request = runtime.start_request(service="S", method="M", payload=payload)
    assert request.stream_id == sid
    wire = runtime.send(1, request)
    return _unframe(wire)


def _unframe(wire: bytes) -> bytes:
    out, i = b"", 0
    while i < len(wire):
        length = int.from_bytes(wire[i + 4 : i + 8], "big")
        out += wire[i + 8 : i + 8 + length]
        i += 8 + length
    return out


@pytest.mark.parametrize("pieces", [1, 2, 3, 17, 500])
def test_message_split_over_many_frames_is_reassembled(pieces: int) -> None:
    message = runtime_request(1, b"z" * 9000)
    step = -(-len(message) // pieces)
    wire = b"".join(encode_mux(1, message[i : i + step]) for i in range(0, len(message), step))
    plugin = NriConnection(Side.PLUGIN)
    plugin.receive_data(wire)
    [event] = drain(plugin)
    assert isinstance(event, ChannelEvent) and isinstance(event.event, Request)
    assert event.event.payload == b"z" * 9000


def test_byte_at_a_time_with_interleaved_channels() -> None:
    first = runtime_request(1, b"a" * 50)
    wire = encode_mux(1, first[:20]) + encode_mux(2, b"") + encode_mux(1, first[20:])
    plugin = NriConnection(Side.PLUGIN)
    got: list[object] = []
    for byte in wire:
        plugin.receive_data(bytes([byte]))
        got += drain(plugin)
    assert len(got) == 1 and isinstance(got[0], ChannelEvent) and got[0].conn_id == 1


@pytest.mark.parametrize("conn_id", [0, 3, 0xFFFFFFFF])
def test_frames_for_unknown_channels_are_dropped(conn_id: int) -> None:
    plugin = NriConnection(Side.PLUGIN)
    plugin.receive_data(encode_mux(conn_id, b"junk") + encode_mux(1, runtime_request(1, b"")))
    dropped, request = drain(plugin)
    assert dropped == FrameDropped(conn_id, 4)
    assert isinstance(request, ChannelEvent)


def test_clean_eof_and_eof_mid_message() -> None:
    plugin = NriConnection(Side.PLUGIN)
    plugin.receive_data(b"")
    assert drain(plugin) == [ConnectionClosed(())]

    plugin = NriConnection(Side.PLUGIN)
    plugin.receive_data(encode_mux(1, runtime_request(1, b"x")[:5]))
    plugin.receive_data(b"")
    assert drain(plugin) == [ConnectionClosed((1,))]


def test_eof_mid_mux_frame_is_a_remote_error() -> None:
    plugin = NriConnection(Side.PLUGIN)
    plugin.receive_data(encode_mux(1, b"abc")[:-1])
    plugin.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        plugin.next_event()


def test_sides_pair_up() -> None:
    plugin, runtime = NriConnection(Side.PLUGIN), NriConnection(Side.RUNTIME)
    assert (plugin.client_conn, runtime.client_conn) == (2, 1)
    runtime.receive_data(plugin.send(2, plugin.start_request(service="S", method="Up", payload=b"p" * 5000)))
    [event] = drain(runtime)
    assert isinstance(event, ChannelEvent) and event.conn_id == 2
    plugin.receive_data(runtime.send(2, Response(1, payload=b"r")))
    assert drain(plugin) == [ChannelEvent(2, Response(1, code=0, message="", payload=b"r"))]


def test_no_send_on_unknown_channel() -> None:
    with pytest.raises(LocalProtocolError):
        NriConnection().send(3, Response(1))
