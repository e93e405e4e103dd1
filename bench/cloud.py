#!/usr/bin/env python3
"""Cloud path of vmcd: vend overhead each way, durable journal rate, outbox drain, MDB under load.

A remote vend crosses the device twice. Going out, the VMC's VEND REQUEST goes from the bus
process to the daemon, is journaled (its fsync comes with the approval's commit: a request
moves no money, docs/cloud-api.md 6.4) and published from the outbox as ``txn.request``; coming
back, the backend's ``paid`` is decoded, journaled with fsync and handed to the bus process,
which says VEND APPROVED on the next POLL. The VMC waits for that answer for a few seconds at
most, so the device's part must stay small next to the network.
Meanwhile the bus must keep answering inside its 5 ms window whatever the cloud side does.

Measured, each part with a private Mosquitto (``sim.broker``) on loopback:

- ``journal``: durable commits (WAL, ``synchronous=FULL``) through ``Journal.commit`` with one
  transaction transition and one outbox message each, in a temp dir on this machine's disk.
- ``drain``: a fresh journal's outbox filled with ``--drain`` messages of ~200 bytes, drained by
  ``CloudSync`` (QoS 1, a sliding window of publishes awaiting PUBACK, as many as the broker's
  Receive Maximum allows up to ``IN_FLIGHT``); a subscriber in another process
  (``mosquitto_sub``) counts what arrived. After it, the same payloads from one plain aiomqtt
  publisher with the same window and socket options (``drain_ceiling_per_s``,
  ``drain_vs_ceiling``: the ceiling before vmc wrote its own PUBLISH packets). Both also report
  this process's CPU time per message, steadier than a rate on a shared machine. The drain
  runs twice: on a private broker as Mosquitto ships (``max_inflight_messages`` 20, which is
  also the Receive Maximum its CONNACK gives), the ``outbox_drain_per_s`` of the targets; and
  with ``max_inflight_messages`` at ``--tuned-receive-maximum`` (100), as a deployment that
  wants the outbox to catch up faster would set it, the same keys prefixed ``tuned_``.
- ``broker``: a plain QoS 1 publish -> subscriber time on the machine's broker, the baseline
  for the overheads below (each includes one such hop).
- ``machine``: the real vmcd on a pty pair with ``--mqtt``, the simulated VMC at level 3 with
  always-idle (select first, no lock) and a backend (``sim.backend.SimBackend``) that answers
  ``paid`` as soon as ``txn.request`` arrives. Per transaction: *request overhead* from the
  moment the VMC finished writing VEND REQUEST to the arrival of ``txn.request`` at the
  backend; *approve overhead* from just before the backend publishes ``paid`` to the arrival of
  the POLL answer carrying VEND APPROVED, the VMC polling back to back meanwhile (the mean poll
  interval is the granularity of that number); *result report* from VEND SUCCESS to the
  arrival of ``txn.vend``. Each transaction is in the backend's books before the next starts.
- ``floors``: after each timed transaction, one sample of what each path cannot do without,
  taken in the same minutes as the overheads: *broker hop*, one QoS 1 message from an aiomqtt
  client to another through the broker (publish call to the subscriber's read; the
  ``broker_rtt`` baseline is the same hop before vmcd starts); *disk sync*, one 4 KiB block
  overwritten in place and ``fdatasync``ed in vmcd's state directory (a durable SQLite commit
  into its WAL); *to bus* and *from bus*, one datagram each way on an AF_UNIX SEQPACKET pair
  between two processes pinned to vmcd's CPU, the bus side real-time, as vmcd and its bus
  process talk. The request's floor is from bus + broker hop (the bus process forwards the
  VEND REQUEST, vmcd publishes ``txn.request``); the approval's is broker hop + disk sync + to
  bus (``paid`` arrives, ``approving`` is fsynced, the bus process hears it). Each floor is
  summed per sample, so its p50/p99 are those of the sums; ``*_vs_floor_p50``/``_p99`` divide
  the overhead's percentile by the floor's. Not in either floor: the VMC's poll (the approval
  waits for the next one), decoding, the engine and the journal's own work.
- ``cpu``: vmcd's and its bus process's CPU time over the timed vends, per vend
  (``txn_daemon_cpu_ms_per_vend``, ``txn_bus_cpu_ms_per_vend``), and the bus process's share
  of the phase's wall time (``txn_bus_cpu_share``): on the CPU the two share, what the
  real-time bus process takes for the back-to-back polls is not vmcd's.
- ``mdb``: on the same machine, every exchange's answer latency over at least ``--polls``
  back-to-back polls with a full cloud-approved vend every ``--sessions-every`` polls (a vend
  waits, polling, until the previous one is in the books, as customers are seconds apart).
  Then the bus process's own answer times over the whole run, read to written, from vmcd's
  self-test (``bus_answers``, ``bus_answer_mean_ms``, ``bus_answer_max_ms``): an answer the
  VMC saw late while the bus process wrote it in time was late outside the bus process.

The VMC and the backend share this process and event loop, so each adds at most one poll
exchange to the other's timing. As in ``bench/mdb_latency.py``, vmcd (and its bus process) is
pinned to one CPU and this process and the machine's broker to another, so the measuring side
is not the one delayed. The backend's socket has TCP_NODELAY (``--backend-nagle`` leaves it
as ``SimBackend`` has it): otherwise the backend's own Nagle stall, ~40 ms after it PUBACKs
``txn.request`` and publishes ``paid`` at once, would be charged to the device.

Targets (reported, not asserted): request and approve overhead p99 <= 2 ms each, >= 1,000
durable journal records/s, outbox drain >= 15,000 messages/s, MDB answer p99 <= 0.5 ms with
no answer over 5 ms. ``--only drain`` (or ``journal``, ``machine``) runs just those phases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from mdb_latency import (  # noqa: E402
    CountingVmc,
    choose_cpus,
    cpu_s,
    latency_stats,
    nearest_rank,
    read_daemon_log,
    steal_ms,
)

from drivers.pty import PtyPair  # noqa: E402
from drivers.transport import MdbPort  # noqa: E402
from protocols.errors import VmcError  # noqa: E402
from protocols.mdb import commands as c  # noqa: E402
from protocols.mdb.words import Word  # noqa: E402
from sim.backend import Policy, SimBackend  # noqa: E402
from sim.broker import MosquittoBroker  # noqa: E402
from sim.daemon_proc import DaemonProcess  # noqa: E402
from sim.scenarios import PRICES_MINOR  # noqa: E402
from sim.vmc_master import TimingStats  # noqa: E402
from vmc.cloud import codec  # noqa: E402
from vmc.cloud import messages as m  # noqa: E402
from vmc.cloud.sync import NO_DELAY, CloudSync, MqttSettings  # noqa: E402
from vmc.cloud.topics import Topics  # noqa: E402
from vmc.config import SOCKET_NAME, MdbConfig  # noqa: E402
from vmc.control.client import ControlClient  # noqa: E402
from vmc.journal import Journal, NewMessage  # noqa: E402
from vmc.logs import configure_logging  # noqa: E402
from vmc.transaction import Txn, TxnState  # noqa: E402

DEVICE = "m1"
DRAIN_DEVICE = "drain"
BENCH_PREFIX = "bench"  # the drain and the baseline stay out of the backend's "vmc/+/..." tree
RTT_TOPIC = f"{BENCH_PREFIX}/rtt"
READY_TOPIC = f"{BENCH_PREFIX}/ready"
CEILING_TOPIC = f"{BENCH_PREFIX}/ceiling"
MOSQUITTO_RECEIVE_MAXIMUM = 20
"""Mosquitto's ``max_inflight_messages`` when its config names none: its CONNACK's Receive
Maximum (one global setting; 0 leaves the property out, and MQTT 3.1.1 has none)."""
STARTUP_TIMEOUT_S = 15.0
APPROVAL_WAIT_S = 5.0  # the reader's max response time: a VMC gives up after this
SETTLE_TIMEOUT_S = 10.0
FILL_CHUNK = 1000
PHASES = ("journal", "drain", "machine")
JOURNAL_STATES = (TxnState.REQUESTED, TxnState.APPROVING, TxnState.DISPENSING, TxnState.VENDED)
PAHO_COUNTER = """
import sys
import paho.mqtt.client as mqtt

