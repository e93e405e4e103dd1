"""The bridge's store, on SQLite and on PostgreSQL (a database of the test's own, dropped
after it; skipped where no server answers): events once, also within a batch committed
together, callbacks in order per machine, claims that two instances never share, retries
visible."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from bridge.config import BridgeConfig, ThirdParty
from bridge.service import Bridge
from bridge.store import (
    CoilLevel,
    NewDelivery,
    Outcome,
    SeenEvent,
    SqlStore,
    Txn,
    TxnState,
    open_store,
)
from tests.postgres import scratch_database


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str | Path]:
    """Where a store keeps its tables: a SQLite file, or a PostgreSQL database made for it."""
    if request.param == "sqlite":
        yield tmp_path / "bridge.sqlite3"
        return
    async with scratch_database() as url:
        yield url


@pytest.fixture
async def store(database: str | Path) -> AsyncIterator[SqlStore]:
    opened = open_store(database)
    await opened.open()
    yield opened
    await opened.close()


def seen(event_id: str, machine: str = "m1", at: float = 100.0) -> SeenEvent:
    return SeenEvent(event_id, machine, 1, "sale", at)


async def record_event(
    store: SqlStore, event: SeenEvent, deliveries: list[NewDelivery], **changes: Any
) -> bool:
    """One event in a batch of its own, as the service records it; False when seen before."""
    async with store.events() as batch:
        if not await batch.first_time(event):
            return False
        await batch.record(event, deliveries, **changes)
    return True


async def coils(store: SqlStore, machine: str) -> list[CoilLevel]:
    async with store.events() as batch:
        return await batch.coils(machine)


async def test_bridge_store_records_an_event_once(store: SqlStore) -> None:
    calls = [NewDelivery("acme", "/feed/transactions", {"n": 1})]
    assert await record_event(store, seen("e1"), calls, coil=CoilLevel(1, 150, None))
    assert not await record_event(store, seen("e1"), calls, coil=CoilLevel(1, 999, 3))
    assert [d.body for d in await store.deliveries()] == [{"n": 1}]
    assert await coils(store, "m1") == [CoilLevel(1, 150, None)]


async def test_bridge_store_claims_the_head_of_each_machine(store: SqlStore) -> None:
    for n, machine in enumerate(["m1", "m1", "m2"]):
        await record_event(store, seen(f"e{n}", machine), [NewDelivery("acme", "/p", {"n": n})])
    heads = await store.claim_due("bridge-a", now=1000.0, until=1030.0)
    assert [(d.machine, d.body["n"]) for d in heads] == [("m1", 0), ("m2", 2)]
    assert await store.claim_due("bridge-a", now=1001.0, until=1031.0) == []  # both held
    await store.settle(
        [Outcome(heads[0].id, 1001.0, "HTTP 503", next_try=2000.0), Outcome(heads[1].id, 1001.0)]
    )
    # m1's head waits for its retry: its second callback does not overtake it.
    assert await store.claim_due("bridge-a", now=1002.0, until=1032.0) == []
    (again,) = await store.claim_due("bridge-a", now=2000.0, until=2030.0)
    assert again.body["n"] == 0
    await store.settle([Outcome(again.id, 2000.0, "HTTP 503")])  # given up
    assert [d.body["n"] for d in await store.claim_due("bridge-a", 2001.0, 2031.0)] == [1]
    waiting = {d.body["n"]: d for d in await store.undelivered()}
    assert sorted(waiting) == [0, 1]
    assert waiting[0].failed_at == 2000.0
    assert waiting[0].attempts == 2
    assert waiting[0].last_error == "HTTP 503"


async def test_bridge_store_txn_mapping(store: SqlStore) -> None:
    txn = await store.begin_lock("R1", "acme", "m1", "cmd-1", now=1.0)
    assert txn == Txn("R1", "acme", "m1", TxnState.LOCKING, "cmd-1")
    again = await store.begin_lock("R1", "acme", "m1", "cmd-2", now=2.0)
    assert again.lock_cmd == "cmd-1"  # no answer yet: the same command is sent again
    await store.update_txn("R1", state=TxnState.REFUSED)
    other = await store.begin_lock("R1", "zeta", "m1", "cmd-x", now=2.5)
    assert (other.third_party, other.lock_cmd) == ("acme", "cmd-1")  # never another's
    retaken = await store.begin_lock("R1", "acme", "m1", "cmd-3", now=3.0)
    assert (retaken.state, retaken.lock_cmd) == (TxnState.LOCKING, "cmd-3")
    await store.update_txn("R1", state=TxnState.LOCKED, txn_id="vmc-t1")
    async with store.events() as batch:
        found = await batch.txn_by_id("m1", "vmc-t1")
    assert found is not None
    assert found.txn_ref == "R1"
    request = SeenEvent("e9", "m1", 3, "txn.request", 5.0)
    fields = {"state": TxnState.REQUESTED, "price": 250, "selection": 4, "deadline": 8.5}
    assert await record_event(store, request, [], txn=found, txn_fields=fields)
    now = await store.txn("R1")
    assert now is not None
    assert (now.state, now.price, now.selection, now.deadline) == (TxnState.REQUESTED, 250, 4, 8.5)


async def test_bridge_store_survives_a_reopen(database: str | Path) -> None:
    first = open_store(database)
    await first.open()
    await record_event(first, seen("e1"), [NewDelivery("acme", "/p", {})])
    await first.close()
    second = open_store(database)
    await second.open()
    assert not await record_event(second, seen("e1"), [])
    assert len(await second.undelivered()) == 1
    await second.close()


async def test_bridge_store_claims_are_leases(store: SqlStore) -> None:
    """Two instances sharing the store: one takes a callback, the other skips it until the
    lease lapses (the first was killed) or it is settled."""
    await record_event(store, seen("e1"), [NewDelivery("acme", "/p", {"n": 1})])
    (head,) = await store.claim_due("bridge-a", now=10.0, until=40.0)
    assert await store.claim_due("bridge-b", now=11.0, until=41.0) == []  # held
    (taken,) = await store.claim_due("bridge-b", now=41.0, until=71.0)  # the lease lapsed
    assert taken.id == head.id
    await store.settle([Outcome(head.id, 42.0, "HTTP 503", next_try=42.0)])
    (freed,) = await store.claim_due("bridge-a", now=42.0, until=72.0)  # a retry frees it
    assert freed.id == head.id
    await store.settle([Outcome(head.id, 43.0)])
    assert await store.claim_due("bridge-a", now=99.0, until=129.0) == []  # delivered


async def test_bridge_store_two_instances_never_claim_the_same_callback(
    database: str | Path,
) -> None:
    """Instances claiming at the same moment, each on its own connection, share the heads
    out: none is taken twice, none is lost."""
    stores = [open_store(database) for _ in range(2)]
    for opened in stores:
        await opened.open()
    try:
        for n in range(40):
            await record_event(stores[0], seen(f"e{n}", f"m{n}"), [NewDelivery("acme", "/p", {})])
        claims = await asyncio.gather(
            *(
                s.claim_due(f"bridge-{i}", 10.0, 40.0, limit=7)
                for _ in range(6)
                for i, s in enumerate(stores)
            )
        )
        # A claim that lost a race to the other instance takes fewer: the rest on later looks.
        claims.append(await stores[1].claim_due("bridge-1", 11.0, 40.0, limit=40))
        ids = [d.id for claimed in claims for d in claimed]
        assert len(ids) == len(set(ids)) == 40
    finally:
        for opened in stores:
            await opened.close()


async def test_bridge_store_a_late_lock_reply_never_takes_a_txn_back(store: SqlStore) -> None:
    """The machine's txn.request can be committed before the lock's reply is: the reply then
    adds vmc's txn_id and leaves the state alone."""
    txn = await store.begin_lock("R1", "acme", "m1", "cmd-1", now=1.0)
    request = SeenEvent("e1", "m1", 2, "txn.request", 2.0)
    fields = {"state": TxnState.REQUESTED, "txn_id": "t1", "price": 90}
    assert await record_event(store, request, [], txn=txn, txn_fields=fields)
    await store.lock_taken("R1", "t1")
    after = await store.txn("R1")
    assert after is not None
    assert (after.state, after.txn_id) == (TxnState.REQUESTED, "t1")
    await store.update_txn("R1", state=TxnState.REFUSED, only_from=TxnState.LOCKING)
    again = await store.txn("R1")
    assert again is not None
    assert again.state is TxnState.REQUESTED


