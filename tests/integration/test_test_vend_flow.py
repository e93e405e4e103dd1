"""A technician's test vend through the daemon's services, the bus loop and the simulated VMC,
with a cloud and without one (the local policy, which gives way for it)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import cbor2

from protocols.mdb import commands as c
from protocols.mdb import events as ev
from protocols.mdb.cashless import ReaderConfig
from protocols.mdb.commands import PaymentType
from sim.scenarios import Customers
from tests.loopback_rig import InProcessReader, in_process_reader
from tests.waiting import wait_for
from vmc.cloud.messages import VendType
from vmc.cloud.outbox import new_id
from vmc.cloud.topics import Topics
from vmc.credit import CreditKind, TestVendResult
from vmc.journal import Journal
from vmc.services.remote_vend import RemoteVending
from vmc.transaction import Engine, EngineConfig, Money, Txn, TxnState

READER = ReaderConfig(level=3)


def _events(journal: Journal) -> list[dict[str, Any]]:
    return [cbor2.loads(row.payload) for row in journal.pending(1000)]


def _customers(reader: InProcessReader) -> Customers:
    return Customers(reader.vmc, random.Random(1), poll_period=0.01)


async def _presses(customers: Customers, item: int) -> str:
    """The technician at the machine: the test session shows, they press ``item``."""
    await customers.session_shown()
    outcome = await customers.select(item=item)
    await customers.end_session()
    return outcome


async def test_with_a_cloud_the_test_vend_is_a_test_on_the_vmc_in_the_journal_and_the_cloud(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    async with in_process_reader(READER, journal, topics=Topics("m1")) as reader:
        await reader.vmc.initialise(level=3)
        testing = asyncio.create_task(reader.machine.test_vend(5, 10.0))
        assert await _presses(_customers(reader), 5) == "vended"
        outcome = await asyncio.wait_for(testing, 10)
        session = reader.vmc.session
    assert (outcome.result, outcome.vended, outcome.other_selections) == (
        TestVendResult.VENDED,
        5,
        (),
    )
    assert session is None  # the VMC ended it; it saw it as test media:
    assert reader.vmc.sales.selections[5].test_vends == 1
    assert reader.vmc.sales.selections[5].cashless_vends == 0
    assert outcome.txn_id is not None
    txn = journal.txn(outcome.txn_id)
    assert txn is not None
    assert (txn.vend_type, txn.amount, txn.state) == (VendType.TEST, 0, "vended")
    (sale,) = journal.sales(0, math.inf)
    assert (sale.vend_type, sale.price, sale.selection) == (VendType.TEST, 0, 5)
    (txn_vend,) = [e for e in _events(journal) if e["type"] == "txn.vend"]
    assert (txn_vend["vend_type"], txn_vend["amount"], txn_vend["result"]) == ("test", 0, "success")
    assert txn_vend["txn_id"] == outcome.txn_id
    assert not [e for e in _events(journal) if e["type"].endswith(".status")]
    journal.close()


async def test_without_a_cloud_the_free_vend_session_gives_way_and_comes_back(
    tmp_path: Path,
) -> None:
    """Level 2, ``--local-approval accept``: the policy keeps a free-vend session open; the test
    vend withdraws it, runs as a test session, and the free one is offered again after."""
    journal = Journal(tmp_path / "journal.sqlite3")
    async with in_process_reader(ReaderConfig(level=2), journal, accept=True) as reader:
        vmc = reader.vmc
        await vmc.initialise(level=2)
        customers = _customers(reader)
        await customers.session_shown()
        assert vmc.session is not None
        assert vmc.session.payment_type == PaymentType.NORMAL
        testing = asyncio.create_task(reader.vending.test_vend(5, 10.0))
        await customers.poll_for({c.Resp.SESSION_CANCEL_REQUEST}, 3.0)
        await customers.end_session()
        await customers.session_shown()
        assert vmc.session.payment_type == PaymentType.TEST
        assert await customers.select(item=5) == "vended"
        await customers.end_session()
        outcome = await asyncio.wait_for(testing, 10)
        await customers.session_shown()
        assert vmc.session.payment_type == PaymentType.NORMAL  # the free-vend session is back
    assert outcome.result is TestVendResult.VENDED
    assert vmc.sales.selections[5].test_vends == 1
    (sale,) = journal.sales(0, math.inf)
    assert sale.vend_type is VendType.TEST
    assert not [r for r in journal.records() if r.kind.startswith("vend_")]  # not a free vend
    assert journal.pending(10) == []  # no cloud: nothing queued for one
    journal.close()


async def test_the_wrong_selection_then_nothing_in_time(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    async with in_process_reader(READER, journal, accept=False) as reader:
        await reader.vmc.initialise(level=3)
        customers = _customers(reader)
        testing = asyncio.create_task(reader.vending.test_vend(5, 1.5))
        await customers.session_shown()
        assert await customers.select(item=7) == "denied"
        await customers.poll_for({c.Resp.SESSION_CANCEL_REQUEST}, 5.0)  # its time is up
        await customers.end_session()
        outcome = await asyncio.wait_for(testing, 10)
    assert (outcome.result, outcome.reason, outcome.other_selections) == (
        TestVendResult.NOT_SELECTED,
        "timeout",
        (7,),
    )
    assert journal.sales(0, math.inf) == []
    journal.close()


async def test_refused_while_the_reader_is_not_enabled_or_a_test_vend_is_open(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    async with in_process_reader(READER, journal, accept=False) as reader:
        outcome = await reader.vending.test_vend(5, 5.0)
        assert (outcome.result, outcome.code, outcome.reason) == (
            TestVendResult.REFUSED,
            "reader_unavailable",
            "reader is INACTIVE",
        )
        await reader.vmc.initialise(level=3)
        first = asyncio.create_task(reader.vending.test_vend(5, 5.0))
        await wait_for(lambda: reader.machine.busy, 5, "the first test vend")
        second = await reader.vending.test_vend(6, 5.0)
        assert (second.result, second.code) == (TestVendResult.REFUSED, "busy")
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
    journal.close()


async def test_a_technician_who_gives_up_ends_the_session(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    async with in_process_reader(READER, journal, accept=False) as reader:
        await reader.vmc.initialise(level=3)
        customers = _customers(reader)
        testing = asyncio.create_task(reader.vending.test_vend(5, 30.0))
        await customers.session_shown()
        testing.cancel()
        await asyncio.gather(testing, return_exceptions=True)
        await customers.poll_for({c.Resp.SESSION_CANCEL_REQUEST}, 3.0)
        await customers.end_session()
        assert not reader.machine.busy
        with contextlib.closing(sqlite3.connect(journal.path)) as db:
            (test_id,) = db.execute(
                "SELECT credit_id FROM credits WHERE kind = ?", (CreditKind.TEST_VEND.value,)
            ).fetchone()
        session = journal.credit(CreditKind.TEST_VEND, test_id)
        assert session is not None
        assert (session.state, session.reason) == ("cancelled", "abandoned")
    journal.close()


def test_without_a_cloud_a_restart_settles_only_the_machines_own_session(tmp_path: Path) -> None:
    """A lock a cloud left open is that cloud's to settle and hear of; a test vend is ours."""
    journal = Journal(tmp_path / "journal.sqlite3")

    def glue() -> RemoteVending:
        engine = Engine(EngineConfig(Money(978, 2)), new_id)
        return RemoteVending(engine, journal, None, lambda command: True)

    lock = Txn("cloud-1", TxnState.LOCKED, 1.0, 1.0)
    journal.commit([lock], [], durable=True)
    glue().recover()
    assert journal.open_txn() == lock
    journal.commit([dataclasses.replace(lock, state=TxnState.CANCELLED)], [], durable=True)

    eng = Engine(EngineConfig(Money(978, 2)), new_id)
    eng.on_bus(ev.StateChanged(ev.State.DISABLED, ev.State.ENABLED), 1.0)
    opened = eng.test_vend("tv1", 5, 20.0, 1.0)
    approving = eng.on_bus(ev.VendRequested(3, 5, 150), 2.0)
    journal.commit(
        approving.transitions, [], credits=[*opened.credits, *approving.credits], durable=True
    )
    glue().recover()
    assert journal.open_txn() is None
    assert journal.open_credit() is None
    (sale_txn,) = [t for t in approving.transitions if t.state is TxnState.APPROVING]
    settled = journal.txn(sale_txn.txn_id)
    assert settled is not None
    assert (settled.state, settled.vend_type) == (TxnState.UNKNOWN, VendType.TEST)
    journal.close()
