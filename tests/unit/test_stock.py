"""Stock arithmetic: examples of each rule, and any interleaving against a reference model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmc.cloud.messages import VendType
from vmc.planogram import MAX_QUANTITY, Planogram
from vmc.stock import (
    Adjust,
    AlarmChanged,
    Applied,
    ChangePlanogram,
    Condition,
    Discrepancy,
    DiscrepancyKind,
    IngredientKey,
    Inventory,
    LevelChanged,
    Operation,
    PlanogramChanged,
    Reason,
    Restock,
    SlotKey,
    Stock,
    StockError,
    StockKey,
    Vend,
)

BEANS, CUP, MILK = IngredientKey("beans"), IngredientKey("cup"), IngredientKey("milk")


def _limits(capacity: int, par: int, alarm: int) -> dict[str, int]:
    return {"capacity": capacity, "par_level": par, "alarm_level": alarm}


COFFEE_AND_SNACKS = Planogram.from_mapping(
    {
        "version": 1,
        "ingredients": [{"id": "beans", "unit": "g", **_limits(100, 80, 20)},
                        {"id": "cup", **_limits(10, 10, 2)}],
        "products": [
            {"id": "espresso", "recipe": [{"ingredient": "beans", "amount": 7},
                                          {"ingredient": "cup", "amount": 1}]},
            {"id": "bar"},
            {"id": "gum"},
        ],
        "selections": [
            {"number": 1, "product": "espresso", "price": 120},
            {"number": 11, "product": "bar", "price": 150, **_limits(8, 6, 2)},
            {"number": 12, "product": "bar", "price": 150, **_limits(5, 5, 0)},
            {"number": 13, "product": "gum", "price": 50, **_limits(4, 4, 1)},
        ],
    }
)  # fmt: skip
# Selection 1 changes recipe, 12 changes product, 13 leaves, 14 is new, cup leaves, milk is new.
LATTE_AND_SNACKS = Planogram.from_mapping(
    {
        "version": 2,
        "ingredients": [{"id": "beans", "unit": "g", **_limits(200, 150, 50)},
                        {"id": "milk", "unit": "ml", **_limits(50, 40, 10)}],
        "products": [
            {"id": "latte", "recipe": [{"ingredient": "beans", "amount": 8},
                                       {"ingredient": "milk", "amount": 20}]},
            {"id": "bar"},
            {"id": "mints"},
        ],
        "selections": [
            {"number": 1, "product": "latte", "price": 180},
            {"number": 11, "product": "bar", "price": 160, **_limits(10, 10, 5)},
            {"number": 12, "product": "mints", "price": 90, **_limits(6, 6, 1)},
            {"number": 14, "product": "bar", "price": 160, **_limits(3, 3, 1)},
        ],
    }
)  # fmt: skip
GUM_ONLY = Planogram.from_mapping(
    {
        "version": 3,
        "products": [{"id": "gum"}],
        "selections": [{"number": 13, "product": "gum", "price": 50, **_limits(4, 2, 2)}],
    }
)
PLANOGRAMS = [COFFEE_AND_SNACKS, LATTE_AND_SNACKS, GUM_ONLY]


class Run:
    """Applies operations with fresh ids, keeping every event."""

    def __init__(self, planogram: Planogram | None = COFFEE_AND_SNACKS) -> None:
        self.stock = Stock()
        self.count = 0
        if planogram is not None:
            self.do(ChangePlanogram, planogram)

    def do(self, kind: Any, *args: Any) -> Applied:
        self.count += 1
        applied: Applied = self.stock.apply(kind(f"op{self.count}", float(self.count), *args))
        self.stock = applied.state
        return applied


def test_planogram_starts_empty_and_restock_fills_to_par() -> None:
    run = Run()
    assert run.stock.levels == {SlotKey(11): 0, SlotKey(12): 0, SlotKey(13): 0, BEANS: 0, CUP: 0}
    assert run.stock.conditions == dict.fromkeys(run.stock.levels, Condition.EMPTY)
    assert run.stock.need_loading
    events = run.do(Restock).events
    assert run.stock.levels == {SlotKey(11): 6, SlotKey(12): 5, SlotKey(13): 4, BEANS: 80, CUP: 10}
    assert LevelChanged(SlotKey(11), 0, 6, Reason.RESTOCK) in events
    assert AlarmChanged(BEANS, Condition.EMPTY, Condition.OK, 80) in events
    assert not run.stock.need_loading
    assert run.stock.last_loading_at == 2.0


@pytest.mark.parametrize("vend_type", list(VendType))
def test_every_vend_type_takes_stock_only_paid_counts_as_sale(vend_type: VendType) -> None:
    run = Run()
    run.do(Restock)
    run.do(Vend, 11, vend_type)
    run.do(Vend, 1, vend_type)
    assert run.stock.levels[SlotKey(11)] == 5
    assert (run.stock.levels[BEANS], run.stock.levels[CUP]) == (73, 9)
    paid = vend_type is VendType.PAID
    assert run.stock.sales_since_refill == ({11: 1, 1: 1} if paid else {})
    assert run.stock.last_sale_at == (4.0 if paid else None)


def test_low_then_empty_once_then_short_vend_is_a_discrepancy() -> None:
    run = Run()
    run.do(Inventory, ((SlotKey(11), 4),))
    alarms = [[e for e in run.do(Vend, 11).events if isinstance(e, AlarmChanged)] for _ in range(5)]
    assert alarms == [
        [],
        [AlarmChanged(SlotKey(11), Condition.OK, Condition.LOW, 2)],
        [],
        [AlarmChanged(SlotKey(11), Condition.LOW, Condition.EMPTY, 0)],
        [],
    ]
    events = run.do(Vend, 11).events
    assert events == (Discrepancy(DiscrepancyKind.SHORT, 11, SlotKey(11), 1),)
    assert run.stock.levels[SlotKey(11)] == 0
    assert run.stock.sales_since_refill[11] == 6
    events = run.do(Adjust, ((SlotKey(11), 1),)).events
    assert AlarmChanged(SlotKey(11), Condition.EMPTY, Condition.LOW, 1) in events
    assert 11 not in run.stock.sales_since_refill
    events = run.do(Adjust, ((SlotKey(11), 5),)).events
    assert AlarmChanged(SlotKey(11), Condition.LOW, Condition.OK, 6) in events


def test_recipe_short_of_one_ingredient() -> None:
    run = Run()
    run.do(Inventory, ((BEANS, 5), (CUP, 3)))
    events = run.do(Vend, 1).events
    assert Discrepancy(DiscrepancyKind.SHORT, 1, BEANS, 2) in events
    assert (run.stock.levels[BEANS], run.stock.levels[CUP]) == (0, 2)


def test_vends_without_planogram_are_ignored_unknown_selection_is_reported() -> None:
    run = Run(None)
    assert run.do(Vend, 11).events == ()
    assert run.stock == Stock(paid_vends={11: 1})  # counted for reconciliation only
    assert not run.stock.need_loading
    with pytest.raises(StockError, match="no planogram"):
        run.do(Restock)
    run = Run()
    before = run.stock
    applied = run.do(Vend, 99)
    assert applied.events == (Discrepancy(DiscrepancyKind.UNKNOWN_SELECTION, 99, None, 1),)
    assert applied.state == replace(before, paid_vends={99: 1})


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (Adjust("x", 0, ((SlotKey(11), -1),)), "selection 11: cannot unload 1 from 0"),
        (Adjust("x", 0, ((SlotKey(11), 0),)), "selection 11: amount must not be 0"),
        (Adjust("x", 0, ((SlotKey(11), MAX_QUANTITY + 1),)), "would exceed"),
        (Adjust("x", 0, ()), "names no selection or ingredient"),
        (Adjust("x", 0, ((SlotKey(1), 3),)), "selection 1: sells a recipe"),
        (Adjust("x", 0, ((SlotKey(99), 3),)), "selection 99: not in the planogram"),
        (Adjust("x", 0, ((MILK, 3),)), "ingredient 'milk': not in the planogram"),
        (Adjust("x", 0, ((CUP, 3), (CUP, 1))), "ingredient 'cup': named twice"),
        (Adjust("x", 0, ((CUP, True),)), "ingredient 'cup': must be an integer"),
        (Inventory("x", 0, ((CUP, -1),)), "ingredient 'cup': level must be in 0.."),
        (Inventory("x", 0, ()), "names no selection"),
        (Restock("", 0), "op_id must be a string"),
        (Restock("x" * 129, 0), "op_id must be a string"),
    ],
)
def test_refused_operations_change_nothing(op: Operation, message: str) -> None:
    run = Run()
    before = run.stock
    with pytest.raises(StockError, match=message):
        run.stock.apply(op)
    assert run.stock == before


def test_refill_and_unload_in_one_operation_are_all_or_nothing() -> None:
    run = Run()
    run.do(Restock)
    with pytest.raises(StockError):
        run.do(Adjust, ((SlotKey(11), 2), (SlotKey(12), -6)))
    assert run.stock.levels[SlotKey(11)] == 6
    events = run.do(Adjust, ((SlotKey(11), 2), (SlotKey(12), -5), (BEANS, -60))).events
    assert LevelChanged(SlotKey(11), 6, 8, Reason.REFILL) in events
    assert LevelChanged(SlotKey(12), 5, 0, Reason.UNLOAD) in events
    assert AlarmChanged(SlotKey(12), Condition.OK, Condition.EMPTY, 0) in events
    assert AlarmChanged(BEANS, Condition.OK, Condition.LOW, 20) in events


def test_duplicate_operation_id_changes_nothing() -> None:
    run = Run()
    run.do(Restock)
    vend = Vend("sale-1", 9.0, 11)
    first = run.stock.apply(vend, {"op1", "op2"})
    assert not first.duplicate
    again = first.state.apply(vend, {"op1", "op2", "sale-1"})
    assert again == Applied(first.state, (), duplicate=True)


def test_planogram_change_unloads_what_left_with_history() -> None:
    run = Run()
    run.do(Restock)
    run.do(Vend, 11)
    applied = run.do(ChangePlanogram, LATTE_AND_SNACKS)
    events = applied.events
    assert events[0] == PlanogramChanged(1, 2)
    history = [e for e in events if isinstance(e, LevelChanged)]
    assert history == [
        LevelChanged(SlotKey(12), 5, 0, Reason.PLANOGRAM),  # bar -> mints
        LevelChanged(SlotKey(13), 4, 0, Reason.PLANOGRAM),  # gum left
        LevelChanged(CUP, 10, 0, Reason.PLANOGRAM),  # cup left
    ]
    assert run.stock.levels == {
        SlotKey(11): 5,  # same bar: kept, with its sales count
        SlotKey(12): 0,
        SlotKey(14): 0,
        BEANS: 80,  # still defined: kept (80 > the new alarm level 50)
        MILK: 0,
    }
    assert run.stock.sales_since_refill == {11: 1}
    alarms = {e.key: (e.before, e.after) for e in events if isinstance(e, AlarmChanged)}
    assert alarms == {
        SlotKey(11): (Condition.OK, Condition.LOW),  # 5 <= the new alarm level 5
        SlotKey(12): (Condition.OK, Condition.EMPTY),
        SlotKey(14): (Condition.OK, Condition.EMPTY),
        MILK: (Condition.OK, Condition.EMPTY),
    }
    assert SlotKey(13) not in run.stock.conditions


def test_an_alarm_leaving_the_planogram_is_cleared() -> None:
    run = Run()
    run.do(Inventory, ((SlotKey(13), 1),))
    assert run.stock.conditions[SlotKey(13)] is Condition.LOW
    events = run.do(ChangePlanogram, LATTE_AND_SNACKS).events
    assert AlarmChanged(SlotKey(13), Condition.LOW, Condition.OK, 0) in events
    assert LevelChanged(SlotKey(13), 1, 0, Reason.PLANOGRAM) in events


# --- any interleaving against a reference model ---------------------------------------------


def _keys(planogram: Planogram) -> dict[StockKey, tuple[int, int]]:
    """The reference's own view: counted keys with (par level, alarm level)."""
    keys: dict[StockKey, tuple[int, int]] = {}
    for selection in planogram.selections:
        if not planogram.product(selection.product).recipe:
            assert selection.limits is not None
            keys[SlotKey(selection.number)] = (
                selection.limits.par_level,
                selection.limits.alarm_level,
            )
    for ingredient in planogram.ingredients:
        keys[IngredientKey(ingredient.id)] = (
            ingredient.limits.par_level,
            ingredient.limits.alarm_level,
        )
    return keys


