"""read_audit over a real pty pair against the simulated VMC, with the spec's real timers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from drivers.dex_port import DexPort, open_dex_port
from drivers.pty import PtyPair
from protocols.dex import DexError, DexTimeoutError, Finished
from protocols.dex.ucs import SourceFaults
from protocols.errors import ConfigError
from sim.dex_ddcmp_source import DdcmpAuditSource
from sim.dex_source import DexSource
from tests.samples import AUDIT, audit_bytes
from tests.waiting import wait_until
from vmc.services.dex_read import read_audit


@contextlib.asynccontextmanager
async def vmc_serving(
    *,
    legacy: bool = False,
    faults: SourceFaults | None = None,
    corrupt: float = 0.0,
    seed: int = 0,
) -> AsyncIterator[tuple[DexPort, DexSource]]:
    """A simulated VMC on the master end; the reader's DEX port on the device end."""
    pair = PtyPair()
    port = open_dex_port(pair.device_url)
    source = DexSource(
        pair.master.fileno(),
        AUDIT,
        comm_id="RHV7654321",
        legacy=legacy,
        faults=faults,
        corrupt=corrupt,
        seed=seed,
    )
    task = asyncio.create_task(source.serve(), name="dex-source")
    try:
        yield port, source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        port.close()
        pair.close()


@pytest.mark.parametrize("legacy", [False, True], ids=["dc-first", "legacy-vmc-first"])
async def test_the_audit_is_read_byte_for_byte(legacy: bool) -> None:
    progress: list[int] = []
    async with vmc_serving(legacy=legacy) as (port, source):
        audit = await read_audit(port, on_progress=progress.append)
        assert await wait_until(lambda: source.results)  # the VMC's last EOT
    assert audit == AUDIT
    assert progress == sorted(progress)
    assert progress[-1] == len(AUDIT)
    assert source.results == [Finished(AUDIT)]


async def test_nakked_identification_and_bad_blocks_are_recovered() -> None:
    faults = SourceFaults(nak_identification=1, bad_crc_blocks=frozenset({3, 20}), bad_crc_times=2)
    async with vmc_serving(faults=faults) as (port, _):
        assert await read_audit(port) == AUDIT


async def test_two_reads_in_a_row() -> None:
    async with vmc_serving() as (port, source):
        assert await read_audit(port) == AUDIT
        assert await wait_until(lambda: len(source.results) == 1)  # the VMC is done with it
        assert await read_audit(port) == AUDIT
        assert await wait_until(lambda: len(source.results) == 2)
    assert source.results == [Finished(AUDIT), Finished(AUDIT)]


@pytest.mark.parametrize(
    ("faults", "error", "message", "seconds"),
    [
        (
            SourceFaults(eot_after_block=5),
            DexError,
            "data block 6: VMC ended the session (EOT) before the last block",
            2.0,  # at once: no timer waited out (timer D alone is 2 s)
        ),
        (
            SourceFaults(silent_from_block=4),
            DexTimeoutError,
            "data block 4: nothing from the VMC for 2 s",
            6.0,  # timer D (2 s), not a longer wait such as the 10 s for a session to open
        ),
    ],
    ids=["eot-early", "stops"],
)
async def test_an_abort_mid_transfer_names_the_block(
    faults: SourceFaults, error: type[DexError], message: str, seconds: float
) -> None:
    started = time.monotonic()
    async with vmc_serving(faults=faults) as (port, _):
        with pytest.raises(error) as caught:
            await read_audit(port)
    assert str(caught.value) == message
    assert time.monotonic() - started < seconds


async def test_a_noisy_line_still_reads_or_names_the_step() -> None:
    outcome: bytes | DexError
    async with vmc_serving(corrupt=0.0005, seed=11) as (port, _):
        try:
            outcome = await read_audit(port)
        except DexError as exc:
            outcome = exc
    if isinstance(outcome, DexError):
        assert outcome.step.startswith("data block ") or outcome.step.endswith("handshake")
    else:
        assert outcome == AUDIT


async def test_ddcmp_is_read_by_its_own_reader() -> None:
    """``protocol="ddcmp"`` reads a real DDCMP source; an unknown protocol is refused."""
    audit = audit_bytes({1: 1})
    pair = PtyPair()
    port = open_dex_port(pair.device_url)
    source = DdcmpAuditSource(pair.master, audit).start()
    seen: list[int] = []
    try:
        assert await read_audit(port, protocol="ddcmp", on_progress=seen.append) == audit
        assert seen
        assert seen[-1] == len(audit)
        with pytest.raises(ConfigError, match="'x25'"):
            await read_audit(port, protocol="x25")
    finally:
        source.cancel()
        await asyncio.gather(source, return_exceptions=True)
        port.close()
        pair.close()
