"""The one MQTT connection: status with a last will, commands in, the outbox drained out.

Theory of operation. ``run`` keeps a connection up with jittered, growing backoff. On each
connection it publishes the retained ``online`` status (the will says ``lost``), subscribes to
the command topic and drains the journal's outbox in seq order at QoS 1, keeping up to
:data:`IN_FLIGHT` messages awaiting PUBACK, fewer if the broker's Receive Maximum says so
(Mosquitto's default is 20). A row is deleted only after its PUBACK, so a broker outage of
any length loses nothing; what was sent but not acknowledged is sent again after the
reconnect and the backend drops the duplicate by id.
MQTT 5 first; a broker that refuses it gets MQTT 3.1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.reasoncodes import ReasonCode

from protocols.errors import ConfigError
from vmc.cloud import codec
from vmc.cloud.drain import OutboxDrain
from vmc.cloud.puback import PubackTap, on_receive_maximum
from vmc.cloud.signing import DeviceKey
from vmc.cloud.topics import Topics
from vmc.cloud.window import SendWindow
from vmc.journal import Journal, OutboxRow

log = structlog.get_logger("vmc.cloud")

IN_FLIGHT = 100
"""Publishes awaiting PUBACK at most, if the broker's Receive Maximum allows that many."""
OTHER_PUBLISHES = 1
"""paho's own publishes awaiting PUBACK at most (the status and state, one at a time; paho
holds the next back). The drain's count apart: its window is the rest."""
FETCH_ROWS = 5 * IN_FLIGHT
DELETE_EVERY = 10 * IN_FLIGHT
"""Acknowledged rows deleted together while a backlog drains. Each row's delete also touches
a random page of the outbox's unique id index: with 40,000 rows waiting, batches of 200 cost
8 us of CPU and 3.6 KB of WAL a row on the development machine, batches of 1,000 5 us and
1.9 KB. A crash resends what was not deleted yet; the backend drops duplicates by id."""
DELETE_IDLE_S = 0.05
"""Once all is acknowledged, the rows are deleted after this long without new ones: a vend's
next step (its ``paid``, its result) comes within it, and a delete's commit, one per PUBACK
before, no longer runs between them."""
ACK_TIMEOUT_S = 10.0
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
STATE_MIN_INTERVAL_S = 0.2
STATE_SETTLE_S = 0.05
"""A change's snapshot is taken this long after it: a remote vend's request and its approval,
milliseconds apart, go out in one, and building and publishing it does not compete with
them for the CPU, the broker and the backend."""
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 60.0
IDLE_WAKE_S = 1.0
# CONNACK codes that mean "this broker does not speak MQTT 5" (v5 reason 0x84, v3 rc 1).
_UNSUPPORTED_PROTOCOL = {0x84, 1}


@dataclass(frozen=True, slots=True)
class MqttSettings:
    url: str
    device_id: str
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = 30
    topic_prefix: str = "vmc"
    device_key_file: str | None = None
    mqtt_version: str = "auto"
    """``auto`` (5, then 3.1.1 if refused), ``5`` or ``3.1.1``: a broker that neither speaks 5
    nor refuses it (RabbitMQ before 3.13 sends no CONNACK) needs ``3.1.1``."""

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


def validate_mqtt_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced [ or ]: not echoed, it may hold a password
        raise ConfigError(
            f"cloud.url: not a URL ({exc}); it must look like mqtt://HOST:PORT or mqtts://HOST:PORT"
        ) from exc
    shown = _without_password(url, parts.password)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(
            f"cloud.url: {shown!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT"
        )
    try:
        _ = parts.port
    except ValueError as exc:
        raise ConfigError(f"cloud.url: {shown!r} has a bad port") from exc


