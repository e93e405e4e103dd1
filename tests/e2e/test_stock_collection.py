"""Cash collections end to end: ``stock.restock`` with ``collect`` and ``cash.collect`` over a
real Mosquitto, vmcd on a pty, the sim VMC and its DEX port; the ``collection.report`` with the
journal's sales and the audit's coin counters, once per collection id, even across kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from sim.backend import SimBackend
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine, machine_with_dex
from tests.e2e.test_stock_flow import load_planogram, wait_levels


def _reports(backend: SimBackend, collection_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in backend.event_log
        if e["type"] == "collection.report" and e["collection_id"] == collection_id
    ]


async def _report(rig: Rig, collection_id: str) -> dict[str, Any]:
    found = await rig.backend.wait_for(lambda: _reports(rig.backend, collection_id) or None, 20)
    (report,) = found
    return report  # type: ignore[no-any-return]


async def _send(rig: Rig, body: dict[str, Any]) -> dict[str, Any]:
    """Send ``body`` as it is (a resend uses the same id) and wait for its reply."""
    rig.backend.replies.pop(body["id"], None)
    await rig.backend.send(DEVICE, dict(body))
    return await rig.backend.wait_for(  # type: ignore[no-any-return]
        lambda: rig.backend.replies.get(body["id"]), 10
    )


def _collections(rig: Rig) -> dict[str, int]:
    """The daemon's journaled collections: id -> reported (0 or 1)."""
    path = rig.daemon.state_dir / "journal.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT id, reported FROM collections").fetchall())


def _count(bucket: dict[str, int]) -> tuple[int, int]:
    return bucket["count"], bucket["amount"]


async def test_restock_with_collect_reports_sales_and_audit_cash_counters_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine_with_dex(tmp_path, broker, read_at_start=False) as (rig, _line):
        backend = rig.backend
        await load_planogram(rig)
        assert await rig.customers.purchase(item=1) == "vended"
        assert (await rig.vmc.cash_sale(rig.vmc.money(200), 2)).is_ack
        await wait_levels(rig, {"s:1": 2, "s:2": 4})

        visit = {"id": "visit-1", "op": "stock.restock", "collect": True}
        first = await _send(rig, visit)
        assert first["ok"], first
        assert first["result"]["collection_id"] == "visit-1"
        assert rig.stock_levels() == {"s:1": 8, "s:2": 5}
        report = await _report(rig, "visit-1")
        assert (report["restock"], report["since"], report["audit_error"]) == (True, None, None)
        assert (report["currency"], report["decimals"]) == (978, 2)
        sales = report["sales"]
        (vend,) = [e for e in backend.event_log if e["type"] == "txn.vend"]
        assert _count(sales["total"]) == (2, 200 + vend["amount"])
        assert _count(sales["payment"]["cash"]) == (1, 200)
        assert _count(sales["payment"]["cashless"]) == (1, vend["amount"])
        assert _count(sales["vend_type"]["paid"]) == (2, 200 + vend["amount"])
        audit = report["audit"]
        assert audit["cash_sales"]["vends_init"] == 1
        assert audit["cash_sales"]["value_init"] == 200
        assert audit["cash_in"]["inserted_init"] == audit["cash_in"]["to_tubes_init"] == 200
        assert audit["cash_out"]["dispensed_init"] == 0
        assert (audit["baseline_read_id"], audit["delta"]) == (None, None)
        (read,) = [e for e in backend.event_log if e["type"] == "audit.report"]
        assert (read["read_id"], read["trigger"]) == (audit["read_id"], "collection")
        await backend.wait_for(
            lambda: backend.state[DEVICE].get("last_collection") == report["until"], 10
        )

        again = await _send(rig, visit)
        assert again == first  # the stored first reply, byte for byte: no second collection

        assert (await rig.vmc.cash_sale(rig.vmc.money(200), 2)).is_ack
        await wait_levels(rig, {"s:1": 8, "s:2": 4})
        second = await _send(rig, {"id": "visit-2", "op": "cash.collect"})
        assert second["ok"], second
        assert second["result"]["since"] == report["until"]
        later = await _report(rig, "visit-2")
        assert (later["restock"], later["since"]) == (False, report["until"])
        assert _count(later["sales"]["total"]) == (1, 200)
        assert _count(later["sales"]["payment"]["cashless"]) == (0, 0)
        change = later["audit"]["delta"]
        assert later["audit"]["baseline_read_id"] == audit["read_id"]
        assert change["sales"] == {"vends": 1, "value": 200, "basis": "init"}
        assert change["inserted"]["value"] == change["to_tubes"]["value"] == 200
        assert change["to_cashbox"]["value"] == change["dispensed"]["value"] == 0
        assert rig.stock_levels() == {"s:1": 8, "s:2": 4}  # a collection alone loads nothing
        # visit-2 was reported after anything the repeated visit-1 could have started.
        assert len(_reports(backend, "visit-1")) == 1
        assert _collections(rig) == {"visit-1": 1, "visit-2": 1}
        await backend.wait_for(
            lambda: backend.state[DEVICE].get("last_collection") == later["until"], 10
        )


