"""Supervisor of the bus process: start it, pump its reports, restart it when it dies.

The bus process (MDB's :mod:`vmc.services.bus_process` or Executive's
:mod:`vmc.services.exe_process`, a :class:`BusProgram`) owns the serial port; the daemon only
sends decisions and hears events.
A port that cannot be opened or vanishes is an expected fault, never a crash of the daemon:

* a device that does not exist (a USB adapter not plugged in yet, or unplugged) is waited
  for: one ``mdb_port_missing`` line, then one ``mdb_port_waiting`` line per look, every few
  seconds at most, and the bus process starts as soon as the device is there;
* a bus process that exits for any other reason is restarted with jittered, growing backoff,
  one ``bus_process_exited`` line each time (with the port error the process reported).

Every wait ends at once on :meth:`BusSupervisor.stop`; the bus process then voids what is
undecided and exits. Whoever runs :meth:`run` bounds that: cancelling it kills the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from types import TracebackType
from typing import NamedTuple, Self

import structlog

from drivers.ports import PortKind, parse_port_url
from protocols.errors import RemoteProtocolError
from protocols.mdb.cashless import ReaderConfig
from vmc.monitor import MonitorFrame, decode
from vmc.services import bus_messages as msg

log = structlog.get_logger("vmc.bus")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0
PORT_WAIT_MAX_S = 5.0
"""A missing device is looked for at least this often: a USB adapter may show up late."""
BUS_SILENT_S = 10.0
"""A bus process that sends nothing for this long is hung (it sends a heartbeat a second)."""
MDB_SILENT_S = 5.0
"""No POLL from the VMC for this long: the MDB link is down (VMC off, cable pulled)."""


def missing_port_hint(bus: str) -> str:
    """What to do about a missing port device of ``bus`` (MDB, EXE)."""
    key = f"{bus.lower()}.port"
    return f"plug in the {bus} adapter or fix {key}; vmcd starts serving when it appears"


MISSING_PORT_HINT = missing_port_hint("MDB")
MONITOR_BACKLOG = 1024
REPORTS_PER_TURN = 64
"""Messages of the bus process handled in one turn of the loop at most (a monitor's burst
must not hold up the cloud's), the rest on the next."""
"""Frames one monitor listener may have waiting; more are dropped (and counted) for it."""
BUS_PRELUDE = "import sys; sys.modules['ssl'] = None"
"""What a bus process runs before its imports: ``ssl`` made unimportable. A bus process never
speaks TLS, and asyncio would otherwise load it (and libssl with it, about 4 MB of RSS) as it
imports; asyncio runs without it when it is absent."""
BUS_BOOT = (
    f"{BUS_PRELUDE}; from importlib import import_module; "
    "sys.exit(import_module(sys.argv[1]).main(sys.argv[2:]))"
)
"""How a bus program starts: ``python -c BUS_BOOT module options...``."""


class BusState(Enum):
    STARTING = "starting"  # the bus process is spawned and has not reported yet
    SERVING = "serving"
    WAITING_FOR_PORT = "waiting_for_port"
    RESTARTING = "restarting"  # backoff after the bus process exited
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class BusProgram:
    """The bus process to run (``module``'s ``main(options...)``, see :data:`BUS_BOOT`) and
    how its link is named and judged: up while the peer was heard within ``silent_s``."""

    module: str
    options: tuple[str, ...]
    kind: PortKind = PortKind.MDB
    silent_s: float = MDB_SILENT_S

    @property
    def name(self) -> str:
        return self.kind.value

    @classmethod
    def mdb(cls, reader: ReaderConfig, realtime_priority: int = 0) -> BusProgram:
        """The MDB cashless device; its link is up while the VMC polls."""
        options = ("--reader", json.dumps(asdict(reader)))
        return cls("vmc.services.bus_process", (*options, *_priority(realtime_priority)))

    @classmethod
    def exe(
        cls, settings: dict[str, object], mode_bit: str, silent_s: float, realtime_priority: int
    ) -> BusProgram:
        """The Executive master (``settings``: ExeSettings' fields); its link is up while the
        VMC answers."""
        options = ("--exe", json.dumps(settings), "--mode-bit", mode_bit)
        return cls(
            "vmc.services.exe_process",
            (*options, *_priority(realtime_priority)),
            PortKind.EXE,
            silent_s,
        )


def _priority(priority: int) -> tuple[str, ...]:
    return ("--realtime-priority", str(priority))


@dataclass(frozen=True, slots=True)
class BusStatus:
    """What an operator is told (systemd's STATUS=) and the cloud's ``mdb_link``."""

    link_up: bool
    text: str


@dataclass(slots=True)
class Backoff:
    """Jittered doubling delays, capped; ``jitter`` 0.2 means +-20 %."""

    first: float
    cap: float
    jitter: float = 0.0
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._next = self.first

    def delay(self) -> float:
        value = self._next * random.uniform(1 - self.jitter, 1 + self.jitter)
        self._next = min(self._next * 2, self.cap)
        return value


class BusMonitor:
    """One listener of the bus monitor: ``async with bus.monitor() as frames: async for ...``.

    While at least one is open the bus process streams every exchange; a listener that does
    not keep up loses frames, counted in the ``dropped`` of the next one it gets. It hears the
    bus across restarts of the bus process, and nothing while none runs.
    """

    def __init__(self, supervisor: BusSupervisor, backlog: int) -> None:
        self._supervisor = supervisor
        self._queue: asyncio.Queue[MonitorFrame] = asyncio.Queue(backlog)
        self._lost = 0

    def offer(self, frame: MonitorFrame) -> None:
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._lost += 1 + frame.dropped

    async def __aenter__(self) -> Self:
        self._supervisor._listen(self)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._supervisor._unlisten(self)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> MonitorFrame:
        frame = await self._queue.get()
        if self._lost:
            frame = dataclasses.replace(frame, dropped=frame.dropped + self._lost)
            self._lost = 0
        return frame


def port_path(port_url: str, kind: PortKind = PortKind.MDB) -> str | None:
    """The device file behind a ``uart://`` or ``pty://`` URL; None for ``loop://``."""
    port = parse_port_url(port_url, kind)
    return port.device if port.scheme in ("uart", "pty") else None


class _Spawned(NamedTuple):
    proc: asyncio.subprocess.Process
    sock: socket.socket


class BusSupervisor:
    def __init__(
        self,
        port_url: str,
        bus: ReaderConfig | BusProgram,
        on_report: Callable[[object], None],
        *,
        realtime_priority: int = 0,
    ) -> None:
        """``bus``: the bus process to run, or the MDB reader's configuration for MDB's."""
        self.program = (
            bus if isinstance(bus, BusProgram) else BusProgram.mdb(bus, realtime_priority)
        )
        self.port_url = port_url
        self.port_path = port_path(port_url, self.program.kind)
        self.on_report = on_report
        self.state = BusState.STARTING
        self.last_heartbeat: msg.Heartbeat | None = None
        self.restarts = 0
        self._heard_at = time.monotonic()
        self._port_error: str | None = None
        self._sock: socket.socket | None = None
        self._stop = asyncio.Event()
        self._listeners: set[BusMonitor] = set()
        self._early: _Spawned | None = None

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

    def monitor(self, backlog: int = MONITOR_BACKLOG) -> BusMonitor:
        """A new listener of every exchange on the bus, decoded (see :class:`BusMonitor`)."""
        return BusMonitor(self, backlog)

    def _listen(self, listener: BusMonitor) -> None:
        self._listeners.add(listener)
        if len(self._listeners) == 1 and self._sock is not None:
            self.send(msg.Monitor(True))

    def _unlisten(self, listener: BusMonitor) -> None:
        self._listeners.discard(listener)
        if not self._listeners and self._sock is not None:
            self.send(msg.Monitor(False))

    def stop(self) -> None:
        """End every wait now; :meth:`run` returns once the bus process has exited."""
        self._stop.set()

    def healthy(self) -> bool:
        """The supervisor does its job: a bus process that reports, or a deliberate wait.

        Whether the VMC polls is not part of it: a silent bus is :meth:`status`, not a fault.
        """
        if self.state in (BusState.STARTING, BusState.SERVING):
            return time.monotonic() - self._heard_at < BUS_SILENT_S
        return True

    def status(self) -> BusStatus:
        name = self.program.name
        if self.state is BusState.WAITING_FOR_PORT:
            return BusStatus(False, f"waiting for {self.port_path}")
        if self.state is BusState.RESTARTING:
            return BusStatus(False, f"{name} bus process restarting")
        if not self.healthy():
            return BusStatus(False, f"{name} bus process not responding")
        age = None if self.last_heartbeat is None else self.last_heartbeat.last_poll_age
        if age is not None and age < self.program.silent_s:
            return BusStatus(True, f"{name} link up")
        return BusStatus(False, f"no {name} link")

    async def run(self) -> None:
        restart = Backoff(BACKOFF_FIRST_S, BACKOFF_MAX_S, jitter=0.2)
        try:
            while await self._port_present():
                started = time.monotonic()
                code = await self._run_once()
                if self._stop.is_set():
                    return
                self.restarts += 1
                if time.monotonic() - started > STABLE_AFTER_S:
                    restart.reset()
                # A vanished device is waited for (_port_present), not restarted into.
                delay = None if self._port_missing() else restart.delay()
                log.warning(
                    "bus_process_exited",
                    code=code,
                    error=self._port_error,
                    restart_in_s=None if delay is None else round(delay, 2),
                )
                if delay is not None:
                    self.state = BusState.RESTARTING
                    if await self._pause(delay):
                        return
        finally:
            self._kill_early()  # a stop before the first process was taken over
            self.state = BusState.STOPPED

    def _port_missing(self) -> bool:
        return self.port_path is not None and not os.path.exists(self.port_path)

    async def _port_present(self) -> bool:
        """Wait until the port's device exists; False if told to stop first."""
        if self._stop.is_set():
            return False
        if not self._port_missing():
            return True
        self.state = BusState.WAITING_FOR_PORT
        backoff = Backoff(BACKOFF_FIRST_S, PORT_WAIT_MAX_S)
        started = time.monotonic()
        delay = backoff.delay()
        log.warning(
            "mdb_port_missing",
            bus=self.program.name,
            port=self.port_url,
            attempt=1,
            retry_in_s=round(delay, 2),
            hint=missing_port_hint(self.program.name),
        )
        attempt = 1
        while not await self._pause(delay):
            attempt += 1
            waited = round(time.monotonic() - started, 1)
            if not self._port_missing():
                log.info("mdb_port_appeared", port=self.port_url, attempt=attempt, waited_s=waited)
                return True
            delay = backoff.delay()
            log.info(
                "mdb_port_waiting",
                port=self.port_url,
                attempt=attempt,
                waited_s=waited,
                retry_in_s=round(delay, 2),
            )
        return False

    async def _pause(self, seconds: float) -> bool:
        """Sleep, unless told to stop; True if told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def spawn(self) -> None:
        """Start the first bus process now, ahead of :meth:`run`.

        The daemon calls this before it builds its services, so that the bus process's start
        overlaps theirs and the VMC's RESET is answered sooner after a power cut; the bus
        process serves the VMC on its own, and its reports wait in the socket until
        :meth:`run` reads them. A missing port is left to :meth:`run` to wait for.
        """
        if self._early is None and not self._stop.is_set() and not self._port_missing():
            self._early = await self._spawn()

    async def discard(self) -> None:
        """Kill a bus process :meth:`spawn` started if :meth:`run` never took it over (the
        daemon failed to start), and wait for it: no orphan holds the port."""
        early = self._kill_early()
        if early is not None:
            await early.proc.wait()

    def _kill_early(self) -> _Spawned | None:
        early, self._early = self._early, None
        if early is not None:
            early.sock.close()
            with contextlib.suppress(ProcessLookupError):
                early.proc.kill()
        return early

    async def _spawn(self) -> _Spawned:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent.setblocking(False)
        program = self.program
        args = [
            sys.executable,
            "-c",
            BUS_BOOT,
            program.module,
            "--port",
            self.port_url,
            "--fd",
            str(child.fileno()),
            *program.options,
        ]
        self.state = BusState.STARTING
        self.last_heartbeat = None
        self._port_error = None
        self._heard_at = time.monotonic()
        try:
            # Its own process group: a Ctrl-C on the terminal is the daemon's to handle.
            proc = await asyncio.create_subprocess_exec(
                *args, pass_fds=(child.fileno(),), process_group=0
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        return _Spawned(proc, parent)

    async def _run_once(self) -> int:
        """One bus process, from spawn to exit; on a stop, asks it to stop and waits."""
        early, self._early = self._early, None
        proc, parent = early if early is not None else await self._spawn()
        self._sock = parent
        try:
            pump = asyncio.create_task(self._pump(parent))
            stopped = asyncio.create_task(self._stop.wait())
            try:
                await asyncio.wait((pump, stopped), return_when=asyncio.FIRST_COMPLETED)
                if not pump.done():
                    self.send(msg.Stop())
                    await pump  # ends when the process exits and its socket closes
            finally:
                pump.cancel()
                stopped.cancel()
            return await proc.wait()
        finally:
            self._sock = None
            parent.close()
            if proc.returncode is None:  # cancelled: the stop ran out of time
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def _pump(self, sock: socket.socket) -> None:
        """Hand on every report until the bus process's socket closes.

        Read from a reader callback that stays registered: a report reaches the daemon's
        decision in the loop turn its bytes arrive in (a vend request on its way to the cloud),
        with no task switch and no change of the selector per message. An exception in a
        report's handling ends the pump with it.
        """
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                for _ in range(REPORTS_PER_TURN):
                    if closed.done():
                        return
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        return
                    except OSError:
                        data = b""
                    if not data:
                        closed.set_result(None)
                        return
                    self._report(data)
            except Exception as exc:  # the pump's awaiter gets it
                closed.set_exception(exc)

        loop.add_reader(sock.fileno(), readable)
        try:
            await closed
        finally:
            loop.remove_reader(sock.fileno())

    def _report(self, data: bytes) -> None:
        """One message of the bus process."""
        try:
            report = msg.decode(data)
        except RemoteProtocolError as exc:
            log.error("bus_message_bad", error=str(exc))
            return
        self._heard_at = time.monotonic()
        self.state = BusState.SERVING
        if isinstance(report, msg.PortFailed):
            self._port_error = report.error  # logged once, with the exit
            return
        if isinstance(report, msg.Exchange):
            frame = decode(report)
            for listener in tuple(self._listeners):
                listener.offer(frame)
            return
        if isinstance(report, msg.Ready) and self._listeners:
            self.send(msg.Monitor(True))  # a new bus process: it starts unmonitored
        if isinstance(report, msg.Heartbeat):
            self.last_heartbeat = report
        self.on_report(report)
