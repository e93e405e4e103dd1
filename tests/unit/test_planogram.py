"""The planogram document: valid documents, every refusal naming its field, hostile input."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmc.cloud import messages as m
from vmc.planogram import (
    MAX_QUANTITY,
    MAX_SELECTIONS,
    Limits,
    Planogram,
    PlanogramError,
    Product,
    RecipeLine,
    Selection,
)


def document() -> dict[str, Any]:
    """A combined machine: an espresso recipe on selection 1, chocolate bars on 11 and 12."""
    return {
        "version": 7,
        "ingredients": [
            {"id": "beans", "unit": "g", "capacity": 2000, "par_level": 1800, "alarm_level": 200},
            {"id": "water", "unit": "ml", "capacity": 20000, "par_level": 20000, "alarm_level": 0},
            {"id": "cup", "capacity": 200, "par_level": 200, "alarm_level": 20},
        ],
        "products": [
            {
                "id": "espresso",
                "name": "Espresso",
                "recipe": [
                    {"ingredient": "beans", "amount": 7},
                    {"ingredient": "water", "amount": 100},
                    {"ingredient": "cup", "amount": 1},
                ],
            },
            {"id": "bar", "name": "Chocolate bar"},
        ],
        "selections": [
            {"number": 1, "product": "espresso", "price": 120},
            {"number": 11, "product": "bar", "price": 150, "capacity": 16, "par_level": 14,
             "alarm_level": 3},
            {"number": 12, "product": "bar", "price": 150, "capacity": 16, "par_level": 16,
             "alarm_level": 0},
        ],
    }  # fmt: skip


def test_valid_document_is_read_whole() -> None:
    planogram = Planogram.from_mapping(document())
    assert planogram.version == 7
    assert planogram.selection(11) == Selection(11, "bar", 150, Limits(16, 14, 3))
    assert planogram.selection(1) == Selection(1, "espresso", 120, None)
    assert planogram.selection(2) is None
    espresso = planogram.product("espresso")
    assert espresso.composite
    assert espresso.recipe[0] == RecipeLine("beans", 7)
    assert planogram.product("bar") == Product("bar", "Chocolate bar")
    cup = planogram.ingredient("cup")
    assert cup is not None
    assert cup.unit == "pcs"


def test_to_mapping_round_trips_through_json_and_cbor() -> None:
    planogram = Planogram.from_mapping(document())
    mapping = planogram.to_mapping()
    assert Planogram.from_mapping(mapping) == planogram
    assert Planogram.from_mapping(json.loads(json.dumps(mapping))) == planogram
    assert Planogram.from_mapping(cbor2.loads(cbor2.dumps(mapping))) == planogram


def test_minimal_document_of_plain_products() -> None:
    planogram = Planogram.from_mapping(
        {
            "version": 1,
            "products": [{"id": "p"}],
            "selections": [
                {"number": 0, "product": "p", "price": 0, "capacity": 0, "par_level": 0,
                 "alarm_level": 0},
                {"number": 65535, "product": "p", "price": 2**32 - 1, "capacity": MAX_QUANTITY,
                 "par_level": MAX_QUANTITY, "alarm_level": MAX_QUANTITY},
            ],
        }
    )  # fmt: skip
    assert planogram.ingredients == ()
    assert Planogram.from_mapping(planogram.to_mapping()) == planogram


Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    """Set ``value`` at a dotted path with list indexes (``selections.1.price``)."""

    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def _delete(path: str) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return edit


REFUSALS: list[tuple[Edit, str, str]] = [
    (_delete("version"), "version", "is required"),
    (_set("version", 0), "version", "must be an integer in 1.."),
    (_set("version", "7"), "version", "must be an integer"),
    (_set("version", True), "version", "must be an integer"),
    (_set("version", 2**53), "version", "must be an integer"),
    (_set("version", 7.0), "version", "must be an integer"),
    (_set("colour", "red"), "colour", "unknown field"),
    (_delete("selections"), "selections", "is required"),
    (_set("selections", {}), "selections", "must be a list"),
    (_set("selections", [{}] * (MAX_SELECTIONS + 1)), "selections", "at most"),
    (_set("selections.1", 11), "selections[1]", "must be a map"),
    (_set("selections.1.number", -1), "selections[1].number", "0..65535"),
    (_set("selections.1.number", 65536), "selections[1].number", "0..65535"),
    (_set("selections.1.number", False), "selections[1].number", "must be an integer"),
    (_set("selections.2.number", 11), "selections[2].number", "11 is not unique"),
    (_delete("selections.1.product"), "selections[1].product", "is required"),
    (_set("selections.1.product", "gum"), "selections[1].product", "no product 'gum'"),
    (_set("selections.1.product", 5), "selections[1].product", "must be a string"),
    (_set("selections.1.price", -1), "selections[1].price", "must be an integer"),
    (_set("selections.1.price", 2**32), "selections[1].price", "must be an integer"),
    (_set("selections.1.price", 1.5), "selections[1].price", "must be an integer"),
    (_delete("selections.1.capacity"), "selections[1].capacity", "is required"),
    (_set("selections.1.capacity", 10**12), "selections[1].capacity", "must be an integer"),
    (_set("selections.1.par_level", 17), "selections[1].par_level", "must be <= capacity (16)"),
    (_set("selections.1.alarm_level", 15), "selections[1].alarm_level",
     "must be <= par_level (14)"),
    (_set("selections.1.alarm_level", -1), "selections[1].alarm_level", "must be an integer"),
    (_set("selections.0.capacity", 5), "selections[0].capacity", "not allowed for a recipe"),
    (_set("selections.1.slot", "A1"), "selections[1].slot", "unknown field"),
    (_set("products", []), "selections[0].product", "no product 'espresso'"),
    (_set("products.1.id", "espresso"), "products[1].id", "'espresso' is not unique"),
    (_set("products.1.id", ""), "products[1].id", "must be a string of 1..64"),
    (_set("products.1.id", "x" * 65), "products[1].id", "must be a string of 1..64"),
    (_set("products.1.name", "x" * 257), "products[1].name", "must be a string of 1..256"),
    (_set("products.0.recipe", []), "products[0].recipe", "at least one ingredient"),
    (_set("products.0.recipe.1.ingredient", "milk"), "products[0].recipe[1].ingredient",
     "no ingredient 'milk'"),
    (_set("products.0.recipe.2.ingredient", "beans"), "products[0].recipe[2].ingredient",
     "'beans' is listed twice"),
    (_set("products.0.recipe.0.amount", 0), "products[0].recipe[0].amount", "1..1000000000"),
    (_delete("products.0.recipe.0.amount"), "products[0].recipe[0].amount", "is required"),
    (_set("ingredients", None), "products[0].recipe[0].ingredient", "no ingredient 'beans'"),
    (_set("ingredients.1.id", "beans"), "ingredients[1].id", "'beans' is not unique"),
    (_set("ingredients.1.unit", "millilitres-of-wa"), "ingredients[1].unit", "1..16"),
    (_set("ingredients.2.alarm_level", 201), "ingredients[2].alarm_level",
     "must be <= par_level (200)"),
    (_set("ingredients.0", [1, 2]), "ingredients[0]", "must be a map"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "path", "reason"), REFUSALS)
def test_every_refusal_names_its_field(edit: Edit, path: str, reason: str) -> None:
    doc = document()
    edit(doc)
    with pytest.raises(PlanogramError) as info:
        Planogram.from_mapping(doc)
    assert info.value.path == path
    assert reason in info.value.reason
    assert str(info.value) == f"{path}: {info.value.reason}"


def test_refusal_becomes_the_cloud_reply() -> None:
    doc = document()
    del doc["version"]
    with pytest.raises(PlanogramError) as info:
        Planogram.from_mapping(doc)
    reply = info.value.command_error("cmd-1").reply()
    assert (reply.command_id, reply.ok, reply.code) == ("cmd-1", False, m.ErrorCode.MISSING_FIELD)
    assert reply.message == "version: is required"
    doc = document()
    doc["selections"][1]["alarm_level"] = 15
    with pytest.raises(PlanogramError) as info:
        Planogram.from_mapping(doc)
    assert info.value.command_error(None).code is m.ErrorCode.BAD_FIELD


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        (None, "planogram"),
        ([], "planogram"),
        ("planogram", "planogram"),
        ({1: 2}, "planogram"),
        ({"x" * 10000: 1}, "x" * 64),
    ],
)
def test_hostile_top_level(obj: object, path: str) -> None:
    with pytest.raises(PlanogramError) as info:
        Planogram.from_mapping(obj)
    assert info.value.path == path
    assert len(str(info.value)) < 200


def test_deep_nesting_is_a_field_error() -> None:
    deep: Any = 1
    for _ in range(10000):
        deep = [deep]
    doc = document()
    doc["selections"][1]["price"] = deep
    with pytest.raises(PlanogramError, match=r"^selections\[1\]\.price: "):
        Planogram.from_mapping(doc)
    doc = document()
    doc["products"][0]["recipe"] = [deep]
    with pytest.raises(PlanogramError, match=r"^products\[0\]\.recipe\[0\]: must be a map"):
        Planogram.from_mapping(doc)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | st.integers(), inner)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["version", "selections", "products", "ingredients", "number", "product", "price",
     "capacity", "par_level", "alarm_level", "id", "name", "recipe", "ingredient", "amount",
     "unit"]
)  # fmt: skip


@given(st.dictionaries(field_names, values))
def test_arbitrary_maps_raise_only_planogram_error(obj: dict[str, Any]) -> None:
    with contextlib.suppress(PlanogramError):
        Planogram.from_mapping(obj)


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _leaves(value, (*path, key))]
    if isinstance(node, list):
        return [p for index, value in enumerate(node) for p in _leaves(value, (*path, index))]
    return [path]


LEAVES = _leaves(document())


@given(st.sampled_from(LEAVES), values)
def test_any_leaf_replaced_is_valid_or_refused_by_name(leaf: tuple[Any, ...], value: Any) -> None:
    doc = copy.deepcopy(document())
    node: Any = doc
    for part in leaf[:-1]:
        node = node[part]
    node[leaf[-1]] = value
    try:
        planogram = Planogram.from_mapping(doc)
    except PlanogramError as exc:
        refusal: PlanogramError | None = exc
    else:
        refusal = None
        assert Planogram.from_mapping(planogram.to_mapping()) == planogram
    if refusal is not None:
        assert refusal.path
        assert str(refusal).startswith(refusal.path + ": ")


ids = st.text("abcdefgh", min_size=1, max_size=6)


@st.composite
def planograms(draw: st.DrawFn) -> dict[str, Any]:
    """Valid documents of any shape within the bounds."""

    def limits() -> dict[str, int]:
        capacity = draw(st.integers(0, MAX_QUANTITY))
        par = draw(st.integers(0, capacity))
        return {"capacity": capacity, "par_level": par, "alarm_level": draw(st.integers(0, par))}

    ingredient_ids = draw(st.lists(ids, unique=True, max_size=4))
    ingredients = [{"id": i, "unit": draw(ids), **limits()} for i in ingredient_ids]
    products = []
    for product_id in draw(st.lists(ids, unique=True, min_size=1, max_size=4)):
        product: dict[str, Any] = {"id": product_id}
        composite = draw(st.booleans())
        if ingredient_ids and composite:
            used = draw(st.lists(st.sampled_from(ingredient_ids), unique=True, min_size=1))
            product["recipe"] = [
                {"ingredient": i, "amount": draw(st.integers(1, MAX_QUANTITY))} for i in used
            ]
        products.append(product)
    selections = []
    for number in draw(st.lists(st.integers(0, 65535), unique=True, max_size=6)):
        product = draw(st.sampled_from(products))
        selection = {"number": number, "product": product["id"], "price": draw(st.integers(0, 999))}
        if "recipe" not in product:
            selection.update(limits())
        selections.append(selection)
    version = draw(st.integers(1, 2**53 - 1))
    return {
        "version": version,
        "selections": selections,
        "products": products,
        "ingredients": ingredients,
    }


@given(planograms())
def test_valid_documents_round_trip(doc: dict[str, Any]) -> None:
    planogram = Planogram.from_mapping(doc)
    assert Planogram.from_mapping(planogram.to_mapping()) == planogram
    assert Planogram.from_mapping(cbor2.loads(cbor2.dumps(planogram.to_mapping()))) == planogram
