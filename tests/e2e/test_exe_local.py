"""``vmcd --exe`` without a cloud: the local policy decides, as on MDB."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drivers.pty import PtyPair
from sim.daemon_proc import ExeDaemonProcess
from sim.exe_vmc import ExeVmc
from tests.waiting import wait_for
from vmc.cloud.messages import VendType
from vmc.journal import Journal


@pytest.mark.parametrize(("policy", "outcome"), [("accept", "vended"), ("deny", "given_up")])
async def test_exe_local_policy_decides(tmp_path: Path, policy: str, outcome: str) -> None:
    pair = PtyPair()
    config = tmp_path / "vmc.toml"
    config.write_text("[exe]\npoll_interval = 0.05\nreply_timeout = 0.3\n")
    daemon = ExeDaemonProcess(
        pair, tmp_path / "state", local_approval=policy, extra=("--config", str(config))
    )
    vmc = ExeVmc(pair.master, request_wait_s=2.0)
    vmc.start()
    try:
        await daemon.start()
        await wait_for(lambda: vmc.heard, 15, "vmcd polling the VMC")
        await asyncio.sleep(0.3)  # past the first CREDIT: the selection is not a stale one
        selection = vmc.select(20)  # standard Executive: the byte is the price
        assert await asyncio.wait_for(selection.done, 15) == outcome
    finally:
        vmc.close()
        await daemon.stop()
        pair.close()
    journal = Journal(tmp_path / "state" / "journal.sqlite3")
    try:
        rows = [(r.kind, r.amount, r.vend_type) for r in journal.records()]
    finally:
        journal.close()
    assert rows == ([("vend_success", 20, VendType.FREE)] if policy == "accept" else [])