def on_connect(client, userdata, flags, reason, properties):
    client.subscribe([(topic, 1) for topic in sys.argv[2:]])

def on_message(client, userdata, message):
    sys.stdout.write(message.topic + "\\n")
    sys.stdout.flush()

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.on_connect = on_connect
client.on_message = on_message
client.connect("127.0.0.1", int(sys.argv[1]))
client.loop_forever()
"""
HOP_PROBE = """
import os
import socket
import sys
import time

os.sched_setaffinity(0, {int(sys.argv[1])})
daemon, bus = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
if os.fork() == 0:  # the bus process's side, real-time as vmcd's bus process asks to be
    daemon.close()
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(sys.argv[2])))
    except (OSError, AttributeError):
        pass
    while bus.recv(64):
        arrived = time.perf_counter_ns()
        bus.send(arrived.to_bytes(8, "big") + time.perf_counter_ns().to_bytes(8, "big"))
    sys.exit(0)
bus.close()
for _ in sys.stdin:  # one line asks for one sample: "down up" in ns
    sent = time.perf_counter_ns()
    daemon.send(b"x")
    answer = daemon.recv(64)
    back = time.perf_counter_ns()
    arrived, answered = int.from_bytes(answer[:8], "big"), int.from_bytes(answer[8:], "big")
    print(arrived - sent, back - answered, flush=True)
"""
TARGETS = {
    "request_overhead_p99_ms": ("<=", 2.0),
    "approve_overhead_p99_ms": ("<=", 2.0),
    "journal_records_per_s": (">=", 1000.0),
    "outbox_drain_per_s": (">=", 15000.0),
    "mdb_p99_ms": ("<=", 0.5),
    "mdb_over_5ms": ("<=", 0),
}


# --- small helpers ---------------------------------------------------------------------------


def ms_stats(prefix: str, times_s: Sequence[float]) -> dict[str, Any]:
    """p50/p99/max in ms (nearest rank) of a list of seconds, under ``prefix_``."""
    ordered = sorted(times_s)
    out: dict[str, Any] = {}
    for name, (num, den) in {"p50": (50, 100), "p99": (99, 100)}.items():
        value = nearest_rank(ordered, num, den) if ordered else None
        out[f"{prefix}_{name}_ms"] = None if value is None else round(value * 1000, 3)
    out[f"{prefix}_max_ms"] = round(ordered[-1] * 1000, 3) if ordered else None
    return out


def sample_event(seq: int) -> bytes:
    """A ``txn.request`` as the daemon encodes it: ~200 bytes of CBOR."""
    event = m.TxnRequest(
        uuid.uuid4().hex, None, 12, 150, 978, 2, time.time() + 3.5, m.VendType.PAID
    )
    return codec.encode_event(event, event_id=uuid.uuid4().hex, seq=seq, at=time.time())


def message(topic: str) -> NewMessage:
    return NewMessage(uuid.uuid4().hex, topic, sample_event)


def fsync_ms(directory: Path, count: int = 200) -> float:
    """Median time of one 4 KiB write + fsync in ``directory``: the disk's floor per commit."""
    times: list[float] = []
    fd, name = tempfile.mkstemp(dir=directory)
    try:
        block = b"\0" * 4096
        for _ in range(count):
            os.write(fd, block)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(name)
    return round(nearest_rank(sorted(times), 1, 2) * 1000, 3)


@dataclass(frozen=True)
class Rate:
    per_s: float
    cpu_s_per_msg: float
    """This process's CPU time per message: steadier than the rate on a shared machine."""


@dataclass
class Problems:
    errors: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        self.errors += 1
        if len(self.first) < 8:
            self.first.append(problem)


# --- journal ---------------------------------------------------------------------------------


