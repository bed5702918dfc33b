"""The agent's local admin socket: status, checkpoint and restore on request.

A unix stream socket, mode 0600 (root only), speaking one JSON object per
line each way: ``{"op": "status"}`` → ``{"ok": true, "containers": [...]}``;
``{"op": "checkpoint", "container": REF}`` → ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. REF is a container id prefix,
``pod/container`` or ``namespace/pod/container``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("nri_zeropod.agent.admin")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024


class AdminError(Exception):
    pass


async def serve(path: Path, handler: Handler) -> asyncio.AbstractServer:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(lambda r, w: _client(r, w, handler), path=str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server


async def _client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    try:
        while line := await reader.readline():
            if len(line) > MAX_REQUEST:
                reply: dict[str, Any] = {"ok": False, "error": "request too large"}
            else:
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                        raise ValueError("a request is a JSON object with an 'op'")
                    reply = await handler(req)
                except ValueError as e:
                    reply = {"ok": False, "error": f"bad request: {e}"}
                except Exception as e:  # noqa: BLE001 - reported to the caller, never fatal
                    log.exception("admin request failed")
                    reply = {"ok": False, "error": str(e)}
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def request(path: Path, req: dict[str, Any], *, timeout: float = 330.0) -> dict[str, Any]:
    """Send one request to the agent at ``path`` and return its reply (blocking)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps(req).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise AdminError(f"the agent is not running (no socket at {path})") from None
    except ConnectionRefusedError:
        raise AdminError(f"the agent is not running (nothing listens on {path})") from None
    except PermissionError:
        raise AdminError(f"permission denied on {path}: run as root") from None
    except TimeoutError:
        raise AdminError(f"the agent did not answer within {timeout:g}s") from None
    if not data:
        raise AdminError("the agent closed the connection without answering")
    return json.loads(data)
