"""The local inbox: ``vmctl`` stock operations applied once, by whoever holds the state lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from protocols.mdb import events as ev
from vmc.cloud import codec
from vmc.cloud import messages as m
from vmc.cloud.topics import Topics
from vmc.journal import JOURNAL_NAME, Journal, WithdrawnError
from vmc.services.local_ops import LocalOps, NoAnswerError, request
from vmc.services.stock_book import StockBook
from vmc.services.vending import LocalVending
from vmc.state_lock import try_lock
from vmc.stock import SlotKey

PLANOGRAM: dict[str, Any] = {
    "version": 1,
    "products": [{"id": "bar"}, {"id": "chips"}],
    "selections": [
        {
            "number": 1,
            "product": "bar",
            "price": 150,
            "capacity": 10,
            "par_level": 8,
            "alarm_level": 2,
        },
        {
            "number": 2,
            "product": "chips",
            "price": 200,
            "capacity": 6,
            "par_level": 5,
            "alarm_level": 1,
        },
    ],
}
TOPICS = Topics("m1", "vmc")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    opened = Journal(tmp_path / JOURNAL_NAME)
    yield opened
    opened.close()


def _ask(
    tmp_path: Path, journal: Journal, op_id: str, op: str, wait_s: float = 5.0, **fields: Any
) -> tuple[dict[str, Any], bool]:
    answer = request(
        tmp_path, journal, {"id": op_id, "op": op, **fields}, topics=lambda: None, wait_s=wait_s
    )
    return answer.reply, answer.repeated


def _loaded(tmp_path: Path, journal: Journal) -> None:
    reply, _ = _ask(tmp_path, journal, "p1", "planogram.set", planogram=PLANOGRAM)
    assert reply["ok"], reply


def _levels(journal: Journal) -> dict[int, int]:
    return {k.number: v for k, v in journal.load_stock().levels.items() if isinstance(k, SlotKey)}


def test_local_refill_without_vmcd_is_applied_by_vmctl_once(
    tmp_path: Path, journal: Journal
) -> None:
    _loaded(tmp_path, journal)
    lines = [{"selection": 1, "amount": 4}, {"selection": 2, "amount": 2}]
    first, repeated = _ask(tmp_path, journal, "r1", "stock.refill", lines=lines)
    assert (first["ok"], repeated) == (True, False)
    assert first["result"]["changes"] == [
        {"selection": 1, "ingredient": None, "before": 0, "after": 4, "reason": "refill"},
        {"selection": 2, "ingredient": None, "before": 0, "after": 2, "reason": "refill"},
    ]
    history = len(journal.stock_history())
    again, repeated = _ask(tmp_path, journal, "r1", "stock.refill", lines=lines)
    assert (again, repeated) == (first, True)
    assert len(journal.stock_history()) == history
    assert _levels(journal) == {1: 4, 2: 2}
    assert {row.op_id for row in journal.stock_history()} == {"local:r1"}
    assert journal.outbox_size() == 0  # no cloud configured: nothing queued for one


def test_local_stock_events_go_to_the_cloud_but_the_reply_does_not(
    tmp_path: Path, journal: Journal
) -> None:
    command = {"id": "p1", "op": "planogram.set", "planogram": PLANOGRAM}
    reply = request(tmp_path, journal, command, topics=lambda: TOPICS, wait_s=5).reply
    assert reply["ok"]
    rows = journal.pending(100)
    assert rows
    assert {row.topic for row in rows} == {TOPICS.events}
    kinds = [cbor2.loads(row.payload)["type"] for row in rows]
    assert "planogram.changed" in kinds
    assert journal.known_reply("p1") is None  # not a cloud command: no cloud reply stored


def test_local_inventory_is_answered_by_the_lock_holder(tmp_path: Path, journal: Journal) -> None:
    _loaded(tmp_path, journal)
    held = try_lock(tmp_path)
    assert held is not None
    stop = threading.Event()
    served: list[StockBook] = []

    def vmcd() -> None:  # the lock holder, with its own connection, as a running vmcd
        own = Journal(tmp_path / JOURNAL_NAME)
        stock = StockBook(own, None)
        served.append(stock)
        ops = LocalOps(own, stock)
        while not stop.wait(0.02):
            ops.serve()
        own.close()

    thread = threading.Thread(target=vmcd)
    thread.start()
    try:
        reply, _ = _ask(
            tmp_path, journal, "i1", "stock.inventory", lines=[{"selection": 1, "level": 3}]
        )
    finally:
        stop.set()
        thread.join()
        held.release()
    assert reply["ok"], reply
    assert served[0].stock.levels[SlotKey(1)] == 3  # vmcd's memory moved with its commit
    assert _levels(journal) == {1: 3, 2: 0}


def test_unanswered_local_restock_is_withdrawn_and_never_applied(
    tmp_path: Path, journal: Journal
) -> None:
    _loaded(tmp_path, journal)
    held = try_lock(tmp_path)  # a vmcd that does not look at its inbox
    assert held is not None
    with held, pytest.raises(NoAnswerError, match="nothing changed"):
        _ask(tmp_path, journal, "s1", "stock.restock", wait_s=0.2)
    assert journal.local_waiting(10) == []
    LocalOps(journal, StockBook(journal, None)).serve()  # vmcd wakes up later: nothing to do
    assert journal.local_reply("s1") is None
    assert _levels(journal) == {1: 0, 2: 0}


def test_local_refill_withdrawn_before_its_commit_changes_nothing(
    tmp_path: Path, journal: Journal
) -> None:
    _loaded(tmp_path, journal)
    stock = StockBook(journal, None)
    lines = [{"selection": 1, "amount": 5}]
    command = {"id": "r2", "op": "stock.refill", "expires": time.time() + 60, "lines": lines}
    payload = codec.encode_map(command)
    assert journal.local_submit("r2", payload)
    cmd = codec.decode_command(payload)
    assert isinstance(cmd, m.Refill)
    assert journal.local_withdraw("r2")  # vmctl gave up after vmcd read the row
    with pytest.raises(WithdrawnError):
        stock.handle_command(cmd, local=True)
    assert stock.stock.levels[SlotKey(1)] == 0
    assert _levels(journal) == {1: 0, 2: 0}
    assert not journal.stock_applied("local:r2")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (codec.encode_map({"id": "x", "op": "lock", "expires": 2e9}), "unknown_op"),
        (codec.encode_map({"id": "x", "op": "stock.restock", "expires": 1.0}), "expired"),
        (b"\xff", "malformed"),
    ],
)
def test_inbox_refuses_what_is_no_current_stock_operation(
    tmp_path: Path, journal: Journal, payload: bytes, code: str
) -> None:
    _loaded(tmp_path, journal)
    assert journal.local_submit("x", payload)
    LocalOps(journal, StockBook(journal, None)).serve()
    reply = journal.local_reply("x")
    assert reply is not None
    assert (cbor2.loads(reply)["ok"], cbor2.loads(reply)["code"]) == (False, code)
    assert _levels(journal) == {1: 0, 2: 0}


def test_local_policy_vend_and_cash_sale_take_stock_with_their_record(
    tmp_path: Path, journal: Journal
) -> None:
    _loaded(tmp_path, journal)
    lines = [{"selection": 1, "amount": 3}, {"selection": 2, "amount": 3}]
    _ask(tmp_path, journal, "r1", "stock.refill", lines=lines)
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
