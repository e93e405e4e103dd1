"""Refund rules (vmc/refunds.py), their journal rows and their pruning, and the command's codec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmc.cloud import codec
from vmc.cloud import messages as m
from vmc.journal import Journal
from vmc.refunds import Decision, RefundRow, decide
from vmc.transaction import FINAL, Money, Txn, TxnState

MONEY = Money(978, 2)
NOW = 1000.0
S = TxnState


def _txn(state: TxnState = S.VENDED, amount: int | None = 250, **fields: Any) -> Txn:
    return Txn(
        "t1", state, 10.0, 20.0, ref="alice", selection=4, price=300, amount=amount, **fields
    )


def _refund(amount: int | None = None, *, refund_id: str | None = None, **fields: Any) -> m.Refund:
    base: dict[str, Any] = {"id": "c1", "expires": NOW + 30, "txn_id": "t1"}
    return m.Refund(**{**base, **fields}, amount=amount, refund_id=refund_id)


def _decide(
    cmd: m.Refund,
    txn: Txn | None,
    earlier: list[RefundRow] | None = None,
    same_id: RefundRow | None = None,
) -> Decision:
    return decide(cmd, txn, earlier or [], same_id=same_id, money=MONEY, now=NOW)


def _row(amount: int, refund_id: str = "r0", txn_id: str = "t1", at: float = 500.0) -> RefundRow:
    return RefundRow(refund_id, txn_id, at, amount, 4, "success", m.VendType.PAID, "")


def test_refund_of_a_vended_txn_defaults_to_the_charged_amount() -> None:
    decision = _decide(_refund(reason="stuck spiral"), _txn())
    assert decision.reply.ok
    assert decision.row == RefundRow(
        "c1", "t1", NOW, 250, 4, "success", m.VendType.PAID, "stuck spiral"
    )
    assert decision.event == m.TxnRefund(
        "t1", "alice", "c1", "success", 4, 250, 250, 250, 978, 2, m.VendType.PAID, "stuck spiral"
    )
    assert decision.reply.result == {
        "refund_id": "c1",
        "txn_id": "t1",
        "amount": 250,
        "charged": 250,
        "refunded": 250,
        "duplicate": False,
    }


def test_partial_refunds_up_to_what_is_left() -> None:
    first = _decide(_refund(100, refund_id="r1"), _txn())
    assert first.row is not None
    assert first.reply.result["refunded"] == 100
    rest = _decide(_refund(refund_id="r2"), _txn(), [first.row])
    assert rest.row is not None
    assert rest.row.amount == 150
    assert rest.event is not None
    assert (rest.event.refunded, rest.event.charged) == (250, 250)
    over = _decide(_refund(151, refund_id="r3"), _txn(), [first.row])
    assert (over.reply.ok, over.reply.code, over.row) == (False, m.ErrorCode.AMOUNT_MISMATCH, None)
    assert "150 left" in over.reply.message
    done = _decide(_refund(refund_id="r4"), _txn(), [first.row, rest.row])
    assert done.reply.code is m.ErrorCode.AMOUNT_MISMATCH
    assert "nothing is left" in done.reply.message


@pytest.mark.parametrize(("state", "result"), [(S.FAILED, "failure"), (S.UNKNOWN, "unknown")])
def test_refund_of_a_failed_or_unknown_vend_is_recorded_with_its_result(
    state: TxnState, result: str
) -> None:
    decision = _decide(_refund(), _txn(state))
    assert decision.reply.ok
    assert decision.row is not None
    assert decision.row.result == result
    assert decision.event is not None
    assert decision.event.result == result


@pytest.mark.parametrize("state", [S.LOCKED, S.REQUESTED, S.APPROVING, S.DISPENSING])
def test_refund_of_an_open_txn_is_wrong_state(state: TxnState) -> None:
    decision = _decide(_refund(), _txn(state))
    assert (decision.reply.code, decision.row, decision.event) == (
        m.ErrorCode.WRONG_STATE,
        None,
        None,
    )
    assert "not finished" in decision.reply.message


@pytest.mark.parametrize("state", [S.DENIED, S.EXPIRED, S.CANCELLED])
def test_refund_of_a_txn_that_ended_without_a_vend_is_wrong_state(state: TxnState) -> None:
    decision = _decide(_refund(), _txn(state, amount=None))
    assert decision.reply.code is m.ErrorCode.WRONG_STATE
    assert "nothing was charged" in decision.reply.message


def test_refund_of_an_unknown_txn_or_a_free_vend() -> None:
    assert _decide(_refund(), None).reply.code is m.ErrorCode.NO_SUCH_TXN
    free = _decide(_refund(), _txn(amount=0, vend_type=m.VendType.FREE))
    assert free.reply.code is m.ErrorCode.AMOUNT_MISMATCH


def test_refund_after_its_expires_is_refused() -> None:
    decision = _decide(_refund(expires=NOW - 1), _txn())
    assert (decision.reply.code, decision.row) == (m.ErrorCode.EXPIRED, None)


def test_refund_id_seen_before_is_a_duplicate_answered_with_the_first_refund() -> None:
    first = _row(100, "r1")
    again = _decide(_refund(refund_id="r1", id="c2"), _txn(), [first], first)
    assert (again.reply.ok, again.row, again.event) == (True, None, None)
    assert again.reply.command_id == "c2"
    assert again.reply.result == {
        "refund_id": "r1",
        "txn_id": "t1",
        "amount": 100,
        "charged": 250,
        "refunded": 100,
        "duplicate": True,
    }
    same_amount = _decide(_refund(100, refund_id="r1"), _txn(), [first], first)
    assert same_amount.reply.ok
    assert same_amount.row is None
    for other in (_refund(50, refund_id="r1"), _refund(refund_id="r1", txn_id="t9")):
        refused = _decide(other, _txn(), [first], first)
        assert (refused.reply.code, refused.row) == (m.ErrorCode.DUPLICATE, None)


@given(
    charged=st.integers(0, 1000),
    asks=st.lists(
        st.tuples(st.one_of(st.none(), st.integers(1, 1200)), st.integers(0, 5)), max_size=20
    ),
)
def test_refunds_never_exceed_the_charged_amount_whatever_the_sequence(
    charged: int, asks: list[tuple[int | None, int]]
) -> None:
    """Any sequence of refunds, full or partial, new or repeated ids: what is recorded never adds
    up to more than the charge, each refused amount was more than the rest, a repeat records
    nothing."""
    txn = _txn(amount=charged)
    rows: dict[str, RefundRow] = {}
    for n, (amount, key) in enumerate(asks):
        refund_id = f"r{key}"
        decision = _decide(
            _refund(amount, refund_id=refund_id, id=f"c{n}"),
            txn,
            list(rows.values()),
            rows.get(refund_id),
        )
        left = charged - sum(r.amount for r in rows.values())
        if decision.row is not None:
            assert refund_id not in rows
            assert 0 < decision.row.amount <= left
            rows[refund_id] = decision.row
        elif decision.reply.code is m.ErrorCode.AMOUNT_MISMATCH:
            assert left == 0 or (amount or 0) > left
        else:
            assert refund_id in rows
        assert sum(r.amount for r in rows.values()) <= charged


# --- the journal --------------------------------------------------------------------------------


def test_journal_keeps_refunds_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    one, two, other = _row(100, "r1", at=10.0), _row(50, "r2", at=20.0), _row(5, "r3", "t2", 30.0)
    journal.commit([], [], refunds=[one, two], durable=True)
    journal.commit([], [], refunds=[other], durable=True)
    journal.close()
    journal = Journal(path)
    assert journal.refunds_of("t1") == [one, two]
    assert journal.refund("r3") == other
    assert journal.refund("nope") is None
    assert journal.refunds(15.0, 30.0) == [two]


def _closed(txn_id: str, at: float, state: TxnState = S.VENDED) -> Txn:
    return Txn(txn_id, state, at, at, amount=100 if state in FINAL else None)


def test_journal_prunes_closed_txns_with_their_refunds_after_the_retention(
    tmp_path: Path,
) -> None:
    """A refund is never forgotten while its transaction is kept: the rest stays exact."""
    now = [0.0]
    journal = Journal(tmp_path / "journal.sqlite3", clock=lambda: now[0])
    old, refunded_late, recent = _closed("old", 10.0), _closed("late", 10.0), _closed("new", 90.0)
    still_open = _closed("open", 5.0, S.LOCKED)
    for txn in (old, refunded_late, recent, still_open):
        now[0] = txn.updated_at  # the journal stamps each transition when it commits it
        journal.commit([txn], [], durable=True)
    journal.commit(
        [], [], refunds=[_row(30, "a", "old", 20.0), _row(40, "b", "late", 60.0)], durable=True
    )
    pruned = journal.prune(older_than=50.0)
    assert (pruned["txns"], pruned["refunds"]) == (1, 1)
    assert journal.txn("old") is None
    assert journal.txn_history("old") == []
    assert journal.refund("a") is None
    assert journal.txn("late") == refunded_late
    assert journal.refunds_of("late") == [_row(40, "b", "late", 60.0)]
    assert journal.txn("new") == recent
    assert journal.open_txn() == still_open
    assert journal.txn_history("new") == [S.VENDED]


# --- the command on the wire ----------------------------------------------------------------------


def _decode(**fields: Any) -> m.AnyCommand:
    base = {"v": 1, "id": "c1", "op": "refund", "expires": 1e12}
    return codec.decode_command(cbor2.dumps({**base, **fields}))


def test_refund_command_decodes_with_defaults() -> None:
    assert _decode(txn_id="t1") == m.Refund("c1", 1e12, "t1")
    full = _decode(txn_id="t1", amount=5, reason="late", refund_id="R-1")
    assert full == m.Refund("c1", 1e12, "t1", 5, "late", "R-1")
    assert isinstance(full, m.Refund)
    assert full.key == "R-1"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({}, m.ErrorCode.MISSING_FIELD),
        ({"txn_id": "t1", "amount": 0}, m.ErrorCode.BAD_FIELD),
        ({"txn_id": "t1", "amount": -1}, m.ErrorCode.BAD_FIELD),
        ({"txn_id": "t1", "amount": True}, m.ErrorCode.BAD_FIELD),
        ({"txn_id": "t1", "refund_id": ""}, m.ErrorCode.BAD_FIELD),
        ({"txn_id": "t1", "refund_id": "x" * 129}, m.ErrorCode.BAD_FIELD),
        ({"txn_id": "t1", "reason": 5}, m.ErrorCode.BAD_FIELD),
    ],
)
def test_refund_command_refusals(fields: dict[str, Any], code: m.ErrorCode) -> None:
    with pytest.raises(codec.CommandError) as info:
        _decode(**fields)
    assert info.value.code is code
    assert info.value.command_id == "c1"