def bench_journal(records: int, budget_s: float, problems: Problems) -> dict[str, Any]:
    """Durable commits of one transition plus one outbox message each."""
    commit_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="vmc-bench-journal-") as tmp:
        journal = Journal(Path(tmp) / "journal.sqlite3")
        topic = Topics(DEVICE).events
        truncated = False
        try:
            started = time.perf_counter()
            txn: Txn | None = None
            for i in range(records):
                state = JOURNAL_STATES[i % len(JOURNAL_STATES)]
                now = time.time()
                if txn is None or state is JOURNAL_STATES[0]:
                    txn = Txn(uuid.uuid4().hex, state, now, now, selection=12, price=150)
                else:
                    txn = Txn(txn.txn_id, state, txn.created_at, now, selection=12, price=150)
                t0 = time.perf_counter()
                journal.commit([txn], [message(topic)], durable=True)
                commit_s.append(time.perf_counter() - t0)
                if t0 - started > budget_s:
                    truncated = True
                    problems.add(f"journal: time budget of {budget_s} s used after {i + 1}")
                    break
            elapsed = time.perf_counter() - started
            outbox = journal.outbox_size()
        finally:
            journal.close()
        disk_fsync = fsync_ms(Path(tmp))
    if outbox != len(commit_s):
        problems.add(f"journal: {len(commit_s)} commits but {outbox} outbox rows")
    return {
        "journal_records_per_s": round(len(commit_s) / elapsed, 1) if elapsed > 0 else None,
        "journal_records": len(commit_s),
        **ms_stats("journal_commit", commit_s),
        "disk_fsync_p50_ms": disk_fsync,
        "journal_truncated": truncated,
        "journal_s": round(elapsed, 2),
    }


# --- broker baseline -------------------------------------------------------------------------


class BrokerHop:
    """One QoS 1 publish of ~200 bytes from one aiomqtt client to another through the broker,
    timed from the publish call to the subscriber's read: a message's way between vmcd and the
    backend, with the same client library and socket options on both ends."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self._broker = broker
        self._stack = contextlib.AsyncExitStack()
        self._arrivals: dict[int, float] = {}
        self._arrived = asyncio.Event()
        self._pad = sample_event(0)
        self._next = 0
        self._pub: aiomqtt.Client | None = None

    def _client(self, name: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1",
            self._broker.port,
            identifier=f"bench-hop-{name}",
            protocol=aiomqtt.ProtocolVersion.V5,
            socket_options=[NO_DELAY],
        )

    async def __aenter__(self) -> BrokerHop:
        sub = await self._stack.enter_async_context(self._client("sub"))
        self._pub = await self._stack.enter_async_context(self._client("pub"))
        await sub.subscribe(RTT_TOPIC, qos=1)
        listener = asyncio.create_task(self._listen(sub))

        async def stop_listening() -> None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await listener

        self._stack.push_async_callback(stop_listening)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _listen(self, sub: aiomqtt.Client) -> None:
        async for msg in sub.messages:
            now = time.perf_counter()
            if isinstance(msg.payload, bytes | bytearray):
                self._arrivals[int.from_bytes(msg.payload[:4], "big")] = now
                self._arrived.set()

    async def sample(self) -> float:
        """One hop, in seconds."""
        assert self._pub is not None
        i, self._next = self._next, self._next + 1
        self._arrived.clear()
        t0 = time.perf_counter()
        await self._pub.publish(RTT_TOPIC, i.to_bytes(4, "big") + self._pad, qos=1)
        async with asyncio.timeout(2.0):
            while i not in self._arrivals:
                await self._arrived.wait()
                self._arrived.clear()
        return self._arrivals.pop(i) - t0


async def bench_broker_rtt(broker: MosquittoBroker, samples: int) -> dict[str, Any]:
    """Sequential broker hops (:class:`BrokerHop`) before vmcd starts, after a warm-up."""
    async with BrokerHop(broker) as hop:
        for _ in range(20):
            await hop.sample()
        rtt_s = [await hop.sample() for _ in range(samples)]
    return {**ms_stats("broker_rtt", rtt_s), "broker_rtt_samples": len(rtt_s)}


class PipeHop:
    """The hop between vmcd and its bus process: a datagram on an AF_UNIX SEQPACKET pair, as
    vmcd's, between two processes pinned to vmcd's CPU (the bus side real-time, as vmcd asks
    for its bus process); each sample times one hop each way (:data:`HOP_PROBE`)."""

    def __init__(self, cpu: int, priority: int) -> None:
        self._argv = [sys.executable, "-c", HOP_PROBE, str(cpu), str(priority)]
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )

    async def sample(self) -> tuple[float, float]:
        """(vmcd -> bus process, bus process -> vmcd), in seconds."""
        assert self._proc is not None
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(b"\n")
        line = await asyncio.wait_for(stdout.readline(), 2.0)
        down, up = line.split()
        return int(down) / 1e9, int(up) / 1e9

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 2.0)
            if self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()


class DiskSync:
    """One 4 KiB block overwritten in place and ``fdatasync``ed, in the journal's directory:
    what SQLite does to commit a durable transaction into a WAL it has started over (its
    frames overwrite the blocks of the WAL before; Linux's SQLite syncs with fdatasync)."""

    BLOCKS = 16

    def __init__(self, directory: Path) -> None:
        self._fd = os.open(directory / "bench-sync", os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(self._fd, b"\0" * 4096 * self.BLOCKS, 0)
        os.fsync(self._fd)
        self._block = b"\1" * 4096
        self._next = 0

    def sample(self) -> float:
        """One write and sync; the sync's time in seconds."""
        self._next = (self._next + 1) % self.BLOCKS
        os.pwrite(self._fd, self._block, self._next * 4096)
        t0 = time.perf_counter()
        os.fdatasync(self._fd)
        return time.perf_counter() - t0

    def close(self) -> None:
        os.close(self._fd)


@dataclass(frozen=True, slots=True)
class FloorSample:
    """What each path cannot do without, sampled once after a vend (each in seconds)."""

    disk_sync: float
    broker_hop: float
    to_bus: float
    from_bus: float

    @property
    def request(self) -> float:
        return self.from_bus + self.broker_hop

    @property
    def approve(self) -> float:
        return self.broker_hop + self.disk_sync + self.to_bus


@dataclass
class Floors:
    """The probes of every floor: one sample of each after each timed vend."""

    disk: DiskSync
    broker: BrokerHop
    pipe: PipeHop

    async def sample(self) -> FloorSample:
        disk_sync = self.disk.sample()
        to_bus, from_bus = await self.pipe.sample()
        return FloorSample(disk_sync, await self.broker.sample(), to_bus, from_bus)


# --- outbox drain ----------------------------------------------------------------------------


class SubCounter:
    """A subscriber in its own process (``mosquitto_sub``, else paho) printing each topic."""

    def __init__(self, broker: MosquittoBroker, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.count = 0
        self.kind = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 5.0) -> None:
        topics = (self.topic, READY_TOPIC)
        binary = shutil.which("mosquitto_sub")
        if binary is not None:
            self.kind = "mosquitto_sub"
            argv = [binary, "-h", "127.0.0.1", "-p", str(self.broker.port), "-q", "1", "-F", "%t"]
            for topic in topics:
                argv += ["-t", topic]
        else:  # no mosquitto-clients: the same counter in a Python process of its own
            self.kind = "paho"
            argv = [sys.executable, "-c", PAHO_COUNTER, str(self.broker.port), *topics]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        self._task = asyncio.create_task(self._read())
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier="bench-ready") as pub:
            async with asyncio.timeout(timeout):
                while not self._ready.is_set():
                    await pub.publish(READY_TOPIC, b"ready", qos=1)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._ready.wait(), 0.1)

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        wanted = self.topic.encode()
        ready = READY_TOPIC.encode()
        rest = b""
        while chunk := await self.proc.stdout.read(1 << 16):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            self.count += sum(line == wanted for line in lines)
            if ready in lines:
                self._ready.set()

    async def wait_for(self, count: int, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.count < count:
                    await asyncio.sleep(0.005)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            await self.proc.wait()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 2.0)


