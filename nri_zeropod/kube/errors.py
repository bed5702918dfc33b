"""Errors of the Kubernetes client, one class per kind of answer.

The class is chosen once, from the HTTP status code, in :func:`api_error`
(the kopf way): callers catch :class:`NotFound` or :class:`Conflict` instead
of comparing numbers. Every :class:`ApiError` carries the server's ``Status``
object (``reason``, ``message``, ``details``) so a log line can say what the
API server said. Failures below HTTP (refused, reset, TLS, a reply that is not
HTTP, a deadline) are :class:`TransportError`; the API may be fine a moment
later, so they are retryable like 5xx and 429.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class KubeError(Exception):
    """Base class of every error raised by ``nri_zeropod.kube``."""

    retryable: bool = False


class ConfigError(KubeError):
    """A kubeconfig or in-cluster configuration that cannot be used."""


class TransportError(KubeError):
    """No usable HTTP answer: connection refused or reset, TLS failure, malformed reply."""

    retryable = True


class RequestTimeout(TransportError):
    """The request (or a watch, between two lines) took longer than its deadline."""


class ApiError(KubeError):
    """The API server answered with a non-2xx status; ``status`` is its Status object."""

    def __init__(self, code: int, status: Mapping[str, Any], *, retry_after: float | None = None) -> None:
        self.code = code
        self.status = dict(status)
        self.reason: str = str(status.get("reason") or "")
        self.message: str = str(status.get("message") or "")
        details = status.get("details")
        self.details: dict[str, Any] = dict(details) if isinstance(details, Mapping) else {}
        self.retry_after = retry_after
        super().__init__(f"{code} {self.reason or 'error'}: {self.message}" if self.message else f"{code} {self.reason}")


class BadRequest(ApiError):
    """400: the request makes no sense (a malformed patch, say); retrying will not help."""


class Unauthorized(ApiError):
    """401: no or bad credentials (an expired token, a wrong CA bundle's user)."""


class Forbidden(ApiError):
    """403: authenticated, but RBAC does not allow it."""


class NotFound(ApiError):
    """404: the object (or, on old servers, the subresource) does not exist."""


class Conflict(ApiError):
    """409: a resourceVersion precondition failed, or the name is taken."""


class Gone(ApiError):
    """410: the requested resourceVersion is older than the server's history; re-list."""


class Invalid(ApiError):
    """422: the object would not be valid (a resize the cluster does not allow, say)."""


class TooManyRequests(ApiError):
    """429: throttled; ``retry_after`` says how long the server asks us to wait."""

    retryable = True


class ServerError(ApiError):
    """5xx: the outcome is unknown and the server may recover; retry with back-off."""

    retryable = True


_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
    429: TooManyRequests,
}

REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
           410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
           504: "Timeout"}


def parse_status(body: bytes | Mapping[str, Any] | None, code: int) -> dict[str, Any]:
    """The Status object of an error reply; a made-up one when the body is not a Status (a proxy's HTML page)."""
    obj: Any = body
    if isinstance(body, (bytes, bytearray)):
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
    if isinstance(obj, Mapping) and obj.get("kind") == "Status":
        return dict(obj)
    text = bytes(body).decode("utf-8", "replace").strip()[:200] if isinstance(body, (bytes, bytearray)) else ""
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": REASONS.get(code, ""), "message": text}


def retry_after_seconds(headers: Mapping[str, str], status: Mapping[str, Any]) -> float | None:
    """Retry-After (delta-seconds form) or the Status's details.retryAfterSeconds; the header wins."""
    raw = headers.get("retry-after")
    if raw is not None:
        try:
            return max(0.0, float(raw.strip()))
        except ValueError:
            pass  # an HTTP-date: rare from the API server, fall back to details
    details = status.get("details")
    if isinstance(details, Mapping) and isinstance(details.get("retryAfterSeconds"), (int, float)):
        return max(0.0, float(details["retryAfterSeconds"]))
    return None


def api_error(code: int, body: bytes | Mapping[str, Any] | None, headers: Mapping[str, str] | None = None) -> ApiError:
    """The error for a non-2xx answer (or an ERROR watch event carrying a Status)."""
    status = parse_status(body, code)
    cls = _BY_CODE.get(code) or (ServerError if code >= 500 else ApiError)
    retry_after = retry_after_seconds(headers or {}, status) if code in (429, 503, 504) else None
    return cls(code, status, retry_after=retry_after)
