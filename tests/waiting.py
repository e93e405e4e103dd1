"""Waiting on a condition instead of sleeping a guessed time: robust on a busy machine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