def _condition(level: int, alarm: int) -> Condition:
    return Condition.EMPTY if level == 0 else Condition.LOW if level <= alarm else Condition.OK


@dataclass
class Model:
    """The documented rules, written as plainly as possible."""

    planogram: Planogram | None = None
    levels: dict[StockKey, int] = field(default_factory=dict)
    reported: dict[StockKey, Condition] = field(default_factory=dict)
    short: dict[StockKey, int] = field(default_factory=dict)

    def apply(self, op: Operation) -> bool:
        """Apply; False when the operation must be refused."""
        self.short = {}
        if isinstance(op, ChangePlanogram):
            old, new = self.planogram, op.planogram
            levels = dict.fromkeys(_keys(new), 0)
            for key in levels:
                if key not in self.levels or old is None:
                    continue
                if isinstance(key, IngredientKey):
                    levels[key] = self.levels[key]
                    continue
                was, now = old.selection(key.number), new.selection(key.number)
                if was is not None and now is not None and was.product == now.product:
                    levels[key] = self.levels[key]
            self.planogram, self.levels = op.planogram, levels
            return True
        if self.planogram is None:
            return isinstance(op, Vend)
        keys = _keys(self.planogram)
        if isinstance(op, Vend):
            selection = self.planogram.selection(op.selection)
            if selection is None:
                return True
            recipe = self.planogram.product(selection.product).recipe
            use = (
                {IngredientKey(r.ingredient): r.amount for r in recipe}
                if recipe
                else {SlotKey(op.selection): 1}
            )
            for key, amount in use.items():
                if self.levels[key] < amount:
                    self.short[key] = amount - self.levels[key]
                self.levels[key] = max(0, self.levels[key] - amount)
            return True
        if isinstance(op, Restock):
            self.levels = {key: par for key, (par, _) in keys.items()}
            return True
        pairs = op.changes if isinstance(op, Adjust) else op.levels
        named = [key for key, _ in pairs]
        if not pairs or len(set(named)) != len(named) or not set(named) <= set(keys):
            return False
        if isinstance(op, Adjust):
            wanted = {key: self.levels[key] + amount for key, amount in pairs}
            if any(amount == 0 for _, amount in pairs):
                return False
        else:
            wanted = dict(pairs)
        if not all(0 <= level <= MAX_QUANTITY for level in wanted.values()):
            return False
        self.levels.update(wanted)
        return True

    def conditions(self) -> dict[StockKey, Condition]:
        if self.planogram is None:
            return {}
        keys = _keys(self.planogram)
        return {key: _condition(self.levels[key], alarm) for key, (_, alarm) in keys.items()}


