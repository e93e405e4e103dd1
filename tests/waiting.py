"""Waiting on a condition instead of sleeping a guessed time: robust on a busy machine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

PATIENCE_S = 20.0
"""Long enough for a loaded 2-core machine; a passing test never waits for all of it."""


async def wait_until(
    predicate: Callable[[], object], timeout: float = PATIENCE_S, interval: float = 0.02
) -> bool:
    """True as soon as ``predicate()`` holds; False if it still does not after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> Any:
    """The first truthy value of ``predicate()``; after ``timeout``, fail naming ``what``."""
    value: object = None

    def holds() -> bool:
        nonlocal value
        value = predicate()
        return bool(value)

    if not await wait_until(holds, timeout, interval=0.05):
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return value
