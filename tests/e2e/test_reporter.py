"""The audit reporter end to end: vmcd reads the simulated VMC's audit over DEX on a pty and
the backend receives the report, the summary, and after sales the delta that matches the bus."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine_with_dex
from tests.e2e.test_stock_flow import load_planogram, wait_levels


def _events(rig_backend: object, kind: str) -> list[dict[str, object]]:
    log = rig_backend.event_log  # type: ignore[attr-defined]
    return [e for e in log if e["type"] == kind]


@contextlib.asynccontextmanager
async def _machine_with_dex(
    tmp_path: Path, broker: MosquittoBroker, more_config: str = ""
) -> AsyncIterator[Rig]:
    """vmcd with the cloud and a DEX port that reads at start, served from the VMC's counters;
    ``more_config`` is TOML for the other tables."""
    async with machine_with_dex(tmp_path, broker, more_config) as (rig, _line):
        yield rig


async def test_reads_report_and_deltas_match_the_bus(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with _machine_with_dex(tmp_path, broker) as rig:
        backend = rig.backend
        await backend.wait_for(lambda: len(_events(backend, "audit.summary")) >= 1, 15)
        (first,) = _events(backend, "audit.report")
        assert first["valid"] is True
        assert first["trigger"] == "start"
        assert not _events(backend, "audit.delta")  # the first good read is the baseline
        for _ in range(3):
            await backend.lock(DEVICE, "alice")
            assert (await rig.customers.run("purchase", 1)).outcome == "vended"
        assert (await rig.customers.run("cash_sale", 2)).ok
        assert rig.daemon.proc is not None
        rig.daemon.proc.send_signal(signal.SIGUSR1)
        await backend.wait_for(lambda: _events(backend, "sales.report") or None, 15)
        (change,) = _events(backend, "audit.delta")
        delta = change["delta"]
        assert isinstance(delta, dict)
        assert delta["paid"]["vends"] == 4  # three cashless vends and one cash sale
        assert delta["paid"]["value"] == rig.vmc.sales.paid_value
        (sales,) = _events(backend, "sales.report")
        slots = sales["slots"]
        assert isinstance(slots, list)
        assert sum(slot["sales"] for slot in slots) == 4
        assert backend.state[DEVICE]["last_report"] is not None


async def test_stock_reconcile_only_for_vends_the_reader_did_not_see(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Vends on the bus agree with the audit: silent.

    Two cash vends the VMC counted but the reader never saw: one ``stock.reconcile`` for that
    selection, and the stock follows the bus.
    """
    async with _machine_with_dex(tmp_path, broker) as rig:
        backend = rig.backend
        await backend.wait_for(lambda: len(_events(backend, "audit.summary")) >= 1, 15)
        await load_planogram(rig)
        assert await rig.customers.purchase(item=1) == "vended"
        assert (await rig.vmc.cash_sale(rig.vmc.money(200), 2)).is_ack
        await wait_levels(rig, {"s:1": 2, "s:2": 4})
        assert rig.daemon.proc is not None
        rig.daemon.proc.send_signal(signal.SIGUSR1)
        await backend.wait_for(lambda: _events(backend, "sales.report") or None, 15)
        for _ in range(2):  # sold past the reader: the VMC counts them, the bus never sees
            rig.vmc.sales.vended(2, 200, cash=True)
        rig.daemon.proc.send_signal(signal.SIGUSR1)
        await backend.wait_for(lambda: _events(backend, "stock.reconcile") or None, 15)
        await backend.wait_for(lambda: len(_events(backend, "sales.report")) >= 2 or None, 15)
        (found,) = _events(backend, "stock.reconcile")
        reads = [e["read_id"] for e in _events(backend, "audit.delta")]
        assert found["read_id"] == reads[1]
        assert found["baseline_read_id"] == reads[0]
        assert (found["selection"], found["audit_vends"], found["bus_vends"]) == (2, 2, 0)
        since, until = found["since"], found["until"]
        assert isinstance(since, float)
        assert isinstance(until, float)
        assert since < until
        assert rig.stock_levels() == {"s:1": 2, "s:2": 4}  # the stock follows the bus
