"""Stock levels per selection and per ingredient, as a pure state machine.

Theory of operation
-------------------
:class:`Stock` is an immutable state; :meth:`Stock.apply` takes one operation and returns the
next state with the events it caused, or raises :class:`StockError` and changes nothing. No
clock is read (every operation carries its time ``at``), nothing is written: the journal later
stores the operation, its events as the stock history and the new levels in one transaction,
and de-duplicates operation ids. The core only answers "already applied?" when given the set of
applied ids, and then changes nothing.

What is counted (a *stock key*):

- :class:`SlotKey` for each selection that sells a plain product: the items on that spiral;
- :class:`IngredientKey` for each ingredient: what recipes consume, shared by their selections.

Operations and their rules:

- :class:`Vend`: a successful vend seen on the bus (cashless or cash). A plain product takes 1
  from its selection, a recipe takes each ingredient's amount. Paid, free and test vends all
  take stock, because the motor turned and a product left the machine either way; the vend
  type only decides money and statistics (``sales_since_refill`` counts paid vends, the seed
  002 "sales") and ``paid_vends``, the since-ever count per selection that reconciliation
  compares with the audit's PA2 (kept for every selection, known to the planogram or not).
  Stock never goes below zero: a vend from an empty key leaves 0, and the units
  it lacked are reported by a :class:`Discrepancy` (``short``), so the sale is counted and does
  not vanish. A vend of a selection the planogram does not know is a ``unknown_selection``
  discrepancy; before any planogram exists vends are ignored (the machine does not track
  stock yet, and every vend would otherwise be an alarm).
- :class:`Adjust`: refill (+) or unload (-) by amounts, several keys at once, all or nothing
  (seed 003 ``loading`` with ``add``). An unload of more than the level is refused: the count is
  wrong and an :class:`Inventory` is the way to say what is really there. A zero amount is
  refused (seed 003 refuses an empty load too). A refill resets the selection's
  ``sales_since_refill``.
- :class:`Inventory`: absolute levels for the keys named; other keys keep theirs (seed 003).
- :class:`Restock`: every key to its par level (seed 004 ``restock_only``); for ingredients too,
  because they are a recipe selection's stock.
- :class:`ChangePlanogram`: a selection keeps its level only when it sells the same plain
  product in the new planogram, an ingredient only when it is still defined; every other key
  with stock is unloaded to 0 with a ``planogram`` :class:`LevelChanged` record (seed 003
  unloads products that left the planogram; a coil that now sells another product holds a
  count of the wrong thing, so it is unloaded too). New keys start at 0 and need loading.

Levels are not clamped to capacity (seed 003: a load above capacity is normal) but stay within
0..:data:`~vmc.planogram.MAX_QUANTITY`.

``last_service_at`` is the time of the last refill, unload, inventory or restock: someone at
the machine counting or loading stock (a vend or a planogram change is not a visit).

Alarms: each key has a condition, ``empty`` at 0, ``low`` at or under its alarm level,
otherwise ``ok``. After every operation the condition of every key is compared with the one
last reported and each change is ONE :class:`AlarmChanged` event, so a low or empty alarm is
raised once when crossing and cleared (``ok``, or ``low`` when an empty key is refilled only up
to its alarm level) by the operation that lifts it. A key that leaves the planogram clears its
alarm. ``need_loading`` (seed 003's service flag) is true while any key is at or under its
alarm level.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from protocols.errors import VmcError
from vmc.cloud.messages import VendType
from vmc.planogram import MAX_QUANTITY, Limits, Planogram

MAX_OP_ID_LENGTH = 128


class StockError(VmcError):
    """An operation was refused; the state did not change."""


@dataclass(frozen=True, slots=True, order=True)
class SlotKey:
    """The count of a plain product on one selection (MDB item number)."""

    number: int


@dataclass(frozen=True, slots=True, order=True)
class IngredientKey:
    id: str


StockKey = SlotKey | IngredientKey


class Condition(StrEnum):
    OK = "ok"
    LOW = "low"
    EMPTY = "empty"


class Reason(StrEnum):
    """Why a level changed: the stock history's kinds."""

    VEND = "vend"
    REFILL = "refill"
    UNLOAD = "unload"
    INVENTORY = "inventory"
    RESTOCK = "restock"
    PLANOGRAM = "planogram"


