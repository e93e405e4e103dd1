"""The power-cut suite: a thousand kill -9 of vmcd across remote vends, vouchers and credits,
and refills and planogram changes, in batches on fresh machines, each batch's books checked.

``VMC_POWER_CUTS`` sets the number of cuts (default 1002), ``VMC_SEED`` the seed; the figures
are printed as JSON (run with ``-s``). ``bench/faults_power.py`` runs the same suite outside
pytest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sim.broker import MosquittoBroker
from tests.e2e.power_cuts import Fault, run_suite


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)
async def test_power_cut_suite(tmp_path: Path, broker: MosquittoBroker) -> None:
    seed = int(os.environ.get("VMC_SEED", "20261130"))
    runs = int(os.environ.get("VMC_POWER_CUTS", "1002"))
    print(f"power-cut suite: {runs} cuts, seed {seed}")
    suite = await run_suite(tmp_path, broker, runs, seed)
    print(json.dumps(suite.report()))
    total = suite.total()
    assert not total.problems
    assert all(total.faults[fault] == 0 for fault in Fault)
    for name, figures in suite.flows.items():
        assert figures.mid_session, f"no {name} cut fell inside a session: it proved nothing"
