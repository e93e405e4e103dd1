"""The main demo: the seven-step remote-vend flow, end to end, on one machine.

A private Mosquitto (unless ``--mqtt`` names a broker), the simulated backend, ``vmcd`` on a
pty pair with ``--mqtt``, and the simulated VMC. Members of a gym-style club buy through the
app (lock -> select -> request -> paid/deny -> vend -> result), some walk away or cancel, some
pay cash, and on an always-idle machine some select first. The backend pushes a small planogram
and restocks it first; each session's stock changes and alarms are printed, and a low or empty
selection is refilled to par at once. The backend's books close the run, then the checks: the
books, the stock the backend expects, the DEX audit's delta and the bus timing against what the
VMC saw and vmcd reported.

``--local`` runs the same VMC against ``vmcd --local-approval accept`` without a cloud, and
checks vmcd's journal against the VMC instead.

Everything a run starts (broker, vmcd and its bus process, temporary folders) is stopped and
removed when it ends, however it ends: the caller cancels the run on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import statistics
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from drivers.pty import PtyPair
from protocols.errors import VmcError
from sim import StartError, checks
from sim.backend import Books, Entry, Policy, SimBackend
from sim.broker import BrokerError, MosquittoBroker
from sim.checks import Tally
from sim.daemon_proc import DaemonProcess
from sim.demo_remote import credit_check, credit_vends, remote_operations
from sim.dex_source import DexSource
from sim.scenarios import Customers, Report, SessionResult, run_customers
from sim.trace import recording
from sim.vmc_counters import SalesCounters, audit_from_counters
from sim.vmc_master import ReaderInfo, TimingStats, VmcMaster
from vmc.cloud import signing
from vmc.cloud.signing import DeviceKey
from vmc.journal import Journal, JournalRecord

DEVICE = "demo-1"
MEMBERS = {"alice": 5000, "bob": 250, "carol": 0, "dan": 1200}
# customer kind -> (weight, scenario the VMC plays, does the app lock first)
KINDS: dict[str, tuple[int, str, bool]] = {
    "app_purchase": (10, "purchase", True),
    "app_vend_failure": (1, "vend_failure", True),
    "app_cancel": (1, "cancel", True),
    "app_walk_away": (1, "walk_away", True),
    "select_first": (2, "purchase", False),
    "cash": (2, "cash_sale", False),
    "app_free_vend": (1, "purchase", True),
    "app_test_vend": (1, "purchase", True),
}
# The kinds whose lock asks for a vend type other than paid: the backend approves them at 0.
VEND_TYPES = {"app_free_vend": "free", "app_test_vend": "test"}
WALK_AWAY_LOCK_S = 1.0
BROKER_WAIT_S = 10.0
DAEMON_STOP_S = 3.0  # then SIGKILL: a stop of the whole demo stays within 5 s
CANCEL_GRACE_S = 0.5
STOCK_WAIT_S = 10.0
STOCK_SETTLE_S = 1.0


@dataclass(frozen=True, slots=True)
class Slot:
    """One selection of the demo's planogram; levels in units of its product."""

    product: str
    price: int  # minor units
    capacity: int
    par: int
    alarm: int


# MDB item number -> slot. Small levels on purpose: a short run takes a selection to its alarm
# level, and the demo refills it.
SLOTS = {
    1: Slot("choco-bar", 150, 4, 3, 2),
    2: Slot("crisps", 120, 6, 5, 2),
    3: Slot("water", 100, 8, 6, 2),
}


def planogram(version: int = 1) -> dict[str, Any]:
    """The planogram document the backend pushes (docs/cloud-api.md 3.1)."""
    return {
        "version": version,
        "products": [{"id": slot.product} for slot in SLOTS.values()],
        "selections": [
            {
                "number": number,
                "product": slot.product,
                "price": slot.price,
                "capacity": slot.capacity,
                "par_level": slot.par,
                "alarm_level": slot.alarm,
            }
            for number, slot in SLOTS.items()
        ],
    }


def _outcome(entry: Entry | None) -> str:
    if entry is None:
        return "-"
    return entry.result or (entry.states[-1] if entry.states else "open")


