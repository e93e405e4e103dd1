"""TCP proxies in front of Mosquitto: an MQTT 3.1.1-only broker, and an impaired link.

``V311OnlyProxy`` reads each client's CONNECT: protocol level 5 gets a CONNACK with reason 0x84
(unsupported protocol version) and the connection is closed; anything else is relayed to the
real broker.

``ImpairedLink`` is the broker link as TCP shows it above a bad network, for kernels without
``tc netem``: what an application sees of a lossy, slow, reordering link is never a lost or
reordered byte (TCP retransmits and reorders below it) but delay. So each chunk read from one
side is delivered to the other later, in order: after the link's latency with jitter, plus a
retransmission stall for each of its segments the link "lost" (head-of-line blocking: the
chunks behind wait too), sometimes split in two parts delivered apart, and chunks that are due
together are written as one (coalescing). Reordering below TCP looks the same as this jitter and
these stalls, so it has no knob of its own. A partition delivers nothing either way, closes
nothing, and lets everything queued through when it heals; with ``reset`` it resets every
connection instead (RST), and connections opened during it hear nothing until it heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass, field

from sim.broker import free_port

MQTT5 = 5
CONNACK_UNSUPPORTED_V5 = bytes((0x20, 0x03, 0x00, 0x84, 0x00))


async def _read_packet(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(1)
    length = 0
    multiplier = 1
    raw_length = b""
    while True:
        byte = await reader.readexactly(1)
        raw_length += byte
        length += (byte[0] & 0x7F) * multiplier
        if not byte[0] & 0x80:
            break
        multiplier *= 128
    return head + raw_length + await reader.readexactly(length)


def _protocol_level(packet: bytes) -> int:
    i = 1
    while packet[i] & 0x80:
        i += 1
    body = packet[i + 1 :]
    name_length = int.from_bytes(body[0:2], "big")
    return body[2 + name_length]


class V311OnlyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.refused_v5 = 0
        self.relayed = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            connect = await _read_packet(reader)
            if _protocol_level(connect) == MQTT5:
                self.refused_v5 += 1
                writer.write(CONNACK_UNSUPPORTED_V5)
                await writer.drain()
                return
            self.relayed += 1
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(connect)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


class LinkProxy:
    """A plain TCP relay to the broker whose link can be cut: :meth:`cut` drops every
    connection through it and refuses new ones until :meth:`restore`. The device behind it is
    offline while the backend, connected to the broker directly, stays online."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    def cut(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()  # a reset, as a pulled cable's router would send
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
            writer.close()


SEGMENT = 1448
"""Bytes of one TCP segment on an Ethernet link (MSS with timestamps)."""


@dataclass(frozen=True)
class Impairment:
    """What the link does to each direction's bytes.

    ``loss``: the chance that a segment is lost, costing one retransmission timeout ``rto_s``
    (Linux's minimum is 200 ms), doubled for each further loss of the same segment.
    ``split``: the chance a chunk is delivered as two parts, the second one jitter later.
    """

    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    rto_s: float = 0.2
    split: float = 0.0


@dataclass
class LinkFigures:
    chunks: int = 0
    bytes: int = 0
    stalls: int = 0
    splits: int = 0
    resets: int = 0
    connections: int = 0
    held_during_partition: int = 0


@dataclass
class _Direction:
    """One direction of one connection: chunks (or None, the other side's EOF) due at a time."""

    writer: asyncio.StreamWriter
    queue: list[tuple[float, bytes | None]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_due: float = 0.0


class ImpairedLink:
    """A TCP relay to ``127.0.0.1:upstream_port`` that impairs the bytes as ``impairment``
    says (seeded by ``seed``), and can be partitioned."""

    def __init__(
        self, upstream_port: int, impairment: Impairment, seed: int, host: str = "127.0.0.1"
    ) -> None:
        self.upstream_port = upstream_port
        self.impairment = impairment
        self.rng = random.Random(seed)
        self.host = host
        self.port = free_port()
        self.figures = LinkFigures()
        self._healed = asyncio.Event()
        self._healed.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def partitioned(self) -> bool:
        return not self._healed.is_set()

    async def __aenter__(self) -> ImpairedLink:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def partition(self, *, reset: bool = False) -> None:
        """From now on no byte crosses; with ``reset``, every open connection is reset."""
        self._healed.clear()
        if reset:
            for writer in list(self._writers):
                _reset(writer)
                self.figures.resets += 1

    def heal(self) -> None:
        self._healed.set()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.figures.connections += 1
        self._writers.add(writer)
        try:
            early = await self._until_healed(reader)
            if early is not None:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
        except (ConnectionError, OSError):
            early = None
        if early is None:
            self._writers.discard(writer)
            writer.close()
            return
        self._writers.add(up_writer)
        try:
            up = _Direction(up_writer)
            if early:
                self._queue(up, early)
            await asyncio.gather(
                self._direction(reader, up), self._direction(up_reader, _Direction(writer))
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _until_healed(self, reader: asyncio.StreamReader) -> bytes | None:
        """A connection opened into a partition reaches the other side only when it heals
        (its SYN is retransmitted until then); what the client sent meanwhile, or None if it
        gave up first (then nothing of it ever arrives)."""
        early = b""
        while self.partitioned:
            healed = asyncio.ensure_future(self._healed.wait())
            reading = asyncio.ensure_future(reader.read(65536))
            await asyncio.wait({healed, reading}, return_when=asyncio.FIRST_COMPLETED)
            healed.cancel()
            if not reading.done():
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
                break
            data = reading.result()
            if not data:
                return None
            early += data
        return early

    async def _direction(self, reader: asyncio.StreamReader, out: _Direction) -> None:
        sending = asyncio.create_task(self._send(out))
        self._tasks.add(sending)
        sending.add_done_callback(self._tasks.discard)
        try:
            while data := await reader.read(65536):
                self._queue(out, data)
        except (ConnectionError, OSError):
            pass
        self._queue(out, None)
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await sending

    def _queue(self, out: _Direction, data: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        imp = self.impairment
        due = loop.time() + imp.delay_s + self.rng.uniform(-imp.jitter_s, imp.jitter_s)
        if data is not None:
            self.figures.chunks += 1
            self.figures.bytes += len(data)
            for _ in range(0, len(data), SEGMENT):
                rto = imp.rto_s
                while self.rng.random() < imp.loss:
                    self.figures.stalls += 1
                    due += rto
                    rto *= 2
        due = max(due, out.last_due)  # TCP delivers in order: a late chunk holds the rest
        if data is not None and len(data) > 1 and self.rng.random() < imp.split:
            self.figures.splits += 1
            cut = self.rng.randrange(1, len(data))
            out.queue.append((due, data[:cut]))
            data = data[cut:]
            due += self.rng.uniform(0.0, imp.jitter_s)
        out.queue.append((due, data))
        out.last_due = due
        out.wake.set()

    async def _send(self, out: _Direction) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not out.queue:
                out.wake.clear()
                await out.wake.wait()
            await asyncio.sleep(max(0.0, out.queue[0][0] - loop.time()))
            if self.partitioned:
                self.figures.held_during_partition += 1
                await self._healed.wait()
            now = loop.time()
            due = [item for item in out.queue if item[0] <= now] or out.queue[:1]
            del out.queue[: len(due)]
            chunks = [data for _, data in due if data is not None]
            if chunks:
                out.writer.write(b"".join(chunks))  # what is due together goes as one
                await out.writer.drain()
            if len(chunks) < len(due):  # the other side's EOF
                out.writer.close()
                return


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with an RST, as a middlebox that forgot it would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
