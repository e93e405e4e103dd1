"""The Executive bus process: the EXE port and the master core, and nothing else.

On Executive vmc is the master: this process sends a command whenever the core says one is due
(a poll every ``exe.poll_interval``, a resend after a PNAK, the VEND of an approval), reads the
VMC's reply bytes into the core, and forwards the core's events to the daemon, which decides.
It has a process of its own for the reason the MDB bus has (:mod:`vmc.services.bus_process`):
the daemon's event loop may be busy (TLS, a large audit, an fsync) and the VMC must keep
hearing from us, or it shows "no link". Started by :mod:`vmc.services.bus` as
``python -m vmc.services.exe_process``; it talks to the daemon with the same messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time

from drivers.exe_port import ExePort, open_exe_port
from drivers.mode_bit import ModeBit
from protocols.errors import LocalProtocolError, VmcError
from protocols.exe.events import LinkChanged
from protocols.exe.master import ExeMaster
from protocols.exe.settings import ExeSettings
from vmc.services import bus_messages as msg
from vmc.services.daemon_link import (
    HEARTBEAT_S,
    DaemonLink,
    request_realtime,
    serve_link,
    start_failed,
)


class ExeLoop(DaemonLink):
    """Glue between one EXE port, one master core and the daemon's socket."""

    def __init__(self, port: ExePort, master: ExeMaster, sock: socket.socket) -> None:
        super().__init__(port, sock)
        self.port: ExePort = port
        self.master = master
        self.wake = asyncio.Event()  # a reply or a decision: the core may have work now
        self.bytes_in = 0

    def on_port_readable(self) -> None:
        try:
            data = self.port.read_available()
        except VmcError as exc:
            self._port_failed(exc)
            return
        if data:
            self.bytes_in += len(data)
            self.master.receive(data, time.monotonic())
            self._forward_events()
            self.wake.set()

    def _core(self) -> ExeMaster:
        return self.master

    def _apply(self, command: object) -> None:
        super()._apply(command)
        self.wake.set()  # the core may have a command to send now

    def _apply_own(self, command: object) -> None:
        match command:
            case msg.SetPrices(prices=prices):
                self.master.set_prices(dict(prices))
            case msg.Monitor():
                pass  # the bus monitor shows MDB exchanges; Executive has none to show
            case msg.DecideRevalue() | msg.ShowText():
                name = type(command).__name__
                raise LocalProtocolError(f"{name}: Executive has no such command")
            case _:
                raise VmcError(f"unknown command {command!r}")

    def _forward_events(self) -> None:
        """The core's events; a change of the link is preceded by a heartbeat, so the daemon's
        link status has changed by the time it hears of the reader's new state."""
        events = self.master.take_events()
        if any(isinstance(event, LinkChanged) for event in events):
            self._heartbeat(time.monotonic())
        for event in events:
            self._send(event)

    def _begin_stop(self) -> None:
        """Deny what is undecided; a running VEND gets up to a second for its result."""
        self.master.void_pending()
        self.stopping_since = time.monotonic()
        self.wake.set()

    def _settled(self) -> bool:
        return self.master.settled

    def _heartbeat(self, now: float) -> None:
        """As MDB's, ``polls`` counting the VMC's replies and ``last_poll_age`` the time since
        the last one: 0 while a VEND runs (the VMC is dispensing, not silent), None while the
        core judges the link down. The supervisor's status follows the core's judgment."""
        master = self.master
        heard = master.last_reply_at
        age = None
        if master.link_up and heard is not None:
            age = round(now - heard, 3) if master.settled else 0.0
        self._send(
            msg.Heartbeat(
                state=master.state.name,
                polls=master.replies,
                last_poll_age=age,
                bytes_in=self.bytes_in,
                blocks_out=master.commands_sent,
            )
        )

    async def run(self) -> None:
        """Send what the core wants when it wants it; sleep until its next deadline, a reply
        or a decision."""
        done = self.done
        assert done is not None
        next_beat = time.monotonic()
        while not done.done():
            now = time.monotonic()
            command = self.master.poll(now)
            if command is not None:
                try:
                    self.port.write_command(command)
                except VmcError as exc:
                    self._port_failed(exc)
                    return
            self._forward_events()
            if now >= next_beat:
                self._heartbeat(now)
                next_beat = now + HEARTBEAT_S
            self._check_stopped(now)
            self.wake.clear()
            delay = min(self.master.wake_at(), next_beat) - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.wake.wait()


async def serve(port: ExePort, master: ExeMaster, sock: socket.socket, realtime: bool) -> int:
    exe = ExeLoop(port, master, sock)
    return await serve_link(exe, realtime, exe.run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmc-exe", description="vmc's Executive bus process")
    parser.add_argument("--port", required=True, help="uart://, pty:// or loop:// URL")
    parser.add_argument("--fd", type=int, required=True, help="socketpair end to the daemon")
    parser.add_argument("--exe", required=True, help="ExeSettings fields as JSON")
    parser.add_argument("--mode-bit", choices=[m.value for m in ModeBit], default="mark")
    parser.add_argument("--realtime-priority", type=int, default=0)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    try:
        settings = ExeSettings(**json.loads(args.exe))
        port = open_exe_port(args.port, ModeBit(args.mode_bit))
    except (VmcError, ValueError, TypeError) as exc:
        return start_failed(sock, "vmc-exe", exc)
    realtime = request_realtime(args.realtime_priority)
    master = ExeMaster(settings, time.monotonic())
    return asyncio.run(serve(port, master, sock, realtime))


if __name__ == "__main__":
    sys.exit(main())
