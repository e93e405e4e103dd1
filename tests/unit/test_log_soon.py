"""``vmc.logs.soon``: log lines after what is ready on the loop, or at once without a loop."""

from __future__ import annotations

import asyncio

from vmc.logs import soon


def test_without_a_loop_the_line_is_written_at_once() -> None:
    written: list[str] = []
    soon(written.append, "line")
    assert written == ["line"]


async def test_on_a_loop_the_line_waits_for_what_is_ready() -> None:
    order: list[str] = []
    woken = asyncio.Event()

    async def drain() -> None:
        await woken.wait()
        order.append("published")

    task = asyncio.create_task(drain())
    await asyncio.sleep(0)  # the drain waits
    woken.set()
    soon(order.append, "logged")
    assert order == []
    await task
    await asyncio.sleep(0)
    assert order == ["published", "logged"]
