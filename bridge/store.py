"""The bridge's storage: the txnRef mapping, the events seen and the callback queue.

One SQL core (:class:`SqlStore`) on two engines: SQLite in WAL mode by default (one file, one
connection; its BEGIN and COMMIT in a worker thread, so the event loop never waits on the
disk or another process's lock) and PostgreSQL for production (:mod:`bridge.pgstore`). Each
method is one database transaction; :meth:`SqlStore.events` is one for a whole batch of events
(one durable commit for all).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS txns (
    txn_ref TEXT PRIMARY KEY,
    third_party TEXT NOT NULL,
    machine TEXT NOT NULL,
    state TEXT NOT NULL,
    lock_cmd TEXT NOT NULL,
    txn_id TEXT,
    selection BIGINT,
    price BIGINT,
    deadline DOUBLE PRECISION,
    paid_cmd TEXT,
    amount BIGINT,
    discount BIGINT,
    surcharge BIGINT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS txns_by_vmc_id ON txns (machine, txn_id);
CREATE TABLE IF NOT EXISTS seen_events (
    event_id TEXT PRIMARY KEY,
    machine TEXT NOT NULL,
    seq BIGINT,
    type TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS planograms (
    machine TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS planogram_coils (
    machine TEXT NOT NULL,
    code BIGINT NOT NULL,
    name TEXT,
    placeholder BOOLEAN,
    capacity BIGINT,
    restock_count BIGINT,
    PRIMARY KEY (machine, code)
);
CREATE TABLE IF NOT EXISTS deliveries (
    id {serial},
    third_party TEXT NOT NULL,
    machine TEXT NOT NULL,
    event_id TEXT NOT NULL,
    path TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_try DOUBLE PRECISION NOT NULL,
    last_error TEXT,
    delivered_at DOUBLE PRECISION,
    failed_at DOUBLE PRECISION,
    claimed_by TEXT,
    claimed_until DOUBLE PRECISION,
    seq BIGINT,
    UNIQUE (third_party, event_id, path)
);
CREATE TABLE IF NOT EXISTS coils (
    machine TEXT NOT NULL,
    code BIGINT NOT NULL,
    price BIGINT,
    current_stock BIGINT,
    PRIMARY KEY (machine, code)
);
CREATE TABLE IF NOT EXISTS members (
    client_id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until DOUBLE PRECISION NOT NULL
);
"""
"""The tables, in SQL both engines read; ``{serial}`` is the engine's auto-numbered key, whose
order is the callback queue's for one event's callbacks."""

ADD_SEQ = """
ALTER TABLE deliveries ADD COLUMN seq BIGINT;
UPDATE deliveries SET seq = COALESCE(
    (SELECT s.seq FROM seen_events s WHERE s.event_id = deliveries.event_id), 0);
"""
"""A database made before the callbacks had their event's ``seq``: the column, filled in."""

HEADS = """
DROP INDEX IF EXISTS deliveries_open;
CREATE INDEX IF NOT EXISTS deliveries_heads ON deliveries (third_party, machine, seq, id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
"""
"""The open callbacks in queue order (after :data:`ADD_SEQ`, which the index needs)."""


class TxnState(StrEnum):
    """Where a third party's transaction is, as the bridge knows it."""

    LOCKING = "locking"  # lock sent, no answer yet
    REFUSED = "refused"  # the machine refused the lock: the txnRef may be locked again
    LOCKED = "locked"
    REQUESTED = "requested"  # txn.request seen: /api/paid may come
    PAID = "paid"  # the machine accepted the paid
    ENDED = "ended"  # its outcome (txn.vend or txn.status) seen


@dataclass(frozen=True, slots=True)
class Txn:
    txn_ref: str
    third_party: str
    machine: str
    state: TxnState
    lock_cmd: str
    txn_id: str | None = None
    selection: int | None = None
    price: int | None = None
    deadline: float | None = None
    paid_cmd: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One callback to one third party: a row of the queue."""

    id: int
    third_party: str
    machine: str
    event_id: str
    path: str
    body: dict[str, Any]
    created_at: float
    attempts: int
    next_try: float
    last_error: str | None
    delivered_at: float | None
    failed_at: float | None


@dataclass(frozen=True, slots=True)
class NewDelivery:
    third_party: str
    path: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SeenEvent:
    event_id: str
    machine: str
    seq: int | None
    type: str
    at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one try of a callback: delivered (no ``error``), to be tried again at
    ``next_try``, or given up (an ``error`` and no ``next_try``)."""

    delivery_id: int
    at: float
    error: str | None = None
    next_try: float | None = None


