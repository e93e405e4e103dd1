"""Operating state, service flags and last service in the retained state, end to end.

Mosquitto, vmcd on a pty, the simulated VMC and backend (and the VMC's DEX port for the audit
flags): the state follows the VMC's polls and reader, the coin tubes its audit counts, the
sales and the refills, including the changes that come with time alone.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.broker import MosquittoBroker
from sim.vmc_master import VmcMaster
from tests.e2e.cloud_rig import DEVICE, machine, machine_with_dex
from tests.e2e.test_stock_flow import load_planogram
from tests.e2e.test_stops import background
from vmc.services.bus import MDB_SILENT_S


@dataclass
class Vmc:
    """A VMC that initialises the reader, then polls it and disables or enables it on demand."""

    master: VmcMaster
    enabled: bool = True

    async def run(self) -> None:
        await self.master.initialise()
        told = True
        while True:
            if self.enabled != told:
                told = self.enabled
                assert (await self.master.reader_enable(told)).is_ack
            await self.master.poll()
            await asyncio.sleep(0.05)


async def test_operating_state_from_unknown_to_operating_out_of_service_and_no_connection(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = tmp_path / "vmc.toml"
    config.write_text("[service]\nout_of_service_after_s = 1.0\n")
    extra = ("--config", str(config))
    async with machine(tmp_path, broker, extra=extra, initialise=False) as rig:
        backend = rig.backend

        def operating() -> Any:
            return (backend.state.get(DEVICE) or {}).get("operating_state")

        # Published on connect, before the VMC said anything and before the link's timeout.
        await backend.wait_for(lambda: operating() == "unknown", 10)
        vmc = Vmc(rig.vmc)
        async with background(vmc.run()):
            await backend.wait_for(lambda: operating() == "operating", 15)
            vmc.enabled = False
            await backend.wait_for(lambda: backend.state[DEVICE]["reader"] == "disabled", 10)
            await backend.wait_for(lambda: operating() == "out_of_service", 10)
            vmc.enabled = True
            await backend.wait_for(lambda: operating() == "operating", 10)
        await backend.wait_for(lambda: operating() == "no_connection", 4 * MDB_SILENT_S)
        assert backend.state[DEVICE]["mdb_link"] == "down"


async def test_service_flags_low_change_no_recent_sales_and_last_service_after_a_refill(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    # 0.002 h: 7.2 s without a sale is "no recent sales" (long enough that a busy machine
    # still publishes the sale's "false" before time alone turns it back).
    service = "[service]\nlow_change_below = 1000\nno_sales_window_h = 0.002\n"
    async with machine_with_dex(tmp_path, broker, service) as (rig, _line):
        backend = rig.backend

        def state() -> dict[str, Any]:
            return backend.state.get(DEVICE) or {}

        # The audit read at start: the simulated changer's tubes hold 25.00, not under 10.00.
        await backend.wait_for(lambda: state().get("change_tubes") is not None, 15)
        assert state()["change_tubes"] == {"value": 2500, "decimals": 2}
        assert state()["low_change"] is False
        rig.vmc.sales.tube_contents = 800
        assert rig.daemon.proc is not None
        rig.daemon.proc.send_signal(signal.SIGUSR1)
        await backend.wait_for(lambda: state().get("low_change") is True, 15)
        assert state()["change_tubes"] == {"value": 800, "decimals": 2}

        # No sale since vmcd first started, for longer than the window: the flag comes up by
        # itself; a sale takes it down, and time alone brings it back.
        await backend.wait_for(lambda: state().get("no_recent_sales") is True, 20)
        assert (await rig.vmc.cash_sale(rig.vmc.money(150), 1)).is_ack
        await backend.wait_for(lambda: state().get("no_recent_sales") is False, 10)
        await backend.wait_for(lambda: state().get("no_recent_sales") is True, 20)

        assert state()["last_service"] is None  # no refill, no door opening in the audits
        refilled_after = time.time()
        await load_planogram(rig)  # the planogram, then a refill
        await backend.wait_for(lambda: state().get("last_service") is not None, 10)
        assert state()["last_service"] >= refilled_after
        assert state()["last_service"] == state()["last_loading"]
