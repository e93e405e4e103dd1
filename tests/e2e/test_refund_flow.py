"""Refunds end to end: vends over Mosquitto, `refund` recorded in vmcd's journal, `sales.query`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine

START = 10_000  # alice's balance


async def _vend(rig: Rig) -> tuple[str, int]:
    """A locked purchase of selection 1, vended; the txn id and what alice was charged."""
    txn_id = await rig.backend.lock(DEVICE, "alice")
    assert await rig.customers.purchase(item=1) == "vended"
    entry = await rig.backend.wait_done(txn_id)
    assert entry.result == "success"
    assert entry.charged > 0
    return txn_id, entry.charged


async def _refund_events(rig: Rig, count: int) -> list[dict[str, Any]]:
    def seen() -> list[dict[str, Any]] | None:
        found = [e for e in rig.backend.event_log if e["type"] == "txn.refund"]
        return found if len(found) >= count else None

    found: list[dict[str, Any]] = await rig.backend.wait_for(seen, 10)
    return found


def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()  # vmcd's days are UTC by default


async def _sales(rig: Rig, first: str) -> dict[str, Any]:
    """vmcd's report from ``first`` (taken before the vend: it may straddle midnight) to today."""
    reply = await rig.backend.command(DEVICE, "sales.query", **{"from": first, "to": _today()})
    assert reply["ok"], reply
    result: dict[str, Any] = reply["result"]
    return result


async def test_refund_of_a_vended_txn_partial_then_over_the_amount_and_duplicates(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        first = _today()
        txn_id, price = await _vend(rig)
        assert backend.books.balances["alice"] == START - price

        body = {"id": "refund-1", "op": "refund", "txn_id": txn_id, "amount": 50}
        await backend.send(DEVICE, {**body, "refund_id": "rf-1", "reason": "dented"})
        answer = await backend.wait_for(lambda: backend.replies.get("refund-1"), 10)
        assert answer["ok"], answer
        assert answer["result"] == {
            "refund_id": "rf-1",
            "txn_id": txn_id,
            "amount": 50,
            "charged": price,
            "refunded": 50,
            "duplicate": False,
        }
        (event,) = await _refund_events(rig, 1)
        assert {k: event[k] for k in ("txn_id", "ref", "refund_id", "result", "reason")} == {
            "txn_id": txn_id,
            "ref": "alice",
            "refund_id": "rf-1",
            "result": "success",
            "reason": "dented",
        }
        assert (event["amount"], event["refunded"], event["charged"]) == (50, 50, price)
        assert (event["selection"], event["currency"], event["decimals"]) == (1, 978, 2)
        assert backend.books.balances["alice"] == START - price + 50

        over = await backend.command(DEVICE, "refund", txn_id=txn_id, amount=price - 50 + 1)
        assert (over["ok"], over["code"]) == (False, "amount_mismatch")

        # The same command id again: the first reply, byte for byte, and nothing recorded.
        del backend.replies["refund-1"]
        await backend.send(DEVICE, {**body, "refund_id": "rf-1", "reason": "dented"})
        again = await backend.wait_for(lambda: backend.replies.get("refund-1"), 10)
        assert again == answer
        # The same refund id under a new command id: the first refund, marked duplicate.
        dup = await backend.command(DEVICE, "refund", txn_id=txn_id, refund_id="rf-1")
        assert dup["ok"], dup
        assert {**dup["result"], "duplicate": False} == answer["result"]
        assert dup["result"]["duplicate"] is True
        clash = await backend.command(DEVICE, "refund", txn_id=txn_id, amount=7, refund_id="rf-1")
        assert (clash["ok"], clash["code"]) == (False, "duplicate")

        rest = await backend.refund(DEVICE, txn_id)  # the rest, booked by the backend too
        assert rest["result"]["amount"] == price - 50
        assert rest["result"]["refunded"] == price
        assert backend.books.balances["alice"] == START
        assert backend.books.summary()["net"] == 0
        assert len(await _refund_events(rig, 2)) == 2
        nothing = await backend.command(DEVICE, "refund", txn_id=txn_id)
        assert nothing["code"] == "amount_mismatch"

        sales = await _sales(rig, first)
        assert sales["total"] == {"count": 1, "amount": price}  # gross: the vend stays a sale
        assert sales["refunds"]["success"] == {"count": 2, "amount": price}
        assert sales["net"] == 0
        (slot,) = sales["slots"]
        assert (slot["slotId"], slot["cash"], slot["refunds"], slot["refunded"], slot["net"]) == (
            1,
            price,
            2,
            price,
            0,
        )
        assert len([e for e in backend.event_log if e["type"] == "txn.refund"]) == 2


async def test_refund_refused_for_an_unknown_or_open_txn(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        first = _today()
        unknown = await backend.command(DEVICE, "refund", txn_id="f" * 32)
        assert (unknown["ok"], unknown["code"]) == (False, "no_such_txn")
        txn_id = await backend.lock(DEVICE, "alice")
        still_open = await backend.command(DEVICE, "refund", txn_id=txn_id, amount=10)
        assert (still_open["ok"], still_open["code"]) == (False, "wrong_state")
        assert (await backend.command(DEVICE, "unlock", txn_id=txn_id))["ok"]
        await backend.wait_done(txn_id)
        cancelled = await backend.command(DEVICE, "refund", txn_id=txn_id)
        assert cancelled["code"] == "wrong_state"
        assert "nothing was charged" in cancelled["message"]
        assert not [e for e in backend.event_log if e["type"] == "txn.refund"]
        assert (await _sales(rig, first))["refunds"]["success"] == {"count": 0, "amount": 0}


async def test_refund_after_vmcd_restarted(tmp_path: Path, broker: MosquittoBroker) -> None:
    """vmcd forgets closed transactions on a restart; the refund is judged from its journal."""
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        first = _today()
        txn_id, price = await _vend(rig)
        await rig.daemon.stop()
        await backend.wait_for(lambda: backend.status.get(DEVICE) == "offline", 10)
        await rig.restart_daemon()
        await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", 10)

        reply = await backend.refund(DEVICE, txn_id, 30, reason="after restart")
        assert reply["result"]["refunded"] == 30
        over = await backend.command(DEVICE, "refund", txn_id=txn_id, amount=price)
        assert over["code"] == "amount_mismatch"
        (event,) = await _refund_events(rig, 1)
        assert (event["txn_id"], event["amount"]) == (txn_id, 30)
        sales = await _sales(rig, first)
        assert sales["refunds"]["success"] == {"count": 1, "amount": 30}
        assert sales["net"] == price - 30
        assert backend.books.balances["alice"] == START - price + 30
