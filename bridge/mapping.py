"""The translation between vmc's events and the seed's callbacks, without I/O.

Each function takes a decoded event (and what the bridge knows: the txnRef, the coils) and
gives the JSON body of one outbound call, or None when the event has no counterpart there.
``docs/bridge.md`` is the same mapping as a table, field by field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import cbor2

from bridge.store import CoilLevel

UNKNOWN_BALANCE = 65535
"""The seed's ``balance`` for "unknown": the lock then has no ``limit``."""
MAX_LIMIT = 2**32 - 1


class Callback(StrEnum):
    """The outbound document's paths, relative to the third party's base URL."""

    TXN_REQUEST = "/txn/request"
    TXN_UNLOCK = "/txn/unlock"
    TXN_VEND = "/txn/vend"
    TRANSACTIONS = "/feed/transactions"
    REFILLS = "/feed/refills"
    ALERTS = "/feed/alerts"


class AlertLevel(StrEnum):
    LOW = "Low"
    MEDIUM = "Medium"
    HIGH = "High"


STOCK_ALERT = {"ok": AlertLevel.LOW, "low": AlertLevel.MEDIUM, "empty": AlertLevel.HIGH}
"""A coil's condition (``stock.alarm``) as the seed's alert level."""

REFILL_REASONS = frozenset({"refill", "restock"})


@dataclass(frozen=True, slots=True)
class Event:
    """A device event: the envelope, and the whole map for its body fields."""

    id: str
    seq: int | None
    type: str
    at: float
    body: Mapping[str, Any]

    def int(self, name: str) -> int | None:
        value = self.body.get(name)
        return value if type(value) is int else None

    def text(self, name: str) -> str | None:
        value = self.body.get(name)
        return value if isinstance(value, str) else None


def parse_event(payload: bytes) -> Event | None:
    """The event in an ``events`` payload; None for anything without a usable envelope."""
    try:
        body = cbor2.loads(payload)
    except Exception:  # cbor2 raises many kinds of error on a bad payload
        return None
    if not isinstance(body, dict):
        return None
    event_id, kind, at, seq = body.get("id"), body.get("type"), body.get("at"), body.get("seq")
    if not isinstance(event_id, str) or not event_id or not isinstance(kind, str):
        return None
    if isinstance(at, bool) or not isinstance(at, int | float):
        return None
    return Event(event_id, seq if type(seq) is int else None, kind, float(at), body)


def lock_limit(balance: int | None) -> int | None:
    """The lock's ``limit`` from the seed's ``balance``: none when unknown (65535) or above
    what the contract carries, 0 for a negative balance."""
    if balance is None or balance == UNKNOWN_BALANCE or balance > MAX_LIMIT:
        return None
    return max(0, balance)


def selection_request(txn_ref: str, event: Event) -> dict[str, Any]:
    """``txn.request`` → ``/txn/request`` (SelectionNotification)."""
    return {
        "txn_ref": txn_ref,
        "selection": str(event.int("selection")),
        "cents": event.int("price"),
    }


def vend_result(txn_ref: str, event: Event) -> dict[str, Any]:
    """``txn.vend`` → ``/txn/vend`` (VendResultNotification): ``code`` is "" on success, else
    the device's ``detail`` (``vend_failed``, ``restart_during_vend``...)."""
    result = event.text("result")
    success = result == "success"
    code = "" if success else (event.text("detail") or f"vend_{result}")
    return {"txn_ref": txn_ref, "success": success, "code": code}


def unlock_notice(txn_ref: str, event: Event) -> dict[str, Any] | None:
    """``txn.status`` → ``/txn/unlock`` (UnlockNotification) with the reason as ``code``; a
    ``void`` notice is not an end of the transaction and has no callback."""
    if event.text("state") == "void":
        return None
    return {"txn_ref": txn_ref, "code": event.text("reason") or event.text("state") or ""}


def coil_json(coil: CoilLevel) -> dict[str, Any]:
    """A coil as the seed's Coil: only what the machine has reported is given."""
    out: dict[str, Any] = {"code": coil.code, "formatted_code": str(coil.code)}
    for name in ("name", "placeholder", "price", "capacity", "restock_count"):
        value = getattr(coil, name)
        if value is not None:
            out[name] = value
    if coil.current_stock is not None:
        out["current_stock"] = max(0, coil.current_stock)
    return out


def planogram_coils(result: Mapping[str, Any]) -> list[CoilLevel]:
    """The coils of a ``stock.query`` reply's ``result``: each selection of the planogram with
    its product's name (the product id, a ``placeholder``, when the planogram names none), its
    price, capacity, par level (the seed's ``restock_count``) and level. A recipe's selection
    has no count of its own: name and price only."""
    coils = []
    for row in result.get("selections") or []:
        if not isinstance(row, Mapping) or type(row.get("selection")) is not int:
            continue
        name = row.get("name") if isinstance(row.get("name"), str) else ""
        product = row.get("product") if isinstance(row.get("product"), str) else None
        coils.append(
            CoilLevel(
                row["selection"],
                _uint(row.get("price")),
                _uint(row.get("level")),
                name=name or product,
                placeholder=not name,
                capacity=_uint(row.get("capacity")),
                restock_count=_uint(row.get("par_level")),
            )
        )
    return coils


