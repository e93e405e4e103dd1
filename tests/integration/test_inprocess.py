"""The bus loop, the local policy and the simulated VMC in one process over a loopback."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from pathlib import Path

import pytest

from drivers.loopback import loopback_pair
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from sim.scenarios import DEFAULT_WEIGHTS, Customers, run_customers
from sim.trace import parse_trace
from sim.vmc_master import VmcMaster
from tests.loopback_rig import in_process_reader
from vmc.cloud.messages import VendType
from vmc.journal import Journal
from vmc.services import bus_messages as msg
from vmc.services.bus_process import serve


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("accept", [True, False])
async def test_customers_in_process(tmp_path: Path, level: int, accept: bool) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    async with in_process_reader(ReaderConfig(level=level), journal, accept=accept) as reader:
        await reader.vmc.initialise(level=3)
        customers = Customers(reader.vmc, random.Random(level), poll_period=0.005)
        weights = dict(DEFAULT_WEIGHTS)
        if not accept:
            weights = {"purchase": 3, "cancel": 1, "cash_sale": 1}
        if not accept and level < 3:
            weights = {"cash_sale": 1}  # no sessions are offered when every vend is denied
        report = await run_customers(customers, 25, weights=weights)
    assert not report.errors, report.errors
    outcomes = report.outcomes()
    vended = outcomes.get("vended", 0) + 2 * outcomes.get("multi_vend", 0)
    records = journal.records()
    assert sum(r.kind == "vend_success" for r in records) == vended
    assert all(r.vend_type is VendType.FREE for r in records if r.kind.startswith("vend_"))
    assert sum(r.kind == "cash_sale" for r in records) == outcomes.get("cash_sale", 0)
    if not accept:
        assert vended == 0
        assert "denied" in outcomes or level < 3
    journal.close()


async def test_recorded_trace_parses_back(tmp_path: Path) -> None:
    from sim.trace import TraceRecorder

    device_port, vmc_port = loopback_pair()
    recorder = TraceRecorder()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    task = asyncio.create_task(serve(device_port, CashlessDevice(ReaderConfig()), theirs, False))
    vmc = VmcMaster(vmc_port, recorder=recorder, answer_timeout=0.5)
    try:
        await vmc.initialise()
    finally:
        vmc.close()
        ours.send(msg.encode(msg.Stop()))
        await asyncio.wait_for(task, 5)
    lines = parse_trace(recorder.text())
    assert lines[0].format().startswith("VMC: 110 010")
    assert any("READER ENABLE" in line.comment for line in lines)


async def test_stop_voids_an_undecided_vend_before_exiting() -> None:
    device_port, vmc_port = loopback_pair()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    task = asyncio.create_task(serve(device_port, CashlessDevice(ReaderConfig()), theirs, False))
    vmc = VmcMaster(vmc_port, answer_timeout=0.5)
    try:
        await vmc.initialise()
        assert (await vmc.vend_request(150, 4)).is_ack
        ours.send(msg.encode(msg.Stop()))
        await asyncio.sleep(0.05)
        assert not task.done()  # still serving: the denial has not reached the VMC yet
        answer = await vmc.poll()
        assert answer.code == 0x06  # VEND DENIED
        assert await asyncio.wait_for(task, 2) == 0
    finally:
        vmc.close()
    reports = []
    ours.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while data := ours.recv(65536):
            reports.append(msg.decode(data))
    from protocols.mdb import events as ev

    assert ev.VendDeniedSent(1, ev.DenyReason.SHUTDOWN) in reports
