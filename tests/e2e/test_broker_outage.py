"""A broker outage of any length loses nothing: 1,000 events queue up and arrive in order, once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim.backend import SimBackend
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, machine
from tests.waiting import wait_until

SALES = 1000


@pytest.fixture
def persistent_broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker(persistence=True) as broker:
        yield broker


async def test_outage_queues_and_delivers_in_order_once(
    tmp_path: Path, persistent_broker: MosquittoBroker
) -> None:
    broker = persistent_broker
    # The backend keeps a persistent session, as a real one would, so the broker holds what
    # arrives while the backend itself is reconnecting.
    backend = SimBackend(broker.url, persistent=True)
    backend_task = asyncio.create_task(backend.run())
    await backend.ready()
    try:
        async with machine(tmp_path, broker) as rig:
            assert await wait_until(lambda: rig.outbox_size() == 0)  # the broker has it all
            broker.stop()
            for i in range(SALES):
                answer = await rig.vmc.cash_sale(rig.vmc.money(50 + i % 7 * 10), 1 + i % 40)
                assert answer.is_ack
            assert backend.books.events == 0
            broker.start()
            await backend.wait_for(lambda: backend.books.events >= SALES, 60)
            assert await wait_until(lambda: rig.outbox_size() == 0)  # nothing left to send
            await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", 10)
        sales = [e for e in backend.event_log if e["type"] == "sale"]
        assert len(sales) == SALES
        seqs = [e["seq"] for e in sales]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == SALES
        assert [e["selection"] for e in sales] == [1 + i % 40 for i in range(SALES)]
        # Besides the sales, only a device.profile may come (its answer timings can change
        # on a loaded machine).
        others = {e["type"] for e in backend.event_log if e["type"] != "sale"}
        assert others <= {"device.profile"}, others
    finally:
        backend_task.cancel()
        await asyncio.gather(backend_task, return_exceptions=True)
