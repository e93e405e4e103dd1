"""kill -9 of ``vmcd --exe`` in the middle of vends: one outcome per transaction, never two
approvals, never a second product for one selection.

On Executive the VMC outlives vmcd's restart with its selection still showing (a VMC waits for
its VEND), so the restarted master must not serve a selection it finds waiting: it might be the
one approved before the kill. The journal settles the transaction as on MDB (approved: unknown;
not yet: expired), and the VMC gives the selection up by itself.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

from sim.backend import Policy
from sim.broker import MosquittoBroker
from sim.exe_vmc import Selection
from tests.e2e.exe_rig import DEVICE, ExeRig, exe_machine
from tests.waiting import wait_for

FINAL_STATES = {"denied", "expired", "cancelled"}


async def _power_cut(rig: ExeRig) -> None:
    rig.daemon.kill()
    assert rig.daemon.proc is not None
    await rig.daemon.proc.wait()
    await rig.daemon.stop()


async def _restart(rig: ExeRig) -> None:
    started = time.time()
    await rig.daemon.start()
    await rig.enabled(since=started)


def _heard(rig: ExeRig, txn_id: str) -> int:
    """Outcomes the backend heard for ``txn_id``: its vend results and end states."""
    vends = [
        e for e in rig.backend.event_log if e.get("txn_id") == txn_id and e["type"] == "txn.vend"
    ]
    states = rig.backend.books.entries[txn_id].states
    return len(vends) + sum(s in FINAL_STATES for s in states)


async def test_exe_kill_9_during_the_vend_is_one_unknown_outcome(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker) as rig:
        rig.vmc.vend_s = 2.0  # a slow motor: the kill comes while it turns
        txn_id = await rig.backend.lock(DEVICE, "alice")
        selection = rig.vmc.select(1)
        await wait_for(lambda: selection.vends, 10, "the VEND at the VMC")
        await _power_cut(rig)
        assert await asyncio.wait_for(selection.done, 10) == "vended"
        await _restart(rig)
        entry = await rig.backend.wait_done(txn_id, 20)
        await rig.backend.wait_for(lambda: _heard(rig, txn_id) >= 1, 10)
        assert entry.result == "unknown"
        assert _heard(rig, txn_id) == 1
        assert selection.vends == 1
        assert len(rig.log_events("vend_approved")) == 1


async def test_exe_kill_9_before_the_decision_never_vends_the_waiting_selection(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with exe_machine(tmp_path, broker, policy=Policy.SILENT) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        selection = rig.vmc.select(2)
        await rig.backend.wait_for(
            lambda: "requested" in rig.backend.books.entries[txn_id].states, 10
        )
        await _power_cut(rig)
        await _restart(rig)
        entry = await rig.backend.wait_done(txn_id, 20)
        assert entry.states[-1] == "expired"
        await wait_for(lambda: rig.log_events("exe_fault"), 10, "the stale selection's fault")
        assert rig.log_events("exe_fault")[-1]["fault"] == "stale_request"
        reply = await rig.backend.command(DEVICE, "paid", txn_id=txn_id, amount=120)
        assert reply["code"] == "too_late"
        assert await asyncio.wait_for(selection.done, 15) == "given_up"
        assert selection.vends == 0
        assert not rig.log_events("vend_approved")


async def test_exe_kill_9_at_random_points_keeps_the_books(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    rng = random.Random(int(os.environ.get("VMC_SEED", "31")))
    runs: dict[str, Selection] = {}
    async with exe_machine(tmp_path, broker, settings={"approval_timeout": 3.0}) as rig:
        rig.vmc.vend_s = 0.3
        rig.vmc.request_wait_s = 4.0
        for _ in range(3):
            txn_id = await rig.backend.lock(DEVICE, "alice")
            selection = rig.vmc.select(rng.choice([1, 2, 3]))
            runs[txn_id] = selection
            await asyncio.sleep(rng.uniform(0.0, 0.6))
            await _power_cut(rig)
            await _restart(rig)
            await rig.backend.wait_done(txn_id, 20)
            await asyncio.wait_for(selection.done, 15)  # over at the VMC before the next one
        assert await wait_for(
            lambda: all(_heard(rig, t) for t in runs), 20, "every transaction's outcome"
        )
        for txn_id, selection in runs.items():
            entry = rig.backend.books.entries[txn_id]
            assert _heard(rig, txn_id) == 1, entry.states
            assert selection.vends <= 1
            vended = selection.outcome == "vended"
            if entry.result == "success":
                assert vended, entry.states
            if vended:
                assert entry.result in ("success", "unknown"), entry.states
        assert rig.vmc.stray_vends == 0
