"""The remote-vend transaction engine, sans-I/O: every step, every refusal, every recovery."""

from __future__ import annotations

import itertools

import pytest

from protocols.mdb import events as ev
from protocols.mdb.commands import Feature
from vmc.cloud import messages as m
from vmc.services import bus_messages as bus
from vmc.transaction import (
    DURABLE,
    FINAL,
    LEGAL,
    Effects,
    Engine,
    EngineConfig,
    Money,
    Txn,
    TxnState,
)

S = TxnState
EXPIRES = 1e12


def engine(*, always_idle: bool = False) -> Engine:
    counter = itertools.count(1)
    eng = Engine(
        EngineConfig(Money(978, 2), approval_timeout=4.0, lock_timeout=30.0),
        lambda: f"t{next(counter)}",
    )
    eng.on_bus(ev.StateChanged(ev.State.DISABLED, ev.State.ENABLED), 0.0)
    if always_idle:
        eng.on_bus(ev.FeaturesEnabled(int(Feature.ALWAYS_IDLE)), 0.0)
    return eng


def lock(eng: Engine, now: float = 1.0, **fields: object) -> Effects:
    return eng.on_command(m.Lock("c-lock", EXPIRES, **fields), now)  # type: ignore[arg-type]


def states(fx: Effects) -> list[TxnState]:
    return [t.state for t in fx.transitions]


def requested(eng: Engine, now: float = 2.0, price: int = 150) -> Effects:
    return eng.on_bus(ev.VendRequested(7, 12, price), now)


def test_the_seven_steps() -> None:
    eng = engine()
    fx = lock(eng, ref="member-9", limit=500)
    assert states(fx) == [S.LOCKED]
    assert fx.bus == [bus.BeginSession(500)]
    assert fx.reply is not None
    assert fx.reply.ok
    txn_id = fx.reply.result["txn_id"]
    fx = requested(eng)
    assert states(fx) == [S.REQUESTED]
    (request,) = fx.events
    assert request == m.TxnRequest(str(txn_id), "member-9", 12, 150, 978, 2, 5.5, m.VendType.PAID)
    fx = eng.on_command(m.Paid("c-paid", EXPIRES, str(txn_id), 150), 3.0)
    assert states(fx) == [S.APPROVING]
    assert fx.durable
    assert fx.bus == [bus.ApproveVend(7, 150)]
    fx = eng.on_bus(ev.VendApprovedSent(7, 150), 3.1)
    assert states(fx) == [S.DISPENSING]
    fx = eng.on_bus(ev.VendSucceeded(7, 12, 150), 5.0)
    assert states(fx) == [S.VENDED]
    (vend,) = fx.events
    assert isinstance(vend, m.TxnVend)
    assert (vend.result, vend.amount, vend.selection) == ("success", 150, 12)
    assert not fx.bus  # the VMC ends its own session after a vend
    assert eng.txn is None


def test_select_first_on_an_always_idle_machine() -> None:
    eng = engine(always_idle=True)
    fx = requested(eng)
    assert states(fx) == [S.REQUESTED]
    (request,) = fx.events
    assert isinstance(request, m.TxnRequest)
    assert request.ref is None


def test_a_selection_without_lock_or_always_idle_is_denied() -> None:
    eng = engine()
    fx = requested(eng)
    assert fx.bus == [bus.DenyVend(7)]
    assert not fx.transitions
    assert eng.txn is None


def test_deny() -> None:
    eng = engine()
    txn_id = str(lock(eng).reply.result["txn_id"])  # type: ignore[union-attr]
    requested(eng)
    fx = eng.on_command(m.Deny("c-deny", EXPIRES, txn_id, "no money"), 3.0)
    assert states(fx) == [S.DENIED]
    assert fx.bus == [bus.DenyVend(7), bus.CancelSession(7)]
    assert fx.events == [m.TxnStatus(txn_id, None, "denied", "no money")]


def test_over_limit_is_denied_on_the_machine() -> None:
    eng = engine()
    lock(eng, limit=100)
    fx = requested(eng, price=150)
    assert states(fx) == [S.REQUESTED, S.DENIED]
    assert bus.DenyVend(7) in fx.bus


def test_deadline_expires_and_late_paid_is_void() -> None:
    eng = engine()
    txn_id = str(lock(eng).reply.result["txn_id"])  # type: ignore[union-attr]
    requested(eng, now=2.0)
    assert not eng.tick(5.4).transitions
    fx = eng.tick(5.5)
    assert states(fx) == [S.EXPIRED]
    assert fx.bus == [bus.DenyVend(7), bus.CancelSession(7)]
    fx = eng.on_command(m.Paid("late", EXPIRES, txn_id, 150), 6.0)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.TOO_LATE
    assert fx.events == [m.TxnStatus(txn_id, None, "void", "late_paid")]
    assert not fx.bus


