"""Vouchers (seed 002) end to end: backend, Mosquitto, vmcd on a pty, the simulated VMC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocols.mdb import commands as c
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine

MENU = {3: 150, 4: 120}


def _vended(rig: Rig, voucher_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in rig.backend.event_log
        if e["type"] == "txn.vend" and e.get("voucher_id") == voucher_id
    ]


async def test_voucher_used_on_an_allowed_slot(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker) as rig:
        rig.customers.menu = MENU
        reply = await rig.backend.voucher(
            DEVICE, "v-1", value=200, selections=[3], ref="cust-7", medium="app", surcharge=20
        )
        assert reply["ok"], reply
        assert reply["result"]["selections"] == [3]
        assert await rig.customers.purchase(3) == "vended"
        entry = await rig.backend.wait_credit("voucher", "v-1")
        assert entry.status is not None
        assert (entry.status["state"], entry.status["charged"]) == ("used", 150)
        assert (entry.status["ref"], entry.status["medium"], entry.status["surcharge"]) == (
            "cust-7",
            "app",
            20,
        )
        assert entry.agrees()
        (vend,) = _vended(rig, "v-1")
        assert (vend["result"], vend["selection"], vend["amount"]) == ("success", 3, 150)
        assert entry.status["txn_id"] == vend["txn_id"]
        kinds = [e["type"] for e in rig.backend.event_log]
        assert "txn.request" not in kinds  # the machine decided by itself


async def test_voucher_refused_on_another_slot_then_used(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker, level=1) as rig:
        rig.customers.menu = MENU
        assert (await rig.backend.voucher(DEVICE, "v-2", value=150, selections=[3]))["ok"]
        assert await rig.customers.session([4, 3]) == ["denied", "vended"]
        entry = await rig.backend.wait_credit("voucher", "v-2")
        assert entry.status is not None
        assert (entry.status["state"], entry.status["selection"]) == ("used", 3)
        assert entry.agrees()
        assert [v["selection"] for v in _vended(rig, "v-2")] == [3]


async def test_voucher_expired_unused(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker, level=1) as rig:
        assert (await rig.backend.voucher(DEVICE, "v-3", value=150, timeout_s=0.5))["ok"]
        await rig.customers.session_shown()
        cancel = await rig.customers.poll_for({c.Resp.SESSION_CANCEL_REQUEST}, 5)
        assert cancel.code == c.Resp.SESSION_CANCEL_REQUEST
        await rig.customers.end_session()
        entry = await rig.backend.wait_credit("voucher", "v-3")
        assert entry.status is not None
        assert (entry.status["state"], entry.status["reason"]) == ("expired", "timeout")
        assert (entry.status["charged"], entry.status["txn_id"]) == (0, None)
        assert not _vended(rig, "v-3")


async def test_voucher_id_sent_twice_is_a_duplicate(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        rig.customers.menu = MENU
        first = await rig.backend.voucher(DEVICE, "v-4", value=150)
        again = await rig.backend.voucher(DEVICE, "v-4", value=900, selections=[4])
        assert first["ok"]
        assert again["ok"]
        assert again["id"] != first["id"]
        assert again["result"] == first["result"]  # the first answer: nothing new
        assert await rig.customers.purchase(4) == "vended"
        entry = await rig.backend.wait_credit("voucher", "v-4")
        assert entry.status is not None
        assert entry.status["charged"] == 120
        after = await rig.backend.voucher(DEVICE, "v-4", value=150)  # used: still the same
        assert after["result"] == first["result"]
        statuses = [e for e in rig.backend.event_log if e["type"] == "voucher.status"]
        assert len(statuses) == 1
        lock = await rig.backend.command(DEVICE, "lock")
        assert lock["ok"] or lock["code"] == "reader_unavailable"  # no voucher is open


async def test_voucher_with_the_planogram_price(tmp_path: Path, broker: MosquittoBroker) -> None:
    levels = {"capacity": 10, "par_level": 8, "alarm_level": 2}
    planogram = {
        "version": 1,
        "products": [{"id": "bar"}, {"id": "gum"}],
        "selections": [
            {"number": 3, "product": "bar", "price": 150, **levels},
            {"number": 4, "product": "gum", "price": 120, **levels},
        ],
    }
    async with machine(tmp_path, broker) as rig:
        rig.customers.menu = MENU
        no_planogram = await rig.backend.voucher(DEVICE, "v-5", selections=[3])
        assert no_planogram["code"] == "no_planogram"
        await rig.backend.stock_command(DEVICE, "planogram.set", planogram=planogram)
        await rig.backend.stock_command(DEVICE, "stock.restock")
        unknown = await rig.backend.voucher(DEVICE, "v-5", selections=[3, 9])
        assert unknown["code"] == "unknown_key"
        reply = await rig.backend.voucher(DEVICE, "v-5", selections=[3, 4])
        assert reply["ok"], reply
        assert reply["result"]["value"] == 150  # the highest price of the set
        assert await rig.customers.purchase(4) == "vended"
        entry = await rig.backend.wait_credit("voucher", "v-5")
        assert entry.status is not None
        assert (entry.status["value"], entry.status["charged"]) == (150, 120)
        assert entry.agrees()
        stock = rig.backend.books.stock
        await rig.backend.wait_for(lambda: stock.machine_levels() == stock.expected, 10)
        assert stock.expected == {3: 8, 4: 7}  # the voucher's vend took stock
