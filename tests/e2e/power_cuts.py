"""Money is sacred: kill -9 vmcd at random points of its flows and check the books after.

One place for the power-cut loops of the remote vend, the voucher and credit sessions and the
stock stream, used by their quick tests and by the suite that runs a thousand cuts
(``tests/e2e/test_power_cut_suite.py``, ``bench/faults_power.py``). A flow runs one batch on a
fresh machine (its own journal), cuts the daemon ``runs`` times, restarts it on the same
journal each time, then checks its books and counts each fault it finds instead of stopping at
the first, so a long run reports every figure:

- **lost**: something the backend started (a transaction, voucher, credit or stock command) or
  the VMC dispensed has no outcome in the backend's books;
- **double approval**: the simulated VMC heard more approvals than one session may give;
- **double booking**: an outcome heard twice after dropping duplicates by event id, or stock
  levels that are not what each command applied once makes (one applied twice);
- **inconsistent**: money or stock that does not add up (a ``success`` never dispensed, a
  dispensed vend booked as failed, a charge that is not the successful vends, a journal whose
  levels disagree with its own history or planogram, a command half applied).

``redeliveries`` counts the events the backend dropped as duplicates by id: the contract's
at-least-once delivery after a cut (an event sent but not yet acknowledged is sent again),
which is not a fault as long as nothing is booked twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import cbor2

from protocols.mdb import commands as c
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.waiting import wait_until

FINAL_STATES = {"denied", "expired", "cancelled"}
SETTLE_S = 30.0
"""How long the books may take to settle after the last restart on a busy machine."""


class Fault(StrEnum):
    LOST = "lost"
    DOUBLE_APPROVAL = "double_approvals"
    DOUBLE_BOOKING = "double_bookings"
    INCONSISTENT = "inconsistent"


@dataclass
class Figures:
    """What one flow's cuts came to; ``problems`` names each fault found."""

    flow: str
    runs: int = 0
    mid_session: int = 0
    """Cuts that fell while a session (or a stream of commands) was under way."""
    outcomes: Counter[str] = field(default_factory=Counter)
    faults: Counter[Fault] = field(default_factory=Counter)
    redeliveries: int = 0
    elapsed: float = 0.0
    problems: list[str] = field(default_factory=list)

    def check(self, holds: bool, fault: Fault, what: object) -> None:
        if not holds:
            self.faults[fault] += 1
            self.problems.append(f"{self.flow}: {fault}: {what}")

    def add(self, other: Figures) -> None:
        self.runs += other.runs
        self.mid_session += other.mid_session
        self.outcomes.update(other.outcomes)
        self.faults.update(other.faults)
        self.redeliveries += other.redeliveries
        self.elapsed += other.elapsed
        self.problems += other.problems

    def report(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "mid_session": self.mid_session,
            "outcomes": dict(sorted(self.outcomes.items())),
            **{fault.value: self.faults[fault] for fault in Fault},
            "redeliveries": self.redeliveries,
            "elapsed_s": round(self.elapsed, 1),
            "s_per_cut": round(self.elapsed / self.runs, 3) if self.runs else None,
        }


async def _cut_during(
    rig: Rig, cuts: CutPoints, figures: Figures, customer: asyncio.Task[float], run: int
) -> bool:
    """Run 0 only times a whole session (False); later runs cut the power where ``cuts``
    says, mid-session or not, and restart vmcd."""
    if not run:
        await cuts.probe(customer)
        return False
    await asyncio.sleep(cuts.next())  # where the cut falls, not a wait
    figures.mid_session += not cuts.ran_whole(customer)
    await cut_and_restart(rig, customer)
    return True


async def cut_and_restart(rig: Rig, customer: asyncio.Task[float] | None = None) -> None:
    """kill -9 the daemon, let the VMC's session end against the dead reader, start it again
    on the same journal (the VMC initialises it as after a power cut)."""
    rig.daemon.kill()
    assert rig.daemon.proc is not None
    await rig.daemon.proc.wait()
    if customer is not None:
        await asyncio.wait_for(customer, 10)
    await rig.daemon.stop()
    rig.backend.state.pop(DEVICE, None)
    await rig.restart_daemon()


