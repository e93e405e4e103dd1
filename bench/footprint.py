#!/usr/bin/env python3
"""Footprint of vmcd: cold start to the first MDB answer, and memory after a vend session.

A Pi Zero 2 W has 512 MB for everything, and a machine that restarts (power cut, watchdog)
must answer the VMC's RESET before the VMC gives up on the reader. Both numbers are measured
from the outside, on the real daemon (``python -m vmc``) on a pty pair with the simulated
VMC (``sim.vmc_master``), in two configurations:

- ``no_mqtt``: local decisions (``--local-approval accept``): a cashless purchase and a cash
  sale;
- ``mqtt``: ``--mqtt`` to a private Mosquitto (``sim.broker``) with the simulated backend
  approving (``sim.backend``, post billing): a select-first vend the backend pays for and a
  cash sale, each in the backend's books before the memory is read.

Per configuration, one start to warm up, then ``--runs`` cold starts: the clock starts just
before the daemon's exec and stops when the answer to a RESET probe arrives (a probe every
``PROBE_S``, so that is the resolution); with it, the CPU time the daemon and its bus
process used by then (``cold_start_cpu_ms_p50``, what the start costs on an idle core) and
when each logged that it was up. The last run goes on: the reader is initialised, the vend
session runs, and the memory of vmcd and of its bus process (its child) is read from
``/proc/PID/smaps_rollup``: PSS (shared pages split between the processes that map them), RSS
(every page counted whole) and USS (private pages only), and ``unique_mb_total``, the pair's
resident pages each counted once (from ``/proc/PID/pagemap``, as root).

PSS depends on who else maps the same pages: on a development machine where other Python
processes run, the interpreter's shared library and the wheels' shared objects are split
more ways than on a Pi where vmcd's two processes are the only Python ones. USS is the part
no other process can share, the same on both. ``floor`` measures, in the same run, two bare
interpreters that stand for the least the pair can be: one that imports what a daemon cannot
do without (asyncio, sqlite3 with an open WAL journal, pyserial, structlog, json) and one that
imports asyncio only (the bus process's loop, without ssl as the bus process runs it).
``pss_ratio_to_floor`` compares the pair with them.

Bytecode: an installed vmc has its modules compiled (pip does it at install), so the daemon
here runs with a bytecode cache of its own (``PYTHONPYCACHEPREFIX`` in the bench's temp
directory, filled by the warm-up start) even where ``PYTHONDONTWRITEBYTECODE`` is set;
``--no-pyc-cache`` leaves the environment as it is (``pyc_cache`` in the report says which).

Usage: ``bench/footprint.py --json`` (``--runs N``, ``--config mqtt|no_mqtt|both``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = str(Path(__file__).resolve().parent)
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

# bench/cloud.py puts the repository's root on sys.path too.
from cloud import (  # noqa: E402
    SETTLE_TIMEOUT_S,
    Machine,
    TimedPort,
    TimingBackend,
    VendSamples,
    host_info,
)
from mdb_latency import cpu_s  # noqa: E402

from drivers.pty import PtyPair  # noqa: E402
from protocols.errors import VmcError  # noqa: E402
from sim.broker import MosquittoBroker  # noqa: E402
from sim.daemon_proc import DaemonProcess  # noqa: E402
from sim.scenarios import Customers  # noqa: E402
from sim.vmc_master import PROBE_SETTLE_S, VmcMaster  # noqa: E402

CONFIGS = ("no_mqtt", "mqtt")
COLD_START_KEYS = {
    "cold_start_s": None,
    "cpu_s": "cold_start_cpu_ms_p50",
    "vmcd_started": "vmcd_started_ms_p50",
    "bus_ready": "bus_ready_ms_p50",
}
"""Per cold start (run key -> its median's report key): the first answer (reported with its
own p50/max), the CPU time daemon and bus process used by then, and when each logged that
it was up."""
DEVICE = "m1"
PROBE_S = 0.005
"""How long a RESET probe waits for its answer before the next: the cold start's resolution."""
STARTUP_TIMEOUT_S = 15.0
SETTLE_S = 0.5
"""After the session: the journal's and the outbox's last writes land before memory is read."""
MB = 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")
PFN_MASK = (1 << 55) - 1
FLOOR_DAEMON = """
import asyncio, json, sqlite3, sys, tempfile
import serial
sys.modules["rich"] = None  # as vmc.launch.import_structlog_without_rich does
import structlog
del sys.modules["rich"]
db = sqlite3.connect(tempfile.mkdtemp() + "/floor.sqlite")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
db.commit()
asyncio.run(asyncio.sleep(0))
print("ready", flush=True)
sys.stdin.read()
"""
FLOOR_BUS = """
import sys
sys.modules["ssl"] = None  # as vmc.services.bus.BUS_BOOT does
import asyncio
asyncio.run(asyncio.sleep(0))
print("ready", flush=True)
sys.stdin.read()
"""


