"""The demos' closing checks: any disagreement says MISMATCH (or FAILED) and exits non-zero."""

from __future__ import annotations

from typing import Any

import pytest

from sim import checks
from sim.backend import Books, Entry, StockBooks
from sim.checks import Tally
from sim.demo import cloud_checks, local_checks, planogram
from sim.scenarios import Report, SessionResult
from sim.vmc_counters import SalesCounters
from sim.vmc_master import TimingStats
from vmc.cloud.messages import VendType
from vmc.journal import JournalRecord


def _sales() -> SalesCounters:
    """What the VMC did: two app vends (1.20, 2.50) and one cash sale (0.50)."""
    sales = SalesCounters()
    sales.vended(3, 120, cash=False)
    sales.vended(4, 250, cash=False)
    sales.vended(9, 50, cash=True)
    return sales


def _books(charged: tuple[int, ...] = (120, 250)) -> Books:
    books = Books()
    for n, amount in enumerate(charged):
        books.entries[f"t{n}"] = Entry(
            f"t{n}", "demo-1", "alice", amount, amount, amount, ["vended"], "success"
        )
    books.sales.append({"type": "sale", "price": 50, "selection": 9})
    books.stock.planogram(planogram())
    books.stock.expected = {1: 3, 2: 4, 3: 6}
    books.stock.reported = {1: 3, 2: 4, 3: 6}
    return books


AGREEING_AUDIT = Tally(3, 420)  # the VMC's paid sales: two app vends and the cash sale


def _bucket(count: int) -> dict[str, int]:
    return {"count": count, "amount": 0}


def _report(*, cash: int = 1, free: int = 0) -> dict[str, Any]:
    """vmcd's ``sales.query`` result, only what the check reads: two paid app vends."""
    return {
        "payment": {"cash": _bucket(cash), "cashless": _bucket(2 + free)},
        "vend_type": {"paid": _bucket(2 + cash), "free": _bucket(free), "test": _bucket(0)},
        "refunds": {"success": _bucket(0)},
    }


def _cloud(
    books: Books | None = None,
    audit: Tally | None = AGREEING_AUDIT,
    stats: TimingStats | None = None,
    report: dict[str, Any] | None = None,
) -> list[checks.Check]:
    return cloud_checks(
        books or _books(),
        _sales(),
        audit,
        stats or TimingStats(response_s=[0.0002] * 10),
        broken=[],
        sessions=3,
        vmcd_code=0,
        decimals=2,
        report=_report() if report is None else report,
    )


def _verdicts(found: list[checks.Check]) -> dict[str, str]:
    return {check.name: check.verdict for check in found}


def test_a_run_where_everything_agrees_exits_0() -> None:
    found = _cloud()
    assert set(_verdicts(found).values()) <= {"ok", "match"}
    assert checks.verdict(found) == ("all 10 checks passed", 0)
    dex = next(check for check in found if check.name == "DEX vs the VMC")
    assert dex.line().endswith("DEX vs the VMC: match  3 vends worth 4.20 on both sides")


def test_books_that_charged_less_than_the_vmc_vended_are_a_mismatch() -> None:
    found = _cloud(books=_books(charged=(120,)))
    assert _verdicts(found)["app sales, books vs VMC"] == "MISMATCH"
    line = next(c for c in found if c.name == "app sales, books vs VMC").line()
    assert "the backend charged: 1 vends worth 1.20, the VMC vended: 2 vends worth 3.70" in line
    assert checks.verdict(found)[1] == 1


@pytest.mark.parametrize("audit", [Tally(2, 370), Tally(3, 400), None])
def test_a_dex_delta_that_differs_from_the_vmc_or_never_came_is_a_mismatch(
    audit: Tally | None,
) -> None:
    found = _cloud(audit=audit)
    assert _verdicts(found)["DEX vs the VMC"] == "MISMATCH"
    line, code = checks.verdict(found)
    assert code == 1
    assert line == "1 of 10 checks failed: DEX vs the VMC"


def test_stock_the_backend_expects_against_what_vmcd_reported() -> None:
    found = _cloud()
    stock = next(c for c in found if c.name == "stock, books vs vmcd")
    assert stock.line().endswith("match  3 selections, 13 units on both sides")

    books = _books()
    books.stock.reported[2] = 5  # vmcd missed a vend the backend booked
    found = _cloud(books=books)
    stock = next(c for c in found if c.name == "stock, books vs vmcd")
    assert stock.verdict == "MISMATCH"
    assert stock.detail == "item 2: the backend expects 4, vmcd reported 5"
    assert checks.verdict(found) == ("1 of 10 checks failed: stock, books vs vmcd", 1)


def test_no_planogram_is_a_stock_mismatch() -> None:
    books = _books()
    books.stock = StockBooks()
    found = _cloud(books=books)
    assert _verdicts(found)["stock, books vs vmcd"] == "MISMATCH"
    assert checks.verdict(found)[1] == 1


