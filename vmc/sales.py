"""Sales reports from the journal's rows: per slot, payment, vend type and payment medium, by
hour and day.

Pure: rows in, a report mapping out. Rows are stored with UTC POSIX times; days and hours are
the machine's local ones (``[daemon] timezone``), so a DST day has 23 or 25 hours and its
buckets follow the wall clock.

Sales figures are gross: what left the machine, at the price approved. Refunds are counted in
the period they were made, by the vend's result; only a refund of a vend that succeeded (a sale)
makes the net lower, since a failed or unknown vend was never counted as a sale.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo

from vmc.cloud.messages import PaymentMedium, VendType
from vmc.refunds import RefundRow
from vmc.stock import SlotKey, Stock
from vmc.transaction import VEND_RESULT, TxnState

SOLD = VEND_RESULT[TxnState.VENDED]
"""The vend result of a sale: its refunds are the ones the net subtracts."""

MAX_REPORT_DAYS = 92
"""A report covers at most this many local days: it bounds the reply (one daily bucket each)."""
NO_MEDIUM = "none"
"""The ``medium`` bucket of sales that named none (cash sales, and vends whose lock, voucher or
credit carried no medium)."""


class Payment(StrEnum):
    CASH = "cash"
    CASHLESS = "cashless"


@dataclass(frozen=True, slots=True)
class SaleRow:
    """One product that left the machine: ``price`` in minor units, ``at`` in UTC seconds.

    ``surcharge`` is the backend's fee on top of the price (minor units), reported, never
    charged on the bus.
    """

    at: float
    selection: int
    price: int
    payment: Payment
    vend_type: VendType
    medium: PaymentMedium | None = None
    surcharge: int = 0


@dataclass(frozen=True, slots=True)
class Period:
    """Local days ``first``..``last`` (inclusive) and their UTC window ``[since, until)``."""

    first: dt.date
    last: dt.date
    zone: ZoneInfo

    @property
    def since(self) -> float:
        return _midnight(self.first, self.zone)

    @property
    def until(self) -> float:
        return _midnight(self.last + dt.timedelta(days=1), self.zone)

    def days(self) -> list[dt.date]:
        return [self.first + dt.timedelta(days=n) for n in range((self.last - self.first).days + 1)]


class PeriodError(ValueError):
    """A date range that cannot be reported; ``field`` names the command field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def period(first: str, last: str | None, zone: ZoneInfo) -> Period:
    """``first`` and ``last`` as ISO dates (``YYYY-MM-DD``); ``last`` defaults to ``first``."""
    start = _date("from", first)
    end = start if last is None else _date("to", last)
    if end < start:
        raise PeriodError("to", f"{last} is before from ({first})")
    if (end - start).days + 1 > MAX_REPORT_DAYS:
        raise PeriodError("to", f"a report covers at most {MAX_REPORT_DAYS} days")
    return Period(start, end, zone)


