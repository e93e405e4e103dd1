"""Money is sacred for vouchers and credits too: kill -9 vmcd at random points of their sessions.

The simulated VMC records the approvals it heard (and dispenses each one); the backend records
what the device told it. After every cut the daemon restarts on the same journal, and
(``tests.e2e.power_cuts.vouchers_and_credits``):

- every voucher and credit gets exactly one outcome (after dropping duplicates by event id);
- a voucher approved at most one vend, of its set; a credit at most its amount in total;
- a dispensed vend is reported ``success`` or ``unknown``, and a ``success`` was dispensed;
- the outcome's ``used`` (a voucher's ``charged``) is what the ``txn.vend`` events it paid add
  up to, and covers every vend the VMC dispensed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from sim.broker import MosquittoBroker
from tests.e2e.power_cuts import vouchers_and_credits


async def _power_cuts(tmp_path: Path, broker: MosquittoBroker, runs: int, seed: int) -> None:
    figures = await vouchers_and_credits(tmp_path, broker, runs, random.Random(seed))
    print("credit power cuts:", figures.report())
    assert not figures.problems
    assert figures.mid_session, "no cut fell inside a session: the test proved nothing"


async def test_voucher_and_credit_power_cuts_quick(tmp_path: Path, broker: MosquittoBroker) -> None:
    await _power_cuts(tmp_path, broker, runs=6, seed=int(os.environ.get("VMC_SEED", "21")))


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_voucher_and_credit_power_cuts_many(tmp_path: Path, broker: MosquittoBroker) -> None:
    await _power_cuts(tmp_path, broker, runs=100, seed=int(os.environ.get("VMC_SEED", "22")))
