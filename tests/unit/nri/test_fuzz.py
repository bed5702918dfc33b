"""Property-based fuzzing: whatever the peer sends, decoders raise only our protocol errors."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nri_zeropod.nri.errors import ProtocolError
from nri_zeropod.nri.frames import MsgType, encode_mux, encode_ttrpc
from nri_zeropod.nri.mux import ConnectionClosed, NriConnection, Side
from nri_zeropod.nri.proto import ttrpc_pb2
from nri_zeropod.nri.ttrpc import NEED_DATA, Rejected, Response, Role, TtrpcConnection

chunks = st.lists(st.binary(max_size=64), max_size=12)


def pump_ttrpc(conn: TtrpcConnection, pieces: list[bytes]) -> None:
    for piece in pieces:
        conn.receive_data(piece)
        for _ in range(10_000):
            event = conn.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Rejected) and event.code is not None:
                conn.send(Response(event.stream_id, code=event.code, message=event.reason))  # must be allowed
        else:
            raise AssertionError("decoder does not make progress")


def pump_mux(conn: NriConnection, pieces: list[bytes], eof: bool) -> None:
    try:
        for piece in [*pieces, b""] if eof else pieces:
            conn.receive_data(piece)
            for _ in range(10_000):
                event = conn.next_event()
                if event is NEED_DATA or isinstance(event, ConnectionClosed):
                    break
            else:
                raise AssertionError("decoder does not make progress")
    except ProtocolError:
        pass


# Structured input reaches past the header checks: real frames with random fields.
ttrpc_frames = st.builds(
    lambda sid, mtype, flags, data: encode_ttrpc(stream_id=sid, msg_type=mtype, flags=flags, data=data),
    st.integers(0, 2**32 - 1) | st.integers(0, 9),
    st.integers(0, 255) | st.sampled_from(list(MsgType)),
    st.integers(0, 255) | st.just(0),
    st.binary(max_size=80)
    | st.builds(
        lambda s, m, p, t: ttrpc_pb2.Request(service=s, method=m, payload=p, timeout_nano=t).SerializeToString(),
        st.text(max_size=8), st.text(max_size=8), st.binary(max_size=16), st.integers(-(2**63), 2**63 - 1),
    ),
)


@settings(max_examples=1000, deadline=None)
@given(pieces=chunks, role=st.sampled_from(list(Role)))
def test_ttrpc_decoder_random_bytes(pieces: list[bytes], role: Role) -> None:
    try:
        pump_ttrpc(TtrpcConnection(role), pieces)
    except ProtocolError:
        pass


@settings(max_examples=1000, deadline=None)
@given(frames=st.lists(ttrpc_frames, max_size=6), role=st.sampled_from(list(Role)), cut=st.integers(1, 50))
def test_ttrpc_decoder_mutated_frames(frames: list[bytes], role: Role, cut: int) -> None:
    wire = b"".join(frames)
    try:
        pump_ttrpc(TtrpcConnection(role), [wire[i : i + cut] for i in range(0, len(wire), cut)])
    except ProtocolError:
        pass


@settings(max_examples=1000, deadline=None)
@given(pieces=chunks, side=st.sampled_from(list(Side)), eof=st.booleans())
def test_mux_decoder_random_bytes(pieces: list[bytes], side: Side, eof: bool) -> None:
    pump_mux(NriConnection(side), pieces, eof)


@settings(max_examples=1000, deadline=None)
@given(
    frames=st.lists(st.tuples(st.integers(0, 4), ttrpc_frames), max_size=6),
    side=st.sampled_from(list(Side)),
    cut=st.integers(1, 50),
    eof=st.booleans(),
)
def test_mux_decoder_mutated_frames(frames: list[tuple[int, bytes]], side: Side, cut: int, eof: bool) -> None:
    wire = b"".join(encode_mux(cid, data) for cid, data in frames)
    pump_mux(NriConnection(side), [wire[i : i + cut] for i in range(0, len(wire), cut)], eof)
