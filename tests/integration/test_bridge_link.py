"""The bridge's events link against a real Mosquitto: the events already received are handed
over as one batch, acknowledged only once the handler returns; a batch whose handler fails
(its commit did not happen) is not acknowledged and comes again, whole and in order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence

import aiomqtt
import pytest

from bridge.config import BridgeConfig
from bridge.link import Link
from sim.broker import MosquittoBroker


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as running:
        yield running


class Handler:
    """Records every batch; fails the first ``failures`` of those with events in them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[list[tuple[str, bytes]]] = []
        self.committed: list[tuple[str, bytes]] = []
        self.changed = asyncio.Event()

    async def __call__(self, batch: Sequence[tuple[str, bytes]]) -> None:
        self.batches.append(list(batch))
        self.changed.set()
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the commit failed")
        self.committed += batch

    async def until(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.committed) < count:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def linked(config: BridgeConfig, handler: Handler) -> AsyncIterator[Link]:
    link = Link(config, handler, lambda *_args: None)
    task = asyncio.create_task(link.run())
    try:
        async with asyncio.timeout(10):
            await link.connected.wait()
        yield link
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish(broker: MosquittoBroker, payloads: list[bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="machines") as client:
        for n, payload in enumerate(payloads):
            await client.publish(f"vmc/m{n % 2}/events", payload, qos=1)


async def test_bridge_link_acknowledges_a_batch_once_it_is_committed(
    broker: MosquittoBroker,
) -> None:
    config = BridgeConfig("127.0.0.1", broker.port, "unused", (), client_id="bridge-t")
    payloads = [f"event {n}".encode() for n in range(8)]
    subscribed = Handler(failures=0)
    async with linked(config, subscribed):
        pass  # the persistent session and its subscription now exist
    await publish(broker, payloads)  # queued by the broker while the bridge is away

    failing = Handler(failures=1)
    async with linked(config, failing):
        await failing.until(len(payloads))
    first = failing.batches[0]
    assert len(first) > 1  # what was queued came as one batch
    assert failing.committed == [(f"m{n % 2}", p) for n, p in enumerate(payloads)]

    again = Handler(failures=0)
    async with linked(config, again):
        await asyncio.sleep(1.0)
    assert again.batches == []  # all acknowledged once committed
