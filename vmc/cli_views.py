"""``vmctl``'s output for people: what the daemon answered, as tables (``rich``) and lines.

``--json`` prints the answers as they are; this module only shows them. ``rich`` is imported
when something is shown, not with ``vmctl`` itself, so a ``--json`` call and ``vmctl --help``
start fast. Times are shown in the machine's time zone (``daemon.timezone``, as the daemon
says), money in the currency's major unit.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

KEEP_WHOLE = frozenset({"CREATED", "AT", "TXN", "REFUND", "CODE"})
"""Columns never folded (ids, times): other columns give way in a narrow terminal."""
MAX_FIELD = 60
"""Characters of one field of an event shown on its line."""


UNWRAPPED = 1000
"""Columns when the output is no terminal (a pipe, a file): lines as long as they are."""


def console(*, stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else UNWRAPPED
    return Console(stderr=stderr, highlight=False, markup=False, soft_wrap=False, width=width)


def _grid() -> Table:
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    return table


def _table(*headers: str) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for header in headers:
        numeric = header in ("SEL", "AMOUNT", "REFUNDED", "PRICE")
        table.add_column(
            header,
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=header in KEEP_WHOLE,
        )
    return table


# --- small formats ----------------------------------------------------------------------------


def when(at: float | None, zone: ZoneInfo, *, date: bool = True) -> str:
    if at is None:
        return "-"
    shown = dt.datetime.fromtimestamp(at, zone)
    return shown.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def span(seconds: float | None) -> str:
    """``2d 3h``, ``5m 12s``, ``0.4 s``."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]
    return " ".join(shown)


def money(minor: int | None, decimals: int) -> str:
    if minor is None:
        return "-"
    if decimals == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**decimals)
    return f"{sign}{whole}.{fraction:0{decimals}d}"


def _yes(flag: object) -> str:
    return "yes" if flag else "no"


# --- status -----------------------------------------------------------------------------------


def print_status(status: Mapping[str, Any]) -> None:
    zone = ZoneInfo(status["timezone"])
    out = console()
    out.print(
        f"vmcd {status['version']}, up {span(status['uptime_s'])}"
        f" (since {when(status['started_at'], zone)}), pid {status['pid']},"
        f" vends decided by {_decisions(status['decisions'])}"
    )
    out.print(f"state dir {status['state_dir']}, control socket {status['control_socket']}")
    out.print()
    grid = _grid()
    bus = status["bus"]
    executive = bus.get("protocol") == "exe"
    grid.add_row("Executive bus" if executive else "MDB bus", _bus_line(bus))
    grid.add_row("", _vmc_line(bus))
    grid.add_row("Cloud", _cloud_line(status["cloud"], zone))
    grid.add_row("DEX reporter", _reporter_line(status["reporter"], zone))
    grid.add_row("Stock", _stock_line(status["stock"], zone))
    service = status["service"]
    grid.add_row(
        "Operating",
        f"{status['operating_state'].replace('_', ' ')}; no recent sales:"
        f" {_yes(service.get('no_recent_sales'))}, low change: "
        f"{'-' if service.get('low_change') is None else _yes(service['low_change'])}",
    )
    out.print(grid)
    out.print()
    codes = status["codes"]
    if not codes:
        out.print("codes: none (nothing to fix)")
        return
    from vmc.control.status import CHECKS, Code  # the daemon's side: only when shown

    table = _table("CODE", "WHAT TO CHECK")
    for code in codes:
        known = Code.__members__.get(code.upper())
        table.add_row(code, CHECKS.get(known, "") if known else "", style="bold")
    out.print(table)


def _decisions(decisions: str) -> str:
    return {"cloud": "the cloud", "local_accept": "vmcd (free vends)"}.get(
        decisions, "vmcd (deny all)"
    )


def _bus_line(bus: Mapping[str, Any]) -> str:
    state = bus["state"].replace("_", " ")
    age = bus["last_poll_age_s"]
    polled = "never polled" if age is None else f"last poll {span(age)} ago"
    polls = "" if bus["polls"] is None else f" ({bus['polls']} polls)"
    reader = (
        "" if bus["reader"] is None else f"; reader {bus['reader']} for {span(bus['reader_for_s'])}"
    )
    return f"{state}: {bus['text']}, {polled}{polls}{reader}"


