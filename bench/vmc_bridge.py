#!/usr/bin/env python3
"""vmc-bridge's cost: what it adds to each step of the seven, and lock -> vend throughput.

The bridge runs as the ``vmc-bridge`` process (its log at warning level, a SQLite or a given
PostgreSQL database), a private Mosquitto (``sim.broker``) on loopback. In this process:

- a **fleet double**: one MQTT client that plays ``--machines`` machines at the contract's
  level (retained ``status`` and ``state``; a ``lock`` answered ``ok`` at once and followed by
  the customer's ``txn.request``; a ``paid`` answered ``ok`` and followed by ``txn.vend``).
  No vmcd: its own part is ``bench/cloud.py``'s. So every millisecond here is the bridge's and
  the broker's;
- a **third party** served by uvicorn, written to the outbound document: it answers each
  callback at once and calls ``/api/paid`` on ``/txn/request``.

Measured per step, one machine, one transaction at a time (``--transactions``):

- ``lock``: the third party's ``/api/lock`` call, HTTP in -> ``lock`` out -> reply in ->
  HTTP answer; ``paid`` the same for ``/api/paid``;
- ``request``: the fleet double publishing ``txn.request`` -> ``/txn/request`` arriving;
  ``vend``: ``txn.vend`` published -> ``/txn/vend`` arriving (each includes a durable commit);
- ``mqtt_rtt``: the baseline, a QoS 1 publish -> the same client receiving it back, on this
  broker.

Then ``--machines`` machines, each looping lock -> request -> paid -> vend for ``--seconds``:
completed vends per second and the lock -> ``/txn/vend`` time of each. The fleet double, the
third party and the clock are in this process and share its event loop, which counts against
the bridge; on a loaded machine the numbers are upper bounds. The CPU time each process
spent per vend in that run (the bridge's from ``/proc``, Linux) is steadier than the rates on a
shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from mdb_latency import nearest_rank  # noqa: E402

from bridge import run as bridge_run  # noqa: E402
from bridge.mapping import Callback  # noqa: E402
from sim.broker import MosquittoBroker, free_port  # noqa: E402

KEY = "bench-key"
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
"""As a machine's own link has it: no Nagle stall between a reply and the event after it."""
PRICE = 150


def cpu_seconds(pid: int) -> float | None:
    """A process's user + system CPU time, from /proc (None where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats_ms(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50_ms": round(nearest_rank(ordered, 1, 2) * 1000, 2),
        "p99_ms": round(nearest_rank(ordered, 99, 100) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


@dataclass
class Fleet:
    """Many machines at the contract's level, in one MQTT client."""

    client: aiomqtt.Client
    seq: int = 0
    published: dict[str, float] = field(default_factory=dict)
    """(kind, txn_ref) -> when the event was published."""
    refs: dict[str, str | None] = field(default_factory=dict)
    """txn_id -> the lock's ref (the txnRef), for the vend's event."""

    async def event(self, machine: str, kind: str, **body: Any) -> None:
        self.seq += 1
        head = {"v": 1, "id": uuid.uuid4().hex, "seq": self.seq, "type": kind, "at": time.time()}
        self.published[f"{kind} {body.get('ref')}"] = time.perf_counter()
        await self.client.publish(f"vmc/{machine}/events", cbor2.dumps(head | body), qos=1)

    async def reply(self, machine: str, cmd: dict[str, Any], result: dict[str, Any]) -> None:
        body = {"v": 1, "id": cmd["id"], "ok": True, "code": None, "message": ""}
        body |= {"result": result, "at": time.time()}
        await self.client.publish(f"vmc/{machine}/reply", cbor2.dumps(body), qos=1)

    async def on_command(self, machine: str, cmd: dict[str, Any]) -> None:
        common = {"currency": 978, "decimals": 2, "vend_type": "paid", "surcharge": 0}
        if cmd["op"] == "lock":
            txn_id = uuid.uuid4().hex
            self.refs[txn_id] = cmd.get("ref")
            await self.reply(machine, cmd, {"txn_id": txn_id, "expires": time.time() + 60})
            await self.event(
                machine,
                "txn.request",
                txn_id=txn_id,
                ref=cmd.get("ref"),
                selection=1,
                price=PRICE,
                deadline=time.time() + 3.5,
                medium="app",
                **common,
            )
        elif cmd["op"] == "paid":
            txn_id = cmd["txn_id"]
            await self.reply(machine, cmd, {"txn_id": txn_id, "state": "approving"})
            await self.event(
                machine,
                "txn.vend",
                txn_id=txn_id,
                ref=self.refs.get(txn_id),
                result="success",
                selection=1,
                amount=cmd["amount"],
                detail="",
                medium="app",
                voucher_id=None,
                credit_id=None,
                offline=False,
                list_version=None,
                **common,
            )


