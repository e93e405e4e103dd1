"""Network faults on the broker link: a slow, lossy link and partitions lose and double nothing.

The device reaches Mosquitto through a bad link while the simulated VMC keeps selling: remote
vends (select first, the backend answers ``paid``) and cash sales, before, during and after a
partition. Afterwards the outbox drains to 0 and the backend's books equal the device's journal:
every transaction and sale delivered, none booked twice, and no vend approved after its
deadline (a ``paid`` that comes late through the link is answered ``too_late``, never vended).

The link is ``tc netem`` (5 % loss, 300 ms ± 100 ms, reordering; a partition is 100 % loss) on
a veth pair into a network namespace the daemon runs in, when the kernel has netem; otherwise
``tests.e2e.mqtt_proxy.ImpairedLink``, which plays what TCP above such a link shows the
application (delay with jitter, retransmission stalls, segments coalesced and split). A
partition holds every byte and closes nothing; the ``reset`` variant resets the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from protocols.mdb import commands as c
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.e2e.mqtt_proxy import ImpairedLink, Impairment
from tests.waiting import wait_until
from vmc.cloud.sync import BACKOFF_MAX_S

BAD_LINK = Impairment(delay_s=0.3, jitter_s=0.1, loss=0.05, split=0.2)
"""5 % of segments lost, 300 ms ± 100 ms each way, a fifth of the chunks split."""
NETEM = ("delay", "300ms", "100ms", "loss", "5%", "reorder", "10%")
PRICE = 150
VMC_GRACE_S = 3.0
"""The simulated VMC polls this long past its deadline, to see an approval that came late."""
RECONNECT_S = 1.5 * BACKOFF_MAX_S + 20
"""The longest a reconnect attempt can be away (the backoff's cap with its jitter), and one
attempt's connect timeout with slack."""
OUTCOMES = {"vended": "success", "failed": "failure", "unknown": "unknown"}


@dataclass
class Traffic:
    """What the simulated VMC did and heard, by phase."""

    rig: Rig
    item: int = 0
    approved: Counter[str] = field(default_factory=Counter)
    denied: Counter[str] = field(default_factory=Counter)
    sales: Counter[str] = field(default_factory=Counter)
    late: list[float] = field(default_factory=list)
    """Seconds from VEND REQUEST to an approval that came after the VMC's deadline."""
    unanswered: int = 0

    async def vend(self, phase: str) -> None:
        """A select-first vend; the product drops as soon as the VMC has the approval."""
        vmc = self.rig.vmc
        self.item = self.item % 60 + 1
        assert (await vmc.vend_request(vmc.money(PRICE), self.item)).is_ack
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + vmc.info.max_response_time
        while loop.time() < deadline + VMC_GRACE_S:
            answer = await vmc.poll()
            if answer.code == c.Resp.VEND_APPROVED:
                if loop.time() > deadline:
                    self.late.append(loop.time() - started)
                self.approved[phase] += 1
                await vmc.vend_success(self.item)
                break
            if answer.code == c.Resp.VEND_DENIED:
                self.denied[phase] += 1
                break
            await asyncio.sleep(0.01)
        else:
            self.unanswered += 1
        await vmc.session_complete()
        for _ in range(20):  # until the reader ends the session
            if (await vmc.poll()).code == c.Resp.END_SESSION:
                break
            await asyncio.sleep(0.01)

    async def sale(self, phase: str) -> None:
        vmc = self.rig.vmc
        self.item = self.item % 60 + 1
        assert (await vmc.cash_sale(vmc.money(PRICE), self.item)).is_ack
        self.sales[phase] += 1

    async def some(self, phase: str, count: int) -> None:
        for _ in range(count):
            await self.vend(phase)
            await self.sale(phase)

    async def during(self, phase: str, seconds: float) -> None:
        """Vends and sales back to back for ``seconds`` (the last one may end after)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while loop.time() < until:
            await self.vend(phase)
            await self.sale(phase)


def _journal(rig: Rig) -> tuple[dict[str, str], list[tuple[int, int]]]:
    """The device's own books: each transaction's final state, and the cash sales."""
    path = rig.daemon.state_dir / "journal.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        txns = {str(t): str(s) for t, s in db.execute("SELECT txn_id, state FROM txns")}
        sales = db.execute(
            "SELECT selection, price FROM sales WHERE payment = 'cash' ORDER BY at"
        ).fetchall()
    return txns, [(int(s), int(p)) for s, p in sales]


def _check_books(rig: Rig, traffic: Traffic) -> None:
    """The backend's books equal the device's journal, each outcome heard once; the VMC
    dispensed exactly the vends booked as successful."""
    backend = rig.backend
    txns, cash = _journal(rig)
    books = backend.books
    assert set(books.entries) == set(txns)
    for txn_id, state in txns.items():
        entry = books.entries[txn_id]
        vends = [e for e in backend.event_log if e.get("txn_id") == txn_id and "result" in e]
        ends = [s for s in entry.states if s in ("denied", "expired", "cancelled")]
        assert len(vends) + len(ends) == 1, (txn_id, state, entry.states)
        if state in OUTCOMES:
            assert entry.result == OUTCOMES[state], (txn_id, state, entry.states)
        else:
            assert ends == [state], (txn_id, state, entry.states)
    assert sorted(cash) == sorted((int(s["selection"]), int(s["price"])) for s in books.sales), (
        "cash sales differ"
    )
    successes = sum(e.result == "success" for e in books.entries.values())
    assert successes == sum(traffic.approved.values())
    charged = sum(e.charged for e in books.entries.values())
    assert charged == successes * PRICE
    assert not traffic.late, f"approved after the VMC's deadline: {traffic.late}"
    assert not traffic.unanswered


async def _partition_run(
    rig: Rig,
    partition: contextlib.AbstractAsyncContextManager[None],
    seconds: float,
    around: int,
) -> Traffic:
    """``around`` vends and sales before and after a partition of ``seconds`` (one vend is
    started right as it begins, so its ``paid`` can only come late); the books checked."""
    traffic = Traffic(rig)
    await traffic.some("before", around)
    async with partition:
        await traffic.during("partition", seconds)
    # A device that gave its connection up during the partition is back at its next reconnect
    # attempt (exponential backoff, at most a minute apart); vends before that expire.
    loop = asyncio.get_running_loop()
    healed = loop.time()
    online = await wait_until(lambda: rig.backend.status.get(DEVICE) == "online", RECONNECT_S)
    assert online, "the device did not come back after the partition"
    back_s = loop.time() - healed
    await traffic.some("after", around)
    assert await wait_until(lambda: rig.outbox_size() == 0, 120), "the outbox did not drain"
    settled = await wait_until(
        lambda: (
            set(rig.backend.books.entries) == set(_journal(rig)[0])
            and len(rig.backend.books.sales) == len(_journal(rig)[1])
        ),
        30,
    )
    assert settled, "the backend's books never caught up with the journal"
    await asyncio.sleep(1.0)  # late redeliveries, if any, would show now
    _check_books(rig, traffic)
    assert traffic.approved["before"], traffic
    assert traffic.approved["after"], traffic
    assert all(traffic.sales[p] for p in ("before", "partition", "after")), traffic
    too_late = sum(r.get("code") == "too_late" for r in rig.backend.replies.values())
    assert too_late, "no paid came late: the partition proved nothing about deadlines"
    print(
        "network:",
        {
            "too_late": too_late,
            "online_after_heal_s": round(back_s, 1),
            "approved": dict(traffic.approved),
            "denied": dict(traffic.denied),
            "sales": dict(traffic.sales),
            "expired": sum("expired" in e.states for e in rig.backend.books.entries.values()),
            "redeliveries": rig.backend.books.duplicates,
            "events": rig.backend.books.events,
        },
    )
    return traffic


@contextlib.asynccontextmanager
async def _proxy_partition(link: ImpairedLink, *, reset: bool) -> AsyncIterator[None]:
    link.partition(reset=reset)
    try:
        yield
    finally:
        link.heal()


async def _proxy_test(
    tmp_path: Path, broker: MosquittoBroker, seconds: float, *, reset: bool, around: int
) -> None:
    seed = int(os.environ.get("VMC_SEED", "41"))
    async with (
        ImpairedLink(broker.port, BAD_LINK, seed) as link,
        machine(tmp_path, broker, mqtt_url=link.url) as rig,
    ):
        await _partition_run(rig, _proxy_partition(link, reset=reset), seconds, around)
        print("link:", link.figures)
        assert link.figures.stalls, "no loss stall happened: the link was not lossy"
        if reset:
            assert link.figures.resets


@pytest.mark.parametrize(
    "reset",
    [pytest.param(False, marks=pytest.mark.slow), True],  # the held link in the long run
    ids=["held", "reset"],
)
@pytest.mark.timeout(180)
async def test_network_partition_short(
    tmp_path: Path, broker: MosquittoBroker, reset: bool
) -> None:
    """A 5 s partition on a slow lossy link: longer than the approval deadline (4 s), so the
    vend that starts with it expires and its ``paid`` arrives late."""
    await _proxy_test(tmp_path, broker, 5.0, reset=reset, around=2)


@pytest.mark.slow
@pytest.mark.parametrize("reset", [False, True], ids=["held", "reset"])
@pytest.mark.timeout(600)
async def test_network_partition_60s(tmp_path: Path, broker: MosquittoBroker, reset: bool) -> None:
    """A 60 s partition: longer than the keepalive, the device gives the connection up and
    reconnects into the partition until it heals."""
    await _proxy_test(tmp_path, broker, 60.0, reset=reset, around=5)


# --- the same with the kernel's netem, where it has it ------------------------------------


class NetemUnavailableError(Exception):
    """This kernel or machine cannot give the test a netem link (the reason is the message)."""


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode:
        raise NetemUnavailableError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


@dataclass
class NetemLink:
    """A namespace ``ns`` the daemon runs in, joined to this one by a veth pair whose two
    ends have netem; the host end's address is ``host_ip``."""

    ns: str
    host_dev: str
    ns_dev: str
    host_ip: str

    def netem(self, *spec: str) -> None:
        _run("tc", "qdisc", "replace", "dev", self.host_dev, "root", "netem", *spec)
        _run("ip", "netns", "exec", self.ns, "tc", "qdisc", "replace", "dev", self.ns_dev,
             "root", "netem", *spec)  # fmt: skip


@contextlib.contextmanager
def _netem_link() -> Iterator[NetemLink]:
    if os.geteuid() != 0:
        raise NetemUnavailableError("not root: cannot make a network namespace")
    tag = f"{os.getpid() % 100000}"
    link = NetemLink(f"vmcnet{tag}", f"vmch{tag}", f"vmcn{tag}", "10.231.0.1")
    try:
        _run("ip", "netns", "add", link.ns)
        _run("ip", "link", "add", link.host_dev, "type", "veth", "peer", "name", link.ns_dev)
        _run("ip", "link", "set", link.ns_dev, "netns", link.ns)
        _run("ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_dev)
        _run("ip", "link", "set", link.host_dev, "up")
        inside = ("ip", "netns", "exec", link.ns)
        _run(*inside, "ip", "addr", "add", "10.231.0.2/30", "dev", link.ns_dev)
        _run(*inside, "ip", "link", "set", link.ns_dev, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        link.netem(*NETEM)
        yield link
    finally:
        subprocess.run(["ip", "link", "del", link.host_dev], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", link.ns], capture_output=True, check=False)


@contextlib.asynccontextmanager
async def _netem_partition(link: NetemLink) -> AsyncIterator[None]:
    link.netem("loss", "100%")
    try:
        yield
    finally:
        link.netem(*NETEM)


@pytest.mark.timeout(180)
async def test_network_partition_netem(tmp_path: Path, broker: MosquittoBroker) -> None:
    """The short partition on a real netem link (skipped, saying why, without netem)."""
    try:
        with _netem_link() as netem:
            # A plain relay from the veth's host end to the broker on loopback.
            async with (
                ImpairedLink(broker.port, Impairment(), 0, host=netem.host_ip) as relay,
                machine(
                    tmp_path,
                    broker,
                    mqtt_url=relay.url,
                    wrap=("ip", "netns", "exec", netem.ns),
                ) as rig,
            ):
                await _partition_run(rig, _netem_partition(netem), 5.0, 2)
    except NetemUnavailableError as why:
        print(f"netem unavailable, the proxy tests stand in for it: {why}")
        pytest.skip(f"netem unavailable: {why}")
