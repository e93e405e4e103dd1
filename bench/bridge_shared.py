#!/usr/bin/env python3
"""Two vmc-bridge instances taking a burst of events: ``events = "all"`` against ``"shared"``,
and in shared mode what a killed instance's share costs.

Each round starts a private Mosquitto (``sim.broker``) and two ``vmc-bridge`` processes on one
SQLite file (or, with ``--postgres SERVER``, a PostgreSQL database made for the round and
dropped after it), whose one third party owns no machine: the events are taken and committed, no
callback is made, so what is measured is the intake. One MQTT client publishes ``--events``
``sale`` events spread over ``--machines`` machines, all at once; the round ends when the
database holds them all. Measured: the wall time, and the CPU time the two bridges and the
broker used (utime + stime from /proc, which counts less of the noise of a shared machine
than the wall time), per event. The modes alternate round by round, so both see the same
minutes of the machine.

A shared round then kills one instance (SIGKILL) and publishes ``--events`` more: the time from
the kill until the database holds them all is the adoption's cost (about ``--lease``), and
the other instance's log says how many events it drained from the dead one's session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sim.broker import MosquittoBroker, free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
MODES = ("all", "shared")
IN_FLIGHT = 20
"""Publishes awaiting their PUBACK at once, as a device's outbox has them."""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass
class Instance:
    proc: asyncio.subprocess.Process
    log: Path

    def logged(self, event: str) -> list[dict[str, Any]]:
        lines = [line for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [row for row in map(json.loads, lines) if row.get("event") == event]


@contextlib.asynccontextmanager
async def instances(
    broker: MosquittoBroker, scratch: Path, database: str, mode: str, lease: float
) -> AsyncIterator[list[Instance]]:
    started: list[Instance] = []
    try:
        for name in ("a", "b"):
            config = scratch / f"bridge-{name}.toml"
            config.write_text(
                f'[bridge]\nmqtt = "{broker.url}"\nlisten = "127.0.0.1:{free_port()}"\n'
                f'database = "{database}"\nclient_id = "bench-{name}"\n'
                f'events = "{mode}"\nmember_lease = {lease}\n\n'
                '[[third_party]]\nname = "nobody"\nbase_url = "http://127.0.0.1:9"\n'
                'machines = []\napi_keys = ["k"]\n'
            )
            log = scratch / f"bridge-{name}.log"
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    str(Path(sys.executable).parent / "vmc-bridge"),
                    "--config",
                    str(config),
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                )
            started.append(Instance(proc, log))
        for instance in started:
            await until(
                lambda i=instance: any(c["link"] == "events" for c in i.logged("mqtt_connected")),
                20,
            )
        yield started
    finally:
        for instance in started:
            if instance.proc.returncode is None:
                instance.proc.terminate()
            try:
                await asyncio.wait_for(instance.proc.wait(), 15)
            except TimeoutError:
                print(f"vmc-bridge did not stop on SIGTERM: {instance.log}", file=sys.stderr)
                instance.proc.kill()
                await instance.proc.wait()


async def until(probe: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not probe():
            await asyncio.sleep(0.02)


class Store:
    """The round's database, as the bridges name it, and its count of events committed."""

    def __init__(self, scratch: Path, server: str | None) -> None:
        self.server = server
        self.path = scratch / "bridge.sqlite3"
        self.name = f"vmc_bridge_bench_{uuid.uuid4().hex[:12]}"
        self.url = "sqlite:///bridge.sqlite3"
        self._pg: Any = None

    async def __aenter__(self) -> Store:
        if self.server is not None:
            import asyncpg

            admin = await asyncpg.connect(self.server)
            await admin.execute(f'CREATE DATABASE "{self.name}"')
            await admin.close()
            self.url = self.server.rsplit("/", 1)[0] + f"/{self.name}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pg is not None:
            await self._pg.close()
        if self.server is not None:
            import asyncpg

            admin = await asyncpg.connect(self.server)
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            await admin.close()

    async def committed(self) -> int:
        if self.server is None:
            with contextlib.closing(sqlite3.connect(self.path, timeout=5)) as db:
                return int(db.execute("SELECT COUNT(*) FROM seen_events").fetchone()[0])
        import asyncpg

        if self._pg is None:
            self._pg = await asyncpg.connect(self.url)
        return int(await self._pg.fetchval("SELECT COUNT(*) FROM seen_events"))

    async def reach(self, count: int) -> None:
        async with asyncio.timeout(120):
            while await self.committed() < count:
                await asyncio.sleep(0.02)


async def publish(broker: MosquittoBroker, count: int, machines: int, first_seq: int) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-fleet") as client:
        client.pending_calls_threshold = 100_000
        for start in range(0, count, IN_FLIGHT):
            sends = []
            for n in range(start, min(count, start + IN_FLIGHT)):
                body = {"v": 1, "id": uuid.uuid4().hex, "seq": first_seq + n, "type": "sale"}
                body |= {"at": time.time(), "selection": 1, "price": 150, "currency": 978}
                topic = f"vmc/m{n % machines:03d}/events"
                sends.append(client.publish(topic, cbor2.dumps(body | {"decimals": 2}), qos=1))
            await asyncio.wait_for(asyncio.gather(*sends), 30)


async def one_round(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    with MosquittoBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        async with (
            Store(scratch, args.postgres) as store,
            instances(broker, scratch, store.url, mode, args.lease) as running,
        ):
            pids = [i.proc.pid for i in running]
            assert broker.pid is not None
            before = [cpu_seconds(p) for p in pids] + [cpu_seconds(broker.pid)]
            began = time.perf_counter()
            await publish(broker, args.events, args.machines, 1)
            await store.reach(args.events)
            wall = time.perf_counter() - began
            after = [cpu_seconds(p) for p in pids] + [cpu_seconds(broker.pid)]
            spent = [b - a for a, b in zip(before, after, strict=True)]
            result: dict[str, Any] = {
                "mode": mode,
                "events_per_s": round(args.events / wall, 1),
                "bridges_cpu_ms_per_event": round(sum(spent[:2]) / args.events * 1000, 3),
                "broker_cpu_ms_per_event": round(spent[2] / args.events * 1000, 3),
            }
            if mode == "shared":
                dead, alive = running
                dead.proc.kill()
                killed, killed_at = time.perf_counter(), time.time()
                await publish(broker, args.events, args.machines, args.events + 1)
                await store.reach(2 * args.events)
                result["kill_to_all_committed_s"] = round(time.perf_counter() - killed, 2)
                await until(lambda: alive.logged("member_adopted"), 30)
                (adopting,) = alive.logged("member_adopting")
                began = datetime.fromisoformat(adopting["timestamp"]).timestamp()
                result["kill_to_adoption_s"] = round(began - killed_at, 2)
                result["adopted_events"] = alive.logged("member_adopted")[0]["events"]
            return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for mode in MODES:
            rounds.append(await one_round(mode, args))
    summary: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in rounds if r["mode"] == mode]
        summary[mode] = {
            key: statistics.median(r[key] for r in mine) for key in mine[0] if key != "mode"
        }
    return {
        "events": args.events,
        "machines": args.machines,
        "lease_s": args.lease,
        "rounds": args.rounds,
        "database": "postgresql" if args.postgres else "sqlite",
        "load_average": os.getloadavg(),
        "median": summary,
        "each": rounds,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="of each mode, interleaved")
    parser.add_argument("--lease", type=float, default=5.0, help="member_lease, seconds")
    parser.add_argument("--postgres", help="a PostgreSQL server's URL (a database per round)")
    parser.add_argument("--json", action="store_true", help="print JSON (the default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
