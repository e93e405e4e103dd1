"""The seven-step remote-vend flow end to end: backend, Mosquitto, vmcd on a pty, the sim VMC."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from protocols.mdb import commands as c
from sim.backend import Policy
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine


@pytest.mark.parametrize("level", [1, 3])
async def test_lock_select_paid_vend(tmp_path: Path, broker: MosquittoBroker, level: int) -> None:
    async with machine(tmp_path, broker, level=level) as rig:
        outcome, entry = await rig.paid_remote_vend()
        assert outcome.outcome == "vended"
        assert rig.backend.books.balances["alice"] == 10_000 - entry.price


async def _request_seen(rig: Rig, txn_id: str) -> None:
    books = rig.backend.books

    def seen() -> bool:
        entry = books.entries.get(txn_id)
        return entry is not None and "requested" in entry.states

    await rig.backend.wait_for(seen, 10)


async def test_denied_when_the_balance_is_short(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker, balances={"bob": 10}) as rig:
        txn_id = await rig.backend.lock(DEVICE, "bob")
        outcome = await rig.customers.run("purchase", 1)
        assert outcome.outcome == "denied"
        entry = await rig.backend.wait_done(txn_id)
        assert entry.states[-1] == "denied"
        assert entry.charged == 0
        assert rig.backend.books.balances["bob"] == 10


async def test_silence_expires_and_a_late_paid_is_void(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker, policy=Policy.SILENT) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        outcome = await rig.customers.run("purchase", 1)
        assert outcome.outcome == "denied"  # the VMC heard VEND DENIED at the deadline
        entry = await rig.backend.wait_done(txn_id)
        assert "expired" in entry.states
        price = rig.backend.event_log[0]["price"]
        reply = await rig.backend.command(DEVICE, "paid", txn_id=txn_id, amount=price)
        assert not reply["ok"]
        assert reply["code"] == "too_late"
        await rig.backend.wait_for(lambda: "void" in entry.states, 5)
        # The reader answered every POLL while the cloud was silent. Not within the bus's 5 ms
        # window: the simulated VMC measures from a busy machine's normal-priority process
        # (bench/mdb_latency.py measures the window).
        assert rig.customers.vmc.stats.timeouts == 0


async def test_a_repeated_paid_approves_once(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker, policy=Policy.SILENT) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        customer = asyncio.create_task(rig.customers.run("purchase", 1))
        await _request_seen(rig, txn_id)
        price = rig.backend.event_log[0]["price"]
        paid = {"id": "paid-1", "op": "paid", "txn_id": txn_id, "amount": price}
        await rig.backend.send(DEVICE, dict(paid))
        await rig.backend.send(DEVICE, dict(paid))
        outcome = await customer
        assert outcome.outcome == "vended"
        entry = await rig.backend.wait_done(txn_id)
        assert entry.result == "success"
        first = rig.backend.replies["paid-1"]
        assert first["ok"]
        again = await rig.backend.command(DEVICE, "paid", txn_id=txn_id, amount=price)
        assert again["code"] == "wrong_state"  # already vended: never void
        vends = [e for e in rig.backend.event_log if e["type"] == "txn.vend"]
        assert len(vends) == 1
        approvals = rig.daemon.log_path.read_text().count('"vend_approved"')
        assert approvals == 1


async def test_unlock_cancels_the_session(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker, level=1) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        begin = await rig.customers.poll_for({c.Resp.BEGIN_SESSION}, 3)
        assert begin.code == c.Resp.BEGIN_SESSION
        reply = await rig.backend.command(DEVICE, "unlock", txn_id=txn_id)
        assert reply["ok"]
        cancel = await rig.customers.poll_for({c.Resp.SESSION_CANCEL_REQUEST}, 3)
        assert cancel.code == c.Resp.SESSION_CANCEL_REQUEST
        await rig.customers.end_session()
        entry = await rig.backend.wait_done(txn_id)
        assert entry.states[-1] == "cancelled"


async def test_lock_expires_without_a_selection(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker, level=1) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice", timeout_s=0.5)
        await rig.customers.poll_for({c.Resp.BEGIN_SESSION}, 3)
        cancel = await rig.customers.poll_for({c.Resp.SESSION_CANCEL_REQUEST}, 3)
        assert cancel.code == c.Resp.SESSION_CANCEL_REQUEST
        await rig.customers.end_session()
        entry = await rig.backend.wait_done(txn_id)
        assert entry.states[-1] == "expired"


async def test_vend_failure_is_reported_for_a_refund(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker, policy=Policy.REFERENCE_PAYMENT) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        outcome = await rig.customers.run("vend_failure", 1)
        assert outcome.outcome == "vend_failed"
        entry = await rig.backend.wait_done(txn_id)
        assert entry.result == "failure"
        assert entry.charged == 0  # charged at the request, refunded on the failure


async def test_cash_sale_and_select_first(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker) as rig:
        assert (await rig.customers.run("cash_sale", 1)).ok
        outcome = await rig.customers.run("purchase", 2)  # always idle: no lock first
        assert outcome.outcome == "vended"
        await rig.backend.wait_for(lambda: len(rig.backend.event_log) >= 3, 5)
        kinds = [e["type"] for e in rig.backend.event_log]
        assert kinds == ["sale", "txn.request", "txn.vend"]
        sale = rig.backend.event_log[0]
        assert sale["payment"] == "cash"
        assert sale["currency"] == 978
        assert sale["decimals"] == 2


async def test_lock_while_busy_and_bad_commands(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        await backend.lock(DEVICE, "alice")
        busy = await backend.command(DEVICE, "lock", ref="carol")
        assert busy["code"] == "busy"
        cases: dict[str, dict[str, Any]] = {
            "unknown_op": {"op": "launch"},
            "missing_field": {"op": "paid", "amount": 5},
            "bad_field": {"op": "paid", "txn_id": "x", "amount": -5},
            "expired": {"op": "unlock", "txn_id": "x", "expires": time.time() - 10},
            "no_such_txn": {"op": "unlock", "txn_id": "nope"},
        }
        for code, body in cases.items():
            cmd_id = f"bad-{code}"
            await backend.send(DEVICE, {"id": cmd_id, **body})
            reply = await backend.wait_for(lambda i=cmd_id: backend.replies.get(i), 5)
            assert reply["code"] == code, reply
            assert reply["message"]
        assert backend._client is not None
        await backend._client.publish(f"vmc/{DEVICE}/cmd", b"\xff\x00garbage", qos=1)
        await backend.wait_for(lambda: backend.malformed_replies() or None, 5)
        txn = await backend.wait_for(lambda: (backend.state.get(DEVICE) or {}).get("txn"), 5)
        assert txn["state"] == "locked"  # nothing changed the open lock


async def test_status_online_offline_and_lost(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        assert backend.status[DEVICE] == "online"
        await rig.daemon.stop()
        await backend.wait_for(lambda: backend.status.get(DEVICE) == "offline", 10)
        await rig.daemon.start()
        await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", 10)
        rig.daemon.kill()
        await backend.wait_for(lambda: backend.status.get(DEVICE) == "lost", 90)
