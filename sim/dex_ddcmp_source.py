"""A simulated VMC serving an EVA-DTS audit over Enhanced DDCMP (EVA-DTS 6.2 ch. 3).

It plays the machine's end of a pty pair (or any non-blocking byte port): :class:`DdcmpSlave`
answers START, who-are-you and read-data and sends the audit in data blocks, injecting the
faults it was given (NACK a command, corrupt a CRC, fall silent, restart the link mid-transfer)
once per read. Speed changes are only recorded: a pty has no line speed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Protocol

from drivers.transport import write_all
from protocols.dex.ddcmp import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_TIMING,
    NO_FAULTS,
    Action,
    DdcmpSlave,
    Failed,
    Finished,
    Send,
    SetBaud,
    SlaveFaults,
    Timing,
)
from protocols.errors import PortError


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
    ) -> None:
        self.port = port
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
                self._carry_out([*actions, *self.slave.poll(now)], fd)
        finally:
            loop.remove_reader(fd)

    def _carry_out(self, actions: list[Action], fd: int) -> None:
        for action in actions:
            if isinstance(action, Send):
                write_all(fd, self.port.url, action.data)
            elif isinstance(action, SetBaud):
                self.log.bauds.append(action.baud)
            elif isinstance(action, Finished):
                self.log.served += 1
            elif isinstance(action, Failed):
                self.log.failures.append(f"{action.step}: {action.reason}")
