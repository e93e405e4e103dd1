"""EVA-DTS audit parser: the text of a DEX or DDCMP read -> ``Audit`` records (sans-I/O).

Real files are messy (the tests read a corpus of them, tests/corpus.py): junk before ``DXS``
and after ``DXE``, truncation, several reports in one file, CRLF, LF-only or bare-CR lines, no
ST/SE/G85, ``-1``/``4294967295`` for "not supported", vendor records. The parser reads what it
can and says what it could not in ``Audit.warnings``; only input that holds no audit at all raises
``NoAuditError``. Nothing else escapes, whatever the bytes.

Where an audit starts: at every ``DXS*`` in the text, even mid-line (carrier envelopes such as
N&W BlueRed's put theirs in front of it), unless it is part of a segment (``_dxs_lines``). A
file without DXS is read from its first known segment, if it has one. An audit ends at its
``DXE``; what follows up to the next DXS is junk.

Written for throughput (a reporter parses megabyte audits on a small CPU). Products are most
of a large audit's text, and most audits' product lines are plain: a selection, digits where
numbers go. Such a block of product lines is found with one regular-expression pass, checked
for anything that could make a warning with another (``_SUSPECT``), and cut into one string per
product with a C-level split; each product is converted the first time somebody reads it
(:class:`LazyProducts`). Any other block (escapes in numbers, negatives, empty selections, a
PA2 without its PA1) makes its audit take the general path, line by line, which gives the same
records and its warnings. The other segments are split into elements once and dispatched by
segment id; records nobody reads stay raw tuples, the G85 CRC is folded with big-integer XORs
instead of a byte loop (``g85_crc``), and the garbage collector rests during a parse. Bench:
``bench/dex.py``.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import overload

from protocols.crc16 import crc16_arc
from protocols.errors import ParseError
from protocols.evadts.records import (
    Audit,
    Cash,
    CashIn,
    CashOut,
    Counts,
    CrcStatus,
    Currency,
    Device,
    Event,
    EventCounter,
    Machine,
    ManufacturerRecord,
    PaymentSales,
    Peripheral,
    Product,
    RawRecord,
    ReadStats,
    Sales,
    Stamp,
)

NOT_SUPPORTED = 4294967295
"""With ``-1``, what VMCs send for an element they do not support (read as ``None``)."""

MAX_WARNINGS = 50
"""A damaged file can yield a warning per line; the audit keeps this many and a count."""

_ESCAPE = re.compile(r"\^([0-9A-Fa-f]{2})\^")
_HEX = frozenset("0123456789abcdefABCDEF")
_new = tuple.__new__
"""Builds a NamedTuple from a ready tuple, skipping its Python-level ``__new__`` (hot path)."""

# x**32767 == 1 modulo the CRC-16 polynomial x^16+x^15+x^2+1, so bits 32767 apart weigh the same
# in the CRC: folding the message onto itself at that period leaves its CRC unchanged.
_CRC_PERIOD = 32767
_CRC_WINDOW = 4096  # bytes; holds the folded remainder (32767 bits) in byte-sized stream order


class NoAuditError(ParseError):
    """The input holds no EVA-DTS audit: no DXS and no segment an audit is made of."""


def g85_crc(data: bytes) -> int:
    """CRC-16/ARC of ``data``, the G85 check value, at big-integer speed for large audits.

    CRC-16/ARC (init 0, no final XOR) is linear, and a bit's weight depends only on its distance
    to the end of the message modulo ``_CRC_PERIOD``. Read little-endian, stream bit ``q`` of an
    ``n``-byte message is integer bit ``q``, at distance ``8n-1-q``; XOR-folding the integer in
    chunks of ``_CRC_PERIOD`` bits and shifting the rest into a ``_CRC_WINDOW``-byte message at
    the same distances modulo the period gives the same CRC over 4 KiB instead of ``n`` bytes.
    """
    size = len(data)
    if size <= _CRC_WINDOW:
        return crc16_arc(data)
    view = memoryview(data)
    chunk = _CRC_PERIOD  # bytes, a whole number of periods in bits
    folded = 0
    for start in range(0, size, chunk):
        folded ^= int.from_bytes(view[start : start + chunk], "little")
    shift = (8 * _CRC_WINDOW - 8 * size) % _CRC_PERIOD
    return crc16_arc(_fold(_fold(folded) << shift).to_bytes(_CRC_WINDOW, "little"))


def _fold(value: int) -> int:
    """``value`` XOR-folded to fewer than ``_CRC_PERIOD`` bits, halving at each step."""
    while value >> _CRC_PERIOD:
        periods = (value.bit_length() - 1) // _CRC_PERIOD
        span = _CRC_PERIOD << (periods.bit_length() - 1)
        value = (value >> span) ^ (value & ((1 << span) - 1))
    return value


def parse(data: bytes | str) -> Audit:
    """The audit a reader should use: the first complete one, else the first one.

    A file may hold several reports (a carrier that appends, a read that restarted). A complete
    one (SE or DXE reached) beats a truncated one; among equals the earlier wins.
    """
    return choose(parse_all(data))


def choose(audits: tuple[Audit, ...]) -> Audit:
    """The first complete audit of ``audits`` (as ``parse_all`` returns them), else the first."""
    return next((audit for audit in audits if audit.complete), audits[0])


def parse_all(data: bytes | str) -> tuple[Audit, ...]:
    """Every audit in ``data``, in file order. Bytes are read as Latin-1, which never fails.

    Raises ``NoAuditError`` (a ``ParseError``) if there is none.

    The garbage collector is off meanwhile: the records built all survive and make no cycle, so
    its passes (one per 700 allocations) would find nothing, for a fifth of a large audit's
    time. The one pass due after the parse untracks them for good (tuples of plain values).
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _parse_all(data)
    finally:
        if collecting:
            gc.enable()


