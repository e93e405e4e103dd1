"""The demo with vmc-bridge: a Connectivity Platform third party sells through a vmc machine.

The same machine as the main demo (vmcd on a pty pair, the simulated VMC, a private Mosquitto)
with ``vmc-bridge`` beside it (its SQLite file in the demo's temporary folder) and a third party
written to the platform's documents (:mod:`sim.third_party`): the app locks the machine for a
member through the bridge (``/api/lock``), answers the selection's ``/txn/request`` with
``/api/paid`` (or refuses it: the member cannot pay) and books the outcome from ``/txn/vend`` or
``/txn/unlock``; the feeds bring it the sales, refills and stock alerts.

The simulated backend still runs, as the operator's own: it pushes the planogram and refills
what runs low, and answers no request (the third party is the one that approves; two deciders
would race). The bridge signs its commands with a key of its own, made in the demo's folder,
which vmcd trusts beside the backend's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from drivers.pty import PtyPair
from protocols.errors import VmcError
from sim import checks
from sim.backend import Policy, SimBackend
from sim.bridge_proc import BridgeProcess, BridgeSetup
from sim.checks import Tally
from sim.demo import (
    DAEMON_STOP_S,
    DEVICE,
    KINDS,
    MEMBERS,
    SLOTS,
    StockNews,
    cloud_daemon,
    demo_backend,
    load_planogram,
    state_dir,
    until_reader_enabled,
    vmcd_stopped,
)
from sim.scenarios import Customers
from sim.third_party import AppBooks, AppServer, Order, serving
from sim.trace import recording
from sim.vmc_counters import SalesCounters
from sim.vmc_master import ReaderInfo, TimingStats, VmcMaster
from vmc.cloud.signing import DeviceKey

THIRD_PARTY = "demo-app"
BRIDGE_KINDS = ("app_purchase", "app_vend_failure", "app_cancel", "app_walk_away", "cash")
"""The main demo's customers that a third party of the platform meets (its locks carry no
vend type, and a select-first customer is nobody's order)."""
LOCK_TIMEOUT_S = 2.0
"""The bridge's lock timeout: short, so a customer who walks away frees the machine soon."""
OUTCOME_WAIT_S = 10.0
DRAIN_S = 15.0


