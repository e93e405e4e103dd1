"""EVA-DTS audit writer: ``Audit`` records -> the report a DEX read carries (sans-I/O).

The DEX simulator serves what this writes, built from its own counters with ``make_audit``.
The output has the canonical shape every reader accepts: ``DXS``, ``ST``, the segments in
EVA-DTS order, ``G85`` (CRC-16/ARC from the S of ST through the CRLF before G85, MSB first),
``SE`` with the count of segments from ST through SE, ``DXE``, every line ending CRLF. Money is
written as the integers the records hold, in the minor unit ``Currency.decimals`` names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

from protocols.errors import ParseError
from protocols.evadts.parser import g85_crc
from protocols.evadts.records import (
    Audit,
    Cash,
    Currency,
    Device,
    Event,
    EventCounter,
    Machine,
    Peripheral,
    Product,
    RawRecord,
    Sales,
    Stamp,
)

DEFAULT_SENDER = "VMC0000001"
"""DXS01 when the audit names no sender (a communication id: 3 letters and 7 digits)."""

Element: TypeAlias = str | int | None


class AuditWriteError(ParseError):
    """The records hold something an EVA-DTS report cannot carry."""


def make_audit(
    *,
    serial: str,
    model: str | None = None,
    products: Iterable[Product] = (),
    paid: Sales | None = None,
    events: Iterable[Event] = (),
    event_counters: Iterable[EventCounter] = (),
    decimals: int = 2,
    currency: str | None = None,
    sender: str | None = None,
    cash: Cash | None = None,
) -> Audit:
    """An audit from a machine's own counters; VA1 defaults to the products' PA2 added up."""
    items = tuple(products)
    if paid is None:
        paid = Sales(*(_column_total(items, column) for column in range(4)))
    return Audit(
        sender=sender,
        machine=Machine(serial=serial, model=model),
        currency=Currency(decimals, None, currency),
        paid=paid,
        products=items,
        cash=cash or Cash(),
        events=tuple(events),
        event_counters=tuple(event_counters),
    )


def _column_total(products: tuple[Product, ...], column: int) -> int:
    return sum(product.paid[column] or 0 for product in products if product.paid is not None)


def write(audit: Audit) -> bytes:
    """The report for ``audit``; raises ``AuditWriteError`` for text Latin-1 cannot hold."""
    body = _segments(audit)
    text = "\r\n".join(body) + "\r\n"
    try:
        data = text.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise AuditWriteError(
            f"text outside Latin-1 cannot be written: {exc.object[exc.start : exc.end]!r}"
        ) from exc
    header = _segment("DXS", audit.sender or DEFAULT_SENDER, "VA", audit.version or "V0/6", 1)
    trailer = f"G85*{g85_crc(data):04X}\r\nSE*{len(body) + 2}*0001\r\nDXE*1*1\r\n"
    return (header + "\r\n").encode("latin-1") + data + trailer.encode("latin-1")


def _segments(audit: Audit) -> list[str]:
    """ST up to (not including) G85, in EVA-DTS order; raw records go where the parser put them."""
    seg = _segment
    out = ["ST*001*0001"]
    machine = audit.machine
    out.append(
        seg(
            "ID1",
            machine.serial,
            machine.model,
            machine.build,
            machine.location,
            None,
            machine.asset,
        )
    )
    currency = audit.currency
    out.append(seg("ID4", currency.decimals, currency.numeric, currency.alpha))
    _stamp(out, "ID5", audit.clock)
    _device(out, "CB1", machine.board)
    for tag, sales in (("VA1", audit.paid), ("VA2", audit.test), ("VA3", audit.free)):
        _value_first(out, tag, sales)
    cash = audit.cash
    _device(out, "CA1", cash.changer)
    _value_first(out, "CA2", cash.sales)
    if cash.cash_in is not None:
        c = cash.cash_in
        out.append(
            seg(
                "CA3",
                c.inserted_reset,
                c.to_cashbox_reset,
                c.to_tubes_reset,
                c.bills_reset,
                c.inserted_init,
                c.to_cashbox_init,
                c.to_tubes_init,
                c.bills_init,
                c.bill_value_reset,
                c.bill_value_init,
            )
        )
    if cash.cash_out is not None:
        c4 = cash.cash_out
        out.append(
            seg("CA4", c4.dispensed_reset, c4.manual_reset, c4.dispensed_init, c4.manual_init)
        )
    out.extend(_raw(record) for record in cash.other)
    _peripheral(out, "BA1", None, audit.bills)
    _peripheral(out, "DA1", "DA2", audit.cashless)
    _peripheral(out, "DB1", "DB2", audit.cashless2)
    _peripheral(out, None, "TA2", audit.tokens)
    for product in audit.products:
        _product(out, product)
    for event in audit.events:
        out.append(
            seg(
                "EA1",
                event.code,
                event.date,
                event.time,
                event.duration,
                event.duration_ms,
                event.user,
            )
        )
    for counter in audit.event_counters:
        active = None if counter.active is None else int(counter.active)
        out.append(
            seg(
                "EA2",
                counter.code,
                counter.count_reset,
                counter.count_init,
                counter.user,
                active,
                counter.duration,
            )
        )
    if audit.reads is not None:
        r = audit.reads
        out.append(
            seg(
                "EA3",
                r.reads_with_reset,
                r.date,
                r.time,
                r.terminal,
                r.last_date,
                r.last_time,
                r.last_terminal,
                None,
                r.reads,
                r.resets,
            )
        )
    _stamp(out, "EA4", audit.initialised)
    _stamp(out, "EA5", audit.prices_set)
    if audit.power_outages is not None:
        out.append(seg("EA7", audit.power_outages.reset, audit.power_outages.init))
    out.extend(_raw(("MA5", record.block, *record.fields)) for record in audit.manufacturer)
    out.extend(_raw(record) for record in audit.other)
    return out


def _product(out: list[str], product: Product) -> None:
    out.append(_segment("PA1", product.selection, product.price, product.product_id))
    for tag, sales in (("PA2", product.paid), ("PA3", product.test), ("PA4", product.free)):
        if sales is not None:
            out.append(_segment(tag, *sales))
    for entry in product.by_payment:
        out.append(
            _segment(
                "PA7", product.selection, entry.device, entry.price_list, entry.price, *entry.sales
            )
        )
    out.extend(_raw(record) for record in product.other)


def _peripheral(
    out: list[str], device_tag: str | None, sales_tag: str | None, unit: Peripheral
) -> None:
    """A payment unit's id and sales records (those EVA-DTS defines for it), then its raw ones."""
    if device_tag is not None:
        _device(out, device_tag, unit.device)
    if sales_tag is not None:
        _value_first(out, sales_tag, unit.sales)
    out.extend(_raw(record) for record in unit.other)


