"""What happened between two reads of one machine: sales, takings and events (sans-I/O).

Counters since initialisation never go back, so the difference of two reads' init counters is
exactly what was sold in between; that is the first choice. Where a VMC keeps no init counter,
the since-reset counters stand in: the VMC clears them at every read in AUTO mode (the default),
so the new read's value is what happened since the old one, unless both reads report the same
number of reads-with-reset (EA301), in which case nothing was cleared and the old value is
subtracted. An init counter that went down, a changed machine serial or a changed
initialisation date (EA4) means the controller was replaced or re-initialised: the new read
becomes the baseline, every figure falls back to the new read's since-reset counters, and a
warning says why, instead of reporting a negative sale.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TypeAlias

from protocols.evadts.records import (
    Audit,
    CashIn,
    CashOut,
    Event,
    EventCounter,
    JsonObject,
    JsonValue,
    Product,
    Sales,
)


class Basis(StrEnum):
    """Which counters a figure was computed from."""

    INIT = "init"
    RESET = "reset"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Change:
    """Vends and their value between two reads (``None``: the machine does not count them)."""

    vends: int | None = None
    value: int | None = None
    basis: Basis = Basis.NONE

    def to_json(self) -> JsonObject:
        return {"vends": self.vends, "value": self.value, "basis": self.basis.value}


@dataclass(frozen=True, slots=True)
class SelectionChange:
    """A selection's paid vends between two reads (PA2); ``selection`` is the delta's key."""

    selection: str
    change: Change

    def to_json(self) -> JsonObject:
        return {"selection": self.selection, **self.change.to_json()}


@dataclass(frozen=True, slots=True)
class EventIncrease:
    """An EA2 counter that went up between two reads."""

    code: str
    increase: int
    active: bool | None = None

    def to_json(self) -> JsonObject:
        return {
            "kind": "counter",
            "code": self.code,
            "date": None,
            "time": None,
            "duration": None,
            "count": self.increase,
            "active": self.active,
        }


@dataclass(frozen=True, slots=True)
class AuditDelta:
    """Everything ``delta`` found; money in the new read's minor unit (``decimals``)."""

    baseline_reset: bool
    decimals: int
    selections: tuple[SelectionChange, ...]
    paid: Change
    test: Change
    free: Change
    cash: Change
    cash_in: Change
    cash_out: Change
    cashless: Change
    cashless2: Change
    tokens: Change
    new_events: tuple[Event, ...]
    event_increases: tuple[EventIncrease, ...]
    warnings: tuple[str, ...]

    def to_json(self) -> JsonObject:
        """What ``vmctl dex delta --json`` prints: a contract, add keys but never rename."""
        events: list[JsonValue] = [event.to_json() for event in self.new_events]
        events.extend(increase.to_json() for increase in self.event_increases)
        return {
            "baseline_reset": self.baseline_reset,
            "decimals": self.decimals,
            "selections": [selection.to_json() for selection in self.selections],
            "paid": self.paid.to_json(),
            "test": self.test.to_json(),
            "free": self.free.to_json(),
            "cash": self.cash.to_json(),
            "cash_in": self.cash_in.to_json(),
            "cash_out": self.cash_out.to_json(),
            "cashless": self.cashless.to_json(),
            "cashless2": self.cashless2.to_json(),
            "tokens": self.tokens.to_json(),
            "new_events": events,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True)
class _Rule:
    """How counters of this pair of reads are compared (see the module docstring)."""

    baseline: bool
    reset_kept: bool

    def change(self, old: Sales | None, new: Sales | None) -> Change:
        if new is None:
            return Change()
        if not self.baseline and old is not None and _has_init(old) and _has_init(new):
            return Change(
                _minus(new.vends_init, old.vends_init),
                _minus(new.value_init, old.value_init),
                Basis.INIT,
            )
        if new.vends_reset is None and new.value_reset is None:
            return Change()
        if self.reset_kept and old is not None:
            return Change(
                _since(old.vends_reset, new.vends_reset),
                _since(old.value_reset, new.value_reset),
                Basis.RESET,
            )
        return Change(new.vends_reset, new.value_reset, Basis.RESET)


