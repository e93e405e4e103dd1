"""The planogram: what the machine sells, where, at what price, and how much of it fits.

Theory of operation
-------------------
The cloud pushes a planogram as ONE versioned document (seeds 002 and 003). vmc validates it
whole with :meth:`Planogram.from_mapping` before anything else sees it, so a bad document is
refused with one :class:`PlanogramError` whose message starts with the field path
(``selections[3].alarm_level: must be <= par_level (5)``) and the planogram in force stays.
Nothing here reads a clock, a file or a socket.

The model is seed 003's: products vs recipes.

- An **ingredient** is what is loaded into the machine and consumed (beans in g, water in ml,
  cups): it has a unit, a capacity, a par level and an alarm (critical) level.
- A **product** is what is sold. A plain product (a chocolate bar) has no recipe: it is its own
  single ingredient, and its stock is counted per selection, because the same bar on two
  spirals is two independent counts (seed 003 reports such loads per spiral). A recipe
  (espresso) consumes its ingredients per vend (beans 7 g, water 100 ml, cup 1); its stock is
  the ingredients', shared by every selection that sells it.
- A **selection** is the VMC's MDB item number (the seeds' slot, spiral, coil or button
  number). It sells one product at a price in minor units. A selection of a plain product
  carries capacity, par level and alarm level; a selection of a recipe carries none (its
  ingredients do), and giving them is refused rather than silently ignored.

Decisions and bounds:

- ``version`` is a positive integer (1..2**53-1, exact in JSON and CBOR alike), like seed 003's
  numeric ``planogram_id``. vmc compares versions for equality only (it reports the one it
  runs); it does not refuse an older number, so the cloud may roll back.
- Item numbers are 0..65535 (MDB's two-byte item number); prices 0..2**32-1 minor units (the
  cloud codec's bound); every count and quantity is an integer 0..10**9 in its unit.
- ``alarm_level <= par_level <= capacity``. Capacity is a basis for par and alarm, not a hard
  ceiling on the level: seed 003 calls a load above capacity normal, so the stock never clamps.
- Selection numbers, product ids and ingredient ids are unique; every product a selection names
  and every ingredient a recipe names must be defined; a recipe names an ingredient once.
- Unknown fields are refused (a typo in ``par_levle`` must not silently become "no par").
- Booleans are not numbers, floats are not counts, and the sizes of every list and string are
  bounded, so hostile input costs little and raises only :class:`PlanogramError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from protocols.errors import VmcError
from vmc.cloud import messages as m
from vmc.cloud.codec import MAX_AMOUNT, CommandError

MAX_VERSION = 2**53 - 1
MAX_ITEM_NUMBER = 65535
MAX_QUANTITY = 10**9
MAX_ID_LENGTH = 64
MAX_NAME_LENGTH = 256
MAX_UNIT_LENGTH = 16
MAX_SELECTIONS = 1024
MAX_PRODUCTS = 1024
MAX_INGREDIENTS = 256
MAX_RECIPE_LINES = 32
DEFAULT_UNIT = "pcs"

_T = TypeVar("_T")


class PlanogramError(VmcError):
    """A planogram document was refused; ``path`` names the field, ``reason`` what is wrong."""

    def __init__(self, path: str, reason: str, *, missing: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.missing = missing

    def command_error(self, command_id: str | None) -> CommandError:
        """The refusal as the cloud answers it, with the same field path in the message."""
        code = m.ErrorCode.MISSING_FIELD if self.missing else m.ErrorCode.BAD_FIELD
        return CommandError(code, str(self), command_id)


@dataclass(frozen=True, slots=True)
class Limits:
    """Capacity, par level (what a restock fills to) and alarm level (low at or under it)."""

    capacity: int
    par_level: int
    alarm_level: int


@dataclass(frozen=True, slots=True)
class Ingredient:
    id: str
    limits: Limits
    unit: str = DEFAULT_UNIT


@dataclass(frozen=True, slots=True)
class RecipeLine:
    """How much of one ingredient a single vend of the recipe consumes."""

    ingredient: str
    amount: int


@dataclass(frozen=True, slots=True)
class Product:
    """A plain product (no recipe) or a recipe of ingredients."""

    id: str
    name: str = ""
    recipe: tuple[RecipeLine, ...] = ()

    @property
    def composite(self) -> bool:
        return bool(self.recipe)


@dataclass(frozen=True, slots=True)
class Selection:
    """One MDB item number; ``limits`` is None exactly when its product is a recipe."""

    number: int
    product: str
    price: int
    limits: Limits | None


@dataclass(frozen=True, slots=True)
class Planogram:
    version: int
    selections: tuple[Selection, ...]
    products: tuple[Product, ...]
    ingredients: tuple[Ingredient, ...] = ()
    _by_number: dict[int, Selection] = field(init=False, repr=False, compare=False)
    _by_product: dict[str, Product] = field(init=False, repr=False, compare=False)
    _by_ingredient: dict[str, Ingredient] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_number", {s.number: s for s in self.selections})
        object.__setattr__(self, "_by_product", {p.id: p for p in self.products})
        object.__setattr__(self, "_by_ingredient", {i.id: i for i in self.ingredients})

    def selection(self, number: int) -> Selection | None:
        return self._by_number.get(number)

    def prices(self) -> dict[int, int]:
        """Each selection's price (minor units), by number."""
        return {s.number: s.price for s in self.selections}

    def product(self, product_id: str) -> Product:
        return self._by_product[product_id]

    def ingredient(self, ingredient_id: str) -> Ingredient | None:
        return self._by_ingredient.get(ingredient_id)

    @classmethod
    def from_mapping(cls, obj: object) -> Planogram:
        """Validate a whole decoded CBOR/JSON map; anything wrong raises :class:`PlanogramError`."""
        top = _Map(obj, "planogram", {"version", "selections", "products", "ingredients"})
        version = top.integer("version", 1, MAX_VERSION)
        ingredients = tuple(
            _ingredient(item) for item in top.items("ingredients", MAX_INGREDIENTS, required=False)
        )
        _unique(ingredients, "ingredients", "id", lambda i: i.id)
        known = {i.id for i in ingredients}
        products = tuple(_product(item, known) for item in top.items("products", MAX_PRODUCTS))
        _unique(products, "products", "id", lambda p: p.id)
        by_id = {p.id: p for p in products}
        selections = tuple(
            _selection(item, by_id) for item in top.items("selections", MAX_SELECTIONS)
        )
        _unique(selections, "selections", "number", lambda s: s.number)
        return cls(version, selections, products, ingredients)

    def to_mapping(self) -> dict[str, Any]:
        """The document :meth:`from_mapping` reads back to an equal planogram."""
        return {
            "version": self.version,
            "selections": [
                {
                    "number": s.number,
                    "product": s.product,
                    "price": s.price,
                    **_limits_map(s.limits),
                }
                for s in self.selections
            ],
            "products": [
                {
                    "id": p.id,
                    **({"name": p.name} if p.name else {}),
                    **(
                        {
                            "recipe": [
                                {"ingredient": r.ingredient, "amount": r.amount} for r in p.recipe
                            ]
                        }
                        if p.recipe
                        else {}
                    ),
                }
                for p in self.products
            ],
            "ingredients": [
                {"id": i.id, "unit": i.unit, **_limits_map(i.limits)} for i in self.ingredients
            ],
        }


