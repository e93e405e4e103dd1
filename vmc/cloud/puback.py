"""QoS 1 publishes whose PUBACKs the caller collects itself, for the outbox drain.

``aiomqtt.Client.publish`` waits for its own PUBACK: per message a coroutine, an event, a
timeout and a scan of every pending call, which made that bookkeeping most of the drain's
time. The drain keeps its own window (:mod:`vmc.cloud.window`), so it hands each message
straight to the paho client under aiomqtt and takes the PUBACKs from paho's ``on_publish``
callback in batches; the callback passes every PUBACK on to aiomqtt's, which still waits for
the status and state publishes. paho keeps at most ``max_inflight_messages`` on the wire and
queues the rest in order; a broker that allows fewer says so in its CONNACK, which
:func:`on_receive_maximum` reports so the drain can shrink its window. Both reach into
aiomqtt's paho client (``_client``), which aiomqtt 2 does not expose otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

NO_RECEIVE_MAXIMUM = 65535
_CORK: int = getattr(socket, "TCP_CORK", 0)
"""Linux's option (0: none here, and each publish is a segment of its own)."""


def _set_cork(sock: socket.socket | None, on: int) -> None:
    if sock is not None and sock.fileno() != -1:  # -1: paho closed it on a failed write
        with contextlib.suppress(OSError):  # a reset connection: the reader reports it
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, on)


@dataclass(frozen=True, slots=True)
class Puback:
    mid: int
    refused: int | None
    """The PUBACK's reason code if it is a failure (MQTT 5, e.g. 0x87 not authorised)."""


class PubackTap:
    """Installed on one connected client for the life of one drain; :meth:`close` undoes it."""

    def __init__(self, client: aiomqtt.Client) -> None:
        # aiomqtt has no public handle on its paho client nor on PUBACKs without a waiting call.
        self._paho: paho.Client = client._client
        # aiomqtt makes its paho client with the version 2 callback API.
        self._chained = cast("paho.CallbackOnPublish_v2 | None", self._paho.on_publish)
        self._arrived: list[Puback] = []
        self._waiter: asyncio.Future[None] | None = None
        self._paho.on_publish = self._on_publish

    def close(self) -> None:
        self._paho.on_publish = self._chained

    def publish(self, topic: str, payload: bytes) -> int:
        """Hand one QoS 1 message to paho; its packet id, which its :class:`Puback` will carry."""
        info = self._paho.publish(topic, payload, 1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        return info.mid

    @contextlib.contextmanager
    def corked(self) -> Iterator[None]:
        """Publishes inside leave together, in as few TCP segments as they fit.

        With TCP_NODELAY each paho packet would be a segment of its own, and on loopback each
        send also runs the receiver's side: the drain's largest cost. Corked, the sends only
        queue, and the uncork pushes them out at once. paho writes them here, not from the
        event loop's writer, which aiomqtt would add a turn later, maybe for a socket that
        this write found broken and closed.
        """
        paho_client = self._paho
        register = paho_client.on_socket_register_write
        paho_client.on_socket_register_write = None
        sock = paho_client.socket()
        if not _CORK or not isinstance(sock, socket.socket):  # an SSLSocket is one too
            sock = None
        _set_cork(sock, 1)
        try:
            yield
        finally:
            paho_client.on_socket_register_write = register
            paho_client.loop_write()
            _set_cork(sock, 0)
            still_open = paho_client.socket()
            if register is not None and still_open is not None and paho_client.want_write():
                # A full socket buffer: paho counts on a writer it did not ask for above.
                register(paho_client, paho_client.user_data_get(), still_open)
            asyncio.get_running_loop().call_soon(self._settle_writer)

    def _settle_writer(self) -> None:
        """Undo a writer that aiomqtt registers late, for packets :meth:`corked` already wrote.

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

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        # Called on the event loop's thread, from aiomqtt's socket reader.
        self._arrived.append(Puback(mid, reason.value if reason.is_failure else None))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._chained is not None:
            self._chained(client, userdata, mid, reason, properties)


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
