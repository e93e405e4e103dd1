"""A TCP proxy in front of Mosquitto that plays an MQTT 3.1.1-only broker.

It reads each client's CONNECT: protocol level 5 gets a CONNACK with reason 0x84 (unsupported
protocol version) and the connection is closed; anything else is relayed to the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib

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
