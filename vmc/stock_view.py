"""The stock as a report: each selection and ingredient with its limits and condition.

One view for the technician (``vmctl stock show``) and the cloud (``stock.query``, seed 004's
coil list and coil alarms), so both always say the same. Pure: a :class:`~vmc.stock.Stock` in,
plain data out.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from vmc.stock import Condition, IngredientKey, SlotKey, Stock, StockKey, condition, stock_limits


def stock_view(stock: Stock, conditions: Container[Condition] | None = None) -> dict[str, Any]:
    """The flags, then each selection and ingredient; ``conditions`` keeps only the counted
    keys in one of them (seed 004's ``show_low_coils`` / ``show_empty_coils``), and a recipe's
    selection (not counted itself) only when no filter is given."""
    planogram = stock.planogram
    limits = {} if planogram is None else stock_limits(planogram)

    def counted(key: StockKey) -> dict[str, Any]:
        lim = limits.get(key)
        level = stock.levels.get(key)
        return {
            "level": level,
            "capacity": None if lim is None else lim.capacity,
            "par_level": None if lim is None else lim.par_level,
            "alarm_level": None if lim is None else lim.alarm_level,
            "condition": None if lim is None or level is None else condition(level, lim).value,
        }

    def wanted(row: dict[str, Any]) -> bool:
        if conditions is None:
            return True
        return row["condition"] is not None and Condition(row["condition"]) in conditions

    selections: list[dict[str, Any]] = []
    ingredients: list[dict[str, Any]] = []
    if planogram is not None:
        for sel in planogram.selections:
            product = planogram.product(sel.product)
            row = {
                "selection": sel.number,
                "product": sel.product,
                "name": product.name,
                "price": sel.price,
                **counted(SlotKey(sel.number)),
                "sales_since_refill": stock.sales_since_refill.get(sel.number, 0),
                "paid_vends": stock.paid_vends.get(sel.number, 0),
                "recipe": [
                    {"ingredient": r.ingredient, "amount": r.amount} for r in product.recipe
                ],
            }
            if wanted(row):
                selections.append(row)
        for ingredient in planogram.ingredients:
            row = {
                "ingredient": ingredient.id,
                "unit": ingredient.unit,
                **counted(IngredientKey(ingredient.id)),
            }
            if wanted(row):
                ingredients.append(row)
    return {
        "planogram_version": None if planogram is None else planogram.version,
        "need_loading": stock.need_loading,
        "last_loading": stock.last_loading_at,
        "last_sale": stock.last_sale_at,
        "selections": selections,
        "ingredients": ingredients,
    }