@dataclass
class ThirdParty:
    """The outbound document's server; pays every request. It calls the bridge with one HTTP
    client per machine: httpcore scans every connection of its pool for each request, and one
    pool of 100 connections took half of this process's CPU (cProfile), which made the bench,
    not the bridge, the bottleneck."""

    bridge_url: str
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)
    machine_of: dict[str, str] = field(default_factory=dict)
    """txnRef -> its machine, for the /api/paid call."""
    arrived: dict[str, float] = field(default_factory=dict)
    done: dict[str, asyncio.Event] = field(default_factory=dict)
    paid_s: list[float] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, request: Request) -> JSONResponse:
        body = await request.json()
        ref = str(body.get("txn_ref"))
        self.arrived[f"{request.url.path} {ref}"] = time.perf_counter()
        if request.url.path == "/txn/request":
            task = asyncio.create_task(self.pay(self.machine_of[ref], ref, int(body["cents"])))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif request.url.path == "/txn/vend" and ref in self.done:
            self.done[ref].set()
        return JSONResponse({"success": True, "message": ""})

    async def pay(self, machine: str, ref: str, cents: int) -> None:
        start = time.perf_counter()
        answer = await self.call(machine, "/api/paid", {"txnRef": ref, "price": cents})
        if answer["success"]:
            self.paid_s.append(time.perf_counter() - start)

    async def call(self, machine: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        client = self.clients.get(machine)
        if client is None:
            # Idle connections are dropped before uvicorn's keep-alive (5 s) does it: a
            # request sent on one the server is closing fails (ReadError).
            limits = httpx.Limits(keepalive_expiry=2.0)
            transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[NO_DELAY])
            client = self.clients[machine] = httpx.AsyncClient(
                base_url=self.bridge_url,
                headers={"X-API-Key": KEY},
                transport=transport,
                timeout=30,
            )
        response = await client.post(path, json=body)
        answer: dict[str, Any] = response.json()
        return answer

    async def close(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients.values()))

    async def vend(self, machine: str) -> tuple[float, float]:
        """One lock -> vend; (the lock call's time, lock -> /txn/vend)."""
        ref = uuid.uuid4().hex
        done = self.done[ref] = asyncio.Event()
        self.machine_of[ref] = machine
        start = time.perf_counter()
        answer = await self.call(machine, "/api/lock", {"vm_id": machine, "txnRef": ref})
        locked = time.perf_counter() - start
        if not answer["success"]:
            raise RuntimeError(f"lock refused: {answer['message']}")
        await asyncio.wait_for(done.wait(), 30)
        del self.done[ref], self.machine_of[ref]
        return locked, time.perf_counter() - start


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    sock = bridge_run.listening("127.0.0.1", 0)  # Nagle off on its connections: see there
    server = bridge_run.server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def fleet_loop(fleet: Fleet) -> None:
    """Each command answered in its own task, as each machine answers its own: handled one
    after another, the double's two QoS 1 publishes per command held up the whole fleet."""
    answering: set[asyncio.Task[None]] = set()
    async for message in fleet.client.messages:
        machine = str(message.topic).split("/")[1]
        if isinstance(message.payload, bytes):
            task = asyncio.create_task(fleet.on_command(machine, cbor2.loads(message.payload)))
            answering.add(task)
            task.add_done_callback(answering.discard)


async def mqtt_rtt(client: aiomqtt.Client, broker: MosquittoBroker, rounds: int) -> list[float]:
    samples = []
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-rtt") as echo:
        await echo.subscribe("bench/rtt", qos=1)
        for _ in range(rounds):
            start = time.perf_counter()
            await client.publish("bench/rtt", b"x", qos=1)
            await anext(aiter(echo.messages))
            samples.append(time.perf_counter() - start)
    return samples


