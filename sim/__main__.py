"""vmc-sim: the simulated VMC, the demo, and trace replay.

vmc-sim demo [--sessions N] [--level 1|2|3]   the remote-vend flow: mosquitto, backend, vmcd, VMC
vmc-sim vmc [--port URL] [--sessions N]       the sim VMC against a reader on a port
vmc-sim replay TRACE [--port URL]             play a trace's VMC lines, report differences
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

from drivers.ports import open_port
from drivers.pty import PtyPair
from drivers.transport import MdbPort
from protocols.errors import VmcError
from sim.backend import Policy
from sim.daemon_proc import DaemonProcess
from sim.demo import cloud_demo
from sim.replay import replay_over_port
from sim.scenarios import Customers, Report, SessionResult, run_customers
from sim.trace import TraceRecorder, read_trace
from sim.vmc_master import TimingStats, VmcMaster
from vmc.journal import Journal


def _print_result(result: SessionResult) -> None:
    mark = "ok " if result.ok else "ERR"
    detail = f"  {result.detail}" if result.detail else ""
    print(f"session {result.number:4d} {mark} {result.customer:<13} -> {result.outcome}{detail}")


def summarise(report: Report, stats: TimingStats) -> str:
    times = sorted(stats.response_s)
    lines = [
        f"sessions: {len(report.results)}  ok: {report.sessions_ok}  errors: {len(report.errors)}",
        "outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(report.outcomes().items())),
    ]
    if times:
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        lines.append(
            f"answers: {len(times)}  p50 {statistics.median(times) * 1000:.3f} ms"
            f"  p99 {p99 * 1000:.3f} ms  max {times[-1] * 1000:.3f} ms"
        )
    lines.append(f"timing violations (5 ms window, 1 ms gap): {len(stats.violations)}")
    lines.extend(f"  {v}" for v in stats.violations[:10])
    return "\n".join(lines)


async def drive(
    port: MdbPort, args: argparse.Namespace, *, wait_s: float = 10.0
) -> tuple[Report, TimingStats] | None:
    """Initialise the reader on ``port`` and play ``args.sessions`` customers.

    None (after saying why on stderr) when the reader never behaved as a VMC requires.
    """
    recorder = TraceRecorder() if args.record is not None else None
    vmc = VmcMaster(port, recorder=recorder)
    try:

        async def init() -> object:
            return await vmc.initialise(level=args.level, wait_s=wait_s)

        print(f"reader initialised: {await init()}")
        rng = random.Random(args.seed)
        customers = Customers(vmc, rng, poll_period=args.poll_ms / 1000, init=init)
        report = await run_customers(customers, args.sessions, on_result=_print_result)
    except VmcError as exc:
        print(f"vmc-sim: {exc}", file=sys.stderr)
        return None
    finally:
        vmc.close()
        if recorder is not None:
            args.record.write_text(recorder.text(), encoding="utf-8")
    return report, vmc.stats


def books(path: Path) -> str:
    """What the daemon booked in its journal, by kind and vend type."""
    journal = Journal(path)
    try:
        counts = Counter(
            (r.kind, r.vend_type.value if r.vend_type else "cash") for r in journal.records()
        )
    finally:
        journal.close()
    rows = ", ".join(f"{kind} ({vend_type})={n}" for (kind, vend_type), n in sorted(counts.items()))
    return f"daemon's journal: {rows or 'empty'}"


async def demo(args: argparse.Namespace) -> int:
    if not args.local:
        return await cloud_demo(args)
    pair = PtyPair()
    with tempfile.TemporaryDirectory(prefix="vmc-demo-") as tmp:
        state = Path(args.state_dir) if args.state_dir else Path(tmp)
        daemon = DaemonProcess(pair, state, level=args.level, local_approval="accept")
        print(f"vmcd on {pair.device_url}, state and log in {state}")
        await daemon.start()
        try:
            result = await drive(pair.master, args)
        finally:
            code = await daemon.stop()
            pair.close()
        if result is None:
            return 1
        report, stats = result
        print(summarise(report, stats))
        print(books(state / "journal.sqlite3"))
        print(f"vmcd exited with {code}")
        if args.state_dir is not None:
            print(f"journal and log kept in {state}")
        return 0 if not report.errors and code == 0 else 1


def _open_sim_port(url: str | None) -> tuple[MdbPort, PtyPair | None]:
    if url is not None:
        return open_port(url), None
    pair = PtyPair()
    print(f"give the reader this port: {pair.device_url}", flush=True)
    return pair.master, pair


async def vmc_command(args: argparse.Namespace) -> int:
    port, pair = _open_sim_port(args.port)
    try:
        result = await drive(port, args, wait_s=args.wait_reader)
    finally:
        if pair is not None:
            pair.close()
    if result is None:
        return 1
    report, stats = result
    print(summarise(report, stats))
    return 0 if not report.errors else 1


async def replay_command(args: argparse.Namespace) -> int:
    lines = read_trace(Path(args.trace))
    port, pair = _open_sim_port(args.port)
    try:
        mismatches = await replay_over_port(port, lines, wait_s=args.wait)
    finally:
        if pair is not None:
            pair.close()
    for m in mismatches:
        print(m.report())
    print(f"# {len(mismatches)} answer(s) differ in kind from {args.trace}")
    return 0 if not mismatches else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmc-sim", description="vmc's simulated VMC")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("demo", "run vmcd on a pty pair and sell through it"),
        ("vmc", "run the simulated VMC against a reader"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--sessions", type=int, default=20, help="customers to play (20)")
        p.add_argument(
            "--level", type=int, choices=(1, 2, 3), default=3, help="the VMC's feature level"
        )
        p.add_argument("--seed", type=int, default=1, help="seed of the customer mix")
        p.add_argument("--poll-ms", type=float, default=25.0, help="poll period")
        p.add_argument("--record", type=Path, help="write the bus traffic as a trace")
        if name == "demo":
            p.add_argument("--state-dir", help="keep the daemon's journal and log here")
            p.add_argument("--mqtt", help="use this broker instead of a private mosquitto")
            p.add_argument(
                "--policy",
                choices=[p.value for p in Policy if p is not Policy.SILENT],
                default=Policy.POST_BILLING.value,
                help="how the simulated backend decides",
            )
            p.add_argument(
                "--local",
                action="store_true",
                help="no cloud: vmcd --local-approval accept (free vends)",
            )
        else:
            p.add_argument("--port", help="port URL; default: a new pty pair")
            p.add_argument(
                "--wait-reader",
                type=float,
                default=120.0,
                help="seconds to wait for the reader to answer its first RESET",
            )
    p = sub.add_parser("replay", help="replay a trace's VMC lines against a reader")
    p.add_argument("trace", help="a trace file in the corpus format")
    p.add_argument("--port", help="port URL; default: a new pty pair")
    p.add_argument("--wait", type=float, default=0.05, help="seconds to wait for each answer")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runner = {"demo": demo, "vmc": vmc_command, "replay": replay_command}[args.command]
    try:
        return asyncio.run(runner(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
