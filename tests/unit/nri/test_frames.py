"""Frame decoders in every chunking, size limits, and the 4096-byte outgoing rule."""

from __future__ import annotations

import struct

import pytest

from nri_zeropod.nri.errors import LocalProtocolError, RemoteProtocolError
from nri_zeropod.nri.frames import (
    GO_READ_BUFFER,
    MUX_MAX_PAYLOAD,
    TTRPC_MAX_DATA,
    MuxFrame,
    MuxFrameDecoder,
    OversizedFrame,
    TtrpcFrame,
    TtrpcFrameDecoder,
    encode_mux,
    encode_ttrpc,
    mux_frames_for_message,
)

TTRPC_FRAMES = [TtrpcFrame(1, 1, 0, b"hello"), TtrpcFrame(3, 2, 0, b""), TtrpcFrame(5, 1, 0, bytes(range(256)) * 20)]
TTRPC_WIRE = b"".join(
    encode_ttrpc(stream_id=f.stream_id, msg_type=f.msg_type, flags=f.flags, data=f.data) for f in TTRPC_FRAMES
)
MUX_FRAMES = [MuxFrame(1, b"abc"), MuxFrame(2, b""), MuxFrame(7, b"x" * 5000)]
MUX_WIRE = b"".join(encode_mux(f.conn_id, f.payload) for f in MUX_FRAMES)


def feed(decoder: TtrpcFrameDecoder | MuxFrameDecoder, data: bytes, chunk: int) -> list[object]:
    out: list[object] = []
    for i in range(0, len(data), chunk):
        decoder.receive_data(data[i : i + chunk])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    return out


@pytest.mark.parametrize("chunk", [len(TTRPC_WIRE), 1, 7, 4096])
def test_ttrpc_decoder_any_chunking(chunk: int) -> None:
    decoder = TtrpcFrameDecoder()
    assert feed(decoder, TTRPC_WIRE, chunk) == TTRPC_FRAMES
    assert not decoder.mid_frame


def test_ttrpc_decoder_keeps_trailing_bytes() -> None:
    decoder = TtrpcFrameDecoder()
    tail = encode_ttrpc(stream_id=7, msg_type=1, data=b"later")
    assert feed(decoder, TTRPC_WIRE + tail[:-2], len(TTRPC_WIRE) + 100) == TTRPC_FRAMES
    assert decoder.mid_frame
    decoder.receive_data(tail[-2:])
    assert decoder.next_frame() == TtrpcFrame(7, 1, 0, b"later")


def test_ttrpc_decoder_skips_oversized_message_and_resynchronises() -> None:
    decoder = TtrpcFrameDecoder()
    big = TTRPC_MAX_DATA + 1
    decoder.receive_data(struct.pack(">IIBB", big, 9, 1, 0))
    assert decoder.next_frame() == OversizedFrame(9, 1, 0, big)
    sent = 0
    while sent < big:  # the body arrives in pieces and is thrown away
        piece = min(1 << 20, big - sent)
        decoder.receive_data(b"\0" * piece)
        sent += piece
        assert decoder.next_frame() is None
    decoder.receive_data(encode_ttrpc(stream_id=11, msg_type=1, data=b"ok"))
    assert decoder.next_frame() == TtrpcFrame(11, 1, 0, b"ok")


def test_ttrpc_limit_is_inclusive() -> None:
    decoder = TtrpcFrameDecoder()
    decoder.receive_data(encode_ttrpc(stream_id=1, msg_type=1, data=b"a" * TTRPC_MAX_DATA))
    frame = decoder.next_frame()
    assert isinstance(frame, TtrpcFrame) and len(frame.data) == TTRPC_MAX_DATA


def test_ttrpc_encoder_refuses_oversize() -> None:
    with pytest.raises(LocalProtocolError):
        encode_ttrpc(stream_id=1, msg_type=1, data=b"a" * (TTRPC_MAX_DATA + 1))


@pytest.mark.parametrize("chunk", [len(MUX_WIRE), 1, 5, 4096])
def test_mux_decoder_any_chunking(chunk: int) -> None:
    decoder = MuxFrameDecoder()
    assert feed(decoder, MUX_WIRE, chunk) == MUX_FRAMES
    assert not decoder.mid_frame


def test_mux_decoder_keeps_trailing_bytes() -> None:
    decoder = MuxFrameDecoder()
    assert feed(decoder, MUX_WIRE + b"\0\0\0\1\0", len(MUX_WIRE) + 5) == MUX_FRAMES
    assert decoder.mid_frame


def test_mux_decoder_rejects_oversized_frame_for_good() -> None:
    decoder = MuxFrameDecoder()
    decoder.receive_data(struct.pack(">II", 1, MUX_MAX_PAYLOAD + 1))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    decoder.receive_data(encode_mux(1, b"fine"))
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_mux_limit_is_inclusive() -> None:
    decoder = MuxFrameDecoder()
    decoder.receive_data(struct.pack(">II", 1, MUX_MAX_PAYLOAD) + b"\0" * MUX_MAX_PAYLOAD)
    frame = decoder.next_frame()
    assert isinstance(frame, MuxFrame) and len(frame.payload) == MUX_MAX_PAYLOAD


def split_back(wire: bytes) -> list[MuxFrame]:
    decoder = MuxFrameDecoder()
    decoder.receive_data(wire)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    assert not decoder.mid_frame
    return frames


@pytest.mark.parametrize("size", [10, 100, 4095, 4096])
def test_message_up_to_4096_bytes_is_one_frame(size: int) -> None:
    message = encode_ttrpc(stream_id=1, msg_type=2, data=b"p" * (size - 10))
    assert split_back(mux_frames_for_message(2, message)) == [MuxFrame(2, message)]


@pytest.mark.parametrize("size", [4097, 4100, 5000, 70_000, 2 << 20, TTRPC_MAX_DATA + 10])
def test_larger_message_is_first_4096_bytes_then_the_rest(size: int) -> None:
    message = encode_ttrpc(stream_id=1, msg_type=2, data=bytes(size - 10))
    frames = split_back(mux_frames_for_message(1, message))
    assert [len(f.payload) for f in frames] == [GO_READ_BUFFER, size - GO_READ_BUFFER]
    assert b"".join(f.payload for f in frames) == message
    assert {f.conn_id for f in frames} == {1}
