"""Money is sacred: kill -9 vmcd at random points of transactions and check the books.

The simulated VMC records what really happened on the bus (which vends it saw approved and
dispensed); the simulated backend records what the device told it. After every power cut the
daemon restarts on the same journal, and the invariants must hold:

- every transaction gets exactly one outcome (after dropping duplicates by event id);
- no vend is approved twice;
- a vend the backend books as ``success`` was dispensed, and a dispensed vend is booked as
  ``success`` or ``unknown``, never as failed, denied, expired or cancelled;
- the backend charged exactly the successful vends.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocols.mdb import commands as c
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.waiting import wait_until

FINAL_STATES = {"denied", "expired", "cancelled"}


@dataclass
class OnTheBus:
    approvals: int = 0
    dispensed: bool = False


async def _customer(rig: Rig, facts: OnTheBus, rng: random.Random) -> None:
    vmc = rig.vmc
    item = rng.randrange(1, 60)
    if not (await vmc.vend_request(vmc.money(150), item)).is_ack:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 6.0
    while loop.time() < deadline:
        answer = await vmc.poll()
        if answer.code == c.Resp.VEND_APPROVED:
            facts.approvals += 1
            facts.dispensed = True  # the product drops as soon as the VMC has the approval
            await vmc.vend_success(item)
            await vmc.session_complete()
            return
        if answer.code == c.Resp.VEND_DENIED:
            await vmc.session_complete()
            return
        if answer.timed_out and rig.daemon.proc is not None and rig.daemon.proc.returncode:
            return  # the reader is dead
        await asyncio.sleep(0.002)


async def _power_cuts(tmp_path: Path, broker: MosquittoBroker, runs: int, seed: int) -> None:
    rng = random.Random(seed)
    facts: dict[str, OnTheBus] = {}
    async with machine(tmp_path, broker, balances={"alice": 10**9}) as rig:
        for _ in range(runs):
            txn_id = await rig.backend.lock(DEVICE, "alice")
            facts[txn_id] = OnTheBus()
            customer = asyncio.create_task(_customer(rig, facts[txn_id], rng))
            await asyncio.sleep(rng.uniform(0.0, 0.06))
            rig.daemon.kill()
            assert rig.daemon.proc is not None
            await rig.daemon.proc.wait()
            await asyncio.wait_for(customer, 10)
            await rig.daemon.stop()
            await rig.restart_daemon()
            await rig.backend.wait_done(txn_id, 20)
        books = rig.backend.books

        def heard(txn_id: str) -> int:
            """The vend results and end states the backend heard for ``txn_id``."""
            vends = [
                e
                for e in rig.backend.event_log
                if e.get("txn_id") == txn_id and e["type"] == "txn.vend"
            ]
            return len(vends) + sum(s in FINAL_STATES for s in books.entries[txn_id].states)

        # Outcomes settle once more after the last restart: wait until the daemon has sent
        # everything and every transaction's outcome has arrived.
        assert await wait_until(
            lambda: rig.outbox_size() == 0 and all(heard(txn_id) for txn_id in facts), 30
        )
    assert set(books.entries) == set(facts)
    for txn_id, seen in facts.items():
        entry = books.entries[txn_id]
        assert heard(txn_id) == 1, (txn_id, entry.states)
        assert seen.approvals <= 1
        if entry.result == "success":
            assert seen.dispensed, (txn_id, entry.states)
        if seen.dispensed:
            assert entry.result in ("success", "unknown"), (txn_id, entry.states)
    charged = sum(e.charged for e in books.entries.values())
    assert charged == sum(e.paid for e in books.entries.values() if e.result == "success")
    outcomes = Counter(e.result or e.states[-1] for e in books.entries.values())
    print(f"power cuts: {runs}, outcomes: {dict(outcomes)}, duplicates: {books.duplicates}")


async def test_power_cuts_quick(tmp_path: Path, broker: MosquittoBroker) -> None:
    await _power_cuts(tmp_path, broker, runs=4, seed=int(os.environ.get("VMC_SEED", "11")))


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_power_cuts_many(tmp_path: Path, broker: MosquittoBroker) -> None:
    await _power_cuts(tmp_path, broker, runs=200, seed=int(os.environ.get("VMC_SEED", "12")))
