"""The daemon starts its bus process before it builds its services (a sooner answer to the
VMC's RESET): the VMC is served before the supervisor runs, the supervisor takes that same
process over, and a process the supervisor never took over is not left behind."""

from __future__ import annotations

import asyncio
import os

from drivers.pty import PtyPair
from protocols.mdb.cashless import ReaderConfig
from sim.vmc_master import VmcMaster
from tests.e2e.vmcd_proc import children
from vmc.services import bus_messages as msg
from vmc.services.bus import BusSupervisor

READER = ReaderConfig(level=3)


def bus_processes(before: set[int]) -> set[int]:
    """This process's children that were not there before (a session's broker may be)."""
    return set(children(os.getpid())) - before


async def test_the_vmc_is_served_before_the_supervisor_runs_and_it_takes_the_process_over() -> None:
    pair = PtyPair()
    reports: list[object] = []
    supervisor = BusSupervisor(pair.device_url, READER, reports.append)
    before = set(children(os.getpid()))
    await supervisor.spawn()
    (early,) = bus_processes(before)
    vmc = VmcMaster(pair.master, answer_timeout=0.5)
    running: asyncio.Task[None] | None = None
    try:
        await vmc.initialise(wait_s=20)  # answered with no supervisor reading reports
        assert reports == []
        running = asyncio.create_task(supervisor.run())
        for _ in range(50):  # what waited in the socket arrives, Ready first
            await vmc.poll()
            if any(isinstance(r, msg.Ready) for r in reports):
                break
        assert any(isinstance(r, msg.Ready) for r in reports)
        assert bus_processes(before) == {early}  # the same process: none spawned twice
        assert supervisor.restarts == 0
    finally:
        vmc.close()
        supervisor.stop()
        if running is not None:
            await asyncio.wait_for(running, 10)
        pair.close()
    assert bus_processes(before) == set()


async def test_a_process_never_taken_over_is_discarded() -> None:
    pair = PtyPair()
    supervisor = BusSupervisor(pair.device_url, READER, lambda report: None)
    before = set(children(os.getpid()))
    try:
        await supervisor.spawn()
        assert len(bus_processes(before)) == 1
        await supervisor.discard()
        assert bus_processes(before) == set()
        await supervisor.discard()  # twice is harmless
    finally:
        pair.close()


async def test_a_stop_before_the_supervisor_runs_ends_the_early_process() -> None:
    pair = PtyPair()
    supervisor = BusSupervisor(pair.device_url, READER, lambda report: None)
    before = set(children(os.getpid()))
    try:
        await supervisor.spawn()
        supervisor.stop()
        await asyncio.wait_for(supervisor.run(), 10)
        for _ in range(100):  # killed by run's end; reaped by the loop's child watcher
            if not bus_processes(before):
                break
            await asyncio.sleep(0.05)
        assert bus_processes(before) == set()
    finally:
        pair.close()
