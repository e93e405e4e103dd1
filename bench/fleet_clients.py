#!/usr/bin/env python3
"""What one MQTT session costs the fleet: aiomqtt per machine against sim/mqtt_lite.py.

Why the fleet (``bench/fleet.py``) does not run one aiomqtt client per machine. In one process,
against a private Mosquitto, ``--sessions`` sessions each connect with a will, subscribe to
their ``cmd`` and publish ``status`` and ``state`` retained at QoS 1, ``--connects`` at a time,
as a fleet worker does; then they sit idle for ``--idle`` seconds. Per client kind, taking
turns ``--rounds`` times, each in a fresh process: ``connect_s`` (wall) and ``connect_cpu_s``
(that process), ``rss_mb`` (resident memory added) and ``idle_cpu_pct`` (of one core, idle).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from sim.broker import MosquittoBroker  # noqa: E402
from sim.brokers import raise_nofile  # noqa: E402
from sim.mqtt_lite import V5, Session, Will  # noqa: E402

Opener = Callable[[int, int, contextlib.AsyncExitStack], Awaitable[None]]


async def open_lite(port: int, n: int, keep: contextlib.AsyncExitStack) -> None:
    will = Will(f"vmc/l{n}/status", b"lost")
    session = await Session.open("127.0.0.1", port, f"l{n}", lambda _m: None, version=V5, will=will)
    keep.callback(session.disconnect)
    await session.subscribe(f"vmc/l{n}/cmd")
    await asyncio.gather(
        session.publish(f"vmc/l{n}/status", b"online", retain=True),
        session.publish(f"vmc/l{n}/state", b"state", retain=True),
    )


async def open_aiomqtt(port: int, n: int, keep: contextlib.AsyncExitStack) -> None:
    will = aiomqtt.Will(f"vmc/a{n}/status", b"lost", qos=1, retain=True)
    client = aiomqtt.Client("127.0.0.1", port, identifier=f"a{n}", will=will)
    await keep.enter_async_context(client)
    await client.subscribe(f"vmc/a{n}/cmd", qos=1)
    await asyncio.gather(
        client.publish(f"vmc/a{n}/status", b"online", qos=1, retain=True),
        client.publish(f"vmc/a{n}/state", b"state", qos=1, retain=True),
    )


KINDS: dict[str, Opener] = {"mqtt_lite": open_lite, "aiomqtt": open_aiomqtt}


async def measure(opener: Opener, args: argparse.Namespace) -> dict[str, float]:
    with MosquittoBroker() as broker:
        gate = asyncio.Semaphore(args.connects)
        base = _own_rss_mb()
        wall, cpu = time.perf_counter(), time.process_time()
        async with contextlib.AsyncExitStack() as keep:

            async def one(n: int) -> None:
                async with gate:
                    await opener(broker.port, n, keep)

            await asyncio.gather(*(one(n) for n in range(args.sessions)))
            connect_s, connect_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
            idle_from = time.process_time()
            await asyncio.sleep(args.idle)
            idle_cpu = time.process_time() - idle_from
            added = _own_rss_mb() - base
    return {
        "connect_s": round(connect_s, 3),
        "connect_cpu_s": round(connect_cpu_s, 3),
        "rss_mb": round(added, 1),
        "idle_cpu_pct": round(100 * idle_cpu / args.idle, 1),
    }


def _own_rss_mb() -> float:
    """This process's resident memory (not the broker's, a child of it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(args: argparse.Namespace) -> dict[str, object]:
    """Each measurement in a fresh process, the kinds taking turns: memory a previous round
    freed would hide what the next one takes."""
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in KINDS}
    for _ in range(args.rounds):
        for name in KINDS:
            one = subprocess.run(
                [sys.executable, __file__, "--one", name, *_shared(args)],
                capture_output=True,
                text=True,
                check=True,
            )
            rounds[name].append(json.loads(one.stdout))
    return {"sessions": args.sessions, "rounds": rounds}


def _shared(args: argparse.Namespace) -> list[str]:
    return [f"--sessions={args.sessions}", f"--connects={args.connects}", f"--idle={args.idle}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=2000)
    p.add_argument("--connects", type=int, default=32)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--one", choices=list(KINDS), help="measure this kind once, here")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default)")
    args = p.parse_args(argv)
    if args.one is not None:
        raise_nofile()
        print(json.dumps(asyncio.run(measure(KINDS[args.one], args))))
    else:
        print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
