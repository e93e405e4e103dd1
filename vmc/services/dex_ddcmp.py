"""Read an audit over Enhanced DDCMP: the event-loop glue around :class:`DdcmpReader`.

The reader decides everything; this module only moves bytes, stamps them with the loop's
clock as they are read, wakes the reader at its deadline, and carries out its actions in order
(a speed change must come after the STACK was answered at the old one). The port is put at
2400 Bd for START and given back at the speed it had, so a DEX/UCS read can follow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

from drivers.dex_port import DexPort
from protocols.dex import Finished, Progress, Send
from protocols.dex.ddcmp import (
    ANONYMOUS,
    DEFAULT_TIMING,
    START_BAUD,
    Action,
    DdcmpError,
    DdcmpReader,
    Failed,
    SetBaud,
    Timing,
    WhoAreYou,
)
from protocols.errors import PortError


async def read_ddcmp(
    port: DexPort,
    *,
    on_progress: Callable[[int], None] | None = None,
    baud: int = 9600,
    timing: Timing = DEFAULT_TIMING,
    who_are_you: WhoAreYou = ANONYMOUS,
) -> bytes:
    """The audit bytes, or DdcmpError (DdcmpTimeoutError if the VMC went quiet) naming the step.

    ``baud`` is the speed proposed in START. A failing port raises PortError.
    """
    loop = asyncio.get_running_loop()
    reader = DdcmpReader(baud, timing=timing, who_are_you=who_are_you)
    inbox: deque[tuple[bytes, float]] = deque()
    port_error: list[PortError] = []
    wake = asyncio.Event()

    def readable() -> None:
        try:
            data = port.read_available()
        except PortError as exc:
            port_error.append(exc)
            loop.remove_reader(port.fileno())
        else:
            if data:
                inbox.append((data, loop.time()))
        wake.set()

    original_baud = port.baud
    port.set_baud(START_BAUD)
    loop.add_reader(port.fileno(), readable)
    try:
        actions = reader.start(loop.time())
        while True:
            audit = _carry_out(port, actions, on_progress)
            if audit is not None:
                return audit
            if port_error:
                raise port_error[0]
            if not inbox:
                await _wait(wake, reader.deadline(), loop)
            wake.clear()
            actions = []
            while inbox:
                data, stamp = inbox.popleft()
                actions += reader.receive(data, stamp)
            actions += reader.poll(loop.time())
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(port.fileno())
        with contextlib.suppress(PortError):
            port.set_baud(original_baud)


async def _wait(
    wake: asyncio.Event, deadline: float | None, loop: asyncio.AbstractEventLoop
) -> None:
    timeout = None if deadline is None else max(0.0, deadline - loop.time())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await wake.wait()


def _carry_out(
    port: DexPort, actions: list[Action], on_progress: Callable[[int], None] | None
) -> bytes | None:
    """Do what the reader asked; the audit once it has finished."""
    for action in actions:
        if isinstance(action, Send):
            port.write(action.data)
        elif isinstance(action, SetBaud):
            port.set_baud(action.baud)
        elif isinstance(action, Progress):
            if on_progress is not None:
                on_progress(action.received)
        elif isinstance(action, Finished):
            return action.audit
        elif isinstance(action, Failed):
            raise action.error()
    return None


__all__ = ["DdcmpError", "read_ddcmp"]
