"""The bridge's mapping between vmc events and the seed's callbacks, field by field."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from bridge import mapping
from bridge.mapping import Event
from bridge.store import CoilLevel
from vmc.cloud import codec


def event(kind: str, **body: Any) -> Event:
    payload = cbor2.dumps({"v": 1, "id": "e1", "seq": 7, "type": kind, "at": 1767261608.7, **body})
    parsed = mapping.parse_event(payload)
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        cbor2.dumps([1]),
        cbor2.dumps({"id": "x"}),
        cbor2.dumps({"id": "", "type": "sale", "at": 1}),
    ],
)
def test_bridge_drops_events_without_an_envelope(payload: bytes) -> None:
    assert mapping.parse_event(payload) is None


@pytest.mark.parametrize(
    ("balance", "limit"),
    [(None, None), (65535, None), (2**32, None), (0, 0), (-5, 0), (250, 250), (65534, 65534)],
)
def test_bridge_balance_is_the_lock_limit(balance: int | None, limit: int | None) -> None:
    assert mapping.lock_limit(balance) == limit


def test_bridge_selection_request() -> None:
    ev = event("txn.request", txn_id="t", ref="R1", selection=12, price=250, deadline=1.0)
    assert mapping.selection_request("R1", ev) == {"txn_ref": "R1", "selection": "12", "cents": 250}


@pytest.mark.parametrize(
    ("result", "detail", "success", "code"),
    [
        ("success", "", True, ""),
        ("failure", "vend_failed", False, "vend_failed"),
        ("unknown", "restart_during_vend", False, "restart_during_vend"),
        ("unknown", "", False, "vend_unknown"),
    ],
)
def test_bridge_vend_result(result: str, detail: str, success: bool, code: str) -> None:
    ev = event("txn.vend", txn_id="t", result=result, detail=detail, selection=3, amount=100)
    assert mapping.vend_result("R", ev) == {"txn_ref": "R", "success": success, "code": code}


def test_bridge_unlock_notice_carries_the_reason_and_skips_void() -> None:
    expired = event("txn.status", txn_id="t", state="expired", reason="lock_timeout")
    assert mapping.unlock_notice("R", expired) == {"txn_ref": "R", "code": "lock_timeout"}
    void = event("txn.status", txn_id="t", state="void", reason="late_paid")
    assert mapping.unlock_notice("R", void) is None


def test_bridge_transaction_feed_cashless_and_cash() -> None:
    coils = [CoilLevel(3, 150, 4), CoilLevel(1, 100, None)]
    vend = event("txn.vend", txn_id="t", result="success", selection=3, amount=140)
    body = mapping.transaction_feed("m1", vend, coils)
    assert body == {
        "vm_id": "m1",
        "dispense_quantity": 1,
        "time": 1767261608,
        "cash_value": 0,
        "cashless_value": 140,
        "code": 3,
        "planogram": [
            {"code": 1, "formatted_code": "1", "price": 100},
            {"code": 3, "formatted_code": "3", "price": 150, "current_stock": 3},
        ],
    }
    sale = event("sale", payment="cash", selection=1, price=120, currency=978, decimals=2)
    cash = mapping.transaction_feed("m1", sale, [])
    assert cash is not None
    assert (cash["cash_value"], cash["cashless_value"], cash["code"]) == (120, 0, 1)
    failed = event("txn.vend", txn_id="t", result="failure", selection=3, amount=140)
    assert mapping.transaction_feed("m1", failed, coils) is None


def test_bridge_refill_feed_only_for_loads() -> None:
    load = event(
        "stock.level", op_id="r", selection=2, ingredient=None, before=1, after=6, reason="refill"
    )
    body = mapping.refill_feed("m1", load, [CoilLevel(2, None, 6)])
    assert body is not None
    assert body["refill_detail"] == [{"refill_quantity": 5, "code": 2}]
    assert body["planogram"] == [{"code": 2, "formatted_code": "2", "current_stock": 6}]
    vend = event(
        "stock.level", op_id="t", selection=2, ingredient=None, before=6, after=5, reason="vend"
    )
    assert mapping.refill_feed("m1", vend, []) is None


@pytest.mark.parametrize(
    ("condition", "level"), [("ok", "Low"), ("low", "Medium"), ("empty", "High")]
)
def test_bridge_stock_alarm_levels(condition: str, level: str) -> None:
    alarm = event(
        "stock.alarm",
        op_id="t",
        selection=1,
        ingredient=None,
        before="ok",
        condition=condition,
        level=0,
    )
    body = mapping.alert_feed("m1", alarm)
    assert body is not None
    assert body["level"] == level
    assert body["vm_id"] == "m1"
    assert "selection 1" in body["message"]


def test_bridge_other_events_have_no_alert() -> None:
    assert mapping.alert_feed("m1", event("sale", selection=1, price=1)) is None


def test_bridge_commands_decode_as_the_device_decodes_them() -> None:
    """What the bridge publishes (codec.encode_map of its fields) is a valid command."""
    lock = codec.encode_map(
        {
            "id": "c1",
            "op": "lock",
            "expires": 2e9,
            "ref": "R1",
            "limit": 500,
            "timeout_s": 60.0,
            "medium": "app",
        }
    )
    decoded = codec.decode_command(lock)
    assert decoded.id == "c1"
    paid = codec.decode_command(
        codec.encode_map({"id": "c2", "op": "paid", "expires": 2e9, "txn_id": "t", "amount": 90})
    )
    assert paid.id == "c2"


def test_bridge_coil_changes_merge() -> None:
    coils = [CoilLevel(1, 100, 5), CoilLevel(2, None, 1)]
    assert mapping.changed(coils, None) == coils
    assert sorted(mapping.changed(coils, CoilLevel(1, None, 7)), key=lambda c: c.code) == [
        CoilLevel(1, 100, 7),
        CoilLevel(2, None, 1),
    ]
    assert CoilLevel(3, 120, None) in mapping.changed(coils, CoilLevel(3, 120, None))


def test_bridge_planogram_coils_from_a_stock_query() -> None:
    result = {
        "planogram_version": 2,
        "selections": [
            {"selection": 1, "product": "bar", "name": "Choco bar", "price": 150, "level": 3,
             "capacity": 10, "par_level": 8, "alarm_level": 2},
            {"selection": 2, "product": "crisps", "name": "", "price": 120, "level": 0,
             "capacity": 6, "par_level": 5, "alarm_level": 1},
            {"selection": 7, "product": "latte", "name": "Latte", "price": 250, "level": None,
             "capacity": None, "par_level": None, "alarm_level": None},
            {"selection": "x"},
        ],
    }  # fmt: skip
    assert mapping.planogram_coils(result) == [
        CoilLevel(1, 150, 3, "Choco bar", False, 10, 8),
        CoilLevel(2, 120, 0, "crisps", True, 6, 5),  # no name: the product id, a placeholder
        CoilLevel(7, 250, None, "Latte", False, None, None),  # a recipe: no count of its own
    ]
    assert mapping.planogram_coils({}) == []


def test_bridge_coil_json_is_the_seed_coil() -> None:
    coil = CoilLevel(1, 150, -1, "Choco bar", False, 10, 8)
    assert mapping.coil_json(coil) == {
        "code": 1,
        "formatted_code": "1",
        "name": "Choco bar",
        "placeholder": False,
        "price": 150,
        "capacity": 10,
        "restock_count": 8,
        "current_stock": 0,  # never below 0
    }
    assert mapping.coil_json(CoilLevel(4, None, None)) == {"code": 4, "formatted_code": "4"}


def test_bridge_a_vend_and_an_event_keep_the_planogram_fields() -> None:
    coils = [CoilLevel(1, 150, 3, "Choco bar", False, 10, 8)]
    assert mapping.after_vend(coils, 1) == [CoilLevel(1, 150, 2, "Choco bar", False, 10, 8)]
    assert mapping.changed(coils, CoilLevel(1, 160, None)) == [
        CoilLevel(1, 160, 3, "Choco bar", False, 10, 8)
    ]
    vend = event("txn.vend", result="success", selection=1, amount=150)
    body = mapping.transaction_feed("m1", vend, coils)
    assert body is not None
    assert body["planogram"][0]["name"] == "Choco bar"
    assert body["planogram"][0]["current_stock"] == 2


def test_bridge_keypad_from_the_planogram() -> None:
    """One key per planogram selection, ten to a row, in code order; coils the planogram does
    not name (known from events only) have no key; the virtual keypad stays off."""
    assert mapping.keypad([CoilLevel(5, 100, 2)]) == {"virtual_keypad_enabled": False}
    coils = [CoilLevel(code, 100, 1, f"p{code}") for code in range(30, 18, -1)]  # 12 of them
    keypad = mapping.keypad([*coils, CoilLevel(99, 50, 3)])
    items = keypad["keypad_items"]
    assert [item["id"] for item in items] == list(range(19, 31))
    assert (items[0]["x"], items[0]["y"], items[10]["x"], items[10]["y"]) == (0, 0, 0, 1)
    assert items[11] == {"id": 30, "display_value": "30", "h": 1, "w": 1, "x": 1, "y": 1}
    assert (keypad["total_column_number"], keypad["total_row_number"]) == (10, 2)
    assert (keypad["total_action_needed"], keypad["virtual_keypad_enabled"]) == (1, False)