async def _play(
    kind: str,
    number: int,
    customers: Customers,
    backend: SimBackend,
    rng: random.Random,
    *,
    decimals: int,
) -> tuple[str, bool]:
    """One customer; the session's line and whether it ended legally."""
    _, scenario, locks = KINDS[kind]
    if not locks and scenario == "purchase" and not customers.always_idle:
        scenario = "cash_sale"  # select-first needs an always-idle VMC
    member = rng.choice(list(MEMBERS)) if locks else None
    txn_id = None
    try:
        if locks:
            timeout = WALK_AWAY_LOCK_S if scenario == "walk_away" else None
            fields: dict[str, Any] = {"timeout_s": timeout} if timeout else {}
            if kind in VEND_TYPES:
                fields["vend_type"] = VEND_TYPES[kind]
            txn_id = await backend.lock(DEVICE, member, **fields)
            if kind in VEND_TYPES:
                # The app user selects once the machine shows the session: the VMC then
                # counts the vend by the session's type (test, free), as its audit does.
                await customers.session_shown()
        before = set(backend.books.entries)
        result = await customers.run(scenario, number)
        if txn_id is None and scenario == "purchase":
            new = set(backend.books.entries) - before
            txn_id = next(iter(new), None)
        entry = None
        if txn_id is not None:
            done = asyncio.create_task(backend.wait_done(txn_id, 10))
            while not done.done():
                await customers.idle()
            entry = done.result()
    except TimeoutError:
        raise VmcError(f"session {number}: the backend heard nothing within 10 s") from None
    await until_reader_enabled(customers, backend)
    who = member or ("cash" if scenario == "cash_sale" else "walk-up")
    price = checks.money(entry.price, decimals) if entry and entry.price else "-"
    mark = "ok " if result.ok else "ERR"
    line = (
        f"session {number:3d} {mark} {kind:<17} {who:<8} vmc: {result.outcome:<12}"
        f" price {price:>6}  backend: {_outcome(entry)}"
    )
    return line, result.ok