def _parse_all(data: bytes | str) -> tuple[Audit, ...]:
    text = data if isinstance(data, str) else data.decode("latin-1")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    runs = _product_runs(text)
    starts, enveloped = _dxs_lines(text, lines)
    if starts:
        # A DXS after a PA line's text starts an audit on that line: its run goes by line.
        runs = [_whole(r) if any(r.start <= s < r.end for s in starts) else r for r in runs]
        bounds = [*starts[1:], len(lines)]
        audits = []
        for begin, end in zip(starts, bounds, strict=True):
            lead = []
            if begin == starts[0] and (enveloped or _count_junk(lines, 0, begin)):
                lead.append("ignored text before DXS")
            audits.append(_read_audit(lines, begin, end, has_dxs=True, warnings=lead, runs=runs))
        return tuple(audits)
    first = _first_segment(lines)
    if first is None:
        reason = "the input is empty" if not text.strip() else "no DXS and no audit segments"
        raise NoAuditError(f"no EVA-DTS audit found: {reason}")
    lead = ["no DXS header; read from the first audit segment"]
    if _count_junk(lines, 0, first):
        lead.append("ignored text before the first audit segment")
    return (_read_audit(lines, first, len(lines), has_dxs=False, warnings=lead, runs=runs),)


def _dxs_lines(text: str, lines: list[str]) -> tuple[list[int], bool]:
    """Indexes of the lines where an audit starts, and whether the first DXS had text before it.

    A ``DXS*`` starts an audit at the start of a line or after a character that is neither
    alphanumeric nor ``*`` (a carrier envelope's ``>``); the text before it on its line is cut
    off. Inside a segment (``LA1*DXS*``, ``ABCDXS*``) it is data.
    """
    starts: list[int] = []
    enveloped = False
    line_no = 0
    last = 0
    pos = text.find("DXS*")
    while pos != -1:
        line_no += text.count("\n", last, pos)
        last = pos
        before = text[pos - 1] if pos else "\n"
        if before != "*" and not before.isalnum() and (not starts or starts[-1] != line_no):
            line_start = text.rfind("\n", 0, pos) + 1
            if pos > line_start:
                lines[line_no] = lines[line_no][pos - line_start :]
                enveloped = enveloped or not starts
            starts.append(line_no)
        pos = text.find("DXS*", pos + 4)
    return starts, enveloped