async def test_bridge_store_a_batch_keeps_each_event_once_and_in_order(store: SqlStore) -> None:
    """Events committed together: a duplicate within the batch, or of an earlier batch, gives
    nothing; the callbacks queue in the batch's order; each event sees the ones before it."""
    await record_event(store, seen("e0"), [NewDelivery("acme", "/p", {"n": 0})])
    firsts = []
    async with store.events() as batch:
        for event_id in ["e1", "e0", "e2", "e1", "e3"]:
            event = seen(event_id)
            fresh = await batch.first_time(event)
            firsts.append(fresh)
            if fresh:
                await batch.record(
                    event, [NewDelivery("acme", "/p", {"n": int(event_id[1])})], coil=None
                )
    assert firsts == [True, False, True, False, True]
    assert [d.body["n"] for d in await store.deliveries()] == [0, 1, 2, 3]
    txn = await store.begin_lock("R1", "acme", "m1", "cmd-1", now=1.0)
    async with store.events() as batch:
        request = SeenEvent("r", "m1", 2, "txn.request", 2.0)
        assert await batch.first_time(request)
        await batch.record(request, [], txn=txn, txn_fields={"txn_id": "t1", "price": 80})
        found = await batch.txn_by_id("m1", "t1")  # the vend after it, in the same batch
        assert found is not None
        assert found.txn_ref == "R1"


