"""The remote-vend flow on an Executive machine: backend, Mosquitto, ``vmcd --exe`` on a pty,
the simulated EXE VMC. vmc is the master here: it polls the VMC, sees the customer's selection
in a CREDIT reply, asks the cloud, and sends VEND only for an approval."""

from __future__ import annotations

import asyncio
from pathlib import Path

from protocols.exe.commands import Command
from sim.backend import Policy
from sim.broker import MosquittoBroker
from tests.e2e.console import vmctl
from tests.e2e.exe_rig import DEVICE, PRICES, ExeRig, exe_machine
from tests.e2e.test_vmctl_socket import as_json
from tests.waiting import wait_for


async def _requested(rig: ExeRig, txn_id: str) -> None:
    def seen() -> bool:
        entry = rig.backend.books.entries.get(txn_id)
        return entry is not None and "requested" in entry.states

    await rig.backend.wait_for(seen, 10)


async def test_exe_remote_vend_at_the_planogram_price(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        selection = rig.vmc.select(2)  # price line 2
        assert await asyncio.wait_for(selection.done, 10) == "vended"
        entry = await rig.backend.wait_done(txn_id)
        assert entry.result == "success"
        assert entry.price == entry.charged == PRICES[2]
        assert rig.backend.books.balances["alice"] == 10_000 - PRICES[2]
        request, vend = rig.backend.event_log[-2:]
        assert (request["type"], request["selection"], request["ref"]) == (
            "txn.request",
            2,
            "alice",
        )
        assert (vend["type"], vend["result"], vend["selection"]) == ("txn.vend", "success", 2)
        assert selection.vends == 1
        assert all(h.mode for h in rig.vmc.heard)  # exe.mode_bit's default: the 9th bit set


async def test_exe_a_price_change_from_the_cloud_reaches_the_machine(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker) as rig:
        await rig.set_prices({**PRICES, 1: 180}, version=2)
        selection = rig.vmc.select(1)  # select-first: no lock
        assert await asyncio.wait_for(selection.done, 10) == "vended"
        request = await rig.backend.wait_for(
            lambda: next((e for e in rig.backend.event_log if e["type"] == "txn.request"), None),
            10,
        )
        assert (request["price"], request["ref"]) == (180, None)


async def test_exe_a_line_without_price_is_not_served(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker) as rig:
        selection = rig.vmc.select(9)
        await wait_for(lambda: rig.log_events("exe_fault"), 10, "the unpriced line's fault")
        assert rig.log_events("exe_fault")[0]["fault"] == "unpriced"
        rig.vmc.give_up()
        assert selection.vends == 0
        assert not [e for e in rig.backend.event_log if e["type"].startswith("txn.")]


async def test_exe_denied_vend_is_never_vended(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with exe_machine(tmp_path, broker, balances={"bob": 10}) as rig:
        txn_id = await rig.backend.lock(DEVICE, "bob")
        selection = rig.vmc.select(1)
        entry = await rig.backend.wait_done(txn_id)
        assert entry.states[-1] == "denied"
        # The VMC keeps showing the selection until its own wait runs out; vmc leaves it be.
        assert await asyncio.wait_for(selection.done, 15) == "given_up"
        assert selection.vends == 0
        assert rig.vmc.stray_vends == 0
        assert rig.backend.books.balances["bob"] == 10


async def test_exe_expired_approval_never_vends_and_polling_goes_on(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker, policy=Policy.SILENT) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        selection = rig.vmc.select(3)
        await _requested(rig, txn_id)
        waiting_from = selection.at
        entry = await rig.backend.wait_done(txn_id)
        assert "expired" in entry.states
        # While the cloud was silent, vmc kept polling the VMC: no "no link" on its display.
        assert rig.vmc.commands(since=waiting_from).count(Command.CREDIT) >= 3
        reply = await rig.backend.command(DEVICE, "paid", txn_id=txn_id, amount=PRICES[3])
        assert reply["code"] == "too_late"
        await rig.backend.wait_for(lambda: "void" in entry.states, 5)
        assert await asyncio.wait_for(selection.done, 15) == "given_up"
        assert selection.vends == 0


async def test_exe_failed_vend_is_reported_for_a_refund(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker, policy=Policy.REFERENCE_PAYMENT) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        selection = rig.vmc.select(1, fail=True)
        assert await asyncio.wait_for(selection.done, 10) == "failed"
        entry = await rig.backend.wait_done(txn_id)
        assert entry.result == "failure"
        assert entry.charged == 0  # charged at the request, given back on the failure


async def test_exe_pnak_is_answered_by_resending(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with exe_machine(tmp_path, broker) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        await rig.backend.wait_for(lambda: rig.backend.state[DEVICE]["txn"], 5)
        rig.vmc.pnak(3)  # three commands garbled: vmc sends each again (5 resends allowed)
        selection = rig.vmc.select(2)
        assert await asyncio.wait_for(selection.done, 10) == "vended"
        entry = await rig.backend.wait_done(txn_id)
        assert entry.result == "success"
        assert selection.vends == 1
        assert rig.log_events("exe_fault") == []
        assert rig.backend.state[DEVICE]["mdb_link"] == "up"


async def test_exe_pnak_past_the_retries_is_a_fault_not_a_stop(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker, settings={"pnak_retries": 1}) as rig:
        rig.vmc.pnak(4)
        await wait_for(lambda: len(rig.log_events("exe_fault")) >= 2, 10, "two PNAK faults")
        assert {e["fault"] for e in rig.log_events("exe_fault")} == {"pnak"}
        selection = rig.vmc.select(3)
        assert await asyncio.wait_for(selection.done, 10) == "vended"


async def test_exe_silent_vmc_takes_the_link_down_and_back(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker) as rig:
        backend = rig.backend
        rig.vmc.silence()
        await backend.wait_for(lambda: backend.state[DEVICE]["mdb_link"] == "down", 15)
        assert backend.state[DEVICE]["reader"] == "inactive"
        refused = await backend.command(DEVICE, "lock", ref="alice")
        assert refused["code"] == "reader_unavailable"
        assert [e["up"] for e in rig.log_events("exe_link")] == [True, False]
        rig.vmc.silence(False)
        await rig.enabled()
        assert backend.state[DEVICE]["mdb_link"] == "up"
        txn_id = await backend.lock(DEVICE, "alice")
        assert await asyncio.wait_for(rig.vmc.select(1).done, 10) == "vended"
        assert (await backend.wait_done(txn_id)).result == "success"


async def test_exe_voucher_refuses_another_line_then_pays_its_own(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker) as rig:
        reply = await rig.backend.voucher(DEVICE, "v-1", selections=[2])  # the planogram price
        assert reply["ok"], reply
        other = rig.vmc.select(1)  # not the voucher's: the machine denies it itself
        await wait_for(lambda: rig.log_events("vend_denied"), 10, "the other line denied")
        chosen = rig.vmc.select(2)  # the customer changes their mind
        assert await asyncio.wait_for(chosen.done, 10) == "vended"
        entry = await rig.backend.wait_credit("voucher", "v-1")
        assert entry.status is not None
        assert (entry.status["state"], entry.status["charged"]) == ("used", PRICES[2])
        assert (other.outcome, other.vends, chosen.vends) == ("given_up", 0, 1)
        assert entry.agrees()


async def test_exe_credit_pays_one_vend_and_reports_the_rest(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker) as rig:
        assert (await rig.backend.credit(DEVICE, "k-1", 500))["ok"]
        assert await asyncio.wait_for(rig.vmc.select(3).done, 10) == "vended"
        entry = await rig.backend.wait_credit("credit", "k-1")
        assert entry.status is not None
        # An Executive session is one vend: the session ends with it, and the rest goes back.
        assert (entry.status["reason"], entry.status["used"], entry.status["rest"]) == (
            "session_ended",
            PRICES[3],
            500 - PRICES[3],
        )
        assert entry.agrees()


async def test_exe_link_in_vmctl_status(tmp_path: Path, broker: MosquittoBroker) -> None:
    """vmctl status shows the Executive link as it shows the MDB one: up, then down."""
    async with exe_machine(tmp_path, broker) as rig:
        state = ("--state-dir", str(rig.daemon.state_dir))
        status = await as_json("status", *state)
        assert (status["bus"]["protocol"], status["bus"]["link_up"]) == ("exe", True)
        assert status["bus"]["state"] == "enabled"
        code, out, err = await vmctl("status", *state)
        assert (code, err) == (0, ""), err
        assert "Executive bus" in out
        assert "vmc is the Executive master" in out
        rig.vmc.silence()
        await rig.backend.wait_for(lambda: rig.backend.state[DEVICE]["mdb_link"] == "down", 15)
        down = await as_json("status", *state)
        assert (down["bus"]["state"], down["bus"]["link_up"]) == ("no_link", False)
        assert "no_mdb_link" in down["codes"]