def test_paid_at_the_deadline_is_refused_before_the_tick() -> None:
    eng = engine()
    txn_id = str(lock(eng).reply.result["txn_id"])  # type: ignore[union-attr]
    requested(eng, now=2.0)
    fx = eng.on_command(m.Paid("p", EXPIRES, txn_id, 150), 5.5)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.TOO_LATE
    assert states(fx) == [S.EXPIRED]
    assert not any(isinstance(b, bus.ApproveVend) for b in fx.bus)


def test_reader_refusing_a_late_approval_makes_it_void() -> None:
    eng = engine()
    txn_id = str(lock(eng).reply.result["txn_id"])  # type: ignore[union-attr]
    requested(eng)
    eng.on_command(m.Paid("p", EXPIRES, txn_id, 150), 3.0)
    fx = eng.on_bus(bus.CommandRefused("ApproveVend", "vend 7 is not awaiting a decision"), 3.1)
    assert states(fx) == [S.EXPIRED]
    assert any(isinstance(e, m.TxnStatus) and e.state == "void" for e in fx.events)


@pytest.mark.parametrize(
    ("event", "final", "result"),
    [
        (ev.VendFailed(7, 12, 150), S.FAILED, "failure"),
        (ev.VendOutcomeUnknown(7, 12, 150, "reader reset"), S.UNKNOWN, "unknown"),
    ],
)
def test_failed_and_unknown_vends(event: object, final: TxnState, result: str) -> None:
    eng = engine()
    txn_id = str(lock(eng).reply.result["txn_id"])  # type: ignore[union-attr]
    requested(eng)
    eng.on_command(m.Paid("p", EXPIRES, txn_id, 150), 3.0)
    eng.on_bus(ev.VendApprovedSent(7, 150), 3.1)
    fx = eng.on_bus(event, 4.0)
    assert states(fx) == [final]
    (vend,) = fx.events
    assert isinstance(vend, m.TxnVend)
    assert vend.result == result


@pytest.mark.parametrize(
    ("reason", "final"),
    [
        (ev.DenyReason.APPROVAL_TIMEOUT, S.EXPIRED),
        (ev.DenyReason.CANCELLED_BY_VMC, S.CANCELLED),
        (ev.DenyReason.READER_RESET, S.CANCELLED),
    ],
)
def test_reader_side_denials(reason: ev.DenyReason, final: TxnState) -> None:
    eng = engine()
    lock(eng)
    requested(eng)
    fx = eng.on_bus(ev.VendDeniedSent(7, reason), 3.0)
    assert states(fx) == [final]


def test_refusals() -> None:
    eng = engine()
    fx = eng.on_command(m.Unlock("u", EXPIRES, "nope"), 1.0)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.NO_SUCH_TXN
    fx = eng.on_command(m.Lock("old", 0.5), 1.0)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.EXPIRED
    txn_id = str(lock(eng).reply.result["txn_id"])  # type: ignore[union-attr]
    fx = lock(eng)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.BUSY
    fx = eng.on_command(m.Paid("p", EXPIRES, txn_id, 150), 1.5)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.WRONG_STATE  # nothing selected yet
    requested(eng)
    fx = eng.on_command(m.Paid("p2", EXPIRES, txn_id, 151), 2.5)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.AMOUNT_MISMATCH
    eng.on_command(m.Paid("p3", EXPIRES, txn_id, 150), 2.6)
    fx = eng.on_command(m.Unlock("u2", EXPIRES, txn_id), 2.7)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.WRONG_STATE
    fx = eng.on_command(m.Paid("p4", EXPIRES, txn_id, 150), 2.8)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.WRONG_STATE
    assert not fx.bus


def test_lock_needs_an_enabled_reader() -> None:
    eng = engine()
    eng.on_bus(ev.StateChanged(ev.State.ENABLED, ev.State.DISABLED), 0.5)
    fx = lock(eng)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.READER_UNAVAILABLE


def test_unlock_and_lock_timeout_and_walk_away() -> None:
    eng = engine()
    txn_id = str(lock(eng).reply.result["txn_id"])  # type: ignore[union-attr]
    fx = eng.on_command(m.Unlock("u", EXPIRES, txn_id), 2.0)
    assert states(fx) == [S.CANCELLED]
    assert fx.bus == [bus.CancelSession()]
    lock(eng, now=3.0, timeout_s=5.0)
    assert not eng.tick(7.9).transitions
    fx = eng.tick(8.0)
    assert states(fx) == [S.EXPIRED]
    assert fx.events[0].reason == "lock_timeout"  # type: ignore[union-attr]
    lock(eng, now=9.0)
    fx = eng.on_bus(ev.SessionEnded(), 10.0)
    assert states(fx) == [S.CANCELLED]


