"""A technician's test vend in the transaction engine (sans-I/O): a test-media session in which
the machine approves one selection, once, at 0, journaled as vend type ``test``."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from protocols.mdb import events as ev
from protocols.mdb.commands import PaymentType
from vmc.cloud import messages as m
from vmc.credit import (
    CreditKind,
    CreditState,
    TestVendOutcome,
    TestVendResult,
    ended_test_vend,
    format_test_vend,
)
from vmc.services import bus_messages as bus
from vmc.transaction import SESSION_MARGIN_S, Effects, Engine, EngineConfig, Money, TxnState

S = TxnState
EXPIRES = 1e12


def engine(now: float = 0.0) -> Engine:
    counter = itertools.count(1)
    eng = Engine(
        EngineConfig(Money(978, 2), approval_timeout=4.0, lock_timeout=30.0),
        lambda: f"t{next(counter)}",
    )
    eng.on_bus(ev.StateChanged(ev.State.DISABLED, ev.State.ENABLED), now)
    return eng


def opened(eng: Engine, selection: int = 5, timeout_s: float = 20.0) -> Effects:
    fx = eng.test_vend("tv1", selection, timeout_s, 1.0)
    assert fx.reply is not None
    assert fx.reply.ok, fx.reply
    return fx


def approvals(fx: Effects) -> list[bus.ApproveVend]:
    return [c for c in fx.bus if isinstance(c, bus.ApproveVend)]


def test_a_test_vend_opens_a_test_media_session_the_machine_pays_nothing_for() -> None:
    eng = engine()
    fx = opened(eng, timeout_s=20.0)
    assert fx.bus == [bus.BeginSession(None, int(PaymentType.TEST), 20.0 + SESSION_MARGIN_S)]
    assert fx.durable  # journaled, fsynced, before the bus hears of it
    (session,) = fx.credits
    assert (session.kind, session.state, session.value) == (CreditKind.TEST_VEND, "open", 0)
    assert fx.reply is not None
    assert fx.reply.result == {"selection": 5, "expires": 21.0}
    assert not fx.events  # nothing for the cloud until its vend


def test_its_selection_is_approved_at_zero_and_vended_as_a_test() -> None:
    eng = engine()
    opened(eng)
    request = eng.on_bus(ev.VendRequested(3, 5, 150), 2.0)
    assert [t.state for t in request.transitions] == [S.REQUESTED, S.APPROVING]
    assert request.bus == [bus.ApproveVend(3, 0)]
    assert not request.events  # no txn.request: the machine decided
    txn = request.transitions[-1]
    assert (txn.vend_type, txn.test_id, txn.amount, txn.voucher_id, txn.credit_id) == (
        m.VendType.TEST,
        "tv1",
        0,
        None,
        None,
    )
    eng.on_bus(ev.VendApprovedSent(3, 0), 2.1)
    vended = eng.on_bus(ev.VendSucceeded(3, 5, 0), 3.0)
    (txn_vend,) = vended.events  # the txn.vend, and no voucher.status or credit.status
    assert isinstance(txn_vend, m.TxnVend)
    assert (txn_vend.result, txn_vend.vend_type, txn_vend.amount, txn_vend.selection) == (
        "success",
        m.VendType.TEST,
        0,
        5,
    )
    session = vended.credits[-1]
    assert (session.state, session.reason, session.used) == (CreditState.USED, "vended", 0)
    assert eng.credit is None
    outcome = ended_test_vend(session, txn_vend)
    assert (outcome.result, outcome.vended, outcome.txn_id) == (TestVendResult.VENDED, 5, "t1")
    assert outcome.ok


def test_another_selection_is_denied_and_the_session_waits_for_the_right_one() -> None:
    eng = engine()
    opened(eng)
    other = eng.on_bus(ev.VendRequested(1, 7, 150), 2.0)
    assert other.bus == [bus.DenyVend(1)]
    assert not other.transitions
    assert eng.credit is not None
    eng.on_bus(ev.VendDeniedSent(1, ev.DenyReason.APPLICATION), 2.1)
    assert approvals(eng.on_bus(ev.VendRequested(2, 5, 150), 3.0)) == [bus.ApproveVend(2, 0)]


def test_a_failed_vend_ends_the_test_vend() -> None:
    """Unlike a voucher, which waits for another selection: the technician wants one answer."""
    eng = engine()
    opened(eng)
    eng.on_bus(ev.VendRequested(3, 5, 150), 2.0)
    eng.on_bus(ev.VendApprovedSent(3, 0), 2.1)
    failed = eng.on_bus(ev.VendFailed(3, 5, 0), 3.0)
    session = failed.credits[-1]
    assert (session.state, session.reason) == (CreditState.USED, "vend_failed")
    (txn_vend,) = failed.events
    assert isinstance(txn_vend, m.TxnVend)
    assert ended_test_vend(session, txn_vend).result is TestVendResult.FAILED
    assert eng.credit is None


def test_nobody_selects_within_its_time() -> None:
    eng = engine()
    opened(eng, timeout_s=20.0)
    assert not eng.tick(20.9).bus
    fx = eng.tick(21.0)
    assert fx.bus == [bus.CancelSession(None)]
    session = fx.credits[-1]
    assert (session.state, session.reason) == (CreditState.EXPIRED, "timeout")
    assert ended_test_vend(session, None).result is TestVendResult.NOT_SELECTED
    assert not fx.events


def test_abandoned_before_its_vend_but_not_during_it() -> None:
    eng = engine()
    opened(eng)
    fx = eng.abandon_test_vend("tv1", 2.0)
    assert fx.bus == [bus.CancelSession(None)]
    assert ended_test_vend(fx.credits[-1], None).result is TestVendResult.CANCELLED
    eng.on_bus(ev.SessionEnded(), 2.5)
    eng.test_vend("tv2", 5, 20.0, 3.0)
    eng.on_bus(ev.VendRequested(4, 5, 150), 4.0)
    assert eng.abandon_test_vend("tv2", 4.5) == Effects()  # its vend runs: it finishes first
    assert eng.credit is not None


def test_refused_while_anything_is_open_or_the_reader_is_not_enabled() -> None:
    eng = engine()
    eng.on_command(m.Lock("c1", EXPIRES), 1.0)
    fx = eng.test_vend("tv1", 5, 20.0, 1.5)
    assert fx.reply is not None
    assert (fx.reply.ok, fx.reply.code) == (False, m.ErrorCode.BUSY)
    assert "transaction t1 is locked" in fx.reply.message
    assert not fx.bus
    assert not fx.credits

    eng = engine()
    opened(eng)
    lock = eng.on_command(m.Lock("c2", EXPIRES), 2.0)
    assert lock.reply is not None
    assert (lock.reply.code, lock.reply.message) == (m.ErrorCode.BUSY, "test_vend tv1 is open")

    eng = engine()
    eng.on_bus(ev.StateChanged(ev.State.ENABLED, ev.State.SESSION_IDLE), 0.5)
    fx = eng.test_vend("tv1", 5, 20.0, 1.0)
    assert fx.reply is not None
    assert (fx.reply.code, fx.reply.message) == (
        m.ErrorCode.READER_UNAVAILABLE,
        "reader is SESSION_IDLE",
    )


def test_a_restart_settles_an_approved_test_vend_as_unknown() -> None:
    eng = engine()
    opened(eng)
    request = eng.on_bus(ev.VendRequested(3, 5, 150), 2.0)
    fresh = engine()
    fx = fresh.recover(request.transitions[-1], 10.0, request.credits[-1])
    txn_vends = [e for e in fx.events if isinstance(e, m.TxnVend)]
    assert [(e.result, e.vend_type, e.detail) for e in txn_vends] == [
        ("unknown", m.VendType.TEST, "restart_during_vend")
    ]
    assert (fx.credits[-1].state, fx.credits[-1].reason) == (CreditState.USED, "vend_unknown")


@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 5000), st.booleans()), min_size=1, max_size=8
    )
)
def test_whatever_the_vmc_asks_only_the_selection_is_approved_once_at_zero(
    asked: list[tuple[int, int, bool]],
) -> None:
    eng = engine()
    opened(eng, selection=5)
    approved: list[bus.ApproveVend] = []
    now = 2.0
    for vend_id, (item, price, negative) in enumerate(asked, start=1):
        now += 1.0
        fx = eng.on_bus(ev.VendRequested(vend_id, item, price, negative), now)
        approved += approvals(fx)
        if approvals(fx):
            eng.on_bus(ev.VendApprovedSent(vend_id, 0), now + 0.1)
            eng.on_bus(ev.VendSucceeded(vend_id, item, 0), now + 0.5)
        else:
            eng.on_bus(ev.VendDeniedSent(vend_id, ev.DenyReason.APPLICATION), now + 0.1)
    wanted = [i + 1 for i, (item, _, negative) in enumerate(asked) if item == 5 and not negative]
    assert [a.vend_id for a in approved] == wanted[:1]
    assert all(a.amount == 0 for a in approved)


def test_what_a_technician_reads() -> None:
    vended = TestVendOutcome(TestVendResult.VENDED, 5, "", txn_id="e02a", vended=5)
    assert format_test_vend(vended.to_json()) == (
        "Test vend of selection 5: vended\n  transaction e02a, journaled as vend type test"
    )
    lost = TestVendOutcome(TestVendResult.NOT_SELECTED, 5, "timeout", other_selections=(7, 9))
    assert format_test_vend(lost.to_json()) == (
        "Test vend of selection 5: not selected in time (timeout)\n"
        "  the VMC asked for 7, 9 instead (denied): does it number its selections differently"
        " from their labels?"
    )
    refused = TestVendOutcome(TestVendResult.REFUSED, 5, "reader is DISABLED", "reader_unavailable")
    assert format_test_vend(refused.to_json()) == (
        "Test vend of selection 5: refused (reader_unavailable): reader is DISABLED"
    )
    assert refused.to_json() == {
        "ok": False,
        "result": "refused",
        "selection": 5,
        "reason": "reader is DISABLED",
        "code": "reader_unavailable",
        "txn_id": None,
        "vended": None,
        "other_selections": [],
    }