async def publisher_ceiling(
    broker: MosquittoBroker, payloads: Sequence[bytes], window: int, problems: Problems
) -> Rate:
    """Messages/s of one plain aiomqtt publisher keeping ``window`` QoS 1 publishes in flight
    (the same socket options as vmcd's, a subscriber counting): the drain's ceiling on this
    machine through aiomqtt, without a journal, ordering or acknowledgement bookkeeping."""
    counter = SubCounter(broker, CEILING_TOPIC)
    await counter.start()
    rows = iter(payloads)

    async def keep_publishing(client: aiomqtt.Client) -> None:
        for payload in rows:  # one iterator shared: ``window`` of these make the window
            await client.publish(CEILING_TOPIC, payload, qos=1)

    try:
        async with aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            identifier="bench-ceiling",
            max_inflight_messages=window,
            socket_options=[NO_DELAY],
        ) as client:
            client.pending_calls_threshold = 10 * window
            gc.collect()
            started, cpu_started = time.perf_counter(), time.process_time()
            await asyncio.gather(*(keep_publishing(client) for _ in range(window)))
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
        await counter.wait_for(len(payloads), 5.0)
        if counter.count < len(payloads):
            problems.add(f"ceiling: the subscriber got {counter.count} of {len(payloads)}")
    finally:
        await counter.stop()
    return Rate(len(payloads) / elapsed, cpu / len(payloads))


async def bench_drain(
    broker: MosquittoBroker, count: int, budget_s: float, problems: Problems
) -> dict[str, Any]:
    """Fill a fresh outbox with ``count`` messages, time CloudSync emptying it."""
    tmp = Path(tempfile.mkdtemp(prefix="vmc-bench-drain-"))
    journal = Journal(tmp / "journal.sqlite3")
    settings = MqttSettings(url=broker.url, device_id=DRAIN_DEVICE, topic_prefix=BENCH_PREFIX)
    topic = Topics(DRAIN_DEVICE, BENCH_PREFIX).events
    counter = SubCounter(broker, topic)
    sync_task: asyncio.Task[None] | None = None
    out: dict[str, Any] = {"drain_messages": count}
    try:
        fill_started = time.perf_counter()
        for start in range(0, count, FILL_CHUNK):
            batch = [message(topic) for _ in range(min(FILL_CHUNK, count - start))]
            journal.commit([], batch, durable=False)
        out["drain_fill_s"] = round(time.perf_counter() - fill_started, 2)
        payloads = [row.payload for row in journal.pending(count)]
        out["drain_payload_bytes"] = len(payloads[0]) if payloads else 0
        await counter.start()
        assert broker.pid is not None
        assert counter.proc is not None
        others = (broker.pid, counter.proc.pid)  # their CPU time from /proc, in clock ticks
        sync = CloudSync(settings, journal, lambda _payload: None, lambda: {"bench": True})
        gc.collect()
        started = time.perf_counter()
        sync_task = asyncio.create_task(sync.run())
        await asyncio.wait_for(sync.connected.wait(), 10.0)
        connected, cpu_started = time.perf_counter(), time.process_time()
        others_started = [cpu_s(pid) for pid in others]
        deadline = connected + budget_s
        while sync.delivered < count and time.perf_counter() < deadline:
            if sync_task.done():
                break
            await asyncio.sleep(0.001)
        done, cpu = time.perf_counter(), time.process_time() - cpu_started
        left = journal.outbox_size()
        drained = count - left
        if left:
            problems.add(f"drain: {left} of {count} messages still in the outbox")
        await counter.wait_for(count, 5.0)
        broker_cpu, sub_cpu = (cpu_s(p) - t for p, t in zip(others, others_started, strict=True))
        elapsed = done - connected
        ceiling = await publisher_ceiling(broker, payloads, sync.window, problems)
        out.update(
            outbox_drain_per_s=round(drained / elapsed, 1) if elapsed > 0 else None,
            drain_delivered=counter.count,
            drain_counter=counter.kind,
            drain_acked=sync.delivered,
            drain_left=left,
            drain_s=round(elapsed, 3),
            drain_connect_ms=round((connected - started) * 1000, 1),
            drain_receive_maximum=broker.receive_maximum,
            drain_in_flight=sync.window,
            drain_cpu_us_per_msg=round(cpu / drained * 1e6, 1) if drained else None,
            drain_broker_cpu_us_per_msg=round(broker_cpu / drained * 1e6, 1) if drained else None,
            drain_subscriber_cpu_us_per_msg=round(sub_cpu / drained * 1e6, 1) if drained else None,
            drain_ceiling_per_s=round(ceiling.per_s, 1),
            drain_ceiling_cpu_us_per_msg=round(ceiling.cpu_s_per_msg * 1e6, 1),
            drain_vs_ceiling=round(drained / elapsed / ceiling.per_s, 3) if elapsed else None,
        )
        if counter.count < count:
            problems.add(f"drain: the subscriber got {counter.count} of {count}")
    finally:
        if sync_task is not None:
            sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sync_task
        await counter.stop()
        journal.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- the machine -----------------------------------------------------------------------------