def _count_junk(lines: list[str], begin: int, end: int) -> int:
    """How many of ``lines[begin:end]`` are not blank."""
    return (end - begin) - lines[begin:end].count("")


def _first_segment(lines: list[str]) -> int | None:
    """Where a file without DXS starts: its first data segment, or the ST before it."""
    st = None
    for index, line in enumerate(lines):
        tag = line.split("*", 1)[0]
        if tag in _AUDIT_SEGMENTS:
            return index if st is None else st
        if tag == "ST" and st is None:
            st = index
    return None


def tube_contents(cash: Cash) -> int | None:
    """CA1501: the value of the coins in the changer's tubes (minor units), kept raw by the parser.

    None when the audit has no CA15, or its 01 is empty, not a number or "not supported". Only
    the first CA15 counts: a VMC that writes one per tube (``TUBE1``, ``TUBE2`` in 02) was seen
    repeating the whole total in each 01, so adding them up would count it twice.
    """
    for record in cash.other:
        if record[0] == "CA15":
            return _num(list(record), 1, [])
    return None


def _num(f: list[str], i: int, warnings: list[str]) -> int | None:
    """Element ``i`` of a split segment as a number; ``None`` if absent, empty or not supported."""
    try:
        value = int(f[i])
    except IndexError:
        return None
    except ValueError:
        text = f[i].strip()
        if text:
            warnings.append(f"{f[0]}{i:02d}: {text[:24]!r} is not a number")
        return None
    if value >= 0 and value != NOT_SUPPORTED:
        return value
    if value not in (-1, NOT_SUPPORTED):
        warnings.append(f"{f[0]}{i:02d}: negative value {value} read as absent")
    return None


def _four(
    f: list[str], warnings: list[str], at: int = 1
) -> tuple[int | None, int | None, int | None, int | None]:
    """Elements ``at`` to ``at + 3`` (01-04 by default) as numbers, with a fast path for four
    plain counters (the PA2 line, a PA7's sales)."""
    try:
        a, b, c, d = int(f[at]), int(f[at + 1]), int(f[at + 2]), int(f[at + 3])
    except (ValueError, IndexError):
        pass
    else:
        if 0 <= (a | b | c | d) < NOT_SUPPORTED:  # none negative, none the sentinel
            return a, b, c, d
    w = warnings
    return _num(f, at, w), _num(f, at + 1, w), _num(f, at + 2, w), _num(f, at + 3, w)


def _text(f: list[str], i: int) -> str | None:
    """Element ``i`` as text: padding stripped, ``^2A^``-style escapes decoded, empty -> None."""
    try:
        text = f[i].strip()
    except IndexError:
        return None
    if "^" in text:
        text = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return text or None


_SALES_TAGS = ("VA1", "VA2", "VA3", "CA2", "DA2", "DB2", "TA2")
_DEVICE_TAGS = ("CB1", "CA1", "BA1", "DA1", "DB1")
_STAMP_TAGS = ("ID5", "EA4", "EA5")
_FAMILIES = ("CA", "BA", "DA", "DB", "TA")
"""Payment-unit prefixes; their records without a handler are kept raw with the unit."""