@dataclass(frozen=True, slots=True)
class CoilLevel:
    """A coil's last known price and stock (from the machine's events), and what its
    planogram says of it (from the machine's answer to ``stock.query``)."""

    code: int
    price: int | None
    current_stock: int | None
    name: str | None = None
    placeholder: bool | None = None
    capacity: int | None = None
    restock_count: int | None = None


_TXN_COLUMNS = (
    "txn_ref, third_party, machine, state, lock_cmd, txn_id, selection, price, deadline, paid_cmd"
)
_TXN_FIELDS = frozenset(
    {
        "state",
        "txn_id",
        "selection",
        "price",
        "deadline",
        "paid_cmd",
        "amount",
        "discount",
        "surcharge",
        "lock_cmd",
    }
)
_DELIVERY_COLUMNS = (
    "id, third_party, machine, event_id, path, body, created_at, attempts, "
    "next_try, last_error, delivered_at, failed_at"
)


def _txn(row: Sequence[Any]) -> Txn:
    return Txn(row[0], row[1], row[2], TxnState(row[3]), *row[4:])


def _delivery(row: Sequence[Any]) -> Delivery:
    rid, party, machine, event_id, path, body, created, attempts, next_try, error, done, failed = (
        row
    )
    return Delivery(
        rid,
        party,
        machine,
        event_id,
        path,
        json.loads(body),
        created,
        attempts,
        next_try,
        error,
        done,
        failed,
    )


