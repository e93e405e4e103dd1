"""The bus monitor: the reader's own view of every exchange, streamed without holding the bus."""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.loopback import loopback_pair
from drivers.pty import PtyPair
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from protocols.mdb.trace import Direction, TraceLine, parse_trace
from sim.replay import replay_in_process
from sim.scenarios import DEFAULT_WEIGHTS, Customers, run_customers
from sim.trace import TraceRecorder
from sim.vmc_master import VmcMaster
from tests.e2e.vmcd_proc import children
from tests.loopback_rig import in_process_reader
from tests.waiting import wait_for
from vmc import monitor as mon
from vmc.journal import Journal
from vmc.monitor import MonitorFrame, TraceWriter, trace_lines
from vmc.services import bus
from vmc.services import bus_messages as msg
from vmc.services.bus import BusSupervisor
from vmc.services.bus_process import MONITOR_BACKLOG, serve

READER = ReaderConfig(level=3)


def _words(lines: list[TraceLine]) -> list[tuple[Direction, tuple[Any, ...]]]:
    return [(line.direction, line.words) for line in lines]


async def _customers(tmp_path: Path, frames: list[MonitorFrame], recorder: TraceRecorder) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    async with in_process_reader(READER, journal, recorder=recorder, monitor=frames) as reader:
        await reader.vmc.initialise(level=3)
        customers = Customers(reader.vmc, random.Random(3), poll_period=0.002)
        report = await run_customers(customers, 12, weights=DEFAULT_WEIGHTS)
        assert not report.errors, report.errors
        wanted = len(recorder.lines)
        # The last frames may still be on their way from the bus loop.
        await wait_for(
            lambda: sum(len(trace_lines(f)) for f in frames) >= wanted, 10, "every frame"
        )
    journal.close()


async def test_the_monitor_sees_every_exchange_the_vmc_saw(tmp_path: Path) -> None:
    frames: list[MonitorFrame] = []
    recorder = TraceRecorder()
    await _customers(tmp_path, frames, recorder)
    seen = [line for frame in frames for line in trace_lines(frame)]
    assert _words(seen) == _words(recorder.lines)
    assert not any(f.dropped for f in frames)
    polls = [f for f in frames if f.is_poll]
    assert polls[0].poll_gap_ms is None  # the first POLL has no previous one
    assert all(f.poll_gap_ms is not None and f.poll_gap_ms > 0 for f in polls[1:])
    named = {(f.command, f.response) for f in frames}
    assert ("EXPANSION REQUEST ID", "PERIPHERAL ID") in named
    assert ("POLL", "JUST RESET") in named
    assert ("VEND REQUEST", "ACK") in named
    assert ("ACK", None) in named  # the VMC acknowledging our data block
    request = next(f for f in frames if f.command == "VEND REQUEST")
    assert request.detail.startswith("price=")
    assert " item=" in request.detail


async def test_a_recorded_trace_replays_without_a_difference(tmp_path: Path) -> None:
    frames: list[MonitorFrame] = []
    await _customers(tmp_path, frames, TraceRecorder())
    out = io.StringIO()
    writer = TraceWriter(out)
    writer.comment("vmctl mdb record\nreader level 3")
    for frame in frames:
        writer.write(frame)
    lines = parse_trace(out.getvalue())
    assert writer.frames == len(frames)
    assert lines[0].format().startswith("VMC: 110 010")  # RESET, addressed to 0x10
    mismatches = replay_in_process(CashlessDevice(READER), lines)
    assert not mismatches, "\n\n".join(m.report() for m in mismatches[:3])


async def test_a_daemon_that_does_not_read_never_holds_the_bus() -> None:
    """Frames for a daemon that stopped reading wait in a bounded queue, then are dropped and
    counted (in the next frame that gets through); every POLL is still answered."""
    device_port, vmc_port = loopback_pair()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    ours.send(msg.encode(msg.Monitor(True)))
    task = asyncio.create_task(serve(device_port, CashlessDevice(READER), theirs, False))
    vmc = VmcMaster(vmc_port, answer_timeout=0.5)
    exchanges: list[msg.Exchange] = []

    def read_all() -> None:
        while True:
            try:
                report = msg.decode(ours.recv(65536))
            except BlockingIOError:
                return
            if isinstance(report, msg.Exchange):
                exchanges.append(report)

    try:
        await vmc.initialise()
        for _ in range(2 * MONITOR_BACKLOG):  # nobody reads: the queue fills, then drops
            assert not (await vmc.poll()).timed_out
        while not any(e.dropped for e in exchanges):  # reading again: the gap is reported
            read_all()
            assert not (await vmc.poll()).timed_out
    finally:
        vmc.close()
        ours.send(msg.encode(msg.Stop()))
        await asyncio.wait_for(task, 5)
        ours.close()
    assert vmc.stats.timeouts == 0
    assert sum(e.dropped for e in exchanges) >= MONITOR_BACKLOG // 2