def _vmc_line(bus: Mapping[str, Any]) -> str:
    if bus.get("protocol") == "exe":
        # vmc is the master on Executive: the VMC sets nothing up, it answers each command.
        parts = [f"port {bus['port']}", "vmc is the Executive master (STATUS, CREDIT, VEND)"]
        if bus["restarts"]:
            parts.append(f"bus process restarts: {bus['restarts']}")
        return "; ".join(parts)
    vmc = bus["vmc"]
    level = "not set up yet" if vmc["level"] is None else f"level {vmc['level']}"
    options = vmc["options"]
    parts = [
        f"port {bus['port']}",
        f"VMC {level}",
        f"bus at level {vmc['operating_level'] or '-'}",
        f"options: {', '.join(options) if options else 'none'}",
    ]
    if vmc["display"]:
        parts.append(f"display {vmc['display']}")
    if bus["restarts"]:
        parts.append(f"bus process restarts: {bus['restarts']}")
    return "; ".join(parts)


def _cloud_line(cloud: Mapping[str, Any], zone: ZoneInfo) -> str:
    state = cloud["state"]
    outbox = f"outbox {cloud['outbox']}"
    if cloud["oldest_unsent_age_s"] is not None:
        outbox += f", oldest unsent {span(cloud['oldest_unsent_age_s'])} old"
    if state == "not_configured":
        return f"not configured (no cloud.url); {outbox}"
    since = f"since {when(cloud['since'], zone)} ({span(cloud['for_s'])})"
    where = f"{cloud['url']} as {cloud['device_id']}"
    if state == "connected":
        return f"connected to {where} {since}; {outbox}"
    error = cloud["last_error"] or "not connected yet"
    return f"offline {since}: {error}; {where}; {outbox}"


def _reporter_line(reporter: Mapping[str, Any], zone: ZoneInfo) -> str:
    if reporter["state"] == "not_configured":
        return "not configured (no dex.port)"
    head = f"{reporter['state']} on {reporter['port']} ({reporter['protocol']})"
    last = reporter["last_read"]
    if last is None:
        valid = when(reporter.get("last_report"), zone)
        return f"{head}; no read since vmcd started (last valid audit: {valid})"
    at = when(last["at"], zone)
    if not last["ok"]:
        return f"{head}; last read {at} failed at {last['step']}: {last['reason']}"
    verdict = "valid" if last["valid"] else "not valid"
    return f"{head}; last read {at}: {verdict}, {last['size']} bytes"


def _stock_line(stock: Mapping[str, Any], zone: ZoneInfo) -> str:
    if stock["planogram_version"] is None:
        return "no planogram (stock is not counted): vmctl planogram set FILE"
    return (
        f"planogram {stock['planogram_version']}: {stock['selections']} selections,"
        f" {stock['ingredients']} ingredients, {stock['low']} low, {stock['empty']} empty;"
        f" need loading: {_yes(stock['need_loading'])}; last sale"
        f" {when(stock['last_sale'], zone)}, last loading {when(stock['last_loading'], zone)}"
    )


# --- transactions -----------------------------------------------------------------------------


def print_txns(page: Mapping[str, Any]) -> None:
    txns = page["txns"]
    out = console()
    if not txns:
        more = "" if page["decisions"] == "cloud" else " (no cloud: vmctl events shows vends)"
        out.print(f"no transactions{more}")
        return
    zone, decimals = ZoneInfo(page["timezone"]), page["decimals"]
    table = _table("CREATED", "TXN", "STATE", "SEL", "AMOUNT", "TYPE", "REFUNDED", "REASON")
    for txn in txns:
        table.add_row(
            when(txn["created_at"], zone),
            txn["txn_id"],
            txn["state"],
            "-" if txn["selection"] is None else str(txn["selection"]),
            money(txn["amount"] if txn["amount"] is not None else txn["price"], decimals),
            txn["vend_type"],
            money(txn["refunded"], decimals) if txn["refunded"] else "",
            txn["reason"] or "",
        )
    out.print(table)
    if page["more"]:
        out.print("(more: raise --limit, or give --from DATE)")