class TimedPort:
    """An MDB port that remembers when its last write was handed to the OS."""

    def __init__(self, port: MdbPort) -> None:
        self._port = port
        self.url = port.url
        self.written_at = 0.0

    def fileno(self) -> int:
        return self._port.fileno()

    def read_available(self) -> bytes:
        return self._port.read_available()

    def write_words(self, words: Sequence[Word]) -> None:
        self._port.write_words(words)
        self.written_at = time.perf_counter()

    def close(self) -> None:
        self._port.close()


class TimingBackend(SimBackend):
    """The sim backend, noting when each ``txn.request`` arrived and each ``paid`` left."""

    def __init__(self, url: str, *, nodelay: bool) -> None:
        super().__init__(url, policy=Policy.POST_BILLING, nodelay=nodelay)
        self.requests: list[tuple[str, float]] = []  # (txn_id, arrival), in arrival order
        self.paid_at: dict[str, float] = {}
        self.results: dict[str, float] = {}  # txn_id -> arrival of its txn.vend
        self._arrival = 0.0

    async def _on_message(self, topic: str, payload: Any) -> None:
        self._arrival = time.perf_counter()
        await super()._on_message(topic, payload)

    def _on_event(self, device: str, body: dict[str, Any]) -> None:
        kind = body.get("type")
        if str(body.get("id")) not in self._seen:
            if kind == "txn.request":
                self.requests.append((str(body["txn_id"]), self._arrival))
            elif kind == "txn.vend":
                self.results[str(body["txn_id"])] = self._arrival
        super()._on_event(device, body)

    async def send(self, device: str, body: dict[str, Any]) -> None:
        if body.get("op") == "paid":
            self.paid_at[str(body["txn_id"])] = time.perf_counter()
        await super().send(device, body)

    def finished(self) -> int:
        return sum(e.result is not None for e in self.books.entries.values())