def _date(field: str, text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise PeriodError(field, f"{text!r} must be a date YYYY-MM-DD") from None


def _midnight(day: dt.date, zone: ZoneInfo) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()


def _bucket() -> dict[str, int]:
    return {"count": 0, "amount": 0}


def _add(bucket: dict[str, int], amount: int) -> None:
    bucket["count"] += 1
    bucket["amount"] += amount


def totals(rows: Iterable[SaleRow]) -> dict[str, Any]:
    """``{count, amount}`` in all (``total``), by ``payment`` and by ``vend_type``."""
    payments = {p.value: _bucket() for p in Payment}
    vend_types = {v.value: _bucket() for v in VendType}
    total = _bucket()
    for row in rows:
        for bucket in (payments[row.payment.value], vend_types[row.vend_type.value], total):
            _add(bucket, row.price)
    return {"total": total, "payment": payments, "vend_type": vend_types}


def report(
    rows: Iterable[SaleRow],
    when: Period,
    stock: Stock,
    selection: int | None = None,
    refunds: Iterable[RefundRow] = (),
) -> dict[str, Any]:
    """The ``sales.query`` reply's result; ``rows`` and ``refunds`` are those made in
    ``[when.since, when.until)``.

    Slots are the planogram's selections (or the one asked for) plus any selection sold, or with
    a sale refunded, in the period that the planogram no longer has. ``sales`` counts vends of
    every type, ``cash`` is their value in minor units (seed 002's names), whatever paid for
    them; ``refunds``/``refunded`` count the refunds of the slot's sales and ``net`` is ``cash``
    less them.
    """
    per_slot: dict[int, dict[str, int]] = {}
    refunded: dict[int, dict[str, int]] = {}
    results = {r: _bucket() for r in VEND_RESULT.values()}
    media = {name: _bucket() for name in [*(v.value for v in PaymentMedium), NO_MEDIUM]}
    surcharge = _bucket()
    hourly = [_bucket() for _ in range(24)]
    daily = {day: _bucket() for day in when.days()}
    kept: list[SaleRow] = []

    def local_time(at: float, number: int) -> dt.datetime | None:
        """The local time of a row the report counts; None for one it leaves out."""
        local = dt.datetime.fromtimestamp(at, when.zone)
        wanted = selection is None or number == selection
        return local if wanted and local.date() in daily else None

    for row in rows:
        local = local_time(row.at, row.selection)
        if local is None:
            continue
        kept.append(row)
        for bucket in (
            per_slot.setdefault(row.selection, _bucket()),
            hourly[local.hour],
            daily[local.date()],
            media[NO_MEDIUM if row.medium is None else row.medium.value],
        ):
            _add(bucket, row.price)
        if row.surcharge:
            _add(surcharge, row.surcharge)
    for refund in refunds:
        if local_time(refund.at, refund.selection) is None:
            continue
        _add(results[refund.result], refund.amount)
        if refund.result == SOLD:
            _add(refunded.setdefault(refund.selection, _bucket()), refund.amount)
    summed = totals(kept)
    return {
        "from": when.first.isoformat(),
        "to": when.last.isoformat(),
        "timezone": when.zone.key,
        "since": when.since,
        "until": when.until,
        "selection": selection,
        "planogram_version": None if stock.planogram is None else stock.planogram.version,
        "slots": _slots(per_slot, refunded, stock, selection),
        **summed,
        "refunds": results,
        "net": summed["total"]["amount"] - results[SOLD]["amount"],
        "medium": media,
        "surcharge": surcharge,
        "hourly": [{"hour": hour, **b} for hour, b in enumerate(hourly)],
        "daily": [{"date": day.isoformat(), **b} for day, b in daily.items()],
    }


def _slots(
    per_slot: dict[int, dict[str, int]],
    refunded: dict[int, dict[str, int]],
    stock: Stock,
    selection: int | None,
) -> list[dict[str, Any]]:
    planogram = stock.planogram
    numbers = set(per_slot) | set(refunded)
    if planogram is not None:
        numbers |= {s.number for s in planogram.selections}
    if selection is not None:
        numbers &= {selection}
    slots: list[dict[str, Any]] = []
    for number in sorted(numbers):
        sold = per_slot.get(number, _bucket())
        back = refunded.get(number, _bucket())
        slots.append(
            {
                "slotId": number,
                **slot_stock(stock, number),
                "sales": sold["count"],
                "cash": sold["amount"],
                "refunds": back["count"],
                "refunded": back["amount"],
                "net": sold["amount"] - back["amount"],
            }
        )
    return slots


def slot_stock(stock: Stock, number: int) -> dict[str, Any]:
    """Seed 002's planogram and stock fields of one slot; ``None`` where the slot is not counted.

    A recipe's selection has a product and a price but no ``itemsLeft`` of its own (its stock is
    its ingredients'), and a selection outside the planogram has none of these.
    """
    chosen = None if stock.planogram is None else stock.planogram.selection(number)
    limits = None if chosen is None else chosen.limits
    return {
        "product": None if chosen is None else chosen.product,
        "price": None if chosen is None else chosen.price,
        "itemsLeft": stock.levels.get(SlotKey(number)),
        "salesSinceRefill": None if limits is None else stock.sales_since_refill.get(number, 0),
        "capacity": None if limits is None else limits.capacity,
    }
