"""Command decoding: valid commands, every refusal, and hostile input."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmc.cloud import codec
from vmc.cloud import messages as m

BASE: dict[str, Any] = {"v": 1, "id": "c1", "expires": 1e12}


def decode(**fields: Any) -> m.AnyCommand:
    return codec.decode_command(cbor2.dumps({**BASE, **fields}))


def test_valid_commands() -> None:
    assert decode(op="lock") == m.Lock("c1", 1e12)
    assert decode(op="lock", ref="r", limit=300, timeout_s=20, vend_type="test") == m.Lock(
        "c1", 1e12, "r", 300, 20.0, m.VendType.TEST
    )
    assert decode(op="unlock", txn_id="t") == m.Unlock("c1", 1e12, "t")
    assert decode(op="paid", txn_id="t", amount=150) == m.Paid("c1", 1e12, "t", 150)
    assert decode(op="deny", txn_id="t") == m.Deny("c1", 1e12, "t", "")


def test_data_request_and_check_status_commands() -> None:
    assert decode(op="data.request", report=True) == m.DataRequest("c1", 1e12, "c1", True, False)
    assert decode(op="data.request", config=True, report=False, request_id="r9") == m.DataRequest(
        "c1", 1e12, "r9", False, True
    )
    assert decode(op="status.check") == m.CheckStatus("c1", 1e12)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"op": "data.request"}, m.ErrorCode.MISSING_FIELD),
        ({"op": "data.request", "report": False, "config": False}, m.ErrorCode.MISSING_FIELD),
        ({"op": "data.request", "report": 1}, m.ErrorCode.BAD_FIELD),
        ({"op": "data.request", "report": True, "request_id": ""}, m.ErrorCode.BAD_FIELD),
        ({"op": "data.request", "report": True, "request_id": 7}, m.ErrorCode.BAD_FIELD),
        ({"op": "data.request", "report": True, "request_id": "local:x"}, m.ErrorCode.BAD_FIELD),
        ({"op": "data.request", "report": True, "request_id": "r" * 129}, m.ErrorCode.BAD_FIELD),
        ({"op": "status.check", "expires": None}, m.ErrorCode.MISSING_FIELD),
    ],
)
def test_data_request_refusals(fields: dict[str, Any], code: m.ErrorCode) -> None:
    with pytest.raises(codec.CommandError) as info:
        decode(**fields)
    assert info.value.code is code


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"op": "fly"}, m.ErrorCode.UNKNOWN_OP),
        ({"op": "paid", "amount": 1}, m.ErrorCode.MISSING_FIELD),
        ({"op": "paid", "txn_id": "t"}, m.ErrorCode.MISSING_FIELD),
        ({"op": "paid", "txn_id": "t", "amount": True}, m.ErrorCode.BAD_FIELD),
        ({"op": "paid", "txn_id": "t", "amount": 1.5}, m.ErrorCode.BAD_FIELD),
        ({"op": "paid", "txn_id": "t", "amount": 2**40}, m.ErrorCode.BAD_FIELD),
        ({"op": "paid", "txn_id": 5, "amount": 1}, m.ErrorCode.BAD_FIELD),
        ({"op": "lock", "vend_type": "gift"}, m.ErrorCode.BAD_FIELD),
        ({"op": "lock", "timeout_s": 0}, m.ErrorCode.BAD_FIELD),
        ({"op": "lock", "ref": "x" * 1000}, m.ErrorCode.BAD_FIELD),
        ({"op": "lock", "expires": "soon"}, m.ErrorCode.BAD_FIELD),
        ({"op": "lock", "v": 2}, m.ErrorCode.UNSUPPORTED_VERSION),
        ({"op": "lock", "id": ""}, m.ErrorCode.BAD_FIELD),
        ({"op": "lock", "id": None}, m.ErrorCode.MISSING_FIELD),
    ],
)
def test_refusals_name_the_problem(fields: dict[str, Any], code: m.ErrorCode) -> None:
    with pytest.raises(codec.CommandError) as info:
        decode(**fields)
    assert info.value.code is code
    assert info.value.message
    reply = info.value.reply()
    assert not reply.ok
    assert reply.code is code


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff", b"\x9f" * 10000, cbor2.dumps([1, 2]), cbor2.dumps("lock"), b"x" * 20000],
)
def test_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(codec.CommandError) as info:
        codec.decode_command(payload)
    assert info.value.code in (m.ErrorCode.MALFORMED, m.ErrorCode.MISSING_FIELD)
    assert info.value.command_id is None


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_command_error(payload: bytes) -> None:
    with contextlib.suppress(codec.CommandError):
        codec.decode_command(payload)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "id",
                "op",
                "expires",
                "txn_id",
                "amount",
                "limit",
                "ref",
                "timeout_s",
                "vend_type",
                "reason",
                "voucher_id",
                "credit_id",
                "selections",
                "value",
                "medium",
                "surcharge",
            ]
        ),
        values,
    )
)
def test_random_maps_only_raise_command_error(obj: dict[str, Any]) -> None:
    with contextlib.suppress(codec.CommandError):
        codec.decode_command(cbor2.dumps(obj))


def test_event_and_reply_encodings() -> None:
    event = m.Sale("cash", 3, 250, 978, 2)
    body = cbor2.loads(codec.encode_event(event, event_id="e1", seq=7, at=1.5))
    assert body == {
        "v": 1,
        "id": "e1",
        "seq": 7,
        "type": "sale",
        "at": 1.5,
        "payment": "cash",
        "selection": 3,
        "price": 250,
        "currency": 978,
        "decimals": 2,
    }
    reply = m.Reply("c1", False, m.ErrorCode.BUSY, "busy now")
    body = cbor2.loads(codec.encode_reply(reply, at=2.0))
    assert body == {
        "v": 1,
        "id": "c1",
        "ok": False,
        "code": "busy",
        "message": "busy now",
        "result": {},
        "at": 2.0,
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"op": "lock", "expires": 2**1100},
        {"op": "lock", "expires": float("nan")},
        {"op": "lock", "expires": float("inf")},
        {"op": "lock", "timeout_s": float("nan")},
        {"op": "lock", "v": True},
        {"op": "lock", "v": 1.0},
    ],
)
def test_numbers_that_are_not_finite_or_exact(fields: dict[str, Any]) -> None:
    with pytest.raises(codec.CommandError) as info:
        decode(**fields)
    assert info.value.code in (m.ErrorCode.BAD_FIELD, m.ErrorCode.UNSUPPORTED_VERSION)


def test_unknown_op_is_named_before_missing_fields() -> None:
    with pytest.raises(codec.CommandError) as info:
        codec.decode_command(cbor2.dumps({"id": "x", "op": "launch"}))
    assert info.value.code is m.ErrorCode.UNKNOWN_OP


def test_stock_commands() -> None:
    doc = {"version": 1, "products": [], "selections": []}
    assert decode(op="planogram.set", planogram=doc) == m.SetPlanogram("c1", 1e12, doc)
    assert decode(op="stock.refill", lines=[{"selection": 3, "amount": -2}]) == m.Refill(
        "c1", 1e12, (m.StockLine(3, None, -2),)
    )
    assert decode(op="stock.inventory", lines=[{"ingredient": "beans", "level": 40}]) == (
        m.TakeInventory("c1", 1e12, (m.StockLine(None, "beans", 40),))
    )
    assert decode(op="stock.restock") == m.RestockToPar("c1", 1e12)
    assert decode(op="stock.restock", collect=None) == m.RestockToPar("c1", 1e12)
    assert decode(op="stock.restock", collect=True) == m.RestockToPar("c1", 1e12, collect=True)
    assert decode(op="cash.collect") == m.CashCollect("c1", 1e12)
    assert decode(op="sales.query", **{"from": "2026-01-01"}) == m.SalesQuery(
        "c1", 1e12, "2026-01-01"
    )
    assert decode(
        op="sales.query", selection=7, **{"from": "2026-01-01", "to": "2026-01-31"}
    ) == m.SalesQuery("c1", 1e12, "2026-01-01", "2026-01-31", 7)


@pytest.mark.parametrize(
    ("fields", "code", "names"),
    [
        ({"op": "planogram.set"}, m.ErrorCode.MISSING_FIELD, "planogram"),
        ({"op": "sales.query"}, m.ErrorCode.MISSING_FIELD, "from"),
        ({"op": "sales.query", "from": 20260101}, m.ErrorCode.BAD_FIELD, "from"),
        (
            {"op": "sales.query", "from": "2026-01-01", "selection": -1},
            m.ErrorCode.BAD_FIELD,
            "selection",
        ),
        ({"op": "planogram.set", "planogram": [1]}, m.ErrorCode.BAD_FIELD, "planogram"),
        ({"op": "stock.restock", "collect": 1}, m.ErrorCode.BAD_FIELD, "collect"),
        ({"op": "stock.restock", "collect": "yes"}, m.ErrorCode.BAD_FIELD, "collect"),
        ({"op": "stock.refill", "lines": []}, m.ErrorCode.BAD_FIELD, "lines"),
        ({"op": "stock.refill", "lines": [{"amount": 1}]}, m.ErrorCode.BAD_FIELD, "lines[0]"),
        (
            {"op": "stock.refill", "lines": [{"selection": 1, "ingredient": "x", "amount": 1}]},
            m.ErrorCode.BAD_FIELD,
            "lines[0]",
        ),
        ({"op": "stock.refill", "lines": [{"selection": 1}]}, m.ErrorCode.MISSING_FIELD, "amount"),
        (
            {"op": "stock.inventory", "lines": [{"selection": 1, "level": -1}]},
            m.ErrorCode.BAD_FIELD,
            "lines[0].level",
        ),
        (
            {"op": "stock.refill", "lines": [{"selection": True, "amount": 1}]},
            m.ErrorCode.BAD_FIELD,
            "lines[0].selection",
        ),
        (
            {"op": "stock.refill", "lines": [{"selection": 1, "amount": 1.5}]},
            m.ErrorCode.BAD_FIELD,
            "lines[0].amount",
        ),
    ],
)
def test_bad_stock_commands_name_the_field(
    fields: dict[str, Any], code: m.ErrorCode, names: str
) -> None:
    with pytest.raises(codec.CommandError) as caught:
        decode(**fields)
    assert caught.value.code is code
    assert names in caught.value.message
    assert caught.value.command_id == "c1"


def test_voucher_credit_and_the_payment_medium() -> None:
    assert decode(op="voucher", voucher_id="v1") == m.Voucher("c1", 1e12, "v1")
    assert decode(
        op="voucher",
        voucher_id="v1",
        selections=[3, 1, 3],
        value=150,
        timeout_s=120,
        ref="cust-7",
        medium="app",
        surcharge=20,
    ) == m.Voucher("c1", 1e12, "v1", (1, 3), 150, 120.0, "cust-7", m.PaymentMedium.APP, 20)
    assert decode(op="voucher", voucher_id="v1", selections=4).selections == (4,)  # type: ignore[union-attr]
    assert decode(op="credit", credit_id="k1", amount=1400, ref="FREE_CREDIT") == m.Credit(
        "c1", 1e12, "k1", 1400, ref="FREE_CREDIT"
    )
    assert decode(op="lock", medium="rfid", surcharge=30) == m.Lock(
        "c1", 1e12, medium=m.PaymentMedium.RFID, surcharge=30
    )


@pytest.mark.parametrize(
    ("fields", "code", "names"),
    [
        ({"op": "voucher"}, m.ErrorCode.MISSING_FIELD, "voucher_id"),
        ({"op": "voucher", "voucher_id": ""}, m.ErrorCode.BAD_FIELD, "voucher_id"),
        (
            {"op": "voucher", "voucher_id": "v", "selections": []},
            m.ErrorCode.BAD_FIELD,
            "selections",
        ),
        (
            {"op": "voucher", "voucher_id": "v", "selections": [1, -1]},
            m.ErrorCode.BAD_FIELD,
            "selections",
        ),
        (
            {"op": "voucher", "voucher_id": "v", "selections": "1"},
            m.ErrorCode.BAD_FIELD,
            "selections",
        ),
        (
            {"op": "voucher", "voucher_id": "v", "selections": [True]},
            m.ErrorCode.BAD_FIELD,
            "selections",
        ),
        ({"op": "voucher", "voucher_id": "v", "value": 0}, m.ErrorCode.BAD_FIELD, "value"),
        ({"op": "voucher", "voucher_id": "v", "medium": "cash"}, m.ErrorCode.BAD_FIELD, "medium"),
        ({"op": "credit", "credit_id": "k"}, m.ErrorCode.MISSING_FIELD, "amount"),
        ({"op": "credit", "amount": 5}, m.ErrorCode.MISSING_FIELD, "credit_id"),
        ({"op": "credit", "credit_id": "k", "amount": 0}, m.ErrorCode.BAD_FIELD, "amount"),
        (
            {"op": "credit", "credit_id": "k", "amount": 5, "timeout_s": 0},
            m.ErrorCode.BAD_FIELD,
            "timeout_s",
        ),
        ({"op": "lock", "surcharge": -1}, m.ErrorCode.BAD_FIELD, "surcharge"),
    ],
)
def test_bad_vouchers_and_credits_name_the_field(
    fields: dict[str, Any], code: m.ErrorCode, names: str
) -> None:
    with pytest.raises(codec.CommandError) as caught:
        decode(**fields)
    assert caught.value.code is code
    assert names in caught.value.message


def test_voucher_and_credit_status_encodings() -> None:
    status = m.CreditStatus(
        "k1",
        "FREE_CREDIT",
        "ended",
        "session_ended",
        1400,
        350,
        1050,
        2,
        ("t1", "t2"),
        978,
        2,
        m.PaymentMedium.BALANCE,
        0,
    )
    body = cbor2.loads(codec.encode_event(status, event_id="e1", seq=9, at=3.0))
    assert body["type"] == "credit.status"
    assert body["txn_ids"] == ["t1", "t2"]
    assert body["medium"] == "balance"
    assert (body["used"], body["rest"], body["vends"]) == (350, 1050, 2)
    voucher = m.VoucherStatus("v1", None, "expired", "timeout", 150, 0, None, None, 978, 2, None, 0)
    body = cbor2.loads(codec.encode_event(voucher, event_id="e2", seq=10, at=3.0))
    assert body["type"] == "voucher.status"
    assert body["medium"] is None
