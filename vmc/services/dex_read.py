"""Read one EVA-DTS audit from the VMC over the DEX port.

The protocol cores are sans-I/O; this is the glue that feeds them the port's bytes and the
event loop's clock and wakes them when their timers say so. One call is one read: a failure
raises :class:`~protocols.dex.DexError` (``DexTimeoutError`` when the VMC went quiet) whose
message names the step, so the reporter can log how far the machine got before retrying.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from drivers.dex_port import DexPort
from protocols.dex import Finished, Progress, Send
from protocols.dex.ucs import Failed, UcsReader, UcsTimers, Wait
from protocols.errors import ConfigError
from vmc.services.dex_ddcmp import read_ddcmp

log = structlog.get_logger("vmc.dex")

PROTOCOLS = ("ucs", "ddcmp")


async def read_audit(
    port: DexPort,
    *,
    protocol: str = "ucs",
    comm_id: str = "VMC0000001",
    on_progress: Callable[[int], None] | None = None,
    timers: UcsTimers | None = None,
) -> bytes:
    """The audit as the VMC sent it (report text, CRC-checked per block, nothing parsed)."""
    if protocol == "ddcmp":
        return await read_ddcmp(port, on_progress=on_progress)
    if protocol != "ucs":
        raise ConfigError(f"DEX protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
    reader = UcsReader(comm_id, timers=timers)
    audit = await _run(reader, port, on_progress)
    vmc = reader.vmc
    log.info(
        "dex read",
        port=port.url,
        bytes=len(audit),
        vmc_comm_id=vmc.comm_id if vmc else None,
        legacy=reader.legacy,
    )
    return audit


async def _run(
    reader: UcsReader, port: DexPort, on_progress: Callable[[int], None] | None
) -> bytes:
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    _drain(port)  # bytes left from an earlier, broken session would read as answers
    loop.add_reader(port.fileno(), readable.set)
    try:
        actions = reader.start(loop.time())
        while True:
            deadline: float | None = None
            for action in actions:
                if isinstance(action, Send):
                    port.write(action.data)
                elif isinstance(action, Wait):
                    deadline = action.until
                elif isinstance(action, Progress):
                    if on_progress is not None:
                        on_progress(action.received)
                elif isinstance(action, Finished):
                    return action.audit
                elif isinstance(action, Failed):
                    raise action.error()
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await readable.wait()
            readable.clear()
            data = port.read_available()
            now = loop.time()
            # Bytes first: an answer that is waiting counts even if its timer ran out meanwhile.
            actions = reader.receive(data, now) if data else []
            actions += reader.poll(now)
    finally:
        loop.remove_reader(port.fileno())


def _drain(port: DexPort) -> None:
    for _ in range(64):
        if not port.read_available():
            return
