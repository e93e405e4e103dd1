"""The MDB bus process: port driver, link layer and cashless core, and nothing else.

Why a process of its own: any CPU work in the daemon's event loop, or a busy thread holding
the GIL, delays the answer to the VMC past the bus's 5 ms window. Here the loop does only bus
work: read the port, let the core answer, write the answer, and only then forward events to
the daemon over the socketpair. It asks for SCHED_FIFO when allowed and runs normally when
not. Started by :mod:`vmc.services.bus` as ``python -m vmc.services.bus_process``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import sys
import time
from collections import deque

from drivers.ports import open_port
from drivers.transport import MdbPort
from protocols.errors import MoneyError, VmcError
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from protocols.mdb.commands import Cmd, PaymentType
from protocols.mdb.link import (
    Acked,
    BlockReceived,
    ChecksumFailed,
    LinkEvent,
    Nakked,
    RetransmitRequested,
)
from protocols.mdb.words import WordDecoder, checksum, peripheral_words
from vmc.services import bus_messages as msg

TICK_S = 0.02
HEARTBEAT_S = 1.0
STOP_GRACE_S = 1.0
MONITOR_BACKLOG = 512
"""Exchanges waiting for the daemon's monitor at most; more are dropped and counted: the bus
never waits for a slow listener."""
_ONE_WORD: dict[type, tuple[msg.ExchangeKind, bytes]] = {
    Acked: (msg.ExchangeKind.ACK, b"\x00"),
    RetransmitRequested: (msg.ExchangeKind.RET, b"\xaa"),
    Nakked: (msg.ExchangeKind.NAK, b"\xff"),
}


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
    Subclasses apply the decisions (:meth:`_apply`) and collect their core's events
    (:meth:`_forward_events`).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
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

    def _apply(self, command: object) -> None:
        raise NotImplementedError

    def _forward_events(self) -> None:
        raise NotImplementedError

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


class BusLoop(DaemonLink):
    """Glue between one port, one cashless core and the daemon's socket."""

    def __init__(self, port: MdbPort, device: CashlessDevice, sock: socket.socket) -> None:
        super().__init__(sock)
        self.port = port
        self.device = device
        self.decoder = WordDecoder()
        self.bytes_in = 0
        self.blocks_out = 0
        self.answers = 0
        self.answer_sum_s = 0.0
        self.answer_max_s = 0.0
        self.stopping_since: float | None = None
        self.dropped = 0
        self._monitor_poll_at: float | None = None

    def on_port_readable(self) -> None:
        try:
            data = self.port.read_available()
        except VmcError as exc:
            self._send(msg.PortFailed(str(exc)))
            self._finish(3)
            return
        if not data:
            return
        now = time.monotonic()
        self.bytes_in += len(data)
        blocks = self.device.receive(self.decoder.feed(data), now)
        for block in blocks:
            self.port.write_words(peripheral_words(block))
        answer_s = 0.0
        if blocks:
            answer_s = time.monotonic() - now
            self.answers += 1
            self.answer_sum_s += answer_s
            self.answer_max_s = max(self.answer_max_s, answer_s)
        self.blocks_out += len(blocks)
        self._forward_events()
        if self.device.tap:
            self._queue_exchanges(answer_s)
        self._check_stopped(now)

    def _queue_exchanges(self, answer_s: float) -> None:
        """After the answer is written: the exchanges the core tapped, raw, for the monitor."""
        tap = self.device.tap
        assert tap is not None
        at = time.time()
        for event, reply, when, wide in tap:
            kind, vmc = _tapped(event)
            gap = None
            if kind is msg.ExchangeKind.BLOCK and vmc[0] & 0x07 == Cmd.POLL:
                if self._monitor_poll_at is not None:
                    gap = when - self._monitor_poll_at
                self._monitor_poll_at = when
            if len(self.frames) >= MONITOR_BACKLOG:
                self.dropped += 1
                continue
            answer = b"" if reply is None else reply
            exchange = msg.Exchange(
                at,
                kind,
                vmc.hex(),
                answer.hex(),
                wide,
                answer_s if answer else 0.0,
                gap,
                self.dropped,
            )
            self.frames.append(msg.encode(exchange))
            self.dropped = 0
        tap.clear()
        self._drain()

    def _monitor(self, on: bool) -> None:
        self.device.tap = [] if on else None
        self._monitor_poll_at = None
        if not on:
            self.frames.clear()
            self.dropped = 0

    def _apply(self, command: object) -> None:
        device = self.device
        try:
            match command:
                case msg.BeginSession(funds=funds, payment_type=payment_type, timeout=timeout):
                    device.begin_session(funds, PaymentType(payment_type), timeout)
                case msg.ApproveVend(vend_id=vend_id, amount=amount):
                    device.approve_vend(vend_id, amount)
                case msg.DenyVend(vend_id=vend_id):
                    device.deny_vend(vend_id)
                case msg.CancelSession(vend_id=vend_id):
                    device.cancel_session(vend_id)
                case msg.DecideRevalue(approved=approved):
                    device.decide_revalue(approved)
                case msg.ShowText(text=text, seconds=seconds):
                    device.display(text, seconds)
                case msg.Stop():
                    self._begin_stop()
                case msg.Monitor(on=on):
                    self._monitor(on)
                case _:
                    raise VmcError(f"unknown command {command!r}")
        except MoneyError as exc:
            self._send(msg.CommandRefused(type(command).__name__, str(exc), msg.Refusal.MONEY))
        except VmcError as exc:
            self._send(msg.CommandRefused(type(command).__name__, str(exc), msg.Refusal.STATE))

    def _begin_stop(self) -> None:
        """Void what is undecided, then keep answering until the VMC has heard it."""
        self.device.void_pending()
        self.stopping_since = time.monotonic()
        self._check_stopped(self.stopping_since)

    def _check_stopped(self, now: float) -> None:
        since = self.stopping_since
        if since is not None and (self.device.settled or now - since >= STOP_GRACE_S):
            self._forward_events()
            self._finish(0)

    async def ticker(self) -> None:
        last_beat = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self.device.tick(now)
            self._forward_events()
            self._check_stopped(now)
            if now - last_beat >= HEARTBEAT_S:
                last_beat = now
                last = self.device.last_poll_at
                self._send(
                    msg.Heartbeat(
                        state=self.device.state.name,
                        polls=self.device.polls,
                        last_poll_age=None if last is None else round(now - last, 3),
                        bytes_in=self.bytes_in,
                        blocks_out=self.blocks_out,
                        answers=self.answers,
                        answer_sum_s=self.answer_sum_s,
                        answer_max_s=self.answer_max_s,
                    )
                )
                self.answer_max_s = 0.0

    def _forward_events(self) -> None:
        for event in self.device.take_events():
            self._send(event)


