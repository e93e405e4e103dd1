"""vmctl: the field technician's command line.

``vmctl status``, ``txn list|show`` and ``events`` ask the running vmcd over its control socket
(:mod:`vmc.control`); ``vmctl config check FILE`` runs vmcd's own checks on a configuration.
``vmctl dex read`` reads the machine's audit over its DEX port now and saves it (through vmcd
when it runs, which owns the port then); ``vmctl dex parse FILE`` summarises an EVA-DTS audit
saved from a machine; ``vmctl dex delta OLD NEW`` says what was sold between two such reads.
With ``--json`` each prints JSON, a contract other tools rely on (keys are added, never
renamed); without it, tables and lines for people (:mod:`vmc.cli_views`). A file with several
audits is read as ``protocols.evadts.parse`` does: the first complete one (SE or DXE reached),
else the first. Exit status: 0 done; 2 for bad usage, an unreadable file or a file that holds
no audit, with one line on stderr; 1 when vmcd is not running or does not answer.

``vmctl stock ...`` and ``vmctl planogram ...`` read the stock and change it with the cloud's
own commands, through vmcd when it runs and from vmcd's journal when it does not
(:mod:`vmc.services.local_ops`). A refusal is one line and exit 2; no answer from a running vmcd
within ``--wait`` is one line and exit 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from protocols.errors import ConfigError, ParseError, PortError, VmcError

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from protocols.evadts.deltas import AuditDelta, Change
    from protocols.evadts.records import Audit, JsonObject
    from vmc.cloud import messages as m
    from vmc.cloud.topics import Topics
    from vmc.config import Config
    from vmc.control.client import ControlClient
    from vmc.control.protocol import Json
    from vmc.journal import Journal
    from vmc.services.local_ops import Answer

Handler: TypeAlias = Callable[[argparse.Namespace], int]
SubCommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_USAGE = 2
EXIT_NO_ANSWER = 1
EXIT_INTERRUPTED = 130
WAIT_S = 10.0
"""How long a stock operation waits for a running vmcd to take it."""
ANSWER_S = 10.0
"""How long vmctl waits for vmcd's answer to a question (status, txn, events)."""
TEST_VEND_MARGIN_S = 60.0
"""Beyond a test vend's session: the reader's wait for the vend result and vmcd's margin."""
MAX_REF = 256
"""A presented reference's longest, as the cloud's ``ref``."""
REPLY_GRACE_S = 2.0
"""An operation expires after ``--wait``; its answer may take this much longer to arrive."""
STARTING_S = 3.0
"""How long vmctl waits for the socket of a vmcd that holds its lock (it may be starting)."""
DEX_READ_S = 930.0
"""vmcd follows a read for 900 s at most; its answer may take a little longer."""
"""vmcd's error codes that mean the request was wrong (exit 2); others are exit 1."""
MAX_LOCAL_ID = 64
LINE_PATH = re.compile(r"lines\[(\d+)\](?:\.\w+)?")
"""A refusal's path to a line (``lines[2].amount``): vmctl names the argument instead."""


class _CliError(Exception):
    """A one-line reason to exit with status 2."""