class _Builder:
    """One audit being read: a handler per segment id, results kept until ``audit()``.

    Records of one layout share a handler and land in a dict by segment id (``sales["VA1"]``,
    ``devices["DA1"]``, ``stamps["EA4"]``); a repeated record replaces the earlier one.
    """

    def __init__(self, warnings: list[str]) -> None:
        self.warnings = warnings
        self.sender: str | None = None
        self.version: str | None = None
        self.machine = Machine()
        self.currency = Currency()
        self.sales: dict[str, Sales] = {}
        self.devices: dict[str, Device] = {}
        self.stamps: dict[str, Stamp] = {}
        self.cash_in: CashIn | None = None
        self.cash_out: CashOut | None = None
        self.raw: dict[str, list[RawRecord]] = {prefix: [] for prefix in _FAMILIES}
        self.products: list[Product] = []
        self.shifted = 0  # PA1s read with the KIKKO shift
        self.unnamed = 0  # PA1s without a selection
        self.events: list[Event] = []
        self.counters: list[EventCounter] = []
        self.reads: ReadStats | None = None
        self.power_outages: Counts | None = None
        self.manufacturer: list[ManufacturerRecord] = []
        self.other: list[RawRecord] = []
        self.garbage = 0
        self.loops = 0
        self.st: int | None = None
        self.g85: tuple[int, str] | None = None
        self.se: tuple[int, list[str]] | None = None
        self.handlers: dict[str, Callable[[list[str], int], None]] = {
            "ST": self._st,
            "ID1": self._id1,
            "ID4": self._id4,
            "CA3": self._ca3,
            "CA4": self._ca4,
            "EA1": self._ea1,
            "EA2": self._ea2,
            "EA3": self._ea3,
            "EA7": self._ea7,
            "MA5": self._ma5,
            "G85": self._g85,
            "SE": self._se,
        }
        self.handlers.update(dict.fromkeys(_SALES_TAGS, self._sales))
        self.handlers.update(dict.fromkeys(_DEVICE_TAGS, self._device))
        self.handlers.update(dict.fromkeys(_STAMP_TAGS, self._stamp))

    def dxs(self, f: list[str]) -> None:
        self.sender = _text(f, 1)
        self.version = _text(f, 3)

    def unknown(self, f: list[str]) -> None:
        """A segment without a handler: kept raw with its payment unit or the audit, or counted
        as garbage if its id is no segment id."""
        tag = f[0]
        if not (tag.isalnum() and tag.isascii() and len(tag) <= 10):
            self.garbage += tag != "" or len(f) > 1  # a blank line is no garbage
            return
        self.raw.get(tag[:2], self.other).append(tuple(f))

    def orphan(self, f: list[str]) -> None:
        """A PA2-PA9 with no PA1 before it in its loop."""
        self.warnings.append(f"{f[0]} without a PA1 before it; kept as an unknown record")
        self.other.append(tuple(f))

    def _st(self, f: list[str], index: int) -> None:
        if self.st is None:
            self.st = index

    def _id1(self, f: list[str], index: int) -> None:
        self.machine = Machine(_text(f, 1), _text(f, 2), _text(f, 3), _text(f, 4), _text(f, 6))

    def _id4(self, f: list[str], index: int) -> None:
        decimals = _num(f, 1, self.warnings)
        if decimals is None or decimals > 9:
            if decimals is not None:
                self.warnings.append(f"ID401: {decimals} decimal places; 2 assumed")
            decimals = 2
        self.currency = Currency(decimals, _text(f, 2), _text(f, 3))

    def _sales(self, f: list[str], index: int) -> None:
        """VA1-VA3, CA2, DA2, DB2, TA2: value init, vends init, value reset, vends reset."""
        value_init, vends_init, value_reset, vends_reset = _four(f, self.warnings)
        self.sales[f[0]] = Sales(vends_init, value_init, vends_reset, value_reset)

    def _device(self, f: list[str], index: int) -> None:
        self.devices[f[0]] = Device(_text(f, 1), _text(f, 2), _text(f, 3))

    def _stamp(self, f: list[str], index: int) -> None:
        self.stamps[f[0]] = Stamp(_text(f, 1), _text(f, 2))

    def _ca3(self, f: list[str], index: int) -> None:
        w = self.warnings
        self.cash_in = CashIn(*(_num(f, i, w) for i in range(1, 11)))

    def _ca4(self, f: list[str], index: int) -> None:
        self.cash_out = CashOut(*_four(f, self.warnings))

    def _ea1(self, f: list[str], index: int) -> None:
        code = _text(f, 1)
        if code is None:  # "EA1******": a placeholder for an empty log
            self.other.append(tuple(f))
            return
        w = self.warnings
        self.events.append(
            Event(code, _text(f, 2), _text(f, 3), _num(f, 4, w), _num(f, 5, w), _text(f, 6))
        )

    def _ea2(self, f: list[str], index: int) -> None:
        code = _text(f, 1)
        if code is None:
            self.other.append(tuple(f))
            return
        w = self.warnings
        active = _num(f, 5, w)
        self.counters.append(
            EventCounter(
                code,
                _num(f, 2, w),
                _num(f, 3, w),
                _text(f, 4),
                None if active is None else active != 0,
                _num(f, 6, w),
            )
        )

    def _ea3(self, f: list[str], index: int) -> None:
        w = self.warnings
        self.reads = ReadStats(
            _num(f, 1, w),
            _text(f, 2),
            _text(f, 3),
            _text(f, 4),
            _text(f, 5),
            _text(f, 6),
            _text(f, 7),
            _num(f, 9, w),
            _num(f, 10, w),
        )

    def _ea7(self, f: list[str], index: int) -> None:
        self.power_outages = Counts(_num(f, 1, self.warnings), _num(f, 2, self.warnings))

    def _ma5(self, f: list[str], index: int) -> None:
        self.manufacturer.append(ManufacturerRecord(f[1] if len(f) > 1 else "", tuple(f[2:])))

    def _g85(self, f: list[str], index: int) -> None:
        if self.g85 is None:
            self.g85 = (index, f[1] if len(f) > 1 else "")

    def _se(self, f: list[str], index: int) -> None:
        if self.se is None:
            self.se = (index, f)

    def product(self, group: list[list[str]]) -> Product:
        """A PA1 and its PA2-PA9, counting the selections read with the KIKKO shift or none."""
        product, shifted, unnamed = _product(group, self.warnings)
        self.shifted += shifted
        self.unnamed += unnamed
        return product

    def audit(
        self, lines: list[str], start: int, products: Sequence[Product], *, dxe: bool
    ) -> Audit:
        """The audit read so far; ``start`` is where the G85 CRC and the SE01 count begin."""
        w = self.warnings
        if self.shifted:
            w.append(
                f"{self.shifted} PA1 with an empty PA101: selection read from PA102 and price"
                " from PA103 (N&W KIKKO layout)"
            )
        if self.unnamed:
            w.append(f"{self.unnamed} PA1 without a selection (empty PA101)")
        crc = self._check_g85(lines, start)
        if self.se is not None and self.se[0] >= start:
            self._check_se(lines, start, *self.se)
        if self.garbage:
            w.append(f"ignored {self.garbage} lines that are not segments")
        if len(w) > MAX_WARNINGS:
            w[MAX_WARNINGS:] = [f"... and {len(w) - MAX_WARNINGS} more warnings"]
        devices, sales, stamps = self.devices, self.sales, self.stamps
        machine = self.machine
        if "CB1" in devices:
            machine = replace(machine, board=devices["CB1"])
        return Audit(
            sender=self.sender,
            version=self.version,
            machine=machine,
            currency=self.currency,
            clock=stamps.get("ID5"),
            paid=sales.get("VA1"),
            test=sales.get("VA2"),
            free=sales.get("VA3"),
            cash=Cash(
                devices.get("CA1"),
                sales.get("CA2"),
                self.cash_in,
                self.cash_out,
                tuple(self.raw["CA"]),
            ),
            bills=self._peripheral("BA", None),
            cashless=self._peripheral("DA", "DA2"),
            cashless2=self._peripheral("DB", "DB2"),
            tokens=self._peripheral("TA", "TA2"),
            products=products,
            events=tuple(self.events),
            event_counters=tuple(self.counters),
            reads=self.reads,
            initialised=stamps.get("EA4"),
            prices_set=stamps.get("EA5"),
            power_outages=self.power_outages,
            manufacturer=tuple(self.manufacturer),
            other=tuple(self.other),
            crc=crc,
            complete=dxe or self.se is not None,
            warnings=tuple(w),
        )

    def _peripheral(self, prefix: str, sales_tag: str | None) -> Peripheral:
        sales = None if sales_tag is None else self.sales.get(sales_tag)
        return Peripheral(self.devices.get(prefix + "1"), sales, tuple(self.raw[prefix]))

    def _check_g85(self, lines: list[str], start: int) -> CrcStatus:
        """G85 against the CRC from ST to G85 with CRs re-inserted; either byte order, final CRLF
        or not."""
        if self.g85 is None:
            return CrcStatus.ABSENT
        index, given = self.g85
        given = given.strip()
        if len(given) != 4 or not _HEX.issuperset(given):
            self.warnings.append(f"G85 value {given[:8]!r} is not 4 hex digits")
            return CrcStatus.MISMATCH
        body = "\r\n".join(lines[start:index]).encode("latin-1", "replace")
        without_crlf = g85_crc(body)
        with_crlf = crc16_arc(b"\r\n", without_crlf)
        expected = int(given, 16)
        swapped = (expected >> 8) | (expected & 0xFF) << 8
        if with_crlf == expected:
            return CrcStatus.OK
        if with_crlf == swapped:
            self.warnings.append("G85 has its bytes swapped (pre-6.0 order)")
            return CrcStatus.OK
        if without_crlf in (expected, swapped):
            self.warnings.append("G85 matches only without the CRLF before it")
            return CrcStatus.OK
        self.warnings.append(f"G85 {given} does not match the computed {with_crlf:04X}")
        return CrcStatus.MISMATCH

    def _check_se(self, lines: list[str], start: int, index: int, f: list[str]) -> None:
        """SE01 against the segments from ST through SE; some VMCs leave LS/LE out of it."""
        declared = _num(f, 1, self.warnings)
        counted = index + 1 - start - lines[start : index + 1].count("")
        if declared is not None and declared not in (counted, counted - self.loops):
            self.warnings.append(f"SE01 says {declared} segments, counted {counted}")


