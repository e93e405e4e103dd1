"""Remote credit (seed 004 ``remote_credit``) end to end: one vend or several in a session,
the rest reported once when the session ends."""

from __future__ import annotations

from pathlib import Path

from protocols.mdb import commands as c
from sim.broker import MosquittoBroker
from sim.checks import Tally
from sim.scenarios import Customers
from tests.e2e.cloud_rig import DEVICE, machine

MENU = {1: 200, 2: 250, 3: 150}


async def test_credit_single_vend_with_the_rest_reported(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker, level=1) as rig:
        rig.customers.menu = MENU
        reply = await rig.backend.credit(DEVICE, "k-1", 1400, ref="FREE_CREDIT", medium="rfid")
        assert reply["ok"], reply
        assert reply["result"]["amount"] == 1400
        shown = await rig.backend.wait_for(
            lambda: (rig.backend.state.get(DEVICE) or {}).get("credit"), 5
        )
        assert (shown["kind"], shown["id"], shown["rest"]) == ("credit", "k-1", 1400)
        begin = await rig.customers.poll_for({c.Resp.BEGIN_SESSION}, 3)
        assert int.from_bytes(begin.data[1:3], "big") == 1400  # the session's funds
        assert await rig.customers.select(item=3) == "vended"
        await rig.customers.end_session()  # a single-vend VMC ends the session
        entry = await rig.backend.wait_credit("credit", "k-1")
        assert entry.status is not None
        status = entry.status
        assert (status["state"], status["reason"]) == ("ended", "session_ended")
        assert (status["used"], status["rest"], status["vends"]) == (150, 1250, 1)
        assert (status["ref"], status["medium"]) == ("FREE_CREDIT", "rfid")
        assert entry.agrees()


async def test_credit_multi_vend(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker) as rig:
        rig.customers.menu = MENU
        assert (await rig.backend.credit(DEVICE, "k-2", 500))["ok"]
        outcomes = await rig.customers.session([1, 2, 1])  # 200 + 250, then 200 > the 50 left
        assert outcomes == ["vended", "vended", "denied"]
        entry = await rig.backend.wait_credit("credit", "k-2")
        assert entry.status is not None
        assert (entry.status["used"], entry.status["rest"], entry.status["vends"]) == (450, 50, 2)
        assert [v["amount"] for v in entry.vends] == [200, 250]
        assert entry.status["txn_ids"] == [v["txn_id"] for v in entry.vends]
        assert entry.agrees()
        assert rig.vmc.sales.cashless == Tally(2, 450)  # what the VMC itself counted


async def test_credit_used_up_ends_at_once(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker) as rig:
        rig.customers.menu = MENU
        assert (await rig.backend.credit(DEVICE, "k-3", 450))["ok"]
        session = Customers(rig.vmc, rig.customers.rng, poll_period=0.01, menu=MENU)
        await session.open_session()
        assert await session.select(item=1) == "vended"
        assert await session.select(item=2) == "vended"
        entry = await rig.backend.wait_credit("credit", "k-3")  # before the session ends
        assert entry.status is not None
        assert (entry.status["reason"], entry.status["rest"]) == ("spent", 0)
        await session.end_session()


async def test_credit_expiring_unused(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker, level=1) as rig:
        assert (await rig.backend.credit(DEVICE, "k-4", 300, timeout_s=0.5))["ok"]
        await rig.customers.session_shown()
        cancel = await rig.customers.poll_for({c.Resp.SESSION_CANCEL_REQUEST}, 5)
        assert cancel.code == c.Resp.SESSION_CANCEL_REQUEST
        await rig.customers.end_session()
        entry = await rig.backend.wait_credit("credit", "k-4")
        assert entry.status is not None
        status = entry.status
        assert (status["reason"], status["used"], status["rest"], status["vends"]) == (
            "timeout",
            0,
            300,
            0,
        )
        credits = [e for e in rig.backend.event_log if e["type"] == "credit.status"]
        assert len(credits) == 1
        assert await rig.backend.wait_for(
            lambda: (rig.backend.state.get(DEVICE) or {}).get("credit", 0) is None, 5
        )