class _Version(argparse.Action):
    """``--version``: the installed vmc's version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print vmctl's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib.metadata import version

        print(f"vmctl {version('vmc')}")
        parser.exit()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """vmctl's parser; given the command a line starts with, only that command's group.

    Building every command's options costs a Pi tens of milliseconds, most of a ``vmctl dex
    parse``; a line that starts with a command name needs only that group to parse the same.
    """
    parser = argparse.ArgumentParser(prog="vmctl", description="vmc field tool")
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--socket", help=SOCKET_HELP)
    parser.set_defaults(logs=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    only = COMMAND_GROUPS.get(command or "")
    for group in (only,) if only else dict.fromkeys(COMMAND_GROUPS.values()):
        group(commands)
    return parser


SOCKET_HELP = (
    "vmcd's control socket (default: $VMC_SOCKET, else daemon.control_socket of --config, else"
    " $RUNTIME_DIRECTORY/vmcd.sock, else STATE_DIR/vmcd.sock)"
)


def _daemon_options(parser: argparse.ArgumentParser) -> None:
    """Where vmcd is: its socket, or the configuration and state directory it derives from."""
    parser.add_argument("--socket", default=argparse.SUPPRESS, help=SOCKET_HELP)
    parser.add_argument(
        "--state-dir", help="vmcd's state directory; default: daemon.state_dir of --config"
    )
    parser.add_argument("--config", type=Path, help="vmcd's TOML configuration")


def add_daemon_commands(commands: SubCommands) -> None:
    """``vmctl status``, ``vmctl txn ...`` and ``vmctl events``: questions to a running vmcd."""
    status = commands.add_parser("status", help="what vmcd, the bus, the cloud, DEX are doing")
    _daemon_options(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=_status)
    txn = commands.add_parser(
        "txn", help="the journal's transactions", description="the journal's transactions"
    )
    txn_commands = txn.add_subparsers(dest="txn_command", metavar="COMMAND", required=True)
    listed = txn_commands.add_parser("list", help="the last transactions, or those from a day")
    _daemon_options(listed)
    listed.add_argument(
        "--limit", type=_count_of(500), default=20, help="at most N of them (1-500, default 20)"
    )
    listed.add_argument(
        "--from", dest="since", metavar="DATE", help="from this day (YYYY-MM-DD, machine time)"
    )
    listed.add_argument("--json", action="store_true", help="print one JSON object")
    listed.set_defaults(handler=_txn_list)
    shown = txn_commands.add_parser("show", help="one transaction, its history and refunds")
    shown.add_argument("txn_id", metavar="TXN_ID", help="its id, or a unique start of it")
    _daemon_options(shown)
    shown.add_argument("--json", action="store_true", help="print one JSON object")
    shown.set_defaults(handler=_txn_show)
    events = commands.add_parser(
        "events", help="what vmcd queued for the cloud (or booked without one)"
    )
    _daemon_options(events)
    events.add_argument(
        "--limit", type=_count_of(256, least=0), default=20, help="the last N (default 20)"
    )
    events.add_argument(
        "--follow", action="store_true", help="then new ones as they come, until Ctrl-C"
    )
    events.add_argument(
        "--json", action="store_true", help="one JSON object (with --follow: one per line)"
    )
    events.set_defaults(handler=_events)
    mdb = commands.add_parser("mdb", help="the MDB bus, live", description="the MDB bus, live")
    mdb_commands = mdb.add_subparsers(dest="mdb_command", metavar="COMMAND", required=True)
    monitor = mdb_commands.add_parser("monitor", help="each exchange as it happens, decoded")
    _daemon_options(monitor)
    monitor.add_argument(
        "--count", type=_count_of(10**9), help="stop after N exchanges (default: until Ctrl-C)"
    )
    monitor.add_argument("--json", action="store_true", help="one JSON object per exchange")
    monitor.set_defaults(handler=_mdb_monitor)
    record = mdb_commands.add_parser("record", help="write the exchanges to FILE as a trace")
    record.add_argument("file", type=Path, metavar="FILE", help="the trace file to write")
    _daemon_options(record)
    record.add_argument(
        "--count", type=_count_of(10**9), help="stop after N exchanges (default: until Ctrl-C)"
    )
    record.set_defaults(handler=_mdb_record)
    vend = commands.add_parser(
        "test-vend", help="a real test vend of one selection, approved by the machine at 0"
    )
    vend.add_argument("selection", type=_count_of(65535, least=0), metavar="SELECTION")
    _daemon_options(vend)
    vend.add_argument(
        "--timeout",
        type=_count_of(600),
        default=60,
        help="seconds the session waits for the selection (1-600, default 60)",
    )
    vend.add_argument("--json", action="store_true", help="print one JSON object")
    vend.set_defaults(handler=_test_vend)
    present = commands.add_parser(
        "present",
        help="a customer's reference (badge, card) presented on the machine: what a reader runs",
    )
    present.add_argument("ref", type=_ref, metavar="REF", help="the reference, 1-256 characters")
    _daemon_options(present)
    present.add_argument("--json", action="store_true", help="print one JSON object")
    present.set_defaults(handler=_present)
    selftest = commands.add_parser(
        "selftest", help="what vmc learned about this machine, and what that means"
    )
    _daemon_options(selftest)
    selftest.add_argument("--json", action="store_true", help="print one JSON object")
    selftest.set_defaults(handler=_selftest)


def add_config_commands(commands: SubCommands) -> None:
    config = commands.add_parser("config", help="vmcd's configuration")
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = config_commands.add_parser("check", help="vmcd's own checks, without starting it")
    check.add_argument("file", type=Path, metavar="FILE", help="a vmcd TOML configuration")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(handler=_config_check)
    keygen = commands.add_parser(
        "keygen",
        help="make the device's signing key ([cloud] device_key_file)",
        description="Write a new Ed25519 key for the device to sign what it publishes with,"
        " and print its public key for the backend.",
    )
    keygen.add_argument("file", type=Path, metavar="FILE", help="where to write it (mode 0600)")
    keygen.add_argument("--json", action="store_true", help="print one JSON object")
    keygen.set_defaults(handler=_keygen)


def _count_of(most: int, least: int = 1) -> Callable[[str], int]:
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(f"{text} is outside {least}..{most}")
        return value

    return count


def add_dex_commands(commands: SubCommands) -> SubCommands:
    """``vmctl dex ...``; returns its subcommands so others (``read``) can be added beside."""
    dex = commands.add_parser(
        "dex", help="EVA-DTS audits (DEX reads)", description="EVA-DTS audits (DEX reads)"
    )
    dex_commands = dex.add_subparsers(dest="dex_command", metavar="COMMAND", required=True)
    parse = dex_commands.add_parser("parse", help="summarise the audit in a file")
    parse.add_argument("file", type=Path, help="a saved audit (any line endings, junk allowed)")
    parse.add_argument("--json", action="store_true", help="print one JSON object")
    parse.set_defaults(handler=_dex_parse, logs=False)  # a file in, a summary out: fast
    change = dex_commands.add_parser("delta", help="what happened between two reads")
    change.add_argument("old", type=Path, help="the earlier read")
    change.add_argument("new", type=Path, help="the later read of the same machine")
    change.add_argument("--json", action="store_true", help="print one JSON object")
    change.set_defaults(handler=_dex_delta, logs=False)
    read = dex_commands.add_parser("read", help="read the machine's audit now and save it")
    read.add_argument(
        "--port",
        help="DEX port URL (uart:///dev/ttyUSB0, pty://...); default: dex.port of --config",
    )
    read.add_argument("--protocol", choices=("ucs", "ddcmp"), help="default: ucs or dex.protocol")
    read.add_argument("--config", type=Path, help="vmcd's TOML configuration, for the defaults")
    read.add_argument(
        "--state-dir",
        help="vmcd's state directory (default: daemon.state_dir of --config); while vmcd runs"
        " there, it makes the read",
    )
    read.add_argument("--socket", default=argparse.SUPPRESS, help=SOCKET_HELP)
    read.add_argument(
        "--out", type=Path, help="where to save the audit; default: ./audit-<UTC time>.dex"
    )
    read.add_argument("--json", action="store_true", help="print the parse summary as JSON")
    read.set_defaults(handler=_dex_read)
    return dex_commands


def add_stock_commands(commands: SubCommands) -> None:
    """``vmctl stock ...`` and ``vmctl planogram ...``."""
    stock = commands.add_parser(
        "stock", help="stock levels, refills, inventory", description="the machine's stock"
    )
    stock_commands = stock.add_subparsers(dest="stock_command", metavar="COMMAND", required=True)
    show = stock_commands.add_parser("show", help="levels, alarms and service flags")
    _journal_options(show)
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=_stock_show)
    refill = stock_commands.add_parser("refill", help="load (+) or unload (-) by amounts")
    refill.add_argument(
        "lines", nargs="+", metavar="KEY=AMOUNT", help="selection number or ingredient id"
    )
    _operation_options(refill, "stock.refill")
    inventory = stock_commands.add_parser("inventory", help="set the levels counted")
    inventory.add_argument(
        "lines", nargs="+", metavar="KEY=LEVEL", help="selection number or ingredient id"
    )
    _operation_options(inventory, "stock.inventory")
    restock = stock_commands.add_parser("restock", help="every selection and ingredient to par")
    _operation_options(restock, "stock.restock")
    planogram = commands.add_parser(
        "planogram", help="what the machine sells", description="the planogram in force"
    )
    planogram_commands = planogram.add_subparsers(
        dest="planogram_command", metavar="COMMAND", required=True
    )
    load = planogram_commands.add_parser("set", help="load a planogram document (JSON)")
    load.add_argument("file", type=Path, help="the document planogram.set takes, as JSON")
    _operation_options(load, "planogram.set")
    current = planogram_commands.add_parser("show", help="print the planogram in force (JSON)")
    _journal_options(current)
    current.set_defaults(handler=_planogram_show)


def _journal_options(parser: argparse.ArgumentParser) -> None:
    _daemon_options(parser)


def _operation_options(parser: argparse.ArgumentParser, op: str) -> None:
    """The options every stock operation takes; ``op``: the cloud's op it is (``m.Op``)."""
    _journal_options(parser)
    parser.add_argument(
        "--id", type=_local_id, help="the operation's id (a retry with it changes nothing)"
    )
    parser.add_argument(
        "--wait",
        type=_seconds,
        default=WAIT_S,
        help=f"seconds to wait for vmcd (default {WAIT_S:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(handler=_stock_operation, op=op)


COMMAND_GROUPS: dict[str, Callable[[SubCommands], object]] = {
    **dict.fromkeys(
        ("status", "txn", "events", "mdb", "test-vend", "present", "selftest"), add_daemon_commands
    ),
    "dex": add_dex_commands,
    **dict.fromkeys(("stock", "planogram"), add_stock_commands),
    **dict.fromkeys(("config", "keygen"), add_config_commands),
}
"""Each top-level command, by the function that adds its group (in ``vmctl --help`` order)."""


def _local_id(text: str) -> str:
    if not 0 < len(text) <= MAX_LOCAL_ID or not text.isprintable() or " " in text:
        raise argparse.ArgumentTypeError(f"use 1..{MAX_LOCAL_ID} printable characters, no spaces")
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 3600]")
    return value


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(words[0] if words else None)
        args = parser.parse_args(words)
        if args.logs:  # a command that runs vmc's services: their log lines go to stderr
            from vmc.logs import configure_logging

            configure_logging("warning", sys.stderr)  # stdout carries the output only
        handler: Handler = args.handler
        return handler(args)
    except _CliError as exc:
        return _say(exc, EXIT_USAGE)
    except VmcError as exc:
        return _say(exc, _exit_status(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # ``vmctl events --follow | head``: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _exit_status(exc: VmcError) -> int:
    """The status for an error that ended a command: 2 when the request was wrong, 1 when vmcd
    is not there or could not answer. The control modules load here, not on every start."""
    from vmc.control.client import NoAnswerError, NoReplyError, NotRunningError
    from vmc.control.protocol import ControlError, ErrorCode

    if isinstance(exc, ControlError):  # vmcd's answer: the request was wrong, or vmcd could not
        usage = exc.code in (ErrorCode.BAD_ARGS, ErrorCode.UNKNOWN_COMMAND, "not_found")
        return EXIT_USAGE if usage else EXIT_NO_ANSWER
    if isinstance(exc, NoAnswerError | NotRunningError | NoReplyError):
        return EXIT_NO_ANSWER
    return EXIT_USAGE


def _say(exc: Exception, code: int) -> int:
    print(f"vmctl: {' '.join(str(exc).split())}", file=sys.stderr)
    return code


def _load(path: Path) -> tuple[Audit, int]:
    """The audit a file's reader should use, and how many audits the file holds."""
    from protocols.evadts import choose, parse_all

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        audits = parse_all(data)
    except ParseError as exc:
        raise _CliError(f"{path}: {exc}") from exc
    return choose(audits), len(audits)


def _dex_parse(args: argparse.Namespace) -> int:
    from protocols.evadts.records import Sales

    audit, count = _load(args.file)
    if args.json:
        summary: JsonObject = audit.to_json()
        summary["audits"] = count
        print(json.dumps(summary))
        return 0
    machine = audit.machine
    decimals = audit.currency.decimals
    paid = audit.paid or Sales()
    print(
        f"machine {machine.serial or '-'} ({machine.model or 'no model'}),"
        f" location {machine.location or '-'}"
    )
    state = "complete" if audit.complete else "incomplete"
    print(f"audit: {state}, G85 {audit.crc.value}, {count} audit(s) in the file")
    print(
        f"paid since init: {_count(paid.vends_init)} vends, {_money(paid.value_init, decimals)};"
        f" since reset: {_count(paid.vends_reset)} vends, {_money(paid.value_reset, decimals)}"
    )
    print(
        f"{len(audit.products)} products, {len(audit.events)} logged events,"
        f" {len(audit.event_counters)} event counters, {len(audit.other)} other records"
    )
    _print_warnings(audit.warnings)
    return 0


def _dex_read(args: argparse.Namespace) -> int:
    """Read over DEX now: a progress line on a terminal, the raw audit saved, a summary.

    While vmcd runs on the state directory it owns the DEX port: it makes the read (one read
    for the technician and the cloud) unless it has no DEX port; otherwise vmctl reads.
    """
    config = _config(args)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or Path(f"audit-{stamp}.dex")
    _check_writable(out)  # before the read: a technician should not wait for nothing
    raw = _read_by_vmcd(args, config)
    if raw is None:
        raw = _read_port(args, config)
    try:
        out.write_bytes(raw)
    except OSError as exc:
        raise _CliError(f"cannot write {out}: {exc.strerror}") from exc
    print(f"saved {len(raw)} bytes to {out}", file=sys.stderr)
    args.file = out
    return _dex_parse(args)


def _read_port(args: argparse.Namespace, config: Config) -> bytes:
    import asyncio

    from drivers.dex_port import open_dex_port
    from protocols.dex import DexError
    from vmc import cli_views as views
    from vmc.services.dex_read import read_audit

    dex = config.dex
    url = args.port or dex.port
    if url is None:
        raise _CliError("no DEX port: give --port URL or set dex.port in --config")
    protocol = args.protocol or dex.protocol
    try:
        port = open_dex_port(url)
    except PortError as exc:
        raise _CliError(str(exc)) from exc
    try:
        with views.progress(f"reading {url} ({protocol})") as show:
            return asyncio.run(
                read_audit(
                    port,
                    protocol=protocol,
                    comm_id=dex.comm_id,
                    on_progress=lambda received: show(received, None),
                )
            )
    except DexError as exc:
        raise _CliError(f"read failed at {exc.step}: {exc.reason}") from exc
    except PortError as exc:
        raise _CliError(str(exc)) from exc
    finally:
        port.close()


def _read_by_vmcd(args: argparse.Namespace, config: Config) -> bytes | None:
    """The audit as a running vmcd read it for us; None when no vmcd runs on the state
    directory, or it reads no DEX port (then we read the port ourselves)."""
    import base64

    from vmc import cli_views as views
    from vmc.cloud import messages as m
    from vmc.control.client import NoAnswerError, NoReplyError
    from vmc.control.protocol import ControlError

    client = _daemon_if_running(args, config)
    if client is None:
        return None

    def told(event: Mapping[str, Json]) -> None:
        now = event.get("progress")
        if isinstance(now, dict):
            show(int(now["received"]), int(now["blocks"]))

    with client, views.progress("vmcd reads its DEX port") as show:
        try:
            result = client.stream("dex.read", {}, told, timeout=DEX_READ_S)
        except ControlError as exc:
            if exc.code == m.ErrorCode.NO_DEX_PORT:
                return None
            raise _CliError(f"vmcd refused the read ({exc.code}): {exc.message}") from exc
        except NoReplyError as exc:
            raise NoAnswerError(f"vmcd stopped before the read finished ({exc})") from exc
    if not result["ok"]:
        error = result["error"]
        raise _CliError(f"read failed at {error['step']}: {error['reason']}")
    return base64.b64decode(result["audit"])


def _check_writable(out: Path) -> None:
    directory = out.parent
    if out.is_dir():
        raise _CliError(f"--out {out} is a directory; give a file name")
    if not directory.is_dir():
        raise _CliError(f"--out {out}: no directory {directory}")
    if not os.access(directory, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise _CliError(f"--out {out}: not writable")


def _dex_delta(args: argparse.Namespace) -> int:
    from protocols.evadts.deltas import delta

    old, _ = _load(args.old)
    new, _ = _load(args.new)
    result = delta(old, new)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    _print_delta(result)
    return 0


def _print_delta(result: AuditDelta) -> None:
    d = result.decimals
    print(f"new baseline: {'yes' if result.baseline_reset else 'no'}")
    for label, change in (
        ("paid", result.paid),
        ("cash sales", result.cash),
        ("cash in", result.cash_in),
        ("cash out", result.cash_out),
        ("cashless", result.cashless),
        ("cashless 2", result.cashless2),
        ("tokens", result.tokens),
        ("test vends", result.test),
        ("free vends", result.free),
    ):
        if change.vends is not None or change.value is not None:
            print(f"{label}: {_change(change, d)}")
    sold = [s for s in result.selections if s.change.vends]
    if sold:
        print("selections: " + ", ".join(f"{s.selection}: {_change(s.change, d)}" for s in sold))
    codes = [e.code for e in result.new_events]
    codes.extend(f"{i.code} +{i.increase}" for i in result.event_increases)
    if codes:
        print("new events: " + ", ".join(codes))
    _print_warnings(result.warnings)


def _change(change: Change, decimals: int) -> str:
    vends = "" if change.vends is None else f"{change.vends} vends, "
    return f"{vends}{_money(change.value, decimals)} ({change.basis.value})"


def _print_warnings(warnings: tuple[str, ...]) -> None:
    for warning in warnings:
        print(f"warning: {warning}")


def _count(number: int | None) -> str:
    return "-" if number is None else str(number)


def _money(minor: int | None, decimals: int) -> str:
    """Minor units shown in major units, the decimal point where ID401 puts it."""
    from vmc import cli_views as views

    return views.money(minor, decimals)


# --- stock and planogram -------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    """vmcd's configuration (``--config``), its state directory from ``--state-dir`` if given."""
    from vmc.config import load_config

    try:
        return load_config(args.config, {"daemon.state_dir": args.state_dir})
    except ConfigError as exc:
        raise _CliError(str(exc)) from exc


@contextmanager
def _journal(config: Config) -> Iterator[Journal]:
    """vmcd's journal; a missing state directory or journal is a mistake, never created."""
    import sqlite3

    from vmc.journal import JOURNAL_NAME, Journal

    state_dir = config.daemon.state_dir
    if not state_dir.is_dir():
        raise _CliError(f"no state directory {state_dir}: give vmcd's --state-dir or --config")
    path = state_dir / JOURNAL_NAME
    if not path.is_file():
        raise _CliError(f"no journal in {state_dir}: vmcd has not run there (check --state-dir)")
    try:
        journal = Journal(path)
    except sqlite3.Error as exc:
        raise _CliError(f"cannot open {path}: {exc}") from exc
    try:
        yield journal
    finally:
        journal.close()


def _stock_show(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from vmc.stock_view import stock_view

    config = _config(args)
    client = _daemon_if_running(args, config)
    if client is not None:
        with client:
            view = client.call("stock.show", timeout=ANSWER_S)
    else:
        with _journal(config) as journal:
            view = stock_view(journal.load_stock())
    if args.json:
        print(json.dumps(view))
        return 0
    if view["planogram_version"] is None:
        print("no planogram: load one with vmctl planogram set FILE")
        return 0
    zone = ZoneInfo(config.daemon.timezone)
    print(
        f"planogram {view['planogram_version']}, need loading: "
        f"{'yes' if view['need_loading'] else 'no'}, last loading: "
        f"{_when(view['last_loading'], zone)}, last sale: {_when(view['last_sale'], zone)}"
    )
    rows: list[tuple[str, ...]] = [
        ("SELECTION", "PRODUCT", "LEVEL", "CAPACITY", "PAR", "ALARM", "CONDITION", "SOLD")
    ]
    for sel in view["selections"]:
        recipe = " + ".join(f"{r['amount']} {r['ingredient']}" for r in sel["recipe"])
        rows.append(
            (
                str(sel["selection"]),
                sel["name"] or sel["product"],
                *(_cell(sel[k]) for k in ("level", "capacity", "par_level", "alarm_level")),
                sel["condition"] or f"recipe: {recipe}",
                _cell(sel["sales_since_refill"]),
            )
        )
    _print_table(rows)
    if view["ingredients"]:
        print()
        kept: list[tuple[str, ...]] = [
            ("INGREDIENT", "UNIT", "LEVEL", "CAPACITY", "PAR", "ALARM", "CONDITION")
        ]
        kept.extend(
            (
                i["ingredient"],
                i["unit"],
                *(_cell(i[k]) for k in ("level", "capacity", "par_level", "alarm_level")),
                i["condition"],
            )
            for i in view["ingredients"]
        )
        _print_table(kept)
    return 0


def _planogram_show(args: argparse.Namespace) -> int:
    config = _config(args)
    client = _daemon_if_running(args, config)
    if client is not None:
        with client:
            document = client.call("planogram.show", timeout=ANSWER_S)
    else:
        with _journal(config) as journal:
            planogram = journal.load_stock().planogram
        document = None if planogram is None else planogram.to_mapping()
    if document is None:
        raise _CliError("no planogram yet: load one with vmctl planogram set FILE")
    print(json.dumps(document, indent=2))
    return 0


def _stock_operation(args: argparse.Namespace) -> int:
    """Build the cloud's command for the operation and have it applied (by vmcd if it runs)."""
    from vmc.cloud import messages as m
    from vmc.cloud.outbox import new_id
    from vmc.logs import configure_logging

    op = m.Op(args.op)
    command: dict[str, Any] = {"id": args.id or new_id(), "op": op.value}
    given: list[str] = getattr(args, "lines", [])
    if op is m.Op.PLANOGRAM_SET:
        command["planogram"] = _read_json(args.file)
    elif given:
        quantity = "amount" if op is m.Op.STOCK_REFILL else "level"
        command["lines"] = [_line(text, quantity) for text in given]
    config = _config(args)
    configure_logging("error", sys.stderr)  # the service's warnings are vmcd's; we say it below
    answer = _apply(args, config, command)
    reply = answer.reply
    if not reply["ok"]:
        message = LINE_PATH.sub(lambda found: repr(given[int(found[1])]), reply["message"])
        raise _CliError(f"refused ({reply['code']}): {message}")
    _print_result(command["id"], op, answer, as_json=args.json)
    return 0


def _apply(args: argparse.Namespace, config: Config, command: dict[str, Any]) -> Answer:
    """Have ``command`` applied: by vmcd over its socket when it runs, else by us, holding the
    state directory's lock (a vmcd starting meanwhile waits for it)."""
    import sqlite3

    from vmc.control.client import NoAnswerError, NoReplyError
    from vmc.services.local_ops import Answer, LocalOps
    from vmc.services.stock_book import StockBook
    from vmc.state_lock import try_lock

    command["expires"] = time.time() + args.wait  # vmcd refuses it later: no late surprise
    deadline = time.monotonic() + args.wait
    while True:
        client = _daemon_if_running(args, config)
        if client is not None:
            with client:
                try:
                    result = client.call(
                        "operation", {"command": command}, timeout=args.wait + REPLY_GRACE_S
                    )
                except NoReplyError as exc:
                    raise NoAnswerError(
                        f"no answer from vmcd to operation {command['id']} within"
                        f" {args.wait:g} s ({exc}); run it again with --id {command['id']}:"
                        " a repeat says whether it was applied, and applies it once at most"
                    ) from exc
            return Answer(result["reply"], bool(result["repeated"]))
        with _journal(config) as journal:
            try:
                lock = try_lock(config.daemon.state_dir)
                if lock is not None:
                    with lock:  # vmcd is not running: we are the writer until we let go
                        stock = StockBook(journal, _topics(config))
                        return LocalOps(journal, stock).apply(command)
            except PermissionError as exc:
                raise _not_vmcd_user(exc.filename, exc.strerror) from exc
            except sqlite3.Error as exc:
                raise _not_vmcd_user(journal.path, str(exc)) from exc
        if time.monotonic() >= deadline:
            raise NoAnswerError(f"vmcd did not take operation {command['id']}; nothing changed")
        time.sleep(0.05)


def _not_vmcd_user(path: object, reason: str | None) -> _CliError:
    return _CliError(f"{path}: {reason}; run vmctl as vmcd's user")


def _topics(config: Config) -> Topics | None:
    """The cloud's topics when one is configured: the operation's events are queued for it."""
    from vmc.cloud.topics import Topics

    cloud = config.cloud
    if cloud.url is None or cloud.device_id is None:
        return None
    return Topics(cloud.device_id, cloud.topic_prefix)


def _line(text: str, quantity: str) -> dict[str, Any]:
    """``KEY=N``: KEY a selection number, else an ingredient id (``ingredient:ID`` for one
    that looks like a number); N a whole number, signed for a refill."""
    key, sep, number = text.rpartition("=")
    try:
        value = int(number)
    except ValueError:
        value = None
    if not sep or not key or value is None:
        raise _CliError(f"{text!r}: give KEY={quantity.upper()}, e.g. 12=5 or beans=-200")
    if key.isdigit():
        return {"selection": int(key), quantity: value}
    return {"ingredient": key.removeprefix("ingredient:"), quantity: value}


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise _CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise _CliError(f"{path}: not UTF-8 text") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _CliError(f"{path}: not valid JSON: {exc}") from exc


def _print_result(op_id: str, op: m.Op, answer: Answer, *, as_json: bool) -> None:
    result = answer.reply["result"]
    if as_json:
        print(json.dumps({"id": op_id, "op": op.value, "repeated": answer.repeated, **result}))
        return
    again = " (this id was used before: its first reply; nothing changed now)"
    print(
        f"{op.value} {op_id}: {result['changed']} level(s) changed; planogram"
        f" {_cell(result['planogram_version'])}, need loading:"
        f" {'yes' if result['need_loading'] else 'no'}{again if answer.repeated else ''}"
    )
    for change in result["changes"]:
        key = (
            f"selection {change['selection']}"
            if change["selection"] is not None
            else f"ingredient {change['ingredient']}"
        )
        print(f"  {key}: {change['before']} -> {change['after']} ({change['reason']})")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _when(at: float | None, zone: ZoneInfo) -> str:
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(at, zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def _print_table(rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; numbers (and "-" for none) right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(width) if cell == "-" or cell.lstrip("-").isdigit() else cell.ljust(width)
            for cell, width in zip(row, widths, strict=True)
        ]
        print("  ".join(cells).rstrip())


# --- the running vmcd ----------------------------------------------------------------------------


def _socket_path(args: argparse.Namespace, config: Config) -> Path:
    """``--socket``, else ``VMC_SOCKET``, else where vmcd puts it for this configuration."""
    from vmc.config import control_socket_path

    given = getattr(args, "socket", None) or os.environ.get("VMC_SOCKET")
    if given:
        return Path(given)
    return control_socket_path(config.daemon, os.environ)


def _daemon(args: argparse.Namespace) -> ControlClient:
    """A connection to the running vmcd (:class:`NotRunningError` when there is none)."""
    from vmc.control.client import ControlClient

    return ControlClient(_socket_path(args, _config(args)))


def _daemon_if_running(args: argparse.Namespace, config: Config) -> ControlClient | None:
    """A connection to vmcd if it runs on the state directory, None if it does not.

    No socket while the state directory's lock is held means vmcd is starting (or serves its
    socket elsewhere): vmctl waits a moment for it rather than touch what vmcd owns.
    """
    from vmc.control.client import ControlClient, NoAnswerError, NotRunningError
    from vmc.state_lock import LOCK_NAME

    path = _socket_path(args, config)
    deadline = time.monotonic() + STARTING_S
    while True:
        try:
            return ControlClient(path)
        except NotRunningError:
            pass
        if not _locked(config.daemon.state_dir):
            return None
        if time.monotonic() >= deadline:
            raise NoAnswerError(
                f"vmcd holds {config.daemon.state_dir / LOCK_NAME} but nothing answers on {path};"
                " give vmctl the --socket (or --config) vmcd has"
            )
        time.sleep(0.1)


def _locked(state_dir: Path) -> bool:
    """Whether a vmcd holds the state directory's lock now."""
    from vmc.journal import JOURNAL_NAME
    from vmc.state_lock import try_lock

    if not (state_dir / JOURNAL_NAME).is_file():
        return False  # vmcd has never run there
    try:
        lock = try_lock(state_dir)
    except PermissionError as exc:
        raise _not_vmcd_user(exc.filename, exc.strerror) from exc
    if lock is None:
        return True
    lock.release()
    return False


def _ask(args: argparse.Namespace, cmd: str, given: Mapping[str, Json] | None = None) -> Any:
    client = _daemon(args)
    with client:
        return client.call(cmd, given, timeout=ANSWER_S)


def _shown(answer: dict[str, Json], as_json: bool, view: Callable[[dict[str, Json]], None]) -> int:
    """vmcd's answer as JSON for scripts, or through ``view`` for people."""
    if as_json:
        print(json.dumps(answer))
    else:
        view(answer)
    return 0


def _status(args: argparse.Namespace) -> int:
    from vmc import cli_views as views

    return _shown(_ask(args, "status"), args.json, views.print_status)


def _txn_list(args: argparse.Namespace) -> int:
    from vmc import cli_views as views

    page = _ask(args, "txn.list", {"limit": args.limit, "from": args.since})
    return _shown(page, args.json, views.print_txns)


def _txn_show(args: argparse.Namespace) -> int:
    from vmc import cli_views as views

    return _shown(_ask(args, "txn.show", {"txn_id": args.txn_id}), args.json, views.print_txn)


def _events(args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfo

    from vmc import cli_views as views
    from vmc.control.client import NoAnswerError

    client = _daemon(args)
    with client:
        if not args.follow:
            answer = client.call("events", {"limit": args.limit}, timeout=ANSWER_S)
            if args.json:
                print(json.dumps(answer))
            else:
                zone = ZoneInfo(answer["timezone"])
                views.print_events(answer["items"], zone, cloud=answer["cloud"])
            return 0
        zone = ZoneInfo(client.call("status", timeout=ANSWER_S)["timezone"])

        def show(item: Mapping[str, Json]) -> None:
            print(json.dumps(item) if args.json else views.event_line(item, zone), flush=True)

        client.stream("events.follow", {"limit": args.limit}, show, timeout=None)
    raise NoAnswerError("vmcd ended the stream")


def _mdb_monitor(args: argparse.Namespace) -> int:
    def show(frame: Mapping[str, Json]) -> None:
        if args.json:
            print(json.dumps({k: v for k, v in frame.items() if k not in ("line", "trace")}))
        else:
            print(frame["line"])
        sys.stdout.flush()

    with _daemon(args) as client:
        _monitor(client, args.count, show)
    return 0


def _mdb_record(args: argparse.Namespace) -> int:
    with _daemon(args) as client:  # vmcd first: no file is left behind when it is not running
        try:
            out = args.file.open("w", encoding="ascii")
        except OSError as exc:
            raise _CliError(f"cannot write {args.file}: {exc.strerror}") from exc
        with out:
            started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            out.write(f"# vmctl mdb record, {started}\n")

            def write(frame: Mapping[str, Json]) -> None:
                out.write(str(frame["trace"]))
                out.flush()

            try:
                frames = _monitor(client, args.count, write)
            except KeyboardInterrupt:
                print(f"recorded to {args.file}", file=sys.stderr)
                raise
    print(f"{frames} exchanges recorded to {args.file}", file=sys.stderr)
    return 0


def _monitor(
    client: ControlClient, count: int | None, on_frame: Callable[[Mapping[str, Json]], None]
) -> int:
    """Stream ``mdb.monitor`` into ``on_frame``; how many frames vmcd sent."""
    done = client.stream("mdb.monitor", {"count": count}, on_frame, timeout=None)
    return int(done["frames"]) if isinstance(done, dict) else 0


def _test_vend(args: argparse.Namespace) -> int:
    from vmc.credit import format_test_vend

    with _daemon(args) as client:
        print(
            f"test vend of selection {args.selection}: select it on the machine"
            f" within {args.timeout} s",
            file=sys.stderr,
        )
        outcome = client.call(
            "test_vend",
            {"selection": args.selection, "timeout_s": args.timeout},
            timeout=args.timeout + TEST_VEND_MARGIN_S,
        )
    print(json.dumps(outcome) if args.json else format_test_vend(outcome))
    return 0 if outcome.get("result") == "vended" else 1


def _ref(text: str) -> str:
    if not 0 < len(text) <= MAX_REF:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}: a reference is 1-{MAX_REF} characters")
    return text


def _present(args: argparse.Namespace) -> int:
    """Exit 0 when the machine offers the customer a session (online: the backend decides the
    selection; offline: approved within the allowance), 1 when it refused."""
    from vmc import cli_views as views

    answer = _ask(args, "present", {"ref": args.ref})
    if args.json:
        print(json.dumps(answer))
    else:
        print(views.format_presented(answer))
    return 0 if answer.get("ok") else 1


def _selftest(args: argparse.Namespace) -> int:
    from vmc.profile import format_profile

    profile = _ask(args, "selftest")
    if args.json:
        print(json.dumps(profile))
    else:
        print(format_profile(profile, decimals=int(profile.get("decimals", 2))))
    return 0


def _config_check(args: argparse.Namespace) -> int:
    """vmcd's start-up checks on FILE, as ``vmcd --config FILE`` runs them; nothing starts."""
    from vmc.config import check_host, control_socket_path, load_config

    try:
        config = load_config(args.file)
        if config.mdb.port is None:
            raise ConfigError("mdb.port: no MDB port; set port in [mdb] (or give vmcd --mdb)")
        check_host(config)
    except ConfigError as exc:
        raise _CliError(f"configuration error: {exc}") from exc
    socket_path = control_socket_path(config.daemon, os.environ)
    if args.json:
        print(json.dumps({"ok": True, "file": str(args.file), "control_socket": str(socket_path)}))
        return 0
    cloud = config.cloud
    dex = config.dex
    print(
        f"{args.file}: ok (mdb {config.mdb.port} at {config.mdb.address:#04x}, level"
        f" {config.mdb.level}; "
        + (f"cloud {cloud.url} as {cloud.device_id}" if cloud.url else "no cloud")
        + _signed_commands(len(cloud.command_keys))
        + (", signed events" if cloud.url and cloud.device_key_file else "")
        + "; "
        + (f"dex {dex.port} ({dex.protocol})" if dex.port else "no dex")
        + f"; state dir {config.daemon.state_dir}; control socket {socket_path})"
    )
    return 0


def _keygen(args: argparse.Namespace) -> int:
    """A new device key in FILE, never over an existing one; its public key for the backend."""
    from vmc.cloud.signing import DeviceKey

    try:
        key = DeviceKey.create(str(args.file))
    except FileExistsError:
        raise _CliError(f"{args.file}: exists; vmctl keygen never replaces a key") from None
    except OSError as exc:
        raise _CliError(f"{args.file}: {exc.strerror or exc}") from None
    if args.json:
        print(json.dumps({"file": str(args.file), "public_key": key.public_text, "kid": key.kid}))
        return 0
    print(f"wrote {args.file} (mode 0600): set [cloud] device_key_file to it")
    print(f"public key: {key.public_text}")
    print(f"kid: {key.kid}")
    print("register the public key with the backend for this device")
    return 0


def _signed_commands(keys: int) -> str:
    """The ``config check`` line's word on command signatures: only when keys are set."""
    if not keys:
        return ""
    return f", signed commands ({keys} key{'s' if keys > 1 else ''})"


if __name__ == "__main__":
    sys.exit(main())