class DiscrepancyKind(StrEnum):
    SHORT = "short"
    UNKNOWN_SELECTION = "unknown_selection"


# --- operations -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Vend:
    op_id: str
    at: float
    selection: int
    vend_type: VendType = VendType.PAID


@dataclass(frozen=True, slots=True)
class Adjust:
    """Refill (positive amounts) and unload (negative amounts), all or nothing."""

    op_id: str
    at: float
    changes: tuple[tuple[StockKey, int], ...]


@dataclass(frozen=True, slots=True)
class Inventory:
    op_id: str
    at: float
    levels: tuple[tuple[StockKey, int], ...]


@dataclass(frozen=True, slots=True)
class Restock:
    op_id: str
    at: float


@dataclass(frozen=True, slots=True)
class ChangePlanogram:
    op_id: str
    at: float
    planogram: Planogram


Operation = Vend | Adjust | Inventory | Restock | ChangePlanogram


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LevelChanged:
    key: StockKey
    before: int
    after: int
    reason: Reason


@dataclass(frozen=True, slots=True)
class AlarmChanged:
    key: StockKey
    before: Condition
    after: Condition
    level: int


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """A vend the stock could not account for; ``missing`` units were not in the count."""

    kind: DiscrepancyKind
    selection: int
    key: StockKey | None
    missing: int


@dataclass(frozen=True, slots=True)
class PlanogramChanged:
    before: int | None
    version: int