async def until_reader_enabled(customers: Customers, backend: SimBackend) -> None:
    """Idle-poll until the reader is free again, so the next lock is not refused as busy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (backend.state.get(DEVICE) or {}).get("reader") != "enabled":
        if loop.time() > deadline:
            raise VmcError("the reader did not return to enabled within 10 s")
        await customers.idle()


async def cloud_demo(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> int:
    """The seven-step flow; its exit code says whether the books, the audit and the VMC agree.

    What it starts, ``stack`` stops: the caller closes it however the run ended.
    """
    started = dt.datetime.now(dt.UTC).date()  # vmcd's days are UTC here: no timezone is set
    state = state_dir(stack, args.state_dir)
    recorder = stack.enter_context(recording(args.record))
    backend, url, cloud_toml = await demo_backend(stack, args, state, DEVICE)
    policy = backend.policy
    pair = PtyPair()
    stack.callback(pair.close)
    dex_pair = PtyPair()
    stack.callback(dex_pair.close)
    config = state / "vmc.toml"
    config.write_text(
        f'[dex]\nport = "{dex_pair.device_url}"\nread_at_start = true\nschedule = []\n' + cloud_toml
    )
    print(f"vmcd on {pair.device_url} as {DEVICE}, backend policy {policy.value}")
    print(f"DEX audits read over {dex_pair.device_url} (DEX/UCS)")
    daemon = await cloud_daemon(stack, pair, state, level=args.level, url=url, config=config)
    vmc = VmcMaster(pair.master, recorder=recorder)
    stack.callback(vmc.close)
    source = DexSource(dex_pair.master.fileno(), lambda: audit_from_counters(vmc.sales))
    stack.push_async_callback(_cancel, asyncio.create_task(source.serve()))

    async def init() -> ReaderInfo:
        return await vmc.initialise(level=args.level)

    print(f"reader initialised: {(await init()).describe()}")
    decimals = vmc.info.money.minor_decimals
    try:
        await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", 10)
    except TimeoutError:
        raise VmcError(f"vmcd did not come online at {url} within 10 s") from None
    news = StockNews(backend)
    await load_planogram(backend, news, decimals)
    rng = random.Random(args.seed)
    menu = {number: slot.price for number, slot in SLOTS.items()}
    customers = Customers(vmc, rng, poll_period=args.poll_ms / 1000, init=init, menu=menu)
    names = list(KINDS)
    broken: list[str] = []
    for number in range(1, args.sessions + 1):
        kind = rng.choices(names, weights=[KINDS[n][0] for n in names])[0]
        sales = len(backend.books.sales) + (KINDS[kind][1] == "cash_sale")
        line, ok = await _play(kind, number, customers, backend, rng, decimals=decimals)
        if not ok:
            broken.append(f"session {number}")
        print(line)
        await news.settle(sales)
        await news.refill_alarmed(news.show())
    await asyncio.sleep(0.3)  # the last events on their way
    await news.refill_alarmed(news.show())
    remote = await remote_operations(backend, customers, decimals)
    await news.refill_alarmed(news.show())
    _print_books(backend, vmc.stats, decimals)
    report = await _sales_report(backend, started, decimals)
    code = await daemon.stop(DAEMON_STOP_S)
    return checks.report(
        cloud_checks(
            backend.books,
            vmc.sales,
            remote.audit,
            vmc.stats,
            broken=broken,
            sessions=args.sessions,
            vmcd_code=code,
            decimals=decimals,
            report=report,
        )
    )


class StockNews:
    """Prints the machine's stock events as they come, compactly, and refills what ran low:
    what an operator watching the backend would see and do."""

    def __init__(self, backend: SimBackend) -> None:
        self.backend = backend
        self.seen = 0

    async def settle(self, sales: int) -> None:
        """Give a session's stock events a moment: until the backend saw ``sales`` cash sales
        and vmcd's levels agree with its count, or STOCK_SETTLE_S passed (a disagreement is
        judged by the closing check, not here)."""
        books = self.backend.books

        def settled() -> bool:
            agree = books.stock.machine_levels() == books.stock.expected
            return len(books.sales) >= sales and agree

        with contextlib.suppress(TimeoutError):
            await self.backend.wait_for(settled, STOCK_SETTLE_S)

    def show(self) -> list[int]:
        """Print the stock events that arrived since the last call; the selections that
        turned low or empty."""
        events = self.backend.event_log[self.seen :]
        self.seen = len(self.backend.event_log)
        changes = [
            f"item {e['selection']} {e['before']} → {e['after']}"
            for e in events
            if e["type"] == "stock.level" and e.get("selection") is not None
        ]
        if changes:
            print(f"{'stock':>13}: " + ", ".join(changes))
        alarmed: list[int] = []
        for event in events:
            if event["type"] == "stock.alarm":
                print(
                    f"{'stock alarm':>13}: item {event['selection']} {event['condition']}"
                    f" at {event['level']} (was {event['before']})"
                )
                if event["condition"] != "ok":
                    alarmed.append(int(event["selection"]))
            elif event["type"] == "stock.discrepancy":
                print(
                    f"{'discrepancy':>13}: {event['kind']} item {event['selection']},"
                    f" {event['missing']} missing"
                )
        return alarmed

    async def refill_alarmed(self, selections: Sequence[int]) -> None:
        """Refill each alarmed selection to its par level, and show the alarm clear."""
        stock = self.backend.books.stock
        levels = stock.machine_levels()
        lines = [
            {"selection": n, "amount": stock.par[n] - levels[n]}
            for n in sorted(set(selections))
            if n in levels and stock.par[n] > levels[n]
        ]
        if not lines:
            return
        loads = ", ".join(f"item {line['selection']} +{line['amount']}" for line in lines)
        print(f"{'refill':>13}: {loads} (to par)")
        await self.backend.stock_command(DEVICE, "stock.refill", lines=lines)

        def cleared() -> bool:
            return all(stock.reported.get(n) == stock.par[n] for n in selections) and all(
                _condition(self.backend, n) == "ok" for n in selections
            )

        await _wait_stock(self.backend, cleared)
        self.show()


def _condition(backend: SimBackend, selection: int) -> str | None:
    """The selection's last alarm condition the machine sent."""
    alarms = [a for a in backend.books.stock.alarms if a.get("selection") == selection]
    return str(alarms[-1]["condition"]) if alarms else None


