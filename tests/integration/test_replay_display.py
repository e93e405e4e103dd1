"""A trace the simulated VMC recorded against the bus process, display request included,
replays byte for byte in process."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from protocols.mdb import commands as c
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from sim.replay import replay_in_process
from sim.scenarios import Customers, run_customers
from sim.trace import Direction, TraceLine, TraceRecorder, parse_trace
from sim.vmc_master import VmcMaster
from tests.loopback_rig import in_process_reader
from vmc.journal import Journal
from vmc.services import bus_messages as msg


async def _poll_until(vmc: VmcMaster, code: int, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await vmc.poll()).code != code:
        assert loop.time() < deadline, f"no {c.response_name(code)} within {timeout} s"
        await asyncio.sleep(0.005)


async def _record(config: ReaderConfig, tmp_path: Path) -> list[TraceLine]:
    recorder = TraceRecorder()
    journal = Journal(tmp_path / "journal.sqlite3")
    async with in_process_reader(config, journal, recorder=recorder) as reader:
        await reader.vmc.initialise(level=3)
        customers = Customers(reader.vmc, random.Random(4), poll_period=0.005)
        await run_customers(customers, 3, weights={"purchase": 1})
        reader.send(msg.ShowText("ENJOY YOUR DRINK", 2.5))
        await _poll_until(reader.vmc, c.Resp.DISPLAY_REQUEST)
        await run_customers(customers, 3, weights={"purchase": 2, "cash_sale": 1})
    journal.close()
    return parse_trace(recorder.text())


@pytest.mark.parametrize("level", [1, 3])
async def test_a_recorded_display_request_replays_in_process(tmp_path: Path, level: int) -> None:
    config = ReaderConfig(level=level)
    lines = await _record(config, tmp_path)
    shown = [
        line
        for line in lines
        if line.direction is Direction.PER and line.words[0].value == c.Resp.DISPLAY_REQUEST
    ]
    assert len(shown) == 1
    assert b"ENJOY YOUR DRINK" in shown[0].data
    mismatches = replay_in_process(CashlessDevice(config), lines)
    assert not mismatches, "\n".join(m.report() for m in mismatches)
