"""The ttrpc stream state machine, as a server and as a client."""

from __future__ import annotations

import struct

import pytest

from nri_zeropod.nri.errors import Code, LocalProtocolError
from nri_zeropod.nri.frames import TTRPC_MAX_DATA, MsgType, encode_ttrpc
from nri_zeropod.nri.proto import ttrpc_pb2
from nri_zeropod.nri.ttrpc import NEED_DATA, Rejected, Request, Response, Role, StreamState, TtrpcConnection


def request_bytes(sid: int, method: str = "M", *, flags: int = 0) -> bytes:
    data = ttrpc_pb2.Request(service="S", method=method).SerializeToString()
    return encode_ttrpc(stream_id=sid, msg_type=MsgType.REQUEST, flags=flags, data=data)


def events(conn: TtrpcConnection, data: bytes) -> list[object]:
    conn.receive_data(data)
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
    return out


def test_server_accepts_increasing_odd_ids_and_skips() -> None:
    server = TtrpcConnection(Role.SERVER)
    got = events(server, request_bytes(1) + request_bytes(5))
    assert [(e.stream_id, e.method) for e in got if isinstance(e, Request)] == [(1, "M"), (5, "M")]
    assert server.awaiting == [1, 5]
    server.send(Response(5))  # any order, as Go's server answers from goroutines
    server.send(Response(1))
    assert server.awaiting == []


def test_server_answers_each_stream_once() -> None:
    server = TtrpcConnection(Role.SERVER)
    events(server, request_bytes(1))
    server.send(Response(1))
    with pytest.raises(LocalProtocolError):
        server.send(Response(1))
    with pytest.raises(LocalProtocolError):
        server.send(Response(3))  # never asked


@pytest.mark.parametrize("sid", [2, 0])
def test_server_rejects_even_ids_with_invalid_argument(sid: int) -> None:
    server = TtrpcConnection(Role.SERVER)
    [event] = events(server, request_bytes(sid))
    assert isinstance(event, Rejected) and (event.stream_id, event.code) == (sid, Code.INVALID_ARGUMENT)
    server.send(Response(sid, code=Code.INVALID_ARGUMENT, message="bad"))
    assert events(server, request_bytes(1))[0].stream_id == 1  # type: ignore[attr-defined]


def test_server_rejects_reused_id() -> None:
    server = TtrpcConnection(Role.SERVER)
    events(server, request_bytes(3))
    server.send(Response(3))
    [closed] = events(server, request_bytes(3))
    assert isinstance(closed, Rejected) and closed.code == Code.INVALID_ARGUMENT
    server.send(Response(3, code=Code.INVALID_ARGUMENT, message=closed.reason))
    [lower] = events(server, request_bytes(1))
    assert isinstance(lower, Rejected) and lower.code == Code.INVALID_ARGUMENT


def test_server_does_not_answer_twice_for_an_open_stream() -> None:
    server = TtrpcConnection(Role.SERVER)
    events(server, request_bytes(3))
    [dup] = events(server, request_bytes(3))
    assert isinstance(dup, Rejected) and dup.code is None
    assert server.state(3) is StreamState.OPEN


def test_server_malformed_request_gets_invalid_argument() -> None:
    server = TtrpcConnection(Role.SERVER)
    [event] = events(server, encode_ttrpc(stream_id=1, msg_type=1, data=b"\xff\xff\xff"))
    assert isinstance(event, Rejected) and event.code == Code.INVALID_ARGUMENT
    server.send(Response(1, code=Code.INVALID_ARGUMENT, message=event.reason))
    assert isinstance(events(server, request_bytes(3))[0], Request)


def test_server_oversized_request_gets_resource_exhausted() -> None:
    server = TtrpcConnection(Role.SERVER)
    big = struct.pack(">IIBB", TTRPC_MAX_DATA + 1, 1, MsgType.REQUEST, 0) + bytes(TTRPC_MAX_DATA + 1)
    rejected, after = events(server, big + request_bytes(3))
    assert isinstance(rejected, Rejected) and rejected.code == Code.RESOURCE_EXHAUSTED and rejected.stream_id == 1
    assert isinstance(after, Request) and after.stream_id == 3


@pytest.mark.parametrize("msg_type", [MsgType.RESPONSE, MsgType.DATA, 0, 9])
def test_server_drops_other_message_types_without_reply(msg_type: int) -> None:
    server = TtrpcConnection(Role.SERVER)
    [event] = events(server, encode_ttrpc(stream_id=1, msg_type=msg_type, data=b""))
    assert isinstance(event, Rejected) and event.code is None
    assert isinstance(events(server, request_bytes(1))[0], Request)


def test_server_refuses_streaming_requests() -> None:
    server = TtrpcConnection(Role.SERVER)
    [event] = events(server, request_bytes(1, flags=0x02))
    assert isinstance(event, Rejected) and event.code == Code.UNIMPLEMENTED


def test_client_allocates_odd_ids_and_matches_responses() -> None:
    client = TtrpcConnection(Role.CLIENT)
    ids = []
    for _ in range(3):
        request = client.start_request(service="S", method="M")
        client.send(request)
        ids.append(request.stream_id)
    assert ids == [1, 3, 5]
    wire = encode_ttrpc(stream_id=3, msg_type=2, data=ttrpc_pb2.Response(payload=b"x").SerializeToString())
    assert events(client, wire) == [Response(3, code=Code.OK, message="", payload=b"x")]
    status = ttrpc_pb2.Response(status=ttrpc_pb2.Status(code=2, message="no")).SerializeToString()
    failed = events(client, encode_ttrpc(stream_id=1, msg_type=2, data=status))
    assert failed == [Response(1, code=Code.UNKNOWN, message="no")]
    assert client.awaiting == [5]


def test_client_drops_response_on_inactive_stream() -> None:
    client = TtrpcConnection(Role.CLIENT)
    [event] = events(client, encode_ttrpc(stream_id=1, msg_type=2, data=b""))
    assert isinstance(event, Rejected) and event.code is None


def test_client_malformed_response_closes_the_call() -> None:
    client = TtrpcConnection(Role.CLIENT)
    client.send(client.start_request(service="S", method="M"))
    [event] = events(client, encode_ttrpc(stream_id=1, msg_type=2, data=b"\x0a\xff"))
    assert isinstance(event, Rejected) and event.stream_id == 1
    assert client.awaiting == []


def test_client_cannot_answer_and_server_cannot_call() -> None:
    with pytest.raises(LocalProtocolError):
        TtrpcConnection(Role.CLIENT).send(Response(1))
    with pytest.raises(LocalProtocolError):
        TtrpcConnection(Role.SERVER).start_request(service="S", method="M")


def test_oversized_send_moves_no_state() -> None:
    client = TtrpcConnection(Role.CLIENT)
    request = client.start_request(service="S", method="M", payload=b"a" * TTRPC_MAX_DATA)
    with pytest.raises(LocalProtocolError):
        client.send(request)
    assert client.awaiting == []
    assert client.start_request(service="S", method="M").stream_id == 1


def test_client_abandons_a_timed_out_call() -> None:
    client = TtrpcConnection(Role.CLIENT)
    client.send(client.start_request(service="S", method="M"))
    client.abandon(1)
    assert client.awaiting == []
    [late] = events(client, encode_ttrpc(stream_id=1, msg_type=2, data=b""))
    assert isinstance(late, Rejected) and late.code is None