async def _wait_stock(backend: SimBackend, probe: Any) -> None:
    try:
        await backend.wait_for(probe, STOCK_WAIT_S)
    except TimeoutError:
        raise VmcError(f"vmcd's stock events did not arrive within {STOCK_WAIT_S:g} s") from None


async def load_planogram(backend: SimBackend, news: StockNews, decimals: int) -> None:
    """Push the planogram and restock it to par, as a backend does for a new machine."""
    document = planogram()
    await backend.stock_command(DEVICE, "planogram.set", planogram=document)
    shown = ", ".join(
        f"item {n} {s.product} {checks.money(s.price, decimals)} (par {s.par}, alarm {s.alarm})"
        for n, s in SLOTS.items()
    )
    print(f"planogram v{document['version']}: {shown}")
    await backend.stock_command(DEVICE, "stock.restock")
    stock = backend.books.stock

    def loaded() -> bool:
        return stock.machine_levels() == stock.expected and all(
            _condition(backend, n) == "ok" for n in stock.expected
        )

    await _wait_stock(backend, loaded)
    news.seen = len(backend.event_log)  # the new planogram's empty alarms, cleared: not news
    print("restocked to par: " + ", ".join(f"item {n} {v}" for n, v in stock.expected.items()))


def cloud_checks(
    books: Books,
    sales: SalesCounters,
    audit: Tally | None,
    stats: TimingStats,
    *,
    broken: Sequence[str],
    sessions: int,
    vmcd_code: int | None,
    decimals: int,
    report: dict[str, Any] | None,
) -> list[checks.Check]:
    """The cloud demo's checks: the backend's books, vmcd's sales report and the DEX audit
    against the VMC."""
    vended = [e for e in books.entries.values() if e.result == "success" and e.vend_type == "paid"]
    paid_by_credit = credit_vends(books)
    booked = Tally(
        len(vended) + len(paid_by_credit),
        sum(e.charged for e in books.entries.values()) + sum(v["amount"] for v in paid_by_credit),
    )
    cash = Tally(len(books.sales), sum(int(s["price"]) for s in books.sales))
    dex_name = "DEX vs the VMC"
    stock = books.stock
    return [
        checks.problems("sessions", broken, sessions, "sessions ended illegally"),
        checks.compare(
            "app sales, books vs VMC",
            ("the backend charged", booked),
            ("the VMC vended", sales.cashless),
            decimals=decimals,
        ),
        checks.compare(
            "cash sales, books vs VMC",
            ("the backend booked", cash),
            ("the VMC sold", sales.cash),
            decimals=decimals,
        ),
        checks.compare_levels(
            "stock, books vs vmcd",
            ("the backend expects", stock.expected),
            ("vmcd reported", stock.machine_levels()),
        ),
        checks.missing(dex_name, "the closing data request brought no audit delta")
        if audit is None
        else checks.compare(
            dex_name,
            ("the audit's delta", audit),
            ("the VMC counted", sales.paid),
            decimals=decimals,
        ),
        sales_check(books, report),
        credit_check(books),
        signed_check(books),
        stats.check(),
        vmcd_stopped(vmcd_code),
    ]


def vmcd_stopped(code: int | None) -> checks.Check:
    ok = code == 0
    return checks.Check("vmcd stopped", ok, "ok" if ok else "FAILED", f"exit code {code}")


async def cloud_daemon(
    stack: contextlib.AsyncExitStack,
    pair: PtyPair,
    state: Path,
    *,
    level: int,
    url: str,
    config: Path,
) -> DaemonProcess:
    """vmcd as the demo's machine ``DEVICE`` on ``pair``, deciding through the broker at
    ``url`` with ``config``; started, and stopped when ``stack`` closes."""
    daemon = DaemonProcess(
        pair,
        state,
        level=level,
        local_approval="deny",
        extra=("--mqtt", url, "--device-id", DEVICE, "--config", str(config)),
    )
    await daemon.start()
    stack.push_async_callback(daemon.stop, DAEMON_STOP_S)
    return daemon


