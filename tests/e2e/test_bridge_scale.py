"""Two vmc-bridge processes on one database, one killed (-9) mid-flow: the other carries the
transaction on, nothing is lost and the third party books each callback once. In shared mode
the broker keeps dealing the killed one's share to its session, which the other adopts once
its lease lapses."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.config import EventsMode
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


READER = "[reader]\nmax_response_time = 30\napproval_timeout = 20\n"
"""Time for a selection whose txn.request waits in the killed instance's session (a lease)."""
LEASE = 3.0


def logged(log: Path, event: str) -> list[dict[str, Any]]:
    """An instance's log lines of one event."""
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def events_connected(log: Path) -> list[dict[str, Any]]:
    return [c for c in logged(log, "mqtt_connected") if c["link"] == "events"]


@pytest.mark.parametrize(
    ("engine", "mode"),
    [
        # Shared mode on SQLite as well: in the slow run (CI's time goes to the other two).
        pytest.param("sqlite", EventsMode.SHARED, marks=pytest.mark.slow),
        ("postgresql", EventsMode.SHARED),
        ("sqlite", EventsMode.ALL),
    ],
)
async def test_bridge_two_instances_one_killed_mid_flow(
    tmp_path: Path, broker: MosquittoBroker, engine: str, mode: EventsMode
) -> None:
    books = ThirdPartyBooks(Policy.POST_BILLING, {"alice": 10_000})
    third = FakeThirdParty(books, "")
    (tmp_path / "vmcd.toml").write_text(READER)
    async with contextlib.AsyncExitStack() as stack:
        database = "sqlite:///state/bridge.sqlite3"
        if engine == "postgresql":
            database = await stack.enter_async_context(scratch_database())
        rig = await stack.enter_async_context(
            machine(
                tmp_path,
                broker,
                policy=Observer.SILENT,
                extra=("--config", str(tmp_path / "vmcd.toml")),
            )
        )
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
                events=mode,
                member_lease=LEASE,
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
            # the third party's calls go to the second (its load balancer's doing). Shared: the
            # broker deals every other event to the dead one's session until it is adopted.
            assert (await third.lock("order-2", "alice"))["success"]
            first.kill()
            third.bridge_url = second.url
            assert (await rig.customers.run("purchase", 2)).outcome == "vended"
            for number in range(3, 7):
                assert (await rig.customers.run("cash_sale", number)).ok
            await eventually(lambda: len(books.calls) == 10, 30)
            # The first comes back under its client id (systemd's restart) and takes its share.
            assert first.proc is not None
            await first.proc.wait()
            await first.start()
            await eventually(lambda: len(events_connected(first.log)) == 2)
            for number in range(7, 11):
                assert (await rig.customers.run("cash_sale", number)).ok
            await eventually(lambda: len(books.calls) == 14)
        finally:
            for bridge in bridges:
                await bridge.stop()
        expected = [
            "/txn/request",
            "/txn/vend",
            "/feed/transactions",
            "/txn/request",
            "/txn/vend",
            "/feed/transactions",
            *["/feed/transactions"] * 8,
        ]
        if mode is EventsMode.ALL:
            assert books.paths() == expected
        else:
            # What waited in the dead one's session comes up to a lease late: after the
            # machine's later events that the other instance took meanwhile.
            assert sorted(books.paths()) == sorted(expected)
            (adopted,) = logged(second.log, "member_adopted")
            assert adopted["events"] >= 1
        assert [b["txn_ref"] for b in books.bodies("/txn/vend")] == ["order-1", "order-2"]
        assert all(b["success"] for b in books.bodies("/txn/vend"))
        sales = [b for b in books.bodies("/feed/transactions") if b["cash_value"]]
        assert len(sales) == 8
        assert books.duplicates == 0
        vends = [e for e in rig.backend.event_log if e["type"] == "txn.vend"]
        assert len(vends) == 2
        prices = sum(int(v["amount"]) for v in vends)
        assert books.balances["alice"] == 10_000 - prices
