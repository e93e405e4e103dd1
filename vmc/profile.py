"""The compatibility self-test: what vmc learned about this machine, and what that means.

Sans-I/O: facts in, verdicts out. The facts come from the MDB bus (the VMC's SETUP, EXPANSION
REQUEST ID and OPTIONAL FEATURES, cash sales, the bus process's heartbeats) and from the audit
reads (:func:`dex_facts`); :func:`verdicts` says what they mean for vmc's features ("remote
vend: yes; select-first: no; per-slot stock from DEX: yes"). :class:`Profile` is what the
journal keeps and the cloud hears (``device.profile``), :func:`format_profile` what a
technician reads (``vmctl selftest``). :mod:`vmc.services.profile_service` does the I/O.

A profile *changes* when a fact or a verdict does. The timing figures move all the time; they are
shown and sent with a change, never a change themselves; so is the last audit read's failure.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from protocols.evadts import tube_contents
from protocols.evadts.records import Audit, RawRecord
from protocols.mdb import events as ev
from protocols.mdb.commands import Feature
from vmc.services import bus_messages as msg

RESPONSE_WINDOW_MS = 5.0
"""MDB's answer window: a reader must start answering within 5 ms."""
RATE_WINDOW = 10
"""Heartbeats (about a second apart) over which the VMC's poll rate is measured."""
TIMED = frozenset({"answer_timing"})
"""Verdicts drawn from the timing figures: shown and sent, never a change themselves."""


@dataclass(frozen=True, slots=True)
class VmcIdentity:
    """EXPANSION REQUEST ID: who made the VMC and what it runs."""

    manufacturer: str
    serial: str
    model: str
    software_version: int


@dataclass(frozen=True, slots=True)
class MdbFacts:
    """What the VMC said on the bus. ``features``: the level-3 options it enabled (None: it
    never sent OPTIONAL FEATURES since its last SETUP); prices in minor units."""

    vmc_level: int | None = None
    operating_level: int | None = None
    columns: int = 0
    rows: int = 0
    display_info: int = 0
    max_price: int | None = None
    min_price: int | None = None
    identity: VmcIdentity | None = None
    features: int | None = None
    cash_sales_seen: bool = False

    def feature(self, bit: Feature) -> bool:
        return self.features is not None and bool(self.features & bit)


def observe(facts: MdbFacts, report: object) -> MdbFacts:
    """The facts after one report from the bus process; unchanged for anything else."""
    match report:
        case ev.Configured():
            return dataclasses.replace(
                facts,
                vmc_level=report.vmc_level,
                operating_level=report.operating_level,
                columns=report.columns,
                rows=report.rows,
                display_info=report.display_info,
                features=None,  # a new SETUP: the options are negotiated again
            )
        case ev.PricesSet(max_price=high, min_price=low):
            return dataclasses.replace(facts, max_price=high, min_price=low)
        case ev.VmcIdentified():
            identity = VmcIdentity(
                report.manufacturer.strip(),
                report.serial.strip(),
                report.model.strip(),
                report.software_version,
            )
            return dataclasses.replace(facts, identity=identity)
        case ev.FeaturesEnabled(features=features):
            return dataclasses.replace(facts, features=features)
        case ev.CashSaleReported() if not facts.cash_sales_seen:
            return dataclasses.replace(facts, cash_sales_seen=True)
    return facts


@dataclass(frozen=True, slots=True)
class BusTiming:
    """The bus as the bus process saw it: the VMC's POLLs per second (over the last
    :data:`RATE_WINDOW` heartbeats) and the reader's answer times (read to written), on
    average and at most, over every answer since vmcd started."""

    polls_per_s: float | None = None
    answers: int = 0
    answer_mean_ms: float | None = None
    answer_max_ms: float | None = None


