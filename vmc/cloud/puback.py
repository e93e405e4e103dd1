"""QoS 1 publishes written and acknowledged outside paho's bookkeeping, for the outbox drain.

``aiomqtt.Client.publish`` waits for its own PUBACK (a coroutine, an event and a timeout per
message), and even paho's bare ``publish`` keeps per message a record, a lock and a scan of
every message it holds, and decodes each PUBACK into a properties object and two reason
codes: most of the drain's time went there. The drain keeps its own window
(:mod:`vmc.cloud.window`), so :class:`PubackTap` encodes its PUBLISH packets itself, hands
each wake-up's packets to paho's write queue as one buffer (one ``send``, in order with
whatever paho queues), and takes the PUBACKs for its own packet ids out of paho's packet
dispatch before paho would look them up. Every other packet, and every PUBACK for a publish
of paho's own (the status and state), goes on through paho as before.

Packet ids come from paho's own counter, so paho never reuses one the drain has in flight
before 65,535 others. paho caps only its own publishes at ``max_inflight_messages``: the
drain's window and that cap add up to what the broker allows (:func:`on_receive_maximum`).
A session's client is never reused (aiomqtt makes one per connection), so nothing here
survives a reconnect: rows without a PUBACK are sent again by the next session's drain.
This reaches into aiomqtt's paho client (``_client``) and paho's internals (``_packet_queue``,
``_packet_read``, ``_handle_pubackcomp``, ``_in_packet``, ``_mid_generate``); the outbox
drain's integration tests exercise each of them (written against paho-mqtt 2.2).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from vmc.cloud.mqtt_wire import remaining_length

NO_RECEIVE_MAXIMUM = 65535
_PUBLISH_QOS1 = 0x32
"""A PUBLISH packet's first byte at QoS 1, neither DUP nor RETAIN."""
_FIRST_FAILURE = 0x80
"""PUBACK reason codes from here up are refusals (MQTT 5 §3.4.2.1)."""


def publish_packet(topic: bytes, mid: int, payload: bytes, *, v5: bool) -> bytes:
    """One QoS 1 PUBLISH (no properties under MQTT 5), from its UTF-8 topic."""
    head = len(topic).to_bytes(2, "big") + topic + mid.to_bytes(2, "big")
    if v5:
        head += b"\x00"  # property length: none
    return bytes([_PUBLISH_QOS1]) + remaining_length(len(head) + len(payload)) + head + payload


def read_puback(body: bytes | bytearray) -> tuple[int, int]:
    """A PUBACK's packet id and reason code, from what follows its fixed header.

    MQTT 3.1.1 has no reason code, and MQTT 5 leaves it out for success: 0 then.
    """
    if len(body) < 2:
        raise ValueError(f"a PUBACK of {len(body)} bytes has no packet id")
    return (body[0] << 8) | body[1], body[2] if len(body) > 2 else 0


@dataclass(frozen=True, slots=True)
class Puback:
    mid: int
    refused: int | None
    """The PUBACK's reason code if it is a failure (MQTT 5, e.g. 0x87 not authorised)."""


