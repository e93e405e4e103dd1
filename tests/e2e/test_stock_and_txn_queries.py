"""`stock.query` (seed 004's coils and coil alarms) and `txn.query` (its transaction list), end
to end: vends over Mosquitto, then the queries answered from vmcd's stock and journal."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, machine
from tests.e2e.test_stock_flow import load_planogram, wait_levels


async def test_stock_query_lists_coils_and_only_the_alarmed_ones_when_asked(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        await load_planogram(rig)
        assert await rig.customers.purchase(item=1) == "vended"
        await wait_levels(rig, {"s:1": 2, "s:2": 5})

        everything = await rig.backend.command(DEVICE, "stock.query")
        assert everything["ok"], everything
        coils = {c["selection"]: c for c in everything["result"]["selections"]}
        assert set(coils) == {1, 2}
        bar = coils[1]
        assert (bar["level"], bar["condition"], bar["paid_vends"], bar["sales_since_refill"]) == (
            2,
            "low",
            1,
            1,
        )
        assert everything["result"]["need_loading"] is True

        alarmed = await rig.backend.command(DEVICE, "stock.query", conditions=["low", "empty"])
        assert [c["selection"] for c in alarmed["result"]["selections"]] == [1]

        bad = await rig.backend.command(DEVICE, "stock.query", conditions=["dusty"])
        assert (bad["ok"], bad["code"]) == (False, "bad_field")
        assert bad["message"].startswith("conditions")


async def test_txn_query_pages_the_transactions_of_a_day_with_refunds(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        await load_planogram(rig)
        first = dt.datetime.now(dt.UTC).date()
        ids = []
        for item in (1, 2, 2):
            txn_id = await rig.backend.lock(DEVICE, "alice")
            assert await rig.customers.purchase(item=item) == "vended"
            await rig.backend.wait_done(txn_id)
            ids.append(txn_id)
        refund = await rig.backend.command(DEVICE, "refund", txn_id=ids[1], amount=50)
        assert refund["ok"], refund
        days = {"from": first.isoformat(), "to": dt.datetime.now(dt.UTC).date().isoformat()}

        page = await rig.backend.command(DEVICE, "txn.query", limit=2, **days)
        assert page["ok"], page
        listed = page["result"]["txns"]
        assert [t["txn_id"] for t in listed] == ids[:2]
        assert [(t["state"], t["selection"], t["refunded"]) for t in listed] == [
            ("vended", 1, 0),
            ("vended", 2, 50),
        ]
        assert page["result"]["next"] == ids[1]
        rest = await rig.backend.command(DEVICE, "txn.query", after=ids[1], **days)
        assert [t["txn_id"] for t in rest["result"]["txns"]] == ids[2:]
        assert rest["result"]["next"] is None

        twos = await rig.backend.command(DEVICE, "txn.query", selection=2, **days)
        assert [t["txn_id"] for t in twos["result"]["txns"]] == ids[1:]

        bad = await rig.backend.command(DEVICE, "txn.query", limit=501, **days)
        assert (bad["ok"], bad["code"]) == (False, "bad_field")
