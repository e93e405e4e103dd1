"""The audit reporter end to end: vmcd reads the simulated VMC's audit over DEX on a pty and
the backend receives the report, the summary, and after sales the delta that matches the bus."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from drivers.pty import PtyPair
from sim.broker import MosquittoBroker
from sim.dex_source import DexSource
from sim.vmc_counters import audit_from_counters
from tests.e2e.cloud_rig import DEVICE, machine


def _events(rig_backend: object, kind: str) -> list[dict[str, object]]:
    log = rig_backend.event_log  # type: ignore[attr-defined]
    return [e for e in log if e["type"] == kind]


async def test_reads_report_and_deltas_match_the_bus(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    dex_pair = PtyPair()
    config = tmp_path / "vmc.toml"
    config.write_text(
        f'[dex]\nport = "{dex_pair.device_url}"\nread_at_start = true\nschedule = []\n'
    )
    async with machine(tmp_path, broker, extra=("--config", str(config))) as rig:
        source = DexSource(dex_pair.master.fileno(), lambda: audit_from_counters(rig.vmc.sales))
        serving = asyncio.create_task(source.serve())
        backend = rig.backend
        try:
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
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            dex_pair.close()
