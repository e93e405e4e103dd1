"""The Connectivity Platform's flows through vmc-bridge: a third party written from the seed's
documents, the bridge, a real Mosquitto, vmcd on a pty and the simulated VMC."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

from bridge.store import CoilLevel
from protocols.mdb import commands as c
from sim.backend import Policy as Observer
from sim.broker import MosquittoBroker
from tests.e2e.bridge_rig import INBOUND_KEY, Policy, bridged, eventually
from tests.e2e.cloud_rig import DEVICE, machine
from tests.postgres import scratch_database

KEY = {"X-API-Key": INBOUND_KEY}


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_bridge_seven_steps_post_billing(
    tmp_path: Path, broker: MosquittoBroker, engine: str
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        database = None
        if engine == "postgresql":
            database = await stack.enter_async_context(scratch_database())
        rig = await stack.enter_async_context(machine(tmp_path, broker, policy=Observer.SILENT))
        bridge = await stack.enter_async_context(bridged(tmp_path, broker, database=database))
        third = bridge.third_party
        # 1. the third party locks the machine
        locked = await third.lock("order-1", "alice", balance=10_000)
        assert locked["success"] is True, locked
        assert 0 < locked["timeout"] <= 60
        # 2. the customer selects; 3. /txn/request; 4. /api/paid; 5-6. dispense, pick up
        outcome = await rig.customers.run("purchase", 1)
        assert outcome.outcome == "vended", outcome
        # 7. /txn/vend, then the transaction feed
        await eventually(lambda: len(bridge.books.calls) >= 3)
        assert bridge.books.paths() == ["/txn/request", "/txn/vend", "/feed/transactions"]
        (request,) = bridge.books.bodies("/txn/request")
        machine_request = next(e for e in rig.backend.event_log if e["type"] == "txn.request")
        assert request == {
            "txn_ref": "order-1",
            "selection": str(machine_request["selection"]),
            "cents": machine_request["price"],
        }
        assert bridge.books.paid_answers["order-1"] == {"success": True, "message": ""}
        assert bridge.books.bodies("/txn/vend") == [
            {"txn_ref": "order-1", "success": True, "code": ""}
        ]
        (feed,) = bridge.books.bodies("/feed/transactions")
        assert feed["vm_id"] == DEVICE
        assert feed["cashless_value"] == machine_request["price"]
        assert (feed["cash_value"], feed["dispense_quantity"]) == (0, 1)
        assert feed["code"] == machine_request["selection"]
        assert bridge.books.balances["alice"] == 10_000 - machine_request["price"]
        # The same /api/paid again is the same command: the machine vended once.
        again = await third.call(
            "/api/paid", {"txnRef": "order-1", "price": machine_request["price"]}
        )
        assert again["success"] is True
        late_unlock = await third.call("/api/unlock", {"vm_id": DEVICE, "txnRef": "order-1"})
        assert late_unlock == {"success": True, "message": "already paid: unlock has no effect"}
        kinds = [e["type"] for e in rig.backend.event_log if e["type"].startswith("txn.")]
        assert kinds == ["txn.request", "txn.vend"]


async def test_bridge_reference_payment_refunds_a_failed_vend(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with (
        machine(tmp_path, broker, policy=Observer.SILENT) as rig,
        bridged(tmp_path, broker, policy=Policy.REFERENCE_PAYMENT) as bridge,
    ):
        third = bridge.third_party
        assert (await third.lock("pay-1", "bob"))["success"]
        assert (await rig.customers.run("purchase", 1)).outcome == "vended"
        await eventually(lambda: len(bridge.books.bodies("/feed/transactions")) == 1)
        assert bridge.books.charged["pay-1"] > 0
        assert (await third.lock("pay-2", "bob"))["success"]
        assert (await rig.customers.run("vend_failure", 2)).outcome == "vend_failed"
        await eventually(lambda: len(bridge.books.bodies("/txn/vend")) == 2)
        failed = bridge.books.bodies("/txn/vend")[1]
        assert failed == {"txn_ref": "pay-2", "success": False, "code": "vend_failed"}
        assert bridge.books.charged["pay-2"] == 0  # refunded
        assert len(bridge.books.bodies("/feed/transactions")) == 1  # nothing dispensed


async def test_bridge_deny_on_a_refused_request(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with (
        machine(tmp_path, broker, policy=Observer.SILENT) as rig,
        bridged(tmp_path, broker, balances={"carol": 1}) as bridge,
    ):
        assert (await bridge.third_party.lock("order-2", "carol"))["success"]
        assert (await rig.customers.run("purchase", 1)).outcome == "denied"
        await eventually(lambda: bridge.books.bodies("/txn/unlock"))
        assert bridge.books.bodies("/txn/unlock") == [
            {"txn_ref": "order-2", "code": "insufficient balance"}
        ]
        assert bridge.books.balances["carol"] == 1
        status = next(e for e in rig.backend.event_log if e["type"] == "txn.status")
        assert (status["state"], status["ref"]) == ("denied", "order-2")


async def test_bridge_lock_expires_and_unlock_cancels(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with (
        machine(tmp_path, broker, level=1, policy=Observer.SILENT) as rig,
        bridged(tmp_path, broker, lock_timeout=1.0) as bridge,
    ):
        third = bridge.third_party
        locked = await third.lock("walk-1", "alice")
        assert (locked["success"], locked["timeout"]) == (True, 1)
        await rig.customers.poll_for({c.Resp.BEGIN_SESSION}, 3)
        await rig.customers.poll_for({c.Resp.SESSION_CANCEL_REQUEST}, 5)
        await rig.customers.end_session()
        await eventually(lambda: bridge.books.bodies("/txn/unlock"))
        assert bridge.books.bodies("/txn/unlock") == [{"txn_ref": "walk-1", "code": "lock_timeout"}]
        await eventually(lambda: (v := bridge.bridge.fleet.view(DEVICE)) and v.ready)
        assert (await third.lock("walk-2", "alice"))["success"]
        await rig.customers.poll_for({c.Resp.BEGIN_SESSION}, 3)
        cancel = await third.call("/api/unlock", {"id": DEVICE, "txnRef": "walk-2"})
        assert cancel == {"success": True, "message": ""}
        await rig.customers.poll_for({c.Resp.SESSION_CANCEL_REQUEST}, 3)
        await rig.customers.end_session()
        await eventually(lambda: len(bridge.books.bodies("/txn/unlock")) == 2)
        assert bridge.books.bodies("/txn/unlock")[1] == {"txn_ref": "walk-2", "code": "unlocked"}
        again = await third.call("/api/unlock", {"vm_id": DEVICE, "txnRef": "walk-2"})
        assert again["success"] is True


async def test_bridge_machine_offline(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with (
        machine(tmp_path, broker, policy=Observer.SILENT) as rig,
        bridged(tmp_path, broker) as bridge,
    ):
        third = bridge.third_party
        found = await third.call("/api/vmc_search", {"vm_id": DEVICE})
        assert found["vendingMachine"]["online"] is True
        await rig.daemon.stop()
        await eventually(lambda: not bridge.bridge.fleet.view(DEVICE).online)  # type: ignore[union-attr]
        refused = await third.lock("order-3", "alice")
        assert refused == {"success": False, "message": "the vending machine is offline"}
        found = await third.call("/api/vmc_search", {"vm_id": DEVICE})
        assert (found["success"], found["vendingMachine"]["online"]) == (True, False)


async def test_bridge_third_party_down_loses_nothing(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with (
        machine(tmp_path, broker, policy=Observer.SILENT) as rig,
        bridged(tmp_path, broker) as bridge,
    ):
        bridge.books.refuse_next = 3
        for number in range(3):
            assert (await rig.customers.run("cash_sale", number)).ok
        async with httpx.AsyncClient(base_url=bridge.url, headers=KEY) as http, asyncio.timeout(5):
            while True:  # until the first failure is recorded
                waiting = (await http.get("/bridge/undelivered")).json()["undelivered"]
                if waiting and waiting[0]["attempts"]:
                    break
                await asyncio.sleep(0.05)
        assert waiting[0]["path"] == "/feed/transactions"
        assert waiting[0]["last_error"] == "HTTP 503"
        assert not waiting[0]["given_up"]
        await eventually(lambda: len(bridge.books.bodies("/feed/transactions")) == 3, 20)
        sales = [e for e in rig.backend.event_log if e["type"] == "sale"]
        feeds = bridge.books.bodies("/feed/transactions")
        assert [f["cash_value"] for f in feeds] == [s["price"] for s in sales]  # in order, once
        assert bridge.books.refused == 3
        store = bridge.bridge.store
        async with asyncio.timeout(5):
            while await store.undelivered():  # marked delivered once the answer is in
                await asyncio.sleep(0.05)
        assert len(await store.deliveries()) == 3


async def test_bridge_restart_loses_nothing(tmp_path: Path, broker: MosquittoBroker) -> None:
    """Events published while the bridge is down wait in its persistent session; the ones it
    had already handled are not called back twice."""
    async with machine(tmp_path, broker, policy=Observer.SILENT) as rig:
        async with bridged(tmp_path, broker) as bridge:
            assert (await rig.customers.run("cash_sale", 1)).ok
            await eventually(lambda: bridge.books.bodies("/feed/transactions"))
            books = bridge.books
        for number in range(2, 4):
            assert (await rig.customers.run("cash_sale", number)).ok
        await rig.backend.wait_for(
            lambda: len([e for e in rig.backend.event_log if e["type"] == "sale"]) == 3, 5
        )
        async with bridged(tmp_path, broker, books=books) as bridge:
            await eventually(lambda: len(bridge.books.bodies("/feed/transactions")) == 3)
            sales = [e for e in rig.backend.event_log if e["type"] == "sale"]
            feeds = bridge.books.bodies("/feed/transactions")
            assert [f["cash_value"] for f in feeds] == [s["price"] for s in sales]
            await asyncio.sleep(0.5)
            assert len(bridge.books.calls) == 3
            assert bridge.books.duplicates == 0


async def test_bridge_select_first_gets_a_txn_ref(tmp_path: Path, broker: MosquittoBroker) -> None:
    """An always-idle machine sells without a lock: the bridge names the transaction by vmc's
    txn_id for the machine's third party, which can pay it like any other."""
    walk_in = ""  # the third party's own pairing of a customer with the machine, not a member
    async with (
        machine(tmp_path, broker, policy=Observer.SILENT) as rig,
        bridged(tmp_path, broker, balances={walk_in: 1_000}) as bridge,
    ):
        assert (await rig.customers.run("purchase", 1)).outcome == "vended"
        await eventually(lambda: bridge.books.bodies("/txn/vend"))
        request = next(e for e in rig.backend.event_log if e["type"] == "txn.request")
        assert request["ref"] is None
        (sent,) = bridge.books.bodies("/txn/request")
        assert sent["txn_ref"] == request["txn_id"]
        assert bridge.books.bodies("/txn/vend") == [
            {"txn_ref": request["txn_id"], "success": True, "code": ""}
        ]


