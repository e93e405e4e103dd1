"""A fleet of simulated machines on one broker, and remote vends on a sample of them.

Theory of operation. :func:`run_fleet` starts a private broker (:mod:`sim.brokers`) or uses
the one given, the simulated backend (:class:`sim.backend.SimBackend`, the one the end-to-end
tests use), and a few worker processes (:mod:`sim.fleet_worker`), each holding its share of
the machines, every machine with its own MQTT session and vmc's own engine and codec
(:mod:`sim.fleet_machine`). Once every worker has connected its machines, it vends: at a steady
rate, on a machine drawn at random that is not vending, the backend's ``lock``, the machine's
``txn.request``, the backend's ``paid``, the machine's ``txn.vend``, as in docs/cloud-api.md
§7.1. A vend's time runs from the backend sending ``lock`` to its hearing ``txn.vend``.

The report's keys are those of ``bench/fleet.py --json`` (docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from sim import StartError
from sim.backend import LockRefusedError, SimBackend
from sim.broker import BrokerError
from sim.brokers import KINDS, RunningBroker, raise_nofile, rss_mb, start_broker

VEND_TIMEOUT_S = 15.0
WORKER_STOP_S = 20.0
ONLINE_WAIT_S = 30.0
ONLINE_POLL_S = 0.1
BACKEND_READY_S = 10.0
BUSY_WAIT_S = 0.001


@dataclass(frozen=True, slots=True)
class FleetPlan:
    machines: int = 100
    workers: int = 2
    vends: int = 100
    rate: float = 20.0
    """Vends started per second."""
    broker: str = "mosquitto"
    url: str | None = None
    """A broker already running (mqtt://HOST:PORT) instead of a private one."""
    mqtt_version: str = "auto"
    """``5``, ``3.1.1``, or ``auto``: 5 where the broker speaks it."""
    keepalive: int = 30
    connects: int = 32
    """Connects in flight per worker: a broker that does work per session (NATS keeps each in
    JetStream) falls behind and times sessions out when too many arrive at once."""
    settle_s: float = 0.0
    """Seconds to wait between the last connect and the first vend (a broker's own work after a
    connect storm, measured apart from it)."""
    connect_timeout_s: float = 600.0
    seed: int = 1
    id_prefix: str = "fleet-"

    def version(self) -> str:
        if self.mqtt_version != "auto":
            return self.mqtt_version
        return "5" if self.url is None and KINDS[self.broker].mqtt5 else "3.1.1"


@dataclass
class FleetReport:
    machines: int
    connected: int = 0
    connect_s: float | None = None
    vends: int = 0
    vends_ok: int = 0
    vend_p50_ms: float | None = None
    vend_p99_ms: float | None = None
    broker: str = ""
    broker_rss_mb: float | None = None
    mqtt_version: str = ""
    workers: int = 0
    vend_rate: float = 0.0
    vend_max_ms: float | None = None
    backend_online: int = 0
    """Machines whose retained ``status`` the backend saw ``online`` before the vends."""
    connect_failed: int = 0
    connect_retries: int = 0
    dropped: int = 0
    unacked: int = 0
    commands: int = 0
    vend_failures: dict[str, int] = field(default_factory=dict)
    """Vends that did not succeed, by what went wrong (``no_txn_vend``: the backend never
    heard the result)."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.connected == self.machines and self.vends_ok == self.vends and not self.problems

    def as_json(self) -> str:
        return json.dumps(asdict(self))

    def summary(self) -> str:
        return (
            f"{self.broker} (MQTT {self.mqtt_version}): {self.connected}/{self.machines} machines"
            f" connected in {self.connect_s} s by {self.workers} workers;"
            f" {self.vends_ok}/{self.vends} vends ok, p50 {self.vend_p50_ms} ms,"
            f" p99 {self.vend_p99_ms} ms; broker RSS "
            + ("unknown" if self.broker_rss_mb is None else f"{self.broker_rss_mb} MB")
            + "".join(f"\nproblem: {p}" for p in self.problems)
        )


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0..100) of the values, None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class _Worker:
    """One worker process and what it said."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise BrokerError(f"fleet worker {self.proc.pid} exited with {self.proc.returncode}")
        answer: dict[str, Any] = json.loads(raw)
        return answer

    async def finish(self) -> dict[str, Any] | None:
        """Close its stdin (the fleet is done) and read its totals; kill it if it hangs."""
        proc = self.proc
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            totals = await self.line(WORKER_STOP_S)
        except (TimeoutError, BrokerError, ValueError):
            totals = None
        await self.stop()
        return totals

    async def stop(self) -> None:
        proc = self.proc
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


async def _start_workers(
    plan: FleetPlan, host: str, port: int, cleanup: contextlib.AsyncExitStack
) -> list[_Worker]:
    workers: list[_Worker] = []
    share, extra = divmod(plan.machines, plan.workers)
    first = 0
    for n in range(plan.workers):
        count = share + (1 if n < extra else 0)
        if count == 0:
            continue
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sim.fleet_worker",
            f"--host={host}",
            f"--port={port}",
            f"--first={first}",
            f"--count={count}",
            f"--id-prefix={plan.id_prefix}",
            f"--mqtt-version={plan.version()}",
            f"--keepalive={plan.keepalive}",
            f"--connects={plan.connects}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        worker = _Worker(proc)
        cleanup.push_async_callback(worker.stop)
        workers.append(worker)
        first += count
    return workers


async def _vend(backend: SimBackend, device: str) -> float | str:
    """One remote vend: its milliseconds when it succeeded, else what went wrong."""
    started = time.perf_counter()
    try:
        txn_id = await backend.lock(device)
    except LockRefusedError:
        return "lock_refused"
    except TimeoutError:
        return "no_lock_reply"
    try:
        entry = await backend.wait_done(txn_id, VEND_TIMEOUT_S)
    except TimeoutError:
        entry = backend.books.entries[txn_id]
        return "no_txn_vend" if "requested" in entry.states else "no_txn_request"
    if entry.result != "success":
        return f"ended_{entry.result or entry.states[-1]}"
    return (time.perf_counter() - started) * 1000


async def _vend_at_rate(plan: FleetPlan, backend: SimBackend, ids: list[str]) -> list[float | str]:
    """``plan.vends`` vends started ``plan.rate`` a second on machines that are not vending."""
    rng = random.Random(plan.seed)
    busy: set[str] = set()
    tasks: list[asyncio.Task[float | str]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(device: str) -> float | str:
        try:
            return await _vend(backend, device)
        finally:
            busy.discard(device)

    for n in range(plan.vends):
        await asyncio.sleep(max(0.0, start + n / plan.rate - loop.time()))
        while len(busy) >= len(ids):  # every machine is vending: the next one to finish
            await asyncio.sleep(BUSY_WAIT_S)
        device = rng.choice(ids)
        while device in busy:
            device = rng.choice(ids)
        busy.add(device)
        tasks.append(asyncio.create_task(one(device)))
    return list(await asyncio.gather(*tasks))


async def _backend_ready(
    backend: SimBackend, task: asyncio.Task[None], url: str, version: str
) -> None:
    """Until the backend subscribed; StartError (one line) when it cannot connect."""
    ready = asyncio.create_task(backend.ready(BACKEND_READY_S))
    await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done() and ready.exception() is None:
        return
    ready.cancel()
    why = "no answer" if not task.done() or task.cancelled() else str(task.exception())
    raise StartError(f"the simulated backend cannot use {url} with MQTT {version}: {why}")


async def _online(backend: SimBackend, wanted: int) -> int:
    """How many machines the backend saw ``online``, once all or :data:`ONLINE_WAIT_S` passed.

    Polled: a probe on every message the backend reads would cost the square of the fleet.
    """
    deadline = time.monotonic() + ONLINE_WAIT_S
    while True:
        online = sum(1 for s in backend.status.values() if s == "online")
        if online >= wanted or time.monotonic() > deadline:
            return online
        await asyncio.sleep(ONLINE_POLL_S)


async def _start_private(name: str) -> RunningBroker:
    """A private broker, started in a thread (RabbitMQ takes seconds). A stop meanwhile waits
    for that start to end, then stops the broker: nothing is left running."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        starting = pool.submit(start_broker, name)
        try:
            return await asyncio.wrap_future(starting)
        except BrokerError as exc:
            raise StartError(str(exc)) from None
        except asyncio.CancelledError:
            with contextlib.suppress(BrokerError):
                starting.result().close()
            raise


async def run_fleet(plan: FleetPlan, cleanup: contextlib.AsyncExitStack) -> FleetReport:
    raise_nofile()
    version = plan.version()
    report = FleetReport(plan.machines, mqtt_version=version)
    report.vend_rate = plan.rate
    broker: RunningBroker | None = None
    if plan.url is None:
        broker = await _start_private(plan.broker)
        cleanup.callback(broker.close)
        url = broker.url
        report.broker = plan.broker
    else:
        url = plan.url
        report.broker = url
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883

    protocol = aiomqtt.ProtocolVersion.V5 if version == "5" else aiomqtt.ProtocolVersion.V311
    backend = SimBackend(url, protocol=protocol)
    backend_task = asyncio.create_task(backend.run())

    async def stop_backend() -> None:
        backend_task.cancel()
        await asyncio.gather(backend_task, return_exceptions=True)
        await backend.close()

    cleanup.push_async_callback(stop_backend)
    await _backend_ready(backend, backend_task, url, version)

    started = time.monotonic()
    workers = await _start_workers(plan, host, port, cleanup)
    report.workers = len(workers)
    for worker in workers:
        try:
            said = await worker.line(max(1.0, started + plan.connect_timeout_s - time.monotonic()))
        except TimeoutError:
            report.problems.append("a worker did not finish connecting in time")
            continue
        report.connected += int(said["connected"])
        report.connect_failed += int(said["failed"])
        report.connect_retries += int(said["retries"])
    report.connect_s = round(time.monotonic() - started, 3)
    ids = [f"{plan.id_prefix}{n:05d}" for n in range(plan.machines)]
    report.backend_online = await _online(backend, report.connected)

    await asyncio.sleep(plan.settle_s)
    gc.freeze()  # the backend's books of every machine: keep full collections from walking them
    times = await _vend_at_rate(plan, backend, ids) if plan.vends and report.connected else []
    done = [t for t in times if isinstance(t, float)]
    report.vend_failures = dict(Counter(t for t in times if isinstance(t, str)))
    report.vends = len(times)
    report.vends_ok = len(done)
    report.vend_p50_ms = _ms(percentile(done, 50))
    report.vend_p99_ms = _ms(percentile(done, 99))
    report.vend_max_ms = _ms(max(done, default=None))
    report.broker_rss_mb = rss_mb(broker.pid if broker is not None else None)

    for worker in workers:
        totals = await worker.finish()
        if totals is None:
            report.problems.append(f"worker {worker.proc.pid} gave no totals at its stop")
            continue
        report.dropped += int(totals["dropped"])
        report.unacked += int(totals["unacked"])
        report.commands += int(totals["commands"])
    if report.dropped:
        report.problems.append(f"{report.dropped} sessions were dropped by the broker")
    if report.backend_online < report.connected:
        report.problems.append(
            f"the backend saw {report.backend_online} of {report.connected} machines online"
        )
    return report


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
