"""Injected failures and the request log of the fake API server."""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass
from typing import Any


@dataclass
class Fault:
    """Make the next ``times`` matching requests fail with ``code`` (or hang, with ``hang``)."""

    path: str  # exact path or an fnmatch pattern ("/api/v1/namespaces/*/pods/*")
    times: int = 1
    code: int = 500
    method: str | None = None  # None: any method
    watch: bool | None = None  # None: watches and plain requests alike
    retry_after: float | None = None  # seconds, for 429: Retry-After (fractions allowed, to keep tests fast) and retryAfterSeconds
    hang: bool = False  # never answer; the connection stays open until the client gives up
    close: bool = False  # close the connection without answering (a server restart, an idle timeout)
    message: str = ""

    def matches(self, method: str, path: str, is_watch: bool) -> bool:
        if self.times <= 0:
            return False
        if self.method is not None and self.method != method:
            return False
        if self.watch is not None and self.watch != is_watch:
            return False
        return path == self.path or fnmatch.fnmatchcase(path, self.path)


@dataclass
class Record:
    """One request as the fake received it, and the status it answered (None while hanging)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any  # the decoded JSON, or the raw text when it is not JSON, or None
    authorization: str | None
    at: float  # time.monotonic() when it arrived
    code: int | None = None


class Faults:
    """Thread-safe: tests add faults from their thread, the server consumes them on its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str, is_watch: bool) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path, is_watch):
                    fault.times -= 1
                    return fault
        return None