class Tx(Protocol):
    """One database transaction: statements with ``?`` placeholders."""

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed."""

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...


class SqlStore(abc.ABC):
    """The store's operations, in SQL that SQLite and PostgreSQL both run."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def tx(self, *, durable: bool = True) -> contextlib.AbstractAsyncContextManager[Tx]:
        """A transaction: committed when the block ends, rolled back if it raises. Not
        ``durable``: its commit does not wait for the disk (a power cut may undo it, never
        corrupt; the next durable commit makes it durable too)."""

    async def _all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.tx() as tx:
            return await tx.fetch(sql, *args)

    # --- transactions --------------------------------------------------------------------------

    async def begin_lock(
        self, txn_ref: str, third_party: str, machine: str, lock_cmd: str, now: float
    ) -> Txn:
        """The txnRef's row: a new one in ``locking``, a refused one of the same third party
        and machine taken again with a new lock command, or the existing one unchanged (the
        caller judges it)."""
        async with self.tx() as tx:
            await tx.execute(
                "INSERT INTO txns (txn_ref, third_party, machine, state, lock_cmd, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (txn_ref) DO UPDATE SET"
                " state = excluded.state, lock_cmd = excluded.lock_cmd, txn_id = NULL"
                " WHERE txns.state = ? AND txns.third_party = excluded.third_party"
                " AND txns.machine = excluded.machine",
                txn_ref,
                third_party,
                machine,
                TxnState.LOCKING.value,
                lock_cmd,
                now,
                TxnState.REFUSED.value,
            )
            rows = await tx.fetch(_TXN_BY_REF, txn_ref)
        return _txn(rows[0])

    async def txn(self, txn_ref: str) -> Txn | None:
        return _first_txn(await self._all(_TXN_BY_REF, txn_ref))

    async def update_txn(
        self,
        txn_ref: str,
        *,
        only_from: TxnState | None = None,
        durable: bool = True,
        **fields: Any,
    ) -> None:
        """Change a txnRef's row; with ``only_from``, only while it is in that state (an
        answer never takes a transaction back over what its events already said). Not
        ``durable`` only where a power cut that undoes it loses nothing: see the callers."""
        async with self.tx(durable=durable) as tx:
            await _update_txn(tx, txn_ref, fields, only_from)

    async def lock_taken(self, txn_ref: str, txn_id: str) -> None:
        """The lock's reply: vmc's transaction id, and ``locked`` unless the transaction's
        own events got there first. Not durable: a power cut that undoes it loses nothing,
        as the lock's command id is already durable (a retried ``/api/lock`` resends it and
        the machine answers with its first reply) and the transaction's events carry the
        txnRef as ``ref`` (the event that finds the row by it sets ``txn_id``)."""
        async with self.tx(durable=False) as tx:
            await _update_txn(tx, txn_ref, {"txn_id": txn_id}, None)
            await _update_txn(tx, txn_ref, {"state": TxnState.LOCKED}, TxnState.LOCKING)

    # --- events --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def events(self) -> AsyncIterator[EventBatch]:
        """A batch of events in one durable transaction: each recorded once, with its
        callbacks, its txn change and its coil, all committed together or not at all (the
        link acknowledges the events only once this commit is done)."""
        async with self.tx() as tx:
            yield EventBatch(tx)

    async def coils(self, machine: str) -> list[CoilLevel]:
        return [_coil(row) for row in await self._all(_COILS, machine)]

    # --- the instances' events sessions --------------------------------------------------------

    async def hold(self, client_id: str, holder: str, until: float, now: float) -> bool:
        """Take or renew the lease on ``client_id``'s events session until ``until``: an
        instance's own (``holder`` = ``client_id``) or one it adopts. True when ``holder`` has
        it: it was free, already its, or lapsed; False while another's lease runs."""
        async with self.tx(durable=False) as tx:  # a lease a power cut undoes is taken again
            taken = await tx.execute(
                "INSERT INTO members (client_id, holder, until) VALUES (?, ?, ?)"
                " ON CONFLICT (client_id) DO UPDATE SET holder = excluded.holder,"
                " until = excluded.until WHERE members.holder = excluded.holder"
                " OR members.until < ?",
                client_id,
                holder,
                until,
                now,
            )
        return taken == 1

    async def lapsed(self, now: float) -> list[str]:
        """The client ids whose lease has run out: their holder was killed, or stalled."""
        rows = await self._all(
            "SELECT client_id FROM members WHERE until < ? ORDER BY client_id", now
        )
        return [row[0] for row in rows]

    async def release(self, client_id: str, holder: str) -> None:
        """``holder`` is done with ``client_id``'s session (an adopter ended it)."""
        async with self.tx(durable=False) as tx:
            await tx.execute(
                "DELETE FROM members WHERE client_id = ? AND holder = ?", client_id, holder
            )

    # --- the callback queue --------------------------------------------------------------------

    async def claim_due(
        self, instance: str, now: float, until: float, limit: int = 64
    ) -> list[Delivery]:
        """Take, for ``instance`` until ``until``, the first open callback of each (third
        party, machine) whose time has come: the queue's heads, so a machine's callbacks go
        one at a time, in the order of their events' ``seq`` (instances sharing the events may
        commit a machine's events out of order), and of their queueing for one event's
        callbacks. A lease: instances sharing the store never take the same
        callback, and one a killed instance held goes to another once it lapses. One
        statement for them all, not durable (a lost claim costs nothing)."""
        async with self.tx(durable=False) as tx:
            rows = await tx.fetch(
                "UPDATE deliveries SET claimed_by = ?, claimed_until = ? WHERE id IN ("
                " SELECT id FROM deliveries WHERE id IN (SELECT (SELECT e.id"
                "  FROM deliveries e WHERE e.third_party = g.third_party AND e.machine = g.machine"
                "  AND e.delivered_at IS NULL AND e.failed_at IS NULL ORDER BY e.seq, e.id LIMIT 1)"
                "  FROM (SELECT DISTINCT third_party, machine FROM deliveries"
                "  WHERE delivered_at IS NULL AND failed_at IS NULL) AS g)"
                "  AND next_try <= ? AND (claimed_until IS NULL OR claimed_until < ?)"
                "  ORDER BY id LIMIT ?)"
                # Again on the row itself: PostgreSQL checks these anew on a row another
                # instance changed meanwhile, not the subquery's.
                " AND delivered_at IS NULL AND failed_at IS NULL"
                " AND (claimed_until IS NULL OR claimed_until < ?)"
                f" RETURNING {_DELIVERY_COLUMNS}",
                instance,
                until,
                now,
                now,
                limit,
                now,
            )
        return sorted((_delivery(r) for r in rows), key=lambda d: d.id)

    async def settle(self, outcomes: Sequence[Outcome]) -> None:
        """Callbacks' outcomes, in one commit, each freeing its claim. Not durable: one a
        power cut undoes is delivered again, as at least once allows (with its
        Idempotency-Key), and so the courier's commits do not each wait for the disk."""
        if not outcomes:
            return
        async with self.tx(durable=False) as tx:
            for o in outcomes:
                values: tuple[Any, ...]
                if o.error is None:
                    assignments, values = "delivered_at = ?", (o.at,)
                elif o.next_try is not None:
                    assignments, values = "next_try = ?, last_error = ?", (o.next_try, o.error)
                else:
                    assignments, values = "failed_at = ?, last_error = ?", (o.at, o.error)
                await tx.execute(
                    f"UPDATE deliveries SET attempts = attempts + 1, {assignments},"
                    " claimed_until = NULL WHERE id = ?",
                    *values,
                    o.delivery_id,
                )

    async def undelivered(self) -> list[Delivery]:
        """Callbacks not delivered yet: waiting (tried, or not yet) and given up."""
        rows = await self._all(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivered_at IS NULL ORDER BY id"
        )
        return [_delivery(r) for r in rows]

    async def deliveries(self) -> list[Delivery]:
        """Every callback, delivered or not, in queue order."""
        rows = await self._all(f"SELECT {_DELIVERY_COLUMNS} FROM deliveries ORDER BY id")
        return [_delivery(r) for r in rows]