@dataclass
class CutPoints:
    """Where the cuts fall: anywhere in a span 25 % longer than the sessions that ran whole
    lately took (the median of the last few), so on a loaded machine as on an idle one most
    cuts land inside a session and some after it. A batch's first session runs uncut."""

    rng: random.Random
    took: list[float] = field(default_factory=list)

    async def probe(self, session: asyncio.Task[float]) -> None:
        self.took.append(await asyncio.wait_for(session, 10))

    def next(self) -> float:
        return self.rng.uniform(0.0, 1.25 * statistics.median(self.took[-9:]))

    def ran_whole(self, session: asyncio.Task[float]) -> bool:
        """Whether ``session`` ended before the cut (then its time counts)."""
        if session.done() and not session.cancelled() and session.exception() is None:
            self.took.append(session.result())
            return True
        return False


def _reader_dead(rig: Rig, answer: Any) -> bool:
    proc = rig.daemon.proc
    return bool(answer.timed_out and proc is not None and proc.returncode is not None)


# --- remote vends --------------------------------------------------------------------------


@dataclass
class OnTheBus:
    """What the simulated VMC saw of one session: the approvals (item, amount) it heard, each
    dispensed at once."""

    approvals: list[tuple[int, int]] = field(default_factory=list)


async def _selections(
    rig: Rig, seen: OnTheBus, items: list[int], prices: dict[int, int], dispense_s: float
) -> float:
    """One session of selections, each dispensed as soon as the VMC has its approval; the
    seconds it took."""
    vmc = rig.vmc
    loop = asyncio.get_running_loop()
    started = loop.time()
    for item in items:
        if not (await vmc.vend_request(vmc.money(prices[item]), item)).is_ack:
            return loop.time() - started
        deadline = loop.time() + 6.0
        while loop.time() < deadline:
            answer = await vmc.poll()
            if answer.code == c.Resp.VEND_APPROVED:
                amount = vmc.info.money.to_minor(int.from_bytes(answer.data[1:], "big"))
                seen.approvals.append((item, amount))
                if dispense_s:
                    await asyncio.sleep(dispense_s)  # the product drops
                await vmc.vend_success(item)
                break
            if answer.code == c.Resp.VEND_DENIED:
                break
            if _reader_dead(rig, answer):
                return loop.time() - started
            await asyncio.sleep(0.002)
        else:
            return loop.time() - started
    await vmc.session_complete()
    return loop.time() - started


async def remote_vends(
    tmp_path: Path, broker: MosquittoBroker, runs: int, rng: random.Random
) -> Figures:
    """Lock, vend, and a cut anywhere in the session (a first one runs uncut)."""
    figures = Figures("remote_vend", runs=runs)
    seen: dict[str, OnTheBus] = {}
    started = time.monotonic()
    async with machine(tmp_path, broker, balances={"alice": 10**9}) as rig:
        backend = rig.backend
        cuts = CutPoints(rng)
        for run in range(runs + 1):
            txn_id = await backend.lock(DEVICE, "alice")
            seen[txn_id] = OnTheBus()
            item = rng.randrange(1, 60)
            customer = asyncio.create_task(_selections(rig, seen[txn_id], [item], {item: 150}, 0.0))
            if not await _cut_during(rig, cuts, figures, customer, run):
                continue
            with contextlib.suppress(TimeoutError):
                await backend.wait_done(txn_id, 20)
        books = backend.books

        def heard(txn_id: str) -> int:
            """The vend results and end states the backend heard for ``txn_id``."""
            vends = sum(
                bool(e.get("txn_id") == txn_id and e["type"] == "txn.vend")
                for e in backend.event_log
            )
            entry = books.entries.get(txn_id)
            return vends + (sum(s in FINAL_STATES for s in entry.states) if entry else 0)

        # Outcomes settle once more after the last restart.
        await wait_until(
            lambda: rig.outbox_size() == 0 and all(heard(txn_id) for txn_id in seen), SETTLE_S
        )
        figures.redeliveries = books.duplicates
    check = figures.check
    check(set(books.entries) == set(seen), Fault.INCONSISTENT, "transactions nobody started")
    for txn_id, bus in seen.items():
        entry = books.entries[txn_id]
        dispensed = bool(bus.approvals)
        check(heard(txn_id) >= 1, Fault.LOST, (txn_id, entry.states))
        check(heard(txn_id) <= 1, Fault.DOUBLE_BOOKING, (txn_id, entry.states))
        check(len(bus.approvals) <= 1, Fault.DOUBLE_APPROVAL, (txn_id, bus.approvals))
        if entry.result == "success":
            check(dispensed, Fault.INCONSISTENT, ("success not dispensed", txn_id, entry.states))
        if dispensed:
            check(
                entry.result in ("success", "unknown"),
                Fault.INCONSISTENT,
                ("dispensed but booked otherwise", txn_id, entry.states),
            )
        figures.outcomes[entry.result or (entry.states or ["none"])[-1]] += 1
    charged = sum(e.charged for e in books.entries.values())
    paid = sum(e.paid for e in books.entries.values() if e.result == "success")
    check(charged == paid, Fault.INCONSISTENT, ("charged", charged, "paid vends", paid))
    figures.elapsed = time.monotonic() - started
    return figures


