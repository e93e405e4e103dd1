#!/usr/bin/env python3
"""MDB answer latency of vmcd: the time from the VMC's last byte to the reader's first byte.

A VMC gives a peripheral 5 ms to start answering; a late answer counts as no answer. vmcd
keeps the MDB link in a bus process of its own (``vmc.services.bus_process``) so that the
daemon's other work (journal writes with fsync, logging, decisions) never sits between a
command and its answer, and that process asks for SCHED_FIFO so other load on the CPU does
not either. This benchmark checks both claims from the outside: the real daemon runs as a
subprocess on a pty pair and the simulated VMC (``sim.vmc_master``) polls it back to back,
with a full vend session (request, approval, success, session complete) every K polls.

Three phases, each with a fresh pty pair and daemon:

- ``idle``: nothing else running.
- ``busy``: the daemon logs at debug level and runs a vend session every 20 polls (journal
  fsyncs and log lines all the time), and a CPU hog shares the daemon's CPU. The daemon (and
  so its bus process) and the hog are pinned to one CPU and this process to another, so the
  measuring side is not the one delayed.
- ``socket``: as ``idle``, while a client process asks the daemon's control socket for
  ``status`` back to back, a new connection each time, as ``vmctl status`` in a loop would
  (``socket_client`` counts what it got). The client shares the daemon's CPU, pinned as in
  ``busy``. Nothing the socket does may delay an MDB answer: compare its percentiles with
  ``idle``'s (``--phase socket`` runs the two).

With ``--monitor on`` (or ``both``, each phase without then with it) the daemon runs with one
bus monitor listener (``bench/monitored_vmcd.py``): the bus process streams every exchange and
the daemon formats each as ``vmctl mdb monitor`` and ``vmctl mdb record`` would; the phase is
named ``idle+monitor`` or ``busy+monitor`` and reports the frames the listener got
(``monitor_frames``) and lost (``monitor_dropped``).

Every exchange's response time counts (polls and session commands) from the reader's
initialisation on; the RESET probes sent while vmcd is still starting do not (``startup_s``
says how long that took). ``realtime`` says whether the bus process got SCHED_FIFO (from the
daemon's ``bus_ready`` log line). On a virtual machine ``host_steal_ms`` is the CPU time the
hypervisor took from the guest during a phase: such stalls show up as late answers that no
scheduling inside the guest can prevent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from drivers.pty import PtyPair  # noqa: E402
from protocols.errors import VmcError  # noqa: E402
from sim.daemon_proc import DaemonProcess  # noqa: E402
from sim.scenarios import Customers  # noqa: E402
from sim.vmc_master import (  # noqa: E402
    RESPONSE_WINDOW_S,
    Answer,
    TimingStats,
    VmcMaster,
)

PHASES = ("idle", "busy", "socket")
PHASE_SETS = {"both": ("idle", "busy"), "socket": ("idle", "socket"), "all": PHASES}
MONITORED = ROOT / "bench" / "monitored_vmcd.py"
BUSY_SESSIONS_EVERY = 20
STARTUP_TIMEOUT_S = 10.0
HOG_CODE = "while True:\n    pass\n"
# The socket client: `status` over a new connection each time, until SIGTERM; then it prints
# how many answers and errors it had.
HAMMER_CODE = """
import signal, sys, time
from pathlib import Path
from vmc.control.client import ControlClient, NotRunningError
path, counts = Path(sys.argv[1]), [0, 0]
def stop(*_):
    print(*counts, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    try:
        with ControlClient(path) as client:
            client.call("status", timeout=10)
        counts[0] += 1
    except NotRunningError:
        time.sleep(0.05)
    except Exception:
        counts[1] += 1
        time.sleep(0.05)
"""
# (numerator, denominator) of each reported percentile, for exact nearest-rank indexes.
PERCENTILES = {"p50_ms": (50, 100), "p99_ms": (99, 100), "p999_ms": (999, 1000)}


class CountingVmc(VmcMaster):
    """The simulated VMC, counting every POLL it sends (loop, sessions and init alike)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.polls_sent = 0

    async def poll(self) -> Answer:
        self.polls_sent += 1
        return await super().poll()


@dataclass
class PhaseResult:
    name: str
    response_s: list[float] = field(default_factory=list)
    polls: int = 0
    sessions: int = 0
    sessions_ok: int = 0
    timeouts: int = 0
    other_errors: int = 0
    violations: int = 0
    first_problems: list[str] = field(default_factory=list)
    realtime: bool | None = None
    daemon_exit: int | None = None
    daemon_warnings: int = 0
    duration_s: float = 0.0
    startup_s: float | None = None
    steal_ms: float | None = None
    truncated: bool = False
    pinning: dict[str, int] | None = None
    monitor: dict[str, int] | None = None
    socket_client: dict[str, int] | None = None

    @property
    def errors(self) -> int:
        return (self.sessions - self.sessions_ok) + self.timeouts + self.other_errors

    def note(self, problem: str) -> None:
        if len(self.first_problems) < 5:
            self.first_problems.append(problem)


def nearest_rank(ordered: list[float], num: int, den: int) -> float:
    """The nearest-rank percentile num/den of an ascending, non-empty list."""
    rank = max(1, -(-len(ordered) * num // den))  # ceil(n * num / den) in integers
    return ordered[rank - 1]


def latency_stats(times_s: list[float]) -> dict[str, Any]:
    ordered = sorted(times_s)
    out: dict[str, Any] = {"answers": len(ordered)}
    for key, (num, den) in PERCENTILES.items():
        out[key] = round(nearest_rank(ordered, num, den) * 1000, 3) if ordered else None
    out["max_ms"] = round(ordered[-1] * 1000, 3) if ordered else None
    out["over_5ms"] = sum(t > RESPONSE_WINDOW_S for t in ordered)
    return out


def phase_summary(result: PhaseResult) -> dict[str, Any]:
    out: dict[str, Any] = {"polls": result.polls, **latency_stats(result.response_s)}
    out.update(
        sessions=result.sessions,
        sessions_ok=result.sessions_ok,
        errors=result.errors,
        timeouts=result.timeouts,
        timing_violations=result.violations,
        realtime=result.realtime,
        daemon_exit=result.daemon_exit,
        daemon_warnings=result.daemon_warnings,
        duration_s=round(result.duration_s, 2),
        startup_s=None if result.startup_s is None else round(result.startup_s, 3),
        host_steal_ms=result.steal_ms,
        truncated=result.truncated,
    )
    if result.pinning is not None:
        out["pinning"] = result.pinning
    if result.monitor is not None:
        out["monitor_frames"] = result.monitor["frames"]
        out["monitor_dropped"] = result.monitor["dropped"]
    if result.socket_client is not None:
        out["socket_client"] = result.socket_client
    if result.first_problems:
        out["first_problems"] = result.first_problems
    return out


def read_daemon_log(path: Path) -> tuple[bool | None, int, dict[str, int] | None]:
    """From vmcd's JSON-lines log: did every bus process get SCHED_FIFO; warnings logged; what
    the monitor listener got and lost (None without one)."""
    realtime: list[bool] = []
    warnings = 0
    monitor: dict[str, int] | None = None
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if record.get("event") == "bus_ready":
                realtime.append(record.get("realtime") is True)
            if record.get("level") in ("warning", "error", "critical"):
                warnings += 1
            if record.get("event") == "bench_monitor":
                monitor = {"frames": record["frames"], "dropped": record["dropped"]}
    return (all(realtime) if realtime else None), warnings, monitor


def cpu_s(pid: int) -> float:
    """CPU time (user + system) ``pid`` has used so far."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def steal_ms() -> float | None:
    """CPU time the hypervisor took from this VM so far (all CPUs), None where unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
        return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def choose_cpus() -> tuple[int, int] | None:
    """(daemon and hog CPU, benchmark CPU), or None on a single-CPU machine."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return cpus[0], cpus[1]


async def start_hog(cpu: int | None) -> asyncio.subprocess.Process:
    hog = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOG_CODE,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if cpu is not None:
        os.sched_setaffinity(hog.pid, {cpu})
    return hog


async def stop_hog(hog: asyncio.subprocess.Process) -> None:
    if hog.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            hog.kill()
    await hog.wait()


async def start_hammer(socket_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HAMMER_CODE,
        str(socket_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop_hammer(hammer: asyncio.subprocess.Process, seconds: float) -> dict[str, int]:
    """Stop the socket client; what it got (answers, errors, answers per second)."""
    with contextlib.suppress(ProcessLookupError):
        hammer.terminate()
    out, _ = await hammer.communicate()
    answers, errors = (int(n) for n in (out.split() or [b"0", b"0"])[:2])
    return {"answers": answers, "errors": errors, "per_s": round(answers / max(seconds, 1e-9))}


async def drive(
    vmc: CountingVmc,
    daemon: DaemonProcess,
    result: PhaseResult,
    *,
    polls: int,
    sessions_every: int,
    max_seconds: float,
    seed: int,
) -> None:
    """Initialise the reader, then poll back to back with a purchase every K polls."""

    async def init() -> object:
        return await vmc.initialise(level=3)

    customers = Customers(vmc, random.Random(seed), poll_period=0.0, init=init)
    result.startup_s = await vmc.wait_for_reader(STARTUP_TIMEOUT_S)
    vmc.stats = TimingStats()  # the probe's answer timed vmcd's start-up, not the bus
    await init()
    gc.collect()
    gc.freeze()  # keep full collections of start-up objects off the measuring side
    try:
        deadline = time.perf_counter() + max_seconds
        for i in range(1, polls + 1):
            if time.perf_counter() > deadline:
                result.truncated = True
                result.note(f"time budget of {max_seconds} s used up after {i - 1} polls")
                break
            if daemon.proc is not None and daemon.proc.returncode is not None:
                result.other_errors += 1
                result.note(f"vmcd exited with {daemon.proc.returncode} after {i - 1} polls")
                break
            try:
                await vmc.poll()
            except VmcError as exc:
                result.other_errors += 1
                result.note(f"poll {i}: {exc}")
            if sessions_every > 0 and i % sessions_every == 0:
                result.sessions += 1
                try:
                    session = await customers.run("purchase", result.sessions)
                except VmcError as exc:
                    result.note(f"session {result.sessions}: {exc}")
                    continue
                if session.ok:
                    result.sessions_ok += 1
                else:
                    result.note(f"session {session.number}: {session.outcome} {session.detail}")
    finally:
        gc.unfreeze()


async def run_phase(
    name: str,
    *,
    polls: int,
    sessions_every: int,
    max_seconds: float,
    seed: int,
    monitor: bool = False,
) -> PhaseResult:
    busy = name == "busy"
    result = PhaseResult(f"{name}+monitor" if monitor else name)
    hammer: asyncio.subprocess.Process | None = None
    loaded = busy or name == "socket"  # something shares the daemon's CPU
    cpus = choose_cpus() if loaded else None
    own_affinity = os.sched_getaffinity(0) if cpus is not None else None
    hog: asyncio.subprocess.Process | None = None
    vmc: CountingVmc | None = None
    pair = PtyPair()
    started = time.perf_counter()
    steal_before = steal_ms()
    with tempfile.TemporaryDirectory(prefix=f"vmc-bench-{name}-") as tmp:
        daemon = DaemonProcess(
            pair,
            Path(tmp),
            level=3,
            local_approval="accept",
            log_level="debug" if busy else "info",
            cpu=None if cpus is None else cpus[0],
            program=(str(MONITORED),) if monitor else ("-m", "vmc"),
        )
        try:
            if busy:
                hog = await start_hog(None if cpus is None else cpus[0])
            if cpus is not None:
                load = "hog_cpu" if busy else "socket_client_cpu"
                result.pinning = {"daemon_cpu": cpus[0], load: cpus[0], "bench_cpu": cpus[1]}
                os.sched_setaffinity(0, {cpus[1]})
            await daemon.start()
            if name == "socket":
                hammer = await start_hammer(Path(tmp) / "vmcd.sock")
                if cpus is not None:
                    os.sched_setaffinity(hammer.pid, {cpus[0]})
            vmc = CountingVmc(pair.master)
            await drive(
                vmc,
                daemon,
                result,
                polls=polls,
                sessions_every=sessions_every,
                max_seconds=max_seconds,
                seed=seed,
            )
        except VmcError as exc:
            result.other_errors += 1
            result.note(f"{type(exc).__name__}: {exc}")
        finally:
            if vmc is not None:
                vmc.close()
                result.polls = vmc.polls_sent
                result.response_s = list(vmc.stats.response_s)
                result.timeouts = vmc.stats.timeouts
                result.violations = len(vmc.stats.violations)
                for violation in vmc.stats.violations[:3]:
                    result.note(violation)
            if hammer is not None:
                elapsed = time.perf_counter() - started
                result.socket_client = await stop_hammer(hammer, elapsed)
            result.daemon_exit = await daemon.stop()
            if hog is not None:
                await stop_hog(hog)
            if own_affinity is not None:
                os.sched_setaffinity(0, own_affinity)
            result.realtime, result.daemon_warnings, result.monitor = read_daemon_log(
                daemon.log_path
            )
            pair.close()
    result.duration_s = time.perf_counter() - started
    steal_after = steal_ms()
    if steal_before is not None and steal_after is not None:
        result.steal_ms = round(steal_after - steal_before, 1)
    return result


def combine(results: list[PhaseResult]) -> dict[str, Any]:
    times = [t for r in results for t in r.response_s]
    out: dict[str, Any] = {"polls": sum(r.polls for r in results), **latency_stats(times)}
    out["sessions"] = sum(r.sessions for r in results)
    out["sessions_ok"] = sum(r.sessions_ok for r in results)
    out["errors"] = sum(r.errors for r in results)
    out["timeouts"] = sum(r.timeouts for r in results)
    out["timing_violations"] = sum(r.violations for r in results)
    flags = [r.realtime for r in results]
    out["realtime"] = None if None in flags else all(flags)
    out["duration_s"] = round(sum(r.duration_s for r in results), 2)
    out["phases"] = {r.name: phase_summary(r) for r in results}
    out["host"] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "machine": platform.machine(),
    }
    return out


def human(report: dict[str, Any]) -> str:
    lines = [
        "vmcd MDB answer latency over a pty (last VMC byte -> first answer byte)",
        f"host: {report['host']['nproc']} CPUs, Python {report['host']['python']}, "
        f"bus process SCHED_FIFO: {report['realtime']}",
    ]
    rows = [(name, p) for name, p in report["phases"].items()]
    rows.append(("all", report))
    lines.append(
        f"{'phase':<14}{'polls':>8}{'answers':>9}{'p50':>9}{'p99':>9}{'p99.9':>9}{'max':>9}"
        f"{'>5ms':>6}{'sessions':>10}{'errors':>8}"
    )
    for name, p in rows:

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        lines.append(
            f"{name:<14}{p['polls']:>8}{p['answers']:>9}{ms(p['p50_ms']):>9}"
            f"{ms(p['p99_ms']):>9}{ms(p['p999_ms']):>9}{ms(p['max_ms']):>9}"
            f"{p['over_5ms']:>6}{p['sessions_ok']:>5}/{p['sessions']:<4}{p['errors']:>8}"
        )
    lines.append("(times in ms; sessions ok/run)")
    for name, p in report["phases"].items():
        client = p.get("socket_client")
        if client is not None:
            lines.append(
                f"{name}: the socket client had {client['answers']} status answers"
                f" ({client['per_s']}/s) and {client['errors']} errors"
            )
    for name, p in report["phases"].items():
        lines.extend(f"{name}: {problem}" for problem in p.get("first_problems", []))
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    names = PHASE_SETS.get(args.phase, (args.phase,))
    monitoring = {"off": (False,), "on": (True,), "both": (False, True)}[args.monitor]
    results = []
    for name in names:
        every = args.busy_sessions_every if name == "busy" else args.sessions_every
        for monitor in monitoring:
            results.append(
                await run_phase(
                    name,
                    polls=args.polls,
                    sessions_every=every,
                    max_seconds=args.max_seconds,
                    seed=args.seed,
                    monitor=monitor,
                )
            )
    return combine(results)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--polls", type=int, default=20000, help="polls per phase")
    p.add_argument(
        "--sessions-every", type=int, default=200, help="a purchase every K polls (idle phase)"
    )
    p.add_argument(
        "--busy-sessions-every",
        type=int,
        default=BUSY_SESSIONS_EVERY,
        help="a purchase every K polls in the busy phase",
    )
    p.add_argument(
        "--phase",
        choices=(*PHASES, "both", "all"),
        default="both",
        help="both: idle and busy; socket: idle and socket; all: the three",
    )
    p.add_argument(
        "--monitor",
        choices=("off", "on", "both"),
        default="off",
        help="run the daemon with a bus monitor listener (both: each phase without, then with)",
    )
    p.add_argument("--max-seconds", type=float, default=75.0, help="polling time budget per phase")
    p.add_argument("--seed", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