@dataclass
class VendSamples:
    request_s: list[float] = field(default_factory=list)
    approve_s: list[float] = field(default_factory=list)
    wait_s: float = 0.0  # VEND REQUEST written -> VEND APPROVED seen
    wait_polls: int = 0
    vended: list[tuple[str, float]] = field(default_factory=list)  # (txn_id, VEND SUCCESS)
    sessions: int = 0
    sessions_ok: int = 0
    floors: list[FloorSample] = field(default_factory=list)

    def summary(self, results: dict[str, float]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out.update(ms_stats("request_overhead", self.request_s))
        out.update(ms_stats("approve_overhead", self.approve_s))
        if self.floors:
            out.update(self._floors())
        if self.wait_polls:
            out["poll_interval_mean_ms"] = round(self.wait_s / self.wait_polls * 1000, 3)
        reported = [results[t] - at for t, at in self.vended if t in results]
        out.update(ms_stats("result_report", reported))
        return out

    def _floors(self) -> dict[str, Any]:
        """Each path's floor (a sum of its samples taken together) and the overhead's ratio
        to it at p50 and p99; then each part's own figures."""
        out: dict[str, Any] = {}
        for path, overhead in (("request", self.request_s), ("approve", self.approve_s)):
            floor = ms_stats(f"{path}_floor", [getattr(f, path) for f in self.floors])
            out.update(floor)
            over = ms_stats("x", overhead)
            for q in ("p50", "p99"):
                base, value = floor[f"{path}_floor_{q}_ms"], over[f"x_{q}_ms"]
                ratio = None if not base or value is None else round(value / base, 2)
                out[f"{path}_vs_floor_{q}"] = ratio
        for part in ("disk_sync", "broker_hop", "to_bus", "from_bus"):
            out.update(ms_stats(f"floor_{part}", [getattr(f, part) for f in self.floors]))
        out["floor_samples"] = len(self.floors)
        return out


@dataclass
class Machine:
    vmc: CountingVmc
    port: TimedPort
    backend: TimingBackend
    daemon: DaemonProcess
    rng: random.Random
    problems: Problems

    def daemon_alive(self) -> bool:
        proc = self.daemon.proc
        return proc is not None and proc.returncode is None

    async def end_session(self) -> bool:
        answer = await self.vmc.session_complete()
        if answer.code == c.Resp.END_SESSION:
            return True
        if not answer.is_ack:
            return False
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline:
            if (await self.vmc.poll()).code == c.Resp.END_SESSION:
                return True
        return False

    async def vend(self, samples: VendSamples, phase: str) -> str | None:
        """One select-first vend approved by the backend; its txn_id, None if it failed."""
        samples.sessions += 1
        where = f"{phase} session {samples.sessions}"
        seen = len(self.backend.requests)
        item = self.rng.randrange(1, 60)
        answer = await self.vmc.vend_request(self.vmc.money(self.rng.choice(PRICES_MINOR)), item)
        requested = self.port.written_at
        if not answer.is_ack:
            self.problems.add(f"{where}: VEND REQUEST answered {answer.words}")
            return None
        polls = 0
        approved: float | None = None
        while time.perf_counter() - requested < APPROVAL_WAIT_S:
            answer = await self.vmc.poll()
            polls += 1
            if answer.code == c.Resp.VEND_APPROVED:
                approved = time.perf_counter()
                break
            if answer.code == c.Resp.VEND_DENIED:
                break
        if approved is None:
            denied = answer.code == c.Resp.VEND_DENIED
            after = time.perf_counter() - requested
            self.problems.add(f"{where}: {'VEND DENIED' if denied else 'no answer'} {after:.3f} s")
            await self.end_session()
            return None
        samples.wait_s += approved - requested
        samples.wait_polls += polls
        if not (await self.vmc.vend_success(item)).is_ack:
            self.problems.add(f"{where}: VEND SUCCESS not ACKed")
            return None
        vended = self.port.written_at
        if not await self.end_session():
            self.problems.add(f"{where}: no END SESSION")
            return None
        if len(self.backend.requests) <= seen:
            self.problems.add(f"{where}: approved but no txn.request was seen")
            return None
        txn_id, arrival = self.backend.requests[seen]
        paid = self.backend.paid_at.get(txn_id)
        if paid is None:
            self.problems.add(f"{where}: approved but the backend sent no paid")
            return None
        samples.request_s.append(arrival - requested)
        samples.approve_s.append(approved - paid)
        samples.vended.append((txn_id, vended))
        samples.sessions_ok += 1
        return txn_id

    def settled(self, txn_id: str | None) -> bool:
        """The transaction's txn.vend reached the books (or it never got that far)."""
        if txn_id is None:
            return True
        entry = self.backend.books.entries.get(txn_id)
        return entry is not None and entry.result is not None


async def run_transactions(machine: Machine, txns: int, floors: Floors | None) -> VendSamples:
    """Timed vends one after the other, each settled in the books before the next, and a
    sample of each floor after each."""
    samples = VendSamples()
    for _ in range(txns):
        if not machine.daemon_alive():
            machine.problems.add("vmcd exited during the transactions")
            break
        try:
            txn_id = await machine.vend(samples, "txns")
            if txn_id is not None:
                await machine.backend.wait_for(
                    lambda t=txn_id: machine.settled(t), SETTLE_TIMEOUT_S
                )
                if floors is not None:
                    samples.floors.append(await floors.sample())
        except VmcError as exc:
            machine.problems.add(f"txns session {samples.sessions}: {exc}")
        except TimeoutError:
            machine.problems.add(f"txns session {samples.sessions}: no txn.vend in the books")
    return samples


async def run_mdb(
    machine: Machine, polls: int, every: int, budget_s: float, *, back_to_back: bool
) -> tuple[VendSamples, dict[str, Any]]:
    """Back-to-back polls with a cloud-approved vend every ``every`` polls; answer latency.

    A vend starts only once the previous one is in the backend's books (polling goes on
    meanwhile), unless ``back_to_back``; polling goes on until there were ``polls`` polls
    between vends and ``polls // every`` vends, or the time budget ran out.
    """
    vmc = machine.vmc
    vmc.stats = TimingStats()
    vmc.polls_sent = 0
    samples = VendSamples()
    wanted = polls // every if every > 0 else 0
    started = time.perf_counter()
    truncated = False
    deferred = 0
    last: str | None = None
    i = since = 0
    while i < polls or samples.sessions < wanted:
        if time.perf_counter() - started > budget_s:
            truncated = True
            machine.problems.add(
                f"mdb: time budget of {budget_s} s used after {i} polls, {samples.sessions} vends"
            )
            break
        if not machine.daemon_alive():
            machine.problems.add("vmcd exited during the MDB phase")
            break
        i += 1
        since += 1
        try:
            await vmc.poll()
            if every <= 0 or since < every:
                continue
            if not (back_to_back or machine.settled(last)):
                deferred += 1
                continue
            since = 0
            last = await machine.vend(samples, "mdb")
        except VmcError as exc:
            machine.problems.add(f"mdb poll {i}: {exc}")
    elapsed = time.perf_counter() - started
    stats = vmc.stats
    with contextlib.suppress(TimeoutError):
        await machine.backend.wait_for(lambda: machine.settled(last), SETTLE_TIMEOUT_S)
    if not machine.settled(last):
        machine.problems.add("mdb: the last vend never reached the backend's books")
    if stats.timeouts:
        machine.problems.add(f"mdb: {stats.timeouts} exchanges had no answer")
    lat = latency_stats(stats.response_s)
    out: dict[str, Any] = {
        "mdb_p50_ms": lat["p50_ms"],
        "mdb_p99_ms": lat["p99_ms"],
        "mdb_p999_ms": lat["p999_ms"],
        "mdb_max_ms": lat["max_ms"],
        "mdb_over_5ms": lat["over_5ms"],
        "mdb_answers": lat["answers"],
        "mdb_polls": vmc.polls_sent,
        "mdb_timeouts": stats.timeouts,
        "mdb_timing_violations": len(stats.violations),
        "mdb_sessions": samples.sessions,
        "mdb_sessions_ok": samples.sessions_ok,
        "mdb_polls_between_vends": i,
        "mdb_polls_waiting_for_books": deferred,
        "mdb_truncated": truncated,
        "mdb_s": round(elapsed, 2),
    }
    if stats.violations:
        out["mdb_first_violations"] = stats.violations[:3]
    return samples, out


class ProcessCpu:
    """vmcd's and its bus process's CPU time from now on (the bus process: vmcd's child).

    On one CPU the two share, the bus process runs first (real-time) and takes what it needs
    for every POLL, and the bench's VMC polls back to back while a vend waits: vmcd's steps
    get the rest, so a step's wall time is its CPU time divided by what is left to it.
    """

    def __init__(self, daemon: DaemonProcess) -> None:
        proc = daemon.proc
        self.daemon_pid = None if proc is None else proc.pid
        kids = [] if self.daemon_pid is None else children(self.daemon_pid)
        self.bus_pid = kids[0] if len(kids) == 1 else None
        self.start = {pid: cpu_s(pid) for pid in (self.daemon_pid, self.bus_pid) if pid}

    def per_vend(self, vends: int, wall_s: float) -> dict[str, Any]:
        used = {pid: cpu_s(pid) - before for pid, before in self.start.items()}
        out: dict[str, Any] = {}
        if self.daemon_pid in used and vends:
            out["txn_daemon_cpu_ms_per_vend"] = round(used[self.daemon_pid] / vends * 1000, 3)
        if self.bus_pid in used and vends and wall_s > 0:
            out["txn_bus_cpu_ms_per_vend"] = round(used[self.bus_pid] / vends * 1000, 3)
            out["txn_bus_cpu_share"] = round(used[self.bus_pid] / wall_s, 3)
        return out


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux's ``/proc/PID/task/PID/children``)."""
    with contextlib.suppress(OSError, ValueError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(part) for part in text.split()]
    return []


def bus_own_timing(socket_path: Path, problems: Problems) -> dict[str, Any]:
    """The bus process's own answer times (read to written) over the whole run, from
    vmcd's self-test: an answer the VMC saw late but the bus process wrote in time was late
    outside it (the pty, a CPU that was not free, the VMC's own loop)."""
    try:
        with ControlClient(socket_path) as client:
            result = client.call("selftest", timeout=5.0)
    except VmcError as exc:
        problems.add(f"selftest: {exc}")
        return {}
    mdb = result.get("mdb") if isinstance(result, dict) else None
    timing = mdb.get("timing") if isinstance(mdb, dict) else None
    if not isinstance(timing, dict):
        problems.add("selftest: no mdb.timing in its answer")
        return {}
    return {
        "bus_answers": timing.get("answers"),
        "bus_answer_mean_ms": timing.get("answer_mean_ms"),
        "bus_answer_max_ms": timing.get("answer_max_ms"),
    }


@contextlib.contextmanager
def pinned(cpus: tuple[int, int] | None) -> Iterator[dict[str, int] | None]:
    """This process (and what it starts from now on) on the second CPU; restored after."""
    if cpus is None:
        yield None
        return
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[1]})
    try:
        yield {"daemon_cpu": cpus[0], "bench_cpu": cpus[1], "broker_cpu": cpus[1]}
    finally:
        os.sched_setaffinity(0, own)


