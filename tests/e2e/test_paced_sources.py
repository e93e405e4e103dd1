"""The simulated VMCs pace what they send like an 8N1 UART, so a read over a pty takes line time."""

from __future__ import annotations

import asyncio
import contextlib
import time

from drivers.dex_port import open_dex_port
from drivers.pty import PtyPair
from sim.dex_ddcmp_source import DdcmpAuditSource
from sim.dex_source import DexSource, SerialLine
from tests.samples import AUDIT
from vmc.services.dex_read import read_audit


async def test_a_paced_line_takes_ten_bits_a_byte() -> None:
    pair = PtyPair()
    port = open_dex_port(pair.device_url)
    data = bytes(range(256)) * 10
    line = SerialLine(pair.master.fileno(), "pty-master", baud=48_000)
    got = bytearray()
    arrived = asyncio.Event()

    def readable() -> None:
        got.extend(port.read_available())
        if len(got) >= len(data):
            arrived.set()

    loop = asyncio.get_running_loop()
    loop.add_reader(port.fileno(), readable)
    try:
        start = time.perf_counter()
        await line.write(data)
        await asyncio.wait_for(arrived.wait(), 1.0)
        elapsed = time.perf_counter() - start
    finally:
        loop.remove_reader(port.fileno())
        port.close()
        pair.close()
    assert got == data
    assert line.sent == len(data)
    floor = len(data) * 10 / 48_000
    assert floor - 0.01 <= elapsed < floor + 0.3


async def test_an_unpaced_line_writes_at_once() -> None:
    pair = PtyPair()
    try:
        line = SerialLine(pair.master.fileno(), "pty-master")
        start = time.perf_counter()
        await line.write(AUDIT[:1000])
        # Far less than the 1.04 s of 9600 Bd (a margin that holds on a busy machine).
        assert time.perf_counter() - start < 1000 * 10 / 9600 / 4
        assert line.sent == 1000
    finally:
        pair.close()


async def _timed_read(protocol: str) -> tuple[bytes, float]:
    pair = PtyPair()
    port = open_dex_port(pair.device_url, baud=9600)
    if protocol == "ddcmp":
        serving = DdcmpAuditSource(pair.master, AUDIT, paced=True).start()
    else:
        serving = asyncio.create_task(DexSource(pair.master.fileno(), AUDIT, baud=9600).serve())
    try:
        start = time.perf_counter()
        audit = await read_audit(port, protocol=protocol)
        return audit, time.perf_counter() - start
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        port.close()
        pair.close()


async def test_dex_and_ddcmp_reads_take_the_audits_line_time() -> None:
    floor = len(AUDIT) * 10 / 9600
    (ucs, ucs_s), (ddcmp, ddcmp_s) = await asyncio.gather(_timed_read("ucs"), _timed_read("ddcmp"))
    assert ucs == ddcmp == AUDIT
    assert floor <= ucs_s < floor + 1.0
    # At START's 2400 Bd all through it would take four times the floor: the pace followed STACK.
    assert floor <= ddcmp_s < floor * 3
