"""Sans-I/O ttrpc for unary calls: one :class:`TtrpcConnection` per peer and direction.

A connection has a role. The *server* receives :class:`Request` events and
answers each with exactly one :class:`Response`; the *client* allocates odd,
increasing stream IDs, sends requests and receives responses. Feed bytes in
with ``receive_data``, pull events with ``next_event`` until it returns
:data:`NEED_DATA`, and turn outgoing events into bytes with ``send``. No
socket, no asyncio: the transport decides where the bytes go.

Every stream follows the transition table :data:`TRANSITIONS`. A message from
the peer that does not fit it (bad stream ID, unknown type, malformed
protobuf, more than 4 MiB) becomes a :class:`Rejected` event naming the stream
and, where the protocol lets the server answer, the status code to answer
with; the connection itself stays usable, as in Go's ttrpc. Sending something
that does not fit the table raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import enum
from dataclasses import KW_ONLY, dataclass, field

from .errors import Code, LocalProtocolError
from .frames import MsgType, OversizedFrame, TtrpcFrame, TtrpcFrameDecoder, encode_ttrpc
from .proto import ttrpc_pb2

FLAG_REMOTE_OPEN = 0x02  # the peer wants a stream: NRI defines no streaming RPCs


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class StreamState(enum.Enum):
    IDLE = "idle"
    AWAITING_RESPONSE = "awaiting response"  # client sent a request
    OPEN = "open"  # server owes a response
    REJECTED = "rejected"  # server owes an error status for a refused request
    CLOSED = "closed"


class Step(enum.Enum):
    SEND_REQUEST = "send request"
    RECV_REQUEST = "receive request"
    REJECT_REQUEST = "reject request"
    SEND_RESPONSE = "send response"
    RECV_RESPONSE = "receive response"
    ABANDON = "abandon"  # the caller stopped waiting; a late response is dropped


TRANSITIONS: dict[tuple[Role, StreamState, Step], StreamState] = {
    (Role.CLIENT, StreamState.IDLE, Step.SEND_REQUEST): StreamState.AWAITING_RESPONSE,
    (Role.CLIENT, StreamState.AWAITING_RESPONSE, Step.RECV_RESPONSE): StreamState.CLOSED,
    (Role.CLIENT, StreamState.AWAITING_RESPONSE, Step.ABANDON): StreamState.CLOSED,
    (Role.SERVER, StreamState.IDLE, Step.RECV_REQUEST): StreamState.OPEN,
    (Role.SERVER, StreamState.IDLE, Step.REJECT_REQUEST): StreamState.REJECTED,
    # A reused ID still gets its status, as in Go; one we owe a reply on does not.
    (Role.SERVER, StreamState.CLOSED, Step.REJECT_REQUEST): StreamState.REJECTED,
    (Role.SERVER, StreamState.OPEN, Step.SEND_RESPONSE): StreamState.CLOSED,
    (Role.SERVER, StreamState.REJECTED, Step.SEND_RESPONSE): StreamState.CLOSED,
}


@dataclass(frozen=True, slots=True)
class Request:
    stream_id: int
    _: KW_ONLY
    service: str
    method: str
    payload: bytes = b""
    timeout_nano: int = 0  # time left on the caller's deadline; <= 0 may mean "already late"
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Response:
    stream_id: int
    _: KW_ONLY
    code: int = Code.OK
    message: str = ""
    payload: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code == Code.OK


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message from the peer that was dropped.

    ``code`` is set when the server may answer the stream with that status
    (and must, with ``send(Response(stream_id, code=code, message=reason))``).
    """

    stream_id: int
    _: KW_ONLY
    reason: str
    code: Code | None = None


class NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()

TtrpcEvent = Request | Response | Rejected