async def bench_machine(args: argparse.Namespace, problems: Problems) -> dict[str, Any]:
    """Broker baseline, timed transactions and MDB latency on one whole machine."""
    cpus = choose_cpus() if args.pin else None
    out: dict[str, Any] = {}
    phase_s: dict[str, float] = {}
    with pinned(cpus) as pinning:
        out["pinning"] = pinning
        broker = MosquittoBroker()
        pair = PtyPair()
        tmp = Path(tempfile.mkdtemp(prefix="vmc-bench-cloud-"))
        daemon = DaemonProcess(
            pair,
            tmp / "state",
            level=3,
            local_approval="deny",
            extra=("--mqtt", broker.url, "--device-id", DEVICE),
            cpu=None if cpus is None else cpus[0],
        )
        backend = TimingBackend(broker.url, nodelay=not args.backend_nagle)
        backend_task: asyncio.Task[None] | None = None
        port = TimedPort(pair.master)
        vmc: CountingVmc | None = None
        stack = contextlib.AsyncExitStack()  # the floors' probes
        try:
            broker.start()
            t0 = time.perf_counter()
            try:
                out.update(await bench_broker_rtt(broker, args.rtt_samples))
            except (aiomqtt.MqttError, TimeoutError) as exc:
                problems.add(f"broker baseline: {type(exc).__name__}: {exc}")
            phase_s["broker"] = round(time.perf_counter() - t0, 2)
            backend_task = asyncio.create_task(backend.run())
            await backend.ready()
            t0 = time.perf_counter()
            await daemon.start()
            vmc = CountingVmc(port)
            await vmc.initialise(level=3, wait_s=STARTUP_TIMEOUT_S)
            await backend.wait_for(
                lambda: backend.status.get(DEVICE) == "online", STARTUP_TIMEOUT_S
            )
            await backend.wait_for(
                lambda: (backend.state.get(DEVICE) or {}).get("reader") == "enabled",
                STARTUP_TIMEOUT_S,
            )
            phase_s["startup"] = round(time.perf_counter() - t0, 2)
            if not vmc.info.features & c.Feature.ALWAYS_IDLE:
                raise VmcError("the reader did not enable always-idle: select-first needs it")
            machine = Machine(vmc, port, backend, daemon, random.Random(args.seed), problems)
            floors = Floors(
                DiskSync(tmp / "state"),
                await stack.enter_async_context(BrokerHop(broker)),
                PipeHop(0 if cpus is None else cpus[0], MdbConfig().realtime_priority),
            )
            stack.callback(floors.disk.close)
            await floors.pipe.start()
            stack.push_async_callback(floors.pipe.stop)
            gc.collect()
            gc.freeze()  # keep full collections of start-up objects off the measuring side
            try:
                cpu = ProcessCpu(daemon)
                t0 = time.perf_counter()
                samples = await run_transactions(machine, args.txns, floors)
                phase_s["transactions"] = round(time.perf_counter() - t0, 2)
                out.update(samples.summary(backend.results))
                out.update(cpu.per_vend(samples.sessions_ok, time.perf_counter() - t0))
                out["txns"] = samples.sessions
                out["txns_ok"] = samples.sessions_ok
                t0 = time.perf_counter()
                busy, mdb = await run_mdb(
                    machine,
                    args.polls,
                    args.sessions_every,
                    args.max_seconds,
                    back_to_back=args.mdb_back_to_back,
                )
                phase_s["mdb"] = round(time.perf_counter() - t0, 2)
                out.update(mdb)
                out.update(bus_own_timing(tmp / "state" / SOCKET_NAME, problems))
                out["mdb_vend"] = busy.summary(backend.results)
            finally:
                gc.unfreeze()
        finally:
            await stack.aclose()
            if vmc is not None:
                vmc.close()
            out["daemon_exit"] = await daemon.stop()
            await backend.close()
            if backend_task is not None:
                backend_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await backend_task
            realtime, warnings, _ = read_daemon_log(daemon.log_path)
            out["realtime"] = realtime
            out["daemon_warnings"] = warnings
            out["backend_tcp_nodelay"] = backend.nodelay
            out["backend_duplicates_dropped"] = backend.books.duplicates
            out["phase_s"] = phase_s
            pair.close()
            broker.close()
            if os.environ.get("VMC_BENCH_KEEP"):
                print(f"cloud bench: kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return out


# --- the report ------------------------------------------------------------------------------


def host_info() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "tmp": tempfile.gettempdir(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def targets(report: dict[str, Any]) -> dict[str, bool | None]:
    met: dict[str, bool | None] = {}
    for key, (op, bound) in TARGETS.items():
        value = report.get(key)
        if value is None:
            met[key] = None
        else:
            met[key] = value <= bound if op == "<=" else value >= bound
    return met


async def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    steal_before = steal_ms()
    load_before = [round(x, 2) for x in os.getloadavg()]
    problems = Problems()
    report: dict[str, Any] = {}
    phase_s: dict[str, float] = {}

    if "journal" in args.only:
        t0 = time.perf_counter()
        report.update(bench_journal(args.records, args.max_seconds, problems))
        phase_s["journal"] = round(time.perf_counter() - t0, 2)

    if "drain" in args.only:
        t0 = time.perf_counter()
        for most, prefix in (
            (MOSQUITTO_RECEIVE_MAXIMUM, ""),
            (args.tuned_receive_maximum, "tuned_"),
        ):
            broker: MosquittoBroker | None = None
            try:
                broker = MosquittoBroker(receive_maximum=most)
                broker.start()
                drain = await bench_drain(broker, args.drain, args.max_seconds, problems)
                report.update({prefix + key: value for key, value in drain.items()})
            except (aiomqtt.MqttError, VmcError, TimeoutError) as exc:
                problems.add(f"{prefix}drain: {type(exc).__name__}: {exc}")
            finally:
                if broker is not None:
                    broker.close()
        phase_s["drain"] = round(time.perf_counter() - t0, 2)

    if "machine" in args.only:
        t0 = time.perf_counter()
        try:
            machine = await bench_machine(args, problems)
            phase_s.update(machine.pop("phase_s"))
            report.update(machine)
        except (aiomqtt.MqttError, VmcError, TimeoutError) as exc:
            problems.add(f"machine: {type(exc).__name__}: {exc}")
        phase_s["machine"] = round(time.perf_counter() - t0, 2)

    report["errors"] = problems.errors
    if problems.first:
        report["first_problems"] = problems.first
    report["targets_met"] = targets(report)
    report["phase_s"] = phase_s
    report["duration_s"] = round(time.perf_counter() - started, 2)
    steal_after = steal_ms()
    report["host"] = host_info()
    report["host"]["loadavg_at_start"] = load_before
    if steal_before is not None and steal_after is not None:
        report["host"]["steal_ms"] = round(steal_after - steal_before, 1)
    return report


def human(report: dict[str, Any]) -> str:
    def get(key: str) -> str:
        value = report.get(key)
        return "-" if value is None else str(value)

    return "\n".join(
        [
            "vmcd cloud path (targets in the module docstring)",
            f"request overhead  p50 {get('request_overhead_p50_ms')} ms,"
            f" p99 {get('request_overhead_p99_ms')} ms"
            f" (broker alone p50 {get('broker_rtt_p50_ms')}, p99 {get('broker_rtt_p99_ms')})",
            f"  its floor       p50 {get('request_floor_p50_ms')} ms,"
            f" p99 {get('request_floor_p99_ms')} ms (x{get('request_vs_floor_p50')},"
            f" x{get('request_vs_floor_p99')})",
            f"approve overhead  p50 {get('approve_overhead_p50_ms')} ms,"
            f" p99 {get('approve_overhead_p99_ms')} ms"
            f" (poll every {get('poll_interval_mean_ms')} ms)",
            f"  its floor       p50 {get('approve_floor_p50_ms')} ms,"
            f" p99 {get('approve_floor_p99_ms')} ms (x{get('approve_vs_floor_p50')},"
            f" x{get('approve_vs_floor_p99')}; disk sync p50 {get('floor_disk_sync_p50_ms')},"
            f" p99 {get('floor_disk_sync_p99_ms')} ms)",
            f"result report     p50 {get('result_report_p50_ms')} ms,"
            f" p99 {get('result_report_p99_ms')} ms",
            f"transactions      {get('txns_ok')}/{get('txns')} ok",
            f"journal           {get('journal_records_per_s')} durable records/s"
            f" (fsync p50 {get('disk_fsync_p50_ms')} ms)",
            f"outbox drain      {get('outbox_drain_per_s')} messages/s,"
            f" {get('drain_delivered')}/{get('drain_messages')} delivered,"
            f" {get('drain_cpu_us_per_msg')} us CPU each"
            f" (plain aiomqtt {get('drain_ceiling_per_s')}/s,"
            f" {get('drain_ceiling_cpu_us_per_msg')} us), {get('drain_in_flight')} in flight",
            f"  broker tuned    {get('tuned_outbox_drain_per_s')} messages/s,"
            f" {get('tuned_drain_cpu_us_per_msg')} us CPU each"
            f" (plain aiomqtt {get('tuned_drain_ceiling_per_s')}/s),"
            f" Receive Maximum {get('tuned_drain_receive_maximum')},"
            f" {get('tuned_drain_in_flight')} in flight",
            f"MDB under cloud   p50 {get('mdb_p50_ms')} p99 {get('mdb_p99_ms')}"
            f" p99.9 {get('mdb_p999_ms')} max {get('mdb_max_ms')} ms,"
            f" {get('mdb_over_5ms')} over 5 ms, {get('mdb_polls')} polls,"
            f" {get('mdb_sessions_ok')}/{get('mdb_sessions')} sessions",
            f"errors {report['errors']}, {report['duration_s']} s",
            *(f"  {p}" for p in report.get("first_problems", [])),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--txns", type=int, default=300, help="timed cloud transactions")
    p.add_argument("--records", type=int, default=5000, help="durable journal commits")
    p.add_argument("--drain", type=int, default=20000, help="outbox messages to drain")
    p.add_argument(
        "--tuned-receive-maximum",
        type=int,
        default=100,
        help="the private broker's max_inflight_messages for the drain's second run",
    )
    p.add_argument("--polls", type=int, default=20000, help="polls in the MDB phase")
    p.add_argument(
        "--sessions-every", type=int, default=50, help="a cloud vend every K polls (MDB phase)"
    )
    p.add_argument("--rtt-samples", type=int, default=1000, help="broker baseline publishes")
    p.add_argument("--max-seconds", type=float, default=60.0, help="time budget per phase")
    p.add_argument(
        "--backend-nagle",
        action="store_true",
        help="leave Nagle on in the backend's MQTT socket (as sim.backend does)",
    )
    p.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin vmcd to one CPU and this process and the broker to another",
    )
    p.add_argument(
        "--mdb-back-to-back",
        action="store_true",
        help="start each MDB-phase vend without waiting for the last one's books",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=PHASES,
        default=PHASES,
        help="run only these phases (default: all)",
    )
    p.add_argument("--seed", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("warning", sys.stderr)  # CloudSync logs here: keep stdout for the report
    logging.getLogger("aiomqtt").setLevel(logging.ERROR)
    try:
        report = asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(report, sort_keys=False))
    else:
        print(human(report))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