def _product(group: list[list[str]], w: list[str]) -> tuple[Product, bool, bool]:
    """A PA1 and its PA2-PA9; whether its selection came from the KIKKO shift, or is absent."""
    pa1 = group[0]
    selection = _text(pa1, 1)
    shifted = unnamed = False
    if selection is None and (selection := _kikko_selection(pa1)) is not None:
        shifted = True
        price = _num(pa1, 3, w)
        product_id = None
    else:
        price = _num(pa1, 2, w)
        product_id = _text(pa1, 3)
        unnamed = selection is None
    paid = test = free = None
    by_payment: list[PaymentSales] = []
    other: list[RawRecord] = []
    for f in group[1:]:
        tag = f[0]
        if tag == "PA2":
            paid = _new(Sales, _four(f, w))
        elif tag == "PA3":
            test = _new(Sales, _four(f, w))
        elif tag == "PA4":
            free = _new(Sales, _four(f, w))
        elif tag == "PA7":
            sales = _new(Sales, _four(f, w, 5))
            entry = (_text(f, 2), _text(f, 3), _num(f, 4, w), sales)
            by_payment.append(_new(PaymentSales, entry))
        else:
            other.append(tuple(f))
    if paid is None and by_payment:
        paid = _sum_sales([entry.sales for entry in by_payment])
    fields = (selection, price, product_id, paid, test, free, tuple(by_payment), tuple(other))
    return _new(Product, fields), shifted, unnamed