def _uint(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _planogram(coils: Sequence[CoilLevel]) -> list[dict[str, Any]]:
    return [coil_json(c) for c in sorted(coils, key=lambda c: c.code)]


def after_vend(coils: Sequence[CoilLevel], selection: int) -> list[CoilLevel]:
    """The coils once a vend of ``selection`` took one (the device's ``stock.level`` for it
    follows the vend's event)."""
    return [
        replace(c, current_stock=max(0, c.current_stock - 1))
        if c.code == selection and c.current_stock is not None
        else c
        for c in coils
    ]


def transaction_feed(
    machine: str, event: Event, coils: Sequence[CoilLevel]
) -> dict[str, Any] | None:
    """A dispensed product → ``/feed/transactions`` (TransactionNotification): a ``txn.vend``
    that succeeded (cashless, any vend type) or a cash ``sale``."""
    selection = event.int("selection")
    if selection is None:
        return None
    if event.type == "txn.vend" and event.text("result") == "success":
        cash, cashless = 0, event.int("amount") or 0
    elif event.type == "sale":
        cash, cashless = event.int("price") or 0, 0
    else:
        return None
    return {
        "vm_id": machine,
        "dispense_quantity": 1,
        "time": int(event.at),
        "cash_value": cash,
        "cashless_value": cashless,
        "code": selection,
        "planogram": _planogram(after_vend(coils, selection)),
    }


def refill_feed(machine: str, event: Event, coils: Sequence[CoilLevel]) -> dict[str, Any] | None:
    """A coil loaded (``stock.level`` with reason refill or restock, going up) →
    ``/feed/refills`` (RefillNotification), one per coil."""
    selection, before, after = event.int("selection"), event.int("before"), event.int("after")
    if event.text("reason") not in REFILL_REASONS or selection is None:
        return None
    if before is None or after is None or after <= before:
        return None
    return {
        "vm_id": machine,
        "time": int(event.at),
        "refill_detail": [{"refill_quantity": after - before, "code": selection}],
        "planogram": _planogram(coils),
    }


def alert_feed(machine: str, event: Event) -> dict[str, Any] | None:
    """``stock.alarm``, ``stock.discrepancy`` and ``security.bad_signature`` →
    ``/feed/alerts`` (AlertNotification) with a level of Low, Medium or High."""
    level, message = _alert(event)
    if level is None:
        return None
    return {"vm_id": machine, "time": int(event.at), "message": message, "level": level.value}


def _alert(event: Event) -> tuple[AlertLevel | None, str]:
    key = event.int("selection")
    named = f"selection {key}" if key is not None else f"ingredient {event.text('ingredient')}"
    if event.type == "stock.alarm":
        condition = event.text("condition") or ""
        return STOCK_ALERT.get(condition), f"{named} is {condition} (level {event.int('level')})"
    if event.type == "stock.discrepancy":
        kind = event.text("kind")
        return AlertLevel.MEDIUM, f"{named}: stock discrepancy {kind} ({event.int('missing')})"
    if event.type == "security.bad_signature":
        return AlertLevel.HIGH, f"a command was refused for its signature ({event.text('op')})"
    return None, ""


def changed(coils: Sequence[CoilLevel], change: CoilLevel | None) -> list[CoilLevel]:
    """The coils with an event's change applied (what it does not say is kept)."""
    if change is None:
        return list(coils)
    old = next((c for c in coils if c.code == change.code), CoilLevel(change.code, None, None))
    new = replace(
        old,
        price=old.price if change.price is None else change.price,
        current_stock=old.current_stock if change.current_stock is None else change.current_stock,
    )
    return [c for c in coils if c.code != change.code] + [new]


def coil_change(event: Event) -> CoilLevel | None:
    """What an event tells of a coil: its price (a request) or its stock (a level)."""
    selection = event.int("selection")
    if selection is None:
        return None
    if event.type == "txn.request":
        return CoilLevel(selection, event.int("price"), None)
    if event.type == "stock.level":
        return CoilLevel(selection, None, event.int("after"))
    return None


KEYPAD_COLUMNS = 10
"""Keys per row of the keypad a search describes."""


def keypad(coils: Sequence[CoilLevel]) -> dict[str, Any]:
    """The seed's KeypadConfiguration for a machine: once its planogram is known, one key per
    selection (labelled with its code, in code order, ``KEYPAD_COLUMNS`` to a row), and one key
    makes a selection. The virtual keypad stays disabled (docs/bridge.md §6): the keys say what
    the machine sells, and the customer presses them on the machine."""
    codes = sorted(c.code for c in coils if c.name is not None)  # the planogram's selections
    out: dict[str, Any] = {"virtual_keypad_enabled": False}
    if not codes:
        return out
    columns = min(KEYPAD_COLUMNS, len(codes))
    out["keypad_items"] = [
        {
            "id": code,
            "display_value": str(code),
            "h": 1,
            "w": 1,
            "x": i % columns,
            "y": i // columns,
        }
        for i, code in enumerate(codes)
    ]
    out["total_action_needed"] = 1
    out["total_column_number"] = columns
    out["total_row_number"] = -(-len(codes) // columns)
    return out