def _value_first(out: list[str], tag: str, sales: Sales | None) -> None:
    if sales is not None:
        out.append(
            _segment(tag, sales.value_init, sales.vends_init, sales.value_reset, sales.vends_reset)
        )


def _device(out: list[str], tag: str, device: Device | None) -> None:
    if device is not None:
        out.append(_segment(tag, device.serial, device.model, device.software))


def _stamp(out: list[str], tag: str, stamp: Stamp | None) -> None:
    if stamp is not None:
        out.append(_segment(tag, stamp.date, stamp.time))


def _segment(tag: str, *elements: Element) -> str:
    """``TAG*el01*el02...``: text escaped, absent elements empty, trailing empties dropped."""
    parts = [tag]
    parts.extend(
        "" if e is None else str(e) if isinstance(e, int) else _escape(e) for e in elements
    )
    while len(parts) > 1 and not parts[-1]:
        parts.pop()
    return "*".join(parts)


def _escape(text: str) -> str:
    """An AN element: ``*``, ``^`` and other Latin-1 outside printable ASCII as ``^XX^`` (hex).

    Characters beyond Latin-1 are left for ``write`` to refuse.
    """
    if text.isascii() and text.isprintable() and "*" not in text and "^" not in text:
        return text
    return "".join(map(_escape_char, text))


def _escape_char(c: str) -> str:
    if (" " <= c <= "~" and c not in "*^") or ord(c) > 0xFF:
        return c
    return f"^{ord(c):02X}^"


def _raw(record: RawRecord) -> str:
    """A record kept raw by the parser, as it stood; refuses what would break the framing."""
    if not record or any("*" in e or "\r" in e or "\n" in e for e in record):
        raise AuditWriteError(f"raw record {record[:2]!r} cannot be written as one segment")
    return "*".join(record)
