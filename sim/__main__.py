"""vmc-sim: the simulated VMC, the demo, and trace replay.

vmc-sim demo [--sessions N] [--level 1|2|3]   the remote-vend flow: mosquitto, backend, vmcd, VMC
vmc-sim demo --exe                            the same on an Executive machine (vmc the master)
vmc-sim demo --bridge                         vmc-bridge too, and a platform third party selling
vmc-sim vmc [--port URL] [--sessions N]       the sim VMC against a reader on a port
vmc-sim replay TRACE [--port URL]             play a trace's VMC lines, report differences
vmc-sim fleet [--machines N] [--broker NAME]  N simulated machines on one broker, remote vends

Exit codes: 0 when everything agreed, 1 when something did not (a check, a session, a reader
that never answered), 2 for a usage or start-up mistake (one line on stderr), 128 + the signal
number when SIGINT or SIGTERM stopped the run (everything it started is stopped first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import sys
from collections.abc import Callable, Coroutine
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from protocols.errors import ParseError, VmcError
from sim import StartError, checks
from sim.backend import Policy
from sim.brokers import KINDS
from sim.demo import cloud_demo, local_demo, play_customers, session_problems, summarise
from sim.demo_exe import demo_flags_for_exe, exe_demo
from sim.fleet import FleetPlan, run_fleet
from sim.ports import SimPort
from sim.replay import replay_over_port
from sim.scenarios import Report
from sim.trace import TraceLine, read_trace, recording
from sim.vmc_master import TimingStats, VmcMaster, measure_in_realtime
from vmc.config import MQTT_VERSIONS

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RECANCEL_S = 0.2
READER_WAIT_S = 120.0


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (exit 2), not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(
    kind: Callable[[str], float], low: float, high: float, what: str
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g}")
        return value

    return parse


def _positive_seconds(text: str) -> float:
    return _number(float, 0.001, 86400, "a number of seconds")(text)


def _mqtt_url(text: str) -> str:
    """The simulated backend speaks plain MQTT: mqtt://HOST[:PORT]."""
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "mqtt" or not parts.hostname or port == -1 or parts.path not in ("", "/"):
        raise argparse.ArgumentTypeError(f"{text!r} is not mqtt://HOST[:PORT]")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vmc-sim", description="vmc's simulated VMC")
    parser.add_argument("--version", action="version", version=f"vmc-sim {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("demo", "run vmcd on a pty pair and sell through it"),
        ("vmc", "run the simulated VMC against a reader"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument(
            "--sessions",
            type=_number(int, 1, 100_000, "a whole number"),
            default=20,
            help="customers to play, 1..100000 (20)",
        )
        p.add_argument(
            "--level", type=int, choices=(1, 2, 3), default=3, help="the VMC's feature level"
        )
        p.add_argument("--seed", type=int, default=1, help="seed of the customer mix")
        p.add_argument(
            "--poll-ms",
            type=_number(float, 1, 1000, "a number of milliseconds"),
            default=25.0,
            help="poll period, 1..1000 ms (25)",
        )
        p.add_argument("--record", type=Path, help="write the bus traffic as a trace")
        if name == "demo":
            p.add_argument(
                "--state-dir", help="keep the daemon's journal and log here (default: removed)"
            )
            p.add_argument(
                "--mqtt", type=_mqtt_url, help="use this broker instead of a private mosquitto"
            )
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
            p.add_argument(
                "--exe",
                action="store_true",
                help="an Executive machine: vmcd --exe with price holding, a simulated EXE VMC",
            )
            p.add_argument(
                "--bridge",
                action="store_true",
                help="vmc-bridge beside vmcd, and a third party of the Connectivity Platform"
                " that sells through it",
            )
        else:
            p.add_argument("--port", help="port URL; default: a new pty pair")
            p.add_argument(
                "--wait-reader",
                type=_positive_seconds,
                default=READER_WAIT_S,
                help=f"seconds to wait for the reader to answer a RESET ({READER_WAIT_S:g})",
            )
    p = sub.add_parser("replay", help="replay a trace's VMC lines against a reader")
    p.add_argument("trace", help="a trace file in the corpus format")
    p.add_argument("--port", help="port URL; default: a new pty pair")
    p.add_argument(
        "--wait", type=_positive_seconds, default=0.05, help="seconds to wait for each answer"
    )
    p.add_argument(
        "--wait-reader",
        type=_positive_seconds,
        help="seconds to repeat the first line until the reader answers (default:"
        f" {READER_WAIT_S:g} on a new pty pair; with --port, the reader is taken as running)",
    )
    _add_fleet(sub)
    return parser


_FLEET_COUNTS = (  # flag, least, most, default, what it is
    ("--machines", 1, 100_000, 100, "machines, each with its own MQTT session"),
    ("--workers", 1, 64, 2, "worker processes that share the machines"),
    ("--vends", 0, 1_000_000, 100, "remote vends on machines drawn at random"),
    ("--keepalive", 5, 3600, 30, "MQTT keepalive of every machine, in seconds"),
    ("--connects", 1, 1000, 32, "connects in flight per worker"),
)


def _add_fleet(sub: Any) -> None:
    p = sub.add_parser("fleet", help="many simulated machines on one broker, remote vends")
    for flag, least, most, default, what in _FLEET_COUNTS:
        p.add_argument(
            flag,
            type=_number(int, least, most, "a whole number"),
            default=default,
            help=f"{what}, {least}..{most} ({default})",
        )
    p.add_argument(
        "--rate",
        type=_number(float, 0.1, 10_000, "a number of vends a second"),
        default=20.0,
        help="vends started a second, 0.1..10000 (20)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--broker", choices=list(KINDS), default="mosquitto", help="start a private broker"
    )
    where.add_argument("--mqtt", type=_mqtt_url, help="use this broker instead")
    p.add_argument(
        "--mqtt-version",
        choices=MQTT_VERSIONS,
        default="auto",
        help="auto: 5 where the broker speaks it, else 3.1.1 (3.1.1 with --mqtt)",
    )
    p.add_argument(
        "--settle",
        type=_number(float, 0, 3600, "a number of seconds"),
        default=0.0,
        help="seconds between the last connect and the first vend, 0..3600 (0)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the machines drawn")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _version() -> str:
    try:
        return version("vmc")
    except PackageNotFoundError:
        return "unknown (not installed)"


# --- commands -----------------------------------------------------------------------------


async def demo(args: argparse.Namespace, cleanup: contextlib.AsyncExitStack) -> int:
    if args.bridge:
        return await _bridge_demo(args, cleanup)
    if args.exe:
        demo_flags_for_exe(args)
        return await exe_demo(args, cleanup)
    return await (local_demo if args.local else cloud_demo)(args, cleanup)


async def _bridge_demo(args: argparse.Namespace, cleanup: contextlib.AsyncExitStack) -> int:
    if args.local or args.exe:
        raise StartError("--bridge runs the cloud demo of an MDB machine: not with --local, --exe")
    try:
        from sim.demo_bridge import bridge_demo
    except ImportError as exc:
        extra = "pip install 'vmc[bridge]'"
        raise StartError(f"--bridge needs the bridge extra ({extra}): {exc}") from None
    return await bridge_demo(args, cleanup)


async def vmc_command(args: argparse.Namespace, cleanup: contextlib.AsyncExitStack) -> int:
    recorder = cleanup.enter_context(recording(args.record))
    sim = _open(args.port, cleanup)
    vmc = VmcMaster(
        sim.port, recorder=recorder, discard_unread=sim.pty.discard_unread if sim.pty else None
    )
    cleanup.callback(vmc.close)
    report = await play_customers(vmc, args, wait_s=args.wait_reader)
    print(summarise(report, vmc.stats))
    return checks.report(vmc_checks(report, vmc.stats))


def vmc_checks(report: Report, stats: TimingStats) -> list[checks.Check]:
    return [
        session_problems(report),
        stats.check(),
    ]


async def replay_command(args: argparse.Namespace, cleanup: contextlib.AsyncExitStack) -> int:
    lines = _read_trace(Path(args.trace))
    sim = _open(args.port, cleanup)
    reader_wait_s = args.wait_reader
    if sim.pty is not None and reader_wait_s is None:
        reader_wait_s = READER_WAIT_S
    mismatches = await replay_over_port(
        sim.port,
        lines,
        wait_s=args.wait,
        reader_wait_s=reader_wait_s,
        discard_unread=sim.pty.discard_unread if sim.pty else None,
    )
    for m in mismatches:
        print(m.report())
    print(f"# {len(mismatches)} answer(s) differ in kind from {args.trace}")
    return 0 if not mismatches else 1


def _read_trace(path: Path) -> list[TraceLine]:
    """The trace's lines; StartError (one line) when it cannot be read or holds none."""
    try:
        lines = read_trace(path)
    except IsADirectoryError:
        raise StartError(f"{path}: is a directory, not a trace") from None
    except OSError as exc:
        raise StartError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise StartError(f"{path}: not a text trace") from None
    except ParseError as exc:
        raise StartError(f"{path}: {exc}") from None
    if not lines:
        raise StartError(f"{path}: holds no trace lines")
    return lines


def _open(url: str | None, cleanup: contextlib.AsyncExitStack) -> SimPort:
    """The VMC's port; on a pty of its own, the path to give the reader is printed."""
    try:
        sim = SimPort.open(url)
    except VmcError as exc:
        raise StartError(str(exc)) from None
    cleanup.callback(sim.close)
    if sim.pty is not None:
        print(f"give the reader this port: pty://{sim.pty.device_path}")
        print(f"waiting for a reader on {sim.pty.device_path}", flush=True)
    return sim


async def fleet_command(args: argparse.Namespace, cleanup: contextlib.AsyncExitStack) -> int:
    plan = FleetPlan(
        machines=args.machines,
        workers=min(args.workers, args.machines),
        vends=args.vends,
        rate=args.rate,
        broker=args.broker,
        url=args.mqtt,
        mqtt_version=args.mqtt_version,
        keepalive=args.keepalive,
        connects=args.connects,
        settle_s=args.settle,
        seed=args.seed,
    )
    report = await run_fleet(plan, cleanup)
    print(report.as_json() if args.json else report.summary())
    return 0 if report.ok else 1


# --- running until done or stopped -------------------------------------------------------


Command = Callable[[argparse.Namespace, contextlib.AsyncExitStack], Coroutine[Any, Any, int]]


def run(command: Command, args: argparse.Namespace) -> int:
    """Run ``command``; SIGINT or SIGTERM stops it, then exit 128 + the signal's number.

    The command registers what it starts on a clean-up stack that is closed after it ends,
    however it ends. A stop cancels the command's work only, again and again until it ends
    (Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that meets a result), and
    never the clean-up: cutting that short is what leaves orphans and temporary folders.
    """

    async def supervised() -> int:
        loop = asyncio.get_running_loop()
        received: list[int] = []
        async with contextlib.AsyncExitStack() as cleanup:
            work = asyncio.create_task(command(args, cleanup))

            def stop(signum: int) -> None:
                if not received:
                    received.append(signum)
                if not work.done():
                    work.cancel()
                    loop.call_later(RECANCEL_S, stop, signum)

            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, stop, sig)
            await asyncio.wait({work})
            if received and not work.cancelled():
                work.exception()  # whatever failed as the run was stopped is part of the stop
        if not received:
            return work.result()
        name = signal.Signals(received[0]).name
        print(f"vmc-sim: stopped by {name}; everything it started has stopped", file=sys.stderr)
        return 128 + received[0]

    measure_in_realtime()
    try:
        return asyncio.run(supervised())
    except StartError as exc:
        print(f"vmc-sim: {exc}", file=sys.stderr)
        return 2
    except VmcError as exc:
        print(f"vmc-sim: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        commands: dict[str, Command] = {
            "demo": demo,
            "vmc": vmc_command,
            "replay": replay_command,
            "fleet": fleet_command,
        }
        command = commands[args.command]
        return run(command, args)
    except KeyboardInterrupt:  # Ctrl-C before the run's own handler was installed
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
