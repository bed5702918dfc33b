"""A fake Kubernetes API server over real HTTP, for tests and manual use.

:class:`FakeKube` runs an asyncio HTTP/1.1 server on 127.0.0.1 (a random
port by default) in a thread of its own, so the code under test talks to it
over sockets exactly as to a cluster, from any event loop or none. Tests
arrange state through synchronous, thread-safe methods
(:meth:`~FakeKube.create_namespace`, :meth:`~FakeKube.create_pod`, ...),
inject failures (:meth:`~FakeKube.fail`, :meth:`~FakeKube.hang`), break
watches (:meth:`~FakeKube.drop_watches`, :meth:`~FakeKube.compact`) and read
every request afterwards (:attr:`~FakeKube.log`). Semantics of the API itself
are in :mod:`.api`; HTTPS with optional client-certificate checking is on
when ``certfile``/``keyfile`` are given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from . import status as st
from .api import Api, Reply, Request, WatchReply
from .faults import Fault, Faults, Record
from .store import Store

T = TypeVar("T")
PHRASES = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 410: "Gone", 415: "Unsupported Media Type",
           422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable", 504: "Gateway Timeout"}


class FakeKube:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history: int = 200,
        resize_subresource: bool = True,
        gone_as_event: bool = True,
        token: str | None = None,
        certfile: str | os.PathLike[str] | None = None,
        keyfile: str | os.PathLike[str] | None = None,
        client_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.store = Store(history=history)
        self.api = Api(self.store, resize_subresource=resize_subresource, gone_as_event=gone_as_event)
        self.token = token  # when set, requests need "Authorization: Bearer <token>" (or a client certificate)
        self.faults = Faults()
        self.log: list[Record] = []
        self._tls = _server_context(certfile, keyfile, client_ca) if certfile else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._streams: set[asyncio.StreamWriter] = set()
        self._bookmark_now: set[asyncio.Event] = set()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> FakeKube:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="fakekube", daemon=True)
        self._thread.start()
        ready.result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = None

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._connection, self.host, self.port, ssl=self._tls))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set_result(None)
        except BaseException as e:  # noqa: BLE001 - hand any start-up failure to start()
            ready.set_exception(e)
            return
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (where the store lives) and return its result."""
        assert self._loop is not None, "FakeKube is not started"
        if threading.current_thread() is self._thread:
            return fn()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)

        self._loop.call_soon_threadsafe(run)
        return fut.result(timeout=10)

    # -- arranging state ---------------------------------------------------------

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        obj = {"metadata": {"name": name, "labels": dict(labels or {})}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        return self._ok(self._request("POST", "/api/v1/namespaces", obj))

    def set_namespace_labels(self, name: str, labels: dict[str, str | None]) -> dict[str, Any]:
        """Merge ``labels`` into the namespace's (None removes one)."""
        return self._ok(self._request("PATCH", f"/api/v1/namespaces/{name}", {"metadata": {"labels": labels}}, "application/merge-patch+json"))

    def delete_namespace(self, name: str) -> None:
        self._ok(self._request("DELETE", f"/api/v1/namespaces/{name}", None))

    def create_pod(self, namespace: str, name: str, *, containers: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
        """A pod with the given containers (default: one "app" container running nginx)."""
        spec = {"containers": containers or [{"name": "app", "image": "nginx"}], **extra.pop("spec", {})}
        obj = {"metadata": {"name": name, "namespace": namespace, **extra.pop("metadata", {})}, "spec": spec, **extra}
        return self._ok(self._request("POST", f"/api/v1/namespaces/{namespace}/pods", obj))

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.call(lambda: self.store.get("pods", namespace, name))

    def events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.call(lambda: self.store.items("events", namespace))

    def compact(self) -> None:
        """Forget the change history: every watch resumed from an older resourceVersion gets 410 Gone."""
        self.call(self.store.compact)

    def drop_watches(self) -> None:
        """Cut every open watch connection abruptly (no final chunk), like a lost connection."""
        def cut() -> None:
            for writer in list(self._streams):
                writer.transport.abort()
        self.call(cut)

    def send_bookmarks(self) -> None:
        """Send a BOOKMARK now on every watch that allowed them."""
        def ring() -> None:
            for event in self._bookmark_now:
                event.set()
        self.call(ring)

    def watch_count(self) -> int:
        return self.call(lambda: len(self.store.watchers))

    # -- faults and the log ------------------------------------------------------

    def fail(self, path: str, *, code: int = 500, times: int = 1, method: str | None = None,
             watch: bool | None = None, retry_after: float | None = None, message: str = "") -> None:
        """The next ``times`` requests matching ``path`` (an fnmatch pattern) fail with ``code``."""
        self.faults.add(Fault(path, times=times, code=code, method=method, watch=watch, retry_after=retry_after, message=message))

    def hang(self, path: str, *, times: int = 1, method: str | None = None, watch: bool | None = None) -> None:
        """The next ``times`` matching requests get no answer until the client closes the connection."""
        self.faults.add(Fault(path, times=times, method=method, watch=watch, hang=True))

    def close_connection(self, path: str, *, times: int = 1, method: str | None = None) -> None:
        """The next ``times`` matching requests are read and their connection closed without an answer."""
        self.faults.add(Fault(path, times=times, method=method, close=True))

    def requests(self, method: str | None = None, path: str | None = None) -> list[Record]:
        return [r for r in list(self.log) if (method is None or r.method == method) and (path is None or r.path == path)]

    def write_kubeconfig(self, path: str | os.PathLike[str], *, token: str | None = None, ca_file: str | None = None,
                         insecure: bool = False, extra_user: dict[str, str] | None = None) -> Path:
        """A kubeconfig (YAML, as kubectl writes it) whose current context points at this server."""
        user: dict[str, str] = dict(extra_user or {})
        if token or self.token:
            user["token"] = token or self.token or ""
        cluster = [f"    server: {self.url}"]
        if ca_file:
            cluster.insert(0, f"    certificate-authority: {ca_file}")
        if insecure:
            cluster.append("    insecure-skip-tls-verify: true")
        user_lines = [f"    {k}: {json.dumps(v)}" for k, v in sorted(user.items())] or ["    {}"]
        text = "\n".join([
            "apiVersion: v1", "kind: Config", "clusters:", "- cluster:", *cluster, "  name: fake",
            "contexts:", "- context:", "    cluster: fake", "    user: fake", "  name: fake",
            "current-context: fake", "preferences: {}", "users:", "- name: fake", "  user:", *user_lines, "",
        ])
        if user_lines == ["    {}"]:
            text = text.replace("  user:\n    {}", "  user: {}")
        out = Path(path)
        out.write_text(text)
        return out

    # -- HTTP --------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any, content_type: str = "application/json") -> Reply | WatchReply:
        raw = json.dumps(body).encode() if body is not None else b""
        req = Request(method, path, {}, {"content-type": content_type}, raw)
        return self.call(lambda: self.api.handle(req))

    @staticmethod
    def _ok(reply: Reply | WatchReply) -> dict[str, Any]:
        assert isinstance(reply, Reply)
        if reply.code >= 400:
            raise RuntimeError(f"fake API: {reply.code} {reply.body.get('message')}")
        return dict(reply.body)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.transport.abort()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        url = urlsplit(target)
        req = Request(method, url.path, dict(parse_qsl(url.query)), headers, body)
        record = Record(method, url.path, req.query, req.content_type, _decoded(body), headers.get("authorization"), time.monotonic())
        self.log.append(record)
        fault = self.faults.take(method, url.path, req.is_watch)
        if fault is not None and fault.hang:
            await reader.read()  # until the client gives up and closes
            return False
        if fault is not None and fault.close:
            return False
        reply: Reply | WatchReply
        if fault is not None:
            reply = injected = Reply(fault.code, st.for_code(fault.code, fault.message))
            if fault.retry_after is not None:
                injected.body["details"] = {"retryAfterSeconds": math.ceil(fault.retry_after)}
                injected.headers["Retry-After"] = f"{fault.retry_after:g}"
        elif not self._authorized(headers, writer):
            reply = Reply(401, st.unauthorized())
        else:
            reply = self.api.handle(req)
        if isinstance(reply, WatchReply):
            record.code = 200
            await self._stream(writer, reply)
            return False
        record.code = reply.code
        data = json.dumps(reply.body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
        writer.write(
            f"HTTP/1.1 {reply.code} {PHRASES.get(reply.code, 'Status')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}\r\n".encode() + data
        )
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    def _authorized(self, headers: dict[str, str], writer: asyncio.StreamWriter) -> bool:
        if self.token is None:
            return True
        if headers.get("authorization") == f"Bearer {self.token}":
            return True
        return writer.get_extra_info("peercert") is not None  # a verified client certificate

    async def _stream(self, writer: asyncio.StreamWriter, reply: WatchReply) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        self._streams.add(writer)
        bookmark_now = asyncio.Event()
        if reply.bookmarks:
            self._bookmark_now.add(bookmark_now)
        try:
            for event in reply.initial:
                _chunk(writer, event)
            await writer.drain()
            if not (reply.initial and reply.initial[-1]["type"] == "ERROR"):  # an ERROR event ends the watch
                async with asyncio.timeout(reply.timeout):
                    await self._follow(writer, reply, bookmark_now)
        except TimeoutError:
            pass  # timeoutSeconds elapsed: end the stream cleanly, as the server does
        finally:
            self._streams.discard(writer)
            self._bookmark_now.discard(bookmark_now)
            self.store.watchers.discard(reply.watcher)
        if not writer.transport.is_closing():
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async def _follow(self, writer: asyncio.StreamWriter, reply: WatchReply, bookmark_now: asyncio.Event) -> None:
        while True:
            change_task = asyncio.ensure_future(reply.watcher.queue.get())
            bookmark_task = asyncio.ensure_future(bookmark_now.wait())
            try:
                done, _ = await asyncio.wait({change_task, bookmark_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                change_task.cancel()
                bookmark_task.cancel()
            if change_task in done:
                change = change_task.result()
                if change is None:
                    return
                _chunk(writer, {"type": change.type, "object": change.object})
            if bookmark_task in done:
                bookmark_now.clear()
                rv = str(self.store.rv)
                _chunk(writer, {"type": "BOOKMARK", "object": {"kind": reply.kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv}}})
            await writer.drain()


def _chunk(writer: asyncio.StreamWriter, event: dict[str, Any]) -> None:
    data = json.dumps(event).encode() + b"\n"
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _decoded(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def _server_context(certfile: Any, keyfile: Any, client_ca: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certfile), str(keyfile))
    if client_ca:
        ctx.load_verify_locations(str(client_ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a token or a certificate, like the API server
    return ctx