async def bridge_demo(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> int:
    """The third party's sessions through the bridge; the exit code says whether its books,
    the feeds and vmcd agree with what the VMC saw."""
    state = state_dir(stack, args.state_dir)
    recorder = stack.enter_context(recording(args.record))
    key_file = state / "bridge.key"
    bridge_key = (  # a key file as `vmctl keygen` writes one; a kept folder keeps it
        DeviceKey.load(str(key_file)) if key_file.exists() else DeviceKey.create(str(key_file))
    )
    backend, url, cloud_toml = await demo_backend(
        stack, args, state, DEVICE, answers=False, also_trusted=(bridge_key.public,)
    )
    books = AppBooks(Policy(args.policy), dict(MEMBERS))
    api_key, outbound_key = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    http = await stack.enter_async_context(httpx.AsyncClient())
    app = AppServer(books, http, api_key=api_key, outbound_key=outbound_key)
    stack.push_async_callback(app.close)
    app_url = await stack.enter_async_context(serving(app.app))
    bridge = BridgeProcess(
        BridgeSetup(
            url, THIRD_PARTY, app_url, DEVICE, api_key, outbound_key, LOCK_TIMEOUT_S, key_file
        ),
        state,
    )
    stack.push_async_callback(bridge.stop)
    await bridge.start()
    http.base_url = httpx.URL(bridge.url)
    print(f"vmc-bridge on {bridge.url}: bridge.toml, bridge.log and bridge.sqlite3 in {state}")
    print(
        f"third party {THIRD_PARTY} on {app_url} ({books.policy.value}) sells through it,"
        f" with X-API-Key {api_key}"
    )

    pair = PtyPair()
    stack.callback(pair.close)
    config = state / "vmc.toml"
    config.write_text(cloud_toml)
    print(f"vmcd on {pair.device_url} as {DEVICE}")
    daemon = await cloud_daemon(stack, pair, state, level=args.level, url=url, config=config)
    vmc = VmcMaster(pair.master, recorder=recorder)
    stack.callback(vmc.close)

    async def init() -> ReaderInfo:
        return await vmc.initialise(level=args.level)

    print(f"reader initialised: {(await init()).describe()}")
    decimals = vmc.info.money.minor_decimals
    await _until_online(app)
    news = StockNews(backend)
    await load_planogram(backend, news, decimals)
    rng = random.Random(args.seed)
    menu = {number: slot.price for number, slot in SLOTS.items()}
    customers = Customers(vmc, rng, poll_period=args.poll_ms / 1000, init=init, menu=menu)
    broken: list[str] = []
    for number in range(1, args.sessions + 1):
        kind = rng.choices(BRIDGE_KINDS, weights=[KINDS[k][0] for k in BRIDGE_KINDS])[0]
        sales = len(backend.books.sales) + (kind == "cash")
        line, problem = await _play(
            kind, number, customers=customers, app=app, backend=backend, rng=rng, decimals=decimals
        )
        if problem:
            broken.append(f"session {number}: {problem}")
        print(line)
        await news.settle(sales)
        await news.refill_alarmed(news.show())
    undelivered = await _drain(app, customers)
    _print_books(books, decimals)
    code = await daemon.stop(DAEMON_STOP_S)
    bridge_code = await bridge.stop()
    return checks.report(
        bridge_checks(
            books,
            vmc.sales,
            backend.books.stock.machine_levels(),
            vmc.stats,
            broken=broken,
            sessions=args.sessions,
            undelivered=undelivered,
            vmcd_code=code,
            bridge_code=bridge_code,
            decimals=decimals,
        )
    )


async def _until_online(app: AppServer) -> None:
    """Until the bridge has heard the machine come online (its retained status)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OUTCOME_WAIT_S
    while not await app.online(DEVICE):
        if loop.time() > deadline:
            raise VmcError(f"vmc-bridge did not see {DEVICE} online within {OUTCOME_WAIT_S:g} s")
        await asyncio.sleep(0.1)


async def _play(
    kind: str,
    number: int,
    *,
    customers: Customers,
    app: AppServer,
    backend: SimBackend,
    rng: random.Random,
    decimals: int,
) -> tuple[str, str | None]:
    """One customer; the session's line and what went wrong (None: nothing)."""
    _, scenario, locks = KINDS[kind]
    member = rng.choice(list(MEMBERS)) if locks else None
    order: Order | None = None
    if member is not None:
        txn_ref = f"order-{number}"
        answer = await app.lock(DEVICE, txn_ref, member)
        if not answer.get("success"):
            return f"session {number:3d} ERR {kind:<17} lock refused: {answer.get('message')}", (
                f"lock refused: {answer.get('message')}"
            )
        order = app.books.orders[txn_ref]
    result = await customers.run(scenario, number)
    if order is not None:
        ended = order
        await _idle_until(customers, app, lambda: ended.outcome is not None, OUTCOME_WAIT_S)
    await until_reader_enabled(customers, backend)
    problem = None if result.ok else result.detail
    if problem is None and order is not None and not _agrees(result.outcome, order):
        problem = f"the VMC saw {result.outcome}, the third party {order.outcome}"
    who = member or "cash"
    app_side = "-" if order is None else _describe(order, decimals)
    line = (
        f"session {number:3d} {'ERR' if problem else 'ok '} {kind:<17} {who:<6}"
        f" vmc: {result.outcome:<12} {THIRD_PARTY}: {app_side}"
    )
    return line, problem


def _agrees(vmc_outcome: str, order: Order) -> bool:
    """The VMC's outcome and the third party's, from its callbacks, say the same."""
    if vmc_outcome == "vended":
        return order.vended is True
    if vmc_outcome == "vend_failed":
        return order.vended is False
    return order.unlocked is not None


def _describe(order: Order, decimals: int) -> str:
    shown = order.outcome or "open"
    if order.charged:
        shown += f", charged {checks.money(order.charged, decimals)}"
    return shown


async def _idle_until(
    customers: Customers, app: AppServer, probe: Callable[[], Any], timeout: float
) -> None:
    """Poll the reader, as a VMC does between customers, until the third party's books say
    ``probe``."""
    done = asyncio.create_task(app.wait_for(probe, timeout))
    try:
        while not done.done():
            await customers.idle()
        done.result()
    except TimeoutError:
        raise VmcError(f"{THIRD_PARTY} heard no outcome within {timeout:g} s") from None
    finally:
        done.cancel()


async def _drain(app: AppServer, customers: Customers) -> list[dict[str, Any]]:
    """Until the bridge has delivered every callback (or ``DRAIN_S`` passed); what is left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_S
    while (left := await app.undelivered()) and loop.time() < deadline:
        await customers.idle()
    return left


def _print_books(books: AppBooks, decimals: int) -> None:
    outcomes = Counter(order.outcome or "open" for order in books.orders.values())
    paths = Counter(path for path, _ in books.calls)
    rows = {
        "orders": ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "none",
        "charged": checks.money(books.charged(), decimals),
        "balances": ", ".join(
            f"{m} {checks.money(v, decimals)}" for m, v in sorted(books.balances.items())
        ),
        "callbacks": ", ".join(f"{p} {n}" for p, n in sorted(paths.items())),
        "duplicates dropped": books.duplicates,
    }
    print(f"--- {THIRD_PARTY}'s books ---")
    for key, value in rows.items():
        print(f"{key:>24}: {value}")
    planogram = _last_planogram(books)
    for coil in planogram:
        price = checks.money(coil["price"], decimals) if "price" in coil else "-"
        print(
            f"{'coil ' + coil['formatted_code']:>24}: {coil.get('name', '-')} at {price},"
            f" stock {coil.get('current_stock', '-')} of {coil.get('capacity', '-')}"
            f" (par {coil.get('restock_count', '-')})"
        )


def _last_planogram(books: AppBooks) -> list[dict[str, Any]]:
    """The coils as the last feed that carried them said."""
    feeds = [b for p, b in books.calls if p in ("/feed/transactions", "/feed/refills")]
    return list(feeds[-1]["planogram"]) if feeds else []


def bridge_checks(
    books: AppBooks,
    sales: SalesCounters,
    levels: dict[int, int],
    stats: TimingStats,
    *,
    broken: list[str],
    sessions: int,
    undelivered: list[dict[str, Any]],
    vmcd_code: int | None,
    bridge_code: int | None,
    decimals: int,
) -> list[checks.Check]:
    """The bridge demo's checks: the third party's books and feeds against the VMC and vmcd."""
    vended = [o for o in books.orders.values() if o.vended]
    cash = [b for b in books.bodies("/feed/transactions") if b["cash_value"] > 0]
    card = [b for b in books.bodies("/feed/transactions") if b["cashless_value"] > 0]
    feed_levels = {
        int(c["code"]): int(c["current_stock"])
        for c in _last_planogram(books)
        if "current_stock" in c
    }
    open_orders = [o.txn_ref for o in books.orders.values() if o.outcome is None]
    return [
        checks.problems("sessions", broken, sessions, "sessions ended illegally"),
        checks.compare(
            "app sales, books vs VMC",
            (f"{THIRD_PARTY} charged", Tally(len(vended), books.charged())),
            ("the VMC vended", sales.cashless),
            decimals=decimals,
        ),
        checks.compare(
            "app sales, feed vs VMC",
            ("/feed/transactions", Tally(len(card), sum(b["cashless_value"] for b in card))),
            ("the VMC vended", sales.cashless),
            decimals=decimals,
        ),
        checks.compare(
            "cash sales, feed vs VMC",
            ("/feed/transactions", Tally(len(cash), sum(b["cash_value"] for b in cash))),
            ("the VMC sold", sales.cash),
            decimals=decimals,
        ),
        checks.compare_levels(
            "stock, feed vs vmcd", ("the feed's coils", feed_levels), ("vmcd reported", levels)
        ),
        checks.problems("orders ended", open_orders, len(books.orders), "orders without outcome"),
        checks.problems(
            "callbacks delivered",
            [f"{d['path']} ({d['last_error']})" for d in undelivered],
            len(books.calls) + len(undelivered),
            "callbacks not delivered",
        ),
        stats.check(),
        vmcd_stopped(vmcd_code),
        checks.Check(
            "vmc-bridge stopped",
            bridge_code == 0,
            "ok" if bridge_code == 0 else "FAILED",
            f"exit code {bridge_code}",
        ),
    ]
