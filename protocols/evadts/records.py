"""The EVA-DTS audit as data: what one DEX read says about a machine (EVA-DTS 6.2 ch. 2, App. A).

Money is an integer count of the file's minor unit; ``Currency.decimals`` (ID401, default 2)
says where the decimal point sits, and nothing here divides by 100. ``None`` means absent and
also "not supported" (``-1`` and ``4294967295`` in real files). Counters come in pairs: since
initialisation (lifetime, never cleared) and since the last reset (cleared at reads in AUTO mode).

The per-line records (``Sales``, ``Product``, ``PaymentSales``) are NamedTuples rather than frozen
dataclasses: a large audit builds tens of thousands of them, and a NamedTuple is built about
twice as fast. Both are immutable and typed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, TypeAlias

JsonValue: TypeAlias = bool | int | str | list["JsonValue"] | dict[str, "JsonValue"] | None
JsonObject: TypeAlias = dict[str, JsonValue]

RawRecord = tuple[str, ...]
"""A segment as it stands in the file: the segment id, then element 01, 02 ... (unconverted)."""


class CrcStatus(StrEnum):
    """Verdict on the audit's G85 check value."""

    OK = "ok"
    MISMATCH = "mismatch"
    ABSENT = "absent"


class Sales(NamedTuple):
    """Vends and their value since initialisation and since the last reset (VA1, CA2, PA2 ...)."""

    vends_init: int | None = None
    value_init: int | None = None
    vends_reset: int | None = None
    value_reset: int | None = None

    def to_json(self) -> JsonObject:
        return {
            "vends_init": self.vends_init,
            "value_init": self.value_init,
            "vends_reset": self.vends_reset,
            "value_reset": self.value_reset,
        }


class PaymentSales(NamedTuple):
    """One PA7 line: a product's sales through one payment device and price list."""

    device: str | None
    price_list: str | None
    price: int | None
    sales: Sales


class Product(NamedTuple):
    """A PA1 and the PA2-PA8 lines that follow it.

    ``paid``/``test``/``free`` come from PA2/PA3/PA4. ``other`` keeps PA5, PA6 and PA8 raw.
    """

    selection: str | None
    price: int | None = None
    product_id: str | None = None
    paid: Sales | None = None
    test: Sales | None = None
    free: Sales | None = None
    by_payment: tuple[PaymentSales, ...] = ()
    other: tuple[RawRecord, ...] = ()

    def to_json(self) -> JsonObject:
        paid = self.paid or Sales()
        return {
            "selection": self.selection,
            "price": self.price,
            "product_id": self.product_id,
            "vends_init": paid.vends_init,
            "value_init": paid.value_init,
            "vends_reset": paid.vends_reset,
            "value_reset": paid.value_reset,
            "test": _sales_json(self.test),
            "free": _sales_json(self.free),
        }


@dataclass(frozen=True, slots=True)
class Device:
    """Identification of a unit (CA1 changer, BA1 bill validator, DA1/DB1 cashless, CB1 board)."""

    serial: str | None = None
    model: str | None = None
    software: str | None = None


@dataclass(frozen=True, slots=True)
class Machine:
    """ID1 (and CB1, the VMC board)."""

    serial: str | None = None
    model: str | None = None
    build: str | None = None
    location: str | None = None
    asset: str | None = None
    board: Device | None = None


@dataclass(frozen=True, slots=True)
class Currency:
    """ID4: where the decimal point of every money element sits, and which currency it is."""

    decimals: int = 2
    numeric: str | None = None
    alpha: str | None = None


@dataclass(frozen=True, slots=True)
class Stamp:
    """A date and time as the file has them (DT ``YYMMDD``/``YYYYMMDD``, TM ``HHMM``/``HHMMSS``)."""

    date: str | None = None
    time: str | None = None


@dataclass(frozen=True, slots=True)
class CashIn:
    """CA3, money inserted. ``bills_*`` (CA304/CA308) are whole units in old US files (N0).

    CA309/CA310 carry the bill value in minor units where the VMC sends them.
    """

    inserted_reset: int | None = None
    to_cashbox_reset: int | None = None
    to_tubes_reset: int | None = None
    bills_reset: int | None = None
    inserted_init: int | None = None
    to_cashbox_init: int | None = None
    to_tubes_init: int | None = None
    bills_init: int | None = None
    bill_value_reset: int | None = None
    bill_value_init: int | None = None


@dataclass(frozen=True, slots=True)
class CashOut:
    """CA4, change paid out."""

    dispensed_reset: int | None = None
    manual_reset: int | None = None
    dispensed_init: int | None = None
    manual_init: int | None = None


