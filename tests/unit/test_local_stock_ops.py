"""``vmctl``'s stock operations: applied once per id, through the cloud's own stock code."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from protocols.mdb import events as ev
from tests.samples import PLANOGRAM
from vmc.cloud import messages as m
from vmc.cloud.topics import Topics
from vmc.journal import JOURNAL_NAME, Journal
from vmc.services.local_ops import LocalOps
from vmc.services.stock_book import StockBook
from vmc.services.vending import LocalVending
from vmc.stock import SlotKey

TOPICS = Topics("m1", "vmc")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path / JOURNAL_NAME)
    yield opened
    opened.close()


def _ask(journal: Journal, op_id: str, op: str, **fields: Any) -> tuple[dict[str, Any], bool]:
    """Apply an operation as vmctl does without vmcd (or vmcd does for the socket)."""
    command = {"id": op_id, "op": op, "expires": time.time() + 60, **fields}
    answer = LocalOps(journal, StockBook(journal, None)).apply(command)
    return answer.reply, answer.repeated


def _loaded(journal: Journal) -> None:
    reply, _ = _ask(journal, "p1", "planogram.set", planogram=PLANOGRAM)
    assert reply["ok"], reply


def _levels(journal: Journal) -> dict[int, int]:
    return {k.number: v for k, v in journal.load_stock().levels.items() if isinstance(k, SlotKey)}


def test_local_refill_is_applied_once_per_id(journal: Journal) -> None:
    _loaded(journal)
    lines = [{"selection": 1, "amount": 4}, {"selection": 2, "amount": 2}]
    first, repeated = _ask(journal, "r1", "stock.refill", lines=lines)
    assert (first["ok"], repeated) == (True, False)
    assert first["result"]["changes"] == [
        {"selection": 1, "ingredient": None, "before": 0, "after": 4, "reason": "refill"},
        {"selection": 2, "ingredient": None, "before": 0, "after": 2, "reason": "refill"},
    ]
    history = len(journal.stock_history())
    again, repeated = _ask(journal, "r1", "stock.refill", lines=lines)
    assert repeated
    assert {k: again[k] for k in ("ok", "code", "result")} == {
        k: first[k] for k in ("ok", "code", "result")
    }
    assert len(journal.stock_history()) == history
    assert _levels(journal) == {1: 4, 2: 2}
    assert {row.op_id for row in journal.stock_history()} == {"local:r1"}
    assert journal.outbox_size() == 0  # no cloud configured: nothing queued for one


def test_local_stock_events_go_to_the_cloud_but_the_reply_does_not(journal: Journal) -> None:
    command = {"id": "p1", "op": "planogram.set", "expires": time.time() + 60}
    answer = LocalOps(journal, StockBook(journal, TOPICS)).apply(
        {**command, "planogram": PLANOGRAM}
    )
    assert answer.reply["ok"]
    rows = journal.pending(100)
    assert rows
    assert {row.topic for row in rows} == {TOPICS.events}
    kinds = [cbor2.loads(row.payload)["type"] for row in rows]
    assert "planogram.changed" in kinds
    assert journal.known_reply("p1") is None  # not a cloud command: no cloud reply stored
    assert journal.local_reply("p1") is not None


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ({"id": "x", "op": "lock", "expires": 2e9}, "unknown_op"),
        ({"id": "x", "op": "stock.restock", "expires": 1.0}, "expired"),
        ({"id": "x", "op": "stock.refill", "expires": 2e9, "lines": "all"}, "bad_field"),
        ({"op": "stock.restock", "expires": 2e9}, "missing_field"),
    ],
)
def test_what_is_no_current_stock_operation_is_refused(
    journal: Journal, command: dict[str, Any], code: str
) -> None:
    _loaded(journal)
    answer = LocalOps(journal, StockBook(journal, None)).apply(command)
    assert (answer.reply["ok"], answer.reply["code"], answer.repeated) == (False, code, False)
    assert _levels(journal) == {1: 0, 2: 0}


def test_inbox_of_an_older_journal_keeps_its_answered_replies(tmp_path: Path) -> None:
    """Before the control socket, vmctl's operations waited in ``local_inbox``: the answered
    ones stay answered (a retry with their id is safe), the table goes."""
    path = tmp_path / JOURNAL_NAME
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE local_inbox (id TEXT PRIMARY KEY, command BLOB NOT NULL, reply BLOB,"
            " created REAL NOT NULL, answered REAL)"
        )
        db.executemany(
            "INSERT INTO local_inbox VALUES (?, x'00', ?, 1.0, ?)",
            [("done", cbor2.dumps({"ok": True, "result": {"changed": 1}}), 2.0),
             ("waiting", None, None)],
        )  # fmt: skip
    journal = Journal(path)
    try:
        assert cbor2.loads(journal.local_reply("done") or b"") == {
            "ok": True,
            "result": {"changed": 1},
        }
        assert journal.local_reply("waiting") is None
        tables = {r[0] for r in journal._db.execute("SELECT name FROM sqlite_master")}
        assert "local_inbox" not in tables
    finally:
        journal.close()
    Journal(path).close()  # opened again: nothing left to migrate


def test_local_policy_vend_and_cash_sale_take_stock_with_their_record(journal: Journal) -> None:
    _loaded(journal)
    lines = [{"selection": 1, "amount": 3}, {"selection": 2, "amount": 3}]
    _ask(journal, "r1", "stock.refill", lines=lines)
    stock = StockBook(journal, None)
    vending = LocalVending(True, journal, lambda _cmd: True, stock)
    vending.handle(ev.VendSucceeded(vend_id=1, item=1, amount=150))
    vending.handle(ev.CashSaleReported(item=2, price=200))
    vending.handle(ev.VendFailed(vend_id=2, item=1, amount=150))
    assert [r.kind for r in journal.records()] == ["vend_success", "cash_sale", "vend_failure"]
    assert _levels(journal) == {1: 2, 2: 2}
    assert stock.stock.levels == journal.load_stock().levels
    assert stock.stock.sales_since_refill == {2: 1}  # the free vend is no sale
    assert journal.outbox_size() == 0


def test_stock_command_id_reused_after_the_command_table_forgot_it_is_refused(
    journal: Journal,
) -> None:
    """Command ids are answered from the command table for 7 days; the stock's op ids stay
    for the retention. A cloud command id reused in between is refused, never applied twice
    (and never a crash on the op id's primary key)."""
    stock = StockBook(journal, TOPICS)
    later = time.time() + 3600
    stock.handle_command(m.SetPlanogram("p1", later, PLANOGRAM))
    refill = m.Refill("r1", later, (m.StockLine(1, None, 3),))
    stock.handle_command(refill)
    journal.prune_commands(time.time() + 1)  # the command table forgot both ids
    stock.handle_command(refill)
    reply = cbor2.loads(journal.known_reply("r1") or b"")
    assert (reply["ok"], reply["code"]) == (False, "bad_field")
    assert "was applied before" in reply["message"]
    assert _levels(journal) == {1: 3, 2: 0}
