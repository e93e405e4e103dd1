"""vmctl: the field technician's command line.

``vmctl dex read`` reads the machine's audit over its DEX port now and saves it (through vmcd
when it runs, which owns the port then: :func:`vmc.services.local_ops.follow`); ``vmctl dex
parse FILE`` summarises an EVA-DTS audit saved from a machine; ``vmctl dex delta OLD NEW`` says
what was sold between two such reads. With ``--json`` each prints exactly one
JSON object, a contract other tools rely on (keys are added, never renamed); without it, a short
summary for people. A file with several audits is read as ``protocols.evadts.parse`` does: the
first complete one (SE or DXE reached), else the first. Exit status: 0 done; 2 for bad usage, an
unreadable file or a file that holds no audit, with one line on stderr.

``vmctl stock ...`` and ``vmctl planogram ...`` read the stock from vmcd's journal and change it
with the cloud's own commands, applied by vmcd when it runs and by vmctl itself when it does not
(:mod:`vmc.services.local_ops`). A refusal is one line and exit 2; no answer from a running vmcd
within ``--wait`` is one line and exit 1 (nothing changed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeAlias
from zoneinfo import ZoneInfo

from drivers.dex_port import open_dex_port
from protocols.dex import DexError
from protocols.errors import ConfigError, ParseError, PortError
from protocols.evadts import choose, parse_all
from protocols.evadts.deltas import AuditDelta, Change, delta
from protocols.evadts.records import Audit, JsonObject, Sales
from vmc.cloud import messages as m
from vmc.cloud.outbox import new_id
from vmc.cloud.topics import Topics
from vmc.config import Config, load_config
from vmc.journal import JOURNAL_NAME, Journal
from vmc.logs import configure_logging
from vmc.services.dex_read import read_audit
from vmc.services.local_ops import Answer, NoAnswerError, Progress, follow, request
from vmc.state_lock import try_lock
from vmc.stock_view import stock_view

Handler: TypeAlias = Callable[[argparse.Namespace], int]
SubCommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_USAGE = 2
EXIT_NO_ANSWER = 1
EXIT_INTERRUPTED = 130
WAIT_S = 10.0
"""How long a stock operation waits for a running vmcd to take it."""
MAX_LOCAL_ID = 64
LINE_PATH = re.compile(r"lines\[(\d+)\](?:\.\w+)?")
"""A refusal's path to a line (``lines[2].amount``): vmctl names the argument instead."""