_TXN_BY_REF = f"SELECT {_TXN_COLUMNS} FROM txns WHERE txn_ref = ?"
_TXN_BY_ID = f"SELECT {_TXN_COLUMNS} FROM txns WHERE machine = ? AND txn_id = ?"


def _first_txn(rows: list[tuple[Any, ...]]) -> Txn | None:
    return _txn(rows[0]) if rows else None


class EventBatch:
    """What the events of one batch read and write, in their transaction: each event sees
    what the ones before it in the batch wrote."""

    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    async def first_time(self, event: SeenEvent) -> bool:
        """Mark the event seen; False when its id was seen before (then nothing else of it
        is to be written)."""
        return bool(
            await self.tx.execute(
                "INSERT INTO seen_events (event_id, machine, seq, type, at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (event_id) DO NOTHING",
                event.event_id,
                event.machine,
                event.seq,
                event.type,
                event.at,
            )
        )

    async def txn(self, txn_ref: str) -> Txn | None:
        return _first_txn(await self.tx.fetch(_TXN_BY_REF, txn_ref))

    async def txn_by_id(self, machine: str, txn_id: str) -> Txn | None:
        return _first_txn(await self.tx.fetch(_TXN_BY_ID, machine, txn_id))

    async def coils(self, machine: str) -> list[CoilLevel]:
        return [_coil(row) for row in await self.tx.fetch(_COILS, machine)]

    async def record(
        self,
        event: SeenEvent,
        deliveries: Sequence[NewDelivery],
        *,
        txn: Txn | None = None,
        txn_fields: dict[str, Any] | None = None,
        coil: CoilLevel | None = None,
    ) -> None:
        """A first-time event's callbacks, its txn change and its coil."""
        tx = self.tx
        if txn is not None:
            # A select-first transaction is new here; a locked one gets the event's change.
            await tx.execute(
                "INSERT INTO txns (txn_ref, third_party, machine, state, lock_cmd, txn_id,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (txn_ref) DO NOTHING",
                txn.txn_ref,
                txn.third_party,
                txn.machine,
                txn.state.value,
                txn.lock_cmd,
                txn.txn_id,
                event.at,
            )
            # Events committed out of order never take an ended transaction back.
            await _update_txn(tx, txn.txn_ref, txn_fields or {}, None, ended_stays=True)
        if coil is not None:
            await tx.execute(
                "INSERT INTO coils (machine, code, price, current_stock) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (machine, code) DO UPDATE SET"
                " price = COALESCE(excluded.price, coils.price),"
                " current_stock = COALESCE(excluded.current_stock, coils.current_stock)",
                event.machine,
                coil.code,
                coil.price,
                coil.current_stock,
            )
        for d in deliveries:
            await tx.execute(
                "INSERT INTO deliveries (third_party, machine, event_id, path, body,"
                " created_at, next_try, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (third_party, event_id, path) DO NOTHING",
                d.third_party,
                event.machine,
                event.event_id,
                d.path,
                json.dumps(d.body),
                event.at,
                0.0,
                0 if event.seq is None else event.seq,
            )