async def test_bridge_store_a_batch_that_fails_leaves_nothing(store: SqlStore) -> None:
    """A batch whose commit does not happen writes none of its events: they are not
    acknowledged, so they come again, and are then first-time events."""

    async def three_then_a_failure() -> None:
        async with store.events() as batch:
            for n in range(3):
                assert await batch.first_time(seen(f"e{n}"))
                await batch.record(seen(f"e{n}"), [NewDelivery("acme", "/p", {"n": n})])
            raise RuntimeError("the commit failed")

    with pytest.raises(RuntimeError):
        await three_then_a_failure()
    assert await store.deliveries() == []
    assert await record_event(store, seen("e1"), [NewDelivery("acme", "/p", {"n": 1})])
    assert [d.body["n"] for d in await store.deliveries()] == [1]


def event(event_id: str, kind: str, **body: Any) -> tuple[str, bytes]:
    """An ``events`` message of m1's, as the link hands it over."""
    return "m1", cbor2.dumps({"v": 1, "id": event_id, "seq": 1, "type": kind, "at": 100.0} | body)


async def test_bridge_store_a_batch_of_events_through_the_service(database: str | Path) -> None:
    """The service records a batch in order: a duplicate and an unreadable payload give
    nothing, and the vend finds the transaction the request before it in the batch named."""
    config = BridgeConfig("127.0.0.1", 1, database, (ThirdParty("acme", "http://127.0.0.1:9"),))
    store = open_store(database)
    await store.open()
    try:
        bridge = Bridge(config, store)
        await store.begin_lock("R1", "acme", "m1", "cmd-1", now=1.0)
        request = event("e1", "txn.request", txn_id="t1", ref="R1", selection=4, price=150)
        vend = event("e2", "txn.vend", txn_id="t1", result="success", selection=4, amount=150)
        await bridge.on_events([request, request, ("m1", b"not cbor"), vend])
        queued = [(d.path, d.event_id) for d in await store.deliveries()]
        assert queued == [
            ("/txn/request", "e1"),
            ("/txn/vend", "e2"),
            ("/feed/transactions", "e2"),
        ]
        ended = await store.txn("R1")
        assert ended is not None
        assert (ended.state, ended.txn_id) == (TxnState.ENDED, "t1")
        await bridge.on_events([vend])  # resent after a lost acknowledgement
        assert len(await store.deliveries()) == 3
    finally:
        await store.close()


async def test_bridge_store_member_leases(store: SqlStore) -> None:
    """Each instance leases its own events session; another takes a lapsed one over, once,
    and the owner gets it back only when the adopter is done with it (or stalled)."""
    assert await store.hold("a", "a", until=15.0, now=0.0)
    assert await store.hold("b", "b", until=15.0, now=0.0)
    assert await store.hold("a", "a", until=18.0, now=3.0)  # renewed
    assert await store.lapsed(now=16.0) == ["b"]
    assert not await store.hold("b", "a", until=31.0, now=14.0)  # b's lease still runs
    assert await store.hold("b", "a", until=31.0, now=16.0)  # lapsed: a adopts it
    assert not await store.hold("b", "c", until=31.0, now=16.0)  # one adopter
    assert not await store.hold("b", "b", until=32.0, now=17.0)  # the owner waits
    assert await store.hold("b", "a", until=34.0, now=19.0)  # the adopter renews
    await store.release("b", "b")  # only its holder releases it
    assert not await store.hold("b", "b", until=35.0, now=20.0)
    await store.release("b", "a")
    assert await store.hold("b", "b", until=36.0, now=21.0)  # back to its owner
    assert await store.lapsed(now=35.0) == ["a"]
    assert await store.hold("a", "b", until=50.0, now=35.0)
    assert await store.hold("a", "a", until=70.0, now=55.0)  # the adopter stalled: it lapsed