Event = LevelChanged | AlarmChanged | Discrepancy | PlanogramChanged


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of :meth:`Stock.apply`; a duplicate leaves ``state`` as it was."""

    state: Stock
    events: tuple[Event, ...]
    duplicate: bool = False


def condition(level: int, limits: Limits) -> Condition:
    if level == 0:
        return Condition.EMPTY
    if level <= limits.alarm_level:
        return Condition.LOW
    return Condition.OK


def stock_limits(planogram: Planogram) -> dict[StockKey, Limits]:
    """Every counted key of a planogram with its limits."""
    keys: dict[StockKey, Limits] = {
        SlotKey(s.number): s.limits for s in planogram.selections if s.limits is not None
    }
    keys.update({IngredientKey(i.id): i.limits for i in planogram.ingredients})
    return keys


@dataclass(frozen=True, slots=True)
class Stock:
    planogram: Planogram | None = None
    levels: Mapping[StockKey, int] = field(default_factory=dict)
    conditions: Mapping[StockKey, Condition] = field(default_factory=dict)
    sales_since_refill: Mapping[int, int] = field(default_factory=dict)
    last_sale_at: float | None = None
    last_loading_at: float | None = None
    paid_vends: Mapping[int, int] = field(default_factory=dict)
    last_service_at: float | None = None

    @classmethod
    def restore(
        cls,
        planogram: Planogram | None,
        levels: Mapping[StockKey, int],
        conditions: Mapping[StockKey, Condition],
        *,
        sales_since_refill: Mapping[int, int] | None = None,
        last_sale_at: float | None = None,
        last_loading_at: float | None = None,
        paid_vends: Mapping[int, int] | None = None,
        last_service_at: float | None = None,
    ) -> Stock:
        """The state a journal stored, made whole against its planogram.

        Every key of the planogram gets a level (0 when none was stored) and keys it no longer
        counts are dropped; the stored conditions are kept as the ones last reported, so an
        alarm raised before a restart is not raised again after it.
        """
        counted = dict(paid_vends or {})
        if planogram is None:
            return cls(paid_vends=counted, last_service_at=last_service_at)
        keys = stock_limits(planogram)
        return cls(
            planogram,
            {key: levels.get(key, 0) for key in keys},
            {key: conditions[key] for key in keys if key in conditions},
            {n: c for n, c in (sales_since_refill or {}).items() if SlotKey(n) in keys},
            last_sale_at,
            last_loading_at,
            counted,
            last_service_at,
        )

    @property
    def need_loading(self) -> bool:
        return any(c is not Condition.OK for c in self.conditions.values())

    def apply(self, op: Operation, applied: Container[str] = frozenset()) -> Applied:
        """The next state and its events; a duplicate ``op_id`` changes nothing."""
        if not isinstance(op.op_id, str) or not 0 < len(op.op_id) <= MAX_OP_ID_LENGTH:
            raise StockError(f"op_id must be a string of 1..{MAX_OP_ID_LENGTH} characters")
        if op.op_id in applied:
            return Applied(self, (), duplicate=True)
        if isinstance(op, Vend):
            return self._vend(op)
        if isinstance(op, ChangePlanogram):
            return self._change_planogram(op)
        planogram = self._require_planogram()
        visited = replace(self, last_service_at=op.at)
        if isinstance(op, Restock):
            par = {key: lim.par_level for key, lim in stock_limits(planogram).items()}
            everything = {s.number for s in planogram.selections}
            return replace(visited, last_loading_at=op.at)._set(par, Reason.RESTOCK, everything)
        if isinstance(op, Inventory):
            levels = dict(self._checked_pairs(op.levels, planogram))
            for key, level in levels.items():
                if not 0 <= level <= MAX_QUANTITY:
                    raise StockError(f"{_name(key)}: level must be in 0..{MAX_QUANTITY}")
            return visited._set(levels, Reason.INVENTORY, _slots(levels))
        return visited._adjust(op, planogram)

    # --- operations ---

    def _vend(self, op: Vend) -> Applied:
        if op.vend_type is VendType.PAID:
            counted = {**self.paid_vends, op.selection: self.paid_vends.get(op.selection, 0) + 1}
            return replace(self, paid_vends=counted)._take(op)
        return self._take(op)

    def _take(self, op: Vend) -> Applied:
        if self.planogram is None:
            return Applied(self, ())
        selection = self.planogram.selection(op.selection)
        if selection is None:
            return Applied(
                self, (Discrepancy(DiscrepancyKind.UNKNOWN_SELECTION, op.selection, None, 1),)
            )
        product = self.planogram.product(selection.product)
        use: dict[StockKey, int] = (
            {IngredientKey(line.ingredient): line.amount for line in product.recipe}
            if product.composite
            else {SlotKey(selection.number): 1}
        )
        short = tuple(
            Discrepancy(DiscrepancyKind.SHORT, op.selection, key, amount - self.levels[key])
            for key, amount in use.items()
            if self.levels[key] < amount
        )
        after = {key: max(0, self.levels[key] - amount) for key, amount in use.items()}
        base = self
        if op.vend_type is VendType.PAID:
            sales = {**self.sales_since_refill}
            sales[op.selection] = sales.get(op.selection, 0) + 1
            base = replace(self, sales_since_refill=sales, last_sale_at=op.at)
        result = base._set(after, Reason.VEND, set())
        return Applied(result.state, short + result.events)

    def _adjust(self, op: Adjust, planogram: Planogram) -> Applied:
        levels: dict[StockKey, int] = {}
        for key, amount in self._checked_pairs(op.changes, planogram):
            if amount == 0:
                raise StockError(f"{_name(key)}: amount must not be 0")
            level = self.levels[key] + amount
            if level < 0:
                raise StockError(
                    f"{_name(key)}: cannot unload {-amount} from {self.levels[key]};"
                    " take an inventory instead"
                )
            if level > MAX_QUANTITY:
                raise StockError(f"{_name(key)}: level would exceed {MAX_QUANTITY}")
            levels[key] = level
        refilled = {key: level for key, level in levels.items() if level > self.levels[key]}
        base = replace(self, last_loading_at=op.at) if refilled else self
        return base._set(levels, None, _slots(refilled))

    def _change_planogram(self, op: ChangePlanogram) -> Applied:
        new = op.planogram
        new_limits = stock_limits(new)
        old = self.planogram
        kept = {
            key
            for key in new_limits
            if key in self.levels
            and (isinstance(key, IngredientKey) or _same_product(old, new, key.number))
        }
        events: list[Event] = [PlanogramChanged(None if old is None else old.version, new.version)]
        events.extend(
            LevelChanged(key, level, 0, Reason.PLANOGRAM)
            for key, level in sorted(self.levels.items(), key=_by_key)
            if key not in kept and level > 0
        )
        levels = {key: self.levels[key] if key in kept else 0 for key in new_limits}
        sales = {
            number: count
            for number, count in self.sales_since_refill.items()
            if _same_product(old, new, number)
        }
        state = replace(self, planogram=new, levels=levels, sales_since_refill=sales)
        return state._with_alarms(tuple(events), self.conditions)

    # --- helpers ---

    def _require_planogram(self) -> Planogram:
        if self.planogram is None:
            raise StockError("no planogram: the machine does not track stock yet")
        return self.planogram

    def _checked_pairs(
        self, pairs: Iterable[tuple[StockKey, int]], planogram: Planogram
    ) -> list[tuple[StockKey, int]]:
        """The pairs of an operation, refused when empty, repeated or naming no stock key."""
        checked = list(pairs)
        if not checked:
            raise StockError("the operation names no selection or ingredient")
        seen: set[StockKey] = set()
        for key, value in checked:
            if key not in self.levels:
                raise StockError(f"{_name(key)}: {_why_unknown(key, planogram)}")
            if key in seen:
                raise StockError(f"{_name(key)}: named twice")
            if isinstance(value, bool) or not isinstance(value, int):
                raise StockError(f"{_name(key)}: must be an integer")
            seen.add(key)
        return checked

    def _set(
        self, levels: Mapping[StockKey, int], reason: Reason | None, refilled: Iterable[int]
    ) -> Applied:
        """``levels`` written with one history record per change, then the alarms.

        ``reason`` None means refill or unload by the change's sign; the selections in
        ``refilled`` start counting their sales again.
        """
        changes = tuple(
            LevelChanged(
                key,
                self.levels[key],
                level,
                reason or (Reason.REFILL if level > self.levels[key] else Reason.UNLOAD),
            )
            for key, level in sorted(levels.items(), key=_by_key)
            if level != self.levels[key]
        )
        reset = set(refilled)
        sales = {n: c for n, c in self.sales_since_refill.items() if n not in reset}
        state = replace(self, levels={**self.levels, **levels}, sales_since_refill=sales)
        return state._with_alarms(changes, self.conditions)

    def _with_alarms(
        self, events: tuple[Event, ...], reported: Mapping[StockKey, Condition]
    ) -> Applied:
        """Compare each key's condition with the one last reported; one event per change."""
        assert self.planogram is not None
        limits = stock_limits(self.planogram)
        now = {key: condition(self.levels[key], lim) for key, lim in limits.items()}
        alarms = tuple(
            AlarmChanged(
                key,
                reported.get(key, Condition.OK),
                now.get(key, Condition.OK),
                self.levels.get(key, 0),
            )
            for key in sorted(set(reported) | set(now), key=_order)
            if reported.get(key, Condition.OK) != now.get(key, Condition.OK)
        )
        return Applied(replace(self, conditions=now), events + alarms)


def _slots(levels: Mapping[StockKey, int]) -> set[int]:
    return {key.number for key in levels if isinstance(key, SlotKey)}


def _same_product(old: Planogram | None, new: Planogram, number: int) -> bool:
    """Whether selection ``number`` sells the same product before and after a change."""
    was = None if old is None else old.selection(number)
    now = new.selection(number)
    return was is not None and now is not None and was.product == now.product


def _by_key(item: tuple[StockKey, object]) -> tuple[int, int, str]:
    return _order(item[0])


def _order(key: StockKey) -> tuple[int, int, str]:
    """Selections by number, then ingredients by id: a stable order for events."""
    if isinstance(key, SlotKey):
        return (0, key.number, "")
    return (1, 0, key.id)


def _name(key: StockKey) -> str:
    if isinstance(key, SlotKey):
        return f"selection {key.number}"
    return f"ingredient {key.id!r}"


def _why_unknown(key: StockKey, planogram: Planogram) -> str:
    if isinstance(key, SlotKey) and planogram.selection(key.number) is not None:
        return "sells a recipe; load its ingredients"
    return "not in the planogram"
