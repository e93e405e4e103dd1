"""The seven-step remote-vend flow end to end: backend, Mosquitto, vmcd on a pty, the sim VMC."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.mdb import commands as c
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, machine


@pytest.mark.parametrize("level", [1, 3])
async def test_lock_select_paid_vend(tmp_path: Path, broker: MosquittoBroker, level: int) -> None:
    async with machine(tmp_path, broker, level=level) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        outcome = await rig.customers.run("purchase", 1)
        assert outcome.ok, outcome
        assert outcome.outcome == "vended"
        entry = await rig.backend.wait_done(txn_id)
        assert entry.result == "success"
        assert entry.charged == entry.price > 0
        assert rig.backend.books.balances["alice"] == 10_000 - entry.price
        kinds = [e["type"] for e in rig.backend.event_log]
        assert kinds == ["txn.request", "txn.vend"]