@dataclass(frozen=True, slots=True)
class Memory:
    """One process's memory from ``/proc/PID/smaps_rollup``, in bytes."""

    pss: int
    rss: int
    uss: int

    @classmethod
    def of(cls, pid: int) -> Memory:
        fields: dict[str, int] = {}
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
        private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
        return cls(fields["Pss"], fields["Rss"], private)


def resident_pages(pid: int) -> set[int]:
    """The physical pages (frame numbers) ``pid`` has resident, from ``/proc/PID/pagemap``
    (frame numbers need root; empty without)."""
    frames: set[int] = set()
    with open(f"/proc/{pid}/maps", encoding="ascii") as maps:
        ranges = [line.split(None, 1)[0].split("-") for line in maps]
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for low, high in ranges:
            start, end = int(low, 16) // PAGE, int(high, 16) // PAGE
            pagemap.seek(start * 8)
            try:
                data = pagemap.read((end - start) * 8)
            except OSError:  # [vsyscall] and the like
                continue
            for (entry,) in struct.iter_unpack("<Q", data):
                if entry >> 63 and entry & PFN_MASK:
                    frames.add(entry & PFN_MASK)
    return frames


def pair_unique_mb(pids: list[int]) -> float | None:
    """The pages the processes have resident, each counted once: what they occupy where no
    other process shares their libraries (PSS on a Pi where they are the only Python
    processes is at most this). None where frame numbers cannot be read."""
    frames: set[int] = set()
    for pid in pids:
        frames |= resident_pages(pid)
    return mb(len(frames) * PAGE) if frames else None