class _CliError(Exception):
    """A one-line reason to exit with status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmctl", description="vmc field tool")
    parser.add_argument("--version", action="version", version=f"vmctl {version('vmc')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_dex_commands(commands)
    add_stock_commands(commands)
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
        "--state-dir",
        help="vmcd's state directory (default: daemon.state_dir of --config); while vmcd runs"
        " there, it makes the read",
    )
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
    _operation_options(refill, m.Op.STOCK_REFILL)
    inventory = stock_commands.add_parser("inventory", help="set the levels counted")
    inventory.add_argument(
        "lines", nargs="+", metavar="KEY=LEVEL", help="selection number or ingredient id"
    )
    _operation_options(inventory, m.Op.STOCK_INVENTORY)
    restock = stock_commands.add_parser("restock", help="every selection and ingredient to par")
    _operation_options(restock, m.Op.STOCK_RESTOCK)
    planogram = commands.add_parser(
        "planogram", help="what the machine sells", description="the planogram in force"
    )
    planogram_commands = planogram.add_subparsers(
        dest="planogram_command", metavar="COMMAND", required=True
    )
    load = planogram_commands.add_parser("set", help="load a planogram document (JSON)")
    load.add_argument("file", type=Path, help="the document planogram.set takes, as JSON")
    _operation_options(load, m.Op.PLANOGRAM_SET)
    current = planogram_commands.add_parser("show", help="print the planogram in force (JSON)")
    _journal_options(current)
    current.set_defaults(handler=_planogram_show)


def _journal_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir", help="vmcd's state directory; default: daemon.state_dir of --config"
    )
    parser.add_argument("--config", type=Path, help="vmcd's TOML configuration")


def _operation_options(parser: argparse.ArgumentParser, op: m.Op) -> None:
    _journal_options(parser)
    parser.add_argument(
        "--id", type=_local_id, help="the operation's id (a retry with it changes nothing)"
    )
    parser.add_argument(
        "--wait",
        type=_seconds,
        default=WAIT_S,
        help=f"seconds to wait for a running vmcd (default {WAIT_S:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(handler=_stock_operation, op=op)


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
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("warning", sys.stderr)  # stdout carries the commands' output only
    handler: Handler = args.handler
    try:
        return handler(args)
    except _CliError as exc:
        print(f"vmctl: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except NoAnswerError as exc:
        print(f"vmctl: {exc}", file=sys.stderr)
        return EXIT_NO_ANSWER
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


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
    """Read over DEX now: a progress line on a terminal, the raw audit saved, a summary.

    While vmcd runs on the state directory it owns the DEX port: it makes the read (one read
    for the technician and the cloud) unless it has no DEX port; otherwise vmctl reads.
    """
    config = _config(args)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or Path(f"audit-{stamp}.dex")
    _check_writable(out)  # before the read: a technician should not wait for nothing
    raw = _read_by_vmcd(config)
    if raw is None:
        raw = _read_port(args, config)
    try:
        out.write_bytes(raw)
    except OSError as exc:
        raise _CliError(f"cannot write {out}: {exc.strerror}") from exc
    print(f"saved {len(raw)} bytes to {out}", file=sys.stderr)
    args.file = out
    return _dex_parse(args)


@contextmanager
def _progress_line() -> Iterator[Callable[[str], None]]:
    """``show(text)`` rewrites one progress line on a terminal (nothing otherwise)."""
    shown = sys.stderr.isatty()

    def show(text: str) -> None:
        if shown:
            print(f"\r{text}", end="", file=sys.stderr)

    try:
        yield show
    finally:
        if shown:
            print(file=sys.stderr)


def _read_port(args: argparse.Namespace, config: Config) -> bytes:
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
        with _progress_line() as show:
            return asyncio.run(
                read_audit(
                    port,
                    protocol=protocol,
                    comm_id=dex.comm_id,
                    on_progress=lambda received: show(
                        f"reading {url} ({protocol}): {received} bytes"
                    ),
                )
            )
    except DexError as exc:
        raise _CliError(f"read failed at {exc.step}: {exc.reason}") from exc
    except PortError as exc:
        raise _CliError(str(exc)) from exc
    finally:
        port.close()


def _read_by_vmcd(config: Config) -> bytes | None:
    """The audit as a running vmcd read it for us; None when no vmcd runs on the state
    directory, or it reads no DEX port (then we read the port ourselves)."""
    state_dir = config.daemon.state_dir
    if not (state_dir / JOURNAL_NAME).is_file():
        return None
    try:
        lock = try_lock(state_dir)
    except PermissionError as exc:
        raise _CliError(f"{exc.filename}: {exc.strerror}; run vmctl as vmcd's user") from exc
    if lock is not None:
        lock.release()
        return None
    command = {"id": new_id(), "op": m.Op.DATA_REQUEST.value, "report": True}
    with _journal(config) as journal:
        try:
            reply = request(state_dir, journal, command, topics=lambda: None, wait_s=WAIT_S).reply
            if not reply["ok"]:
                if reply["code"] == m.ErrorCode.NO_DEX_PORT:
                    return None
                raise _CliError(f"vmcd refused the read ({reply['code']}): {reply['message']}")

            def told(now: Progress) -> str:
                return f"vmcd reads its DEX port: {now.received} bytes, {now.blocks} blocks"

            with _progress_line() as show:
                request_id = reply["result"]["request_id"]
                result = follow(state_dir, journal, request_id, lambda now: show(told(now)))
        except PermissionError as exc:
            raise _CliError(f"{exc.filename}: {exc.strerror}; run vmctl as vmcd's user") from exc
        except sqlite3.Error as exc:
            raise _CliError(f"{journal.path}: {exc}; run vmctl as vmcd's user") from exc
    if not result["ok"]:
        error = result["error"]
        raise _CliError(f"read failed at {error['step']}: {error['reason']}")
    try:
        return Path(result["file"]).read_bytes()
    except OSError as exc:
        raise _CliError(f"cannot read vmcd's audit {result['file']}: {exc.strerror}") from exc


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


# --- stock and planogram -------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    """vmcd's configuration (``--config``), its state directory from ``--state-dir`` if given."""
    try:
        return load_config(args.config, {"daemon.state_dir": args.state_dir})
    except ConfigError as exc:
        raise _CliError(str(exc)) from exc


@contextmanager
def _journal(config: Config) -> Iterator[Journal]:
    """vmcd's journal; a missing state directory or journal is a mistake, never created."""
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
    config = _config(args)
    with _journal(config) as journal:
        stock = journal.load_stock()
    view = stock_view(stock)
    if args.json:
        print(json.dumps(view))
        return 0
    if stock.planogram is None:
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
    with _journal(_config(args)) as journal:
        planogram = journal.load_stock().planogram
    if planogram is None:
        raise _CliError("no planogram yet: load one with vmctl planogram set FILE")
    print(json.dumps(planogram.to_mapping(), indent=2))
    return 0


def _stock_operation(args: argparse.Namespace) -> int:
    """Build the cloud's command for the operation and have it applied (by vmcd if it runs)."""
    op: m.Op = args.op
    command: dict[str, Any] = {"id": args.id or new_id(), "op": op.value}
    given: list[str] = getattr(args, "lines", [])
    if op is m.Op.PLANOGRAM_SET:
        command["planogram"] = _read_json(args.file)
    elif given:
        quantity = "amount" if op is m.Op.STOCK_REFILL else "level"
        command["lines"] = [_line(text, quantity) for text in given]
    config = _config(args)
    cloud = config.cloud
    configure_logging("error", sys.stderr)  # the service's warnings are vmcd's; we say it below

    def topics() -> Topics | None:
        if cloud.url is None or cloud.device_id is None:
            return None
        return Topics(cloud.device_id, cloud.topic_prefix)

    with _journal(config) as journal:
        try:
            answer = request(
                config.daemon.state_dir, journal, command, topics=topics, wait_s=args.wait
            )
        except PermissionError as exc:
            raise _CliError(f"{exc.filename}: {exc.strerror}; run vmctl as vmcd's user") from exc
        except sqlite3.Error as exc:
            raise _CliError(f"{journal.path}: {exc}; run vmctl as vmcd's user") from exc
    reply = answer.reply
    if not reply["ok"]:
        message = LINE_PATH.sub(lambda found: repr(given[int(found[1])]), reply["message"])
        raise _CliError(f"refused ({reply['code']}): {message}")
    _print_result(command["id"], op, answer, as_json=args.json)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
