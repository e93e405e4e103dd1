"""What both bus processes (MDB's and Executive's) share: the daemon's socket, the start-up
and the run of the loop, the stop, a port that fails.

Each bus process is its core (the cashless device, the Executive master) with a port; this
module is everything around them, so that the two processes start, report and stop the same
way. It imports nothing the bus processes must not load (see
``tests/unit/test_bus_process_imports.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Coroutine
from typing import Any, Protocol

from protocols.errors import MoneyError, VmcError
from protocols.mdb.commands import PaymentType
from vmc.services import bus_messages as msg

HEARTBEAT_S = 1.0
STOP_GRACE_S = 1.0


class BusPort(Protocol):
    """What the loop needs of a port, MDB's or Executive's."""

    @property
    def url(self) -> str: ...

    def fileno(self) -> int: ...

    def read_available(self) -> bytes: ...

    def close(self) -> None: ...


class SessionCore(Protocol):
    """The decisions both cores take from the daemon, in the same words."""

    def begin_session(
        self,
        funds: int | None = None,
        payment_type: PaymentType = PaymentType.NORMAL,
        timeout: float | None = None,
    ) -> None: ...

    def approve_vend(self, vend_id: int, amount: int) -> None: ...

    def deny_vend(self, vend_id: int) -> None: ...

    def cancel_session(self, vend_id: int | None = None) -> None: ...


def request_realtime(priority: int) -> bool:
    """SCHED_FIFO at ``priority`` if the process may have it (CAP_SYS_NICE or root)."""
    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError):
        return False
    return True


class DaemonLink:
    """The bus process's end of the daemon's socket: decisions in, reports out, never blocking.

    Reports queue in order and go out as the socket takes them; the monitor's frames only when
    no report waits. While the socket is full nothing is tried until it is writable again (no
    system call per message). A daemon that is gone ends the bus process: ``done`` resolves.
    Subclasses read their port (:meth:`on_port_readable`), apply the decisions
    (:meth:`_apply`), collect their core's events (:meth:`_forward_events`), begin a stop
    (:meth:`_begin_stop`) and say when nothing is left undecided (:meth:`_settled`).
    """

    def __init__(self, port: BusPort, sock: socket.socket) -> None:
        self.port = port
        self.sock = sock
        self.stopping_since: float | None = None
        self.outgoing: deque[bytes] = deque()
        self.frames: deque[bytes] = deque()  # the monitor's, sent after every event
        self.done: asyncio.Future[int] | None = None
        self._blocked = False  # the daemon's socket is full: wait until it is writable

    def on_socket_readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._finish(0)  # the daemon is gone: a bus without its daemon must not serve
                return
            self._apply(msg.decode(data))
        self._forward_events()

    def on_port_readable(self) -> None:
        raise NotImplementedError

    def _apply(self, command: object) -> None:
        """One decision of the daemon; one it cannot take is refused back, with why."""
        core = self._core()
        try:
            match command:
                case msg.BeginSession(funds=funds, payment_type=payment_type, timeout=timeout):
                    core.begin_session(funds, PaymentType(payment_type), timeout)
                case msg.ApproveVend(vend_id=vend_id, amount=amount):
                    core.approve_vend(vend_id, amount)
                case msg.DenyVend(vend_id=vend_id):
                    core.deny_vend(vend_id)
                case msg.CancelSession(vend_id=vend_id):
                    core.cancel_session(vend_id)
                case msg.Stop():
                    self._begin_stop()
                case _:
                    self._apply_own(command)
        except MoneyError as exc:
            self._send(msg.CommandRefused(type(command).__name__, str(exc), msg.Refusal.MONEY))
        except VmcError as exc:
            self._send(msg.CommandRefused(type(command).__name__, str(exc), msg.Refusal.STATE))

    def _core(self) -> SessionCore:
        raise NotImplementedError

    def _apply_own(self, command: object) -> None:
        """A decision only this bus has; raises VmcError for one it does not know."""
        raise NotImplementedError

    def _forward_events(self) -> None:
        raise NotImplementedError

    def _begin_stop(self) -> None:
        raise NotImplementedError

    def _settled(self) -> bool:
        raise NotImplementedError

    def _check_stopped(self, now: float) -> None:
        """A stop ends once the core has settled what it voided, or after the grace."""
        since = self.stopping_since
        if since is not None and (self._settled() or now - since >= STOP_GRACE_S):
            self._forward_events()
            self._finish(0)

    def _port_failed(self, exc: VmcError) -> None:
        self._send(msg.PortFailed(str(exc)))
        self._finish(3)

    def _send(self, message: object) -> None:
        self.outgoing.append(msg.encode(message))
        self._drain()

    def _drain(self) -> None:
        if self._blocked:
            return
        while self.outgoing or self.frames:
            queue = self.outgoing or self.frames
            try:
                self.sock.send(queue[0])
            except BlockingIOError:
                self._blocked = True
                loop = asyncio.get_running_loop()
                loop.add_writer(self.sock.fileno(), self._writable)
                return
            except OSError:
                self._finish(0)
                return
            queue.popleft()

    def _writable(self) -> None:
        asyncio.get_running_loop().remove_writer(self.sock.fileno())
        self._blocked = False
        self._drain()

    def _finish(self, code: int) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(code)


def discard_stale_input(port: BusPort) -> None:
    """Drop what the VMC sent before we listened: each byte was due an answer long ago.

    On MDB a VMC repeats RESET (or POLL) while its reader is silent, and a pty or the kernel
    keeps those bytes; answered now, they would only reset the reader over and over and
    confuse the VMC with a burst of stale answers. On Executive they are replies to a previous
    process's commands, none of them an answer to ours.
    """
    with contextlib.suppress(VmcError):  # a dead port is reported by the loop's first read
        while port.read_available():
            pass


async def serve_link(link: DaemonLink, realtime: bool, work: Coroutine[Any, Any, None]) -> int:
    """Run a bus process's loop until it is done: the port and the daemon's socket read as
    they become readable, ``work`` (a ticker, a poller) beside them; its exit code."""
    loop = asyncio.get_running_loop()
    port, sock = link.port, link.sock
    link.done = loop.create_future()
    sock.setblocking(False)
    loop.add_reader(port.fileno(), link.on_port_readable)
    loop.add_reader(sock.fileno(), link.on_socket_readable)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, link._begin_stop)
    link._send(msg.Ready(port.url, realtime))
    running = asyncio.create_task(work)
    gc.collect()
    gc.freeze()  # keep collections of start-up objects off the answer path
    discard_stale_input(port)  # last: the loop reads the port from here on
    try:
        return await link.done
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        loop.remove_reader(port.fileno())
        loop.remove_reader(sock.fileno())
        port.close()


def start_failed(sock: socket.socket, program: str, exc: Exception) -> int:
    """A bus process that could not start (its port, its settings): the daemon hears why
    (``PortFailed``, logged with the exit), or stderr does when there is no daemon."""
    try:
        sock.send(msg.encode(msg.PortFailed(str(exc))))
    except OSError:
        print(f"{program}: {exc}", file=sys.stderr)
    return 2
