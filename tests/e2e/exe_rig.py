"""An Executive machine for cloud tests: Mosquitto, ``vmcd --exe`` on a pty, the simulated EXE
VMC and the backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.pty import PtyPair
from sim.backend import Policy, SimBackend
from sim.broker import MosquittoBroker
from sim.daemon_proc import ExeDaemonProcess
from sim.exe_vmc import ExeVmc
from tests.e2e.cloud_rig import take_down
from tests.waiting import wait_for

DEVICE = "exe1"
# Quick settings for a test: a busy 2-core machine still answers a pty within the reply time.
EXE_SETTINGS: dict[str, Any] = {
    "poll_interval": 0.05,
    "reply_timeout": 0.3,
    "silent_after": 1.5,
    "approval_timeout": 4.0,
    "vend_timeout": 10.0,
    "price_holding": True,
}
PRICES = {1: 150, 2: 120, 3: 100}


def planogram(prices: Mapping[int, int], version: int = 1) -> dict[str, Any]:
    """A planogram whose selection ``n`` is price line ``n`` at ``prices[n]``."""
    return {
        "version": version,
        "products": [{"id": f"p{n}"} for n in prices],
        "selections": [
            {
                "number": n,
                "product": f"p{n}",
                "price": price,
                "capacity": 10,
                "par_level": 8,
                "alarm_level": 1,
            }
            for n, price in prices.items()
        ],
    }


@dataclass
class ExeRig:
    broker: MosquittoBroker
    daemon: ExeDaemonProcess
    vmc: ExeVmc
    backend: SimBackend
    pair: PtyPair

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """vmcd's log lines of event ``name``."""
        found = []
        for line in (self.daemon.state_dir / "vmcd.log").read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == name:
                    found.append(entry)
        return found

    async def set_prices(self, prices: Mapping[int, int], version: int = 1) -> None:
        """The backend pushes a planogram; until vmcd gave its prices to the bus process."""
        sent = len(self.log_events("exe_prices_sent"))
        document = planogram(prices, version)
        await self.backend.stock_command(DEVICE, "planogram.set", planogram=document)
        await wait_for(
            lambda: len(self.log_events("exe_prices_sent")) > sent,
            10,
            "the new prices in the bus process",
        )

    async def enabled(self, since: float = 0.0) -> None:
        """Until the backend sees the machine online, its reader enabled in a state snapshot
        taken after ``since`` (a restarted vmcd's, not the retained one of the vmcd before)."""
        backend = self.backend

        def ready() -> bool:
            state = backend.state.get(DEVICE) or {}
            return state.get("reader") == "enabled" and state.get("at", 0.0) >= since

        await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", 15)
        await backend.wait_for(ready, 15)


def _toml(settings: Mapping[str, Any]) -> str:
    return "[exe]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())


@contextlib.asynccontextmanager
async def exe_machine(
    tmp_path: Path,
    broker: MosquittoBroker,
    *,
    policy: Policy = Policy.POST_BILLING,
    balances: dict[str, int] | None = None,
    settings: Mapping[str, Any] | None = None,
    prices: Mapping[int, int] | None = PRICES,
) -> AsyncIterator[ExeRig]:
    """The whole machine, the VMC answering and (with ``prices``) the planogram in place."""
    pair = PtyPair()
    config = tmp_path / "vmc.toml"
    config.write_text(_toml({**EXE_SETTINGS, **(settings or {})}))
    daemon = ExeDaemonProcess(
        pair,
        tmp_path / "state",
        extra=("--mqtt", broker.url, "--device-id", DEVICE, "--config", str(config)),
    )
    backend = SimBackend(broker.url, policy=policy, balances=balances or {"alice": 10_000})
    backend_task = asyncio.create_task(backend.run())
    vmc = ExeVmc(pair.master, request_wait_s=8.0)
    vmc.start()
    try:
        await backend.ready()
        await daemon.start()
        rig = ExeRig(broker, daemon, vmc, backend, pair)
        await rig.enabled()
        if prices is not None:
            await rig.set_prices(prices)
        yield rig
    finally:
        await take_down(vmc.close, daemon.stop, backend, backend_task, pair)