class PubackTap:
    """Installed on one connected client for the life of one drain; :meth:`close` undoes it."""

    def __init__(self, client: aiomqtt.Client) -> None:
        # aiomqtt has no public handle on its paho client.
        self._paho: paho.Client = client._client
        self._v5 = self._paho.protocol == paho.MQTTv5
        self._topics: dict[str, bytes] = {}
        self._batch: list[bytes] = []
        self._ours: set[int] = set()
        """Packet ids of our publishes still awaiting their PUBACK."""
        self._arrived: list[Puback] = []
        self._waiter: asyncio.Future[None] | None = None
        self._paho_puback = self._paho._handle_pubackcomp
        # Instance attributes over paho's methods, both looked up on each call.
        self._paho._handle_pubackcomp = self._on_puback  # type: ignore[method-assign]
        self._paho.loop_read = self._loop_read  # type: ignore[method-assign]

    def close(self) -> None:
        del self._paho._handle_pubackcomp
        del self._paho.loop_read

    def publish(self, topic: str, payload: bytes) -> int:
        """Add one QoS 1 message to this wake-up's batch; its packet id, which its
        :class:`Puback` will carry. Nothing is written before :meth:`flush`."""
        encoded = self._topics.get(topic)
        if encoded is None:
            encoded = self._topics[topic] = topic.encode()
        mid = self._paho._mid_generate()
        self._batch.append(publish_packet(encoded, mid, payload, v5=self._v5))
        self._ours.add(mid)
        return mid

    def flush(self) -> None:
        """Write the batch now, in one piece behind whatever paho has queued.

        paho would otherwise ask aiomqtt for a writer, which aiomqtt adds a loop turn later,
        maybe for a socket that this write found broken and closed. A write the socket
        buffer cannot take whole is finished by that writer, which is then asked for.
        """
        if not self._batch:
            return
        packets = b"".join(self._batch)
        self._batch.clear()
        paho_client = self._paho
        register = paho_client.on_socket_register_write
        paho_client.on_socket_register_write = None
        try:
            # qos 1: paho reports nothing itself for a written packet that is not QoS 0.
            rc = paho_client._packet_queue(_PUBLISH_QOS1, packets, 0, 1)
        finally:
            paho_client.on_socket_register_write = register
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:  # no socket, or this write found it broken
            raise aiomqtt.MqttCodeError(rc, "Could not publish message")
        still_open = paho_client.socket()
        if register is not None and still_open is not None and paho_client.want_write():
            register(paho_client, paho_client.user_data_get(), still_open)
        asyncio.get_running_loop().call_soon(self._settle_writer)

    def _settle_writer(self) -> None:
        """Undo a writer that aiomqtt registers late, for packets :meth:`flush` already wrote.

        aiomqtt adds its writer with ``call_soon_threadsafe`` but removes it at once, so a
        publish just before our write leaves an add behind it: with nothing to write, that
        writer would run on every turn of the loop. This runs after any such add.
        """
        sock = self._paho.socket()
        if sock is not None and not self._paho.want_write():
            asyncio.get_running_loop().remove_writer(sock.fileno())

    async def arrived(self, timeout: float) -> list[Puback]:
        """The PUBACKs since the last call, waiting up to ``timeout`` s for the first one."""
        if not self._arrived:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                raise aiomqtt.MqttError(f"no PUBACK in {timeout} s") from None
            finally:
                self._waiter = None
        arrived, self._arrived = self._arrived, []
        return arrived

    def _on_puback(self, cmd: str) -> MQTTErrorCode:
        """paho's dispatch of a PUBACK or PUBCOMP: ours end here, the rest go on to paho.

        Called on the event loop's thread, from aiomqtt's socket reader.
        """
        body: bytearray = self._paho._in_packet["packet"]
        if cmd == "PUBACK" and len(body) >= 2:  # a shorter one: paho calls it malformed
            mid, reason = read_puback(body)
            if mid in self._ours:
                self._ours.remove(mid)
                self._arrived.append(Puback(mid, reason if reason >= _FIRST_FAILURE else None))
                waiter = self._waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._paho_puback(cmd)  # type: ignore[arg-type]

    def _loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read every packet the socket holds.

        paho's ``loop_read`` reads at most as many packets as it has messages in flight, and
        the drain's are not among them: one PUBACK per turn of the event loop otherwise.
        """
        paho_client = self._paho
        while paho_client.socket() is not None:
            rc = paho_client._packet_read()
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return paho_client._loop_rc_handle(rc)
        return MQTTErrorCode.MQTT_ERR_NO_CONN


def on_receive_maximum(client: aiomqtt.Client, told: Callable[[int], None]) -> None:
    """Call ``told`` with the broker's receive maximum from each CONNACK of ``client``.

    paho reads the CONNACK's Receive Maximum but does not act on it, nor does aiomqtt pass it
    on. MQTT 3.1.1 has none, and an MQTT 5 broker that names none allows 65,535.
    """
    paho_client: paho.Client = client._client
    inner = cast("paho.CallbackOnConnect_v2 | None", paho_client.on_connect)

    def on_connect(
        hooked: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any
    ) -> None:
        told(int(getattr(properties, "ReceiveMaximum", NO_RECEIVE_MAXIMUM)))
        if inner is not None:
            inner(hooked, userdata, flags, reason, properties)

    paho_client.on_connect = on_connect
