"""The bridge's store, on SQLite and on PostgreSQL (a database of the test's own, dropped
after it; skipped where no server answers): events once, callbacks in order per machine,
retries visible."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.store import CoilLevel, NewDelivery, SeenEvent, SqlStore, Txn, TxnState, open_store
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


async def test_bridge_store_records_an_event_once(store: SqlStore) -> None:
    calls = [NewDelivery("acme", "/feed/transactions", {"n": 1})]
    assert await store.record_event(seen("e1"), calls, coil=CoilLevel(1, 150, None))
    assert not await store.record_event(seen("e1"), calls, coil=CoilLevel(1, 999, 3))
    assert [d.body for d in await store.deliveries()] == [{"n": 1}]
    assert await store.coils("m1") == [CoilLevel(1, 150, None)]


async def test_bridge_store_due_is_the_head_of_each_machine(store: SqlStore) -> None:
    for n, machine in enumerate(["m1", "m1", "m2"]):
        await store.record_event(seen(f"e{n}", machine), [NewDelivery("acme", "/p", {"n": n})])
    heads = await store.due(now=1000.0)
    assert [(d.machine, d.body["n"]) for d in heads] == [("m1", 0), ("m2", 2)]
    await store.retry(heads[0].id, next_try=2000.0, error="HTTP 503")
    # m1's head waits for its retry: its second callback does not overtake it.
    assert [d.body["n"] for d in await store.due(now=1000.0)] == [2]
    await store.delivered(heads[1].id, at=1000.0)
    assert [d.body["n"] for d in await store.due(now=2000.0)] == [0]
    await store.give_up(heads[0].id, at=2000.0, error="HTTP 503")
    assert [d.body["n"] for d in await store.due(now=2000.0)] == [1]
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
    found = await store.txn_by_id("m1", "vmc-t1")
    assert found is not None
    assert found.txn_ref == "R1"
    request = SeenEvent("e9", "m1", 3, "txn.request", 5.0)
    fields = {"state": TxnState.REQUESTED, "price": 250, "selection": 4, "deadline": 8.5}
    assert await store.record_event(request, [], txn=found, txn_fields=fields)
    now = await store.txn("R1")
    assert now is not None
    assert (now.state, now.price, now.selection, now.deadline) == (TxnState.REQUESTED, 250, 4, 8.5)


async def test_bridge_store_survives_a_reopen(database: str | Path) -> None:
    first = open_store(database)
    await first.open()
    await first.record_event(seen("e1"), [NewDelivery("acme", "/p", {})])
    await first.close()
    second = open_store(database)
    await second.open()
    assert not await second.record_event(seen("e1"), [])
    assert len(await second.undelivered()) == 1
    await second.close()


async def test_bridge_store_claims_are_leases(store: SqlStore) -> None:
    """Two instances sharing the store: one takes a callback, the other skips it until the
    lease lapses (the first was killed) or it is settled."""
    await store.record_event(seen("e1"), [NewDelivery("acme", "/p", {"n": 1})])
    (head,) = await store.due(now=10.0)
    assert await store.claim(head.id, "bridge-a", until=40.0, now=10.0)
    assert not await store.claim(head.id, "bridge-b", until=41.0, now=11.0)
    assert await store.due(now=11.0) == []  # held: nobody else sees it due
    assert [d.id for d in await store.due(now=41.0)] == [head.id]  # the lease lapsed
    assert await store.claim(head.id, "bridge-b", until=71.0, now=41.0)
    await store.retry(head.id, next_try=42.0, error="HTTP 503")
    assert [d.id for d in await store.due(now=42.0)] == [head.id]  # a retry frees it
    await store.delivered(head.id, at=43.0)
    assert not await store.claim(head.id, "bridge-a", until=99.0, now=44.0)


async def test_bridge_store_a_late_lock_reply_never_takes_a_txn_back(store: SqlStore) -> None:
    """The machine's txn.request can be committed before the lock's reply is: the reply then
    adds vmc's txn_id and leaves the state alone."""
    txn = await store.begin_lock("R1", "acme", "m1", "cmd-1", now=1.0)
    request = SeenEvent("e1", "m1", 2, "txn.request", 2.0)
    fields = {"state": TxnState.REQUESTED, "txn_id": "t1", "price": 90}
    assert await store.record_event(request, [], txn=txn, txn_fields=fields)
    await store.lock_taken("R1", "t1")
    after = await store.txn("R1")
    assert after is not None
    assert (after.state, after.txn_id) == (TxnState.REQUESTED, "t1")
    await store.update_txn("R1", state=TxnState.REFUSED, only_from=TxnState.LOCKING)
    again = await store.txn("R1")
    assert again is not None
    assert again.state is TxnState.REQUESTED


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

    await store.record_event(event("e12", 12), [NewDelivery("acme", "/p", {"n": 12})])
    await store.record_event(event("x1", 1, "m2"), [NewDelivery("acme", "/p", {"n": 1})])
    late = [NewDelivery("acme", "/a", {"n": 10}), NewDelivery("acme", "/b", {"n": 10})]
    await store.record_event(event("e10", 10), late)
    order = []
    while heads := await store.due(now=1000.0):
        order += [(d.machine, d.path, d.body["n"]) for d in heads]
        for head in heads:
            await store.delivered(head.id, at=1000.0)
    assert order == [("m2", "/p", 1), ("m1", "/a", 10), ("m1", "/b", 10), ("m1", "/p", 12)]


async def test_bridge_store_an_ended_txn_stays_ended(store: SqlStore) -> None:
    """The outcome committed before the request (by another instance): the request's fields
    are kept, its state is not."""
    txn = await store.begin_lock("R1", "acme", "m1", "cmd-1", now=1.0)
    await store.lock_taken("R1", "t1")
    outcome = SeenEvent("e2", "m1", 5, "txn.status", 9.0)
    assert await store.record_event(outcome, [], txn=txn, txn_fields={"state": TxnState.ENDED})
    request = SeenEvent("e1", "m1", 4, "txn.request", 2.0)
    fields = {"state": TxnState.REQUESTED, "price": 90, "selection": 3}
    assert await store.record_event(request, [], txn=txn, txn_fields=fields)
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
        await store.record_event(seen("e5"), [NewDelivery("acme", "/p", {"n": 5})])
        (head,) = await store.due(now=10.0)
        assert head.body == {"n": 5}  # seen() gives seq 1: before the older row's 7
        await store.delivered(head.id, at=10.0)
        assert [d.body for d in await store.due(now=10.0)] == [{"n": 7}]
    finally:
        await store.close()