async def _update_txn(
    tx: Tx,
    txn_ref: str,
    fields: dict[str, Any],
    only_from: TxnState | None,
    *,
    ended_stays: bool = False,
) -> None:
    """``only_from``: only while the row is in that state; ``ended_stays``: the other fields
    change, an ended row's state does not."""
    if not fields:
        return
    names = sorted(fields)
    assert set(names) <= _TXN_FIELDS, names
    keep = f"CASE WHEN state = '{TxnState.ENDED.value}' THEN state ELSE ? END"
    assignments = ", ".join(f"{n} = {keep if n == 'state' and ended_stays else '?'}" for n in names)
    when = "" if only_from is None else " AND state = ?"
    await tx.execute(
        f"UPDATE txns SET {assignments} WHERE txn_ref = ?{when}",
        *(_plain(fields[n]) for n in names),
        txn_ref,
        *(() if only_from is None else (only_from.value,)),
    )


_COILS = (
    "SELECT c.code, c.price, c.current_stock, p.name, p.placeholder, p.capacity, p.restock_count"
    " FROM coils c LEFT JOIN planogram_coils p ON p.machine = c.machine AND p.code = c.code"
    " WHERE c.machine = ? ORDER BY c.code"
)
"""A machine's coils: what the events said, with what its planogram says of each."""


def _coil(row: Sequence[Any]) -> CoilLevel:
    code, price, stock, name, placeholder, capacity, restock_count = row
    flag = None if placeholder is None else bool(placeholder)  # SQLite keeps 0 or 1
    return CoilLevel(code, price, stock, name, flag, capacity, restock_count)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


class _SqliteTx:
    """Statements of one transaction. The first goes to the store's thread with BEGIN
    IMMEDIATE (which may wait for another process's write lock), and COMMIT (which waits for
    the disk) goes there too; the statements between run on the event loop's thread. They
    change pages in SQLite's cache, written out only by the commit, and take microseconds,
    where a trip to the thread and back waited for the loop's next turn each time, the store
    held meanwhile: with 100 machines, the store was the bottleneck that way."""

    def __init__(self, store: SqliteStore, durable: bool) -> None:
        self.store = store
        self.durable = durable
        self.begun = False

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self.begun:
            return work(self.store.connection)
        self.begun = True
        synchronous = "FULL" if self.durable else "NORMAL"

        def go(db: sqlite3.Connection) -> T:
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("BEGIN IMMEDIATE")
            return work(db)

        return await self.store.run(go)

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._run(lambda db: db.execute(sql, args).rowcount)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self._run(lambda db: [tuple(r) for r in db.execute(sql, args)])


class SqliteStore(SqlStore):
    """One SQLite file in WAL mode, fsynced on every commit; one transaction at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-db")
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        await self.run(lambda _db: None, opening=True)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT"))
        if "seq" not in {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}:
            db.executescript(f"BEGIN;{ADD_SEQ}COMMIT;")
        db.executescript(HEADS)
        return db

    async def close(self) -> None:
        if self._db is not None:
            await self.run(lambda db: db.close())
            self._db = None
        self._pool.shutdown(wait=True)

    @property
    def connection(self) -> sqlite3.Connection:
        assert self._db is not None, "store not open"
        return self._db

    async def run(self, work: Callable[[sqlite3.Connection], T], *, opening: bool = False) -> T:
        """``work`` on the connection, in the store's thread."""

        def go() -> T:
            if opening and self._db is None:
                self._db = self._connect()
            assert self._db is not None, "store not open"
            return work(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._pool, go)

    @contextlib.asynccontextmanager
    async def tx(self, *, durable: bool = True) -> AsyncIterator[Tx]:
        async with self._lock:
            tx = _SqliteTx(self, durable)
            try:
                yield tx
            except BaseException:
                if tx.begun:
                    await self.run(lambda db: db.execute("ROLLBACK"))
                raise
            if tx.begun:
                await self.run(lambda db: db.execute("COMMIT"))

    async def _all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A read on its own: one trip, no transaction (between the others')."""
        async with self._lock:
            return await self.run(lambda db: [tuple(r) for r in db.execute(sql, args)])


@functools.lru_cache(maxsize=256)
def placeholders(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1``, ``$2``... (the SQL here has no ``?`` else);
    the statements are few and run again and again."""
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _m: f"${next(count)}", sql)


def open_store(database: str | Path) -> SqlStore:
    """The store a configuration names: a PostgreSQL URL, or a SQLite file."""
    if isinstance(database, str) and database.startswith(("postgresql://", "postgres://")):
        from bridge.pgstore import PostgresStore

        return PostgresStore(database)
    return SqliteStore(Path(database))
