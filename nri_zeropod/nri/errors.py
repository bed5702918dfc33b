"""Errors of the NRI library, and the gRPC status codes that carry them on the wire.

Protocol errors are split the h11 way: a :class:`LocalProtocolError` means
*we* tried to do something the protocol forbids (a bug on our side, or a
message too big to send), a :class:`RemoteProtocolError` means the peer did.
The sans-I/O core raises only these two; the asyncio transport maps socket
errors to :class:`ConnectionLost` in one place, and the plugin layer maps
handler outcomes to wire statuses in one place.
"""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """gRPC status codes as used by ttrpc (only the ones NRI traffic needs)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class NriError(Exception):
    """Base class of every error raised by ``nri_zeropod.nri``."""


class ProtocolError(NriError):
    """A violation of the ttrpc or NRI multiplexer protocol.

    ``stream_id`` names the ttrpc stream when the violation concerns one
    message; ``code`` is the status to answer with where a reply is possible.
    """

    def __init__(self, message: str, *, stream_id: int | None = None, code: Code = Code.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.code = code


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids; nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids and the byte stream cannot be trusted any more."""


class ConnectionLost(NriError):
    """The connection to the runtime could not be made, or ended."""


class RpcError(NriError):
    """The peer answered a call with a non-OK status."""

    def __init__(self, *, method: str, code: int, message: str) -> None:
        self.method = method
        self.code = code
        self.status_message = message
        try:
            name = Code(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"{method}: {name}: {message}")


class RegistrationError(RpcError):
    """The runtime refused RegisterPlugin (bad name or index)."""


class UpdateInHandlerError(NriError, RuntimeError):
    """``update_containers()`` was awaited from inside an event handler.

    The runtime holds its global lock while it waits for the handler's reply,
    so the call could only time out and get the plugin dropped. Return the
    updates in the handler's response instead, or send them from a task that
    the handler does not await.
    """


class Reject(Exception):
    """Raise from a handler to make the runtime fail the operation on purpose.

    Only effective for the events where the runtime honours an error:
    RunPodSandbox, CreateContainer, StartContainer and UpdateContainer. For
    any other event it is logged and answered with OK.
    """

    def __init__(self, reason: str, *, code: Code = Code.UNKNOWN) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
