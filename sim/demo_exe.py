"""The Executive demo (``vmc-sim demo --exe``): the remote-vend flow on a machine without MDB.

A private Mosquitto (unless ``--mqtt`` names one), the simulated backend, ``vmcd --exe`` on a
pty pair with price holding, and a simulated Executive VMC (:mod:`sim.exe_vmc`). vmc is the
master here: it polls the VMC all the time, sees a customer's selection in a CREDIT reply, asks
the backend, and sends VEND only for an approval. The backend pushes the planogram, whose
prices are the machine's price list; half-way it changes a price, and the next sales of that
item are at the new price. App members lock and select, walk-up customers select first, some
vends fail, some members' balances are short; a burst of PNAKs and a few seconds of a silent VMC
show the link's faults. The books and the checks close the run, as in the MDB demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

from drivers.pty import PtyPair
from protocols.errors import VmcError
from protocols.exe.commands import Command
from sim import StartError, checks
from sim.backend import Books, SimBackend
from sim.checks import Tally
from sim.daemon_proc import ExeDaemonProcess
from sim.demo import (
    DAEMON_STOP_S,
    MEMBERS,
    SLOTS,
    _print_books,
    demo_backend,
    planogram,
    signed_check,
    state_dir,
    vmcd_stopped,
)
from sim.exe_vmc import ExeVmc, Selection
from sim.vmc_master import TimingStats

DEVICE = "demo-exe-1"
SETTINGS = {
    "price_holding": True,
    "poll_interval": 0.05,
    "reply_timeout": 0.3,
    "silent_after": 1.5,
    "approval_timeout": 5.0,
    "vend_timeout": 10.0,
}
REQUEST_WAIT_S = 3.0  # the VMC's own wait for a VEND (a real one's: Vendo's C3, 0-250 s)
KINDS = {"app_purchase": 10, "select_first": 3, "app_vend_failure": 1}
NEW_PRICE = (1, 170)  # item 1 costs this from half-way on
SILENCE_S = 2.5
QUIET_GAP_S = 1.0
"""The longest the VMC may go without a command while it answers and nothing vends."""
WAIT_S = 20.0


@dataclass
class Run:
    """What the demo saw of each side: the VMC's selections, what they cost, where it was
    deliberately silent."""

    prices: dict[int, int] = field(default_factory=lambda: {n: s.price for n, s in SLOTS.items()})
    vended: list[tuple[Selection, int]] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    quiet: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Machine:
    """The demo's two sides of the machine and what it saw of them."""

    backend: SimBackend
    vmc: ExeVmc
    run: Run


