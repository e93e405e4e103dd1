"""The bridge's courier on a real SQLite store, the third party behind httpx's mock transport
(its HTTP server is not ours): outcomes are written together before the next claim, and one
the store failed to write is kept and written at the next try, not delivered again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

import httpx

from bridge.config import BridgeConfig, ThirdParty
from bridge.courier import Courier
from bridge.store import Delivery, NewDelivery, Outcome, SeenEvent, SqliteStore


class FlakyStore(SqliteStore):
    """A store whose first ``settle`` fails, as a database that went away would."""

    failures = 1

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        if outcomes and self.failures:
            self.failures -= 1
            raise OSError("the database went away")
        await super().settle(outcomes)


async def test_bridge_courier_keeps_an_outcome_the_store_failed_to_write(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "bridge.sqlite3")
    await store.open()
    calls: list[str] = []

    def third_party(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["Idempotency-Key"])
        return httpx.Response(200, json={"success": True})

    async def no_answer(_delivery: Delivery, _answer: dict[str, object]) -> None:
        return None

    config = BridgeConfig(
        "127.0.0.1", 1, tmp_path / "bridge.sqlite3", (ThirdParty("acme", "http://acme"),)
    )
    async with store.events() as batch:
        for n in range(2):
            event = SeenEvent(f"e{n}", "m1", n, "sale", 100.0)
            assert await batch.first_time(event)
            await batch.record(event, [NewDelivery("acme", "/feed/transactions", {"n": n})])
    async with httpx.AsyncClient(transport=httpx.MockTransport(third_party)) as http:
        courier = Courier(config, store, no_answer, [http])
        task = asyncio.create_task(courier.run())
        try:
            async with asyncio.timeout(10):
                while await store.undelivered():
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await store.close()
    assert store.failures == 0
    assert calls == ["e0/feed/transactions", "e1/feed/transactions"]  # each once, in order
