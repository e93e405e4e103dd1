"""Supervisor of the MDB bus process: start it, pump its reports, restart it when it dies.

The bus process owns the serial port; the daemon only sends decisions and hears events.
A port that cannot be opened or vanishes is an expected fault: retried with jittered,
growing backoff, never a crash of the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict

import structlog

from protocols.errors import RemoteProtocolError
from protocols.mdb.cashless import ReaderConfig
from vmc.services import bus_messages as msg

log = structlog.get_logger("vmc.bus")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0
STOP_GRACE_S = 3.0


class BusSupervisor:
    def __init__(
        self,
        port_url: str,
        reader: ReaderConfig,
        on_report: Callable[[object], None],
        *,
        realtime_priority: int = 0,
    ) -> None:
        self.port_url = port_url
        self.reader = reader
        self.on_report = on_report
        self.realtime_priority = realtime_priority
        self.last_heartbeat: msg.Heartbeat | None = None
        self.restarts = 0
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False

    def send(self, command: msg.BusCommand) -> bool:
        """Hand a decision to the bus process; False if it is not running right now."""
        sock = self._sock
        if sock is None:
            log.warning("bus_command_dropped", command=type(command).__name__)
            return False
        try:
            sock.send(msg.encode(command))
        except OSError as exc:
            log.warning("bus_command_failed", command=type(command).__name__, error=str(exc))
            return False
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_FIRST_S
        while not self._stopping:
            started = loop.time()
            code = await self._run_once()
            if self._stopping:
                return
            self.restarts += 1
            if loop.time() - started > STABLE_AFTER_S:
                backoff = BACKOFF_FIRST_S
            delay = backoff * random.uniform(0.8, 1.2)
            log.warning("bus_process_exited", code=code, restart_in_s=round(delay, 2))
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _run_once(self) -> int:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent.setblocking(False)
        args = [
            sys.executable,
            "-m",
            "vmc.services.bus_process",
            "--port",
            self.port_url,
            "--fd",
            str(child.fileno()),
            "--reader",
            json.dumps(asdict(self.reader)),
            "--realtime-priority",
            str(self.realtime_priority),
        ]
        try:
            self._proc = await asyncio.create_subprocess_exec(*args, pass_fds=(child.fileno(),))
        finally:
            child.close()
        self._sock = parent
        try:
            await self._pump(parent)
        finally:
            self._sock = None
            parent.close()
        return await self._proc.wait()

    async def _pump(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(sock, 65536)
            except OSError:
                return
            if not data:
                return
            try:
                report = msg.decode(data)
            except RemoteProtocolError as exc:
                log.error("bus_message_bad", error=str(exc))
                continue
            if isinstance(report, msg.Heartbeat):
                self.last_heartbeat = report
            self.on_report(report)

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        self.send(msg.Stop())
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