@dataclass(frozen=True, slots=True)
class Cash:
    """The coin mechanism: CA1-CA4 read, every other CA* record kept raw in file order."""

    changer: Device | None = None
    sales: Sales | None = None
    cash_in: CashIn | None = None
    cash_out: CashOut | None = None
    other: tuple[RawRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Peripheral:
    """A payment unit: BA bills, DA/DB cashless 1/2, TA tokens.

    ``device`` is BA1/DA1/DB1 (tokens have no id record), ``sales`` DA2/DB2/TA2 (bills have no
    sales record); every other record of the family is kept raw, in file order.
    """

    device: Device | None = None
    sales: Sales | None = None
    other: tuple[RawRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """EA1, one entry of the event log."""

    code: str
    date: str | None = None
    time: str | None = None
    duration: int | None = None
    duration_ms: int | None = None
    user: str | None = None

    def to_json(self) -> JsonObject:
        return {
            "kind": "log",
            "code": self.code,
            "date": self.date,
            "time": self.time,
            "duration": self.duration,
            "count": None,
            "active": None,
        }


@dataclass(frozen=True, slots=True)
class EventCounter:
    """EA2, how often an event occurred; ``active`` is EA205 (the event has not cleared)."""

    code: str
    count_reset: int | None = None
    count_init: int | None = None
    user: str | None = None
    active: bool | None = None
    duration: int | None = None

    @property
    def count(self) -> int | None:
        """The lifetime count where the VMC keeps one, else the count since reset."""
        return self.count_reset if self.count_init is None else self.count_init

    def to_json(self) -> JsonObject:
        return {
            "kind": "counter",
            "code": self.code,
            "date": None,
            "time": None,
            "duration": self.duration,
            "count": self.count,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class ReadStats:
    """EA3: this read and the one before it, and how many reads and resets the VMC counted."""

    reads_with_reset: int | None = None
    date: str | None = None
    time: str | None = None
    terminal: str | None = None
    last_date: str | None = None
    last_time: str | None = None
    last_terminal: str | None = None
    reads: int | None = None
    resets: int | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    """A plain count since reset and since initialisation (EA7 power outages)."""

    reset: int | None = None
    init: int | None = None


@dataclass(frozen=True, slots=True)
class ManufacturerRecord:
    """MA5: free-form data under a block id (MA501: ERROR, TIME, SEL1 ...), elements kept raw."""

    block: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Audit:
    """One DXS...DXE report.

    ``other`` holds every record the model has no place for (LA1, SA2, SD1, EA6, vendor records),
    in file order; the payment units keep their own. ``complete`` means the trailer was reached:
    the audit has an SE or a DXE.
    """

    sender: str | None = None
    version: str | None = None
    machine: Machine = Machine()
    currency: Currency = Currency()
    clock: Stamp | None = None
    paid: Sales | None = None
    test: Sales | None = None
    free: Sales | None = None
    cash: Cash = Cash()
    bills: Peripheral = Peripheral()
    cashless: Peripheral = Peripheral()
    cashless2: Peripheral = Peripheral()
    tokens: Peripheral = Peripheral()
    products: Sequence[Product] = ()
    events: tuple[Event, ...] = ()
    event_counters: tuple[EventCounter, ...] = ()
    reads: ReadStats | None = None
    initialised: Stamp | None = None
    prices_set: Stamp | None = None
    power_outages: Counts | None = None
    manufacturer: tuple[ManufacturerRecord, ...] = ()
    other: tuple[RawRecord, ...] = ()
    crc: CrcStatus = CrcStatus.ABSENT
    complete: bool = False
    warnings: tuple[str, ...] = ()

    def to_json(self) -> JsonObject:
        """The summary ``vmctl dex parse --json`` prints: a contract, add keys but never rename."""
        machine = self.machine
        paid = self.paid or Sales()
        cash = self.cash
        cash_in = cash.cash_in or CashIn()
        cash_out = cash.cash_out or CashOut()
        events: list[JsonValue] = [event.to_json() for event in self.events]
        events.extend(counter.to_json() for counter in self.event_counters)
        return {
            "sender": self.sender,
            "machine": {
                "serial": machine.serial,
                "model": machine.model,
                "location": machine.location,
                "build": machine.build,
                "asset": machine.asset,
            },
            "decimals": self.currency.decimals,
            "currency": {"numeric": self.currency.numeric, "alpha": self.currency.alpha},
            "crc": self.crc.value,
            "complete": self.complete,
            "totals": {
                "paid_value_init": paid.value_init,
                "paid_vends_init": paid.vends_init,
                "paid_value_reset": paid.value_reset,
                "paid_vends_reset": paid.vends_reset,
            },
            "test_vends": _sales_json(self.test),
            "free_vends": _sales_json(self.free),
            "cash": {
                "sales": _sales_json(cash.sales),
                "inserted_init": cash_in.inserted_init,
                "inserted_reset": cash_in.inserted_reset,
                "dispensed_init": cash_out.dispensed_init,
                "dispensed_reset": cash_out.dispensed_reset,
            },
            "cashless": _sales_json(self.cashless.sales),
            "cashless2": _sales_json(self.cashless2.sales),
            "tokens": _sales_json(self.tokens.sales),
            "products": [product.to_json() for product in self.products],
            "events": events,
            "unknown_records": len(self.other),
            "warnings": list(self.warnings),
        }


def _sales_json(sales: Sales | None) -> JsonValue:
    return None if sales is None else sales.to_json()
