"""The systemd watchdog says whether vmcd is healthy, not whether the VMC polls.

vmcd runs as the console script with a real notify socket (what systemd gives a
``Type=notify`` unit): WATCHDOG=1 keeps coming while the bus is silent, STATUS= tells the MDB
link's state, and a hung bus process (SIGSTOP) stops the pings so systemd would restart vmcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from drivers.pty import PtyPair
from sim.broker import MosquittoBroker
from sim.vmc_master import VmcMaster
from tests.e2e.cloud_rig import DEVICE, machine
from tests.e2e.test_stops import assert_quick_clean_stop, background, running
from tests.waiting import wait_for
from vmc.services.bus import BUS_SILENT_S, MDB_SILENT_S

WATCHDOG_USEC = 400_000
PING_S = WATCHDOG_USEC / 2e6


@dataclass
class NotifySocket:
    """The systemd end of sd_notify: every datagram vmcd sends, with when it came."""

    path: Path
    sock: socket.socket
    received: list[tuple[float, str]] = field(default_factory=list)

    def read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                data = self.sock.recv(4096)
                self.received.append((time.monotonic(), data.decode()))

    def messages(self, prefix: str) -> list[str]:
        return [m for _, m in self.received if m.startswith(prefix)]

    def pings_since(self, since: float) -> int:
        return sum(1 for at, m in self.received if m == "WATCHDOG=1" and at >= since)

    def last_ping(self) -> float:
        return max((at for at, m in self.received if m == "WATCHDOG=1"), default=0.0)

    def status(self) -> str | None:
        statuses = self.messages("STATUS=")
        return statuses[-1].removeprefix("STATUS=") if statuses else None


@contextlib.contextmanager
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    notify = NotifySocket(path, sock)
    loop = asyncio.get_running_loop()
    loop.add_reader(sock.fileno(), notify.read)
    try:
        yield notify
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


async def _poll_forever(vmc: VmcMaster) -> None:
    while True:
        await vmc.poll()
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def polling(pair: PtyPair) -> AsyncIterator[VmcMaster]:
    """A VMC that initialised the reader and keeps polling it until the block ends."""
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmc.initialise()
        async with background(_poll_forever(vmc)):
            yield vmc
    finally:
        vmc.close()


async def test_watchdog_pings_for_a_silent_bus_and_stops_for_a_hung_bus_process(
    tmp_path: Path,
) -> None:
    pair = PtyPair()
    try:
        with notify_socket(tmp_path) as notify:
            env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
            async with running(tmp_path, pair.device_url, env=env) as vmcd:
                # No VMC on the line: vmcd is healthy all the same, and says the link is down.
                await wait_for(lambda: notify.messages("READY=1"), 20, "READY=1")
                await wait_for(lambda: notify.status() == "no MDB link", 20, "no MDB link")
                since = time.monotonic()
                await wait_for(lambda: notify.pings_since(since) >= 10, 20, "10 pings, no VMC")

                async with polling(pair):
                    await wait_for(lambda: notify.status() == "MDB link up", 20, "link up")
                await wait_for(
                    lambda: notify.status() == "no MDB link", 4 * MDB_SILENT_S, "link down again"
                )
                links = [e["mdb_link"] for e in vmcd.events("mdb_status")]
                assert links == ["down", "up", "down"]  # each change logged once
                assert notify.messages("STATUS=") == [
                    "STATUS=no MDB link",
                    "STATUS=MDB link up",
                    "STATUS=no MDB link",
                ]

                # A hung bus process: the pings stop, so systemd would restart vmcd.
                bus = await wait_for(vmcd.bus_pid, 10, "the bus process")
                os.kill(bus, signal.SIGSTOP)
                await wait_for(
                    lambda: time.monotonic() - notify.last_ping() > 5 * PING_S,
                    4 * BUS_SILENT_S,
                    "the pings to stop",
                )
                assert notify.status() == "MDB bus process not responding"
                # And a stop still ends vmcd at once: the hung process is killed.
                await assert_quick_clean_stop(vmcd, pair.device_url)
                assert notify.messages("STOPPING=1")
    finally:
        pair.close()


async def test_no_watchdog_pings_without_watchdog_usec(tmp_path: Path) -> None:
    pair = PtyPair()
    try:
        with notify_socket(tmp_path) as notify:
            env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": ""}
            async with running(tmp_path, pair.device_url, env=env) as vmcd:
                await wait_for(lambda: notify.status() == "no MDB link", 20, "no MDB link")
                await vmcd.wait_event("bus_ready")
                await assert_quick_clean_stop(vmcd, pair.device_url)
        assert not notify.messages("WATCHDOG=1")
    finally:
        pair.close()


async def test_the_cloud_state_carries_the_mdb_link(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend

        def link() -> object:
            return (backend.state.get(DEVICE) or {}).get("mdb_link")

        async with background(_poll_forever(rig.vmc)):
            await backend.wait_for(lambda: link() == "up", 20)
        await backend.wait_for(lambda: link() == "down", 4 * MDB_SILENT_S)


def test_the_unit_pings_often_enough_and_waits_for_a_stop() -> None:
    unit = (Path(__file__).parents[2] / "systemd" / "vmcd.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    # systemd restarts vmcd only after WatchdogSec without a ping: a hung bus process
    # must be noticed well before that.
    assert int(settings["WatchdogSec"]) > 2 * BUS_SILENT_S