def print_txn(shown: Mapping[str, Any]) -> None:
    zone, decimals = ZoneInfo(shown["timezone"]), shown["decimals"]
    txn = shown["txn"]
    out = console()
    grid = _grid()
    grid.add_row("transaction", txn["txn_id"])
    grid.add_row("state", f"{txn['state']}{' (' + txn['reason'] + ')' if txn['reason'] else ''}")
    grid.add_row("created", when(txn["created_at"], zone))
    grid.add_row("selection", "-" if txn["selection"] is None else str(txn["selection"]))
    grid.add_row(
        "price, amount", f"{money(txn['price'], decimals)}, {money(txn['amount'], decimals)}"
    )
    grid.add_row("vend type", txn["vend_type"])
    for key in ("ref", "medium", "voucher_id", "credit_id"):
        if txn.get(key):
            grid.add_row(key.replace("_", " "), str(txn[key]))
    grid.add_row("refunded", money(txn["refunded"], decimals))
    out.print(grid)
    history = _table("AT", "STATE", "REASON")
    for step in shown["history"]:
        history.add_row(when(step["at"], zone), step["state"], step["reason"] or "")
    out.print(history)
    if shown["refunds"]:
        refunds = _table("AT", "REFUND", "AMOUNT", "REASON")
        for refund in shown["refunds"]:
            refunds.add_row(
                when(refund["at"], zone),
                refund["refund_id"],
                money(refund["amount"], decimals),
                refund["reason"],
            )
        out.print(refunds)


# --- events -----------------------------------------------------------------------------------


def event_line(item: Mapping[str, Any], zone: ZoneInfo) -> str:
    """One feed item on one line: time, kind, type, then its fields as ``key=value``."""
    if item.get("kind") == "gap":
        return f"... {item['dropped']} events not shown (read too slowly)"
    fields = " ".join(f"{k}={_field(v)}" for k, v in item["fields"].items() if v is not None)
    return f"{when(item['at'], zone)}  {item['kind']:<5}  {item['type']}  {fields}".rstrip()


def _field(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 3] + "..."


def print_events(items: Sequence[Mapping[str, Any]], zone: ZoneInfo, *, cloud: bool) -> None:
    if not items:
        what = "queued for the cloud" if cloud else "booked (no cloud: local vends only)"
        print(f"nothing {what} since vmcd started")
    for item in items:
        print(event_line(item, zone))


# --- progress ---------------------------------------------------------------------------------


@contextmanager
def progress(label: str) -> Iterator[Callable[[int, int | None], None]]:
    """``update(received_bytes, blocks)`` while something is read; shown on a terminal only."""
    if not sys.stderr.isatty():
        yield lambda _received, _blocks: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:>8.0f} bytes"),
        TextColumn("{task.fields[blocks]}"),
        TimeElapsedColumn(),
        console=console(stderr=True),
        transient=True,
    )
    task = bar.add_task(label, total=None, blocks="")

    def update(received: int, blocks: int | None) -> None:
        bar.update(task, completed=received, blocks="" if blocks is None else f"{blocks} blocks")

    with bar:
        yield update


def format_presented(answer: Mapping[str, Any]) -> str:
    """``vmctl present``'s answer for people: what the customer may do now, or why not."""
    ref, mode = answer["ref"], answer.get("mode")
    if not answer.get("ok"):
        how = "" if mode is None else f" ({mode})"
        return f"{ref}: refused{how}, {answer.get('code')}: {answer.get('message')}"
    if mode == "online":
        return f"{ref}: select on the machine; the backend decides (transaction {answer['txn_id']})"
    value = money(int(answer["value"]), int(answer.get("decimals", 2)))
    return (
        f"{ref}: approved offline for one vend up to {value} (allow-list version"
        f" {answer['list_version']}); select on the machine"
    )
