"""Two vmc-bridge processes on one database, one killed (-9) mid-flow: the other carries the
transaction on, nothing is lost and the third party books each callback once."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

from sim.backend import Policy as Observer
from sim.broker import MosquittoBroker, free_port
from tests.e2e.bridge_rig import (
    INBOUND_KEY,
    BridgeProcess,
    FakeThirdParty,
    Policy,
    ThirdPartyBooks,
    bridge_config,
    eventually,
    serving,
)
from tests.e2e.cloud_rig import DEVICE, machine
from tests.postgres import scratch_database


async def online_at(bridge: BridgeProcess) -> None:
    async with httpx.AsyncClient(base_url=bridge.url, headers={"X-API-Key": INBOUND_KEY}) as http:

        async def seen() -> bool:
            answer = (await http.post("/api/vmc_search", json={"vm_id": DEVICE})).json()
            return bool(answer["success"] and answer["vendingMachine"]["online"])

        async with asyncio.timeout(10):
            while not await seen():
                await asyncio.sleep(0.1)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_bridge_two_instances_one_killed_mid_flow(
    tmp_path: Path, broker: MosquittoBroker, engine: str
) -> None:
    books = ThirdPartyBooks(Policy.POST_BILLING, {"alice": 10_000})
    third = FakeThirdParty(books, "")
    async with contextlib.AsyncExitStack() as stack:
        database = "sqlite:///state/bridge.sqlite3"
        if engine == "postgresql":
            database = await stack.enter_async_context(scratch_database())
        rig = await stack.enter_async_context(machine(tmp_path, broker, policy=Observer.SILENT))
        third_party_url = await stack.enter_async_context(serving(third.app))
        bridges = []
        for name in ("a", "b"):
            port = free_port()
            config = bridge_config(
                tmp_path / f"bridge-{name}.toml",
                broker.url,
                port,
                third_party_url,
                client_id=f"vmc-bridge-{name}",
                database=database,
            )
            bridges.append(BridgeProcess(config, tmp_path / f"bridge-{name}.log", port))
        first, second = bridges
        try:
            for bridge in bridges:
                await bridge.start()
                await online_at(bridge)
            # A whole vend through the first instance, the callbacks from either.
            third.bridge_url = first.url
            assert (await third.lock("order-1", "alice"))["success"]
            assert (await rig.customers.run("purchase", 1)).outcome == "vended"
            await eventually(lambda: len(books.calls) == 3)
            # The next lock through the first instance, which then dies before the selection;
            # the third party's calls go to the second (its load balancer's doing).
            assert (await third.lock("order-2", "alice"))["success"]
            first.kill()
            third.bridge_url = second.url
            assert (await rig.customers.run("purchase", 2)).outcome == "vended"
            for number in range(3, 5):
                assert (await rig.customers.run("cash_sale", number)).ok
            await eventually(lambda: len(books.calls) == 8, 20)
        finally:
            for bridge in bridges:
                await bridge.stop()
        assert books.paths() == [
            "/txn/request",
            "/txn/vend",
            "/feed/transactions",
            "/txn/request",
            "/txn/vend",
            "/feed/transactions",
            "/feed/transactions",
            "/feed/transactions",
        ]
        assert [b["txn_ref"] for b in books.bodies("/txn/vend")] == ["order-1", "order-2"]
        assert all(b["success"] for b in books.bodies("/txn/vend"))
        assert books.duplicates == 0
        vends = [e for e in rig.backend.event_log if e["type"] == "txn.vend"]
        assert len(vends) == 2
        prices = sum(int(v["amount"]) for v in vends)
        assert books.balances["alice"] == 10_000 - prices