def _without_password(url: str, password: str | None) -> str:
    """The URL as an error may print it: a password typed into it never reaches a log."""
    return url if not password else url.replace(f":{password}@", ":***@", 1)


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """The client context for mqtts://, from the files as they are now.

    Built once at start: a missing, unreadable or non-PEM file is a :class:`ConfigError` that
    names its key and path, never a failed connection retried forever.
    """
    for key, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"cloud.{key}: {path}: {exc.strerror}") from exc
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ConfigError(f"cloud.ca_file: {ca_file}: no PEM certificate in it") from exc
    if cert_file is None:
        return context
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except ssl.SSLError as exc:
        raise ConfigError(f"cloud.cert_file: {cert_file}: no PEM certificate in it") from exc

    def encrypted() -> str:
        raise ConfigError(f"cloud.key_file: {key_file}: encrypted; vmcd needs it unencrypted")

    try:
        context.load_cert_chain(cert_file, key_file, password=encrypted)
    except ssl.SSLError as exc:
        mismatch = exc.reason == "KEY_VALUES_MISMATCH"
        problem = f"not the key of {cert_file}" if mismatch else "no PEM private key in it"
        raise ConfigError(f"cloud.key_file: {key_file}: {problem}") from exc
    return context


class CloudSync:
    def __init__(
        self,
        settings: MqttSettings,
        journal: Journal,
        on_command: Callable[[bytes], None],
        state: Callable[[], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.device_id, settings.topic_prefix)
        self.journal = journal
        self.on_command = on_command
        self.state = state
        self.connected = asyncio.Event()
        self.delivered = 0
        self.since = time.time()
        """When the link last went up or down (POSIX s); vmcd's start before the first try."""
        self.last_error: str | None = None
        self.closing = False
        """vmcd is stopping: :meth:`run` ends at its next turn (see there why)."""
        self._wake = asyncio.Event()
        self._fresh: list[OutboxRow] = []
        """Rows committed since the last :meth:`wake`, in seq order."""
        self._parked: OutboxDrain | None = None
        """The session's drain while it waits (for new rows or PUBACKs), else None."""
        self._state_dirty = asyncio.Event()
        self._protocol = (
            aiomqtt.ProtocolVersion.V311
            if settings.mqtt_version == "3.1.1"
            else aiomqtt.ProtocolVersion.V5
        )
        self._client: aiomqtt.Client | None = None
        self.window = IN_FLIGHT - OTHER_PUBLISHES
        """The drain's window: what the last CONNACK's Receive Maximum leaves it."""
        self._tls = (
            tls_context(settings.ca_file, settings.cert_file, settings.key_file)
            if settings.tls
            else None
        )
        self._signer = (
            None if settings.device_key_file is None else DeviceKey.load(settings.device_key_file)
        )

    def committed(self, rows: Sequence[OutboxRow], _record: object, _at: float) -> None:
        """One of the journal's :attr:`~vmc.journal.Journal.on_commit`: rows that
        :meth:`wake` may publish at once."""
        if len(self._fresh) + len(rows) > IN_FLIGHT:  # more than a window: the drain reads them
            self._fresh.clear()
            return
        self._fresh.extend(rows)

    def wake(self) -> None:
        """New outbox rows were committed: published now if the drain waits and they are
        next in line (a ``txn.request`` goes out from its commit's loop turn), else soon by
        the drain.

        A write that finds the connection broken leaves them in the outbox: the session
        ends, and the next one sends them.
        """
        fresh, self._fresh = self._fresh, []
        drain = self._parked
        if fresh and drain is not None:
            try:
                drain.offer(fresh)
            except aiomqtt.MqttError as exc:
                log.info("mqtt_offer_failed", error=str(exc))
        self._wake.set()

    def state_changed(self) -> None:
        self._state_dirty.set()

    async def run(self) -> None:
        """Keep the session up, reconnecting with backoff, until cancelled or ``closing``.

        ``closing`` (set as vmcd stops) ends the loop at its next turn: when the connection is
        lost as vmcd stops, the session's tasks fail at once and Python 3.11's TaskGroup
        raises their errors and drops the cancellation that was to end this loop ("other
        errors have priority"); taking those errors for a lost connection, the loop went on
        reconnecting for ever after a SIGTERM.
        """
        backoff = BACKOFF_FIRST_S
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except aiomqtt.MqttCodeError as exc:
                code = exc.rc.value if isinstance(exc.rc, ReasonCode) else exc.rc
                if (
                    self.settings.mqtt_version == "auto"
                    and self._protocol is aiomqtt.ProtocolVersion.V5
                    and code in _UNSUPPORTED_PROTOCOL
                ):
                    log.warning("mqtt_v5_refused", fallback="3.1.1")
                    self._protocol = aiomqtt.ProtocolVersion.V311
                    continue
                log.warning("mqtt_disconnected", error=str(exc))
                self.last_error = str(exc)
            except aiomqtt.MqttError as exc:
                log.warning("mqtt_disconnected", error=str(exc))
                self.last_error = str(exc)
            finally:
                if self.connected.is_set():
                    self.since = time.time()
                self.connected.clear()
                self._client = None
            if self.closing:
                return
            if time.monotonic() - started > BACKOFF_MAX_S:
                backoff = BACKOFF_FIRST_S
            delay = backoff * random.uniform(0.5, 1.5)
            log.info("mqtt_reconnect", in_s=round(delay, 2), outbox=self.journal.outbox_size())
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _client_for(self) -> aiomqtt.Client:
        s = self.settings
        will = aiomqtt.Will(
            self.topics.status, codec.encode_map({"state": "lost"}), qos=1, retain=True
        )
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.device_id,  # so a broker ACL can say: pattern readwrite vmc/%c/#
            protocol=self._protocol,
            will=will,
            keepalive=s.keepalive,
            tls_context=self._tls,
            max_inflight_messages=OTHER_PUBLISHES,
            timeout=ACK_TIMEOUT_S,
            # Nagle would hold our small publishes back until the broker's delayed ACK (~40 ms).
            socket_options=[NO_DELAY],
        )
        on_receive_maximum(client, self._told_receive_maximum)
        return client

    def _told_receive_maximum(self, most: int) -> None:
        """Size the drain's window for this broker's CONNACK, before anything is published.

        The window and paho's :data:`OTHER_PUBLISHES` add up to ``most``; a broker that
        allows a single one (Mosquitto's ``max_inflight_messages 1``) may see two.
        """
        self.window = max(1, min(IN_FLIGHT, most) - OTHER_PUBLISHES)

    async def _session(self) -> None:
        async with self._client_for() as client:
            self._client = client
            # Subscribe first: a backend that acts on "online" must find us listening.
            await client.subscribe(self.topics.commands, qos=1)
            await client.publish(self.topics.status, self._status("online"), qos=1, retain=True)
            self.connected.set()
            self.since = time.time()
            log.info("mqtt_connected", broker=self.settings.url, protocol=self._protocol.name)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._drain(client))
                    group.create_task(self._receive(client))
                    group.create_task(self._publish_state(client))
            except BaseExceptionGroup as group:
                # A lost connection fails every task at once: report it as the one MqttError
                # the reconnect loop expects; anything else is a bug and propagates.
                lost, rest = group.split(aiomqtt.MqttError)
                if lost is None or rest is not None:
                    raise
                raise _first_leaf(lost) from group

    def _status(self, state: str) -> bytes:
        return codec.encode_map({"state": state, "at": time.time()})

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Keep the window's outbox rows in flight, the next ones out as PUBACKs come.

        Rows are read :data:`FETCH_ROWS` at a time and sent in seq order; while this waits,
        :meth:`wake` may send the rows just committed itself (:meth:`OutboxDrain.offer`).
        Acknowledged rows are deleted together: every :data:`DELETE_EVERY`, once no new row
        came for :data:`DELETE_IDLE_S` after all was acknowledged, and when the session
        ends. A row is never deleted before its PUBACK, and a reconnect resends from the
        oldest one left.
        """
        tap = PubackTap(client)
        window = SendWindow(self.window)
        sign = self._signer.sign_payload if self._signer is not None else None
        drain = OutboxDrain(self.journal, tap, window, sign, FETCH_ROWS)
        deleted = 0  # the last seq deleted
        try:
            while True:
                drain.fill()
                drain.send_queued()
                self._parked = drain
                try:
                    if not window.in_flight:  # the fetch above found nothing new
                        if not await self._idle(window.acked_through > deleted):
                            deleted = self._forget(deleted, window.acked_through)
                        continue
                    acks = await tap.arrived(ACK_TIMEOUT_S)
                finally:
                    self._parked = None
                for ack in acks:
                    if window.acked(ack.mid) and ack.refused is not None:
                        log.warning("mqtt_publish_refused", reason=ack.refused)
                window.release()
                if window.acked_through - deleted >= DELETE_EVERY:
                    deleted = self._forget(deleted, window.acked_through)
        finally:
            tap.close()
            self._forget(deleted, window.acked_through)

    async def _idle(self, undeleted: bool) -> bool:
        """Wait for new rows: True when they came; False after :data:`DELETE_IDLE_S` if
        acknowledged rows wait to be deleted, else after :data:`IDLE_WAKE_S`."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            # asyncio.timeout: wait_for makes a task and resumes two loop turns later.
            async with asyncio.timeout(DELETE_IDLE_S if undeleted else IDLE_WAKE_S):
                await self._wake.wait()
        return self._wake.is_set()

    def _forget(self, deleted: int, through: int) -> int:
        """Delete the acknowledged rows after ``deleted`` up to ``through``; the new mark."""
        if through > deleted:
            self.delivered += self.journal.delivered_through(through)
        return through

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Hand each command to :attr:`on_command` from paho's read of it, in the loop turn
        its bytes arrive in; end when the connection is lost.

        aiomqtt would queue a message for a task of ours, and its iterator makes a task and a
        wait of its own per message: a few loop turns on an approval's path. paho calls a
        topic's own callback instead of aiomqtt's, and sends the PUBACK after it returns.
        aiomqtt's queue stays empty; iterating it ends (MqttError) when the link goes down.
        A bug in the handler ends the read too, and is raised here as itself.
        """
        paho_client: paho.Client = client._client  # aiomqtt has no public handle on it
        failure: list[Exception] = []

        def command(_client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
            try:
                self.on_command(bytes(message.payload))
            except Exception as exc:
                failure.append(exc)
                raise  # through paho's read: aiomqtt ends the session

        paho_client.message_callback_add(self.topics.commands, command)
        try:
            async for _message in client.messages:
                pass  # none: every command goes to the callback above
        except aiomqtt.MqttError:
            if failure:
                raise failure[0] from None
            raise
        finally:
            paho_client.message_callback_remove(self.topics.commands)

    async def _publish_state(self, client: aiomqtt.Client) -> None:
        while True:
            self._state_dirty.clear()  # before reading the state: a change during the publish
            await client.publish(  # sets it again and is published next round
                self.topics.state, codec.encode_map(self.state()), qos=1, retain=True
            )
            await asyncio.sleep(STATE_MIN_INTERVAL_S)  # coalesce the steps of one vend
            await self._state_dirty.wait()
            await asyncio.sleep(STATE_SETTLE_S)

    async def stop(self) -> None:
        """Say ``offline`` (retained), if connected; cancelling ``run`` then disconnects.

        The daemon bounds the wait with its stop budget and cancels what is left.
        """
        client = self._client
        if client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(self.topics.status, self._status("offline"), qos=1, retain=True)


def _first_leaf(group: BaseExceptionGroup[aiomqtt.MqttError]) -> aiomqtt.MqttError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