async def run(args: argparse.Namespace) -> dict[str, Any]:
    machines = [f"b{n:03d}" for n in range(args.machines)]
    with MosquittoBroker() as broker, tempfile.TemporaryDirectory() as scratch:
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, identifier="bench-fleet", socket_options=[NO_DELAY]
        ) as client:
            client.pending_calls_threshold = 10_000
            fleet = Fleet(client)
            await client.subscribe("vmc/+/cmd", qos=1)
            for machine in machines:
                await client.publish(
                    f"vmc/{machine}/status",
                    cbor2.dumps({"v": 1, "state": "online"}),
                    qos=1,
                    retain=True,
                )
                state = {"v": 1, "reader": "enabled", "txn": None, "credit": None, "mdb_link": "up"}
                await client.publish(f"vmc/{machine}/state", cbor2.dumps(state), qos=1, retain=True)
            listener = asyncio.create_task(fleet_loop(fleet))
            port = free_port()
            third = ThirdParty(f"http://127.0.0.1:{port}")
            try:
                routes = [Route(p.value, third.handle, methods=["POST"]) for p in Callback]
                async with serving(Starlette(routes=routes)) as third_url:
                    config = Path(scratch) / "bridge.toml"
                    database = args.database or "sqlite:///bridge.sqlite3"
                    config.write_text(
                        f'[bridge]\nmqtt = "{broker.url}"\nlisten = "127.0.0.1:{port}"\n'
                        f'database = "{database}"\n\n[[third_party]]\nname = "bench"\n'
                        f'base_url = "{third_url}"\napi_keys = ["{KEY}"]\n'
                    )
                    bridge = await asyncio.create_subprocess_exec(
                        str(Path(sys.executable).parent / "vmc-bridge"),
                        "--config",
                        str(config),
                        "--log-level",
                        "warning",
                        stdout=asyncio.subprocess.DEVNULL,
                    )
                    try:
                        return await measure(
                            args, machines, fleet, third, rtt_of=(client, broker), pid=bridge.pid
                        )
                    finally:
                        bridge.terminate()
                        await bridge.wait()
                        listener.cancel()
            finally:
                await third.close()


async def measure(
    args: argparse.Namespace,
    machines: list[str],
    fleet: Fleet,
    third: ThirdParty,
    *,
    rtt_of: tuple[aiomqtt.Client, MosquittoBroker],
    pid: int,
) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                found = await third.call(machines[0], "/api/vmc_search", {"vm_id": machines[0]})
                if found.get("vendingMachine", {}).get("online"):
                    break
            await asyncio.sleep(0.2)
    lock_s: list[float] = []
    request_s: list[float] = []
    vend_s: list[float] = []
    for _ in range(args.transactions):
        locked, _whole = await third.vend(machines[0])
        lock_s.append(locked)
    for key, at in third.arrived.items():
        path, ref = key.split(" ", 1)
        kind = {"/txn/request": "txn.request", "/txn/vend": "txn.vend"}.get(path)
        sent = fleet.published.get(f"{kind} {ref}")
        if sent is not None:
            (request_s if kind == "txn.request" else vend_s).append(at - sent)
    paid_s = list(third.paid_s)
    rtt = await mqtt_rtt(*rtt_of, args.transactions)
    whole: list[float] = []
    stop = time.perf_counter() + args.seconds

    refused: list[str] = []

    async def machine_loop(machine: str) -> None:
        while time.perf_counter() < stop:
            try:
                whole.append((await third.vend(machine))[1])
            except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
                refused.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    cpu_before = (cpu_seconds(pid), time.process_time())
    await asyncio.gather(*(machine_loop(m) for m in machines))
    elapsed = time.perf_counter() - started
    bridge_cpu, bench_cpu = cpu_seconds(pid), time.process_time() - cpu_before[1]
    vends = max(1, len(whole))
    return {
        "bench": "bridge",
        "database": "postgresql" if args.database else "sqlite",
        "per_step": {
            "lock": stats_ms(lock_s),
            "request": stats_ms(request_s),
            "paid": stats_ms(paid_s),
            "vend": stats_ms(vend_s),
            "mqtt_rtt": stats_ms(rtt),
        },
        "throughput": {
            "machines": len(machines),
            "seconds": round(elapsed, 2),
            "vends": len(whole),
            "vends_per_s": round(len(whole) / elapsed, 1),
            "failed": len(refused),
            "first_failure": refused[0] if refused else None,
            "lock_to_vend": stats_ms(whole),
            "cpu_ms_per_vend": {
                "bridge": None
                if bridge_cpu is None or cpu_before[0] is None
                else round((bridge_cpu - cpu_before[0]) * 1000 / vends, 2),
                "bench": round(bench_cpu * 1000 / vends, 2),
            },
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.add_argument("--machines", type=int, default=100)
    p.add_argument("--transactions", type=int, default=200, help="sequential, for the steps")
    p.add_argument("--seconds", type=float, default=10.0, help="the throughput run")
    p.add_argument("--database", help="a postgresql:// URL (default: SQLite in a temp dir)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = asyncio.run(run(args))
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