stock_keys = st.sampled_from(
    [SlotKey(n) for n in (1, 11, 12, 13, 14, 99)] + [BEANS, CUP, MILK, IngredientKey("nope")]
)
operations = st.one_of(
    st.builds(
        lambda n, t: ("vend", n, t),
        st.sampled_from([1, 11, 12, 13, 14, 99]),
        st.sampled_from(list(VendType)),
    ),
    st.builds(
        lambda c: ("adjust", tuple(c)),
        st.lists(st.tuples(stock_keys, st.integers(-15, 15)), max_size=3),
    ),
    st.builds(
        lambda c: ("inventory", tuple(c)),
        st.lists(st.tuples(stock_keys, st.integers(-1, 30)), max_size=3),
    ),
    st.just(("restock",)),
    st.builds(lambda p: ("planogram", p), st.sampled_from(PLANOGRAMS)),
)


def _operation(spec: tuple[Any, ...], op_id: str, at: float) -> Operation:
    kind = spec[0]
    if kind == "vend":
        return Vend(op_id, at, spec[1], spec[2])
    if kind == "adjust":
        return Adjust(op_id, at, spec[1])
    if kind == "inventory":
        return Inventory(op_id, at, spec[1])
    if kind == "restock":
        return Restock(op_id, at)
    return ChangePlanogram(op_id, at, spec[1])


