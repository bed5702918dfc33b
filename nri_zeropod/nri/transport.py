"""The asyncio side of the NRI trunk: one reader task, atomic writes, call futures.

:class:`Transport` owns the socket and a sans-I/O :class:`NriConnection`. Its
read loop only parses and dispatches: each incoming request runs in its own
task (``serve`` callback, whose Response is written when it returns), each
incoming response completes the future of the call waiting for it. So the
loop never waits for a reply, and Configure can be served while
RegisterPlugin is still awaiting its answer.

Every message is written with a single ``write()`` of all its mux frames, so
frames of two messages never interleave. Socket errors and remote protocol
errors are mapped to :class:`ConnectionLost` in one place
(:func:`_map_exceptions`); ``run()`` raises it when the trunk ends unless
``close()`` was called first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator

from .api import DEFAULT_SOCKET_PATH, SOCKET_FD_ENV
from .errors import Code, ConnectionLost, LocalProtocolError, RemoteProtocolError, RpcError
from .mux import ChannelEvent, ConnectionClosed, FrameDropped, NriConnection, Side
from .ttrpc import NeedData, Rejected, Request, Response, Role

log = logging.getLogger("nri_zeropod.nri")

READ_SIZE = 256 * 1024
Serve = Callable[[Request], Awaitable[Response]]


@contextlib.contextmanager
def _map_exceptions(what: str) -> Iterator[None]:
    try:
        yield
    except (OSError, EOFError) as e:
        raise ConnectionLost(f"{what}: {e}") from e
    except RemoteProtocolError as e:
        raise ConnectionLost(f"{what}: protocol error from the peer: {e}") from e


async def open_trunk(socket_path: str | os.PathLike[str] | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the runtime: ``socket_path``, else fd ``$NRI_PLUGIN_SOCKET``, else the default path."""
    fd = os.environ.get(SOCKET_FD_ENV) if socket_path is None else None
    where = f"fd {fd} from ${SOCKET_FD_ENV}" if fd else str(socket_path or DEFAULT_SOCKET_PATH)
    with _map_exceptions(f"cannot connect to the runtime at {where}"):
        if fd:
            try:
                sock = socket.socket(fileno=int(fd))
            except ValueError as e:
                raise OSError(f"invalid {SOCKET_FD_ENV}={fd!r}") from e
            return await asyncio.open_unix_connection(sock=sock)
        return await asyncio.open_unix_connection(os.fspath(socket_path or DEFAULT_SOCKET_PATH))


class Transport:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, serve: Serve, side: Side = Side.PLUGIN
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._serve = serve
        self._conn = NriConnection(side)
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._drain_lock = asyncio.Lock()
        self._closing = False
        self._lost: ConnectionLost | None = None

    @property
    def connected(self) -> bool:
        return self._lost is None and not self._closing

    # -- reading ------------------------------------------------------------

    async def run(self) -> None:
        """Read until the trunk ends. Raises ConnectionLost unless ``close()`` ended it."""
        try:
            with _map_exceptions("connection to the runtime lost"):
                while await self._read_once():
                    pass
                raise EOFError("the runtime closed the connection")
        except ConnectionLost as e:
            self._lost = e
        finally:
            self._shutdown()
        if not self._closing:
            assert self._lost is not None
            raise self._lost

    async def _read_once(self) -> bool:
        data = await self._reader.read(READ_SIZE)
        self._conn.receive_data(data)
        while True:
            event = self._conn.next_event()
            if isinstance(event, NeedData):
                return True
            if isinstance(event, ConnectionClosed):
                if event.unfinished:
                    log.warning("trunk closed with unfinished messages on conn %s", event.unfinished)
                return False
            if isinstance(event, FrameDropped):
                log.warning(
                    "conn %d: dropped a %d-byte mux frame for a channel nobody serves", event.conn_id, event.size
                )
            else:
                self._dispatch(event)

    def _dispatch(self, item: ChannelEvent) -> None:
        cid, event = item.conn_id, item.event
        if isinstance(event, Request):
            task = asyncio.create_task(self._serve_one(cid, event), name=f"nri {event.method} s{event.stream_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(event, Response):
            future = self._pending.pop(event.stream_id, None)
            if future is None or future.done():
                log.warning("conn %d stream %d: response for a call nobody waits for (late?)", cid, event.stream_id)
            else:
                future.set_result(event)
        else:
            self._rejected(cid, event)

    def _rejected(self, cid: int, event: Rejected) -> None:
        sid = event.stream_id
        answer = f"; answering {event.code.name}" if event.code is not None else ""
        log.warning("conn %d stream %d: rejected a message from the runtime: %s%s", cid, sid, event.reason, answer)
        if event.code is not None:
            self._write(cid, Response(sid, code=event.code, message=event.reason))
        future = self._pending.pop(sid, None) if self._conn.channel(cid).role is Role.CLIENT else None
        if future is not None and not future.done():
            future.set_exception(RemoteProtocolError(event.reason, stream_id=sid))

    async def _serve_one(self, cid: int, request: Request) -> None:
        try:
            response = await self._serve(request)
        except Exception:  # the serve callback maps errors itself; this is a last line of defence
            log.exception("conn %d stream %d: serving %s failed", cid, request.stream_id, request.method)
            response = Response(request.stream_id, code=Code.INTERNAL, message="internal error in the plugin")
        self._write(cid, response)
        await self._drain()

    # -- writing ------------------------------------------------------------

    def _write(self, cid: int, event: Request | Response) -> None:
        """Encode and write one message; a response we cannot encode becomes a status."""
        if not self.connected:
            return
        try:
            data = self._conn.send(cid, event)
        except LocalProtocolError as e:
            if isinstance(event, Request):
                raise
            log.error("conn %d stream %d: cannot send response: %s", cid, event.stream_id, e)
            data = self._conn.send(cid, Response(event.stream_id, code=Code.RESOURCE_EXHAUSTED, message=str(e)))
        self._writer.write(data)

    async def _drain(self) -> None:
        async with self._drain_lock:
            with contextlib.suppress(OSError, RuntimeError):  # a dead socket is the read loop's to report
                await self._writer.drain()

    async def call(self, *, service: str, method: str, payload: bytes, timeout: float) -> bytes:
        """Call the peer on the client channel and return the reply payload.

        Raises RpcError for a non-OK status (DEADLINE_EXCEEDED when no reply
        came within ``timeout`` seconds), ConnectionLost if the trunk is gone.
        """
        if not self.connected:
            raise self._lost or ConnectionLost("not connected to the runtime")
        request = self._conn.start_request(
            service=service, method=method, payload=payload, timeout_nano=int(timeout * 1e9)
        )
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[request.stream_id] = future
        try:
            self._write(self._conn.client_conn, request)
            await self._drain()
            response = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._conn.channel(self._conn.client_conn).abandon(request.stream_id)
            late = f"no reply within {timeout:g}s"
            raise RpcError(method=method, code=Code.DEADLINE_EXCEEDED, message=late) from None
        finally:
            self._pending.pop(request.stream_id, None)
        if not response.ok:
            raise RpcError(method=method, code=response.code, message=response.message)
        return response.payload

    # -- ending -------------------------------------------------------------

    def close(self) -> None:
        """End the trunk on purpose: ``run()`` then returns instead of raising."""
        self._closing = True
        self._writer.close()

    def _shutdown(self) -> None:
        error = self._lost or ConnectionLost("the connection to the runtime was closed")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        self._writer.close()
