"""Small helpers shared by the test rings."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

IN_CI = os.environ.get("CI") == "true" or os.environ.get("NRI_ZEROPOD_CI") == "1"


def eventually(check: Callable[[], T], *, timeout: float = 10.0, period: float = 0.05, what: str = "") -> T:
    """Call ``check`` until it returns a truthy value or stops raising, and return that value.

    Poll, don't sleep: the last exception (or a falsy result) is reported when
    ``timeout`` expires.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = None
        except Exception as e:  # noqa: BLE001 - an AssertionError too: the last one is reported
            last = e
        if time.monotonic() >= deadline:
            label = what or getattr(check, "__name__", "condition")
            if last is not None:
                raise AssertionError(f"{label} not reached within {timeout:g}s: {last!r}") from last
            raise AssertionError(f"{label} not reached within {timeout:g}s")
        time.sleep(period)


def need(condition: bool, reason: str) -> None:
    """Skip when a requirement is missing; in CI a missing requirement is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI is missing a requirement: {reason}")
    pytest.skip(reason)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root")


def need_binary(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"needs {name} on PATH")
    assert path is not None
    return path
