"""Money is sacred: kill -9 vmcd at random points of remote vends and check the books.

The simulated VMC records what really happened on the bus (which vends it saw approved and
dispensed); the simulated backend records what the device told it. After every power cut the
daemon restarts on the same journal, and the invariants must hold
(``tests.e2e.power_cuts.remote_vends``):

- every transaction gets exactly one outcome (after dropping duplicates by event id);
- no vend is approved twice;
- a vend the backend books as ``success`` was dispensed, and a dispensed vend is booked as
  ``success`` or ``unknown``, never as failed, denied, expired or cancelled;
- the backend charged exactly the successful vends.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from sim.broker import MosquittoBroker
from tests.e2e.power_cuts import remote_vends


async def _power_cuts(tmp_path: Path, broker: MosquittoBroker, runs: int, seed: int) -> None:
    figures = await remote_vends(tmp_path, broker, runs, random.Random(seed))
    print("power cuts:", figures.report())
    assert not figures.problems


async def test_power_cuts_quick(tmp_path: Path, broker: MosquittoBroker) -> None:
    await _power_cuts(tmp_path, broker, runs=4, seed=int(os.environ.get("VMC_SEED", "11")))


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_power_cuts_many(tmp_path: Path, broker: MosquittoBroker) -> None:
    await _power_cuts(tmp_path, broker, runs=200, seed=int(os.environ.get("VMC_SEED", "12")))
