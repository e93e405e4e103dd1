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
import json
import socket
import sys
import time

from drivers.ports import open_port
from drivers.transport import MdbPort
from protocols.errors import VmcError
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from protocols.mdb.commands import Cmd
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
from vmc.services.daemon_link import (
    HEARTBEAT_S,
    DaemonLink,
    request_realtime,
    serve_link,
    start_failed,
)

TICK_S = 0.02
MONITOR_BACKLOG = 512
"""Exchanges waiting for the daemon's monitor at most; more are dropped and counted: the bus
never waits for a slow listener."""
_ONE_WORD: dict[type, tuple[msg.ExchangeKind, bytes]] = {
    Acked: (msg.ExchangeKind.ACK, b"\x00"),
    RetransmitRequested: (msg.ExchangeKind.RET, b"\xaa"),
    Nakked: (msg.ExchangeKind.NAK, b"\xff"),
}


class BusLoop(DaemonLink):
    """Glue between one port, one cashless core and the daemon's socket."""

    def __init__(self, port: MdbPort, device: CashlessDevice, sock: socket.socket) -> None:
        super().__init__(port, sock)
        self.port: MdbPort = port
        self.device = device
        self.decoder = WordDecoder()
        self.bytes_in = 0
        self.blocks_out = 0
        self.answers = 0
        self.answer_sum_s = 0.0
        self.answer_max_s = 0.0
        self.dropped = 0
        self._monitor_poll_at: float | None = None

    def on_port_readable(self) -> None:
        try:
            data = self.port.read_available()
        except VmcError as exc:
            self._port_failed(exc)
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

    def _core(self) -> CashlessDevice:
        return self.device

    def _apply_own(self, command: object) -> None:
        match command:
            case msg.DecideRevalue(approved=approved):
                self.device.decide_revalue(approved)
            case msg.ShowText(text=text, seconds=seconds):
                self.device.display(text, seconds)
            case msg.Monitor(on=on):
                self._monitor(on)
            case _:
                raise VmcError(f"unknown command {command!r}")

    def _begin_stop(self) -> None:
        """Void what is undecided, then keep answering until the VMC has heard it."""
        self.device.void_pending()
        self.stopping_since = time.monotonic()
        self._check_stopped(self.stopping_since)

    def _settled(self) -> bool:
        return self.device.settled

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


async def serve(port: MdbPort, device: CashlessDevice, sock: socket.socket, realtime: bool) -> int:
    bus = BusLoop(port, device, sock)
    return await serve_link(bus, realtime, bus.ticker())


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
        return start_failed(sock, "vmc-bus", exc)
    realtime = request_realtime(args.realtime_priority)
    device = CashlessDevice(config, time.monotonic())
    return asyncio.run(serve(port, device, sock, realtime))


if __name__ == "__main__":
    sys.exit(main())
