"""A small asyncio HTTP/1.1 client: just what talking to one API server needs.

Requests go over keep-alive connections from a small idle pool (a TLS
handshake per status label would be wasteful); a reused connection that the
server closed while it sat idle is detected on the first read and the request
is sent once more on a fresh one. Watches get their own connection and are
read line by line from a chunked body, each read bounded by an idle timeout so
that a half-open connection is noticed.

Every socket, TLS and framing problem becomes a :class:`TransportError` here,
and a deadline a :class:`RequestTimeout`, in one place; a connection touched
by any error or cancellation is closed, never pooled. HTTP status codes are
left to the caller (:mod:`.client` maps them to error classes).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from .config import KubeConfig
from .errors import RequestTimeout, TransportError
from .settings import HttpSettings

MAX_HEAD = 64 * 1024
READ_SIZE = 64 * 1024


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


class HttpClient:
    """HTTP requests to the server of one :class:`KubeConfig`."""

    def __init__(self, config: KubeConfig, settings: HttpSettings | None = None) -> None:
        self.config = config
        self.settings = settings or HttpSettings()
        self._ssl: ssl.SSLContext | None = config.ssl_context()
        self._netloc = urlsplit(config.server).netloc.rpartition("@")[2]
        self._idle: list[_Conn] = []

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def target(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        return self.config.base_path + path + ("?" + urlencode(q) if q else "")

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send one request and read the whole answer, whatever its status."""
        limit = timeout if timeout is not None else self.settings.request_timeout
        data = self._encode(method, self.target(path, query), body, content_type)
        try:
            async with asyncio.timeout(limit):
                return await self._exchange(method, data)
        except TimeoutError as e:
            raise RequestTimeout(f"{method} {path}: no answer within {limit:g}s") from e

    async def _exchange(self, method: str, data: bytes) -> Response:
        conn = self._idle.pop() if self._idle else None
        if conn is not None:
            try:
                return await self._on(conn, method, data)
            except _Stale:
                pass  # the server closed the idle connection; try once on a fresh one
        conn = await self._connect()
        try:
            return await self._on(conn, method, data)
        except _Stale as e:
            raise TransportError(f"connection to {self.config.server} closed before an answer") from e

    async def _on(self, conn: _Conn, method: str, data: bytes) -> Response:
        try:
            try:
                conn.writer.write(data)
                await conn.writer.drain()
                status, headers = await _read_head(conn.reader)
            except (OSError, asyncio.IncompleteReadError) as e:
                raise _Stale() from e
            body, reusable = await _read_body(conn.reader, headers, method, status)
        except BaseException:
            conn.close()  # an error or a cancellation leaves the stream in an unknown state
            raise
        if reusable and len(self._idle) < self.settings.max_idle_connections:
            self._idle.append(conn)
        else:
            conn.close()
        return Response(status, headers, body)

    async def _connect(self) -> _Conn:
        cfg = self.config
        server_hostname = (cfg.tls_server_name or cfg.host) if self._ssl else None
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    cfg.host, cfg.port, ssl=self._ssl, server_hostname=server_hostname, limit=MAX_HEAD
                )
        except TimeoutError as e:
            raise RequestTimeout(f"connect to {cfg.server}: no answer within {self.settings.connect_timeout:g}s") from e
        except (OSError, ssl.SSLError) as e:
            raise TransportError(f"connect to {cfg.server}: {e}") from e
        return _Conn(reader, writer)

    def _encode(self, method: str, target: str, body: bytes | None, content_type: str | None) -> bytes:
        head = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self._netloc}",
            f"User-Agent: {self.settings.user_agent}",
            "Accept: application/json",
        ]
        auth = self.config.authorization()
        if auth:
            head.append(f"Authorization: {auth}")
        if body is not None:
            head.append(f"Content-Type: {content_type or 'application/json'}")
            head.append(f"Content-Length: {len(body)}")
        elif method in ("POST", "PUT", "PATCH"):
            head.append("Content-Length: 0")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")

    async def lines(
        self, path: str, *, query: Mapping[str, Any] | None = None, idle_timeout: float
    ) -> AsyncGenerator[Response | bytes, None]:
        """GET ``path`` on a connection of its own; yield the Response head, then each body line.

        The first item is a :class:`Response` whose body is empty for a 2xx
        answer (lines follow) and complete otherwise (nothing follows). A
        silence longer than ``idle_timeout`` raises :class:`RequestTimeout`.
        """
        conn = await self._connect()
        try:
            conn.writer.write(self._encode("GET", self.target(path, query), None, None))
            failed: Response | None = None
            try:
                # Never yield inside the timeout: it would fire in the consumer's code.
                async with asyncio.timeout(self.settings.request_timeout):
                    await conn.writer.drain()
                    status, headers = await _read_head(conn.reader)
                    if not 200 <= status < 300:
                        body, _ = await _read_body(conn.reader, headers, "GET", status)
                        failed = Response(status, headers, body)
            except TimeoutError as e:
                raise RequestTimeout(f"GET {path}: no answer within {self.settings.request_timeout:g}s") from e
            except (OSError, asyncio.IncompleteReadError) as e:
                raise TransportError(f"GET {path}: {e!r}") from e
            if failed is not None:
                yield failed
                return
            yield Response(status, headers, b"")
            buffer = b""
            async for piece in _body_pieces(conn.reader, headers, idle_timeout, path):
                buffer += piece
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    if line.strip():
                        yield line
            if buffer.strip():
                yield buffer
        finally:
            conn.close()


class _Stale(Exception):
    """The connection failed before any byte of an answer arrived."""


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as e:
        raise TransportError("HTTP response head too large") from e
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise TransportError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise TransportError(f"malformed HTTP header: {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    if parts[0] == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
        headers.setdefault("connection", "close")
    return int(parts[1]), headers


async def _read_body(
    reader: asyncio.StreamReader, headers: Mapping[str, str], method: str, status: int
) -> tuple[bytes, bool]:
    """The whole body, and whether the connection may carry another request."""
    keep = "close" not in headers.get("connection", "").lower()
    try:
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return b"", keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            out = bytearray()
            async for chunk in _chunks(reader):
                out += chunk
            return bytes(out), keep
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"])), keep
        return await reader.read(), False
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        raise TransportError(f"HTTP body cut short: {e!r}") from e


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return
        data = await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise TransportError("malformed chunked encoding")
        yield data


async def _body_pieces(
    reader: asyncio.StreamReader, headers: Mapping[str, str], idle_timeout: float, path: str
) -> AsyncIterator[bytes]:
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    source = _chunks(reader) if chunked else _raw(reader)
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                piece = await anext(source, None)
        except TimeoutError as e:
            raise RequestTimeout(f"watch {path}: silent for {idle_timeout:g}s") from e
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            raise TransportError(f"watch {path}: stream broken: {e!r}") from e
        if piece is None:
            return
        yield piece


async def _raw(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while data := await reader.read(READ_SIZE):
        yield data