@given(st.lists(operations, max_size=40), st.booleans())
def test_any_interleaving_matches_the_reference_model(
    specs: list[tuple[Any, ...]], start_with_planogram: bool
) -> None:
    stock, model = Stock(), Model()
    if start_with_planogram:
        specs = [("planogram", COFFEE_AND_SNACKS), *specs]
    applied_ids: set[str] = set()
    serviced: float | None = None
    for index, spec in enumerate(specs):
        op = _operation(spec, f"op{index}", float(index))
        before_conditions = model.conditions()
        before_levels = dict(model.levels)
        if not model.apply(op):
            with pytest.raises(StockError):
                stock.apply(op, applied_ids)
            continue
        applied = stock.apply(op, applied_ids)
        applied_ids.add(op.op_id)
        stock = applied.state

        # the last service visit: the last refill, unload, inventory or restock applied
        if isinstance(op, Adjust | Inventory | Restock):
            serviced = op.at
        assert stock.last_service_at == serviced

        # the documented levels, never negative
        assert dict(stock.levels) == model.levels
        assert all(level >= 0 for level in stock.levels.values())
        if isinstance(op, Restock) and model.planogram is not None:
            assert stock.levels == {k: p for k, (p, _) in _keys(model.planogram).items()}

        # each crossing is exactly one alarm event, nothing else raises one
        after_conditions = model.conditions()
        expected = {
            key: (before_conditions.get(key, Condition.OK), after_conditions.get(key, Condition.OK))
            for key in set(before_conditions) | set(after_conditions)
        }
        alarms = [e for e in applied.events if isinstance(e, AlarmChanged)]
        assert len({e.key for e in alarms}) == len(alarms)
        assert {e.key: (e.before, e.after) for e in alarms} == {
            key: change for key, change in expected.items() if change[0] != change[1]
        }

        # a vend beyond the count is reported with exactly the missing units
        shorts = {
            e.key: e.missing
            for e in applied.events
            if isinstance(e, Discrepancy) and e.kind is DiscrepancyKind.SHORT
        }
        assert shorts == model.short

        # the history explains every level change of a key that stays
        history = {e.key: e for e in applied.events if isinstance(e, LevelChanged)}
        for key, level in model.levels.items():
            if level != before_levels.get(key, 0) and not isinstance(op, ChangePlanogram):
                assert (history[key].before, history[key].after) == (before_levels[key], level)
        assert all(e.after >= 0 and e.before != e.after for e in history.values())

        # need_loading is any key at or under its alarm level
        assert stock.need_loading == any(c is not Condition.OK for c in after_conditions.values())

        # a duplicate id never changes anything
        again = stock.apply(op, applied_ids)
        assert again == Applied(stock, (), duplicate=True)