def test_cash_sale_becomes_a_sale_event() -> None:
    fx = engine().on_bus(ev.CashSaleReported(30, 250), 1.0)
    assert fx.events == [m.Sale("cash", 30, 250, 978, 2)]


@pytest.mark.parametrize(
    ("state", "final", "kind"),
    [
        (S.LOCKED, S.CANCELLED, m.TxnStatus),
        (S.REQUESTED, S.EXPIRED, m.TxnStatus),
        (S.APPROVING, S.UNKNOWN, m.TxnVend),
        (S.DISPENSING, S.UNKNOWN, m.TxnVend),
    ],
)
def test_recovery_settles_whatever_was_open(state: TxnState, final: TxnState, kind: type) -> None:
    eng = engine()
    open_txn = Txn("t9", state, 1.0, 1.0, selection=4, price=100, vend_id=3, amount=100)
    fx = eng.recover(open_txn, 50.0)
    assert states(fx) == [final]
    (event,) = fx.events
    assert isinstance(event, kind)
    assert eng.txn is None
    assert not fx.bus  # nothing is ever approved again


def test_recovery_of_nothing() -> None:
    assert not engine().recover(None, 1.0).transitions


def test_the_transition_table_is_closed() -> None:
    for state in FINAL:
        assert state not in LEGAL
    for targets in LEGAL.values():
        assert targets <= set(TxnState)
    assert S.APPROVING in DURABLE
    assert S.VENDED in DURABLE


def test_paid_for_a_closed_or_unknown_transaction_changes_nothing() -> None:
    eng = engine()
    txn_id = str(lock(eng).reply.result["txn_id"])  # type: ignore[union-attr]
    requested(eng)
    eng.on_command(m.Paid("p", EXPIRES, txn_id, 150), 3.0)
    eng.on_bus(ev.VendApprovedSent(7, 150), 3.1)
    eng.on_bus(ev.VendSucceeded(7, 13, 150), 4.0)
    again = eng.on_command(m.Paid("p-again", EXPIRES, txn_id, 150), 5.0)
    assert again.reply is not None
    assert again.reply.code is m.ErrorCode.WRONG_STATE
    assert not again.events  # a vended transaction is never reported void
    stranger = eng.on_command(m.Paid("p-x", EXPIRES, "made-up", 150), 5.0)
    assert stranger.reply is not None
    assert stranger.reply.code is m.ErrorCode.NO_SUCH_TXN
    assert not stranger.events


def test_vend_result_reports_the_item_the_vmc_vended() -> None:
    eng = engine()
    txn_id = str(lock(eng).reply.result["txn_id"])  # type: ignore[union-attr]
    requested(eng)
    eng.on_command(m.Paid("p", EXPIRES, txn_id, 150), 3.0)
    eng.on_bus(ev.VendApprovedSent(7, 150), 3.1)
    fx = eng.on_bus(ev.VendSucceeded(7, 13, 150), 4.0)
    (vend,) = fx.events
    assert isinstance(vend, m.TxnVend)
    assert vend.selection == 13


def test_amount_the_bus_cannot_carry_is_denied_and_void() -> None:
    eng = engine()
    txn_id = str(lock(eng).reply.result["txn_id"])  # type: ignore[union-attr]
    requested(eng)
    eng.on_command(m.Paid("p", EXPIRES, txn_id, 149), 3.0)
    refused = bus.CommandRefused("ApproveVend", "not a multiple", bus.Refusal.MONEY)
    fx = eng.on_bus(refused, 3.1)
    assert states(fx) == [S.DENIED]
    assert m.TxnStatus(txn_id, None, "void", "bad_amount") in fx.events
    assert bus.CancelSession(7) in fx.bus


def test_a_refused_session_cancels_the_lock() -> None:
    eng = engine()
    lock(eng)
    fx = eng.on_bus(bus.CommandRefused("BeginSession", "cannot begin a session"), 1.5)
    assert states(fx) == [S.CANCELLED]
    assert eng.txn is None


def test_over_limit_also_ends_the_session() -> None:
    eng = engine()
    lock(eng, limit=100)
    fx = requested(eng, price=150)
    assert fx.bus == [bus.DenyVend(7), bus.CancelSession(7)]


@pytest.mark.parametrize(
    ("vend_type", "payment_type"),
    [(m.VendType.PAID, 0x00), (m.VendType.TEST, 0x40), (m.VendType.FREE, 0x80)],
)
def test_vend_types_reach_the_bus_and_the_events(vend_type: m.VendType, payment_type: int) -> None:
    eng = engine()
    fx = lock(eng, vend_type=vend_type)
    assert fx.bus == [bus.BeginSession(None, payment_type)]
    (request,) = requested(eng).events
    assert isinstance(request, m.TxnRequest)
    assert request.vend_type is vend_type