class TimingTracker:
    """Folds the bus process's heartbeats into :class:`BusTiming` (``now``: monotonic s).

    A heartbeat's counters start again with each bus process, so only their growth counts.
    """

    def __init__(self) -> None:
        self._beats: deque[tuple[float, int]] = deque(maxlen=RATE_WINDOW)
        self._last: msg.Heartbeat | None = None
        self._answers = 0
        self._sum_s = 0.0
        self._max_s: float | None = None

    def heard(self, beat: msg.Heartbeat, now: float) -> None:
        last = self._last
        if last is None or beat.answers < last.answers or beat.polls < last.polls:
            last = msg.Heartbeat("", 0, None, 0, 0)  # a new bus process
            self._beats.clear()
        self._answers += beat.answers - last.answers
        self._sum_s += beat.answer_sum_s - last.answer_sum_s
        if beat.answers > last.answers:
            self._max_s = max(self._max_s or 0.0, beat.answer_max_s)
        self._beats.append((now, beat.polls))
        self._last = beat

    def timing(self) -> BusTiming:
        rate = None
        if len(self._beats) >= 2:
            (t0, p0), (t1, p1) = self._beats[0], self._beats[-1]
            rate = round((p1 - p0) / (t1 - t0), 1) if t1 > t0 else None
        answers = self._answers
        return BusTiming(
            rate,
            answers,
            round(self._sum_s / answers * 1000, 3) if answers else None,
            None if self._max_s is None else round(self._max_s * 1000, 3),
        )


@dataclass(frozen=True, slots=True)
class DexFacts:
    """What the audit reads showed. ``answered``: a read ever worked (a capability, kept
    when a later one fails); ``fields``, ``selections`` ... come from the last good one.
    ``last_error``: the last read's failure (None when it worked), not part of a change."""

    configured: bool = False
    protocol: str | None = None
    answered: bool = False
    fields: tuple[str, ...] = ()
    selections: int = 0
    priced: int = 0
    counted: int = 0
    tube_value: bool = False
    machine_serial: str | None = None
    machine_model: str | None = None
    last_error: str | None = None


def _ids(records: Iterable[RawRecord]) -> set[str]:
    return {record[0] for record in records}


def _segment_order(name: str) -> tuple[str, int, str]:
    """``CA2`` before ``CA15``: by the letters, then the number."""
    letters = name.rstrip("0123456789")
    number = name[len(letters) :]
    return letters, int(number) if number else 0, name


def audit_fields(audit: Audit) -> tuple[str, ...]:
    """The EVA-DTS records an audit holds (by segment id: ``PA1``, ``CA15``, ``EA2`` ...)."""
    found: set[str] = set()
    machine, cash, products = audit.machine, audit.cash, audit.products
    flags = {
        "ID1": bool(machine.serial or machine.model),
        "CB1": machine.board is not None,
        "ID4": bool(audit.currency.numeric or audit.currency.alpha),
        "VA1": audit.paid is not None,
        "VA2": audit.test is not None,
        "VA3": audit.free is not None,
        "CA1": cash.changer is not None,
        "CA2": cash.sales is not None,
        "CA3": cash.cash_in is not None,
        "CA4": cash.cash_out is not None,
        "BA1": audit.bills.device is not None,
        "DA1": audit.cashless.device is not None,
        "DA2": audit.cashless.sales is not None,
        "DB1": audit.cashless2.device is not None,
        "DB2": audit.cashless2.sales is not None,
        "TA2": audit.tokens.sales is not None,
        "PA1": any(p.selection is not None for p in products),
        "PA2": any(p.paid is not None for p in products),
        "PA3": any(p.test is not None for p in products),
        "PA4": any(p.free is not None for p in products),
        "PA7": any(p.by_payment for p in products),
        "EA1": bool(audit.events),
        "EA2": bool(audit.event_counters),
        "EA3": audit.reads is not None,
        "EA7": audit.power_outages is not None,
        "MA5": bool(audit.manufacturer),
    }
    found.update(name for name, present in flags.items() if present)
    for unit in (cash, audit.bills, audit.cashless, audit.cashless2, audit.tokens):
        found |= _ids(unit.other)
    for product in products:
        found |= _ids(product.other)
    found |= _ids(audit.other)
    return tuple(sorted(found, key=_segment_order))