def _tapped(event: LinkEvent) -> tuple[msg.ExchangeKind, bytes]:
    """The kind of a tapped link event and the VMC's bytes as they were on the wire."""
    if isinstance(event, BlockReceived):
        return msg.ExchangeKind.BLOCK, event.data + bytes((checksum(event.data),))
    if isinstance(event, ChecksumFailed):
        return msg.ExchangeKind.BAD_CHECKSUM, event.data
    one = _ONE_WORD.get(type(event))
    return one if one is not None else (msg.ExchangeKind.BUS_RESET, b"\x00")


def discard_stale_input(port: MdbPort) -> None:
    """Drop what the VMC sent before we listened.

    A VMC repeats RESET (or POLL) while its reader is silent, and a pty or the kernel keeps
    those bytes. Each was due an answer within 5 ms; answered now, they would only reset the
    reader over and over and confuse the VMC with a burst of stale answers.
    """
    with contextlib.suppress(VmcError):  # a dead port is reported by the loop's first read
        while port.read_available():
            pass


async def serve(port: MdbPort, device: CashlessDevice, sock: socket.socket, realtime: bool) -> int:
    loop = asyncio.get_running_loop()
    bus = BusLoop(port, device, sock)
    bus.done = loop.create_future()
    sock.setblocking(False)
    loop.add_reader(port.fileno(), bus.on_port_readable)
    loop.add_reader(sock.fileno(), bus.on_socket_readable)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, bus._begin_stop)
    bus._send(msg.Ready(port.url, realtime))
    ticker = asyncio.create_task(bus.ticker())
    gc.collect()
    gc.freeze()  # keep collections of start-up objects off the answer path
    discard_stale_input(port)  # last: the loop reads the port from here on
    try:
        return await bus.done
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        loop.remove_reader(port.fileno())
        loop.remove_reader(sock.fileno())
        port.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmc-bus", description="vmc's MDB bus process")
    parser.add_argument("--port", required=True, help="uart://, pty:// or loop:// URL")
    parser.add_argument("--fd", type=int, required=True, help="socketpair end to the daemon")
    parser.add_argument("--reader", required=True, help="ReaderConfig fields as JSON")
    parser.add_argument("--realtime-priority", type=int, default=0)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    try:
        config = ReaderConfig(**json.loads(args.reader))
        port = open_port(args.port)
    except (VmcError, ValueError, TypeError) as exc:
        try:
            sock.send(msg.encode(msg.PortFailed(str(exc))))
        except OSError:
            print(f"vmc-bus: {exc}", file=sys.stderr)  # no daemon to log it
        return 2
    realtime = request_realtime(args.realtime_priority)
    device = CashlessDevice(config, time.monotonic())
    return asyncio.run(serve(port, device, sock, realtime))


if __name__ == "__main__":
    sys.exit(main())
