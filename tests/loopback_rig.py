"""The reader in one process: bus loop, cashless core and the daemon's deciding side against the
simulated VMC.

The same wiring vmcd has across its process boundary (a SEQPACKET socketpair between the bus loop
and the daemon's side), over a loopback port instead of a pty, so tests run in milliseconds. As
in vmcd, the engine's glue (``machine``) decides every vend when there is a cloud (``topics``),
and without one the local policy does, beside the machine's own sessions (test vends).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from drivers.loopback import loopback_pair
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from sim.trace import TraceRecorder
from sim.vmc_master import VmcMaster
from vmc.cloud.outbox import new_id
from vmc.cloud.topics import Topics
from vmc.journal import Journal
from vmc.monitor import MonitorFrame, decode
from vmc.services import bus_messages as msg
from vmc.services.bus_process import serve
from vmc.services.remote_vend import RemoteVending
from vmc.services.stock_book import StockBook
from vmc.services.vending import LocalVending
from vmc.transaction import Engine, EngineConfig, Money

STOP_WAIT_S = 30.0
TICK_S = 0.05


@dataclass
class InProcessReader:
    vmc: VmcMaster
    vending: LocalVending
    machine: RemoteVending
    daemon_end: socket.socket

    def send(self, command: msg.BusCommand) -> None:
        """A decision from the daemon's side, as the bus supervisor would send it."""
        self.daemon_end.send(msg.encode(command))


async def _daemon_side(
    sock: socket.socket, handle: Callable[[object], None], frames: list[MonitorFrame] | None
) -> None:
    loop = asyncio.get_running_loop()
    while data := await loop.sock_recv(sock, 65536):
        report = msg.decode(data)
        if isinstance(report, msg.Exchange):
            assert frames is not None, "an exchange came without a monitor"
            frames.append(decode(report))
        else:
            handle(report)


async def _ticker(machine: RemoteVending) -> None:
    while True:
        await asyncio.sleep(TICK_S)
        machine.tick()


@contextlib.asynccontextmanager
async def in_process_reader(
    config: ReaderConfig,
    journal: Journal,
    *,
    accept: bool = True,
    recorder: TraceRecorder | None = None,
    monitor: list[MonitorFrame] | None = None,
    topics: Topics | None = None,
) -> AsyncIterator[InProcessReader]:
    """Yield the simulated VMC wired to a reader with ``config``; stop the bus loop after.

    With ``monitor``, the bus monitor is on from the start and its frames go to that list; with
    ``topics``, a cloud decides (its messages stay in the journal's outbox).
    """
    device_port, vmc_port = loopback_pair()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)

    def send(command: msg.BusCommand) -> bool:
        return ours.send(msg.encode(command)) > 0

    stock = StockBook(journal, topics)
    engine = Engine(
        EngineConfig(
            Money(config.currency, config.minor_decimals), approval_timeout=config.approval_timeout
        ),
        new_id,
    )
    machine = RemoteVending(engine, journal, topics, send, stock=stock)
    vending = LocalVending(accept, journal, send, stock, machine=None if topics else machine)
    if monitor is not None:
        ours.send(msg.encode(msg.Monitor(True)))
    device = CashlessDevice(config, time.monotonic())
    bus = asyncio.create_task(serve(device_port, device, theirs, realtime=False))
    handle = machine.handle_bus if topics is not None else vending.handle
    deciding = asyncio.create_task(_daemon_side(ours, handle, monitor))
    ticking = asyncio.create_task(_ticker(machine))
    vmc = VmcMaster(vmc_port, answer_timeout=0.5, recorder=recorder)
    try:
        yield InProcessReader(vmc, vending, machine, ours)
    finally:
        vmc.close()
        ours.send(msg.encode(msg.Stop()))
        await asyncio.wait_for(bus, STOP_WAIT_S)
        for task in (deciding, ticking):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ours.close()
