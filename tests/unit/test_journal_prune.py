"""The journal's prune on a real SQLite file: history past the retention goes; what is recent,
open or not yet reported stays, and the daemon's prune runs it with the command ids."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from vmc.cloud.messages import VendType
from vmc.collection import Collection
from vmc.daemon import DAY_S, prune_journal
from vmc.journal import Journal, JournalRecord, StockWrite
from vmc.planogram import Planogram
from vmc.sales import Payment, SaleRow
from vmc.stock import Adjust, ChangePlanogram, Stock, StockKey
from vmc.transaction import Txn, TxnState

NOW = 200 * DAY_S
OLD = NOW - 100 * DAY_S
RECENT = NOW - DAY_S
PLANOGRAM = Planogram.from_mapping(
    {
        "version": 1,
        "products": [{"id": "bar"}],
        "selections": [
            {
                "number": 1,
                "product": "bar",
                "price": 150,
                "capacity": 10,
                "par_level": 8,
                "alarm_level": 2,
            }
        ],
    }
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _txn(journal: Journal, clock: Clock, txn_id: str, *states: TxnState) -> None:
    """``txn_id`` through ``states``, one commit each at the clock's time."""
    for state in states:
        txn = Txn(txn_id, state, clock.now, clock.now)
        journal.commit([txn], [], durable=True)


def _rows(journal: Journal, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(journal.path)) as db:
        return db.execute(sql).fetchall()


def _stock_op(journal: Journal, stock: Stock, op_id: str, at: float) -> Stock:
    key: StockKey = next(iter(stock.levels))
    op = Adjust(op_id, at, ((key, 1),))
    applied = stock.apply(op)
    journal.commit([], [], stock=[StockWrite(op_id, at, stock, applied)], durable=True)
    return applied.state


def test_stock_history_and_closed_transactions_past_the_retention_are_pruned(
    tmp_path: Path,
) -> None:
    clock = Clock(OLD)
    journal = Journal(tmp_path / "journal.sqlite3", clock=clock)
    _txn(journal, clock, "old-closed", TxnState.LOCKED, TxnState.REQUESTED, TxnState.DENIED)
    _txn(journal, clock, "old-open", TxnState.LOCKED)
    _txn(journal, clock, "closed-late", TxnState.LOCKED)  # opened long ago ...
    applied = Stock().apply(ChangePlanogram("p1", OLD, PLANOGRAM))
    journal.commit([], [], stock=[StockWrite("p1", OLD, Stock(), applied)], durable=True)
    stock = _stock_op(journal, applied.state, "old-refill", OLD)
    journal.commit(
        [],
        [],
        sales=[("old-sale", SaleRow(OLD, 1, 150, Payment.CASH, VendType.PAID))],
        collections=[Collection("c-old", OLD, None, restock=True, reported=True)],
        durable=True,
    )
    journal.append(JournalRecord("cash_sale", None, 1, 150))
    clock.now = RECENT
    _txn(journal, clock, "closed-late", TxnState.CANCELLED)  # ... closed lately: it stays
    _txn(journal, clock, "new-closed", TxnState.LOCKED, TxnState.EXPIRED)
    stock = _stock_op(journal, stock, "new-refill", RECENT)
    journal.commit(
        [],
        [],
        sales=[("new-sale", SaleRow(RECENT, 1, 150, Payment.CASH, VendType.PAID))],
        collections=[Collection("c-new", RECENT, OLD, restock=False)],
        durable=True,
    )
    journal.append(JournalRecord("cash_sale", None, 1, 150))

    pruned = prune_journal(journal, NOW, retention_days=90)

    assert pruned == {
        "sales": 1,
        "txns": 1,
        "txn_log": 3,
        "refunds": 0,
        "stock_ops": 2,
        "stock_history": 1,
        "collections": 1,  # c-new holds its own start: c-old is not needed any more
        "bus_events": 1,
    }
    assert {r[0] for r in _rows(journal, "SELECT txn_id FROM txns")} == {
        "old-open",
        "closed-late",
        "new-closed",
    }
    assert journal.open_txn() is not None
    assert journal.txn_history("closed-late") == [TxnState.LOCKED, TxnState.CANCELLED]
    assert journal.txn_history("old-closed") == []
    assert [h.op_id for h in journal.stock_history()] == ["new-refill"]
    assert not journal.stock_applied("old-refill")
    assert journal.stock_applied("new-refill")
    assert journal.load_stock() == stock  # the levels are not history: they stay
    assert [s.at for s in journal.sales(0.0, 1e12)] == [RECENT]
    assert len(journal.records()) == 1
    assert [c.collection_id for c in journal.pending_collections()] == ["c-new"]
    assert journal.last_collection() == RECENT


def test_restock_collections_keep_the_last_one_and_any_not_reported(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.commit(
        [],
        [],
        collections=[
            Collection("a", OLD, None, restock=True, reported=True),
            Collection("b", OLD + 1, OLD, restock=True, reported=True),
            Collection("c", OLD + 2, OLD + 1, restock=False),
            Collection("d", OLD + 3, OLD + 2, restock=False, reported=True),
        ],
        durable=True,
    )
    assert journal.prune(NOW - 90 * DAY_S)["collections"] == 2
    assert [c.collection_id for c in journal.pending_collections()] == ["c"]
    assert journal.last_collection() == OLD + 3
    assert journal.prune(NOW - 90 * DAY_S)["collections"] == 0


def test_the_daemon_prune_forgets_command_ids_after_seven_days(tmp_path: Path) -> None:
    clock = Clock(NOW - 8 * DAY_S)
    journal = Journal(tmp_path / "journal.sqlite3", clock=clock)
    journal.commit([], [], command=("old", b"reply"), durable=True)
    clock.now = NOW - 6 * DAY_S
    journal.commit([], [], command=("new", b"reply"), durable=True)
    prune_journal(journal, NOW, retention_days=90)
    assert journal.known_reply("old") is None
    assert journal.known_reply("new") == b"reply"
