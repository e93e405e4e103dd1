"""The bridge's MQTT side: commands out with their replies, events and presence in.

Two connections. The **events** one has a persistent session (MQTT 3.1.1, clean_session
false, the configured client id), so the broker keeps the events published while the bridge
is away, and acknowledges an event only once it is committed, so none is lost between the
broker and the store. It takes every machine's events, or (``events = "shared"``) this
instance's share of them through an MQTT shared subscription, connecting only while it holds
the lease on its session (:mod:`bridge.adopt`). The **commands** one (``{client_id}-cmd``, a
clean session) sends the commands and takes their replies and the machines' retained status
and state: the broker holds back messages while a client has its in-flight window (20 by
default) unacknowledged, so on one connection the replies waited behind the events' commits
(measured: locks went unanswered with 100 machines). A command is resent with the same id
until its reply comes or its time is up: the device answers a repeated id with its first
reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiomqtt
import cbor2
import structlog

from bridge.config import BridgeConfig, EventsMode
from vmc.cloud import codec, signing
from vmc.cloud import messages as m
from vmc.cloud.topics import Topics

log = structlog.get_logger("bridge.link")

RESEND_AFTER = 2.0
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 10.0
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

MAX_BATCH = 256
"""Events handed over at most at once (the broker's in-flight window is smaller by default)."""

EventsHandler = Callable[[Sequence[tuple[str, bytes]]], Awaitable[None]]
"""Takes (machine, payload) pairs in arrival order; returns once they are committed."""
PresenceHandler = Callable[[str, str, object], None]
Session = Callable[[], Awaitable[None]]


def new_command_id() -> str:
    return uuid.uuid4().hex


def events_filter(config: BridgeConfig, mode: EventsMode) -> str:
    """The events' subscription in ``mode``: every machine's events, or this instance's share
    of them in the group (an MQTT shared subscription, which the broker deals round-robin)."""
    every = f"{config.topic_prefix}/+/events"
    return every if mode is EventsMode.ALL else f"$share/{config.share_group}/{every}"


def mqtt_client(config: BridgeConfig, identifier: str, *, persistent: bool) -> aiomqtt.Client:
    """A connection to the broker; a ``persistent`` one keeps its session (and acknowledges
    nothing by itself: its owner acks each event once it is committed)."""
    client = aiomqtt.Client(
        config.mqtt_host,
        config.mqtt_port,
        identifier=identifier,
        username=config.mqtt_username,
        password=config.mqtt_password,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=not persistent,
        socket_options=[NO_DELAY],
    )
    if persistent:
        # Set before connecting, as the session's queued events may come at once. aiomqtt
        # does not offer it; paho's own switch is on its client.
        client._client.manual_ack_set(True)
    return client


class Link:
    def __init__(
        self, config: BridgeConfig, on_events: EventsHandler, on_presence: PresenceHandler
    ) -> None:
        self.config = config
        self.on_events = on_events
        self.on_presence = on_presence
        self._client: aiomqtt.Client | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._up: set[str] = set()
        self.connected = asyncio.Event()
        """Set while both connections are up."""
        self.closing = False
        """The bridge is stopping: each connection's loop ends at its next turn, even where a
        TaskGroup dropped the cancellation that was to end it (Python 3.11)."""
        self.gate: Session | None = None
        """Awaited before each events connection (shared mode: until this instance holds
        the lease on its own session, :mod:`bridge.adopt`)."""

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._keep("events", self._events_session))
            group.create_task(self._keep("commands", self._commands_session))

    async def _keep(self, name: str, session: Session) -> None:
        """Keep one connection, reconnecting with a short backoff. An event whose handling
        failed (the store could not commit) is not acknowledged: the broker sends it again
        after the reconnect."""
        backoff = FIRST_BACKOFF
        while True:
            started = time.monotonic()
            try:
                await session()
            except* aiomqtt.MqttError as lost:
                error = str(lost.exceptions[0])
                log.warning("mqtt_disconnected", link=name, error=error, retry_in=backoff)
            except* Exception:
                log.exception("mqtt_handling_failed", link=name, retry_in=backoff)
            self._down(name)
            if self.closing:  # as vmcd's cloud link (CloudSync.run): a lost cancellation
                return
            if time.monotonic() - started > MAX_BACKOFF:
                backoff = FIRST_BACKOFF  # it had been up a while: not a failing broker
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _is_up(self, name: str) -> None:
        self._up.add(name)
        if len(self._up) == 2:
            self.connected.set()
        log.info("mqtt_connected", link=name, host=self.config.mqtt_host)

    def _down(self, name: str) -> None:
        self._up.discard(name)
        self.connected.clear()
        if name == "commands":
            self._client = None

    async def _events_session(self) -> None:
        if self.gate is not None:
            await self.gate()
        # PUBACK only once an event is committed: a bridge killed before that gets it again
        # from the broker.
        client = mqtt_client(self.config, self.config.client_id, persistent=True)
        paho = client._client
        mode = self.config.events
        other = EventsMode.ALL if mode is EventsMode.SHARED else EventsMode.SHARED
        async with client:
            # The session keeps its subscriptions: drop the other mode's, if it ran in it.
            await client.unsubscribe(events_filter(self.config, other))
            await client.subscribe(events_filter(self.config, mode), qos=1)
            self._is_up("events")
            messages = client.messages
            async for message in messages:
                # With it, every event already received: one commit for them all.
                batch = [message]
                while len(messages) and len(batch) < MAX_BATCH:
                    batch.append(await anext(messages))
                await self.on_events(
                    [
                        (str(m.topic).split("/")[1], bytes(m.payload))
                        for m in batch
                        if isinstance(m.payload, bytes | bytearray)
                    ]
                )
                for m in batch:
                    paho.ack(m.mid, m.qos)

    async def _commands_session(self) -> None:
        commands = mqtt_client(self.config, f"{self.config.client_id}-cmd", persistent=False)
        async with commands as client:
            for leaf in ("reply", "status", "state"):
                await client.subscribe(f"{self.config.topic_prefix}/+/{leaf}", qos=1)
            self._client = client
            self._is_up("commands")
            async for message in client.messages:
                self._dispatch(str(message.topic).split("/"), message.payload)

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
        if self.config.command_key is not None:
            payload = signing.sign_payload(payload, self.config.command_key)
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
