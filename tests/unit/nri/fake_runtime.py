"""A fake NRI runtime for tests: the runtime's side of the protocol over a unix socket.

Written with ``struct`` and the envelope messages only, independently of the
library's framing code, so the two check each other (the golden vectors
check both). It also checks the plugin's framing as Go's reader would: a mux
frame that starts a ttrpc message must be at most 4096 bytes, and a frame
must never carry bytes of two messages.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

from google.protobuf.message import Message

from nri_zeropod.nri.proto import ttrpc_pb2

PLUGIN = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME = "nri.pkg.api.v1alpha1.Runtime"
MUX = struct.Struct(">II")
TTRPC = struct.Struct(">IIBB")


@dataclass
class Reply:
    code: int
    message: str
    payload: bytes


@dataclass
class PluginCall:
    stream_id: int
    service: str
    method: str
    payload: bytes


@dataclass
class FakeRuntime:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    violations: list[str] = field(default_factory=list)
    frames_from_plugin: list[tuple[int, int]] = field(default_factory=list)  # (conn, size)
    _buffers: dict[int, bytearray] = field(default_factory=lambda: {1: bytearray(), 2: bytearray()})
    _next_sid: int = 1
    _pending: dict[int, asyncio.Future[Reply]] = field(default_factory=dict)
    calls: asyncio.Queue[PluginCall] = field(default_factory=asyncio.Queue)
    received: list[str] = field(default_factory=list)  # "reply <sid>" / "call <method>", in arrival order
    _reader_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reader_task = asyncio.create_task(self._read())

    # -- reading the plugin's frames -------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                conn, length = MUX.unpack(await self.reader.readexactly(MUX.size))
                payload = await self.reader.readexactly(length)
                self._check_frame(conn, payload)
                self._buffers.setdefault(conn, bytearray()).extend(payload)
                self._parse(conn)
        except (asyncio.IncompleteReadError, ConnectionError):
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("plugin closed the connection"))

    def _check_frame(self, conn: int, payload: bytes) -> None:
        self.frames_from_plugin.append((conn, len(payload)))
        buf = self._buffers.setdefault(conn, bytearray())
        if not buf and len(payload) > 4096:
            self.violations.append(f"conn {conn}: frame of {len(payload)} bytes starts a ttrpc message")
        pending = bytes(buf) + payload
        ends = []
        i = 0
        while len(pending) - i >= TTRPC.size:
            i += TTRPC.size + TTRPC.unpack_from(pending, i)[0]
            if i <= len(pending):
                ends.append(i)
        if ends and ends[-1] < len(pending) or len(ends) > 1:
            self.violations.append(f"conn {conn}: one frame carries bytes of two ttrpc messages")

    def _parse(self, conn: int) -> None:
        buf = self._buffers[conn]
        while len(buf) >= TTRPC.size:
            length, sid, mtype, _flags = TTRPC.unpack_from(buf)
            if len(buf) < TTRPC.size + length:
                return
            data = bytes(buf[TTRPC.size : TTRPC.size + length])
            del buf[: TTRPC.size + length]
            if conn == 1 and mtype == 2:
                response = ttrpc_pb2.Response.FromString(data)
                self._on_reply(sid, Reply(response.status.code, response.status.message, response.payload))
            elif conn == 2 and mtype == 1:
                request = ttrpc_pb2.Request.FromString(data)
                self.received.append(f"call {request.method}")
                self.calls.put_nowait(PluginCall(sid, request.service, request.method, request.payload))
            else:
                self.violations.append(f"conn {conn}: unexpected message type {mtype}")

    def _on_reply(self, sid: int, reply: Reply) -> None:
        self.received.append(f"reply {sid}")
        self._pending.pop(sid).set_result(reply)

    # -- writing ---------------------------------------------------------------

    def send_frames(self, conn: int, message: bytes, *, chunk: int | None = None) -> None:
        """Frame one ttrpc message: Go's way (4096 bytes + the rest) unless ``chunk`` is given."""
        if chunk is None:
            parts = [message[:4096], message[4096:]] if len(message) > 4096 else [message]
        else:
            parts = [message[i : i + chunk] for i in range(0, len(message), chunk)]
        self.writer.write(b"".join(MUX.pack(conn, len(p)) + p for p in parts))

    def allocate(self) -> int:
        sid = self._next_sid
        self._next_sid += 2
        return sid

    async def call(
        self, method: str, msg: Message | bytes, *, service: str = PLUGIN, timeout_nano: int = 2_000_000_000,
        chunk: int | None = None, timeout: float = 5.0,
    ) -> Reply:
        """Call the plugin on conn 1 and wait for its reply."""
        sid = self.allocate()
        payload = msg if isinstance(msg, bytes) else msg.SerializeToString()
        data = ttrpc_pb2.Request(service=service, method=method, payload=payload, timeout_nano=timeout_nano)
        body = data.SerializeToString()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[sid] = future
        self.send_frames(1, TTRPC.pack(len(body), sid, 1, 0) + body, chunk=chunk)
        return await asyncio.wait_for(future, timeout)

    def expect_reply(self, sid: int) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[sid] = future
        return future

    def reply(self, sid: int, *, payload: bytes = b"", code: int = 0, message: str = "") -> None:
        """Answer a plugin's call on conn 2."""
        response = ttrpc_pb2.Response(payload=payload)
        if code:
            response.status.code = code
            response.status.message = message
        body = response.SerializeToString()
        self.send_frames(2, TTRPC.pack(len(body), sid, 2, 0) + body)

    async def next_call(self, timeout: float = 5.0) -> PluginCall:
        return await asyncio.wait_for(self.calls.get(), timeout)

    async def close(self) -> None:
        self.writer.close()
        if self._reader_task is not None:
            await asyncio.gather(self._reader_task, return_exceptions=True)


class FakeRuntimeServer:
    """Listens on a unix socket path and hands out one FakeRuntime per plugin connection."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[FakeRuntime] = asyncio.Queue()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        runtime = FakeRuntime(reader, writer)
        runtime.start()
        await self.connections.put(runtime)

    async def accept(self, timeout: float = 5.0) -> FakeRuntime:
        return await asyncio.wait_for(self.connections.get(), timeout)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