def delta(old: Audit, new: Audit) -> AuditDelta:
    """Sales, takings and events between ``old`` and ``new``, two reads of one machine."""
    old_products = _by_selection(old.products)
    new_products = _by_selection(new.products)
    totals = _totals(old, new)
    rule, warnings = _rule(old, new, old_products, new_products)
    selections = []
    for key, product in new_products.items():
        previous = old_products.get(key)
        if previous is None and old_products:
            warnings.append(f"selection {key} is not in the old read; its reset counters used")
        selections.append(
            SelectionChange(
                key, rule.change(None if previous is None else previous.paid, product.paid)
            )
        )
    gone = [key for key in old_products if key not in new_products]
    if gone:
        warnings.append(f"selections missing from the new read: {', '.join(gone)}")
    changes = {name: rule.change(before, after) for name, (before, after) in totals.items()}
    return AuditDelta(
        baseline_reset=rule.baseline,
        decimals=new.currency.decimals,
        selections=tuple(selections),
        paid=changes["VA1"],
        test=changes["VA2"],
        free=changes["VA3"],
        cash=changes["CA2"],
        cash_in=changes["CA3"],
        cash_out=changes["CA4"],
        cashless=changes["DA2"],
        cashless2=changes["DB2"],
        tokens=changes["TA2"],
        new_events=_new_events(old.events, new.events),
        event_increases=_event_increases(old.event_counters, new.event_counters, rule),
        warnings=tuple(warnings),
    )


@dataclass(frozen=True, slots=True)
class CashDelta:
    """The coin mechanism between two reads: CA2 cash sales, CA3 money in, CA4 change out.

    Money only (``vends`` is None) except ``sales``; ``bills`` is CA304/CA308 as the file has
    it (whole units in old US files). Computed by the same rules as :func:`delta`.
    """

    baseline_reset: bool
    decimals: int
    sales: Change
    inserted: Change
    to_cashbox: Change
    to_tubes: Change
    bills: Change
    dispensed: Change
    manual: Change
    warnings: tuple[str, ...]

    def to_json(self) -> JsonObject:
        return {
            "baseline_reset": self.baseline_reset,
            "decimals": self.decimals,
            "sales": self.sales.to_json(),
            "inserted": self.inserted.to_json(),
            "to_cashbox": self.to_cashbox.to_json(),
            "to_tubes": self.to_tubes.to_json(),
            "bills": self.bills.to_json(),
            "dispensed": self.dispensed.to_json(),
            "manual": self.manual.to_json(),
            "warnings": list(self.warnings),
        }


def cash_delta(old: Audit, new: Audit) -> CashDelta:
    """What the coin mechanism took in and paid out between ``old`` and ``new``.

    Two reads far apart (a cash collection's) may have other reads between them: where a
    figure comes from since-reset counters and the VMC counted more than one read with reset
    (EA301) in between, it covers only the time since the last of them, and a warning says so.
    """
    rule, warnings = _rule(old, new, _by_selection(old.products), _by_selection(new.products))

    def cash_in(name: str) -> Change:
        return rule.change(_value(old.cash.cash_in, name), _value(new.cash.cash_in, name))

    def cash_out(name: str) -> Change:
        return rule.change(_value(old.cash.cash_out, name), _value(new.cash.cash_out, name))

    found = CashDelta(
        baseline_reset=rule.baseline,
        decimals=new.currency.decimals,
        sales=rule.change(old.cash.sales, new.cash.sales),
        inserted=cash_in("inserted"),
        to_cashbox=cash_in("to_cashbox"),
        to_tubes=cash_in("to_tubes"),
        bills=cash_in("bills"),
        dispensed=cash_out("dispensed"),
        manual=cash_out("manual"),
        warnings=(),
    )
    figures = (
        found.sales,
        found.inserted,
        found.to_cashbox,
        found.to_tubes,
        found.bills,
        found.dispensed,
        found.manual,
    )
    resets = _resets_between(old, new)
    if resets is not None and resets > 1 and any(f.basis is Basis.RESET for f in figures):
        warnings.append(
            f"{resets} reads with reset between the two: since-reset figures cover the last only"
        )
    return replace(found, warnings=tuple(warnings))


_Pair: TypeAlias = tuple[Sales | None, Sales | None]


def _rule(
    old: Audit, new: Audit, old_products: dict[str, Product], new_products: dict[str, Product]
) -> tuple[_Rule, list[str]]:
    """How the counters of ``old`` and ``new`` compare, and the warning when they cannot."""
    pairs = [(name, before, after) for name, (before, after) in _totals(old, new).items()]
    pairs.extend(
        (f"PA2 {key}", old_products[key].paid, product.paid)
        for key, product in new_products.items()
        if key in old_products
    )
    reasons = _baseline_reasons(old, new, pairs)
    warnings = ["new baseline: " + "; ".join(reasons)] if reasons else []
    return _Rule(bool(reasons), not reasons and _resets_unchanged(old, new)), warnings


def _totals(old: Audit, new: Audit) -> dict[str, _Pair]:
    """The machine-wide counter pairs, by the segment they come from."""
    return {
        "VA1": (old.paid, new.paid),
        "VA2": (old.test, new.test),
        "VA3": (old.free, new.free),
        "CA2": (old.cash.sales, new.cash.sales),
        "CA3": (_value(old.cash.cash_in, "inserted"), _value(new.cash.cash_in, "inserted")),
        "CA4": (_value(old.cash.cash_out, "dispensed"), _value(new.cash.cash_out, "dispensed")),
        "DA2": (old.cashless.sales, new.cashless.sales),
        "DB2": (old.cashless2.sales, new.cashless2.sales),
        "TA2": (old.tokens.sales, new.tokens.sales),
    }


