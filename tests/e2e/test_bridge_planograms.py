"""How vmc-bridge learns a machine's planogram: one stock.query per planogram version the
retained state names, asked again when unanswered, not when refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2

from bridge import run
from bridge.config import BridgeConfig, ThirdParty
from bridge.service import Bridge
from bridge.store import CoilLevel
from sim.broker import MosquittoBroker
from tests.e2e.bridge_rig import eventually

SELECTION = {
    "selection": 4,
    "product": "gum",
    "name": "Mint gum",
    "price": 80,
    "level": 5,
    "capacity": 12,
    "par_level": 10,
    "alarm_level": 3,
}


class Machine:
    """A machine at the contract's level: its retained status and state, and its answers to
    ``stock.query`` (``answers``: True answers, False refuses, None stays silent)."""

    def __init__(self, client: aiomqtt.Client, device: str) -> None:
        self.client = client
        self.device = device
        self.answers: bool | None = True
        self.queries: list[dict[str, Any]] = []

    async def state(self, version: int) -> None:
        topic = f"vmc/{self.device}"
        await self.client.publish(
            f"{topic}/status", cbor2.dumps({"v": 1, "state": "online"}), qos=1, retain=True
        )
        body = {"v": 1, "reader": "enabled", "txn": None, "planogram_version": version}
        await self.client.publish(f"{topic}/state", cbor2.dumps(body), qos=1, retain=True)

    async def serve(self, version: int) -> None:
        await self.client.subscribe(f"vmc/{self.device}/cmd", qos=1)
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            command = cbor2.loads(message.payload)
            if command.get("op") != "stock.query":
                continue
            self.queries.append(command)
            if self.answers is None:
                continue
            reply: dict[str, Any] = {"v": 1, "id": command["id"], "at": 0.0}
            if self.answers:
                result = {"planogram_version": version, "selections": [SELECTION]}
                reply |= {"ok": True, "code": None, "message": "", "result": result}
            else:
                reply |= {"ok": False, "code": "unknown_op", "message": "no such op"}
            await self.client.publish(f"vmc/{self.device}/reply", cbor2.dumps(reply), qos=1)


@contextlib.asynccontextmanager
async def playing(broker: MosquittoBroker, device: str, version: int) -> AsyncIterator[Machine]:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=device) as client:
        machine = Machine(client, device)
        serving = asyncio.create_task(machine.serve(version))
        try:
            await machine.state(version)
            yield machine
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)


@contextlib.asynccontextmanager
async def bridge_on(tmp_path: Path, broker: MosquittoBroker) -> AsyncIterator[Bridge]:
    config = BridgeConfig(
        mqtt_host="127.0.0.1",
        mqtt_port=broker.port,
        database=tmp_path / "bridge.sqlite3",
        third_parties=(ThirdParty("acme", "http://127.0.0.1:9", None, ("k",)),),
        reply_timeout=1.0,
    )
    async with run.started(config) as (bridge, _app):
        yield bridge


async def test_bridge_reads_each_planogram_version_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with playing(broker, "m1", 3) as machine, bridge_on(tmp_path, broker) as bridge:
        await eventually(lambda: bridge.planograms.known.get("m1") == 3)
        assert await bridge.store.coils("m1") == [CoilLevel(4, 80, 5, "Mint gum", False, 12, 10)]
        await machine.state(3)  # the same planogram again: nothing to ask
        await asyncio.sleep(0.3)
        assert len(machine.queries) == 1
    # Restarted, the bridge finds version 3 in its store and asks nothing.
    async with playing(broker, "m1", 3) as machine, bridge_on(tmp_path, broker) as bridge:
        await eventually(lambda: bridge.planograms.known.get("m1") == 3)
        assert machine.queries == []


async def test_bridge_asks_a_silent_machine_again_and_a_refusing_one_not(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with playing(broker, "m1", 1) as machine:
        machine.answers = None
        async with bridge_on(tmp_path, broker) as bridge:
            await eventually(lambda: machine.queries)
            await asyncio.sleep(2.5)  # the reply_timeout passes: no answer
            assert "m1" not in bridge.planograms.known
            machine.answers = False
            asked = len(machine.queries)
            await machine.state(1)  # its next state: asked again, and refused
            await eventually(lambda: bridge.planograms.known.get("m1") == 1)
            assert len(machine.queries) == asked + 1
            await machine.state(1)
            await asyncio.sleep(0.3)
            assert len(machine.queries) == asked + 1
            assert await bridge.store.coils("m1") == []
