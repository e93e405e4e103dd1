"""The compatibility self-test end to end: vmcd on a pty learns the simulated VMC's set-up and
its DEX audit, keeps the profile in its journal and sends ``device.profile`` when it changes."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

from drivers.pty import PtyPair
from sim.broker import MosquittoBroker
from sim.daemon_proc import DaemonProcess
from sim.vmc_master import VmcIdentity, VmcMaster
from tests.e2e.cloud_rig import machine, machine_with_dex
from tests.waiting import wait_for
from vmc.services.profile_service import PROFILE

SIM_VMC = dataclasses.asdict(VmcIdentity())


def _profiles(backend: Any) -> list[dict[str, Any]]:
    return [e for e in backend.event_log if e["type"] == "device.profile"]


def _stored(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / "journal.sqlite3"
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute("SELECT value FROM state WHERE key = ?", (PROFILE,)).fetchone()
    return None if row is None else dict(json.loads(row[0]))


async def test_the_vmc_then_its_cash_sales_then_its_audit_reach_the_cloud(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine_with_dex(tmp_path, broker, read_at_start=False) as (rig, _line):
        backend = rig.backend
        (event,) = await wait_for(lambda: _profiles(backend), 20, "the first device.profile")
        mdb, said = event["mdb"], {key: v["answer"] for key, v in event["verdicts"].items()}
        assert (mdb["vmc_level"], mdb["operating_level"], mdb["vmc"]) == (3, 3, SIM_VMC)
        assert mdb["features"]["always_idle"] is True
        assert mdb["features"]["expanded_currency"] is True
        assert (mdb["display"]["columns"], mdb["display"]["rows"]) == (16, 2)
        assert (mdb["max_price"], mdb["min_price"]) == (10000, 5)
        assert mdb["timing"]["answers"] > 0
        assert said["remote_vend"] == said["select_first"] == said["wide_prices"] == "yes"
        assert said["cash_sales"] == said["dex"] == said["slot_stock"] == "unknown"
        assert event["dex"]["configured"] is True

        assert (await rig.customers.run("cash_sale", 1)).ok
        cash = await wait_for(lambda: _profiles(backend)[1:], 20, "a device.profile: cash")
        assert cash[0]["changed"] == ["mdb.cash_sales_seen", "verdicts.cash_sales"]

        assert rig.daemon.proc is not None
        rig.daemon.proc.send_signal(signal.SIGUSR1)  # an audit read
        audit = await wait_for(lambda: _profiles(backend)[2:], 30, "a device.profile: audit")
        dex, said = audit[0]["dex"], {k: v["answer"] for k, v in audit[0]["verdicts"].items()}
        assert (dex["answered"], dex["protocol"]) == (True, "ucs")
        assert dex["machine"]["serial"] == SIM_VMC["serial"]
        assert {"PA1", "PA2", "CA15"} <= set(dex["fields"])
        assert said["dex"] == said["slot_stock"] == said["low_change"] == "yes"
        assert "dex.answered" in audit[0]["changed"]
        stored = _stored(rig.daemon.state_dir)
        assert stored is not None
        assert stored["dex"]["answered"] is True


async def test_learned_without_a_cloud_then_sent_once_there_is_one(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    state_dir = tmp_path / "state"
    pair = PtyPair()
    daemon = DaemonProcess(pair, state_dir, level=3, local_approval="deny")
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await daemon.start()
        await vmc.initialise(level=2, wait_s=20)
        stored = await wait_for(lambda: _stored(state_dir), 20, "the profile in the journal")
        assert (stored["mdb"]["vmc_level"], stored["mdb"]["vmc"]) == (2, SIM_VMC)
        assert stored["verdicts"]["select_first"]["answer"] == "no"
    finally:
        vmc.close()
        assert await daemon.stop() == 0
        pair.close()
    async with machine(tmp_path, broker, level=3) as rig:
        (event,) = await wait_for(lambda: _profiles(rig.backend), 20, "a device.profile")
        assert event["mdb"]["vmc_level"] == 2
        assert rig.vmc.info.level == 3