def test_the_backends_expected_stock_follows_the_contracts_arithmetic() -> None:
    """Loads add, sales take 1 and never go below 0, a new planogram keeps a selection's count
    only when it sells the same product; what the machine reports is kept apart."""
    stock = StockBooks()
    stock.planogram(planogram())
    assert stock.expected == {1: 0, 2: 0, 3: 0}
    stock.expected[1] = 1
    for _ in range(2):
        stock.sold(1)
    stock.sold(99)  # not in the planogram: the machine reports a discrepancy, no count
    assert stock.expected == {1: 0, 2: 0, 3: 0}
    stock.expected = {1: 2, 2: 5, 3: 6}
    changed = planogram(version=2)
    changed["selections"][1]["product"] = "water"
    stock.planogram(changed)
    assert stock.expected == {1: 2, 2: 0, 3: 6}
    assert stock.machine_levels() == {1: 0, 2: 0, 3: 0}


def test_timing_violations_fail_the_run() -> None:
    stats = TimingStats(response_s=[0.0002, 0.0061], violations=["POLL: answered after 6.10 ms"])
    found = _cloud(stats=stats)
    timing = next(c for c in found if c.name == "bus timing")
    assert timing.verdict == "FAILED"
    assert "1 of 2 answers" in timing.detail
    assert "POLL: answered after 6.10 ms" in timing.detail
    assert checks.verdict(found)[1] == 1


def test_the_local_journal_against_the_vmc() -> None:
    records = [
        JournalRecord("vend_success", 1, 3, 120, VendType.FREE),
        JournalRecord("vend_success", 2, 4, 250, VendType.FREE),
        JournalRecord("cash_sale", None, 9, 50, None),
    ]
    report = Report([SessionResult(1, "purchase", "vended", ok=True)])
    stats = TimingStats(response_s=[0.0002])
    agreeing = local_checks(records, _sales(), stats, report, vmcd_code=0, decimals=2)
    assert checks.verdict(agreeing)[1] == 0
    lost = local_checks(records[1:], _sales(), stats, report, vmcd_code=0, decimals=2)
    assert _verdicts(lost)["free vends, journal vs VMC"] == "MISMATCH"
    assert checks.verdict(lost)[1] == 1
    failed = local_checks(records, _sales(), stats, report, vmcd_code=1, decimals=2)
    assert _verdicts(failed)["vmcd stopped"] == "FAILED"


def test_report_prints_each_check_and_returns_the_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert checks.report(_cloud(audit=None)) == 1
    out = capsys.readouterr().out
    assert out.startswith("--- checks ---\n")
    assert "DEX vs the VMC: MISMATCH  the closing data request brought no audit delta" in out
    assert out.endswith("1 of 10 checks failed: DEX vs the VMC\n")


@pytest.mark.parametrize(
    ("minor", "decimals", "text"),
    [(1540, 2, "15.40"), (5, 2, "0.05"), (0, 2, "0.00"), (-250, 2, "-2.50"), (7, 0, "7"),
     (1234, 3, "1.234")],
)  # fmt: skip
def test_money_in_the_currencys_major_unit(minor: int, decimals: int, text: str) -> None:
    assert checks.money(minor, decimals) == text


def test_late_answers_seen_without_realtime_scheduling_say_so() -> None:
    """The VMC's own scheduling may be the delay: the check fails, and says that."""
    late = ["POLL: answered after 7.00 ms"]
    slow = TimingStats([0.007], late, realtime=False).check()
    assert not slow.ok
    assert "without realtime scheduling" in slow.detail
    assert "without realtime" not in TimingStats([0.007], late, realtime=True).check().detail
    assert TimingStats([0.0002], realtime=False).check().ok


def test_a_sales_report_that_disagrees_with_the_books_is_a_mismatch() -> None:
    found = _cloud(report=_report(free=1))
    line = next(c for c in found if c.name == "sales report vs books").line()
    assert "MISMATCH" in line
    assert "the backend booked cash 1, cashless 2, paid 3, free 0, test 0, refunded 0" in line
    assert "vmcd reported cash 1, cashless 3, paid 3, free 1, test 0, refunded 0" in line
    assert checks.verdict(found)[1] == 1


def test_free_and_test_app_vends_are_not_paid_app_sales() -> None:
    books = _books()
    books.entries["free"] = Entry("free", "demo-1", "bob", 100, 0, 0, ["vended"], "success")
    books.entries["free"].vend_type = "free"
    found = _cloud(books=books, report=_report(free=1))
    verdicts = _verdicts(found)
    assert verdicts["app sales, books vs VMC"] == "match"
    assert verdicts["sales report vs books"] == "match"
