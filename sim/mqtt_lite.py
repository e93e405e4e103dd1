"""A minimal MQTT client for the fleet: thousands of sessions on one event loop.

Why not aiomqtt per machine: each aiomqtt client is a paho client plus its own reader task,
misc-loop task and futures; at thousands per process that costs more memory and CPU than the
broker does (docs/scaling.md has the measurement). The fleet needs only CONNECT with a will,
SUBSCRIBE, PUBLISH at QoS 0/1, PUBACK, PINGREQ and DISCONNECT, in MQTT 5 or 3.1.1, so this
module is a sans-I/O codec for that subset (:func:`connect`, :func:`publish`, ...,
:class:`Decoder`) and one :class:`asyncio.Protocol` per session that feeds it. No task per
session: keepalive pings come from one timer per worker (:meth:`Session.ping_if_idle`).

It is a test client: no QoS 2, no session resumption, no re-sending after a reconnect. vmcd
itself keeps using aiomqtt (:mod:`vmc.cloud.sync`).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from protocols.errors import VmcError
from vmc.cloud.mqtt_wire import remaining_length

V311 = 4
V5 = 5
MAX_PACKET_ID = 0xFFFF


class MqttLiteError(VmcError):
    """The broker refused the session or sent what this client cannot read."""


class Packet(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    SUBSCRIBE = 8
    SUBACK = 9
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class Frame:
    """One packet as read: its type, the fixed header's flags and the rest."""

    kind: int
    flags: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    retain: bool


# --- encoding -------------------------------------------------------------------------------