async def exe_demo(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> int:
    """The flow on Executive; its exit code says whether the books and the VMC agree."""
    state = state_dir(stack, args.state_dir)
    backend, url, cloud_toml = await demo_backend(stack, args, state, DEVICE)
    policy = backend.policy
    pair = PtyPair()
    stack.callback(pair.close)
    config = state / "vmc.toml"
    config.write_text(
        "[exe]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in SETTINGS.items()) + cloud_toml
    )
    daemon = ExeDaemonProcess(
        pair, state, extra=("--mqtt", url, "--device-id", DEVICE, "--config", str(config))
    )
    print(f"vmcd --exe on {pair.device_url} as {DEVICE}, price holding, backend {policy.value}")
    vmc = ExeVmc(pair.master, request_wait_s=REQUEST_WAIT_S)
    vmc.start()
    stack.callback(vmc.close)
    await daemon.start()
    stack.push_async_callback(daemon.stop, DAEMON_STOP_S)
    await _enabled(backend)
    print("the Executive VMC answers vmc's polls (STATUS, CREDIT): link up, reader enabled")
    run = Run()
    prices = PricesSeen(state / "vmcd.log")
    await _load(backend, prices)
    rng = random.Random(args.seed)
    names = list(KINDS)
    machine = Machine(backend, vmc, run)
    for number in range(1, args.sessions + 1):
        await _events(number, args.sessions, machine, prices)
        kind = rng.choices(names, weights=[KINDS[n] for n in names])[0]
        print(await _play(number, kind, machine, rng))
    _print_books(backend, TimingStats(), 2)
    code = await daemon.stop(DAEMON_STOP_S)
    return checks.report(exe_checks(backend.books, vmc, run, args.sessions, code))


def _toml(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


async def _enabled(backend: SimBackend) -> None:
    try:
        await backend.wait_for(
            lambda: (backend.state.get(DEVICE) or {}).get("reader") == "enabled", WAIT_S
        )
    except TimeoutError:
        raise VmcError(f"vmcd --exe did not report an enabled reader within {WAIT_S:g} s") from None


class PricesSeen:
    """vmcd's word (its log) that the bus process has the planogram's prices: a selection the
    VMC shows before that is priced from the table the bus process had."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.seen = self._count()

    def _count(self) -> int:
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count('"exe_prices_sent"')

    async def sent(self) -> None:
        """Until vmcd sent a table since the last call."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while (count := self._count()) <= self.seen:
            if loop.time() > deadline:
                raise VmcError(f"vmcd sent no prices to its bus process within {WAIT_S:g} s")
            await asyncio.sleep(0.05)
        self.seen = count


async def _load(backend: SimBackend, prices: PricesSeen) -> None:
    await backend.stock_command(DEVICE, "planogram.set", planogram=planogram())
    await prices.sent()
    await backend.stock_command(DEVICE, "stock.restock")
    shown = ", ".join(f"line {n} {s.product} {checks.money(s.price)}" for n, s in SLOTS.items())
    print(f"planogram v1, vmc holds the prices: {shown}")


async def _events(number: int, sessions: int, machine: Machine, prices: PricesSeen) -> None:
    """What happens between customers: a price change, a PNAK burst, a silent VMC."""
    backend, vmc, run = machine.backend, machine.vmc, machine.run
    loop = asyncio.get_running_loop()
    if number == max(2, sessions // 2):
        item, price = NEW_PRICE
        document = planogram(2)
        document["selections"][item - 1]["price"] = price
        await backend.stock_command(DEVICE, "planogram.set", planogram=document)
        old, run.prices[item] = run.prices[item], price
        await prices.sent()
        print(f"{'price change':>13}: line {item} {checks.money(old)} -> {checks.money(price)}")
    if number == max(3, sessions // 3):
        vmc.pnak(3)
        print(f"{'line fault':>13}: the VMC garbles 3 commands (PNAK): vmc sends each again")
    if number == max(4, 2 * sessions // 3):
        started = loop.time()
        vmc.silence()
        await backend.wait_for(lambda: backend.state[DEVICE].get("mdb_link") == "down", WAIT_S)
        print(f"{'line fault':>13}: the VMC is silent: link down, reader inactive")
        await asyncio.sleep(max(0.0, SILENCE_S - (loop.time() - started)))
        vmc.silence(False)
        await _enabled(backend)
        await _credit_polled(vmc, since=loop.time())
        run.quiet.append((started, loop.time()))
        print(f"{'line fault':>13}: the VMC answers again: link up, reader enabled")


async def _credit_polled(vmc: ExeVmc, since: float) -> None:
    """Until vmc has polled CREDIT at or after ``since`` (the loop's monotonic clock).

    The first CREDIT reply after the link comes back may show a selection made while it was
    down, which vmc ignores as stale until the VMC shows none; a customer who selects before
    that poll would wait for nothing. A real one is slower than the poll; the demo's is not.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while Command.CREDIT not in vmc.commands(since):
        if loop.time() > deadline:
            raise VmcError(f"vmc sent no CREDIT within {WAIT_S:g} s of the link coming back")
        await asyncio.sleep(0.01)


async def _play(number: int, kind: str, machine: Machine, rng: random.Random) -> str:
    """One customer; the session's line."""
    backend, vmc, run = machine.backend, machine.vmc, machine.run
    item = rng.choice(sorted(SLOTS))
    member = rng.choice(list(MEMBERS)) if kind != "select_first" else None
    before = set(backend.books.entries)
    txn_id = await backend.lock(DEVICE, member) if member is not None else None
    selection = vmc.select(item, fail=kind == "app_vend_failure")
    try:
        outcome = await asyncio.wait_for(asyncio.shield(selection.done), WAIT_S)
        if txn_id is None:
            txn_id = await backend.wait_for(
                lambda: next(iter(set(backend.books.entries) - before), None), WAIT_S
            )
        entry = await backend.wait_done(txn_id, WAIT_S)
        await _enabled(backend)
    except TimeoutError:
        raise VmcError(f"session {number}: nothing settled within {WAIT_S:g} s") from None
    booked = entry.result or entry.states[-1]
    if outcome in ("vended", "failed"):
        run.vended.append((selection, run.prices[item]))
    if not _agree(outcome, booked):
        run.broken.append(f"session {number}: the VMC {outcome}, the backend {booked}")
    price = checks.money(run.prices[item])
    who = member or "walk-up"
    return (
        f"session {number:3d} {kind:<17} {who:<8} line {item} {price:>6}"
        f"  vmc: {outcome:<9} backend: {booked}"
    )


def _agree(outcome: str, booked: str) -> bool:
    """The VMC's end of a selection and the backend's of its transaction say the same."""
    expected = {"vended": {"success"}, "failed": {"failure"}}
    return booked in expected.get(outcome, {"denied", "expired", "cancelled"})


def exe_checks(
    books: Books, vmc: ExeVmc, run: Run, sessions: int, code: int | None
) -> list[checks.Check]:
    """The books against the VMC, one VEND per selection, and a VMC that never lacked polls."""
    booked = [e for e in books.entries.values() if e.result == "success"]
    charged = Tally(len(booked), sum(e.charged for e in booked))
    dropped = [value for selection, value in run.vended if selection.outcome == "vended"]
    twice = [f"line {s.byte}: {s.vends} VENDs" for s in vmc.selections if s.vends > 1]
    twice += [f"{vmc.stray_vends} VENDs with no selection"] if vmc.stray_vends else []
    return [
        checks.problems("sessions", run.broken, sessions, "sessions whose two sides disagree"),
        checks.compare(
            "app sales, books vs VMC",
            ("the backend charged", charged),
            ("the VMC vended", Tally(len(dropped), sum(dropped))),
        ),
        checks.problems("one VEND a selection", twice, len(vmc.selections), "selections"),
        signed_check(books),
        _polling(vmc, run),
        vmcd_stopped(code),
    ]


def _polling(vmc: ExeVmc, run: Run) -> checks.Check:
    """The VMC heard a command at least every QUIET_GAP_S, except while it vended (vmc waits
    for the VEND's result) or was silent on purpose (the loop's clock is the monotonic one the
    VMC stamps its commands with)."""
    gaps: list[str] = []
    heard = vmc.heard
    for before, after in itertools.pairwise(heard):
        gap = after.at - before.at
        vending = before.value == Command.VEND
        silent = any(start <= after.at and before.at <= end for start, end in run.quiet)
        if gap > QUIET_GAP_S and not vending and not silent:
            gaps.append(f"{gap:.2f} s")
    return checks.problems(
        "continuous polling", gaps, max(0, len(heard) - 1), f"gaps over {QUIET_GAP_S:g} s"
    )


def demo_flags_for_exe(args: argparse.Namespace) -> None:
    """What ``--exe`` cannot be combined with: StartError, one line."""
    if args.local:
        raise StartError("--exe runs with the cloud; --local is for MDB only")
    if args.record is not None:
        raise StartError("--record writes an MDB trace; an Executive run has none")