# --- vouchers and credits ------------------------------------------------------------------

PRICES = {1: 200, 2: 250, 3: 150, 4: 120}
VOUCHER_SET = [3]
CREDIT = 400
DISPENSE_S = 0.03
"""How long the VMC takes to dispense: a session lasts long enough for cuts to fall inside."""


def _ready(rig: Rig) -> bool:
    state = rig.backend.state.get(DEVICE) or {}
    return state.get("reader") == "enabled" and not state.get("txn") and not state.get("credit")


async def vouchers_and_credits(
    tmp_path: Path, broker: MosquittoBroker, runs: int, rng: random.Random
) -> Figures:
    """Alternately a voucher (one vend of its set) and a credit (two vends, the third over
    what is left), a cut anywhere in the session (a first one, a voucher, runs uncut)."""
    figures = Figures("voucher_credit", runs=runs)
    seen: dict[tuple[str, str], OnTheBus] = {}
    started = time.monotonic()
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        cuts = CutPoints(rng)
        for run in range(runs + 1):
            if not await wait_until(lambda: _ready(rig), 20):
                figures.check(False, Fault.LOST, ("machine not ready before run", run))
                break
            tag = rng.getrandbits(32)
            if run % 2:
                key = ("credit", f"k-{run}-{tag:08x}")
                reply = await backend.credit(DEVICE, key[1], CREDIT)
                items = [1, 3, 2]  # 200 + 150; 250 is over the 50 left
            else:
                key = ("voucher", f"v-{run}-{tag:08x}")
                reply = await backend.voucher(DEVICE, key[1], value=150, selections=VOUCHER_SET)
                items = [4, 3]  # refused, then used
            assert reply["ok"], reply
            seen[key] = OnTheBus()
            customer = asyncio.create_task(_selections(rig, seen[key], items, PRICES, DISPENSE_S))
            if not await _cut_during(rig, cuts, figures, customer, run):
                continue
            with contextlib.suppress(TimeoutError):
                await backend.wait_credit(*key, timeout=20)
        books = backend.books

        def outcomes(key: tuple[str, str]) -> int:
            kind, credit_id = key
            return sum(
                e["type"] == f"{kind}.status" and e.get(f"{kind}_id") == credit_id
                for e in backend.event_log
            )

        await wait_until(
            lambda: rig.outbox_size() == 0 and all(outcomes(key) for key in seen), SETTLE_S
        )
        figures.redeliveries = books.duplicates
    check = figures.check
    check(not books.entries, Fault.INCONSISTENT, "an approval outside a voucher or credit")
    for key, bus in seen.items():
        entry = books.credits[key]
        check(outcomes(key) >= 1, Fault.LOST, key)
        check(outcomes(key) <= 1, Fault.DOUBLE_BOOKING, key)
        if entry.status is None:
            continue
        check(entry.agrees(), Fault.INCONSISTENT, ("outcome vs its vends", key, entry))
        dispensed = sum(amount for _, amount in bus.approvals)
        check(
            all(amount == PRICES[item] for item, amount in bus.approvals),
            Fault.INCONSISTENT,
            ("approved amount", key, bus.approvals),
        )
        if entry.kind == "voucher":
            check(len(bus.approvals) <= 1, Fault.DOUBLE_APPROVAL, (key, bus.approvals))
            check(
                all(item in VOUCHER_SET for item, _ in bus.approvals),
                Fault.INCONSISTENT,
                ("voucher paid outside its set", key, bus.approvals),
            )
        check(dispensed <= entry.value, Fault.DOUBLE_APPROVAL, ("over its value", key, dispensed))
        used = entry.used or 0
        check(dispensed <= used <= entry.value, Fault.INCONSISTENT, ("used", key, used))
        results = [v["result"] for v in entry.vends]
        check("failure" not in results, Fault.INCONSISTENT, ("dispensed, booked failed", key))
        check(
            results.count("success") <= len(bus.approvals),
            Fault.INCONSISTENT,
            ("success not dispensed", key, results),
        )
        check(len(bus.approvals) <= len(results), Fault.LOST, ("unreported vend", key, results))
        figures.outcomes[f"{entry.kind}:{entry.status.get('reason')}"] += 1
    figures.elapsed = time.monotonic() - started
    return figures