_LIMIT_FIELDS = {"capacity", "par_level", "alarm_level"}


def _limits_map(limits: Limits | None) -> dict[str, int]:
    if limits is None:
        return {}
    return {
        "capacity": limits.capacity,
        "par_level": limits.par_level,
        "alarm_level": limits.alarm_level,
    }


class _Map:
    """Typed access to one map of the document; every error carries the field's path."""

    def __init__(self, obj: object, path: str, allowed: set[str]) -> None:
        if not isinstance(obj, dict):
            raise PlanogramError(path, "must be a map")
        for key in obj:
            if not isinstance(key, str):
                raise PlanogramError(path, "keys must be strings")
        self.obj: dict[str, Any] = obj
        self.path = path
        for key in obj:
            if key not in allowed:
                raise PlanogramError(self.at(key[:MAX_ID_LENGTH]), "unknown field")

    def at(self, name: str) -> str:
        return name if self.path == "planogram" else f"{self.path}.{name}"

    def has(self, name: str) -> bool:
        return self.obj.get(name) is not None

    def _get(self, name: str) -> Any:
        if not self.has(name):
            raise PlanogramError(self.at(name), "is required", missing=True)
        return self.obj[name]

    def integer(self, name: str, low: int, high: int) -> int:
        value = self._get(name)
        if type(value) is not int or not low <= value <= high:
            raise PlanogramError(self.at(name), f"must be an integer in {low}..{high}")
        return value

    def text(self, name: str, limit: int, *, required: bool = True, default: str = "") -> str:
        if not required and not self.has(name):
            return default
        value = self._get(name)
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            raise PlanogramError(self.at(name), f"must be a string of 1..{limit} characters")
        return value

    def items(self, name: str, limit: int, *, required: bool = True) -> list[tuple[object, str]]:
        """The list's elements with their paths; an optional list may be absent."""
        if not required and not self.has(name):
            return []
        value = self._get(name)
        if not isinstance(value, list):
            raise PlanogramError(self.at(name), "must be a list")
        if len(value) > limit:
            raise PlanogramError(self.at(name), f"must have at most {limit} entries")
        return [(item, f"{self.at(name)}[{index}]") for index, item in enumerate(value)]


