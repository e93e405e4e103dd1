"""CloudSync's outbox drain against a real Mosquitto: every row once, in order, none early.

Each row's payload is its own outbox seq, so a subscriber can tell what arrived, in what
order and how often. The subscriber keeps a persistent session on a broker with persistence,
so what the broker acknowledged before a restart still reaches it after.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from sim.broker import MosquittoBroker
from tests.waiting import wait_until
from vmc.cloud.drain import OutboxDrain
from vmc.cloud.puback import PubackTap
from vmc.cloud.sync import IN_FLIGHT, OTHER_PUBLISHES, CloudSync, MqttSettings
from vmc.cloud.topics import Topics
from vmc.cloud.window import SendWindow
from vmc.journal import Journal, NewMessage

DEVICE = "m1"
TOPIC = Topics(DEVICE).events
ROWS = 5000


class Subscriber:
    """A backend-like QoS 1 subscriber with a persistent session, reconnecting on its own."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.seqs: list[int] = []
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(aiomqtt.MqttError):
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.broker.port,
                    identifier="drain-test-backend",
                    protocol=aiomqtt.ProtocolVersion.V311,
                    clean_session=False,
                ) as client:
                    await client.subscribe(TOPIC, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        self.seqs.append(int(message.payload))
            await asyncio.sleep(0.1)


def fill(journal: Journal, count: int, after: int = 0) -> list[int]:
    """``count`` outbox rows whose payload is their seq; their seqs (all after ``after``)."""
    for start in range(0, count, 1000):
        batch = [
            NewMessage(uuid.uuid4().hex, TOPIC, lambda seq: str(seq).encode())
            for _ in range(min(1000, count - start))
        ]
        journal.commit([], batch, durable=False)
    return [row.seq for row in journal.pending(count, after)]


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker(persistence=True) as running:
        yield running


@pytest.fixture
def most_in_flight(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The most messages the drain ever had awaiting PUBACK, as a one-item list."""
    most = [0]
    sent = SendWindow.sent

    def counting(window: SendWindow, seq: int, mid: int) -> None:
        sent(window, seq, mid)
        most[0] = max(most[0], window.in_flight)

    monkeypatch.setattr(SendWindow, "sent", counting)
    return most


@contextlib.asynccontextmanager
async def running(*coros: object) -> AsyncIterator[None]:
    tasks = [asyncio.ensure_future(c) for c in coros]  # type: ignore[call-overload]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Rig:
    journal: Journal
    subscriber: Subscriber
    sync: CloudSync


@contextlib.asynccontextmanager
async def subscribed(
    tmp_path: Path, broker: MosquittoBroker, mqtt_version: str = "auto"
) -> AsyncIterator[Rig]:
    """A journal, its CloudSync (not started) and a subscriber already listening."""
    journal = Journal(tmp_path / "journal.sqlite3")
    settings = MqttSettings(url=broker.url, device_id=DEVICE, mqtt_version=mqtt_version)
    sync = CloudSync(settings, journal, lambda _payload: None, lambda: {"test": True})
    journal.on_commit.append(sync.committed)  # as vmcd wires it
    rig = Rig(journal, Subscriber(broker), sync)
    async with running(rig.subscriber.run()):
        await asyncio.wait_for(rig.subscriber.subscribed.wait(), 10)
        yield rig


async def test_a_full_outbox_arrives_whole_in_order_once_and_empties(
    tmp_path: Path, broker: MosquittoBroker, most_in_flight: list[int]
) -> None:
    async with subscribed(tmp_path, broker) as rig:
        seqs = fill(rig.journal, ROWS)
        async with running(rig.sync.run()):
            assert await wait_until(lambda: len(rig.subscriber.seqs) >= ROWS)
            assert await wait_until(lambda: rig.journal.outbox_size() == 0)
            assert rig.sync.delivered == ROWS
    assert rig.subscriber.seqs == seqs
    # The broker's receive maximum, all of it used but the room for the status and state.
    assert most_in_flight == [broker.receive_maximum - OTHER_PUBLISHES]


async def test_rows_committed_while_draining_follow_in_order(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    seqs: list[int] = []
    async with subscribed(tmp_path, broker) as rig, running(rig.sync.run()):
        await asyncio.wait_for(rig.sync.connected.wait(), 10)
        for _ in range(50):  # a trickle, as a vending machine makes: one wake-up each
            seqs += fill(rig.journal, 7, seqs[-1] if seqs else 0)
            rig.sync.wake()
            await asyncio.sleep(0.002)
        assert await wait_until(lambda: len(rig.subscriber.seqs) >= len(seqs))
        assert await wait_until(lambda: rig.journal.outbox_size() == 0)
    assert rig.subscriber.seqs == seqs


def reads_of_the_outbox(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The seqs of every row the drain read back from the outbox, as it reads them."""
    read: list[int] = []
    fill = OutboxDrain.fill

    def recording(drain: OutboxDrain) -> None:
        before = len(drain.queued)
        fill(drain)
        read.extend(row.seq for row in list(drain.queued)[before:])

    monkeypatch.setattr(OutboxDrain, "fill", recording)
    return read


async def test_a_commit_s_rows_go_out_from_its_wake_up_without_reading_them_back(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A vend's txn.request: committed, then the wake-up publishes it from the same loop turn,
    # while the drain waits (for new rows, or for PUBACKs of rows sent before).
    seqs: list[int] = []
    async with subscribed(tmp_path, broker) as rig, running(rig.sync.run()):
        read = reads_of_the_outbox(monkeypatch)
        await asyncio.wait_for(rig.sync.connected.wait(), 10)
        assert await wait_until(lambda: rig.sync._parked is not None)
        for i in range(60):
            seqs += fill(rig.journal, 1 + i % 3, seqs[-1] if seqs else 0)
            rig.sync.wake()
            await asyncio.sleep(0.004 if i % 2 else 0)
        assert await wait_until(lambda: len(rig.subscriber.seqs) >= len(seqs))
        assert await wait_until(lambda: rig.journal.outbox_size() == 0)
    assert rig.subscriber.seqs == seqs
    assert not set(read) & set(seqs)


async def test_rows_behind_one_the_drain_has_not_read_wait_their_turn(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A row committed without telling the drain (another writer) sits between the drain's last
    # row and the new ones: those are not sent ahead of it.
    async with subscribed(tmp_path, broker) as rig, running(rig.sync.run()):
        journal = rig.journal
        read = reads_of_the_outbox(monkeypatch)
        await asyncio.wait_for(rig.sync.connected.wait(), 10)
        first = fill(journal, 1)
        rig.sync.wake()
        assert await wait_until(lambda: rig.subscriber.seqs == first)
        observers = list(journal.on_commit)
        journal.on_commit.clear()
        unseen = fill(journal, 1, first[-1])
        journal.on_commit.extend(observers)
        told = fill(journal, 2, unseen[-1])
        rig.sync.wake()
        assert await wait_until(lambda: len(rig.subscriber.seqs) >= 4)
        assert await wait_until(lambda: journal.outbox_size() == 0)
    assert rig.subscriber.seqs == first + unseen + told
    assert set(unseen + told) <= set(read)


async def test_a_broker_restart_mid_drain_loses_nothing_and_resends_only_unacknowledged(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[int] = []  # what the device handed to the broker, in order, resends included
    publish = PubackTap.publish

    def recording(tap: PubackTap, topic: str, payload: bytes) -> int:
        sent.append(int(payload))
        return publish(tap, topic, payload)

    monkeypatch.setattr(PubackTap, "publish", recording)
    async with subscribed(tmp_path, broker) as rig:
        journal, sync = rig.journal, rig.sync
        seqs = fill(journal, ROWS)
        async with running(sync.run()):
            assert await wait_until(lambda: sync.delivered >= ROWS // 10, interval=0.001)
            broker.stop()
            assert await wait_until(lambda: not sync.connected.is_set())
            # The session is over: what is left was never acknowledged, all of it, in order.
            unacked = [row.seq for row in journal.pending(ROWS)]
            assert unacked == seqs[len(seqs) - len(unacked) :]
            assert 0 < len(unacked) < ROWS
            broker.start()
            assert await wait_until(lambda: journal.outbox_size() == 0, timeout=60)
            assert await wait_until(lambda: len(set(rig.subscriber.seqs)) >= ROWS)
    # The first session sent a prefix in order; the second exactly what was left, in order:
    # only rows without a PUBACK went twice.
    second = len(sent) - len(unacked)
    assert sent[:second] == seqs[:second]
    assert sent[second:] == unacked
    assert {seq for seq, times in Counter(sent).items() if times > 1} <= set(unacked)
    # The backend got everything, first copies in order (the broker itself may redeliver what
    # it had sent the subscriber but not yet seen acknowledged when it stopped).
    assert list(dict.fromkeys(rig.subscriber.seqs)) == seqs


async def test_a_broker_with_a_smaller_receive_maximum_never_gets_more_in_flight(
    tmp_path: Path, most_in_flight: list[int]
) -> None:
    with MosquittoBroker(receive_maximum=5) as small:
        async with subscribed(tmp_path, small) as rig:
            seqs = fill(rig.journal, 500)
            async with running(rig.sync.run()):
                assert await wait_until(lambda: rig.journal.outbox_size() == 0)
                assert await wait_until(lambda: len(rig.subscriber.seqs) >= len(seqs))
    assert rig.subscriber.seqs == seqs
    assert most_in_flight == [5 - OTHER_PUBLISHES]  # room left for the status and state publishes


@pytest.mark.parametrize(
    ("receive_maximum", "mqtt_version"),
    [(IN_FLIGHT + 50, "5"), (0, "5"), (20, "3.1.1")],
    ids=["more-than-ours", "none-in-connack", "mqtt-3.1.1"],
)
async def test_a_broker_allowing_more_gets_our_own_most_in_flight(
    tmp_path: Path, most_in_flight: list[int], receive_maximum: int, mqtt_version: str
) -> None:
    # Mosquitto's max_inflight_messages 0 leaves Receive Maximum out of its CONNACK, and MQTT
    # 3.1.1 has none: the client's own limit applies.
    with MosquittoBroker(receive_maximum=receive_maximum) as wide:
        async with subscribed(tmp_path, wide, mqtt_version) as rig:
            seqs = fill(rig.journal, 2000)
            async with running(rig.sync.run()):
                assert await wait_until(lambda: rig.journal.outbox_size() == 0)
                assert await wait_until(lambda: len(rig.subscriber.seqs) >= len(seqs))
    assert rig.subscriber.seqs == seqs
    assert most_in_flight == [IN_FLIGHT - OTHER_PUBLISHES]
