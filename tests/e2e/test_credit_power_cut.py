"""Money is sacred for vouchers and credits too: kill -9 vmcd at random points of their sessions.

The simulated VMC records the approvals it heard (and dispenses each one); the backend records
what the device told it. After every cut the daemon restarts on the same journal, and:

- every voucher and credit gets exactly one outcome (after dropping duplicates by event id);
- a voucher approved at most one vend, of its set; a credit at most its amount in total;
- a dispensed vend is reported ``success`` or ``unknown``, and a ``success`` was dispensed;
- the outcome's ``used`` (a voucher's ``charged``) is what the ``txn.vend`` events it paid add
  up to, and covers every vend the VMC dispensed.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from protocols.mdb import commands as c
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.waiting import wait_until

PRICES = {1: 200, 2: 250, 3: 150, 4: 120}
VOUCHER_SET = [3]
CREDIT = 400
DISPENSE_S = 0.03
"""How long the VMC takes to dispense: a session lasts long enough for cuts to fall inside."""


@dataclass
class OnTheBus:
    kind: str
    approvals: list[tuple[int, int]] = field(default_factory=list)  # (item, amount)


async def _customer(rig: Rig, facts: OnTheBus, items: list[int]) -> None:
    """One session of selections, each dispensed as soon as the VMC has its approval."""
    vmc = rig.vmc
    loop = asyncio.get_running_loop()
    for item in items:
        if not (await vmc.vend_request(vmc.money(PRICES[item]), item)).is_ack:
            return
        deadline = loop.time() + 6.0
        while loop.time() < deadline:
            answer = await vmc.poll()
            if answer.code == c.Resp.VEND_APPROVED:
                amount = vmc.info.money.to_minor(int.from_bytes(answer.data[1:], "big"))
                facts.approvals.append((item, amount))
                await asyncio.sleep(DISPENSE_S)  # the product drops
                await vmc.vend_success(item)
                break
            if answer.code == c.Resp.VEND_DENIED:
                break
            if answer.timed_out and rig.daemon.proc is not None and rig.daemon.proc.returncode:
                return  # the reader is dead
            await asyncio.sleep(0.002)
        else:
            return
    await vmc.session_complete()


def _ready(rig: Rig) -> bool:
    state = rig.backend.state.get(DEVICE) or {}
    return state.get("reader") == "enabled" and not state.get("txn") and not state.get("credit")


async def _power_cuts(tmp_path: Path, broker: MosquittoBroker, runs: int, seed: int) -> None:
    rng = random.Random(seed)
    facts: dict[tuple[str, str], OnTheBus] = {}
    cut_mid_session = 0
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        for run in range(runs):
            assert await wait_until(lambda: _ready(rig), 20)
            if run % 2:
                key = ("credit", f"k-{run}")
                reply = await backend.credit(DEVICE, key[1], CREDIT)
                items = [1, 3, 2]  # 200 + 150; 250 is over the 50 left
            else:
                key = ("voucher", f"v-{run}")
                reply = await backend.voucher(DEVICE, key[1], value=150, selections=VOUCHER_SET)
                items = [4, 3]  # refused, then used
            assert reply["ok"], reply
            facts[key] = OnTheBus(key[0])
            customer = asyncio.create_task(_customer(rig, facts[key], items))
            await asyncio.sleep(rng.uniform(0.0, 0.1))  # where the cut falls, not a wait
            cut_mid_session += not customer.done()
            rig.daemon.kill()
            assert rig.daemon.proc is not None
            await rig.daemon.proc.wait()
            await asyncio.wait_for(customer, 10)
            await rig.daemon.stop()
            backend.state.pop(DEVICE, None)
            await rig.restart_daemon()
            await backend.wait_credit(*key, timeout=20)
        books = backend.books

        def outcomes(key: tuple[str, str]) -> int:
            kind, credit_id = key
            return sum(
                e["type"] == f"{kind}.status" and e.get(f"{kind}_id") == credit_id
                for e in backend.event_log
            )

        # Everything the daemon still had to send is sent, the last outcome included.
        assert await wait_until(
            lambda: rig.outbox_size() == 0 and all(outcomes(key) for key in facts), 30
        )
    assert not books.entries  # every approval the VMC heard was a voucher's or a credit's
    for key, seen in facts.items():
        entry = books.credits[key]
        assert outcomes(key) == 1, (key, entry)
        assert entry.agrees(), (key, entry)
        dispensed = sum(amount for _, amount in seen.approvals)
        assert all(amount == PRICES[item] for item, amount in seen.approvals)
        if seen.kind == "voucher":
            assert len(seen.approvals) <= 1
            assert all(item in VOUCHER_SET for item, _ in seen.approvals)
        assert dispensed <= entry.value
        assert entry.used is not None
        assert dispensed <= entry.used <= entry.value
        results = [v["result"] for v in entry.vends]
        assert "failure" not in results
        assert results.count("success") <= len(seen.approvals)
        assert len(seen.approvals) <= len(results)
    reasons = Counter(str((books.credits[k].status or {}).get("reason")) for k in facts)
    print(f"credit power cuts: {runs}, mid-session: {cut_mid_session}, outcomes: {dict(reasons)}")
    assert cut_mid_session, "no cut fell inside a session: the test proved nothing"


async def test_voucher_and_credit_power_cuts_quick(tmp_path: Path, broker: MosquittoBroker) -> None:
    await _power_cuts(tmp_path, broker, runs=6, seed=int(os.environ.get("VMC_SEED", "21")))


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_voucher_and_credit_power_cuts_many(tmp_path: Path, broker: MosquittoBroker) -> None:
    await _power_cuts(tmp_path, broker, runs=100, seed=int(os.environ.get("VMC_SEED", "22")))
