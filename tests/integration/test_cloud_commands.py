"""CloudSync's command intake against a real Mosquitto: each command to the handler from
paho's read, in order; a bug in the handler ends the sync as itself, never as a lost link."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from sim.broker import MosquittoBroker
from vmc.cloud.sync import CloudSync, MqttSettings
from vmc.cloud.topics import Topics
from vmc.journal import Journal

DEVICE = "m1"
COMMANDS = 50


class HandlerBugError(Exception):
    """What a bug in the command handler raises."""


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as running:
        yield running


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path / "journal.sqlite3")
    yield opened
    opened.close()


async def _send(broker: MosquittoBroker, payloads: list[bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="backend") as backend:
        for payload in payloads:
            await backend.publish(Topics(DEVICE).commands, payload, qos=1)


async def test_commands_reach_the_handler_in_order(
    broker: MosquittoBroker, journal: Journal
) -> None:
    heard: list[bytes] = []
    sync = CloudSync(
        MqttSettings(url=broker.url, device_id=DEVICE), journal, heard.append, lambda: {}
    )
    task = asyncio.create_task(sync.run())
    try:
        await asyncio.wait_for(sync.connected.wait(), 10.0)
        sent = [f"cmd {i}".encode() for i in range(COMMANDS)]
        await _send(broker, sent)
        async with asyncio.timeout(10.0):
            while len(heard) < COMMANDS:
                await asyncio.sleep(0.01)
        assert heard == sent
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_bug_in_the_handler_ends_the_sync_as_itself(
    broker: MosquittoBroker, journal: Journal
) -> None:
    def handler(_payload: bytes) -> None:
        raise HandlerBugError("boom")

    sync = CloudSync(MqttSettings(url=broker.url, device_id=DEVICE), journal, handler, lambda: {})
    task = asyncio.create_task(sync.run())
    try:
        await asyncio.wait_for(sync.connected.wait(), 10.0)
        await _send(broker, [b"cmd"])
        with pytest.raises(ExceptionGroup) as ended:  # the session's TaskGroup
            await asyncio.wait_for(task, 10.0)
        assert ended.group_contains(HandlerBugError)
    finally:
        task.cancel()
