"""The bridge's storage: the txnRef mapping, the events seen and the callback queue.

SQLite in WAL mode by default. One connection, used from one worker thread, so the event
loop never waits on the disk and every method is one transaction. The methods are what a
PostgreSQL store would offer behind the same names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS txns (
    txn_ref TEXT PRIMARY KEY,
    third_party TEXT NOT NULL,
    machine TEXT NOT NULL,
    state TEXT NOT NULL,
    lock_cmd TEXT NOT NULL,
    txn_id TEXT,
    selection INTEGER,
    price INTEGER,
    deadline REAL,
    paid_cmd TEXT,
    amount INTEGER,
    discount INTEGER,
    surcharge INTEGER,
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS txns_by_vmc_id ON txns (machine, txn_id);
CREATE TABLE IF NOT EXISTS seen_events (
    event_id TEXT PRIMARY KEY,
    machine TEXT NOT NULL,
    seq INTEGER,
    type TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    third_party TEXT NOT NULL,
    machine TEXT NOT NULL,
    event_id TEXT NOT NULL,
    path TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    last_error TEXT,
    delivered_at REAL,
    failed_at REAL,
    UNIQUE (third_party, event_id, path)
);
CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (third_party, machine, id)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE TABLE IF NOT EXISTS coils (
    machine TEXT NOT NULL,
    code INTEGER NOT NULL,
    price INTEGER,
    current_stock INTEGER,
    PRIMARY KEY (machine, code)
);
"""


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
class CoilLevel:
    """A coil's last known price and stock (from the machine's events)."""

    code: int
    price: int | None
    current_stock: int | None


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


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bridge-db")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        assert self._db is not None, "store not open"
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- transactions --------------------------------------------------------------------------

    async def begin_lock(
        self, txn_ref: str, third_party: str, machine: str, lock_cmd: str, now: float
    ) -> Txn:
        """The txnRef's row: a new one in ``locking``, a refused one taken again with a new
        lock command, or the existing one unchanged (the caller judges it)."""

        def go() -> Txn:
            with self._tx() as db:
                row = db.execute(
                    f"SELECT {_TXN_COLUMNS} FROM txns WHERE txn_ref = ?", (txn_ref,)
                ).fetchone()
                if row is not None and TxnState(row[3]) is not TxnState.REFUSED:
                    return _txn(row)
                db.execute(
                    "INSERT OR REPLACE INTO txns (txn_ref, third_party, machine, state, lock_cmd,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (txn_ref, third_party, machine, TxnState.LOCKING, lock_cmd, now),
                )
                return Txn(txn_ref, third_party, machine, TxnState.LOCKING, lock_cmd)

        return await self._run(go)

    async def txn(self, txn_ref: str) -> Txn | None:
        def go() -> Txn | None:
            assert self._db is not None
            row = self._db.execute(
                f"SELECT {_TXN_COLUMNS} FROM txns WHERE txn_ref = ?", (txn_ref,)
            ).fetchone()
            return None if row is None else _txn(row)

        return await self._run(go)

    async def txn_by_id(self, machine: str, txn_id: str) -> Txn | None:
        def go() -> Txn | None:
            assert self._db is not None
            row = self._db.execute(
                f"SELECT {_TXN_COLUMNS} FROM txns WHERE machine = ? AND txn_id = ?",
                (machine, txn_id),
            ).fetchone()
            return None if row is None else _txn(row)

        return await self._run(go)

    async def update_txn(self, txn_ref: str, **fields: Any) -> None:
        names = sorted(fields)
        assert set(names) <= _TXN_FIELDS, names

        def go() -> None:
            with self._tx() as db:
                assignments = ", ".join(f"{n} = ?" for n in names)
                db.execute(
                    f"UPDATE txns SET {assignments} WHERE txn_ref = ?",
                    (*(fields[n] for n in names), txn_ref),
                )

        await self._run(go)

    # --- events --------------------------------------------------------------------------------

    async def record_event(
        self,
        event: SeenEvent,
        deliveries: Sequence[NewDelivery],
        *,
        txn: Txn | None = None,
        txn_fields: dict[str, Any] | None = None,
        coil: CoilLevel | None = None,
    ) -> bool:
        """Record an event once, with its callbacks, its txn change and its coil, all in one
        commit; False (and nothing written) when its id was seen before."""

        def go() -> bool:
            with self._tx() as db:
                seen = db.execute(
                    "INSERT OR IGNORE INTO seen_events (event_id, machine, seq, type, at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (event.event_id, event.machine, event.seq, event.type, event.at),
                )
                if seen.rowcount == 0:
                    return False
                if txn is not None:
                    self._write_txn(db, txn, txn_fields or {}, event.at)
                if coil is not None:
                    db.execute(
                        "INSERT INTO coils (machine, code, price, current_stock)"
                        " VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (machine, code) DO UPDATE SET"
                        " price = COALESCE(excluded.price, price),"
                        " current_stock = COALESCE(excluded.current_stock, current_stock)",
                        (event.machine, coil.code, coil.price, coil.current_stock),
                    )
                for d in deliveries:
                    db.execute(
                        "INSERT OR IGNORE INTO deliveries (third_party, machine, event_id, path,"
                        " body, created_at, next_try) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            d.third_party,
                            event.machine,
                            event.event_id,
                            d.path,
                            json.dumps(d.body),
                            event.at,
                            0.0,
                        ),
                    )
                return True

        return await self._run(go)

    @staticmethod
    def _write_txn(db: sqlite3.Connection, txn: Txn, fields: dict[str, Any], at: float) -> None:
        """A select-first txn is new here; a locked one gets the event's changes."""
        db.execute(
            "INSERT OR IGNORE INTO txns (txn_ref, third_party, machine, state, lock_cmd, txn_id,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (txn.txn_ref, txn.third_party, txn.machine, txn.state, txn.lock_cmd, txn.txn_id, at),
        )
        if fields:
            names = sorted(fields)
            assert set(names) <= _TXN_FIELDS, names
            db.execute(
                f"UPDATE txns SET {', '.join(f'{n} = ?' for n in names)} WHERE txn_ref = ?",
                (*(fields[n] for n in names), txn.txn_ref),
            )

    async def coils(self, machine: str) -> list[CoilLevel]:
        def go() -> list[CoilLevel]:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT code, price, current_stock FROM coils WHERE machine = ? ORDER BY code",
                (machine,),
            ).fetchall()
            return [CoilLevel(*row) for row in rows]

        return await self._run(go)

    # --- the callback queue --------------------------------------------------------------------

    async def due(self, now: float, limit: int = 32) -> list[Delivery]:
        """The first open callback of each (third party, machine) whose time has come: the
        queue's heads, so a machine's callbacks go one at a time, in order."""

        def go() -> list[Delivery]:
            assert self._db is not None
            rows = self._db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id IN ("
                " SELECT MIN(id) FROM deliveries WHERE delivered_at IS NULL AND failed_at IS NULL"
                " GROUP BY third_party, machine) AND next_try <= ? ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
            return [_delivery(r) for r in rows]

        return await self._run(go)

    async def delivered(self, delivery_id: int, at: float) -> None:
        await self._set(delivery_id, "attempts = attempts + 1, delivered_at = ?", at)

    async def retry(self, delivery_id: int, next_try: float, error: str) -> None:
        await self._set(
            delivery_id, "attempts = attempts + 1, next_try = ?, last_error = ?", next_try, error
        )

    async def give_up(self, delivery_id: int, at: float, error: str) -> None:
        await self._set(
            delivery_id, "attempts = attempts + 1, failed_at = ?, last_error = ?", at, error
        )

    async def _set(self, delivery_id: int, assignments: str, *values: Any) -> None:
        def go() -> None:
            with self._tx() as db:
                db.execute(
                    f"UPDATE deliveries SET {assignments} WHERE id = ?", (*values, delivery_id)
                )

        await self._run(go)

    async def undelivered(self) -> list[Delivery]:
        """Callbacks not delivered yet: waiting (tried, or not yet) and given up."""

        def go() -> list[Delivery]:
            assert self._db is not None
            rows = self._db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivered_at IS NULL ORDER BY id"
            ).fetchall()
            return [_delivery(r) for r in rows]

        return await self._run(go)

    async def deliveries(self, third_party: str | None = None) -> list[Delivery]:
        """Every callback, delivered or not, in queue order (tests, the status listing)."""

        def go() -> list[Delivery]:
            assert self._db is not None
            where, args = ("WHERE third_party = ?", (third_party,)) if third_party else ("", ())
            rows = self._db.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries {where} ORDER BY id", args
            ).fetchall()
            return [_delivery(r) for r in rows]

        return await self._run(go)