def log_times(path: Path, exec_at: float) -> dict[str, float]:
    """Seconds from exec to the daemon's ``vmcd_started`` and the bus process's ``bus_ready``
    log lines (their ISO timestamps; the wall clock's resolution)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                event = json.loads(line)
                name = event["event"]
                if name in ("vmcd_started", "bus_ready") and name not in out:
                    at = dt.datetime.fromisoformat(event["timestamp"]).timestamp()
                    out[name] = at - exec_at
    return out


def mb(value: float) -> float:
    return round(value / MB, 2)


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def memory_keys(daemon: Memory, bus: Memory | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, mem in (("daemon", daemon), ("bus", bus)):
        out[f"pss_mb_{name}"] = None if mem is None else mb(mem.pss)
        out[f"rss_mb_{name}"] = None if mem is None else mb(mem.rss)
        out[f"uss_mb_{name}"] = None if mem is None else mb(mem.uss)
    both = (daemon,) if bus is None else (daemon, bus)
    out["pss_mb_total"] = mb(sum(m.pss for m in both))
    out["rss_mb_total"] = mb(sum(m.rss for m in both))
    out["uss_mb_total"] = mb(sum(m.uss for m in both))
    return out


async def first_answer(vmc: VmcMaster, started: float) -> float:
    """Probe with RESET until the reader answers; seconds from ``started`` to that answer."""
    while True:
        answer = await vmc.reset(timed=False)
        if not answer.timed_out:
            arrived = time.perf_counter()
            # Probes queued while the reader started are each answered now: drop those.
            await asyncio.sleep(PROBE_SETTLE_S)
            vmc.reader.discard()
            return arrived - started
        if time.perf_counter() - started > STARTUP_TIMEOUT_S:
            raise VmcError(f"the reader did not answer within {STARTUP_TIMEOUT_S:g} s")


class Problems(list[str]):
    def add(self, problem: str) -> None:
        if len(self) < 10:
            self.append(problem)


@contextlib.asynccontextmanager
async def backend_on(broker: MosquittoBroker) -> AsyncIterator[TimingBackend]:
    backend = TimingBackend(broker.url, nodelay=True)
    task = asyncio.create_task(backend.run())
    try:
        await backend.ready()
        yield backend
    finally:
        await backend.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def local_session(vmc: VmcMaster, problems: Problems) -> int:
    """A cashless purchase the local policy accepts and a cash sale; how many went well."""
    customers = Customers(vmc, random.Random(1), poll_period=0.0)
    ok = 0
    for number, kind in enumerate(("purchase", "cash_sale"), 1):
        result = await customers.run(kind, number)
        ok += result.ok
        if not result.ok:
            problems.add(f"{kind}: {result.outcome} {result.detail}")
    return ok


async def cloud_session(
    vmc: VmcMaster,
    port: TimedPort,
    daemon: DaemonProcess,
    backend: TimingBackend,
    problems: Problems,
) -> int:
    """A select-first vend the backend approves, then a cash sale; each in the books."""
    await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", STARTUP_TIMEOUT_S)
    await backend.wait_for(
        lambda: (backend.state.get(DEVICE) or {}).get("reader") == "enabled", STARTUP_TIMEOUT_S
    )
    machine = Machine(vmc, port, backend, daemon, random.Random(1), problems)  # type: ignore[arg-type]
    txn_id = await machine.vend(VendSamples(), "footprint")
    ok = 0
    if txn_id is not None:
        with contextlib.suppress(TimeoutError):
            await backend.wait_for(lambda: machine.settled(txn_id), SETTLE_TIMEOUT_S)
        ok += machine.settled(txn_id)
    sold = backend.finished()
    ok += (await vmc.cash_sale(vmc.money(150), 7)).is_ack
    with contextlib.suppress(TimeoutError):
        await backend.wait_for(lambda: backend.finished() > sold, SETTLE_TIMEOUT_S)
    return ok


def pyc_env(cache: Path | None) -> dict[str, str]:
    """The environment that gives Python a bytecode cache in ``cache`` (None: as it is)."""
    if cache is None:
        return {}
    return {"PYTHONPYCACHEPREFIX": str(cache), "PYTHONDONTWRITEBYTECODE": ""}


async def one_run(
    config: str,
    tmp: Path,
    broker: MosquittoBroker | None,
    backend: TimingBackend | None,
    problems: Problems,
    *,
    session: bool,
    env: dict[str, str],
) -> dict[str, Any]:
    """One cold start; with ``session``, the vend session and the memory after it."""
    pair = PtyPair()
    extra = () if broker is None else ("--mqtt", broker.url, "--device-id", DEVICE)
    daemon = DaemonProcess(
        pair,
        tmp,
        level=3,
        local_approval="accept" if broker is None else "deny",
        extra=extra,
        log_path=tmp / "vmcd.log",
        env=env,
    )
    port = TimedPort(pair.master)
    vmc = VmcMaster(port, answer_timeout=PROBE_S)
    out: dict[str, Any] = {}
    try:
        exec_at, started = time.time(), time.perf_counter()
        await daemon.start()
        out["cold_start_s"] = await first_answer(vmc, started)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        out["cpu_s"] = sum(cpu_s(p) for p in (pid, *children(pid)))
        out.update(log_times(daemon.log_path, exec_at))
        if not session:
            return out
        vmc.answer_timeout = 0.05
        await vmc.initialise(level=3, wait_s=STARTUP_TIMEOUT_S)
        if backend is None:
            out["vends_ok"] = await local_session(vmc, problems)
        else:
            out["vends_ok"] = await cloud_session(vmc, port, daemon, backend, problems)
        await asyncio.sleep(SETTLE_S)
        bus = children(pid)
        if len(bus) != 1:
            problems.add(f"{config}: vmcd has {len(bus)} child processes, not one bus process")
        out.update(memory_keys(Memory.of(pid), Memory.of(bus[0]) if len(bus) == 1 else None))
        out["unique_mb_total"] = pair_unique_mb([pid, *bus])
    finally:
        vmc.close()
        out["daemon_exit"] = await daemon.stop()
        pair.close()
    return out


async def bench_config(
    config: str, runs: int, problems: Problems, env: dict[str, str]
) -> dict[str, Any]:
    """A warm-up start, then ``runs`` cold starts of fresh daemons (each with a fresh state
    directory); the last one also runs the vend session and is measured."""
    tmp = Path(tempfile.mkdtemp(prefix=f"vmc-bench-footprint-{config}-"))
    broker = MosquittoBroker() if config == "mqtt" else None
    starts: dict[str, list[float]] = {key: [] for key in COLD_START_KEYS}
    out: dict[str, Any] = {}
    try:
        if broker is not None:
            broker.start()
        async with contextlib.AsyncExitStack() as stack:
            backend = (
                None if broker is None else await stack.enter_async_context(backend_on(broker))
            )
            for i in range(-1, runs):
                last = i == runs - 1
                try:
                    run = await one_run(
                        config, tmp / f"run{i}", broker, backend, problems, session=last, env=env
                    )
                except (VmcError, TimeoutError) as exc:
                    problems.add(f"{config} run {i}: {type(exc).__name__}: {exc}")
                    continue
                if i < 0:
                    continue  # the warm-up: page cache, bytecode cache
                for key, values in starts.items():
                    if key in run:
                        values.append(run.pop(key))
                if run.get("daemon_exit") not in (0, None):
                    problems.add(f"{config} run {i}: vmcd exited with {run['daemon_exit']}")
                if last:
                    out.update(run)
    finally:
        if broker is not None:
            broker.close()
        shutil.rmtree(tmp, ignore_errors=True)
    ordered = sorted(starts["cold_start_s"])
    out["cold_starts"] = len(ordered)
    out["cold_start_ms_p50"] = ms(statistics.median(ordered)) if ordered else None
    out["cold_start_ms_max"] = ms(ordered[-1]) if ordered else None
    out["cold_start_ms_min"] = ms(ordered[0]) if ordered else None
    for key, name in COLD_START_KEYS.items():
        if name is not None:
            values = starts[key]
            out[name] = ms(statistics.median(values)) if values else None
    return out


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def bench_floor(env: dict[str, str]) -> dict[str, Any]:
    """The two bare interpreters of the module's docstring, alive together, measured (after
    a first pair that fills the bytecode cache as the daemon's warm-up does)."""
    await floor_pair(env)
    return await floor_pair(env)