def _block_product(block: str) -> Product:
    """The product of a plain block (``_SUSPECT`` found nothing in it): its lines with the PA1
    line's ``PA1*`` cut off, as the split of a run leaves them. No warning can arise.

    The commonest block, a PA1 and one PA2 of plain values, is converted here at once.
    """
    head, _, pa2 = block.partition("\nPA2*")
    if pa2 and "\n" not in pa2 and "\n" not in head and "^" not in head:
        pa1, f = head.split("*"), pa2.split("*")
        try:
            price = int(pa1[1])
            a, b, c, d = int(f[0]), int(f[1]), int(f[2]), int(f[3])
        except (ValueError, IndexError):
            pass
        else:
            if 0 <= (price | a | b | c | d) < NOT_SUPPORTED:  # as in _four
                product_id = pa1[2].strip() if len(pa1) > 2 else ""
                paid = _new(Sales, (a, b, c, d))
                fields = (pa1[0].strip(), price, product_id or None, paid, None, None, (), ())
                return _new(Product, fields)
    lines = block.split("\n")
    pa1 = lines[0].split("*")
    group = [["PA1", *pa1]]
    group += [line.split("*") for line in lines[1:]]
    return _product(group, [])[0]


class LazyProducts(Sequence[Product]):
    """An audit's products, each converted from its text the first time it is read.

    Compares, hashes and prints as the tuple of its products, so an audit built from it equals
    one built eagerly from the same text.
    """

    __slots__ = ("_blocks", "_done")

    def __init__(self, blocks: list[str]) -> None:
        self._blocks = blocks
        self._done: list[Product | None] = [None] * len(blocks)

    def __len__(self) -> int:
        return len(self._blocks)

    @overload
    def __getitem__(self, index: int) -> Product: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Product, ...]: ...

    def __getitem__(self, index: int | slice) -> Product | tuple[Product, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self._blocks))))
        product = self._done[index]
        if product is None:
            product = self._done[index] = _block_product(self._blocks[index])
        return product

    def __iter__(self) -> Iterator[Product]:
        done = self._done
        if None in done:
            blocks = self._blocks
            if done.count(None) == len(done):  # none read yet: the usual case
                done[:] = map(_block_product, blocks)
            else:
                done[:] = [
                    _block_product(block) if product is None else product
                    for product, block in zip(done, blocks, strict=True)
                ]
        return iter(done)  # type: ignore[arg-type]  # no None left

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyProducts | tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


