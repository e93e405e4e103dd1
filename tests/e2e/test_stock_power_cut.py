"""kill -9 vmcd while refills and planogram changes stream in: old or new stock, never a mix.

After every cut the journal must be whole (``tests.e2e.power_cuts.refills_and_planograms``):
every applied stock command has its stored reply and every stored reply its applied operation;
each key's level is the ``after`` of its last history row; the levels count exactly the keys of
the stored planogram. The backend then resends, with the same id, each command that got no
reply: in the end every command was applied exactly once and the levels are what they make.
"""

from __future__ import annotations

import random
from pathlib import Path

from sim.broker import MosquittoBroker
from tests.e2e.power_cuts import refills_and_planograms


async def test_power_cut_during_refills_and_planogram_changes(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    figures = await refills_and_planograms(tmp_path, broker, 6, random.Random(8))
    print("stock power cuts:", figures.report())
    assert not figures.problems
    assert figures.mid_session, "no cut fell while commands were applied: the test proved nothing"
