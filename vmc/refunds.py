"""Refunds against finished vends: the rules (sans-I/O, the journal's rows and clock passed in).

Seed 004 refunds a vend by its id. The money is the backend's to move; the machine records
each refund against the vend, so its sales reports net refunds out as the backend's books do.
A vend can be refunded once it has a vend result (``success``, ``failure`` or ``unknown``): the
backend decides whether money moved, the machine only that it never gives back more in total
than the ``amount`` the backend approved with ``paid``. A transaction that ended without a vend
(denied, expired, cancelled) charged nothing, and an open one is not finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vmc.cloud import messages as m
from vmc.transaction import FINAL, VEND_RESULT, Money, Txn


@dataclass(frozen=True, slots=True)
class RefundRow:
    """One refund as the journal keeps it: ``amount`` in minor units, ``at`` in UTC seconds.

    ``selection``, ``result`` and ``vend_type`` are the vend's, so a report needs no join.
    """

    refund_id: str
    txn_id: str
    at: float
    amount: int
    selection: int
    result: str
    vend_type: m.VendType
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The reply, and on a new refund the row to journal and its ``txn.refund`` event."""

    reply: m.Reply
    row: RefundRow | None = None
    event: m.TxnRefund | None = None


def decide(
    cmd: m.Refund,
    txn: Txn | None,
    earlier: Sequence[RefundRow],
    *,
    same_id: RefundRow | None,
    money: Money,
    now: float,
) -> Decision:
    """Judge one refund command.

    ``txn`` is the journal's record of ``cmd.txn_id`` (None when unknown or pruned), ``earlier``
    the refunds recorded against it, ``same_id`` the refund already recorded under the command's
    refund id, if any.
    """
    expired = m.expired_reply(cmd, now)
    if expired is not None:
        return Decision(expired)
    if same_id is not None:
        if same_id.txn_id == cmd.txn_id and cmd.amount in (None, same_id.amount):
            charged = 0 if txn is None else txn.amount or 0
            return Decision(_ok(cmd, same_id, charged, earlier, duplicate=True))
        return _refuse(
            cmd,
            m.ErrorCode.DUPLICATE,
            f"refund {cmd.key} was recorded as {same_id.amount} of transaction {same_id.txn_id}",
        )
    if txn is None:
        return _refuse(cmd, m.ErrorCode.NO_SUCH_TXN, f"transaction {cmd.txn_id} is unknown")
    result = VEND_RESULT.get(txn.state)
    if result is None:
        why = "nothing was charged" if txn.state in FINAL else "it is not finished"
        return _refuse(cmd, m.ErrorCode.WRONG_STATE, f"transaction is {txn.state}: {why}")
    charged = txn.amount or 0
    left = charged - sum(r.amount for r in earlier)
    amount = left if cmd.amount is None else cmd.amount
    if left <= 0:
        message = f"nothing is left to refund of the {charged} charged"
        return _refuse(cmd, m.ErrorCode.AMOUNT_MISMATCH, message)
    if not 0 < amount <= left:
        message = f"amount {amount} is more than the {left} left to refund of {charged} charged"
        return _refuse(cmd, m.ErrorCode.AMOUNT_MISMATCH, message)
    row = RefundRow(
        cmd.key, txn.txn_id, now, amount, txn.selection or 0, result, txn.vend_type, cmd.reason
    )
    refunded = charged - left + amount
    event = m.TxnRefund(
        txn.txn_id,
        txn.ref,
        row.refund_id,
        result,
        row.selection,
        amount,
        charged,
        refunded,
        money.currency,
        money.decimals,
        txn.vend_type,
        cmd.reason,
    )
    return Decision(_ok(cmd, row, charged, [*earlier, row], duplicate=False), row, event)


def _ok(
    cmd: m.Refund, row: RefundRow, charged: int, rows: Sequence[RefundRow], *, duplicate: bool
) -> m.Reply:
    result = {
        "refund_id": row.refund_id,
        "txn_id": row.txn_id,
        "amount": row.amount,
        "charged": charged,
        "refunded": sum(r.amount for r in rows),
        "duplicate": duplicate,
    }
    return m.Reply(cmd.id, True, result=result)


def _refuse(cmd: m.Refund, code: m.ErrorCode, message: str) -> Decision:
    return Decision(m.Reply(cmd.id, False, code, message))