async def test_frames_decode_as_a_technician_reads_them() -> None:
    exchange = msg.Exchange(
        0.0, msg.ExchangeKind.BLOCK, "1300000a000724", "00", False, 0.00012, None
    )
    frame = mon.decode(exchange)
    assert (frame.command, frame.detail) == ("VEND REQUEST", "price=10 item=7")
    assert frame.response == "ACK"
    line = mon.format_line(frame)
    assert "VEND REQUEST  price=10 item=7  [13 00 00 0A 00 07 24]  -> ACK  (0.12 ms)" in line
    assert mon.to_json(frame) == {
        "at": 0.0,
        "kind": "block",
        "command": "VEND REQUEST",
        "command_hex": "1300000a000724",
        "detail": "price=10 item=7",
        "response": "ACK",
        "response_hex": "00",
        "answer_ms": 0.12,
        "poll_gap_ms": None,
        "dropped": 0,
    }


@given(st.binary(min_size=0, max_size=40), st.binary(max_size=40), st.booleans())
def test_any_exchange_decodes_and_shows(vmc: bytes, answer: bytes, wide: bool) -> None:
    """Decoding runs in the daemon's bus pump: whatever the bytes, it must not raise."""
    frame = mon.decode(
        msg.Exchange(0.0, msg.ExchangeKind.BLOCK, vmc.hex(), answer.hex(), wide, 0.0, None)
    )
    assert mon.format_line(frame)
    assert mon.to_json(frame)["command_hex"] == vmc.hex()
    (first, *_) = trace_lines(frame)
    assert first.data == vmc


async def test_two_listeners_across_a_bus_process_and_none_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real bus process: two listeners get the same frames; once both left, the bus process
    sends none; a restarted bus process is monitored again."""
    decoded: list[msg.Exchange] = []

    def counting(exchange: msg.Exchange) -> MonitorFrame:
        decoded.append(exchange)
        return mon.decode(exchange)

    monkeypatch.setattr(bus, "decode", counting)
    pair = PtyPair()
    supervisor = BusSupervisor(pair.device_url, READER, lambda report: None)
    running = asyncio.create_task(supervisor.run())
    vmc = VmcMaster(pair.master, answer_timeout=0.5)
    try:
        await vmc.initialise(wait_s=20)
        got: dict[str, list[MonitorFrame]] = {"a": [], "b": []}

        async def listen(name: str, count: int) -> None:
            async with supervisor.monitor() as frames:
                async for frame in frames:
                    got[name].append(frame)
                    if len(got[name]) >= count:
                        return

        listeners = [asyncio.create_task(listen("a", 20)), asyncio.create_task(listen("b", 10))]
        await asyncio.sleep(0)  # both listen before the first frame can arrive
        while not all(t.done() for t in listeners):
            await vmc.poll()
        await asyncio.gather(*listeners)
        assert [f.command for f in got["b"]] == ["POLL"] * 10
        assert got["a"][:10] == got["b"]
        for _ in range(5):  # let the monitor's off switch reach the bus process
            await vmc.poll()
        before = len(decoded)
        for _ in range(20):
            await vmc.poll()
        assert len(decoded) == before

        async with supervisor.monitor() as frames:
            (bus_pid,) = children(os.getpid())
            os.kill(bus_pid, signal.SIGKILL)
            await vmc.initialise(wait_s=20)  # the restarted process has just reset
            frame = await asyncio.wait_for(anext(frames), 10)
            assert frame.command  # the new bus process streams to the open listener
    finally:
        vmc.close()
        supervisor.stop()
        await asyncio.wait_for(running, 10)
        pair.close()
