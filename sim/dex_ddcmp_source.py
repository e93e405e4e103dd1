"""A simulated VMC serving an EVA-DTS audit over Enhanced DDCMP (EVA-DTS 6.2 ch. 3).

It plays the machine's end of a pty pair (or any non-blocking byte port): :class:`DdcmpSlave`
answers START, who-are-you and read-data and sends the audit in data blocks, injecting the
faults it was given (NACK a command, corrupt a CRC, fall silent, restart the link mid-transfer)
once per read. A pty has no line speed: speed changes are recorded, and with ``paced`` the
source delivers its bytes at the link's speed (:class:`~sim.dex_source.SerialLine`: START_BAUD,
then the one STACK named), as a UART would.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Protocol

from protocols.dex import Finished, Send
from protocols.dex.ddcmp import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_TIMING,
    NO_FAULTS,
    START_BAUD,
    Action,
    DdcmpSlave,
    Failed,
    SetBaud,
    SlaveFaults,
    Timing,
)
from protocols.errors import PortError
from sim.dex_source import SerialLine


class BytePort(Protocol):
    """What the source needs of its end: the pty master's FdPort fits."""

    url: str

    def fileno(self) -> int: ...

    def read_available(self) -> bytes: ...


@dataclass
class SourceLog:
    """What happened on the simulated machine's side, for tests to check."""

    served: int = 0
    failures: list[str] = field(default_factory=list)
    bauds: list[int] = field(default_factory=list)


class DdcmpAuditSource:
    """Serves ``audit`` to every DDCMP read arriving on ``port`` until cancelled or hung up."""

    def __init__(
        self,
        port: BytePort,
        audit: bytes,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        faults: SlaveFaults = NO_FAULTS,
        timing: Timing = DEFAULT_TIMING,
        identity: bytes = b"SIM0000001",
        max_baud: int = 115200,
        paced: bool = False,
    ) -> None:
        self.port = port
        self.line = SerialLine(port.fileno(), port.url, START_BAUD if paced else None)
        self.slave = DdcmpSlave(
            audit,
            block_size=block_size,
            timing=timing,
            faults=faults,
            identity=identity,
            max_baud=max_baud,
        )
        self.log = SourceLog()

    def start(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self.run(), name="ddcmp-audit-source")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        fd = self.port.fileno()
        wake = asyncio.Event()
        loop.add_reader(fd, wake.set)
        try:
            while True:
                deadline = self.slave.deadline()
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await wake.wait()
                wake.clear()
                try:
                    data = self.port.read_available()
                except PortError:
                    return
                now = loop.time()
                actions = self.slave.receive(data, now) if data else []
                await self._carry_out([*actions, *self.slave.poll(now)])
        finally:
            loop.remove_reader(fd)

    async def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                await self.line.write(action.data)
            elif isinstance(action, SetBaud):
                self.log.bauds.append(action.baud)
                if self.line.baud is not None:
                    self.line.baud = action.baud
            elif isinstance(action, Finished):
                self.log.served += 1
            elif isinstance(action, Failed):
                self.log.failures.append(f"{action.step}: {action.reason}")
