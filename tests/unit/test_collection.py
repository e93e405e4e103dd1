"""Cash collection arithmetic: the coin mechanism's change between two collections' audits,
the audit part of the report, and the journal's sales split into collection periods."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from protocols.evadts.deltas import Basis, Change, cash_delta
from protocols.evadts.records import (
    Audit,
    Cash,
    CashIn,
    CashOut,
    CrcStatus,
    Machine,
    ReadStats,
    Sales,
)
from protocols.evadts.writer import make_audit
from vmc.cloud import messages as m
from vmc.cloud.topics import Topics
from vmc.collection import AuditError, audit_part, audit_problem
from vmc.journal import Journal
from vmc.sales import Payment, SaleRow, totals
from vmc.services.collector import Collector
from vmc.transaction import Money


def _machine(
    sales: Sales | None,
    cash_in: CashIn | None,
    cash_out: CashOut | None,
    *,
    serial: str = "S1",
    resets: int | None = None,
) -> Audit:
    audit = make_audit(serial=serial)
    return replace(
        audit,
        cash=Cash(sales=sales, cash_in=cash_in, cash_out=cash_out),
        reads=None if resets is None else ReadStats(resets),
        complete=True,
    )


OLD = _machine(
    Sales(10, 1500, 2, 300),
    CashIn(300, 100, 200, 0, 5000, 2000, 2500, 500),
    CashOut(50, 0, 700, 10),
)
NEW = _machine(
    Sales(14, 2100, 4, 600),
    CashIn(800, 300, 400, 100, 5800, 2300, 2900, 600),
    CashOut(80, 5, 760, 15),
)


def test_restock_collection_cash_delta_takes_init_counters_first() -> None:
    found = cash_delta(OLD, NEW)
    assert not found.baseline_reset
    assert found.sales == Change(4, 600, Basis.INIT)
    assert found.inserted == Change(None, 800, Basis.INIT)
    assert found.to_cashbox == Change(None, 300, Basis.INIT)
    assert found.to_tubes == Change(None, 400, Basis.INIT)
    assert found.bills == Change(None, 100, Basis.INIT)
    assert found.dispensed == Change(None, 60, Basis.INIT)
    assert found.manual == Change(None, 5, Basis.INIT)
    assert found.warnings == ()


def test_restock_collection_cash_delta_of_a_new_controller_is_its_reset_counters() -> None:
    found = cash_delta(OLD, replace(NEW, machine=Machine(serial="S2")))
    assert found.baseline_reset
    assert found.sales == Change(4, 600, Basis.RESET)
    assert found.to_tubes == Change(None, 400, Basis.RESET)
    assert found.warnings[0].startswith("new baseline: machine serial changed")


def _reset_only(value: int, resets: int) -> Audit:
    return _machine(Sales(None, None, value // 100, value), CashIn(value), None, resets=resets)


def test_restock_collection_cash_delta_warns_when_other_reads_reset_the_counters() -> None:
    one = cash_delta(_reset_only(300, 4), _reset_only(500, 5))
    assert one.inserted == Change(None, 500, Basis.RESET)
    assert one.warnings == ()
    three = cash_delta(_reset_only(300, 4), _reset_only(500, 7))
    assert three.inserted == Change(None, 500, Basis.RESET)
    assert three.warnings == (
        "3 reads with reset between the two: since-reset figures cover the last only",
    )
    assert cash_delta(OLD, replace(NEW, reads=ReadStats(9))).warnings == ()  # init: exact


def test_restock_collection_cash_delta_without_a_coin_mechanism_is_none() -> None:
    found = cash_delta(_machine(None, None, None), _machine(None, None, None))
    assert found.sales == found.inserted == found.dispensed == Change()
    assert found.to_json()["inserted"] == {"vends": None, "value": None, "basis": "none"}


def test_restock_collection_audit_part_counters_and_delta() -> None:
    first = audit_part("r1", 100.0, OLD, None)
    assert first["baseline_read_id"] is None
    assert first["delta"] is None
    assert first["cash_sales"] == {
        "vends_init": 10,
        "value_init": 1500,
        "vends_reset": 2,
        "value_reset": 300,
    }
    assert first["cash_in"]["to_tubes_init"] == 2500
    assert first["cash_out"] == {
        "dispensed_reset": 50,
        "manual_reset": 0,
        "dispensed_init": 700,
        "manual_init": 10,
    }
    second = audit_part("r2", 200.0, NEW, ("r1", OLD))
    assert (second["read_id"], second["read_at"], second["decimals"]) == ("r2", 200.0, 2)
    assert second["baseline_read_id"] == "r1"
    assert second["delta"]["to_cashbox"] == {"vends": None, "value": 300, "basis": "init"}
    assert second["delta"]["sales"] == {"vends": 4, "value": 600, "basis": "init"}
    assert audit_part("r3", 1.0, _machine(None, None, None), None)["cash_in"] is None


def test_restock_collection_refuses_an_incomplete_or_corrupt_audit() -> None:
    assert audit_problem("r1", NEW) is None
    assert audit_problem("r1", replace(NEW, complete=False)) == AuditError(
        "r1", "check", "the audit is incomplete (no SE or DXE)"
    )
    corrupt = audit_problem("r1", replace(NEW, crc=CrcStatus.MISMATCH))
    assert corrupt is not None
    assert (corrupt.read_id, corrupt.step) == ("r1", "check")


def test_restock_collection_sales_totals_by_payment_and_vend_type() -> None:
    rows = [
        SaleRow(1.0, 1, 150, Payment.CASH, m.VendType.PAID),
        SaleRow(2.0, 2, 200, Payment.CASHLESS, m.VendType.PAID),
        SaleRow(3.0, 2, 0, Payment.CASHLESS, m.VendType.FREE),
        SaleRow(4.0, 1, 150, Payment.CASHLESS, m.VendType.TEST),
    ]
    assert totals(rows) == {
        "total": {"count": 4, "amount": 500},
        "payment": {"cash": {"count": 1, "amount": 150}, "cashless": {"count": 3, "amount": 350}},
        "vend_type": {
            "paid": {"count": 2, "amount": 350},
            "free": {"count": 1, "amount": 0},
            "test": {"count": 1, "amount": 150},
        },
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("sale"), st.integers(0, 500), st.sampled_from(list(Payment))),
        st.tuples(st.just("collect"), st.just(0), st.just(Payment.CASH)),
    ),
    max_size=30,
)


@given(steps=STEPS, gaps=st.lists(st.sampled_from([0.0, 0.5, 60.0]), min_size=30, max_size=30))
def test_restock_collection_periods_count_every_sale_exactly_once(
    steps: list[tuple[str, int, Payment]], gaps: list[float]
) -> None:
    """Sales and collections in any order, at equal or growing times: the reports' sales add
    up to every sale before the last collection, and each starts where the one before ended."""
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock()
        journal = Journal(Path(tmp) / "journal.sqlite3", clock=clock)
        topics = Topics("m1")
        collector = Collector(journal, topics, Money(978, 2), None, clock=clock)
        collected: list[tuple[float, int]] = []
        for number, ((kind, price, payment), gap) in enumerate(zip(steps, gaps, strict=False)):
            clock.now += gap
            if kind == "sale":
                row = SaleRow(clock.now, 1, price, payment, m.VendType.PAID)
                journal.commit([], [], sales=[(f"s{number}", row)], durable=True)
                collected.append((clock.now, price))
            else:
                collector.handle_command(m.CashCollect(f"c{number}", clock.now + 30))
        asyncio.run(collector.report_pending())
        reports = _reports(journal)
        journal.close()
    assert [r["since"] for r in reports[1:]] == [r["until"] for r in reports[:-1]]
    if reports:
        assert reports[0]["since"] is None
        assert all(r["audit"] is None for r in reports)
        assert {r["audit_error"]["step"] for r in reports} == {"config"}
        until = reports[-1]["until"]
        before = [price for at, price in collected if at < until]
        assert sum(r["sales"]["total"]["count"] for r in reports) == len(before)
        assert sum(r["sales"]["total"]["amount"] for r in reports) == sum(before)


def _reports(journal: Journal) -> list[dict[str, Any]]:
    bodies = [cbor2.loads(row.payload) for row in journal.pending(10**6)]
    return [b for b in bodies if b.get("type") == "collection.report"]


def test_restock_collection_id_reused_after_the_command_memory_is_refused(
    tmp_path: Path,
) -> None:
    """The command table forgets an id after 7 days; the collection's own row still refuses it,
    so an old collection is never reported twice."""
    journal = Journal(tmp_path / "journal.sqlite3")
    collector = Collector(journal, Topics("m1"), Money(978, 2), None)
    collector.handle_command(m.CashCollect("visit", 1e12))
    journal.prune_commands(older_than=1e12)  # as if 7 days had passed
    collector.handle_command(m.CashCollect("visit", 1e12))
    asyncio.run(collector.report_pending())
    replies = [cbor2.loads(r.payload) for r in journal.pending(100) if r.topic.endswith("reply")]
    assert [(r["ok"], r["code"]) for r in replies] == [(True, None), (False, "bad_field")]
    assert replies[1]["message"] == "id: collection 'visit' was made before"
    assert [r["collection_id"] for r in _reports(journal)] == ["visit"]
    journal.close()