def _kikko_selection(pa1: list[str]) -> str | None:
    """PA102 if this PA1 has the N&W KIKKO shift (PA101 empty, PA102 selection, PA103 price)."""
    if len(pa1) < 4 or not pa1[3].strip().isdecimal():
        return None
    return _text(pa1, 2)


def _sum_sales(parts: list[Sales]) -> Sales:
    """PA7 lines added up where a product has no PA2 (EVA-DTS 6.1 lets PA7 replace it)."""
    totals: list[int | None] = []
    for column in zip(*parts, strict=True):
        numbers = [number for number in column if number is not None]
        totals.append(sum(numbers) if len(numbers) == len(column) else None)
    return Sales(*totals)


@dataclass(frozen=True, slots=True)
class _Run:
    """Consecutive product lines (PA1-PA9) from line ``start`` to before ``end``; ``blocks`` is
    one string per product when the run is plain (it starts with a PA1 and ``_SUSPECT`` finds
    nothing in it), else None."""

    start: int
    end: int
    blocks: list[str] | None


_RUN = re.compile(r"(?:^PA[1-9](?:\*[^\n]*)?(?:\n|\Z))+", re.MULTILINE)
_NUMBER = "[0-9]{0,18}+"  # possessive: a line is looked at once, never backtracked over
_SUSPECT = re.compile(
    "\\nPA(?:"
    "1(?!\\*)"  # a PA1 with no elements
    "|1\\*[^\\S\\n]*+(?:[*\\n]|\\Z)"  # PA101 blank: no selection, or the KIKKO shift
    f"|1\\*[^*\\n]*+\\*{_NUMBER}[^*\\n]"  # PA102, the price
    f"|[234]\\*(?:{_NUMBER}\\*){{0,3}}+{_NUMBER}[^*\\n]"  # PA2-PA4 01-04
    f"|7\\*(?:[^*\\n]*+\\*){{3}}(?:{_NUMBER}\\*){{0,4}}+{_NUMBER}[^*\\n]"  # PA7 04-08
    ")"
)
"""Where a product line holds something other than digits (up to 18; the character after them
is neither ``*`` nor the line's end) in a number the model reads, or a PA1 without a
selection: what could make a warning. A run without any converts
lazily; a match sends the audit down the general path, which is exact whatever the text."""


def _product_runs(text: str) -> list[_Run]:
    """Every run of product lines in ``text`` (newlines normalised), in order."""
    runs: list[_Run] = []
    line = 0
    last = 0
    for match in _RUN.finditer(text):
        begin, stop = match.span()
        line += text.count("\n", last, begin)
        last = stop
        count = text.count("\n", begin, stop)
        if text.endswith("\n", begin, stop):
            stop -= 1
        else:
            count += 1  # the last line of the text, with no newline after it
        plain = text.startswith("PA1*", begin) and (
            _SUSPECT.search(text, begin - 1, stop) is None
            if begin
            else _SUSPECT.search("\n" + text[:stop]) is None
        )
        blocks = text[begin + 4 : stop].split("\nPA1*") if plain else None
        runs.append(_Run(line, line + count, blocks))
        line += count
    return runs