async def test_bridge_feeds_refills_alerts_and_stock(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """The backend sets a planogram and loads a coil: the third party hears the refill, the
    coil's alarms, and each sale with the coil's planogram and its stock after it."""
    async with (
        machine(tmp_path, broker, policy=Observer.SILENT) as rig,
        bridged(tmp_path, broker) as bridge,
    ):
        document = {
            "version": 1,
            "products": [{"id": "bar", "name": "Choco bar"}],
            "selections": [
                {
                    "number": 1,
                    "product": "bar",
                    "price": 150,
                    "capacity": 10,
                    "par_level": 8,
                    "alarm_level": 2,
                },
            ],
        }
        await rig.backend.stock_command(DEVICE, "planogram.set", planogram=document)
        # The retained state names the new planogram; the bridge reads it with stock.query.
        await eventually(lambda: bridge.bridge.planograms.known.get(DEVICE) == 1)
        await rig.backend.stock_command(
            DEVICE, "stock.refill", lines=[{"selection": 1, "amount": 3}]
        )
        await eventually(lambda: bridge.books.bodies("/feed/refills"))
        (refill,) = bridge.books.bodies("/feed/refills")
        assert refill["vm_id"] == DEVICE
        assert refill["refill_detail"] == [{"refill_quantity": 3, "code": 1}]
        assert refill["planogram"] == [
            {
                "code": 1,
                "formatted_code": "1",
                "name": "Choco bar",
                "placeholder": False,
                "price": 150,
                "capacity": 10,
                "restock_count": 8,
                "current_stock": 3,
            }
        ]
        assert (await bridge.third_party.lock("coil-1", "alice"))["success"]
        assert await rig.customers.purchase(item=1) == "vended"
        await eventually(
            lambda: any(a["level"] == "Medium" for a in bridge.books.bodies("/feed/alerts"))
        )
        low = next(a for a in bridge.books.bodies("/feed/alerts") if a["level"] == "Medium")
        assert low["message"] == "selection 1 is low (level 2)"
        await eventually(lambda: bridge.books.bodies("/feed/transactions"))
        (cashless,) = bridge.books.bodies("/feed/transactions")
        coil = next(c for c in cashless["planogram"] if c["code"] == 1)
        assert (coil["name"], coil["capacity"], coil["current_stock"]) == ("Choco bar", 10, 2)
        assert cashless["code"] == 1


async def test_bridge_started_late_reads_the_planogram_in_force(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A planogram pushed before the bridge ran: the retained state names it, and the bridge
    asks the machine for it (stock.query), levels included."""
    async with machine(tmp_path, broker, policy=Observer.SILENT) as rig:
        document = {
            "version": 7,
            "products": [{"id": "water"}],
            "selections": [
                {
                    "number": 3,
                    "product": "water",
                    "price": 100,
                    "capacity": 8,
                    "par_level": 6,
                    "alarm_level": 2,
                },
            ],
        }
        await rig.backend.stock_command(DEVICE, "planogram.set", planogram=document)
        await rig.backend.stock_command(DEVICE, "stock.restock")
        async with bridged(tmp_path, broker) as bridge:
            await eventually(lambda: bridge.bridge.planograms.known.get(DEVICE) == 7)
            assert await bridge.bridge.store.coils(DEVICE) == [
                CoilLevel(3, 100, 6, "water", True, 8, 6)  # unnamed: the product id
            ]
            found = await bridge.third_party.call("/api/vmc_search", {"vm_id": DEVICE})
            assert found["vendingMachine"]["keypad_configuration"] == {
                "keypad_items": [{"id": 3, "display_value": "3", "h": 1, "w": 1, "x": 0, "y": 0}],
                "total_action_needed": 1,
                "total_column_number": 1,
                "total_row_number": 1,
                "virtual_keypad_enabled": False,
            }