def _text(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: Packet, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + remaining_length(len(body)) + body


def connect(
    client_id: str,
    *,
    version: int,
    keepalive: int,
    will: Will | None = None,
    clean: bool = True,
) -> bytes:
    flags = 0x02 if clean else 0
    payload = _text(client_id)
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        payload += (b"\x00" if version == V5 else b"") + _text(will.topic)
        payload += struct.pack("!H", len(will.payload)) + will.payload
    head = _text("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == V5:
        head += b"\x00"  # no properties
    return _packet(Packet.CONNECT, 0, head + payload)


def subscribe(packet_id: int, topic: str, qos: int, *, version: int) -> bytes:
    props = b"\x00" if version == V5 else b""
    return _packet(
        Packet.SUBSCRIBE, 0x02, struct.pack("!H", packet_id) + props + _text(topic) + bytes([qos])
    )


def publish(
    topic: str, payload: bytes, *, qos: int, packet_id: int | None, retain: bool, version: int
) -> bytes:
    head = _text(topic)
    if qos:
        assert packet_id is not None
        head += struct.pack("!H", packet_id)
    if version == V5:
        head += b"\x00"
    return _packet(Packet.PUBLISH, qos << 1 | int(retain), head + payload)


def puback(packet_id: int) -> bytes:
    return _packet(Packet.PUBACK, 0, struct.pack("!H", packet_id))


PINGREQ = _packet(Packet.PINGREQ, 0, b"")
DISCONNECT = _packet(Packet.DISCONNECT, 0, b"")


# --- decoding -------------------------------------------------------------------------------


class Decoder:
    """Bytes in, whole frames out; a frame split across reads waits for its rest."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        buf = self._buf
        buf += data
        while len(buf) >= 2:
            length = shift = 0
            pos = 1
            while True:
                if pos >= len(buf):
                    return
                byte = buf[pos]
                length |= (byte & 0x7F) << shift
                pos += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MqttLiteError("bad remaining length")
            end = pos + length
            if len(buf) < end:
                return
            first = buf[0]
            frame = Frame(first >> 4, first & 0x0F, bytes(buf[pos:end]))
            del buf[:end]
            yield frame


def _skip_properties(body: bytes, pos: int) -> int:
    length = shift = 0
    while True:
        byte = body[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return pos + length
        shift += 7


def read_publish(frame: Frame, version: int) -> Message:
    body = frame.body
    (size,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + size].decode()
    pos = 2 + size
    qos = frame.flags >> 1 & 0x03
    packet_id = None
    if qos:
        (packet_id,) = struct.unpack_from("!H", body, pos)
        pos += 2
    if version == V5:
        pos = _skip_properties(body, pos)
    return Message(topic, body[pos:], qos, packet_id, bool(frame.flags & 0x01))


def packet_id_of(frame: Frame) -> int:
    """The packet id that opens a PUBACK's or SUBACK's body."""
    (packet_id,) = struct.unpack_from("!H", frame.body)
    return int(packet_id)


def connack_code(frame: Frame) -> int:
    """The CONNACK's return (3.1.1) or reason (5) code: 0 is accepted."""
    return frame.body[1] if len(frame.body) > 1 else 0xFF


# --- one session ----------------------------------------------------------------------------


class Session(asyncio.Protocol):
    """One MQTT session on one socket; ``on_message`` gets every PUBLISH to it.

    :meth:`open` connects and waits for the CONNACK. QoS 1 publishes return a future done at
    their PUBACK; a lost connection fails them all and sets :attr:`closed`.
    """

    def __init__(self, version: int, on_message: Callable[[Message], None]) -> None:
        self.version = version
        self.on_message = on_message
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.Transport | None = None
        self._decoder = Decoder()
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._next_id = 0
        self.last_sent = 0.0

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        client_id: str,
        on_message: Callable[[Message], None],
        *,
        version: int = V5,
        keepalive: int = 30,
        will: Will | None = None,
    ) -> Session:
        loop = asyncio.get_running_loop()
        _, session = await loop.create_connection(lambda: cls(version, on_message), host, port)
        session.send(connect(client_id, version=version, keepalive=keepalive, will=will))
        code = await session._connack
        if code != 0:
            session.abort()
            raise MqttLiteError(f"{client_id}: CONNACK code {code:#x}")
        return session

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            for frame in self._decoder.feed(data):
                self._on_frame(frame)
        except (MqttLiteError, IndexError, struct.error, UnicodeDecodeError) as exc:
            self._fail(MqttLiteError(f"unreadable packet: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(MqttLiteError(f"connection lost: {exc}" if exc else "connection closed"))

    def _on_frame(self, frame: Frame) -> None:
        kind = frame.kind
        if kind == Packet.PUBLISH:
            message = read_publish(frame, self.version)
            if message.qos == 1 and message.packet_id is not None:
                self.send(puback(message.packet_id))
            self.on_message(message)
        elif kind in (Packet.PUBACK, Packet.SUBACK):
            future = self._acks.pop(packet_id_of(frame), None)
            if future is not None and not future.done():
                future.set_result(None)
        elif kind == Packet.CONNACK and not self._connack.done():
            self._connack.set_result(connack_code(frame))

    def _fail(self, exc: MqttLiteError) -> None:
        if not self._connack.done():
            self._connack.set_exception(exc)
        for future in self._acks.values():
            if not future.done():
                future.set_exception(exc)
        self._acks.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    # sending

    def send(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise MqttLiteError("not connected")
        self._transport.write(data)
        self.last_sent = asyncio.get_running_loop().time()

    def _new_ack(self) -> tuple[int, asyncio.Future[None]]:
        for _ in range(MAX_PACKET_ID):
            self._next_id = self._next_id % MAX_PACKET_ID + 1
            if self._next_id not in self._acks:
                break
        else:
            raise MqttLiteError("no free packet id")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[self._next_id] = future
        return self._next_id, future

    def subscribe(self, topic: str, qos: int = 1) -> asyncio.Future[None]:
        packet_id, future = self._new_ack()
        self.send(subscribe(packet_id, topic, qos, version=self.version))
        return future

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> asyncio.Future[None]:
        """Send at QoS 1 (all the contract uses); the future is done at the PUBACK."""
        packet_id, future = self._new_ack()
        self.send(
            publish(topic, payload, qos=1, packet_id=packet_id, retain=retain, version=self.version)
        )
        return future

    def ping_if_idle(self, now: float, idle_s: float) -> None:
        """Keep the session alive: a PINGREQ when nothing was sent for ``idle_s``."""
        if now - self.last_sent >= idle_s and not self.closed.done():
            self.send(PINGREQ)

    def disconnect(self) -> None:
        """A clean DISCONNECT: the broker drops the will."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(DISCONNECT)
            self._transport.close()

    def abort(self) -> None:
        """Drop the socket without DISCONNECT: the broker publishes the will."""
        if self._transport is not None:
            self._transport.abort()