def _value(record: CashIn | CashOut | None, name: str) -> Sales | None:
    """One money counter of CA3 or CA4 (``inserted``, ``to_tubes``, ``dispensed`` ...) as a
    value-only counter pair."""
    if record is None:
        return None
    init: int | None = getattr(record, f"{name}_init")
    reset: int | None = getattr(record, f"{name}_reset")
    return Sales(value_init=init, value_reset=reset)


def _by_selection(products: Iterable[Product]) -> dict[str, Product]:
    """Products by selection; one without is ``#<position>``, a repeated one ``<sel>#<n>``."""
    keyed: dict[str, Product] = {}
    seen: Counter[str] = Counter()
    for position, product in enumerate(products, 1):
        base = product.selection if product.selection is not None else f"#{position}"
        seen[base] += 1
        keyed[base if seen[base] == 1 else f"{base}#{seen[base]}"] = product
    return keyed


def _baseline_reasons(
    old: Audit, new: Audit, pairs: list[tuple[str, Sales | None, Sales | None]]
) -> list[str]:
    """Why ``new`` cannot be compared with ``old`` counter by counter (empty: it can)."""
    reasons = []
    if _changed(old.machine.serial, new.machine.serial):
        reasons.append(f"machine serial changed from {old.machine.serial} to {new.machine.serial}")
    if _changed(old.initialised, new.initialised):
        reasons.append("initialisation date (EA4) changed")
    fallen = [name for name, before, after in pairs if _went_down(before, after)]
    if fallen:
        reasons.append(f"counters since initialisation went down ({', '.join(fallen)})")
    return reasons


def _resets_between(old: Audit, new: Audit) -> int | None:
    """How many reads with reset (EA301) the VMC counted from ``old`` to ``new``, if it says."""
    if old.reads is None or new.reads is None:
        return None
    before, after = old.reads.reads_with_reset, new.reads.reads_with_reset
    return None if before is None or after is None else after - before


def _resets_unchanged(old: Audit, new: Audit) -> bool:
    """Both reads report the same number of reads with reset (EA301): nothing was cleared."""
    if old.reads is None or new.reads is None or old.reads.reads_with_reset is None:
        return False
    return old.reads.reads_with_reset == new.reads.reads_with_reset


def _new_events(old: Iterable[Event], new: Iterable[Event]) -> tuple[Event, ...]:
    """EA1 entries of ``new`` that ``old`` does not have (as many times as they repeat)."""
    known = Counter((event.code, event.date, event.time) for event in old)
    fresh = []
    for event in new:
        key = (event.code, event.date, event.time)
        if known[key]:
            known[key] -= 1
        else:
            fresh.append(event)
    return tuple(fresh)


def _event_increases(
    old: Iterable[EventCounter], new: Iterable[EventCounter], rule: _Rule
) -> tuple[EventIncrease, ...]:
    """EA2 counters that went up; the n-th EA2 of a code pairs with the old read's n-th."""
    previous: dict[str, list[EventCounter]] = {}
    for counter in old:
        previous.setdefault(counter.code, []).append(counter)
    increases = []
    for counter in new:
        earlier = previous.get(counter.code)
        match = earlier.pop(0) if earlier else None
        increase = rule.change(_as_sales(match), _as_sales(counter)).vends
        if increase is not None and increase > 0:
            increases.append(EventIncrease(counter.code, increase, counter.active))
    return tuple(increases)


def _as_sales(counter: EventCounter | None) -> Sales | None:
    if counter is None:
        return None
    return Sales(vends_init=counter.count_init, vends_reset=counter.count_reset)


def _changed(before: object, after: object) -> bool:
    """Both reads say, and they disagree."""
    return before is not None and after is not None and before != after


def _has_init(sales: Sales) -> bool:
    return sales.vends_init is not None or sales.value_init is not None


def _went_down(before: Sales | None, after: Sales | None) -> bool:
    if before is None or after is None:
        return False
    return _fell(before.vends_init, after.vends_init) or _fell(before.value_init, after.value_init)


def _fell(before: int | None, after: int | None) -> bool:
    return before is not None and after is not None and after < before


def _minus(after: int | None, before: int | None) -> int | None:
    return None if after is None or before is None else after - before


def _since(before: int | None, after: int | None) -> int | None:
    """A since-reset counter that was not cleared in between, less its old value."""
    if after is None or before is None or after < before:
        return after
    return after - before
