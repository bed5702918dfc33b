"""Status objects shaped like the real API server's (api-conventions.md, "Response Status Kind").

The messages are the API server's own wording (k8s.io/apimachinery
``pkg/api/errors``, ``pkg/storage``), so log lines read the same against the
fake as against a cluster.
"""

from __future__ import annotations

from typing import Any

REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
    500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


def status(code: int, message: str, *, reason: str | None = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason if reason is not None else REASONS.get(code, ""),
    }
    if details is not None:
        out["details"] = details
    out["code"] = code
    return out


def not_found(resource: str, name: str) -> dict[str, Any]:
    return status(404, f'{resource} "{name}" not found', details={"name": name, "kind": resource})


def no_such_path() -> dict[str, Any]:
    # What an API server without a route (e.g. pods/resize before 1.32) answers: no object named.
    return status(404, "the server could not find the requested resource", details={})


def already_exists(resource: str, name: str) -> dict[str, Any]:
    return status(409, f'{resource} "{name}" already exists', reason="AlreadyExists", details={"name": name, "kind": resource})


def conflict(resource: str, name: str) -> dict[str, Any]:
    return status(
        409,
        f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        details={"name": name, "kind": resource},
    )


def expired(requested: int, oldest: int) -> dict[str, Any]:
    return status(410, f"too old resource version: {requested} ({oldest})")


def too_many_requests(retry_after: int) -> dict[str, Any]:
    return status(429, "Too many requests, please try again later.", details={"retryAfterSeconds": retry_after})


def internal_error(message: str) -> dict[str, Any]:
    return status(500, f"Internal error occurred: {message}", details={"causes": [{"message": message}]})


def invalid(kind: str, name: str, field: str, message: str) -> dict[str, Any]:
    return status(
        422,
        f'{kind} "{name}" is invalid: {field}: {message}',
        details={"name": name, "kind": kind, "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}]},
    )


def unauthorized() -> dict[str, Any]:
    return status(401, "Unauthorized")


def for_code(code: int, message: str = "") -> dict[str, Any]:
    """A plausible Status for an injected failure with this code."""
    if code == 409:
        return status(409, message or "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again")
    if code == 429:
        return too_many_requests(1)
    if code >= 500:
        return internal_error(message or "injected failure")
    return status(code, message or REASONS.get(code, "error"))
