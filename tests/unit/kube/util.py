"""Running async test bodies, and polling inside an event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], *, timeout: float = 30.0) -> T:
    """Run a test body on a fresh event loop, failing it if it takes longer than ``timeout``."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(check: Callable[[], Any], *, timeout: float = 5.0, what: str = "") -> Any:
    """Poll ``check`` (without blocking the loop) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not reached within {timeout:g}s" + (f": {last}" if last else ""))
        await asyncio.sleep(0.005)