async def demo_backend(
    stack: contextlib.AsyncExitStack,
    args: argparse.Namespace,
    state: Path,
    device: str,
    *,
    answers: bool = True,
    also_trusted: Sequence[Ed25519PublicKey] = (),
) -> tuple[SimBackend, str, str]:
    """The demo's broker (a private one unless ``--mqtt`` names one) and its backend,
    connected, with the TOML ``[cloud]`` table that makes vmcd trust it.

    The backend signs every command with a key pair made for this run only; vmcd gets the
    public key, so it acts on no command that moves money unless the backend signed it. vmcd
    signs what it publishes with a device key made in ``state`` (as ``vmctl keygen`` does),
    whose public key the backend holds for ``device``: it books nothing that does not verify.

    Not ``answers``: the backend answers no request (another party approves: vmc-bridge, for
    its third party, signing with a key of ``also_trusted``, which vmcd trusts as well).
    """
    url = args.mqtt
    if url is None:
        try:
            broker = MosquittoBroker()
            stack.callback(broker.close)
            broker.start()
        except BrokerError as exc:
            raise StartError(f"the private mosquitto did not start: {exc}") from exc
        url = broker.url
        print(f"private mosquitto on {url}")
    key = Ed25519PrivateKey.generate()
    device_key_file = state / "device.key"
    device_key = (  # a kept state dir keeps its key, as a machine does
        DeviceKey.load(str(device_key_file))
        if device_key_file.exists()
        else DeviceKey.create(str(device_key_file))
    )
    backend = SimBackend(
        url,
        policy=Policy(args.policy) if answers else Policy.SILENT,
        balances=MEMBERS,
        payment_failure_rate=0.2,
        seed=args.seed,
        logger=_quiet_logger(),
        signing_key=key,
        device_keys={device: device_key.public},
    )
    await _connect(stack, backend, url)
    trusted = [key.public_key(), *also_trusted]
    if not answers:
        print("the backend answers no request")
    print(
        f"commands are signed (vmcd trusts {', '.join(signing.key_id(k) for k in trusted)});"
        f" vmcd signs its events (key {device_key.kid})"
    )
    publics = ", ".join(f'"{signing.public_text(k)}"' for k in trusted)
    toml = f'[cloud]\ncommand_keys = [{publics}]\ndevice_key_file = "{device_key_file}"\n'
    return backend, url, toml


def signed_check(books: Books) -> checks.Check:
    """Every event and reply vmcd published verified against its device key."""
    total = books.verified + len(books.unverified)
    return checks.problems(
        "signed events", books.unverified, total, "events and replies that do not verify"
    )


async def _connect(stack: contextlib.AsyncExitStack, backend: SimBackend, url: str) -> None:
    """Start the backend's connection; StartError when the broker cannot be reached."""
    running = asyncio.create_task(backend.run())
    stack.push_async_callback(_stop_backend, backend, running)
    ready = asyncio.create_task(backend.ready(BROKER_WAIT_S))
    await asyncio.wait({ready, running}, return_when=asyncio.FIRST_COMPLETED)
    if ready.done() and ready.exception() is None:
        return
    ready.cancel()
    failure = running.exception() if running.done() else ready.exception()
    raise StartError(f"cannot reach the MQTT broker at {url}: {failure or 'no answer'}")


def _quiet_logger() -> logging.Logger:
    """The backend's MQTT client logs nothing: a broker that goes away as the demo stops
    (Ctrl-C reaches it too) is expected, and a broker lost mid-run ends it with one line."""
    logger = logging.getLogger("vmc-sim.backend")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    return logger


async def _stop_backend(backend: SimBackend, running: asyncio.Task[None]) -> None:
    await backend.close()
    await _cancel(running)