def _whole(run: _Run) -> _Run:
    """``run`` to be read line by line, by the general path."""
    return replace(run, blocks=None)


def _read_audit(
    lines: list[str],
    begin: int,
    end: int,
    *,
    has_dxs: bool,
    warnings: list[str],
    runs: Sequence[_Run],
) -> Audit:
    """The audit in ``lines[begin:end]`` (``begin`` is its DXS line if ``has_dxs``).

    When every run of product lines in it is plain, the lines between the runs are read one by
    one and the runs become :class:`LazyProducts`; otherwise every line is (``_scan``).
    """
    builder = _Builder(warnings)
    first = begin
    if has_dxs:
        builder.dxs(lines[begin].split("*"))
        first += 1
    inside = [run for run in runs if run.start < end and run.end > first]
    dxe: int | None = None
    products: Sequence[Product]
    if inside and all(run.blocks is not None for run in inside):
        blocks: list[str] = []
        index = first
        for run in inside:
            dxe = _scan(builder, lines, index, run.start)
            if dxe is not None:
                break
            assert run.blocks is not None
            blocks += run.blocks
            index = run.end
        else:
            dxe = _scan(builder, lines, index, end)
        products = LazyProducts(blocks)
    else:
        dxe = _scan(builder, lines, first, end)
        products = tuple(builder.products)
    if dxe is not None and _count_junk(lines, dxe + 1, end):
        warnings.append("ignored text after DXE")
    if builder.st is None and has_dxs:
        warnings.append("no ST segment")
    if dxe is None and builder.se is None:
        warnings.append("audit ends without SE or DXE (truncated)")
    start = first if builder.st is None else builder.st
    return builder.audit(lines, start, products, dxe=dxe is not None)


def _scan(builder: _Builder, lines: list[str], begin: int, end: int) -> int | None:
    """Read ``lines[begin:end]`` into ``builder``, line by line; the DXE's index if reached.

    A PA1 opens a product group, PA2-PA9 join it, the next PA1 or LS/LE (or the end) closes
    it and ``_Builder.product`` converts it; a PA2-PA9 with no group is an orphan.
    """
    get = builder.handlers.get
    products = builder.products
    product = builder.product
    group: list[list[str]] | None = None  # the open product group, converted when it closes
    dxe = None
    for index, line in enumerate(lines[begin:end], begin):
        f = line.split("*")
        tag = f[0]
        if tag == "PA1":
            if group is not None:
                products.append(product(group))
            group = [f]
        elif tag in _PRODUCT_MEMBERS:
            if group is None:
                builder.orphan(f)
            else:
                group.append(f)
        elif (handler := get(tag)) is not None:
            handler(f, index)
        elif tag in _LOOP_MARKS:
            if group is not None:
                products.append(product(group))
            group = None
            builder.loops += 1
        elif tag == "DXE":
            dxe = index
            break
        else:
            builder.unknown(f)
    if group is not None:
        products.append(product(group))
    return dxe


_PRODUCT_MEMBERS = frozenset(("PA2", "PA3", "PA4", "PA5", "PA6", "PA7", "PA8", "PA9"))
_LOOP_MARKS = frozenset(("LS", "LE"))
_AUDIT_SEGMENTS = frozenset(
    (
        "ID1",
        "ID4",
        "ID5",
        "CB1",
        "VA1",
        "VA2",
        "VA3",
        "CA1",
        "CA2",
        "CA3",
        "CA4",
        "BA1",
        "DA1",
        "DA2",
        "DB1",
        "DB2",
        "TA2",
        "PA1",
        "PA2",
        "EA1",
        "EA2",
        "EA3",
        "MA5",
    )
)
"""Segments that make a file without DXS an audit (an ST alone does not)."""