# --- refills and planogram changes ---------------------------------------------------------

PRODUCTS = [{"id": "bar"}, {"id": "chips"}, {"id": "nuts"}]
STREAM = 12
"""Stock commands sent back to back before each cut."""


def planogram(version: int) -> dict[str, Any]:
    """Selection 2 sells chips or nuts by the version's parity, so a change unloads it."""
    levels = {"capacity": 10, "par_level": 8, "alarm_level": 2}
    return {
        "version": version,
        "products": PRODUCTS,
        "selections": [
            {"number": 1, "product": "bar", "price": 150, **levels},
            {"number": 2, "product": "chips" if version % 2 else "nuts", "price": 200, **levels},
        ],
    }


def _journal(rig: Rig) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(sqlite3.connect(rig.daemon.state_dir / "journal.sqlite3"))


def applied_ops(rig: Rig) -> list[str]:
    """The stock commands the journal applied, by id."""
    with _journal(rig) as db:
        return [str(r[0]) for r in db.execute("SELECT op_id FROM stock_ops")]


def stock_books(rig: Rig, figures: Figures) -> int:
    """Check the journal's stock invariants (old or new stock, never a mix); the stored
    planogram's version."""
    with _journal(rig) as db:
        ops = {r[0] for r in db.execute("SELECT op_id FROM stock_ops")}
        replies = {r[0]: cbor2.loads(r[1]) for r in db.execute("SELECT id, reply FROM commands")}
        levels = dict(db.execute("SELECT key, level FROM stock_levels").fetchall())
        history = db.execute(
            "SELECT op_id, key, before, after FROM stock_history ORDER BY seq"
        ).fetchall()
        version, document = db.execute("SELECT version, document FROM planogram").fetchone()
    check = figures.check
    check(ops == set(replies), Fault.LOST, ("applied without reply or back", ops ^ set(replies)))
    check(all(r["ok"] for r in replies.values()), Fault.INCONSISTENT, "a refused stock command")
    for op_id, reply in replies.items():
        changed = sum(h[0] == op_id for h in history)
        check(reply["result"]["changed"] == changed, Fault.INCONSISTENT, ("half applied", op_id))
    last = {key: after for _, key, _, after in history}
    check(
        levels == {key: last.get(key, 0) for key in levels},
        Fault.INCONSISTENT,
        ("levels vs history", levels),
    )
    numbers = {f"s:{s['number']}" for s in json.loads(document)["selections"]}
    check(set(levels) == numbers, Fault.INCONSISTENT, ("levels vs planogram", levels, numbers))
    return int(version)


def _expected_levels(commands: list[dict[str, Any]]) -> dict[str, int]:
    """The levels the commands make when each is applied once, in order."""
    levels = {"s:1": 0, "s:2": 0}
    for body in commands:
        if body["op"] == "planogram.set":
            levels["s:2"] = 0  # selection 2 changed product: unloaded
        else:
            for line in body["lines"]:
                levels[f"s:{line['selection']}"] += line["amount"]
    return levels


