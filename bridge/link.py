"""The bridge's MQTT side: commands out with their replies, events and presence in.

A persistent session (MQTT 3.1.1, clean_session false, a fixed client id) so the broker
keeps the events published while the bridge is away. A message is acknowledged
once handled (an event once committed), so none is lost between the broker and the store. A
command is resent with the same id until its reply comes or its time is up: the device answers
a repeated id with its first reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import cbor2
import structlog

from bridge.config import BridgeConfig
from vmc.cloud import codec
from vmc.cloud import messages as m
from vmc.cloud.topics import Topics

log = structlog.get_logger("bridge.link")

RESEND_AFTER = 2.0
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 10.0
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

EventHandler = Callable[[str, bytes], Awaitable[None]]
PresenceHandler = Callable[[str, str, object], None]


def new_command_id() -> str:
    return uuid.uuid4().hex


class Link:
    def __init__(
        self, config: BridgeConfig, on_event: EventHandler, on_presence: PresenceHandler
    ) -> None:
        self.config = config
        self.on_event = on_event
        self.on_presence = on_presence
        self._client: aiomqtt.Client | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.connected = asyncio.Event()
        self._backoff = FIRST_BACKOFF

    async def run(self) -> None:
        """Stay connected, reconnecting with a short backoff. A message whose handling failed
        (the store could not commit) is not acknowledged: the broker sends it again after the
        reconnect."""
        while True:
            try:
                await self._session()
            except* aiomqtt.MqttError as lost:
                error = str(lost.exceptions[0])
                log.warning("mqtt_disconnected", error=error, retry_in=self._backoff)
            except* Exception:
                log.exception("mqtt_handling_failed", retry_in=self._backoff)
            self.connected.clear()
            self._client = None
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    async def _session(self) -> None:
        client = aiomqtt.Client(
            self.config.mqtt_host,
            self.config.mqtt_port,
            identifier=self.config.client_id,
            username=self.config.mqtt_username,
            password=self.config.mqtt_password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            socket_options=[NO_DELAY],
        )
        # PUBACK only once a message is handled (an event committed to the store): a bridge
        # killed before that gets the event again from the broker. Set before connecting, as
        # the persistent session's queued messages may come at once. aiomqtt does not offer
        # it; paho's own switch is on its client.
        paho = client._client
        paho.manual_ack_set(True)
        async with client:
            prefix = self.config.topic_prefix
            for leaf in ("events", "reply", "status", "state"):
                await client.subscribe(f"{prefix}/+/{leaf}", qos=1)
            self._client = client
            self._backoff = FIRST_BACKOFF
            self.connected.set()
            log.info("mqtt_connected", host=self.config.mqtt_host, port=self.config.mqtt_port)
            events: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()
            # Events are handled in arrival order by one task, each acknowledged once it is
            # committed; replies and presence at once, so a lock's reply never waits behind
            # the events' commits.
            async with asyncio.TaskGroup() as group:
                group.create_task(self._events(events, paho))
                async for message in client.messages:
                    parts = str(message.topic).split("/")
                    if len(parts) == 3 and parts[2] == "events":
                        events.put_nowait(message)
                        continue
                    self._dispatch(parts, message.payload)
                    paho.ack(message.mid, message.qos)

    async def _events(self, queue: asyncio.Queue[aiomqtt.Message], paho: Any) -> None:
        while True:
            message = await queue.get()
            machine = str(message.topic).split("/")[1]
            if isinstance(message.payload, bytes | bytearray):
                await self.on_event(machine, bytes(message.payload))
            paho.ack(message.mid, message.qos)

    def _dispatch(self, parts: list[str], payload: Any) -> None:
        if len(parts) != 3 or not isinstance(payload, bytes | bytearray):
            return
        _, machine, leaf = parts
        try:
            body = cbor2.loads(payload)
        except Exception:  # what cannot be read is dropped
            return
        if leaf == "reply" and isinstance(body, dict):
            waiter = self._waiting.get(str(body.get("id")))
            if waiter is not None and not waiter.done():
                waiter.set_result(body)
        elif leaf in ("status", "state"):
            self.on_presence(machine, leaf, body)

    async def command(
        self,
        machine: str,
        op: m.Op,
        fields: dict[str, Any],
        *,
        command_id: str,
        expires: float | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any] | None:
        """Send a command and wait for its reply (None: no reply in time, or no broker)."""
        wait = self.config.reply_timeout if timeout is None else timeout
        body = {
            "id": command_id,
            "op": op.value,
            "expires": time.time() + wait + 1.0 if expires is None else expires,
            **{k: v for k, v in fields.items() if v is not None},
        }
        payload = codec.encode_map(body)
        topic = Topics(machine, self.config.topic_prefix).commands
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        deadline = time.monotonic() + wait
        try:
            while (left := deadline - time.monotonic()) > 0:
                client = self._client
                if client is not None:
                    with contextlib.suppress(aiomqtt.MqttError):
                        await client.publish(topic, payload, qos=1)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), min(left, RESEND_AFTER))
            return None
        finally:
            self._waiting.pop(command_id, None)
