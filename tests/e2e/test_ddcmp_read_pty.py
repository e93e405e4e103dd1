"""read_ddcmp over a real pty pair against the simulated VMC, at the spec's own timers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from drivers.dex_port import DexPort, open_dex_port
from drivers.pty import PtyPair
from protocols.dex.ddcmp import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_TIMING,
    NO_FAULTS,
    DdcmpTimeoutError,
    SlaveFaults,
    Step,
    Timing,
)
from sim.dex_ddcmp_source import DdcmpAuditSource
from tests.samples import AUDIT
from tests.waiting import wait_until
from vmc.services.dex_ddcmp import read_ddcmp


class Bench:
    def __init__(self) -> None:
        self.pair = PtyPair()
        self.port: DexPort = open_dex_port(self.pair.device_url, baud=9600)
        self.tasks: list[asyncio.Task[None]] = []

    def serve(
        self,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        faults: SlaveFaults = NO_FAULTS,
        timing: Timing = DEFAULT_TIMING,
    ) -> DdcmpAuditSource:
        source = DdcmpAuditSource(
            self.pair.master, AUDIT, block_size=block_size, faults=faults, timing=timing
        )
        self.tasks.append(source.start())
        return source

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.port.close()
        self.pair.close()


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    rig = Bench()
    try:
        yield rig
    finally:
        await rig.close()


async def test_reads_a_real_audit_over_a_pty(bench: Bench) -> None:
    source = bench.serve(block_size=240)
    seen: list[int] = []
    audit = await read_ddcmp(bench.port, on_progress=seen.append, baud=19200)
    assert audit == AUDIT
    assert seen[-1] == len(AUDIT)
    assert len(seen) == -(-len(AUDIT) // 240)
    assert bench.port.baud == 9600  # given back as it was
    # the VMC's last ACK and its return to 2400 Bd
    assert await wait_until(lambda: source.log.bauds == [19200, 2400])
    assert source.log.served == 1
    # A second read on the same line works too.
    assert await read_ddcmp(bench.port) == AUDIT


async def test_recovers_from_nacks_and_damaged_frames(bench: Bench) -> None:
    faults = SlaveFaults(
        nack_messages=frozenset({2}),
        corrupt_data_crc=frozenset({1}),
        corrupt_header_crc=frozenset({4}),
    )
    source = bench.serve(faults=faults, block_size=200)
    assert await read_ddcmp(bench.port) == AUDIT
    assert source.slave.nacks_received == 2
    # one per NACK; on a busy machine a late ACK may also let the 170 ms ACK timer add some
    assert source.slave.retransmissions >= 2


async def test_a_vmc_falling_silent_mid_transfer_names_the_step(bench: Bench) -> None:
    timing = Timing(data_link_timeout=0.5)
    bench.serve(faults=SlaveFaults(silent_at_block=3), timing=timing)
    with pytest.raises(DdcmpTimeoutError) as caught:
        await read_ddcmp(bench.port, timing=timing)
    assert caught.value.step == Step.TRANSFER
    assert "after 720 audit bytes" in str(caught.value)
    assert str(caught.value).startswith("transfer: link timeout")
