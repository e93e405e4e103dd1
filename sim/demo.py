"""The main demo: the seven-step remote-vend flow, end to end, on one machine.

A private Mosquitto (unless ``--mqtt`` names a broker), the simulated backend, ``vmcd`` on a
pty pair with ``--mqtt``, and the simulated VMC. Members of a gym-style club buy through the
app (lock -> select -> request -> paid/deny -> vend -> result), some walk away or cancel, some
pay cash, and on an always-idle machine some select first. The backend's books close the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import tempfile
from pathlib import Path

from drivers.pty import PtyPair
from protocols.errors import VmcError
from sim.backend import Entry, Policy, SimBackend
from sim.broker import MosquittoBroker
from sim.daemon_proc import DaemonProcess
from sim.dex_source import DexSource
from sim.scenarios import Customers
from sim.trace import TraceRecorder
from sim.vmc_counters import audit_from_counters
from sim.vmc_master import TimingStats, VmcMaster

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
}
WALK_AWAY_LOCK_S = 1.0


def _outcome(entry: Entry | None) -> str:
    if entry is None:
        return "-"
    return entry.result or (entry.states[-1] if entry.states else "open")


async def _play(
    kind: str, number: int, customers: Customers, backend: SimBackend, rng: random.Random
) -> str:
    _, scenario, locks = KINDS[kind]
    if not locks and scenario == "purchase" and not customers.always_idle:
        scenario = "cash_sale"  # select-first needs an always-idle VMC
    member = rng.choice(list(MEMBERS)) if locks else None
    txn_id = None
    if locks:
        timeout = WALK_AWAY_LOCK_S if scenario == "walk_away" else None
        txn_id = await backend.lock(DEVICE, member, **({"timeout_s": timeout} if timeout else {}))
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
    await _until_reader_enabled(customers, backend)
    who = member or ("cash" if scenario == "cash_sale" else "walk-up")
    price = f"{entry.price / 100:.2f}" if entry and entry.price else "-"
    mark = "ok " if result.ok else "ERR"
    return (
        f"session {number:3d} {mark} {kind:<17} {who:<8} vmc: {result.outcome:<12}"
        f" price {price:>6}  backend: {_outcome(entry)}"
    )


async def _until_reader_enabled(customers: Customers, backend: SimBackend) -> None:
    """Idle-poll until the reader is free again, so the next lock is not refused as busy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (backend.state.get(DEVICE) or {}).get("reader") != "enabled":
        if loop.time() > deadline:
            raise VmcError("the reader did not return to enabled within 10 s")
        await customers.idle()


async def cloud_demo(args: argparse.Namespace) -> int:
    broker: MosquittoBroker | None = None
    url = args.mqtt
    if url is None:
        broker = MosquittoBroker()
        broker.start()
        url = broker.url
        print(f"private mosquitto on {url}")
    policy = Policy(args.policy)
    backend = SimBackend(
        url, policy=policy, balances=MEMBERS, payment_failure_rate=0.2, seed=args.seed
    )
    backend_task = asyncio.create_task(backend.run())
    pair = PtyPair()
    stack = contextlib.AsyncExitStack()
    try:
        await backend.ready()
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="vmc-demo-"))
        state = Path(args.state_dir) if args.state_dir else Path(tmp)
        dex_pair = PtyPair()
        stack.callback(dex_pair.close)
        config = state / "vmc.toml"
        config.write_text(
            f'[dex]\nport = "{dex_pair.device_url}"\nread_at_start = true\nschedule = []\n'
        )
        daemon = DaemonProcess(
            pair,
            state,
            level=args.level,
            local_approval="deny",
            extra=("--mqtt", url, "--device-id", DEVICE, "--config", str(config)),
        )
        print(f"vmcd on {pair.device_url} as {DEVICE}, backend policy {policy.value}")
        print(f"DEX audits read over {dex_pair.device_url} (DEX/UCS)")
        await daemon.start()
        stack.push_async_callback(daemon.stop)
        recorder = TraceRecorder() if args.record else None
        vmc = VmcMaster(pair.master, recorder=recorder)
        stack.callback(vmc.close)
        source = DexSource(dex_pair.master.fileno(), lambda: audit_from_counters(vmc.sales))
        serving = asyncio.create_task(source.serve())
        stack.push_async_callback(_cancel, serving)

        async def init() -> object:
            return await vmc.initialise(level=args.level)

        await init()
        await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", 10)
        rng = random.Random(args.seed)
        customers = Customers(vmc, rng, poll_period=args.poll_ms / 1000, init=init)
        names = list(KINDS)
        errors = 0
        for number in range(1, args.sessions + 1):
            kind = rng.choices(names, weights=[KINDS[n][0] for n in names])[0]
            line = await _play(kind, number, customers, backend, rng)
            errors += " ERR " in f" {line} "
            print(line)
        await asyncio.sleep(0.3)  # the last events on their way
        if recorder is not None:
            args.record.write_text(recorder.text(), encoding="utf-8")
        _print_books(backend, vmc.stats)
        await _audit_at_the_end(daemon, backend, vmc, customers)
        return 1 if errors else 0
    except VmcError as exc:
        print(f"vmc-sim: {exc}")
        return 1
    finally:
        await stack.aclose()
        await backend.close()
        backend_task.cancel()
        await asyncio.gather(backend_task, return_exceptions=True)
        pair.close()
        if broker is not None:
            broker.close()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _audit_at_the_end(
    daemon: DaemonProcess, backend: SimBackend, vmc: VmcMaster, customers: Customers
) -> None:
    """Ask vmcd for an audit read (SIGUSR1) and compare its delta with the VMC's own counters."""
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not any(e["type"] == "audit.delta" for e in backend.event_log):
        if loop.time() > deadline:
            print("--- no audit delta arrived within 20 s ---")
            return
        await customers.idle()
    change = next(e for e in backend.event_log if e["type"] == "audit.delta")["delta"]
    paid = change["paid"]
    print("--- the DEX audit, read at start and now ---")
    print(f"{'audit says':>20}: {paid['vends']} paid vends worth {paid['value'] / 100:.2f}")
    print(
        f"{'the VMC counted':>20}: {vmc.sales.paid_vends} vends worth"
        f" {vmc.sales.paid_value / 100:.2f} (cashless and cash)"
    )


def _print_books(backend: SimBackend, stats: TimingStats) -> None:
    summary = backend.books.summary()
    times = sorted(stats.response_s)
    print("--- the backend's books ---")
    for key, value in summary.items():
        print(f"{key:>20}: {value}")
    balances = ", ".join(f"{m} {v / 100:.2f}" for m, v in sorted(backend.books.balances.items()))
    print(f"{'balances':>20}: {balances}")
    if times:
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(
            f"{'bus answers':>20}: {len(times)}, p99 {p99 * 1000:.3f} ms,"
            f" {len(stats.violations)} timing violations"
        )