@dataclass
class TtrpcConnection:
    role: Role
    _decoder: TtrpcFrameDecoder = field(default_factory=TtrpcFrameDecoder)
    _streams: dict[int, StreamState] = field(default_factory=dict)
    _last_stream_id: int = 0  # highest ID seen (server) or allocated (client)

    # -- state machine ------------------------------------------------------

    def state(self, stream_id: int) -> StreamState:
        if stream_id in self._streams:
            return self._streams[stream_id]
        return StreamState.IDLE if stream_id > self._last_stream_id else StreamState.CLOSED

    def _move(self, stream_id: int, step: Step) -> None:
        """Apply ``step``; the caller has checked that the table allows it."""
        new = TRANSITIONS[(self.role, self.state(stream_id), step)]
        if new is StreamState.CLOSED:
            self._streams.pop(stream_id, None)
        else:
            self._streams[stream_id] = new
        if stream_id % 2 == 1:  # Go does not count an even (invalid) ID as seen
            self._last_stream_id = max(self._last_stream_id, stream_id)

    def _allowed(self, stream_id: int, step: Step) -> bool:
        return (self.role, self.state(stream_id), step) in TRANSITIONS

    @property
    def mid_message(self) -> bool:
        """Bytes of an unfinished message are buffered."""
        return self._decoder.mid_frame

    @property
    def awaiting(self) -> list[int]:
        """Streams on which a response is still expected (client) or owed (server)."""
        return sorted(self._streams)

    # -- receiving ----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._decoder.receive_data(data)

    def next_event(self) -> TtrpcEvent | NeedData:
        frame = self._decoder.next_frame()
        if frame is None:
            return NEED_DATA
        if isinstance(frame, OversizedFrame):
            return self._oversized(frame)
        if frame.msg_type == MsgType.REQUEST and self.role is Role.SERVER:
            return self._request(frame)
        if frame.msg_type == MsgType.RESPONSE and self.role is Role.CLIENT:
            return self._response(frame)
        reason = f"unexpected message type {frame.msg_type} on a {self.role.value} connection"
        return Rejected(frame.stream_id, reason=reason)

    def _reject(self, stream_id: int, *, reason: str, code: Code) -> Rejected:
        """Refuse a request, answering it when the stream can still take a status."""
        if self._allowed(stream_id, Step.REJECT_REQUEST):
            self._move(stream_id, Step.REJECT_REQUEST)
            return Rejected(stream_id, reason=reason, code=code)
        return Rejected(stream_id, reason=reason)

    def _check_request_id(self, stream_id: int) -> str | None:
        # Go's server checks the same two rules and answers InvalidArgument.
        if stream_id % 2 == 0:
            return f"stream ID {stream_id} is even; client streams must be odd"
        if stream_id <= self._last_stream_id:
            return f"stream ID {stream_id} reused; IDs must increase (last {self._last_stream_id})"
        return None

    def _oversized(self, frame: OversizedFrame) -> Rejected:
        reason = f"message of {frame.length} bytes exceeds the 4 MiB limit"
        sid = frame.stream_id
        if self.role is Role.SERVER and frame.msg_type == MsgType.REQUEST and self._check_request_id(sid) is None:
            return self._reject(sid, reason=reason, code=Code.RESOURCE_EXHAUSTED)
        if self.role is Role.CLIENT and self._allowed(sid, Step.RECV_RESPONSE):
            self._move(sid, Step.RECV_RESPONSE)  # the call fails: see Rejected handling in the transport
        return Rejected(sid, reason=reason)

    def _request(self, frame: TtrpcFrame) -> Request | Rejected:
        sid = frame.stream_id
        bad_id = self._check_request_id(sid)
        if bad_id is not None:
            return self._reject(sid, reason=bad_id, code=Code.INVALID_ARGUMENT)
        if frame.flags & FLAG_REMOTE_OPEN:
            return self._reject(sid, reason="streaming requests are not supported", code=Code.UNIMPLEMENTED)
        msg = ttrpc_pb2.Request()
        if not _parse(msg, frame.data):
            reason = f"malformed ttrpc Request ({len(frame.data)} bytes)"
            return self._reject(sid, reason=reason, code=Code.INVALID_ARGUMENT)
        self._move(sid, Step.RECV_REQUEST)
        return Request(
            stream_id=sid,
            service=msg.service,
            method=msg.method,
            payload=msg.payload,
            timeout_nano=msg.timeout_nano,
            metadata=tuple((kv.key, kv.value) for kv in msg.metadata),
        )

    def _response(self, frame: TtrpcFrame) -> Response | Rejected:
        sid = frame.stream_id
        if not self._allowed(sid, Step.RECV_RESPONSE):
            return Rejected(sid, reason="response on a stream with no call in flight")
        self._move(sid, Step.RECV_RESPONSE)
        msg = ttrpc_pb2.Response()
        if not _parse(msg, frame.data):
            return Rejected(sid, reason=f"malformed ttrpc Response ({len(frame.data)} bytes)")
        if msg.HasField("status"):
            return Response(sid, code=msg.status.code, message=msg.status.message, payload=msg.payload)
        return Response(sid, code=Code.OK, message="", payload=msg.payload)

    # -- sending ------------------------------------------------------------

    def start_request(self, *, service: str, method: str, payload: bytes = b"", timeout_nano: int = 0) -> Request:
        """Allocate the next client stream ID (1, 3, 5, ...) for a request."""
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only a client connection starts requests")
        sid = self._last_stream_id + 2 if self._last_stream_id else 1
        return Request(stream_id=sid, service=service, method=method, payload=payload, timeout_nano=timeout_nano)

    def abandon(self, stream_id: int) -> None:
        """Stop waiting for a response (a timed-out call); one arriving later is rejected."""
        if self._allowed(stream_id, Step.ABANDON):
            self._move(stream_id, Step.ABANDON)

    def send(self, event: Request | Response) -> bytes:
        """Encode one whole ttrpc message; raises LocalProtocolError if the table forbids it."""
        if isinstance(event, Request):
            step, msg_type = Step.SEND_REQUEST, MsgType.REQUEST
            data = _encode_request(event)
        else:
            step, msg_type = Step.SEND_RESPONSE, MsgType.RESPONSE
            data = _encode_response(event)
        sid = event.stream_id
        if not self._allowed(sid, step) or (step is Step.SEND_REQUEST and sid % 2 == 0):
            raise LocalProtocolError(
                f"cannot {step.value} on stream {sid} in state {self.state(sid).value} as {self.role.value}",
                stream_id=sid,
            )
        wire = encode_ttrpc(stream_id=sid, msg_type=msg_type, data=data)  # may raise: nothing moved yet
        self._move(sid, step)
        return wire


def _parse(msg: ttrpc_pb2.Request | ttrpc_pb2.Response, data: bytes) -> bool:
    try:
        msg.ParseFromString(data)
    except Exception:  # noqa: BLE001 - protobuf backends differ in what they raise on garbage
        return False
    return True


def _encode_request(event: Request) -> bytes:
    msg = ttrpc_pb2.Request(
        service=event.service, method=event.method, payload=event.payload, timeout_nano=event.timeout_nano
    )
    for key, value in event.metadata:
        msg.metadata.add(key=key, value=value)
    return bytes(msg.SerializeToString())


def _encode_response(event: Response) -> bytes:
    msg = ttrpc_pb2.Response(payload=event.payload)
    if event.code != Code.OK:
        msg.status.code = event.code
        msg.status.message = event.message
    return bytes(msg.SerializeToString())
