"""One worker process of the fleet: many :class:`FleetMachine` sessions on one event loop.

Started by :mod:`sim.fleet` as ``python -m sim.fleet_worker`` with its share of the machines.
It speaks on stdout in JSON lines: one ``{"connected": n, "failed": k, "connect_s": t}`` once
every machine tried, then, when its stdin closes (the fleet is done), one line of totals
before it exits. Each machine has its own session (its id as the client id, the retained
``lost`` will, ``cmd`` subscribed at QoS 1, then ``online`` and ``state`` retained), as vmcd
connects (docs/cloud-api.md §1). No task per machine: one timer pings idle sessions and runs
the engines' deadlines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import time
from dataclasses import dataclass

from sim.brokers import raise_nofile
from sim.fleet_machine import FleetMachine, Outgoing
from sim.mqtt_lite import V5, V311, Message, MqttLiteError, Session, Will

CONNECT_TRIES = 5
TICK_S = 0.25
LOOK_S = 1.0
STATE_MIN_INTERVAL_S = 0.2  # as vmcd: the steps of one vend coalesce into one state publish
STOP_ACK_S = 5.0


@dataclass
class Totals:
    connected: int = 0
    failed: int = 0
    retries: int = 0
    dropped: int = 0
    commands: int = 0
    vends: int = 0
    unacked: int = 0

    def ack_failed(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.unacked += 1


class Link:
    """One machine and its session: commands in, the engine's replies and events out."""

    def __init__(self, machine: FleetMachine, totals: Totals, busy: set[Link]) -> None:
        self.machine = machine
        self.totals = totals
        self.busy = busy
        self.session: Session | None = None
        self._state_due = False

    def on_message(self, message: Message) -> None:
        self.totals.commands += 1
        now = time.time()
        out, changed = self.machine.on_command(message.payload, now)
        self._send(out, changed, now)

    def tick(self, now: float) -> None:
        out, changed = self.machine.tick(now)
        self._send(out, changed, now)

    def _send(self, out: list[Outgoing], changed: bool, now: float) -> None:
        for message in out:
            self.publish(message)
        if self.machine.engine.txn is not None:
            self.busy.add(self)
        else:
            self.busy.discard(self)
        if changed and not self._state_due:
            self._state_due = True
            asyncio.get_running_loop().call_later(STATE_MIN_INTERVAL_S, self._publish_state)

    def _publish_state(self) -> None:
        self._state_due = False
        with contextlib.suppress(MqttLiteError):
            self.publish(self.machine.state(time.time()))

    def publish(self, message: Outgoing) -> asyncio.Future[None] | None:
        session = self.session
        if session is None:
            return None
        future = session.publish(message.topic, message.payload, retain=message.retain)
        future.add_done_callback(self.totals.ack_failed)
        return future

    async def connect(self, host: str, port: int, version: int, keepalive: int) -> None:
        machine = self.machine
        will = Will(machine.topics.status, machine.will())
        session = await Session.open(
            host,
            port,
            machine.topics.device_id,
            self.on_message,
            version=version,
            keepalive=keepalive,
            will=will,
        )
        self.session = session
        # Subscribe first: a backend that acts on "online" must find the machine listening.
        await session.subscribe(machine.topics.commands, qos=1)
        now = time.time()
        machine.start(now)
        acks = [self.publish(machine.status("online", now)), self.publish(machine.state(now))]
        await asyncio.gather(*(a for a in acks if a is not None))


async def _connect_all(links: list[Link], args: argparse.Namespace, totals: Totals) -> None:
    gate = asyncio.Semaphore(args.connects)
    version = V5 if args.mqtt_version == "5" else V311

    async def one(link: Link) -> None:
        async with gate:
            for attempt in range(CONNECT_TRIES):
                try:
                    await link.connect(args.host, args.port, version, args.keepalive)
                except (OSError, MqttLiteError):
                    if link.session is not None:
                        link.session.abort()
                        link.session = None
                    totals.retries += 1
                    await asyncio.sleep(0.1 * 2**attempt)
                    continue
                totals.connected += 1
                return
            totals.failed += 1

    await asyncio.gather(*(one(link) for link in links))


async def _keep(links: list[Link], busy: set[Link], keepalive: int, totals: Totals) -> None:
    """Ping idle sessions, run deadlines, count sessions the broker dropped.

    Every session is looked at each second, so pings spread out as the connects did rather
    than leaving in one burst per keepalive.
    """
    loop = asyncio.get_running_loop()
    last_look = loop.time()
    while True:
        await asyncio.sleep(TICK_S)
        now = time.time()
        for link in list(busy):
            link.tick(now)
        if loop.time() - last_look < LOOK_S:
            continue
        last_look = loop.time()
        for link in links:
            session = link.session
            if session is None:
                continue
            if session.closed.done():
                totals.dropped += 1
                link.session = None
                continue
            with contextlib.suppress(MqttLiteError):
                session.ping_if_idle(last_look, keepalive / 2)


async def _stop(links: list[Link]) -> None:
    """A clean stop, as vmcd's: ``offline`` retained, then DISCONNECT (no will)."""
    now = time.time()
    acks: list[asyncio.Future[None]] = []
    for link in links:
        with contextlib.suppress(MqttLiteError):
            ack = link.publish(link.machine.status("offline", now))
            if ack is not None:
                acks.append(ack)
    if acks:
        await asyncio.wait(acks, timeout=STOP_ACK_S)
    for link in links:
        if link.session is not None:
            link.session.disconnect()


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


def _say(line: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def work(args: argparse.Namespace) -> None:
    totals = Totals()
    busy: set[Link] = set()
    ids = [f"{args.id_prefix}{n:05d}" for n in range(args.first, args.first + args.count)]
    links = [Link(FleetMachine(i, prefix=args.topic_prefix), totals, busy) for i in ids]
    started = time.monotonic()
    await _connect_all(links, args, totals)
    _say(
        {
            "connected": totals.connected,
            "failed": totals.failed,
            "retries": totals.retries,
            "connect_s": round(time.monotonic() - started, 3),
        }
    )
    gc.freeze()  # the sessions live to the end: keep full collections from walking them
    keeper = asyncio.create_task(_keep(links, busy, args.keepalive, totals))
    await _stdin_closed()
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keeper
    await _stop(links)
    totals.vends = sum(link.machine.vends for link in links)
    _say(
        {
            "vends": totals.vends,
            "commands": totals.commands,
            "dropped": totals.dropped,
            "unacked": totals.unacked,
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.fleet_worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--id-prefix", default="fleet-")
    parser.add_argument("--topic-prefix", default="vmc")
    parser.add_argument("--mqtt-version", choices=("5", "3.1.1"), default="5")
    parser.add_argument("--keepalive", type=int, default=30)
    parser.add_argument("--connects", type=int, default=32, help="connects in flight")
    args = parser.parse_args(argv)
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(work(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