def dex_facts(audit: Audit, protocol: str) -> DexFacts:
    """The facts of a good read of ``audit`` over ``protocol`` (``ucs`` or ``ddcmp``)."""
    products = [p for p in audit.products if p.selection is not None]
    return DexFacts(
        configured=True,
        protocol=protocol,
        answered=True,
        fields=audit_fields(audit),
        selections=len(products),
        priced=sum(p.price is not None for p in products),
        counted=sum(p.paid is not None and p.paid.vends_init is not None for p in products),
        tube_value=tube_contents(audit.cash) is not None,
        machine_serial=audit.machine.serial,
        machine_model=audit.machine.model,
    )


class Answer(StrEnum):
    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a fact means for one of vmc's features: ``label: answer`` and why."""

    key: str
    label: str
    answer: Answer
    why: str


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything learned, as kept in the journal. ``updated_at``: when it last changed."""

    mdb: MdbFacts = field(default_factory=MdbFacts)
    timing: BusTiming = field(default_factory=BusTiming)
    dex: DexFacts = field(default_factory=DexFacts)
    updated_at: float | None = None

    def facts(self) -> dict[str, Any]:
        """What a change is judged on: the facts and verdicts, without timing and errors."""
        return {
            "mdb": dataclasses.asdict(self.mdb),
            "dex": dataclasses.asdict(dataclasses.replace(self.dex, last_error=None)),
            "verdicts": {v.key: v.answer.value for v in verdicts(self) if v.key not in TIMED},
        }


def _yes(flag: bool) -> Answer:
    return Answer.YES if flag else Answer.NO


def _mdb_verdicts(mdb: MdbFacts) -> list[Verdict]:
    if mdb.vmc_level is None:
        why = "the VMC has not set the reader up yet (no SETUP seen)"
        return [
            Verdict(key, label, Answer.UNKNOWN, why)
            for key, label in (
                ("remote_vend", "remote vend"),
                ("select_first", "select-first"),
                ("test_vends", "test vends marked on the VMC"),
                ("wide_prices", "32-bit prices"),
                ("display", "text on the VMC's display"),
            )
        ]
    level, operating = mdb.vmc_level, mdb.operating_level or 1
    out = [
        Verdict(
            "remote_vend",
            "remote vend",
            Answer.YES,
            f"the VMC runs a cashless reader at level {operating} (it asked for {level})",
        )
    ]
    if operating < 3:
        select_first = Verdict(
            "select_first", "select-first", Answer.NO, f"always-idle needs level 3, not {operating}"
        )
    elif mdb.features is None:
        select_first = Verdict(
            "select_first", "select-first", Answer.NO, "the VMC enabled no level-3 options"
        )
    else:
        on = mdb.feature(Feature.ALWAYS_IDLE)
        why = "the VMC enabled always-idle" if on else "the VMC did not enable always-idle"
        select_first = Verdict("select_first", "select-first", _yes(on), why)
    out.append(select_first)
    out.append(
        Verdict(
            "test_vends",
            "test vends marked on the VMC",
            _yes(operating >= 2),
            "BEGIN SESSION carries the payment type (level 2+)"
            if operating >= 2
            else "level 1 has no payment type: the VMC counts a test vend as a sale at 0",
        )
    )
    wide = mdb.feature(Feature.WIDE_MONEY)
    out.append(
        Verdict(
            "wide_prices",
            "32-bit prices",
            _yes(wide),
            "the VMC enabled expanded currency" if wide else "prices are 16-bit on this bus",
        )
    )
    size = mdb.columns * mdb.rows
    out.append(
        Verdict(
            "display",
            "text on the VMC's display",
            _yes(size > 0),
            f"{mdb.columns} x {mdb.rows} characters" if size else "the VMC has no display",
        )
    )
    return out


def _bus_verdicts(mdb: MdbFacts, timing: BusTiming) -> list[Verdict]:
    cash = Verdict(
        "cash_sales",
        "cash sales on the bus",
        Answer.YES if mdb.cash_sales_seen else Answer.UNKNOWN,
        "the VMC reports its cash sales"
        if mdb.cash_sales_seen
        else "none seen yet (a VMC reports them only if the reader offers cash sale)",
    )
    worst = timing.answer_max_ms
    if worst is None:
        in_time = Verdict(
            "answer_timing", "answers in time", Answer.UNKNOWN, "no answer measured yet"
        )
    else:
        ok = worst < RESPONSE_WINDOW_MS
        in_time = Verdict(
            "answer_timing",
            "answers in time",
            _yes(ok),
            f"at most {worst:.2f} ms of {RESPONSE_WINDOW_MS:g} ms, {timing.answers} answers",
        )
    return [cash, in_time]


def _dex_verdicts(dex: DexFacts) -> list[Verdict]:
    keys = (
        ("dex", "DEX audit"),
        ("slot_stock", "per-slot stock from DEX"),
        ("slot_prices", "per-slot prices from DEX"),
        ("low_change", "low change from DEX"),
        ("machine_events", "machine events from DEX"),
    )
    if not dex.configured or not dex.answered:
        answer = Answer.NO if not dex.configured else Answer.UNKNOWN
        why = "no DEX port configured" if not dex.configured else "no audit read yet"
        if dex.configured and dex.last_error:
            answer, why = Answer.NO, f"no read worked yet: {dex.last_error}"
        return [Verdict(key, label, answer, why) for key, label in keys]
    fields = set(dex.fields)
    events = sorted(fields & {"EA1", "EA2"})
    return [
        Verdict("dex", "DEX audit", Answer.YES, f"{dex.protocol} reads work"),
        Verdict(
            "slot_stock",
            "per-slot stock from DEX",
            _yes(dex.counted > 0),
            f"PA2 vend counts for {dex.counted} of {dex.selections} selections (PA1)",
        ),
        Verdict(
            "slot_prices",
            "per-slot prices from DEX",
            _yes(dex.priced > 0),
            f"PA1 prices for {dex.priced} of {dex.selections} selections",
        ),
        Verdict(
            "low_change",
            "low change from DEX",
            _yes(dex.tube_value),
            "CA15 holds the coin tubes' value"
            if dex.tube_value
            else "no usable CA15 (coin tubes) in the audit",
        ),
        Verdict(
            "machine_events",
            "machine events from DEX",
            _yes(bool(events)),
            f"{' and '.join(events)} in the audit" if events else "no EA1/EA2 in the audit",
        ),
    ]


def verdicts(profile: Profile) -> list[Verdict]:
    """What the facts mean, feature by feature, in a fixed order."""
    return [
        *_mdb_verdicts(profile.mdb),
        *_bus_verdicts(profile.mdb, profile.timing),
        *_dex_verdicts(profile.dex),
    ]


def to_json(profile: Profile) -> dict[str, Any]:
    """The profile as ``vmctl selftest --json`` prints it and ``device.profile`` carries it."""
    mdb, timing, dex = profile.mdb, profile.timing, profile.dex
    identity = mdb.identity
    return {
        "mdb": {
            "vmc_level": mdb.vmc_level,
            "operating_level": mdb.operating_level,
            "vmc": None if identity is None else dataclasses.asdict(identity),
            "features": {
                "enabled": mdb.features,
                "always_idle": mdb.feature(Feature.ALWAYS_IDLE),
                "expanded_currency": mdb.feature(Feature.WIDE_MONEY),
                "negative_vend": mdb.feature(Feature.NEGATIVE_VEND),
            },
            "max_price": mdb.max_price,
            "min_price": mdb.min_price,
            "display": {"columns": mdb.columns, "rows": mdb.rows, "info": mdb.display_info},
            "cash_sales_seen": mdb.cash_sales_seen,
            "timing": dataclasses.asdict(timing),
        },
        "dex": {
            "configured": dex.configured,
            "protocol": dex.protocol,
            "answered": dex.answered,
            "fields": list(dex.fields),
            "selections": dex.selections,
            "priced": dex.priced,
            "counted": dex.counted,
            "tube_value": dex.tube_value,
            "machine": {"serial": dex.machine_serial, "model": dex.machine_model},
            "last_error": dex.last_error,
        },
        "verdicts": {
            v.key: {"label": v.label, "answer": v.answer.value, "why": v.why}
            for v in verdicts(profile)
        },
        "updated_at": profile.updated_at,
    }


def from_json(data: Mapping[str, Any]) -> Profile:
    """The profile :func:`to_json` wrote (the journal's copy); verdicts are derived again."""
    mdb, dex = data["mdb"], data["dex"]
    identity = mdb["vmc"]
    return Profile(
        MdbFacts(
            mdb["vmc_level"],
            mdb["operating_level"],
            mdb["display"]["columns"],
            mdb["display"]["rows"],
            mdb["display"]["info"],
            mdb["max_price"],
            mdb["min_price"],
            None if identity is None else VmcIdentity(**identity),
            mdb["features"]["enabled"],
            mdb["cash_sales_seen"],
        ),
        BusTiming(**mdb["timing"]),
        DexFacts(
            dex["configured"],
            dex["protocol"],
            dex["answered"],
            tuple(dex["fields"]),
            dex["selections"],
            dex["priced"],
            dex["counted"],
            dex["tube_value"],
            dex["machine"]["serial"],
            dex["machine"]["model"],
            dex["last_error"],
        ),
        data["updated_at"],
    )


def changed_keys(before: Profile, after: Profile) -> list[str]:
    """The facts and verdicts that differ, as dotted paths (``mdb.vmc_level``,
    ``verdicts.select_first``); empty when the profile did not change."""
    old, new = before.facts(), after.facts()
    return [
        f"{part}.{key}"
        for part in ("mdb", "dex", "verdicts")
        for key in sorted(set(old[part]) | set(new[part]))
        if old[part].get(key) != new[part].get(key)
    ]


def _number(value: float | None, spec: str) -> str:
    return "?" if value is None else format(value, spec)


def _money(amount: int | None, decimals: int) -> str:
    if amount is None:
        return "?"
    return f"{amount / 10**decimals:.{decimals}f}" if decimals else str(amount)


def format_profile(data: Mapping[str, Any], *, decimals: int = 2) -> str:
    """The profile (as :func:`to_json` gives it) for a technician: facts, then verdicts."""
    mdb, dex = data["mdb"], data["dex"]
    lines = ["What vmc learned about this machine"]

    def row(name: str, text: str) -> None:
        lines.append(f"  {name:<9} {text}")

    vmc = mdb["vmc"]
    if vmc is None:
        row("VMC", "not identified (no EXPANSION REQUEST ID seen)")
    else:
        row(
            "VMC",
            f"{vmc['manufacturer'] or '?'} {vmc['model'] or '?'}, serial {vmc['serial'] or '?'},"
            f" software {vmc['software_version']:#06x}",
        )
    if mdb["vmc_level"] is None:
        row("MDB", "not set up by the VMC yet")
    else:
        features = mdb["features"]
        options = ", ".join(
            f"{name.replace('_', ' ')} {'on' if features[name] else 'off'}"
            for name in ("always_idle", "expanded_currency", "negative_vend")
        )
        row("MDB", f"level {mdb['vmc_level']} (reader at {mdb['operating_level']}); {options}")
        row(
            "Prices",
            f"max {_money(mdb['max_price'], decimals)}, min {_money(mdb['min_price'], decimals)}",
        )
        display = mdb["display"]
        size = f"{display['columns']} x {display['rows']}" if display["columns"] else "none"
        row("Display", size)
    timing = mdb["timing"]
    if timing["answers"]:
        rate = timing["polls_per_s"]
        every = f" (every {1000 / rate:.0f} ms)" if rate else ""
        row(
            "Bus",
            f"{_number(rate, '.1f')} polls/s{every}; answers in"
            f" {_number(timing['answer_mean_ms'], '.2f')} ms on average,"
            f" {_number(timing['answer_max_ms'], '.2f')} ms at most ({timing['answers']} answers)",
        )
    else:
        row("Bus", "no answers measured yet")
    if not dex["configured"]:
        row("DEX", "no DEX port configured")
    elif not dex["answered"]:
        row("DEX", f"{dex['protocol']}: no audit read yet")
    else:
        row(
            "DEX",
            f"{dex['protocol']}, {dex['selections']} selections;"
            f" records {' '.join(dex['fields']) or 'none'}",
        )
    if dex["last_error"]:
        row("", f"the last read failed: {dex['last_error']}")
    lines.append("What it means")
    for verdict in data["verdicts"].values():
        lines.append(f"  {verdict['label'] + ':':<30} {verdict['answer']:<8} {verdict['why']}")
    return "\n".join(lines)