async def floor_pair(env: dict[str, str]) -> dict[str, Any]:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **env},
        )
        for code in (FLOOR_DAEMON, FLOOR_BUS)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT_S)
        daemon, bus = (Memory.of(proc.pid) for proc in procs)
        out = memory_keys(daemon, bus)
        out["unique_mb_total"] = pair_unique_mb([proc.pid for proc in procs])
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            await proc.wait()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    problems = Problems()
    host = {**host_info(), "loadavg_1m": round(os.getloadavg()[0], 2)}
    report: dict[str, Any] = {"bench": "footprint", "host": host, "runs": args.runs}
    report["pyc_cache"] = not args.no_pyc_cache
    configs = CONFIGS if args.config == "both" else (args.config,)
    with tempfile.TemporaryDirectory(prefix="vmc-bench-footprint-pyc-") as cache:
        env = pyc_env(None if args.no_pyc_cache else Path(cache))
        for config in configs:
            report[config] = await bench_config(config, args.runs, problems, env)
        floor = await bench_floor(env)
    report["floor"] = floor
    for config in configs:
        total = report[config].get("pss_mb_total")
        if total is not None and floor["pss_mb_total"]:
            report[config]["pss_ratio_to_floor"] = round(total / floor["pss_mb_total"], 2)
    report["problems"] = list(problems)
    return report


def human(report: dict[str, Any]) -> str:
    lines = []
    for name in (*CONFIGS, "floor"):
        part = report.get(name)
        if part is None:
            continue
        shown = ", ".join(f"{k}={v}" for k, v in part.items())
        lines.append(f"{name}: {shown}")
    lines.extend(f"problem: {p}" for p in report["problems"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--runs", type=int, default=5, help="cold starts per configuration")
    p.add_argument("--config", choices=(*CONFIGS, "both"), default="both")
    p.add_argument(
        "--no-pyc-cache",
        action="store_true",
        help="run vmcd with the environment as it is (no bytecode cache of the bench's own)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1:
        print("footprint: --runs must be at least 1", file=sys.stderr)
        return 2
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2) if args.json else human(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
