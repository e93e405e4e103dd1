"""The daemon's durable state: one SQLite file in WAL mode under the state directory.

- ``txns`` holds each transaction's latest state, ``txn_log`` every transition.
- ``outbox`` holds every message for the cloud, written in the same SQLite transaction as the
  state change that caused it; a row is deleted only after the broker's PUBACK.
- ``commands`` remembers each command id with its reply, so a repeated command is answered
  with the first answer and changes nothing.
- ``bus_events`` is the local-policy book (``--local-approval`` without a cloud).
- ``state`` holds small values that must move atomically with messages, such as the audit
  baseline: a read's deltas and the new baseline are committed together.
- ``planogram`` holds the one planogram in force (version and document), ``stock_levels`` each
  stock key's level and last reported condition, ``stock_ops`` every applied stock operation
  id and ``stock_history`` every level change (op id, time, key, before, after, reason). One
  stock operation writes all of them with its outbox events and its command's reply in ONE
  fsynced commit (:class:`StockWrite`), so a power cut leaves the old or the new stock.
- ``sales`` holds one row per product that left the machine (UTC time, selection, price,
  payment, vend type, payment medium, surcharge), written in the same commit as the sale's
  event; ``sales.query`` reports from it. A journal from before the medium and surcharge gets
  the two columns when it is opened.
- ``refunds`` holds each refund recorded against a vend (refund id, txn id, UTC time, amount,
  and the vend's selection, result and vend type), written in ONE fsynced commit with its
  ``txn.refund`` event and the command's reply. A closed transaction is kept, with its log and
  refunds, for ``[daemon] sales_retention_days`` after it closed and after its last refund, so
  a refund can be judged against it (and never exceed it) after a restart.
- ``credits`` holds each voucher and remote credit by kind and id (the backend's, so a repeated
  one is known), open or with its one outcome, written in the same commit as the transitions
  of the vends it paid. Test vends and offline approvals are sessions of the same table; the
  offline ones under an allow-list are its usage (:meth:`Journal.offline_usage`), and the list
  itself is in ``state`` (``offline.list``), written with its command's reply.
- ``local_replies`` remembers each ``vmctl`` operation's id with its reply (CBOR), written in
  the same commit as the operation (see :mod:`vmc.services.local_ops`), so asking again with
  the id returns the first reply and changes nothing. A journal from before the control socket
  had them in ``local_inbox``: the answered rows move over when it is opened.
- ``collections`` holds each cash collection (its period, whether its report was committed):
  written with the command that asked for it, marked reported with the report's event.
- ``data_requests`` holds each data request (seed 003 report/config, from the cloud or
  ``vmctl dex read``) while it is pending, so a restart settles it, and once done: the progress
  of its read and, for a ``vmctl`` one, its result, for the waiting ``vmctl`` to read. Its
  completion is committed with the read's own audit events.

History grows with every sale and is pruned after ``[daemon] sales_retention_days``
(:meth:`Journal.prune`): sales rows, closed transactions and their log, stock operation ids
and history, reported collections (the last one stays: it starts the next period) and the
local-policy book. What is open or not yet reported is never pruned, and the outbox empties
itself on PUBACK.

Commits that move money run with ``synchronous=FULL``: the WAL is fsynced before the commit
returns, so a transition that was acted upon survives ``kill -9`` and power loss.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from protocols.errors import VmcError
from vmc.cloud.messages import PaymentMedium, VendType
from vmc.collection import Collection
from vmc.credit import CreditKind, CreditSession, CreditState
from vmc.credit import from_json as credit_from_json
from vmc.credit import to_json as credit_to_json
from vmc.data_request import Request
from vmc.offline import AllowList, Spent, Usage
from vmc.planogram import Planogram
from vmc.refunds import RefundRow
from vmc.sales import Payment, SaleRow
from vmc.stock import (
    Applied,
    Condition,
    IngredientKey,
    LevelChanged,
    SlotKey,
    Stock,
    StockKey,
)
from vmc.transaction import FINAL, Txn, TxnState

log = structlog.get_logger("vmc.journal")

SCHEMA = """
CREATE TABLE IF NOT EXISTS bus_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    vend_id INTEGER,
    item INTEGER,
    amount INTEGER,
    vend_type TEXT,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS txns (
    txn_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    final INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS txns_created ON txns (json_extract(data, '$.created_at'));
CREATE INDEX IF NOT EXISTS txns_open ON txns (final) WHERE final = 0;
CREATE TABLE IF NOT EXISTS txn_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    reply BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS planogram (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    document TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stock_levels (
    key TEXT PRIMARY KEY,
    level INTEGER NOT NULL,
    condition TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stock_ops (
    op_id TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stock_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id TEXT NOT NULL,
    at REAL NOT NULL,
    key TEXT NOT NULL,
    before INTEGER NOT NULL,
    after INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sales (
    op_id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    selection INTEGER NOT NULL,
    price INTEGER NOT NULL,
    payment TEXT NOT NULL,
    vend_type TEXT NOT NULL,
    medium TEXT,
    surcharge INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sales_at ON sales (at);
CREATE TABLE IF NOT EXISTS refunds (
    refund_id TEXT PRIMARY KEY,
    txn_id TEXT NOT NULL,
    at REAL NOT NULL,
    amount INTEGER NOT NULL,
    selection INTEGER NOT NULL,
    result TEXT NOT NULL,
    vend_type TEXT NOT NULL,
    reason TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refunds_txn ON refunds (txn_id);
CREATE INDEX IF NOT EXISTS refunds_at ON refunds (at);
CREATE TABLE IF NOT EXISTS credits (
    kind TEXT NOT NULL,
    credit_id TEXT NOT NULL,
    final INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, credit_id)
);
CREATE INDEX IF NOT EXISTS credits_open ON credits (final) WHERE final = 0;
CREATE TABLE IF NOT EXISTS local_replies (
    id TEXT PRIMARY KEY,
    reply BLOB NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS collections (
    id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    since REAL,
    restock INTEGER NOT NULL,
    reported INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS data_requests (
    request_id TEXT PRIMARY KEY,
    report INTEGER NOT NULL,
    config INTEGER NOT NULL,
    local INTEGER NOT NULL,
    created REAL NOT NULL,
    read_id TEXT,
    received INTEGER NOT NULL,
    blocks INTEGER NOT NULL,
    result BLOB,
    done REAL
);
CREATE INDEX IF NOT EXISTS data_requests_pending ON data_requests (created) WHERE done IS NULL;
"""
JOURNAL_NAME = "journal.sqlite3"
"""The journal's file in the state directory."""
SEQ_MARGIN = 1000
"""How far vmcd's start moves the next outbox ``seq`` on: more than the rows a power cut can
lose (those committed since the last fsync: one ``txn.request``, a few repeated replies)."""
OFFLINE_LIST = "offline.list"
"""The ``state`` key of the allow-list in force for offline approvals (JSON)."""
STOCK_META = "stock"
"""The ``state`` key of what the stock keeps besides levels: sales since refill, timestamps."""
SALES_COLUMNS_ADDED = (
    ("medium", "TEXT"),
    ("surcharge", "INTEGER NOT NULL DEFAULT 0"),
)
"""Columns the ``sales`` table gained after its first release: added to an older journal."""


@dataclass(frozen=True, slots=True)
class JournalRecord:
    kind: str
    vend_id: int | None = None
    item: int | None = None
    amount: int | None = None
    vend_type: VendType | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored message for the broker; ``seq`` orders the outbox and is never reused."""

    id: str
    topic: str
    payload: bytes
    seq: int = 0


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store; ``encode`` gets its outbox seq, so the payload can carry it."""

    id: str
    topic: str
    encode: Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class StockWrite:
    """One applied stock operation: what :meth:`Journal.commit` stores for it."""

    op_id: str
    at: float
    before: Stock
    applied: Applied


@dataclass(frozen=True, slots=True)
class RequestWrite:
    """A data request's row: pending, its read's progress, or ``done`` (with a ``result`` for
    the ``vmctl`` that waits for it; a cloud request's result is its event)."""

    request: Request
    received: int = 0
    blocks: int = 0
    done: bool = False
    result: bytes | None = None


@dataclass(frozen=True, slots=True)
class RequestRow:
    """What a waiting ``vmctl`` reads of its data request."""

    received: int
    blocks: int
    done: bool
    result: bytes | None


@dataclass(frozen=True, slots=True)
class HistoryRow:
    op_id: str
    at: float
    key: StockKey
    before: int
    after: int
    reason: str


def key_text(key: StockKey) -> str:
    """A stock key as stored: ``s:12`` for a selection, ``i:beans`` for an ingredient."""
    return f"s:{key.number}" if isinstance(key, SlotKey) else f"i:{key.id}"


def key_from_text(text: str) -> StockKey:
    kind, _, name = text.partition(":")
    return SlotKey(int(name)) if kind == "s" else IngredientKey(name)


_TXN_FIELDS = tuple(f.name for f in dataclasses.fields(Txn))


def txn_to_json(txn: Txn) -> str:
    """A transaction as stored; its fields are flat, so no ``asdict`` deep copy (on the hot
    path of every transition)."""
    return json.dumps({name: getattr(txn, name) for name in _TXN_FIELDS}, default=str)


def txn_record(txn: Txn, refunded: int) -> dict[str, object]:
    """A transaction as the contract's ``txn.query`` and ``vmctl txn`` show it."""
    record: dict[str, object] = json.loads(txn_to_json(txn))
    record["refunded"] = refunded
    return record


def txn_from_json(text: str) -> Txn:
    data = json.loads(text)
    data["state"] = TxnState(data["state"])
    data["vend_type"] = VendType(data["vend_type"])
    if data.get("medium") is not None:
        data["medium"] = PaymentMedium(data["medium"])
    return Txn(**data)


class StorageFullError(VmcError):
    """A journal write found no room on the filesystem; SQLite rolled it back whole."""


class Journal:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        """``clock`` stamps the rows that carry no time of their own (transitions, outbox,
        command ids, the local book): the times the prune goes by."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.clock = clock
        self.on_commit: list[Callable[[Sequence[OutboxRow], JournalRecord | None, float], None]]
        self.on_commit = []
        """Each told, after each commit, the outbox rows and the local-policy record it wrote
        (the event feed; the outbox drain, which may publish them at its next wake-up)."""
        self.on_full: Callable[[], bool] | None = None
        """Told when a write found no room; True if it made some (the write is tried again)."""
        self._db = sqlite3.connect(path, isolation_level=None)
        self._checkpoints: sqlite3.Connection | None = None
        """:meth:`checkpoint`'s own connection, used by one worker thread at a time."""
        self._checkpointed = -1
        """``data_version`` at the last checkpoint: unchanged, nothing was committed since."""
        self._checkpoint_lock = threading.Lock()
        """Held by :meth:`checkpoint`, so that :meth:`close` waits for one in a worker."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._sync = ""
        self._set_sync(durable=True)
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a journal written by an older version up to this schema."""
        if not (self._sales_columns_missing(self._db) or self._has_inbox(self._db)):
            return
        with self._transaction(durable=True) as db:  # vmcd and vmctl may both open it
            for name, kind in self._sales_columns_missing(db):
                db.execute(f"ALTER TABLE sales ADD COLUMN {name} {kind}")
            if self._has_inbox(db):
                # vmctl's operations went through this table before the control socket: the
                # answered ones keep their replies (a retry with their id stays safe).
                db.execute(
                    "INSERT OR IGNORE INTO local_replies (id, reply, at)"
                    " SELECT id, reply, answered FROM local_inbox WHERE reply IS NOT NULL"
                )
                db.execute("DROP TABLE local_inbox")

    @staticmethod
    def _has_inbox(db: sqlite3.Connection) -> bool:
        found = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'local_inbox'"
        ).fetchone()
        return found is not None

    @staticmethod
    def _sales_columns_missing(db: sqlite3.Connection) -> list[tuple[str, str]]:
        columns = {row[1] for row in db.execute("PRAGMA table_info(sales)")}
        return [(name, kind) for name, kind in SALES_COLUMNS_ADDED if name not in columns]

    def _set_sync(self, *, durable: bool) -> None:
        mode = "FULL" if durable else "NORMAL"
        if mode != self._sync:
            self._db.execute(f"PRAGMA synchronous={mode}")
            self._sync = mode

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """Several reads that see one commit, while another process may write (vmcd, vmctl)."""
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            self._db.execute("COMMIT")

    @contextmanager
    def _transaction(self, *, durable: bool) -> Iterator[sqlite3.Connection]:
        """One write transaction; a write without room is :class:`StorageFullError`, rolled back."""
        self._set_sync(durable=durable)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have rolled back already
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                raise StorageFullError(str(exc)) from exc
            raise

    def _write(self, body: Callable[[sqlite3.Connection], None], *, durable: bool) -> None:
        """``body`` in one transaction; if it found no room, once more after :attr:`on_full`
        made some (the storage guard gives its reserve back)."""
        try:
            with self._transaction(durable=durable) as db:
                body(db)
            return
        except StorageFullError:
            if self.on_full is None or not self.on_full():
                raise
        log.warning("journal_write_retried", reason="storage_full")
        with self._transaction(durable=durable) as db:
            body(db)

    # --- local-policy bookings ---------------------------------------------------------------

    def append(self, record: JournalRecord, *, durable: bool = False) -> None:
        """Write one local-policy record; ``durable`` ones are fsynced."""
        self.commit([], [], record=record, durable=durable)

    def records(self, kind: str | None = None) -> list[JournalRecord]:
        sql = "SELECT kind, vend_id, item, amount, vend_type, detail FROM bus_events"
        args: tuple[str, ...] = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            args = (kind,)
        rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [
            JournalRecord(k, v, i, a, None if t is None else VendType(t), d)
            for k, v, i, a, t, d in rows
        ]

    # --- transactions, outbox and commands, committed together --------------------------------

    def commit(
        self,
        transitions: Iterable[Txn],
        outbox: Iterable[NewMessage],
        *,
        command: tuple[str, bytes] | None = None,
        local_reply: tuple[str, bytes] | None = None,
        record: JournalRecord | None = None,
        state: dict[str, bytes] | None = None,
        stock: Sequence[StockWrite] = (),
        sales: Sequence[tuple[str, SaleRow]] = (),
        collections: Sequence[Collection] = (),
        refunds: Sequence[RefundRow] = (),
        requests: Sequence[RequestWrite] = (),
        credits: Sequence[CreditSession] = (),
        durable: bool,
    ) -> None:
        """Record transitions, their messages, a command's reply (a cloud one, or a local one
        under its ``vmctl`` id), a local-policy record, state, stock, sales (each with its
        operation id: a sale counted before is not counted again), collections (new ones, or
        one now reported), refunds and data requests in one commit; then tell
        :attr:`on_commit` what it queued for the cloud and booked locally."""
        now = self.clock()
        queued: list[OutboxRow] = []

        def write(db: sqlite3.Connection) -> None:
            queued.clear()  # a retried write queues its rows afresh
            if record is not None:
                db.execute(
                    "INSERT INTO bus_events (at, kind, vend_id, item, amount, vend_type, detail)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        now,
                        record.kind,
                        record.vend_id,
                        record.item,
                        record.amount,
                        None if record.vend_type is None else record.vend_type.value,
                        record.detail,
                    ),
                )
            db.executemany(
                "INSERT INTO collections (id, at, since, restock, reported) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET reported = excluded.reported",
                [(c.collection_id, c.at, c.since, c.restock, c.reported) for c in collections],
            )
            db.executemany(
                "INSERT OR IGNORE INTO sales"
                " (op_id, at, selection, price, payment, vend_type, medium, surcharge)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        op_id,
                        r.at,
                        r.selection,
                        r.price,
                        r.payment.value,
                        r.vend_type.value,
                        None if r.medium is None else r.medium.value,
                        r.surcharge,
                    )
                    for op_id, r in sales
                ],
            )
            db.executemany(
                "INSERT INTO refunds"
                " (refund_id, txn_id, at, amount, selection, result, vend_type, reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.refund_id,
                        r.txn_id,
                        r.at,
                        r.amount,
                        r.selection,
                        r.result,
                        r.vend_type.value,
                        r.reason,
                    )
                    for r in refunds
                ],
            )
            db.executemany(
                "INSERT INTO credits (kind, credit_id, final, data) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (kind, credit_id) DO UPDATE SET final = excluded.final,"
                " data = excluded.data",
                [
                    (
                        c.kind.value,
                        c.credit_id,
                        int(c.state is not CreditState.OPEN),
                        credit_to_json(c),
                    )
                    for c in credits
                ],
            )
            for write in stock:
                _write_stock(db, write)
            for txn in transitions:
                data = txn_to_json(txn)
                final = int(txn.state in FINAL)
                db.execute(
                    "INSERT INTO txns (txn_id, state, final, data) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (txn_id) DO UPDATE SET state = excluded.state,"
                    " final = excluded.final, data = excluded.data",
                    (txn.txn_id, txn.state.value, final, data),
                )
                db.execute(
                    "INSERT INTO txn_log (txn_id, state, at, data) VALUES (?, ?, ?, ?)",
                    (txn.txn_id, txn.state.value, now, data),
                )
            for message in outbox:
                cur = db.execute(
                    "INSERT INTO outbox (id, topic, payload, created) VALUES (?, ?, x'', ?)",
                    (message.id, message.topic, now),
                )
                seq = int(cur.lastrowid or 0)
                payload = message.encode(seq)
                db.execute("UPDATE outbox SET payload = ? WHERE seq = ?", (payload, seq))
                queued.append(OutboxRow(message.id, message.topic, payload, seq))
            if command is not None:
                db.execute(
                    "INSERT OR IGNORE INTO commands (id, reply, at) VALUES (?, ?, ?)",
                    (command[0], command[1], now),
                )
            if local_reply is not None:  # a second reply to one id fails the whole commit
                db.execute(
                    "INSERT INTO local_replies (id, reply, at) VALUES (?, ?, ?)",
                    (local_reply[0], local_reply[1], now),
                )
            db.executemany(
                "INSERT INTO state (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                list((state or {}).items()),
            )
            db.executemany(
                "INSERT OR REPLACE INTO data_requests (request_id, report, config, local,"
                " created, read_id, received, blocks, result, done)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        w.request.request_id,
                        int(w.request.report),
                        int(w.request.config),
                        int(w.request.local),
                        w.request.created,
                        w.request.read_id,
                        w.received,
                        w.blocks,
                        w.result,
                        now if w.done else None,
                    )
                    for w in requests
                ],
            )

        self._write(write, durable=durable)
        if queued or record is not None:
            for observer in self.on_commit:
                try:
                    observer(queued, record, now)
                except Exception:  # an observer's bug must not make a done commit look failed
                    log.exception("journal_observer_failed")

    # --- stock ----------------------------------------------------------------------------------

    def stock_applied(self, op_id: str) -> bool:
        """Whether a stock operation with this id was already applied."""
        row = self._db.execute("SELECT 1 FROM stock_ops WHERE op_id = ?", (op_id,)).fetchone()
        return row is not None

    def load_stock(self) -> Stock:
        """The stock as last committed: the planogram, levels, conditions and counters."""
        with self._snapshot() as db:
            row = db.execute("SELECT document FROM planogram WHERE id = 1").fetchone()
            stored = db.execute("SELECT key, level, condition FROM stock_levels").fetchall()
            meta = json.loads(self.state(STOCK_META) or b"{}")
        planogram = None if row is None else Planogram.from_mapping(json.loads(row[0]))
        levels: dict[StockKey, int] = {}
        conditions: dict[StockKey, Condition] = {}
        for text, level, cond in stored:
            key = key_from_text(text)
            levels[key] = int(level)
            conditions[key] = Condition(cond)
        return Stock.restore(
            planogram,
            levels,
            conditions,
            sales_since_refill={
                int(n): int(c) for n, c in meta.get("sales_since_refill", {}).items()
            },
            last_sale_at=meta.get("last_sale_at"),
            last_loading_at=meta.get("last_loading_at"),
            paid_vends={int(n): int(c) for n, c in meta.get("paid_vends", {}).items()},
            last_service_at=meta.get("last_service_at"),
        )

    def stock_history(self) -> list[HistoryRow]:
        rows = self._db.execute(
            "SELECT op_id, at, key, before, after, reason FROM stock_history ORDER BY seq"
        ).fetchall()
        return [HistoryRow(o, a, key_from_text(k), b, f, r) for o, a, k, b, f, r in rows]

    def open_txn(self) -> Txn | None:
        row = self._db.execute("SELECT data FROM txns WHERE final = 0 LIMIT 1").fetchone()
        return None if row is None else txn_from_json(row[0])

    def open_credit(self) -> CreditSession | None:
        """The voucher or credit still open, if a crash left one."""
        row = self._db.execute("SELECT data FROM credits WHERE final = 0 LIMIT 1").fetchone()
        return None if row is None else credit_from_json(row[0])

    def credit(self, kind: CreditKind, credit_id: str) -> CreditSession | None:
        """A voucher or credit accepted before under this id, open or ended."""
        row = self._db.execute(
            "SELECT data FROM credits WHERE kind = ? AND credit_id = ?", (kind.value, credit_id)
        ).fetchone()
        return None if row is None else credit_from_json(row[0])

    def offline_list(self) -> AllowList | None:
        """The allow-list in force for offline approvals, if the backend sent one."""
        text = self.state(OFFLINE_LIST)
        return None if text is None else AllowList.from_json(text.decode())

    def offline_usage(self, version: int) -> Usage:
        """What the offline approvals under allow-list ``version`` took: each session's vends
        that may have dispensed, and their prices (reserved from the approval's commit on)."""
        rows = self._db.execute(
            "SELECT data FROM credits WHERE kind = ? AND json_extract(data, '$.list_version') = ?",
            (CreditKind.OFFLINE.value, version),
        ).fetchall()
        sessions = (credit_from_json(row[0]) for row in rows)
        return Usage.summed((s.ref or "", Spent(len(s.txn_ids), s.used)) for s in sessions)

    def txn(self, txn_id: str) -> Txn | None:
        row = self._db.execute("SELECT data FROM txns WHERE txn_id = ?", (txn_id,)).fetchone()
        return None if row is None else txn_from_json(row[0])

    def txns_created(
        self, since: float, until: float, after: str | None, limit: int, selection: int | None
    ) -> list[tuple[Txn, int]]:
        """Transactions created in ``[since, until)`` (of one ``selection`` if given), oldest
        first, each with what was refunded of it; ``limit`` of them after the ``after`` one (a
        cursor: its id)."""
        created = "json_extract(t.data, '$.created_at')"
        cursor = ""
        args: list[object] = [since, until]
        start = None if after is None else self.txn(after)
        if start is not None:
            cursor = f" AND ({created}, t.txn_id) > (?, ?)"
            args += [start.created_at, start.txn_id]
        if selection is not None:
            cursor += " AND json_extract(t.data, '$.selection') = ?"
            args.append(selection)
        return self._txns_refunded(
            f"{created} >= ? AND {created} < ?{cursor} ORDER BY {created}, t.txn_id LIMIT ?",
            (*args, limit),
        )

    def latest_txns(self, limit: int) -> list[tuple[Txn, int]]:
        """The ``limit`` transactions created last, newest first, each with its refunds."""
        created = "json_extract(t.data, '$.created_at')"
        return self._txns_refunded(f"1 ORDER BY {created} DESC, t.txn_id DESC LIMIT ?", (limit,))

    def _txns_refunded(self, where: str, args: Sequence[object]) -> list[tuple[Txn, int]]:
        rows = self._db.execute(
            "SELECT t.data, (SELECT COALESCE(SUM(r.amount), 0) FROM refunds r"
            f" WHERE r.txn_id = t.txn_id) FROM txns t WHERE {where}",
            tuple(args),
        ).fetchall()
        return [(txn_from_json(data), int(refunded)) for data, refunded in rows]

    def txn_ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` transaction ids that start with ``prefix``."""
        rows = self._db.execute(
            "SELECT txn_id FROM txns WHERE substr(txn_id, 1, ?) = ? ORDER BY txn_id LIMIT ?",
            (len(prefix), prefix, limit),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def txn_log(self, txn_id: str) -> list[tuple[float, Txn]]:
        """Each transition of one transaction, oldest first: when, and the transaction then."""
        rows = self._db.execute(
            "SELECT at, data FROM txn_log WHERE txn_id = ? ORDER BY seq", (txn_id,)
        ).fetchall()
        return [(float(at), txn_from_json(data)) for at, data in rows]

    def txn_history(self, txn_id: str) -> list[TxnState]:
        rows = self._db.execute(
            "SELECT state FROM txn_log WHERE txn_id = ? ORDER BY seq", (txn_id,)
        ).fetchall()
        return [TxnState(r[0]) for r in rows]

    def state(self, key: str) -> bytes | None:
        """A value committed with :meth:`commit` (the audit baseline, report timestamps)."""
        row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def known_reply(self, command_id: str) -> bytes | None:
        row = self._db.execute("SELECT reply FROM commands WHERE id = ?", (command_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def pending(self, limit: int, after_seq: int = 0) -> list[OutboxRow]:
        rows = self._db.execute(
            "SELECT seq, id, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [OutboxRow(i, t, bytes(p), s) for s, i, t, p in rows]

    def outbox_size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def outbox_oldest(self) -> float | None:
        """When the oldest message still waiting for its PUBACK was queued (POSIX s)."""
        row = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()
        return None if row[0] is None else float(row[0])

    def skip_seqs(self, margin: int = SEQ_MARGIN) -> None:
        """Move the outbox's next ``seq`` ``margin`` past the last one on disk (fsynced).

        vmcd calls it at start: a ``txn.request`` is published before its commit is fsynced,
        so a power cut may lose its row after the backend got it; without the skip, the next
        message would be given that ``seq`` again.
        """

        def skip(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox', 0"
                " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox')"
            )
            db.execute("UPDATE sqlite_sequence SET seq = seq + ? WHERE name = 'outbox'", (margin,))

        self._write(skip, durable=True)

    def delivered_through(self, seq: int) -> int:
        """Forget every row up to ``seq``, all acknowledged; how many there were. Not fsynced."""
        deleted = 0

        def delete(db: sqlite3.Connection) -> None:
            nonlocal deleted
            deleted = db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,)).rowcount

        self._write(delete, durable=False)
        return deleted

    def prune_commands(self, older_than: float) -> None:
        with self._transaction(durable=False) as db:
            db.execute("DELETE FROM commands WHERE at < ?", (older_than,))

    def sales(self, since: float, until: float) -> list[SaleRow]:
        """The sales rows with ``since <= at < until``, oldest first."""
        rows = self._db.execute(
            "SELECT at, selection, price, payment, vend_type, medium, surcharge FROM sales"
            " WHERE at >= ? AND at < ? ORDER BY at",
            (since, until),
        ).fetchall()
        return [
            SaleRow(
                a, s, p, Payment(pay), VendType(v), None if md is None else PaymentMedium(md), sur
            )
            for a, s, p, pay, v, md, sur in rows
        ]

    def last_paid_sale(self) -> float | None:
        """The time of the newest paid sales row (read from the ``sales_at`` index's end)."""
        row = self._db.execute(
            "SELECT MAX(at) FROM sales WHERE vend_type = ?", (VendType.PAID.value,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def prune(self, older_than: float) -> dict[str, int]:
        """Forget the history older than the retention; how many rows went, per table.

        A transaction goes (with its log and refunds) once it is closed and its last transition
        and last refund are older; an open one never does, and a refund is never forgotten
        while its transaction is kept, so the refundable rest stays exact. A stock operation id
        or vend id older than that cannot come back: a vend's id is its transaction's, and only
        the open transaction can report a vend; a cash sale's is fresh; a command id is
        answered from ``commands`` for 7 days and refused ``expired`` after (and a stock one
        ``bad_field`` while its operation id is kept). The last collection stays (it starts the
        next period), and one whose report is not committed yet stays whatever its age.
        """
        with self._transaction(durable=False) as db:
            pruned = {
                table: db.execute(sql, {"cut": older_than}).rowcount
                for table, sql in (
                    ("sales", "DELETE FROM sales WHERE at < :cut"),
                    (
                        "txns",
                        "DELETE FROM txns WHERE final = 1 AND txn_id IN (SELECT txn_id"
                        " FROM txn_log GROUP BY txn_id HAVING MAX(at) < :cut)"
                        " AND NOT EXISTS (SELECT 1 FROM refunds r"
                        " WHERE r.txn_id = txns.txn_id AND r.at >= :cut)",
                    ),
                    ("stock_ops", "DELETE FROM stock_ops WHERE at < :cut"),
                    ("stock_history", "DELETE FROM stock_history WHERE at < :cut"),
                    (
                        "collections",
                        "DELETE FROM collections WHERE reported = 1 AND at < :cut"
                        " AND at < (SELECT MAX(at) FROM collections)",
                    ),
                    ("bus_events", "DELETE FROM bus_events WHERE at < :cut"),
                )
            }
            for table in ("txn_log", "refunds"):
                pruned[table] = db.execute(
                    f"DELETE FROM {table} WHERE txn_id NOT IN (SELECT txn_id FROM txns)"
                ).rowcount
        return pruned

    # --- cash collections -----------------------------------------------------------------------

    def last_collection(self) -> float | None:
        """When the last cash collection was made (POSIX s), if ever."""
        row = self._db.execute("SELECT MAX(at) FROM collections").fetchone()
        return None if row[0] is None else float(row[0])

    def has_collection(self, collection_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM collections WHERE id = ?", (collection_id,)
        ).fetchone()
        return row is not None

    def pending_collections(self) -> list[Collection]:
        """Collections whose report is not committed yet, oldest first."""
        rows = self._db.execute(
            "SELECT id, at, since, restock FROM collections WHERE reported = 0 ORDER BY at"
        ).fetchall()
        return [Collection(i, a, s, bool(r)) for i, a, s, r in rows]

    # --- refunds and the closed transactions they are judged against ---------------------------

    def refund(self, refund_id: str) -> RefundRow | None:
        rows = self._refund_rows("refund_id = ?", (refund_id,))
        return rows[0] if rows else None

    def refunds_of(self, txn_id: str) -> list[RefundRow]:
        """Every refund recorded against one transaction, oldest first."""
        return self._refund_rows("txn_id = ?", (txn_id,))

    def refunds(self, since: float, until: float) -> list[RefundRow]:
        """The refunds made with ``since <= at < until``, oldest first."""
        return self._refund_rows("at >= ? AND at < ?", (since, until))

    def _refund_rows(self, where: str, args: tuple[object, ...]) -> list[RefundRow]:
        rows = self._db.execute(
            "SELECT refund_id, txn_id, at, amount, selection, result, vend_type, reason"
            f" FROM refunds WHERE {where} ORDER BY at, refund_id",
            args,
        ).fetchall()
        return [RefundRow(i, t, a, n, s, r, VendType(v), why) for i, t, a, n, s, r, v, why in rows]

    # --- vmctl's operations ----------------------------------------------------------------------

    def local_reply(self, op_id: str) -> bytes | None:
        """The reply a ``vmctl`` operation with this id got, if one did."""
        row = self._db.execute("SELECT reply FROM local_replies WHERE id = ?", (op_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def prune_local(self, older_than: float) -> None:
        """Forget the replies of ``vmctl`` operations answered before ``older_than``."""
        with self._transaction(durable=False) as db:
            db.execute("DELETE FROM local_replies WHERE at < ?", (older_than,))

    # --- data requests ----------------------------------------------------------------------------

    def pending_requests(self) -> list[Request]:
        """The data requests not yet completed, oldest first."""
        rows = self._db.execute(
            "SELECT request_id, report, config, local, created, read_id FROM data_requests"
            " WHERE done IS NULL ORDER BY created"
        ).fetchall()
        return [Request(i, bool(r), bool(c), bool(lo), t, d) for i, r, c, lo, t, d in rows]

    def data_request(self, request_id: str) -> RequestRow | None:
        row = self._db.execute(
            "SELECT received, blocks, done, result FROM data_requests WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        received, blocks, done, result = row
        return RequestRow(
            received, blocks, done is not None, None if result is None else bytes(result)
        )

    def prune_requests(self, older_than: float) -> None:
        """Forget data requests completed before ``older_than``."""
        with self._transaction(durable=False) as db:
            db.execute("DELETE FROM data_requests WHERE done < ?", (older_than,))

    def take_over_checkpoints(self) -> None:
        """Commits stop copying the WAL back into the database: SQLite does that inside the
        commit that takes the WAL past 1,000 pages (a write and an fsync of the database on
        that commit's path, a vend's approval say). :meth:`checkpoint` does it instead (vmcd,
        from a worker thread)."""
        self._db.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Copy the WAL's commits back into the database without waiting for a writer
        (PASSIVE), then start the WAL over, over a connection of its own: a worker thread
        runs it while vmcd commits.

        The first commit into a WAL that is all copied back starts it over and fsyncs its new
        header, even a commit that is not durable: left to vmcd's next commit, a vend's
        request or approval paid that fsync after every checkpoint. A commit here of nothing
        (the header's ``user_version`` set to itself) takes it instead. Nothing is done while
        no other connection committed since the last call, so an idle journal is left alone.
        """
        with self._checkpoint_lock:
            db = self._checkpoints
            if db is None:
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA synchronous=NORMAL")  # a checkpoint still fsyncs at NORMAL
                self._checkpoints = db
            version = db.execute("PRAGMA data_version").fetchone()[0]
            if version == self._checkpointed:
                return
            _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if copied < frames:  # a reader held some back: the next call goes on
                return
            if frames > 0:
                _start_wal_over(db)
            self._checkpointed = version

    def close(self) -> None:
        with self._checkpoint_lock:  # a worker thread may be checkpointing: let it finish
            if self._checkpoints is not None:
                self._checkpoints.close()
                self._checkpoints = None
        self._db.close()


def _start_wal_over(db: sqlite3.Connection) -> None:
    """Commit nothing, so that SQLite starts the copied-back WAL over here (see
    :meth:`Journal.checkpoint`)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        (user_version,) = db.execute("PRAGMA user_version").fetchone()
        db.execute(f"PRAGMA user_version={int(user_version)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _write_stock(db: sqlite3.Connection, write: StockWrite) -> None:
    """The new stock state in full, the operation id and its level changes as history."""
    state = write.applied.state
    db.execute("INSERT INTO stock_ops (op_id, at) VALUES (?, ?)", (write.op_id, write.at))
    if state.planogram is not None and state.planogram != write.before.planogram:
        db.execute(
            "INSERT INTO planogram (id, version, document) VALUES (1, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET version = excluded.version,"
            " document = excluded.document",
            (state.planogram.version, json.dumps(state.planogram.to_mapping())),
        )
    db.execute("DELETE FROM stock_levels")
    db.executemany(
        "INSERT INTO stock_levels (key, level, condition) VALUES (?, ?, ?)",
        [
            (key_text(key), level, state.conditions.get(key, Condition.OK).value)
            for key, level in state.levels.items()
        ],
    )
    db.executemany(
        "INSERT INTO stock_history (op_id, at, key, before, after, reason)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (write.op_id, write.at, key_text(e.key), e.before, e.after, e.reason.value)
            for e in write.applied.events
            if isinstance(e, LevelChanged)
        ],
    )
    meta = {
        "sales_since_refill": {str(n): c for n, c in state.sales_since_refill.items()},
        "last_sale_at": state.last_sale_at,
        "last_loading_at": state.last_loading_at,
        "paid_vends": {str(n): c for n, c in state.paid_vends.items()},
        "last_service_at": state.last_service_at,
    }
    db.execute(
        "INSERT INTO state (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (STOCK_META, json.dumps(meta).encode()),
    )
