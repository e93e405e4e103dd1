"""Sales report aggregation: local days and hours (DST too), empty ranges, refused ranges."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from vmc.cloud.messages import PaymentMedium, VendType
from vmc.cloud.outbox import new_id
from vmc.daemon import DAY_S, prune_journal
from vmc.journal import Journal
from vmc.planogram import Planogram
from vmc.refunds import RefundRow
from vmc.sales import MAX_REPORT_DAYS, Payment, PeriodError, SaleRow, period, report
from vmc.stock import Adjust, ChangePlanogram, SlotKey, Stock, Vend
from vmc.transaction import Txn, TxnState

LIMITS_10 = {"capacity": 10, "par_level": 8, "alarm_level": 2}
LIMITS_20 = {"capacity": 20, "par_level": 15, "alarm_level": 3}
BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")
PLANOGRAM = Planogram.from_mapping(
    {
        "version": 4,
        "products": [{"id": "bar"}, {"id": "gum"}],
        "selections": [
            {"number": 1, "product": "bar", "price": 150, **LIMITS_10},
            {"number": 2, "product": "gum", "price": 80, **LIMITS_20},
        ],
    }
)


def _at(zone: ZoneInfo, local: str) -> float:
    return dt.datetime.fromisoformat(local).replace(tzinfo=zone).timestamp()


def _sale(
    at: float,
    selection: int = 1,
    price: int = 150,
    payment: Payment = Payment.CASHLESS,
    vend_type: VendType = VendType.PAID,
) -> SaleRow:
    return SaleRow(at, selection, price, payment, vend_type)


def _stock() -> Stock:
    stock = Stock().apply(ChangePlanogram("p", 0.0, PLANOGRAM)).state
    stock = stock.apply(Adjust("r", 0.0, ((SlotKey(1), 3),))).state
    return stock.apply(Vend("v", 0.0, 1, VendType.PAID)).state


def test_local_day_boundaries_follow_the_time_zone() -> None:
    when = period("2026-06-10", None, BERLIN)
    assert when.since == _at(UTC, "2026-06-09 22:00")  # CEST is UTC+2
    rows = [
        _sale(_at(BERLIN, "2026-06-09 23:59")),  # the day before: out
        _sale(_at(BERLIN, "2026-06-10 00:00"), payment=Payment.CASH),
        _sale(_at(BERLIN, "2026-06-10 23:59"), 2, 80, vend_type=VendType.FREE),
        _sale(_at(BERLIN, "2026-06-11 00:00")),  # the day after: out
    ]
    result = report(rows, when, _stock())
    assert result["total"] == {"count": 2, "amount": 230}
    assert result["payment"] == {
        "cash": {"count": 1, "amount": 150},
        "cashless": {"count": 1, "amount": 80},
    }
    assert result["vend_type"]["free"] == {"count": 1, "amount": 80}
    assert result["vend_type"]["test"] == {"count": 0, "amount": 0}
    assert result["hourly"][0] == {"hour": 0, "count": 1, "amount": 150}
    assert result["hourly"][23] == {"hour": 23, "count": 1, "amount": 80}
    assert result["daily"] == [{"date": "2026-06-10", "count": 2, "amount": 230}]
    bar, gum = result["slots"]
    assert bar == {
        "slotId": 1,
        "product": "bar",
        "price": 150,
        "itemsLeft": 2,
        "salesSinceRefill": 1,
        "capacity": 10,
        "sales": 1,
        "cash": 150,
        "refunds": 0,
        "refunded": 0,
        "net": 150,
    }
    assert (gum["slotId"], gum["sales"], gum["cash"], gum["capacity"]) == (2, 1, 80, 20)


def test_dst_days_have_23_and_25_hours() -> None:
    spring = period("2026-03-29", None, BERLIN)
    autumn = period("2026-10-25", None, BERLIN)
    assert spring.until - spring.since == 23 * 3600
    assert autumn.until - autumn.since == 25 * 3600
    # 00:30 UTC is 02:30 CEST and 01:30 UTC is 02:30 CET: the wall clock shows 02:30 twice.
    rows = [_sale(_at(UTC, "2026-10-25 00:30")), _sale(_at(UTC, "2026-10-25 01:30"))]
    result = report(rows, autumn, _stock())
    assert result["total"]["count"] == 2
    assert result["hourly"][2]["count"] == 2


def _refund(at: float, selection: int, amount: int, result: str = "success") -> RefundRow:
    return RefundRow(new_id(), "t", at, amount, selection, result, VendType.PAID, "")


def test_refunds_count_in_the_period_they_were_made_and_only_refunded_sales_lower_the_net() -> None:
    when = period("2026-06-10", None, BERLIN)
    day, next_day = _at(BERLIN, "2026-06-10 12:00"), _at(BERLIN, "2026-06-11 00:30")
    rows = [_sale(day), _sale(day, 2, 80, payment=Payment.CASH)]
    refunds = [
        _refund(day, 1, 50),
        _refund(next_day, 1, 100),  # the next day's: out of this report
        _refund(day, 2, 80, "failure"),  # a vend that was never a sale
        _refund(day, 9, 30, "unknown"),
        _refund(day, 7, 20),  # a sale of another period, of a slot the planogram lost
    ]
    result = report(rows, when, _stock(), refunds=refunds)
    assert result["refunds"] == {
        "success": {"count": 2, "amount": 70},
        "failure": {"count": 1, "amount": 80},
        "unknown": {"count": 1, "amount": 30},
    }
    assert result["total"] == {"count": 2, "amount": 230}  # gross
    assert result["net"] == 230 - 70
    assert result["daily"] == [{"date": "2026-06-10", "count": 2, "amount": 230}]
    assert sum(h["amount"] for h in result["hourly"]) == 230
    slots = {s["slotId"]: s for s in result["slots"]}
    assert set(slots) == {1, 2, 7}
    assert [slots[1][k] for k in ("sales", "cash", "refunds", "refunded", "net")] == [
        1,
        150,
        1,
        50,
        100,
    ]
    assert [slots[2][k] for k in ("cash", "refunds", "refunded", "net")] == [80, 0, 0, 80]
    assert [slots[7][k] for k in ("sales", "refunds", "refunded", "net")] == [0, 1, 20, -20]
    assert sum(s["net"] for s in slots.values()) == result["net"]

    gum = report(rows, when, _stock(), selection=2, refunds=refunds)
    assert gum["refunds"]["failure"] == {"count": 1, "amount": 80}
    assert gum["refunds"]["success"] == {"count": 0, "amount": 0}
    assert gum["net"] == 80


def test_a_range_has_one_daily_bucket_per_day_and_one_slot_filter() -> None:
    when = period("2026-02-27", "2026-03-02", UTC)
    rows = [_sale(_at(UTC, "2026-02-28 12:00")), _sale(_at(UTC, "2026-03-02 09:00"), 2, 80)]
    result = report(rows, when, _stock(), selection=2)
    assert [d["date"] for d in result["daily"]] == [
        "2026-02-27",
        "2026-02-28",
        "2026-03-01",
        "2026-03-02",
    ]
    assert [s["slotId"] for s in result["slots"]] == [2]
    assert result["total"] == {"count": 1, "amount": 80}


def test_an_empty_range_reports_zeros_and_unknown_selections_have_null_stock() -> None:
    when = period("2026-01-01", None, UTC)
    result = report([], when, Stock())
    assert result["slots"] == []
    assert result["total"] == {"count": 0, "amount": 0}
    assert len(result["hourly"]) == 24
    assert result["planogram_version"] is None
    sold = report([_sale(_at(UTC, "2026-01-01 08:00"), 9, 50)], when, _stock())
    assert sold["slots"][-1] == {
        "slotId": 9,
        "product": None,
        "price": None,
        "itemsLeft": None,
        "salesSinceRefill": None,
        "capacity": None,
        "sales": 1,
        "cash": 50,
        "refunds": 0,
        "refunded": 0,
        "net": 50,
    }


@pytest.mark.parametrize(
    ("first", "last", "field"),
    [
        ("2026-13-01", None, "from"),
        ("yesterday", None, "from"),
        ("2026-01-02", "2026-01-01", "to"),
        ("2026-01-01", "2026/01/02", "to"),
        ("2026-01-01", "2026-06-30", "to"),
    ],
)
def test_bad_ranges_are_refused_naming_the_field(first: str, last: str | None, field: str) -> None:
    with pytest.raises(PeriodError) as info:
        period(first, last, UTC)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_the_longest_range_is_accepted() -> None:
    when = period("2026-01-01", None, UTC)
    last = (when.first + dt.timedelta(days=MAX_REPORT_DAYS - 1)).isoformat()
    assert len(period("2026-01-01", last, UTC).days()) == MAX_REPORT_DAYS


def test_journal_keeps_sales_once_and_prunes_old_ones(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    old, new = _sale(1000.0), _sale(5000.0, 2, 80, payment=Payment.CASH)
    journal.commit([], [], sales=[("t1", old), ("c1", new)], durable=True)
    journal.commit([], [], sales=[("t1", old)], durable=True)  # counted before: ignored
    assert journal.sales(0.0, 1e12) == [old, new]
    assert journal.sales(1000.0, 5000.0) == [old]
    assert journal.prune(older_than=4000.0)["sales"] == 1
    journal.close()
    assert Journal(tmp_path / "journal.sqlite3").sales(0.0, 1e12) == [new]


def test_the_daemon_prune_drops_sales_and_closed_txns_past_the_retention(tmp_path: Path) -> None:
    clock = [0.0]
    journal = Journal(tmp_path / "journal.sqlite3", clock=lambda: clock[0])
    now = 100 * DAY_S
    kept, gone = _sale(now - 10 * DAY_S), _sale(now - 11 * DAY_S)
    journal.commit([], [], sales=[("a", kept), ("b", gone)], durable=True)
    closed = [
        Txn(t, TxnState.VENDED, at, at, amount=1) for t, at in (("k", kept.at), ("g", gone.at))
    ]
    for txn in closed:
        clock[0] = txn.updated_at  # the journal stamps each transition when it commits it
        journal.commit([txn], [], durable=True)
    assert prune_journal(journal, now, retention_days=10)["sales"] == 1
    assert journal.sales(0.0, 1e12) == [kept]
    assert (journal.txn("k"), journal.txn("g")) == (closed[0], None)  # refundable as long


def test_sales_by_payment_medium_and_the_surcharges() -> None:
    when = period("2026-06-10", None, UTC)
    at = _at(UTC, "2026-06-10 12:00")
    rows = [
        SaleRow(at, 1, 150, Payment.CASHLESS, VendType.PAID, PaymentMedium.CONTACTLESS, 30),
        SaleRow(at, 2, 80, Payment.CASHLESS, VendType.PAID, PaymentMedium.CONTACTLESS, 0),
        SaleRow(at, 1, 150, Payment.CASHLESS, VendType.PAID, PaymentMedium.MEMBERSHIP, 10),
        _sale(at, payment=Payment.CASH),
    ]
    result = report(rows, when, _stock())
    assert result["medium"]["contactless"] == {"count": 2, "amount": 230}
    assert result["medium"]["membership"] == {"count": 1, "amount": 150}
    assert result["medium"]["none"] == {"count": 1, "amount": 150}
    assert result["medium"]["app"] == {"count": 0, "amount": 0}
    assert set(result["medium"]) == {*(p.value for p in PaymentMedium), "none"}
    assert result["surcharge"] == {"count": 2, "amount": 40}
    assert result["total"] == {"count": 4, "amount": 530}  # surcharges are not sales


def test_an_older_journal_gets_the_medium_and_surcharge_columns(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(
            "CREATE TABLE sales (op_id TEXT PRIMARY KEY, at REAL NOT NULL,"
            " selection INTEGER NOT NULL, price INTEGER NOT NULL, payment TEXT NOT NULL,"
            " vend_type TEXT NOT NULL) WITHOUT ROWID;"
            " INSERT INTO sales VALUES ('t0', 1000.0, 3, 120, 'cashless', 'paid');"
        )
        db.commit()
    journal = Journal(path)
    new = SaleRow(2000.0, 1, 150, Payment.CASHLESS, VendType.PAID, PaymentMedium.RFID, 25)
    journal.commit([], [], sales=[("t1", new)], durable=True)
    assert journal.sales(0.0, 1e12) == [_sale(1000.0, 3, 120), new]
    journal.close()
    assert Journal(path).sales(0.0, 1e12)[-1] == new  # opened again: nothing more to add
