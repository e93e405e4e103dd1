"""The reader in one process: bus loop, cashless core and local policy against the simulated VMC.

The same wiring vmcd has across its process boundary (a SEQPACKET socketpair between the bus loop
and the daemon's side), over a loopback port instead of a pty, so tests run in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from drivers.loopback import loopback_pair
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from sim.trace import TraceRecorder
from sim.vmc_master import VmcMaster
from vmc.journal import Journal
from vmc.monitor import MonitorFrame, decode
from vmc.services import bus_messages as msg
from vmc.services.bus_process import serve
from vmc.services.stock_book import StockBook
from vmc.services.vending import LocalVending

STOP_WAIT_S = 30.0


@dataclass
class InProcessReader:
    vmc: VmcMaster
    vending: LocalVending
    daemon_end: socket.socket

    def send(self, command: msg.BusCommand) -> None:
        """A decision from the daemon's side, as the bus supervisor would send it."""
        self.daemon_end.send(msg.encode(command))


async def _daemon_side(
    sock: socket.socket, vending: LocalVending, frames: list[MonitorFrame] | None
) -> None:
    loop = asyncio.get_running_loop()
    while data := await loop.sock_recv(sock, 65536):
        report = msg.decode(data)
        if isinstance(report, msg.Exchange):
            assert frames is not None, "an exchange came without a monitor"
            frames.append(decode(report))
        else:
            vending.handle(report)


@contextlib.asynccontextmanager
async def in_process_reader(
    config: ReaderConfig,
    journal: Journal,
    *,
    accept: bool = True,
    recorder: TraceRecorder | None = None,
    monitor: list[MonitorFrame] | None = None,
) -> AsyncIterator[InProcessReader]:
    """Yield the simulated VMC wired to a reader with ``config``; stop the bus loop after.

    With ``monitor``, the bus monitor is on from the start and its frames go to that list.
    """
    device_port, vmc_port = loopback_pair()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    vending = LocalVending(
        accept, journal, lambda cmd: ours.send(msg.encode(cmd)) > 0, StockBook(journal, None)
    )
    device = CashlessDevice(config, time.monotonic())
    if monitor is not None:
        ours.send(msg.encode(msg.Monitor(True)))
    bus = asyncio.create_task(serve(device_port, device, theirs, realtime=False))
    deciding = asyncio.create_task(_daemon_side(ours, vending, monitor))
    vmc = VmcMaster(vmc_port, answer_timeout=0.5, recorder=recorder)
    try:
        yield InProcessReader(vmc, vending, ours)
    finally:
        vmc.close()
        ours.send(msg.encode(msg.Stop()))
        await asyncio.wait_for(bus, STOP_WAIT_S)
        deciding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await deciding
        ours.close()
