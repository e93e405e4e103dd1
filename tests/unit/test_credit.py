"""Vouchers and remote credits in the transaction engine (sans-I/O): every rule, and the money
properties against the real reader core under any interleaving, crashes included."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import pytest

from protocols.mdb import events as ev
from protocols.mdb.commands import Feature, PaymentType
from vmc.cloud import messages as m
from vmc.cloud.topics import Topics
from vmc.credit import (
    CreditKind,
    CreditSession,
    CreditState,
    Refusal,
    from_json,
    to_json,
    why_refused,
)
from vmc.journal import Journal
from vmc.services import bus_messages as bus
from vmc.services.remote_vend import RemoteVending
from vmc.services.stock_book import StockBook
from vmc.stock import SlotKey
from vmc.transaction import SESSION_MARGIN_S, Effects, Engine, EngineConfig, Money, Txn, TxnState

S = TxnState
EXPIRES = 1e12
PRICES = {1: 150, 2: 200, 3: 120}
E = TypeVar("E")


def engine(
    *, prices: Mapping[int, int] | None = PRICES, always_idle: bool = False, now: float = 0.0
) -> Engine:
    counter = itertools.count(1)
    eng = Engine(
        EngineConfig(Money(978, 2), approval_timeout=4.0, lock_timeout=30.0),
        lambda: f"t{next(counter)}",
        prices=lambda: prices,
    )
    eng.on_bus(ev.StateChanged(ev.State.DISABLED, ev.State.ENABLED), now)
    if always_idle:
        eng.on_bus(ev.FeaturesEnabled(int(Feature.ALWAYS_IDLE)), now)
    return eng


def voucher(eng: Engine, now: float = 1.0, **fields: Any) -> Effects:
    fields.setdefault("voucher_id", "v1")
    return eng.on_command(m.Voucher("c-v", EXPIRES, **fields), now)


def credit(eng: Engine, amount: int = 500, now: float = 1.0, **fields: Any) -> Effects:
    return eng.on_command(m.Credit("c-c", EXPIRES, "k1", amount, **fields), now)


def states(fx: Effects) -> list[TxnState]:
    return [t.state for t in fx.transitions]


def vend(eng: Engine, vend_id: int, item: int, price: int, now: float) -> list[Effects]:
    """A selection the machine approves, delivered and vended: the effects of each step."""
    return [
        eng.on_bus(ev.VendRequested(vend_id, item, price), now),
        eng.on_bus(ev.VendApprovedSent(vend_id, price), now + 0.1),
        eng.on_bus(ev.VendSucceeded(vend_id, item, price), now + 1.0),
    ]


def events_of(effects: list[Effects], kind: type[E]) -> list[E]:
    return [e for fx in effects for e in fx.events if isinstance(e, kind)]


def only(fx: Effects, kind: type[E]) -> E:
    """The one event of ``fx``, of type ``kind``."""
    (event,) = fx.events
    assert isinstance(event, kind)
    return event


def test_a_voucher_pays_one_vend_in_its_set() -> None:
    eng = engine()
    fx = voucher(eng, selections=(1, 2), value=200, ref="cust-7", medium=m.PaymentMedium.APP)
    assert fx.reply is not None
    assert fx.reply.ok
    assert fx.reply.result == {
        "voucher_id": "v1",
        "value": 200,
        "selections": [1, 2],
        "expires": 31.0,
        "state": "open",
    }
    assert fx.bus == [bus.BeginSession(200, int(PaymentType.NORMAL), 30.0 + SESSION_MARGIN_S)]
    assert fx.durable
    assert [c.state for c in fx.credits] == [CreditState.OPEN]
    request, approved, vended = vend(eng, 4, 2, 180, 2.0)
    assert states(request) == [S.REQUESTED, S.APPROVING]
    assert request.bus == [bus.ApproveVend(4, 180)]  # the VMC's price, never more
    assert request.credits[-1].used == 180
    assert not request.events  # the machine decided: no txn.request
    assert states(approved) == [S.DISPENSING]
    (txn_vend,) = events_of([vended], m.TxnVend)
    assert (txn_vend.result, txn_vend.amount, txn_vend.selection) == ("success", 180, 2)
    assert (txn_vend.voucher_id, txn_vend.credit_id, txn_vend.ref) == ("v1", None, "cust-7")
    assert txn_vend.medium is m.PaymentMedium.APP
    (status,) = events_of([vended], m.VoucherStatus)
    assert status == m.VoucherStatus(
        "v1",
        "cust-7",
        "used",
        "vended",
        200,
        180,
        2,
        txn_vend.txn_id,
        978,
        2,
        m.PaymentMedium.APP,
        0,
    )
    assert eng.credit is None
    assert eng.txn is None


def test_a_selection_outside_the_set_is_denied_and_the_voucher_stays() -> None:
    eng = engine()
    voucher(eng, selections=(1,), value=150)
    fx = eng.on_bus(ev.VendRequested(1, 2, 100), 2.0)
    assert fx.bus == [bus.DenyVend(1)]
    assert not fx.transitions
    assert not fx.events
    fx = eng.on_bus(ev.VendRequested(2, 1, 160), 3.0)  # in the set, over the value
    assert fx.bus == [bus.DenyVend(2)]
    fx = eng.on_bus(ev.VendRequested(3, 1, 150, negative=True), 3.5)
    assert fx.bus == [bus.DenyVend(3)]
    assert eng.credit is not None
    assert eng.credit.used == 0
    effects = vend(eng, 4, 1, 150, 4.0)
    assert events_of(effects, m.VoucherStatus)[0].state == "used"


def test_a_used_voucher_pays_nothing_more_in_the_same_session() -> None:
    eng = engine()
    voucher(eng, value=500)
    vend(eng, 1, 1, 100, 2.0)
    fx = eng.on_bus(ev.VendRequested(2, 1, 100), 4.0)
    assert fx.bus == [bus.DenyVend(2)]  # a multi-vend VMC asks again: not this voucher's
    assert not fx.transitions


def test_a_failed_vend_gives_the_price_back() -> None:
    eng = engine()
    voucher(eng, value=200)
    eng.on_bus(ev.VendRequested(1, 1, 150), 2.0)
    eng.on_bus(ev.VendApprovedSent(1, 150), 2.1)
    fx = eng.on_bus(ev.VendFailed(1, 1, 150), 3.0)
    (failure,) = events_of([fx], m.TxnVend)
    assert failure.result == "failure"
    assert fx.credits[-1].used == 0
    assert eng.credit is not None  # still open: nothing was dispensed
    effects = vend(eng, 2, 3, 120, 4.0)
    assert events_of(effects, m.VoucherStatus)[0].charged == 120


@pytest.mark.parametrize(
    "event",
    [
        ev.VendDeniedSent(1, ev.DenyReason.CANCELLED_BY_VMC),
        bus.CommandRefused("ApproveVend", "late", bus.Refusal.STATE),
    ],
)
def test_an_approval_that_never_reached_the_vmc_gives_the_price_back(event: object) -> None:
    eng = engine()
    credit(eng, 300)
    eng.on_bus(ev.VendRequested(1, 1, 150), 2.0)
    fx = eng.on_bus(event, 2.1)
    assert states(fx)[-1] in (S.CANCELLED, S.EXPIRED)
    assert not fx.events  # no txn.status: the backend never heard of this vend
    assert fx.credits[-1].used == 0
    assert eng.credit is not None


def test_a_voucher_expires_unused_once() -> None:
    eng = engine()
    voucher(eng, value=150, timeout_s=5.0)
    assert not eng.tick(5.9).events
    fx = eng.tick(6.0)
    assert fx.bus == [bus.CancelSession(None)]
    status = only(fx, m.VoucherStatus)
    assert isinstance(status, m.VoucherStatus)
    assert (status.state, status.reason, status.charged, status.txn_id) == (
        "expired",
        "timeout",
        0,
        None,
    )
    assert not eng.tick(7.0).events
    assert not eng.on_bus(ev.SessionEnded(), 7.1).events  # the VMC ends it: already reported


def test_a_selection_after_the_expiry_never_dispenses() -> None:
    eng = engine()
    voucher(eng, selections=(1,), value=150, timeout_s=5.0)
    assert eng.on_bus(ev.VendRequested(1, 2, 100), 2.0).bus == [bus.DenyVend(1)]
    fx = eng.on_bus(ev.VendRequested(2, 1, 100), 6.5)  # before the tick saw the expiry
    assert fx.bus[:1] == [bus.DenyVend(2)]
    assert bus.CancelSession(2) in fx.bus
    assert not any(isinstance(c, bus.ApproveVend) for c in fx.bus)
    assert events_of([fx], m.VoucherStatus)[0].state == "expired"


def test_a_vend_running_at_the_expiry_finishes_first() -> None:
    eng = engine()
    credit(eng, 500, timeout_s=5.0)
    eng.on_bus(ev.VendRequested(1, 1, 150), 5.5)
    eng.on_bus(ev.VendApprovedSent(1, 150), 5.6)
    assert not eng.tick(6.5).events  # the approved vend is still dispensing
    eng.on_bus(ev.VendSucceeded(1, 1, 150), 7.0)
    fx = eng.tick(7.1)
    assert fx.bus == [bus.CancelSession(1)]  # only the session of its own vend
    status = only(fx, m.CreditStatus)
    assert isinstance(status, m.CreditStatus)
    assert (status.used, status.rest, status.vends, status.reason) == (150, 350, 1, "timeout")


def test_the_session_ending_cancels_an_unused_voucher() -> None:
    eng = engine()
    voucher(eng, value=150)
    fx = eng.on_bus(ev.SessionEnded(), 3.0)
    status = only(fx, m.VoucherStatus)
    assert (status.state, status.reason) == ("cancelled", "session_ended")


def test_a_session_the_reader_refuses_cancels_the_voucher() -> None:
    eng = engine()
    voucher(eng, value=10**6)
    fx = eng.on_bus(bus.CommandRefused("BeginSession", "too big", bus.Refusal.MONEY), 1.1)
    status = only(fx, m.VoucherStatus)
    assert (status.state, status.reason) == ("cancelled", "session_refused")


@pytest.mark.parametrize(
    ("selections", "prices", "value", "code"),
    [
        ((1,), PRICES, 150, None),
        ((1, 2, 3), PRICES, 200, None),
        (None, PRICES, 200, None),  # every slot: the highest price of the planogram
        ((1,), None, None, m.ErrorCode.NO_PLANOGRAM),
        (None, {}, None, m.ErrorCode.NO_PLANOGRAM),
        ((1, 9), PRICES, None, m.ErrorCode.UNKNOWN_KEY),
    ],
)
def test_the_planogram_price(
    selections: tuple[int, ...] | None,
    prices: Mapping[int, int] | None,
    value: int | None,
    code: m.ErrorCode | None,
) -> None:
    eng = engine(prices=prices)
    fx = voucher(eng, selections=selections)
    assert fx.reply is not None
    assert fx.reply.code is code
    if value is None:
        assert not fx.bus
        assert not fx.credits
    else:
        assert fx.reply.result["value"] == value
        assert fx.bus[0] == bus.BeginSession(value, 0, 30.0 + SESSION_MARGIN_S)


def test_one_session_at_a_time() -> None:
    eng = engine()
    voucher(eng, value=150)
    for fx in (
        eng.on_command(m.Lock("c-l", EXPIRES), 2.0),
        credit(eng, now=2.0),
        voucher(eng, now=2.0, voucher_id="v2"),
    ):
        assert fx.reply is not None
        assert fx.reply.code is m.ErrorCode.BUSY
        assert "voucher v1 is open" in fx.reply.message
    eng = engine()
    eng.on_command(m.Lock("c-l", EXPIRES), 1.0)
    fx = voucher(eng, now=2.0)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.BUSY
    eng = engine()
    eng.on_bus(ev.StateChanged(ev.State.ENABLED, ev.State.SESSION_IDLE), 0.5)
    fx = credit(eng)
    assert fx.reply is not None
    assert fx.reply.code is m.ErrorCode.READER_UNAVAILABLE


def test_a_credit_pays_several_vends_and_reports_the_rest_once() -> None:
    eng = engine()
    fx = credit(eng, 500, ref="FREE_CREDIT", surcharge=30, medium=m.PaymentMedium.BALANCE)
    assert fx.reply is not None
    assert fx.reply.result == {"credit_id": "k1", "amount": 500, "expires": 31.0, "state": "open"}
    first = vend(eng, 1, 7, 150, 2.0)
    fx = eng.on_bus(ev.VendRequested(2, 8, 400), 4.0)  # over the rest: denied, still open
    assert fx.bus == [bus.DenyVend(2)]
    second = vend(eng, 3, 9, 200, 5.0)
    vends = events_of(first + second, m.TxnVend)
    assert [(v.selection, v.amount, v.credit_id, v.surcharge) for v in vends] == [
        (7, 150, "k1", 30),
        (9, 200, "k1", 30),
    ]
    assert not events_of(first + second, m.CreditStatus)
    fx = eng.on_bus(ev.SessionEnded(), 7.0)
    status = only(fx, m.CreditStatus)
    assert status == m.CreditStatus(
        "k1",
        "FREE_CREDIT",
        "ended",
        "session_ended",
        500,
        350,
        150,
        2,
        (vends[0].txn_id, vends[1].txn_id),
        978,
        2,
        m.PaymentMedium.BALANCE,
        30,
    )


def test_a_credit_used_up_ends_at_once() -> None:
    eng = engine()
    credit(eng, 300)
    effects = vend(eng, 1, 1, 300, 2.0)
    (status,) = events_of(effects, m.CreditStatus)
    assert (status.reason, status.used, status.rest) == ("spent", 300, 0)
    assert eng.credit is None


def test_an_unknown_outcome_keeps_the_price_used() -> None:
    eng = engine()
    voucher(eng, value=150)
    eng.on_bus(ev.VendRequested(1, 1, 150), 2.0)
    eng.on_bus(ev.VendApprovedSent(1, 150), 2.1)
    fx = eng.on_bus(ev.VendOutcomeUnknown(1, 1, 150, "cancelled_by_vmc_after_approval"), 3.0)
    (txn_vend,) = events_of([fx], m.TxnVend)
    (status,) = events_of([fx], m.VoucherStatus)
    assert txn_vend.result == "unknown"
    assert (status.state, status.reason, status.charged) == ("used", "vend_unknown", 150)


def _committed(effects: list[Effects]) -> tuple[Txn | None, CreditSession | None]:
    """What a journal holds after ``effects``: the open transaction and voucher or credit."""
    txns: dict[str, Txn] = {}
    credits: dict[str, CreditSession] = {}
    for fx in effects:
        txns.update((t.txn_id, t) for t in fx.transitions)
        credits.update((c.credit_id, from_json(to_json(c))) for c in fx.credits)
    open_txn = next((t for t in txns.values() if t.state in (S.APPROVING, S.DISPENSING)), None)
    open_credit = next((c for c in credits.values() if c.state is CreditState.OPEN), None)
    return open_txn, open_credit


def test_restart_cancels_an_unused_voucher() -> None:
    eng = engine()
    open_txn, open_credit = _committed([voucher(eng, value=150, medium=m.PaymentMedium.RFID)])
    assert open_credit is not None
    assert open_credit.medium is m.PaymentMedium.RFID
    fx = engine().recover(open_txn, 9.0, open_credit)
    status = only(fx, m.VoucherStatus)
    assert (status.state, status.reason) == ("cancelled", "restart")
    assert fx.credits[-1].state is CreditState.CANCELLED


def test_restart_mid_vend_uses_the_voucher_and_never_approves_again() -> None:
    eng = engine()
    effects = [voucher(eng, value=150), eng.on_bus(ev.VendRequested(1, 1, 150), 2.0)]
    open_txn, open_credit = _committed(effects)
    fresh = engine()
    fx = fresh.recover(open_txn, 9.0, open_credit)
    assert [type(e) for e in fx.events] == [m.TxnVend, m.VoucherStatus]
    txn_vend, status = fx.events
    assert isinstance(txn_vend, m.TxnVend)
    assert isinstance(status, m.VoucherStatus)
    assert (txn_vend.result, txn_vend.detail, txn_vend.voucher_id) == (
        "unknown",
        "restart_during_vend",
        "v1",
    )
    assert (status.state, status.reason, status.charged) == ("used", "vend_unknown", 150)
    assert fresh.credit is None
    assert fresh.on_bus(ev.VendRequested(1, 1, 150), 9.5).bus == [bus.DenyVend(1)]


def test_restart_ends_a_credit_with_what_it_paid() -> None:
    eng = engine()
    effects = [credit(eng, 500), *vend(eng, 1, 1, 150, 2.0)]
    effects += [eng.on_bus(ev.VendRequested(2, 2, 200), 4.0)]
    open_txn, open_credit = _committed(effects)
    assert open_txn is not None
    assert open_credit is not None
    assert open_credit.used == 350
    fx = engine().recover(open_txn, 9.0, open_credit)
    status = fx.events[-1]
    assert isinstance(status, m.CreditStatus)
    assert (status.reason, status.used, status.rest, status.vends) == ("restart", 350, 150, 2)


def test_the_medium_and_surcharge_of_a_lock_reach_its_events() -> None:
    eng = engine()
    lock = m.Lock("c-l", EXPIRES, "card-1", medium=m.PaymentMedium.CONTACTLESS, surcharge=30)
    txn_id = str(eng.on_command(lock, 1.0).reply.result["txn_id"])  # type: ignore[union-attr]
    fx = eng.on_bus(ev.VendRequested(1, 4, 250), 2.0)
    (request,) = fx.events
    assert isinstance(request, m.TxnRequest)
    assert (request.medium, request.surcharge) == (m.PaymentMedium.CONTACTLESS, 30)
    eng.on_command(m.Paid("c-p", EXPIRES, txn_id, 250), 2.5)
    eng.on_bus(ev.VendApprovedSent(1, 250), 2.6)
    fx = eng.on_bus(ev.VendSucceeded(1, 4, 250), 3.0)
    (txn_vend,) = fx.events
    assert isinstance(txn_vend, m.TxnVend)
    assert (txn_vend.amount, txn_vend.medium, txn_vend.surcharge) == (
        250,
        m.PaymentMedium.CONTACTLESS,
        30,
    )
    assert (txn_vend.voucher_id, txn_vend.credit_id) == (None, None)


def test_a_voucher_round_trips_through_json() -> None:
    session = CreditSession(
        CreditKind.VOUCHER,
        "v1",
        CreditState.OPEN,
        150,
        1.0,
        1.0,
        31.0,
        (1, 2),
        "r",
        m.PaymentMedium.APP,
        10,
        150,
        ("t1",),
        "",
        {"voucher_id": "v1"},
    )
    assert from_json(to_json(session)) == session


class Glue:
    """RemoteVending on a real journal file, its bus commands kept in a list."""

    def __init__(self, path: Path, prices: Mapping[int, int] | None = PRICES) -> None:
        self.sent: list[bus.BusCommand] = []
        self.now = 100.0
        self.journal = Journal(path)
        self.stock = StockBook(self.journal, Topics("m1"), clock=lambda: self.now)
        self.remote = RemoteVending(
            engine(prices=prices, now=self.now),
            self.journal,
            Topics("m1"),
            self.send,
            clock=lambda: self.now,
            stock=self.stock,
        )
        self.remote.recover()

    def send(self, command: bus.BusCommand) -> bool:
        self.sent.append(command)
        return True

    def command(self, **fields: Any) -> dict[str, Any]:
        body = {"v": 1, "expires": EXPIRES, **fields}
        self.remote.handle_command(cbor2.dumps(body))
        return self.replies()[fields["id"]]

    def messages(self) -> list[dict[str, Any]]:
        return [cbor2.loads(row.payload) for row in self.journal.pending(1000)]

    def replies(self) -> dict[str, dict[str, Any]]:
        return {b["id"]: b for b in self.messages() if "ok" in b}

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [b for b in self.messages() if b.get("type") == kind]


def test_a_voucher_id_sent_again_gets_the_first_answer_and_nothing_new(tmp_path: Path) -> None:
    glue = Glue(tmp_path / "journal.sqlite3")
    first = glue.command(id="c1", op="voucher", voucher_id="v1", selections=[1])
    assert first["ok"]
    assert first["result"]["value"] == 150  # the planogram's price
    assert glue.sent == [bus.BeginSession(150, 0, 30.0 + SESSION_MARGIN_S)]
    stored = glue.journal.credit(CreditKind.VOUCHER, "v1")
    assert stored is not None
    assert stored.state is CreditState.OPEN
    glue.remote.handle_bus(ev.SessionEnded())  # the customer walked away: cancelled
    again = glue.command(id="c2", op="voucher", voucher_id="v1", selections=[2], value=999)
    assert again["ok"]
    assert again["result"] == first["result"]
    assert len(glue.sent) == 1  # no second session
    assert len(glue.events("voucher.status")) == 1
    other = glue.command(id="c3", op="credit", credit_id="v1", amount=100)  # a credit's ids
    assert other["ok"]  # are not a voucher's


def test_a_restart_reports_the_open_voucher_once(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    glue = Glue(path)
    glue.command(id="c1", op="voucher", voucher_id="v1", value=200, medium="rfid", surcharge=5)
    glue.remote.handle_bus(ev.VendRequested(1, 3, 120))
    assert glue.sent[-1] == bus.ApproveVend(1, 120)
    approving = glue.journal.open_txn()
    assert approving is not None
    assert approving.state is S.APPROVING  # on disk before the reader heard of it
    glue.journal.close()
    after = Glue(path)  # kill -9 and start again
    (txn_vend,) = after.events("txn.vend")
    (status,) = after.events("voucher.status")
    assert (txn_vend["result"], txn_vend["voucher_id"], txn_vend["medium"]) == (
        "unknown",
        "v1",
        "rfid",
    )
    assert (status["state"], status["charged"], status["surcharge"]) == ("used", 120, 5)
    after.journal.close()
    again = Glue(path)
    assert len(again.events("voucher.status")) == 1  # settled once, not at every start
    assert again.remote.engine.credit is None


def test_a_credit_vend_takes_stock_and_books_its_medium(tmp_path: Path) -> None:
    glue = Glue(tmp_path / "journal.sqlite3")
    document = {
        "version": 1,
        "products": [{"id": "bar"}],
        "selections": [
            {
                "number": 1,
                "product": "bar",
                "price": 150,
                "capacity": 9,
                "par_level": 5,
                "alarm_level": 1,
            },
        ],
    }
    assert glue.command(id="p", op="planogram.set", planogram=document)["ok"]
    assert glue.command(id="r", op="stock.refill", lines=[{"selection": 1, "amount": 4}])["ok"]
    glue.command(id="c1", op="credit", credit_id="k1", amount=500, medium="balance", surcharge=9)
    for step in (
        ev.VendRequested(1, 1, 150),
        ev.VendApprovedSent(1, 150),
        ev.VendSucceeded(1, 1, 150),
        ev.SessionEnded(),
    ):
        glue.remote.handle_bus(step)
    assert glue.stock.stock.levels[SlotKey(1)] == 3
    (row,) = glue.journal.sales(0.0, 1e12)
    assert (row.price, row.medium, row.surcharge) == (150, m.PaymentMedium.BALANCE, 9)
    (status,) = glue.events("credit.status")
    assert (status["used"], status["rest"], status["vends"]) == (150, 350, 1)
    query = glue.command(id="q", op="sales.query", **{"from": "1970-01-01"})
    assert query["result"]["medium"]["balance"] == {"count": 1, "amount": 150}
    assert query["result"]["surcharge"] == {"count": 1, "amount": 9}


def test_why_a_selection_is_refused() -> None:
    open_voucher = CreditSession(
        CreditKind.VOUCHER, "v1", CreditState.OPEN, 150, 0.0, 0.0, 30.0, (1, 3), used=0
    )
    assert why_refused(open_voucher, 1, 150, negative=False) is None
    assert why_refused(open_voucher, 2, 100, negative=False) is Refusal.NOT_IN_VOUCHER
    assert why_refused(open_voucher, 3, 151, negative=False) is Refusal.OVER_VALUE
    assert why_refused(open_voucher, 1, 100, negative=True) is Refusal.NEGATIVE_VEND
    paid_once = dataclasses.replace(open_voucher, used=100, txn_ids=("t1",))
    assert why_refused(paid_once, 1, 50, negative=False) is Refusal.OVER_VALUE  # one vend only
    open_credit = CreditSession(
        CreditKind.CREDIT, "k1", CreditState.OPEN, 500, 0.0, 0.0, 30.0, used=350
    )
    assert why_refused(open_credit, 9, 150, negative=False) is None
    assert why_refused(open_credit, 9, 151, negative=False) is Refusal.OVER_VALUE