async def test_bridge_store_callbacks_go_in_seq_order(store: SqlStore) -> None:
    """Two instances may commit a machine's events out of order: its callbacks still go in
    the order of the events' seq (one event's two callbacks in the order they were queued)."""

    def event(event_id: str, seq: int, machine: str = "m1") -> SeenEvent:
        return SeenEvent(event_id, machine, seq, "sale", 100.0)

    await record_event(store, event("e12", 12), [NewDelivery("acme", "/p", {"n": 12})])
    await record_event(store, event("x1", 1, "m2"), [NewDelivery("acme", "/p", {"n": 1})])
    late = [NewDelivery("acme", "/a", {"n": 10}), NewDelivery("acme", "/b", {"n": 10})]
    await record_event(store, event("e10", 10), late)
    order = []
    while heads := await store.claim_due("bridge-a", now=1000.0, until=1030.0):
        order += [(d.machine, d.path, d.body["n"]) for d in heads]
        await store.settle([Outcome(head.id, 1000.0) for head in heads])
    assert order == [("m2", "/p", 1), ("m1", "/a", 10), ("m1", "/b", 10), ("m1", "/p", 12)]


async def test_bridge_store_an_ended_txn_stays_ended(store: SqlStore) -> None:
    """The outcome committed before the request (by another instance): the request's fields
    are kept, its state is not."""
    txn = await store.begin_lock("R1", "acme", "m1", "cmd-1", now=1.0)
    await store.lock_taken("R1", "t1")
    outcome = SeenEvent("e2", "m1", 5, "txn.status", 9.0)
    assert await record_event(store, outcome, [], txn=txn, txn_fields={"state": TxnState.ENDED})
    request = SeenEvent("e1", "m1", 4, "txn.request", 2.0)
    fields = {"state": TxnState.REQUESTED, "price": 90, "selection": 3}
    assert await record_event(store, request, [], txn=txn, txn_fields=fields)
    after = await store.txn("R1")
    assert after is not None
    assert (after.state, after.price, after.selection) == (TxnState.ENDED, 90, 3)


OLD_DELIVERIES = """
CREATE TABLE seen_events (event_id TEXT PRIMARY KEY, machine TEXT NOT NULL, seq BIGINT,
    type TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
CREATE TABLE deliveries (id {serial}, third_party TEXT NOT NULL, machine TEXT NOT NULL,
    event_id TEXT NOT NULL, path TEXT NOT NULL, body TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, attempts BIGINT NOT NULL DEFAULT 0,
    next_try DOUBLE PRECISION NOT NULL, last_error TEXT, delivered_at DOUBLE PRECISION,
    failed_at DOUBLE PRECISION, claimed_by TEXT, claimed_until DOUBLE PRECISION,
    UNIQUE (third_party, event_id, path));
CREATE INDEX deliveries_open ON deliveries (third_party, machine, id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
INSERT INTO seen_events VALUES ('e7', 'm1', 7, 'sale', 1.0);
INSERT INTO deliveries (third_party, machine, event_id, path, body, created_at, next_try)
    VALUES ('acme', 'm1', 'e7', '/p', '{{"n": 7}}', 1.0, 0.0);
"""
"""The callback queue as the bridge made it before its rows had their event's seq."""


async def test_bridge_store_gives_an_older_queue_its_seq(database: str | Path) -> None:
    if isinstance(database, Path):
        with contextlib.closing(sqlite3.connect(database)) as db:
            db.executescript(OLD_DELIVERIES.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
    else:
        asyncpg = pytest.importorskip("asyncpg")
        conn = await asyncpg.connect(database)
        await conn.execute(OLD_DELIVERIES.format(serial="BIGSERIAL PRIMARY KEY"))
        await conn.close()
    for _ in range(2):  # and once more: already done
        store = open_store(database)
        await store.open()
        await store.close()
    store = open_store(database)
    await store.open()
    try:
        await record_event(store, seen("e5"), [NewDelivery("acme", "/p", {"n": 5})])
        (head,) = await store.claim_due("bridge-a", now=10.0, until=40.0)
        assert head.body == {"n": 5}  # seen() gives seq 1: before the older row's 7
        await store.settle([Outcome(head.id, 10.0)])
        assert [d.body for d in await store.claim_due("bridge-a", 10.0, 40.0)] == [{"n": 7}]
    finally:
        await store.close()
