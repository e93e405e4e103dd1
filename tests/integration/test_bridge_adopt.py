"""Shared events against a real Mosquitto: a silent instance's session, holding events it
never acknowledged and events the broker kept dealing to it, is adopted by another instance,
drained once in order, and ended, after which the group's events all go to the living."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import aiomqtt
import pytest

from bridge.adopt import Members
from bridge.config import BridgeConfig, EventsMode, ThirdParty
from bridge.link import events_filter, mqtt_client
from bridge.store import SqlStore, open_store
from sim.broker import MosquittoBroker
from tests.e2e.bridge_rig import eventually

MACHINES = ("m0", "m1", "m2")


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as running:
        yield running


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    opened = open_store(tmp_path / "bridge.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


def member(broker: MosquittoBroker, tmp_path: Path, client_id: str) -> BridgeConfig:
    return BridgeConfig(
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        database=tmp_path / "bridge.sqlite3",
        third_parties=(ThirdParty("acme", "http://127.0.0.1:9", None, ("k",)),),
        client_id=client_id,
        member_lease=1.0,
    )


async def publish(broker: MosquittoBroker, names: list[str]) -> None:
    """Events named ``n``, each on machine ``m{n % 3}``."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="device") as device:
        for name in names:
            machine = MACHINES[int(name) % len(MACHINES)]
            await device.publish(f"vmc/{machine}/events", name.encode(), qos=1)


@contextlib.asynccontextmanager
async def taking(config: BridgeConfig, got: list[str], *, ack: bool) -> AsyncIterator[None]:
    """``config``'s events session in the group, its events in ``got`` (acknowledged or not)."""
    async with mqtt_client(config, config.client_id, persistent=True) as client:
        await client.subscribe(events_filter(config, EventsMode.SHARED), qos=1)

        async def take() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append(message.payload.decode())
                if ack:
                    client._client.ack(message.mid, message.qos)

        task = asyncio.create_task(take())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_bridge_adopts_a_silent_members_session(
    broker: MosquittoBroker, store: SqlStore, tmp_path: Path
) -> None:
    a, b = member(broker, tmp_path, "bridge-a"), member(broker, tmp_path, "bridge-b")
    assert await store.hold("bridge-a", "bridge-a", time.time() + 1.0, time.time())
    by_a: list[str] = []
    by_b: list[str] = []
    adopted: list[tuple[str, str]] = []

    async def on_events(batch: Sequence[tuple[str, bytes]]) -> None:
        adopted.extend((machine, payload.decode()) for machine, payload in batch)

    async with taking(b, by_b, ack=True):
        async with taking(a, by_a, ack=False):
            await publish(broker, [str(n) for n in range(60)])
            await eventually(lambda: len(by_a) + len(by_b) >= 50)
        # a is gone without a PUBACK; the broker keeps dealing it half of what comes, past
        # its in-flight window (20).
        await publish(broker, [str(n) for n in range(60, 160)])
        await eventually(lambda: len(by_b) >= 80)
        members = Members(b, store, on_events)
        running = asyncio.create_task(members.run())
        try:
            await eventually(lambda: len(by_b) + len(adopted) >= 160, 15)
            await eventually(lambda: not members._adopting, 10)
            # The session is ended: everything now goes to b.
            await publish(broker, [str(n) for n in range(160, 180)])
            await eventually(lambda: len(by_b) + len(adopted) >= 180)
            await asyncio.sleep(0.5)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    names = [name for _machine, name in adopted]
    assert sorted(names + by_b, key=int) == [str(n) for n in range(180)]  # each once
    assert len(names) > 50  # the unacknowledged and the queued
    assert set(names) >= set(by_a)
    for machine in MACHINES:  # in order per machine
        mine = [int(name) for m, name in adopted if m == machine]
        assert mine == sorted(mine)
    assert [str(n) for n in range(160, 180)] == by_b[-20:]
    assert await store.lapsed(time.time() + 60) == ["bridge-b"]  # a's lease is gone


async def test_bridge_owner_waits_for_its_adopter(
    broker: MosquittoBroker, store: SqlStore, tmp_path: Path
) -> None:
    """An instance back while another drains its session connects only once that is done:
    the two never take the client id from each other."""
    a = member(broker, tmp_path, "bridge-a")
    assert await store.hold("bridge-a", "bridge-b", time.time() + 60, time.time())

    async def nothing(batch: Sequence[tuple[str, bytes]]) -> None:
        raise AssertionError("no events here")

    owner = asyncio.create_task(Members(a, store, nothing).own())
    await asyncio.sleep(0.6)
    assert not owner.done()
    await store.release("bridge-a", "bridge-b")
    await asyncio.wait_for(owner, 2)
    assert not await store.hold("bridge-a", "bridge-b", time.time() + 60, time.time())
