#!/usr/bin/env python3
"""How long this machine takes a CPU away from a real-time process that never sleeps.

The MDB benches count answers over 5 ms. On a virtual machine some of those are the host's:
it deschedules the guest's CPU (steal time), and then no process inside the guest runs,
however high its priority. This probe measures that floor with no vmc code at all: one
process, pinned to the CPU vmcd's bus process would use, at the bus process's SCHED_FIFO
priority, reads the monotonic clock in a tight loop and records every gap between two reads
longer than ``--gap-ms``. Inside the guest only interrupts and higher-priority kernel work
can cause such gaps; the rest is the host. Compare ``gaps_over_5ms`` per second with the
MDB benches' answers over 5 ms per second in the same minutes. The probe reads half the time
and sleeps the other half (see :func:`probe`): ``gaps_over_5ms_per_probed_s`` is the rate
while it reads.

Without the permission for SCHED_FIFO (root or CAP_SYS_NICE) the probe runs at normal
priority and says so (``realtime`` false): then every other process on the CPU makes gaps
too. Each run busies one CPU for ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _path in (str(ROOT), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from mdb_latency import choose_cpus, steal_ms  # noqa: E402

from vmc.config import MdbConfig  # noqa: E402

SPIN_S = 0.005


def probe(seconds: float, gap_s: float, spin_s: float) -> tuple[list[float], float]:
    """The gaps longer than ``gap_s`` between two clock reads, and the time spent reading.

    Reads for ``spin_s``, then sleeps as long: a real-time process that never sleeps is
    throttled by Linux (``sched_rt_runtime_us``, 50 ms of every second by default), which
    would be the probe's own gap, not the host's; the bus process sleeps between commands.
    """
    gaps: list[float] = []
    clock = time.perf_counter
    spun = 0.0
    end = clock() + seconds
    while True:
        now = start = clock()
        if now >= end:
            return gaps, spun
        stop = now + spin_s
        while now < stop:
            last, now = now, clock()
            if now - last > gap_s:
                gaps.append(now - last)
        spun += now - start
        time.sleep(spin_s)


def run(seconds: float, gap_ms: float, cpu: int | None, priority: int) -> dict[str, Any]:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        realtime = True
    except (PermissionError, OSError, AttributeError):
        realtime = False
    steal_before = steal_ms()
    started = time.perf_counter()
    gaps, spun = probe(seconds, gap_ms / 1000, SPIN_S)
    elapsed = time.perf_counter() - started
    steal_after = steal_ms()
    gaps_ms = sorted(g * 1000 for g in gaps)
    return {
        "seconds": round(elapsed, 2),
        "probed_s": round(spun, 2),
        "cpu": cpu,
        "realtime": realtime,
        "priority": priority if realtime else None,
        "gap_threshold_ms": gap_ms,
        "gaps": len(gaps_ms),
        "gaps_over_1ms": sum(g > 1 for g in gaps_ms),
        "gaps_over_5ms": sum(g > 5 for g in gaps_ms),
        "gaps_over_5ms_per_probed_s": round(sum(g > 5 for g in gaps_ms) / spun, 3)
        if spun
        else None,
        "gap_max_ms": round(gaps_ms[-1], 3) if gaps_ms else 0.0,
        "gaps_longest_ms": [round(g, 2) for g in gaps_ms[-5:]],
        "lost_ms": round(sum(gaps_ms), 1),
        "host_steal_ms": None
        if steal_before is None or steal_after is None
        else round(steal_after - steal_before, 1),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to probe")
    parser.add_argument("--gap-ms", type=float, default=0.2, help="the shortest gap recorded")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.gap_ms <= 0:
        parser.error("--seconds and --gap-ms must be positive")
    cpus = choose_cpus()
    report = run(
        args.seconds, args.gap_ms, None if cpus is None else cpus[0], MdbConfig().realtime_priority
    )
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['gaps_over_5ms']} gaps over 5 ms in {report['probed_s']} s of reading"
            f" (longest {report['gap_max_ms']} ms, realtime {report['realtime']},"
            f" steal {report['host_steal_ms']} ms)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
