"""The journal's stock tables: one commit per operation, a failed commit leaves the old stock."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmc.cloud.messages import VendType
from vmc.journal import Journal, NewMessage, StockWrite
from vmc.planogram import Planogram
from vmc.stock import (
    Adjust,
    ChangePlanogram,
    Condition,
    IngredientKey,
    Operation,
    Reason,
    SlotKey,
    Stock,
    Vend,
)

PLANOGRAM = Planogram.from_mapping(
    {
        "version": 3,
        "ingredients": [
            {"id": "beans", "unit": "g", "capacity": 500, "par_level": 400, "alarm_level": 50}
        ],
        "products": [
            {"id": "bar"},
            {"id": "espresso", "recipe": [{"ingredient": "beans", "amount": 7}]},
        ],
        "selections": [
            {
                "number": 1,
                "product": "bar",
                "price": 150,
                "capacity": 10,
                "par_level": 8,
                "alarm_level": 2,
            },
            {"number": 2, "product": "espresso", "price": 120},
        ],
    }
)


def _apply(journal: Journal, stock: Stock, op: Operation) -> Stock:
    applied = stock.apply(op)
    journal.commit([], [], stock=[StockWrite(op.op_id, op.at, stock, applied)], durable=True)
    return applied.state


def test_stock_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    assert journal.load_stock() == Stock()
    stock = _apply(journal, Stock(), ChangePlanogram("p1", 1.0, PLANOGRAM))
    stock = _apply(
        journal, stock, Adjust("r1", 2.0, ((SlotKey(1), 3), (IngredientKey("beans"), 60)))
    )
    stock = _apply(journal, stock, Vend("v1", 3.0, 1))
    journal.close()

    again = Journal(path)
    loaded = again.load_stock()
    assert loaded == stock
    assert loaded.planogram == PLANOGRAM
    assert loaded.levels == {SlotKey(1): 2, IngredientKey("beans"): 60}
    assert loaded.conditions[SlotKey(1)] is Condition.LOW
    assert loaded.sales_since_refill == {1: 1}
    assert (loaded.last_sale_at, loaded.last_loading_at, loaded.last_service_at) == (3.0, 2.0, 2.0)
    assert again.stock_applied("r1")
    assert not again.stock_applied("r2")
    history = [(h.op_id, h.key, h.before, h.after, h.reason) for h in again.stock_history()]
    assert history == [
        ("r1", SlotKey(1), 0, 3, Reason.REFILL.value),
        ("r1", IngredientKey("beans"), 0, 60, Reason.REFILL.value),
        ("v1", SlotKey(1), 3, 2, Reason.VEND.value),
    ]
    again.close()


def test_an_exception_mid_write_leaves_the_old_stock(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    stock = _apply(journal, Stock(), ChangePlanogram("p1", 1.0, PLANOGRAM))
    stock = _apply(journal, stock, Adjust("r1", 2.0, ((SlotKey(1), 5),)))
    op = Adjust("r2", 3.0, ((SlotKey(1), 4),))
    applied = stock.apply(op)

    def explode(_seq: int) -> bytes:
        raise RuntimeError("encoder failed after the stock rows were written")

    with pytest.raises(RuntimeError):
        journal.commit(
            [],
            [NewMessage("m1", "t", explode)],
            stock=[StockWrite(op.op_id, op.at, stock, applied)],
            durable=True,
        )
    assert journal.load_stock() == stock
    assert not journal.stock_applied("r2")
    assert [h.op_id for h in journal.stock_history()] == ["r1"]
    assert journal.pending(10) == []
    journal.close()


def test_stock_paid_vends_survive_a_reopen_without_planogram(tmp_path: Path) -> None:
    """Reconciliation counts paid vends before any planogram; a restart must not forget them."""
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    stock = _apply(journal, Stock(), Vend("v1", 1.0, 4))
    stock = _apply(journal, stock, Vend("v2", 2.0, 4, VendType.TEST))
    journal.close()
    again = Journal(path)
    assert again.load_stock() == Stock(paid_vends={4: 1})
    assert again.load_stock().planogram is None
    again.close()