async def test_restock_collect_without_a_dex_port_reports_the_journal_and_why_no_audit(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        assert backend.state[DEVICE]["last_collection"] is None
        early = await _send(rig, {"id": "too-early", "op": "stock.restock", "collect": True})
        assert (early["ok"], early["code"]) == (False, "no_planogram")  # and no collection
        assert (await rig.vmc.cash_sale(rig.vmc.money(120), 3)).is_ack
        await backend.wait_for(lambda: backend.books.sales or None, 10)
        reply = await _send(rig, {"id": "cash-only", "op": "cash.collect"})
        assert reply["ok"], reply
        assert reply["result"] == {
            "collection_id": "cash-only",
            "since": None,
            "until": reply["result"]["until"],
        }
        report = await _report(rig, "cash-only")
        assert report["audit"] is None
        assert report["audit_error"] == {
            "read_id": None,
            "step": "config",
            "reason": "no DEX port configured",
        }
        assert _count(report["sales"]["payment"]["cash"]) == (1, 120)
        assert _collections(rig) == {"cash-only": 1}


async def test_restock_collect_with_a_failed_dex_read_names_the_step(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    silent = asyncio.Event()  # never set: nothing answers on the DEX port
    async with machine_with_dex(tmp_path, broker, read_at_start=False, serve_from=silent) as (
        rig,
        _line,
    ):
        backend = rig.backend
        await load_planogram(rig)
        reply = await _send(rig, {"id": "visit-x", "op": "stock.restock", "collect": True})
        assert reply["ok"], reply
        report = await _report(rig, "visit-x")
        assert report["audit"] is None
        error = report["audit_error"]
        (failed,) = [e for e in backend.event_log if e["type"] == "audit.failed"]
        assert failed["trigger"] == "collection"
        assert (error["read_id"], error["step"], error["reason"]) == (
            failed["read_id"],
            failed["step"],
            failed["reason"],
        )
        assert _count(report["sales"]["total"]) == (0, 0)
        assert rig.stock_levels() == {"s:1": 8, "s:2": 5}  # the restock did not wait for it


async def test_restock_collection_journaled_before_kill_9_is_reported_once_after_restart(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    serve = asyncio.Event()  # the DEX port stays silent until the restart: the read hangs
    async with machine_with_dex(tmp_path, broker, read_at_start=False, serve_from=serve) as (
        rig,
        _line,
    ):
        backend = rig.backend
        await load_planogram(rig)
        assert (await rig.vmc.cash_sale(rig.vmc.money(200), 2)).is_ack
        await wait_levels(rig, {"s:1": 3, "s:2": 4})
        reply = await _send(rig, {"id": "visit-k", "op": "stock.restock", "collect": True})
        assert reply["ok"], reply
        rig.daemon.kill()  # while the collection's audit read waits for the machine
        assert rig.daemon.proc is not None
        await rig.daemon.proc.wait()
        await rig.daemon.stop()
        assert _collections(rig) == {"visit-k": 0}  # journaled with the restock, not reported
        assert rig.stock_levels() == {"s:1": 8, "s:2": 5}
        assert not _reports(backend, "visit-k")

        serve.set()
        await rig.restart_daemon()
        report = await _report(rig, "visit-k")
        assert report["audit_error"] is None
        assert report["audit"]["cash_sales"]["vends_init"] == 1
        assert _count(report["sales"]["payment"]["cash"]) == (1, 200)
        after = await _send(rig, {"id": "after", "op": "cash.collect"})
        assert after["result"]["since"] == report["until"]
        await _report(rig, "after")
        assert len(_reports(backend, "visit-k")) == 1
        assert _collections(rig) == {"visit-k": 1, "after": 1}