async def refills_and_planograms(
    tmp_path: Path, broker: MosquittoBroker, runs: int, rng: random.Random
) -> Figures:
    """A stream of refills and planogram changes, a cut somewhere in its first 40 ms; after the
    restart the backend resends (same id) what got no reply, as the contract asks."""
    figures = Figures("stock", runs=runs)
    started = time.monotonic()
    sent: list[dict[str, Any]] = []
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        version = 1
        first = await backend.command(DEVICE, "planogram.set", planogram=planogram(version))
        assert first["ok"], first
        for run in range(runs):
            stream: list[dict[str, Any]] = []
            for n in range(STREAM):
                body: dict[str, Any]
                if n % 4 == 3:
                    version += 1
                    body = {"op": "planogram.set", "planogram": planogram(version)}
                else:
                    body = {"op": "stock.refill", "lines": [{"selection": 1 + n % 2, "amount": 1}]}
                stream.append({"id": f"op-{run}-{n}", **body})
                await backend.send(DEVICE, stream[-1])
            await asyncio.sleep(rng.uniform(0.0, 0.04))  # where the cut falls, not a wait
            rig.daemon.kill()
            assert rig.daemon.proc is not None
            await rig.daemon.proc.wait()
            await rig.daemon.stop()
            stock_books(rig, figures)
            done = sum(op.startswith(f"op-{run}-") for op in applied_ops(rig))
            figures.mid_session += 0 < done < STREAM
            backend.state.pop(DEVICE, None)
            await rig.restart_daemon()
            await _resend_unanswered(rig, stream, figures)
            sent += stream
        stock_books(rig, figures)
        applied = set(applied_ops(rig))
        figures.redeliveries = backend.books.duplicates
        levels = rig.stock_levels()
    for body in sent:
        figures.check(body["id"] in applied, Fault.LOST, ("never applied", body["id"]))
    # A command applied twice (once before the cut, once resent) would show here.
    expected = _expected_levels(sent)
    figures.check(levels == expected, Fault.DOUBLE_BOOKING, ("levels", levels, "want", expected))
    figures.elapsed = time.monotonic() - started
    return figures


async def _resend_unanswered(rig: Rig, stream: list[dict[str, Any]], figures: Figures) -> None:
    """Wait for the restarted daemon, resend each command that has no reply, and wait for all
    the replies; count where the cut fell."""
    backend = rig.backend
    await wait_until(lambda: (backend.state.get(DEVICE) or {}).get("reader") == "enabled", 20)
    await wait_until(lambda: rig.outbox_size() == 0, 20)  # stored replies are out
    unanswered = [body for body in stream if body["id"] not in backend.replies]
    figures.outcomes["answered_before_cut"] += len(stream) - len(unanswered)
    figures.outcomes["resent"] += len(unanswered)
    for body in unanswered:
        await backend.send(DEVICE, body)
    await wait_until(lambda: all(body["id"] in backend.replies for body in stream), 20)
    refused = [backend.replies.get(b["id"], {}).get("code") for b in stream]
    figures.check(
        all(backend.replies.get(b["id"], {}).get("ok") for b in stream),
        Fault.LOST,
        ("no reply or refused", refused),
    )


Flow = Callable[[Path, MosquittoBroker, int, random.Random], Awaitable[Figures]]
FLOWS: dict[str, Flow] = {
    "remote_vend": remote_vends,
    "voucher_credit": vouchers_and_credits,
    "stock": refills_and_planograms,
}


@dataclass
class Suite:
    """Every flow's figures, summed over its batches."""

    seed: int
    flows: dict[str, Figures] = field(default_factory=dict)
    elapsed: float = 0.0

    def total(self) -> Figures:
        total = Figures("all")
        for figures in self.flows.values():
            total.add(figures)
        return total

    def report(self) -> dict[str, Any]:
        total = self.total()
        return {
            "seed": self.seed,
            "runs": total.runs,
            **{fault.value: total.faults[fault] for fault in Fault},
            "redeliveries": total.redeliveries,
            "elapsed_s": round(self.elapsed, 1),
            "flows": {name: figures.report() for name, figures in self.flows.items()},
            "problems": total.problems[:50],
        }


async def run_suite(
    workdir: Path,
    broker: MosquittoBroker,
    runs: int,
    seed: int,
    *,
    batch: int = 50,
    flows: tuple[str, ...] = tuple(FLOWS),
    on_batch: Callable[[Figures], None] | None = None,
) -> Suite:
    """``runs`` cuts shared out among ``flows`` in batches of ``batch``, each batch a fresh
    machine whose books are checked before the next starts."""
    rng = random.Random(seed)
    suite = Suite(seed, {name: Figures(name) for name in flows})
    started = time.monotonic()
    share = {name: runs // len(flows) + (i < runs % len(flows)) for i, name in enumerate(flows)}
    number = 0
    while any(share.values()):
        for name in flows:
            size = min(batch, share[name])
            if not size:
                continue
            share[name] -= size
            number += 1
            figures = await FLOWS[name](workdir / f"batch-{number}-{name}", broker, size, rng)
            suite.flows[name].add(figures)
            if on_batch is not None:
                on_batch(figures)
    suite.elapsed = time.monotonic() - started
    return suite