def state_dir(stack: contextlib.AsyncExitStack, given: str | None) -> Path:
    """The daemon's state folder: ``given`` (kept), or a temporary one removed at exit."""
    if given is None:
        return Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vmc-demo-")))
    path = Path(given)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StartError(f"--state-dir {given}: is not a directory") from None
    except OSError as exc:
        raise StartError(f"--state-dir {given}: cannot create: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartError(f"--state-dir {given}: not writable")
    print(f"vmcd's journal and log are kept in {path}")
    return path


async def _cancel(task: asyncio.Task[None], grace: float = CANCEL_GRACE_S) -> None:
    """Cancel ``task``, and again if its own clean-up lingers (an MQTT client waits up to
    10 s for a broker that is already gone to acknowledge its disconnect)."""
    task.cancel()
    if not (await asyncio.wait({task}, timeout=grace))[0]:
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _sales_report(
    backend: SimBackend, started: dt.date, decimals: int
) -> dict[str, Any] | None:
    """Ask vmcd for the sales of the demo's days (``sales.query``) and print them per slot."""
    today = dt.datetime.now(dt.UTC).date()
    fields = {"from": started.isoformat(), "to": today.isoformat()}
    try:
        reply = await backend.command(DEVICE, "sales.query", **fields)
    except TimeoutError:
        print("--- vmcd's sales report: no reply ---")
        return None
    if not reply["ok"]:
        print(f"--- vmcd's sales report: refused, {reply['code']}: {reply['message']} ---")
        return None
    result: dict[str, Any] = reply["result"]
    print(f"--- vmcd's sales report, {result['from']} to {result['to']} ({result['timezone']}) ---")
    print(
        f"{'item':>6} {'product':<10} {'price':>6} {'sold':>5} {'value':>7} {'left':>5} {'cap':>4}"
    )
    for slot in result["slots"]:
        price = "-" if slot["price"] is None else checks.money(slot["price"], decimals)
        left = "-" if slot["itemsLeft"] is None else slot["itemsLeft"]
        capacity = "-" if slot["capacity"] is None else slot["capacity"]
        print(
            f"{slot['slotId']:>6} {slot['product'] or '-':<10} {price:>6} {slot['sales']:>5}"
            f" {checks.money(slot['cash'], decimals):>7} {left:>5} {capacity:>4}"
        )
    for title, buckets in (
        ("by payment", result["payment"]),
        ("by vend type", result["vend_type"]),
    ):
        shown = ", ".join(
            f"{name} {b['count']} ({checks.money(b['amount'], decimals)})"
            for name, b in buckets.items()
        )
        print(f"{title:>13}: {shown}")
    refunds = result["refunds"]["success"]
    print(
        f"{'refunds':>13}: {refunds['count']} ({checks.money(refunds['amount'], decimals)}),"
        f" net {checks.money(result['net'], decimals)}"
    )
    return result


def sales_check(books: Books, sales: dict[str, Any] | None) -> checks.Check:
    """vmcd's sales report against the backend's books, counted by payment and by vend type."""
    name = "sales report vs books"
    if sales is None:
        return checks.missing(name, "vmcd did not answer sales.query")
    vended = books.vended_by_type()
    by_credit = len(credit_vends(books))  # paid vends the machine approved from a voucher/credit
    cash = len(books.sales)
    expected = {
        "cash": cash,
        "cashless": sum(vended.values()) + by_credit,
        "paid": vended["paid"] + by_credit + cash,  # a cash sale is a paid vend
        "free": vended["free"],
        "test": vended["test"],
        "refunded": sum(books.refunds.values()),
    }
    reported = {
        key: int(buckets[key]["count"])
        for buckets in (sales["payment"], sales["vend_type"])
        for key in buckets
    } | {"refunded": int(sales["refunds"]["success"]["amount"])}
    shown = ", ".join(f"{key} {count}" for key, count in expected.items())
    if reported == expected:
        return checks.Check(name, True, "match", f"{shown} on both sides")
    theirs = ", ".join(f"{key} {reported.get(key, '-')}" for key in expected)
    return checks.Check(
        name, False, "MISMATCH", f"the backend booked {shown}; vmcd reported {theirs}"
    )


def _print_books(backend: SimBackend, stats: TimingStats, decimals: int) -> None:
    summary = backend.books.summary()
    ended = summary["ended_without_vend"]
    rows = {
        "transactions": summary["transactions"],
        "vended": summary["vended"],
        "failed": summary["failed"],
        "unknown": summary["unknown"],
        "ended without vend": ", ".join(f"{k} {v}" for k, v in sorted(ended.items())) or "none",
        "charged": checks.money(summary["charged"], decimals),
        "refunded": checks.money(summary["refunded"], decimals),
        "cash sales": summary["cash_sales"],
        "events": summary["events"],
        "duplicates dropped": summary["duplicates_dropped"],
        "stock (vmcd reported)": ", ".join(
            f"item {n} {v}" for n, v in backend.books.stock.machine_levels().items()
        ),
        "balances": ", ".join(
            f"{m} {checks.money(v, decimals)}" for m, v in sorted(backend.books.balances.items())
        ),
    }
    print("--- the backend's books ---")
    for key, value in rows.items():
        print(f"{key:>24}: {value}")
    times = sorted(stats.response_s)
    if times:
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{'bus answers':>24}: {len(times)}, p99 {p99 * 1000:.3f} ms")


async def local_demo(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> int:
    """vmcd without a cloud; its exit code says whether its journal and the VMC agree."""
    state = state_dir(stack, args.state_dir)
    recorder = stack.enter_context(recording(args.record))
    pair = PtyPair()
    stack.callback(pair.close)
    daemon = DaemonProcess(pair, state, level=args.level, local_approval="accept")
    print(f"vmcd on {pair.device_url}, approving every vend as a free vend")
    await daemon.start()
    stack.push_async_callback(daemon.stop, DAEMON_STOP_S)
    vmc = VmcMaster(pair.master, recorder=recorder)
    stack.callback(vmc.close)
    report = await play_customers(vmc, args)
    code = await daemon.stop(DAEMON_STOP_S)
    print(summarise(report, vmc.stats))
    records = _journal_records(state / "journal.sqlite3")
    print(f"daemon's journal: {describe_journal(records)}")
    decimals = vmc.info.money.minor_decimals
    return checks.report(
        local_checks(records, vmc.sales, vmc.stats, report, vmcd_code=code, decimals=decimals)
    )


async def play_customers(
    vmc: VmcMaster, args: argparse.Namespace, *, wait_s: float = 10.0
) -> Report:
    """Initialise the reader (waiting up to ``wait_s`` for it) and play ``args.sessions``."""

    async def init() -> ReaderInfo:
        return await vmc.initialise(level=args.level, wait_s=wait_s)

    print(f"reader initialised: {(await init()).describe()}", flush=True)
    rng = random.Random(args.seed)
    customers = Customers(vmc, rng, poll_period=args.poll_ms / 1000, init=init)
    return await run_customers(customers, args.sessions, on_result=_print_result)


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
            f"bus answers: {len(times)}  p50 {statistics.median(times) * 1000:.3f} ms"
            f"  p99 {p99 * 1000:.3f} ms  max {times[-1] * 1000:.3f} ms"
        )
    return "\n".join(lines)


def session_problems(report: Report) -> checks.Check:
    broken = [f"session {r.number} ({r.customer}): {r.detail}" for r in report.errors]
    return checks.problems("sessions", broken, len(report.results), "sessions ended illegally")


def _journal_records(path: Path) -> list[JournalRecord]:
    journal = Journal(path)
    try:
        return journal.records()
    finally:
        journal.close()


def describe_journal(records: Sequence[JournalRecord]) -> str:
    """What the daemon booked, by kind and vend type."""
    counts = Counter((r.kind, r.vend_type.value if r.vend_type else "cash") for r in records)
    rows = ", ".join(f"{kind} ({vend_type})={n}" for (kind, vend_type), n in sorted(counts.items()))
    return rows or "empty"


def local_checks(
    records: Sequence[JournalRecord],
    sales: SalesCounters,
    stats: TimingStats,
    report: Report,
    *,
    vmcd_code: int | None,
    decimals: int,
) -> list[checks.Check]:
    """The local demo's checks: vmcd's journal against what the VMC vended and sold."""

    def booked(kind: str) -> Tally:
        rows = [r for r in records if r.kind == kind]
        return Tally(len(rows), sum(r.amount or 0 for r in rows))

    return [
        session_problems(report),
        checks.compare(
            "free vends, journal vs VMC",
            ("vmcd booked", booked("vend_success")),
            ("the VMC vended", sales.cashless),
            decimals=decimals,
        ),
        checks.compare(
            "cash sales, journal vs VMC",
            ("vmcd booked", booked("cash_sale")),
            ("the VMC sold", sales.cash),
            decimals=decimals,
        ),
        stats.check(),
        vmcd_stopped(vmcd_code),
    ]
