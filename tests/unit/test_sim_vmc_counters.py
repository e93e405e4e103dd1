"""The simulated VMC's audit: per-selection counts as it vended, so reconciliation is real."""

from __future__ import annotations

from protocols.evadts import parse, tube_contents
from protocols.evadts.records import CashIn, CashOut, Sales
from protocols.mdb.commands import PaymentType
from sim.vmc_counters import SalesCounters, audit_from_counters


def test_stock_sim_audit_counts_paid_vends_per_selection_and_test_free_apart() -> None:
    sales = SalesCounters()
    sales.vended(3, 150, cash=False)
    sales.vended(3, 150, cash=True)
    sales.vended(12, 90, cash=False)
    sales.vended(12, 90, cash=False, payment=PaymentType.TEST)
    sales.vended(12, 90, cash=False, payment=PaymentType.FREE)
    sales.vended(12, 90, cash=False, payment=PaymentType.FREE)
    audit = parse(audit_from_counters(sales))
    products = {p.selection: p for p in audit.products}
    assert set(products) == {"3", "12"}
    assert products["3"].paid == Sales(2, 300, 2, 300)
    assert (products["3"].test, products["3"].free) == (None, None)
    assert products["12"].paid == Sales(1, 90, 1, 90)
    assert products["12"].test == Sales(1, 0, 1, 0)
    assert products["12"].free == Sales(2, 0, 2, 0)
    assert audit.paid == Sales(3, 390, 3, 390)
    assert sales.paid.vends == 3


def test_sim_audit_carries_its_coin_tube_contents_as_ca15() -> None:
    sales = SalesCounters()
    assert tube_contents(parse(audit_from_counters(sales)).cash) == 2500
    sales.tube_contents = 340
    assert tube_contents(parse(audit_from_counters(sales)).cash) == 340
    sales.tube_contents = None
    assert parse(audit_from_counters(sales)).cash.other == ()


def test_stock_sim_audit_counts_cash_sales_in_the_coin_mechanism() -> None:
    """Cash sales paid with exact coins into the tubes: CA2, CA3 and CA4 say so."""
    sales = SalesCounters()
    sales.vended(3, 150, cash=True)
    sales.vended(4, 200, cash=True)
    sales.vended(4, 200, cash=False)
    cash = parse(audit_from_counters(sales)).cash
    assert cash.sales == Sales(2, 350, 2, 350)
    assert cash.cash_in == CashIn(350, 0, 350, 0, 350, 0, 350, 0)
    assert cash.cash_out == CashOut(0, 0, 0, 0)
