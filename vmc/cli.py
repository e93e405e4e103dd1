"""vmctl: the field technician's command line.

``vmctl dex read`` reads the machine's audit over its DEX port now and saves it; ``vmctl dex
parse FILE`` summarises an EVA-DTS audit saved from a machine; ``vmctl dex delta OLD NEW`` says
what was sold between two such reads. With ``--json`` each prints exactly one
JSON object, a contract other tools rely on (keys are added, never renamed); without it, a short
summary for people. A file with several audits is read as ``protocols.evadts.parse`` does: the
first complete one (SE or DXE reached), else the first. Exit status: 0 done; 2 for bad usage, an
unreadable file or a file that holds no audit, with one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import TypeAlias

from drivers.dex_port import open_dex_port
from protocols.dex import DexError
from protocols.errors import ConfigError, ParseError, PortError
from protocols.evadts import choose, parse_all
from protocols.evadts.deltas import AuditDelta, Change, delta
from protocols.evadts.records import Audit, JsonObject, Sales
from vmc.config import load_config
from vmc.logs import configure_logging
from vmc.services.dex_read import read_audit

Handler: TypeAlias = Callable[[argparse.Namespace], int]
SubCommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_USAGE = 2


class _CliError(Exception):
    """A one-line reason to exit with status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmctl", description="vmc field tool")
    parser.add_argument("--version", action="version", version=f"vmctl {version('vmc')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_dex_commands(commands)
    return parser


def add_dex_commands(commands: SubCommands) -> SubCommands:
    """``vmctl dex ...``; returns its subcommands so others (``read``) can be added beside."""
    dex = commands.add_parser(
        "dex", help="EVA-DTS audits (DEX reads)", description="EVA-DTS audits (DEX reads)"
    )
    dex_commands = dex.add_subparsers(dest="dex_command", metavar="COMMAND", required=True)
    parse = dex_commands.add_parser("parse", help="summarise the audit in a file")
    parse.add_argument("file", type=Path, help="a saved audit (any line endings, junk allowed)")
    parse.add_argument("--json", action="store_true", help="print one JSON object")
    parse.set_defaults(handler=_dex_parse)
    change = dex_commands.add_parser("delta", help="what happened between two reads")
    change.add_argument("old", type=Path, help="the earlier read")
    change.add_argument("new", type=Path, help="the later read of the same machine")
    change.add_argument("--json", action="store_true", help="print one JSON object")
    change.set_defaults(handler=_dex_delta)
    read = dex_commands.add_parser("read", help="read the machine's audit now and save it")
    read.add_argument(
        "--port",
        help="DEX port URL (uart:///dev/ttyUSB0, pty://...); default: dex.port of --config",
    )
    read.add_argument("--protocol", choices=("ucs", "ddcmp"), help="default: ucs or dex.protocol")
    read.add_argument("--config", type=Path, help="vmcd's TOML configuration, for the defaults")
    read.add_argument(
        "--out", type=Path, help="where to save the audit; default: ./audit-<UTC time>.dex"
    )
    read.add_argument("--json", action="store_true", help="print the parse summary as JSON")
    read.set_defaults(handler=_dex_read)
    return dex_commands


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("warning", sys.stderr)  # stdout carries the commands' output only
    handler: Handler = args.handler
    try:
        return handler(args)
    except _CliError as exc:
        print(f"vmctl: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE


def _load(path: Path) -> tuple[Audit, int]:
    """The audit a file's reader should use, and how many audits the file holds."""
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
    """Read over DEX now: a progress line on a terminal, the raw audit saved, a summary."""
    try:
        dex = load_config(args.config).dex
    except ConfigError as exc:
        raise _CliError(str(exc)) from exc
    url = args.port or dex.port
    if url is None:
        raise _CliError("no DEX port: give --port URL or set dex.port in --config")
    protocol = args.protocol or dex.protocol
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or Path(f"audit-{stamp}.dex")
    _check_writable(out)  # before the read: a technician should not wait for nothing
    show = sys.stderr.isatty()

    def progress(received: int) -> None:
        if show:
            print(f"\rreading {url} ({protocol}): {received} bytes", end="", file=sys.stderr)

    try:
        port = open_dex_port(url)
    except PortError as exc:
        raise _CliError(str(exc)) from exc
    try:
        raw = asyncio.run(
            read_audit(port, protocol=protocol, comm_id=dex.comm_id, on_progress=progress)
        )
    except DexError as exc:
        raise _CliError(f"read failed at {exc.step}: {exc.reason}") from exc
    except PortError as exc:
        raise _CliError(str(exc)) from exc
    finally:
        port.close()
        if show:
            print(file=sys.stderr)
    try:
        out.write_bytes(raw)
    except OSError as exc:
        raise _CliError(f"cannot write {out}: {exc.strerror}") from exc
    print(f"saved {len(raw)} bytes to {out}", file=sys.stderr)
    args.file = out
    return _dex_parse(args)


def _check_writable(out: Path) -> None:
    directory = out.parent
    if out.is_dir():
        raise _CliError(f"--out {out} is a directory; give a file name")
    if not directory.is_dir():
        raise _CliError(f"--out {out}: no directory {directory}")
    if not os.access(directory, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise _CliError(f"--out {out}: not writable")


def _dex_delta(args: argparse.Namespace) -> int:
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
    if minor is None:
        return "-"
    if decimals == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**decimals)
    return f"{sign}{whole}.{fraction:0{decimals}d}"


if __name__ == "__main__":
    sys.exit(main())