def _limits(fields: _Map) -> Limits:
    capacity = fields.integer("capacity", 0, MAX_QUANTITY)
    par_level = fields.integer("par_level", 0, MAX_QUANTITY)
    alarm_level = fields.integer("alarm_level", 0, MAX_QUANTITY)
    if par_level > capacity:
        raise PlanogramError(fields.at("par_level"), f"must be <= capacity ({capacity})")
    if alarm_level > par_level:
        raise PlanogramError(fields.at("alarm_level"), f"must be <= par_level ({par_level})")
    return Limits(capacity, par_level, alarm_level)


def _ingredient(item: tuple[object, str]) -> Ingredient:
    fields = _Map(item[0], item[1], {"id", "unit", *_LIMIT_FIELDS})
    return Ingredient(
        fields.text("id", MAX_ID_LENGTH),
        _limits(fields),
        fields.text("unit", MAX_UNIT_LENGTH, required=False, default=DEFAULT_UNIT),
    )


def _product(item: tuple[object, str], ingredients: set[str]) -> Product:
    fields = _Map(item[0], item[1], {"id", "name", "recipe"})
    product_id = fields.text("id", MAX_ID_LENGTH)
    name = fields.text("name", MAX_NAME_LENGTH, required=False)
    lines: list[RecipeLine] = []
    recipe = fields.items("recipe", MAX_RECIPE_LINES, required=False)
    if fields.has("recipe") and not recipe:
        raise PlanogramError(fields.at("recipe"), "must list at least one ingredient")
    for line_obj, line_path in recipe:
        line = _Map(line_obj, line_path, {"ingredient", "amount"})
        ingredient = line.text("ingredient", MAX_ID_LENGTH)
        if ingredient not in ingredients:
            raise PlanogramError(line.at("ingredient"), f"no ingredient {ingredient!r} defined")
        if any(done.ingredient == ingredient for done in lines):
            raise PlanogramError(line.at("ingredient"), f"{ingredient!r} is listed twice")
        lines.append(RecipeLine(ingredient, line.integer("amount", 1, MAX_QUANTITY)))
    return Product(product_id, name, tuple(lines))


def _selection(item: tuple[object, str], products: Mapping[str, Product]) -> Selection:
    fields = _Map(item[0], item[1], {"number", "product", "price", *_LIMIT_FIELDS})
    number = fields.integer("number", 0, MAX_ITEM_NUMBER)
    product_id = fields.text("product", MAX_ID_LENGTH)
    product = products.get(product_id)
    if product is None:
        raise PlanogramError(fields.at("product"), f"no product {product_id!r} defined")
    price = fields.integer("price", 0, MAX_AMOUNT)
    if not product.composite:
        return Selection(number, product_id, price, _limits(fields))
    for name in sorted(_LIMIT_FIELDS):
        if fields.has(name):
            raise PlanogramError(
                fields.at(name), "not allowed for a recipe (its ingredients carry the levels)"
            )
    return Selection(number, product_id, price, None)


def _unique(items: Sequence[_T], path: str, name: str, key: Callable[[_T], str | int]) -> None:
    seen: set[str | int] = set()
    for index, item in enumerate(items):
        value = key(item)
        if value in seen:
            raise PlanogramError(f"{path}[{index}].{name}", f"{value!r} is not unique")
        seen.add(value)
