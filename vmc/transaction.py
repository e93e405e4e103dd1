"""The remote-vend transaction engine (sans-I/O, clock and ids injected).

Theory of operation. One transaction per vend, following the seven steps of the Connectivity
Platform seed: ``lock`` opens an MDB session (or, on an always-idle VMC, the customer selects
first), the VMC's vend request becomes ``txn.request``, the backend answers ``paid`` or
``deny``, the reader approves or denies on the bus, and the VMC's result becomes ``txn.vend``.

Every call returns :class:`Effects`: the transitions to journal, the events for the outbox,
the bus commands, and the reply to the command. The caller must commit the first three to the
journal (one SQLite transaction, fsynced when ``durable``) **before** it sends the bus commands,
so a crash can never leave a side effect the journal does not know about.

Vouchers and remote credits (:mod:`vmc.credit`) use the same reader and the same rules: while
one is open no lock is accepted and the other way round. The machine decides their selections
itself; each vend they pay is a transaction of its own (no ``txn.request``, one ``txn.vend``), and
the voucher's or credit's own outcome is one ``voucher.status`` or ``credit.status``. A
technician's test vend (:meth:`Engine.test_vend`) is one more such session, at 0 and of vend
type ``test``.

Money safety: the engine's approval deadline is earlier than the reader's own
(``approval_timeout``), and the reader denies an undecided vend at its deadline by itself, so a
``paid`` that arrives late is answered ``too_late`` and reported as void, never dispensed.
Legal state changes live in :data:`LEGAL`; anything else is a bug and raises.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from protocols.errors import LocalProtocolError
from protocols.mdb import events as ev
from protocols.mdb.commands import Feature, PaymentType
from vmc.cloud import messages as m
from vmc.credit import (
    CreditKind,
    CreditSession,
    CreditState,
    PriceError,
    outcome,
    planogram_value,
    why_refused,
)
from vmc.offline import Allowance
from vmc.services import bus_messages as bus

APPROVAL_GUARD_S = 0.5
SESSION_MARGIN_S = 1.0
"""A voucher's or credit's session is kept this much longer by the reader than by the engine,
so the engine's own expiry (reported as the outcome) is what ends it."""
REMEMBERED_CLOSED = 256
_PAYMENT_TYPES = {
    m.VendType.PAID: PaymentType.NORMAL,
    m.VendType.TEST: PaymentType.TEST,
    m.VendType.FREE: PaymentType.FREE,
}


class TxnState(StrEnum):
    LOCKED = "locked"
    REQUESTED = "requested"
    APPROVING = "approving"
    DISPENSING = "dispensing"
    VENDED = "vended"
    FAILED = "failed"
    UNKNOWN = "unknown"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


S = TxnState
FINAL = frozenset({S.VENDED, S.FAILED, S.UNKNOWN, S.DENIED, S.EXPIRED, S.CANCELLED})
# Steps that move money: journaled with fsync before anything else happens.
DURABLE = frozenset({S.APPROVING, S.DISPENSING, S.VENDED, S.FAILED, S.UNKNOWN})
_ENDS = frozenset({S.DENIED, S.EXPIRED, S.CANCELLED})
VEND_RESULT = {S.VENDED: "success", S.FAILED: "failure", S.UNKNOWN: "unknown"}
"""The final states that tried to dispense, and the ``result`` their ``txn.vend`` reported."""
_ENDED_BY = {S.VENDED: "vended", S.FAILED: "vend_failed", S.UNKNOWN: "vend_unknown"}
"""The reason a voucher or test vend ends with, by the result of the vend that used it."""
LEGAL: dict[TxnState | None, frozenset[TxnState]] = {
    None: frozenset({S.LOCKED, S.REQUESTED}),
    S.LOCKED: frozenset({S.REQUESTED}) | _ENDS,
    S.REQUESTED: frozenset({S.APPROVING}) | _ENDS,
    S.APPROVING: frozenset({S.DISPENSING, S.UNKNOWN}) | _ENDS,
    S.DISPENSING: frozenset({S.VENDED, S.FAILED, S.UNKNOWN}),
}


@dataclass(frozen=True, slots=True)
class Txn:
    txn_id: str
    state: TxnState
    created_at: float
    updated_at: float
    vend_type: m.VendType = m.VendType.PAID
    ref: str | None = None
    limit: int | None = None
    lock_expires: float | None = None
    selection: int | None = None
    price: int | None = None
    vend_id: int | None = None
    deadline: float | None = None
    amount: int | None = None
    reason: str = ""
    medium: m.PaymentMedium | None = None
    surcharge: int = 0
    voucher_id: str | None = None
    credit_id: str | None = None
    test_id: str | None = None
    offline_list: int | None = None
    """An offline approval's: the allow-list version it was approved under."""

    @property
    def paid_by_credit(self) -> bool:
        """A vend the machine approved itself, from a voucher, a credit, a test vend or an
        offline allowance (no backend decision)."""
        return (
            self.voucher_id is not None
            or self.credit_id is not None
            or self.test_id is not None
            or self.offline_list is not None
        )


@dataclass(frozen=True, slots=True)
class Money:
    """The reader's currency as the contract reports it."""

    currency: int
    decimals: int


@dataclass(frozen=True, slots=True)
class EngineConfig:
    money: Money
    approval_timeout: float = 4.0
    lock_timeout: float = 60.0


@dataclass
class Effects:
    transitions: list[Txn] = field(default_factory=list)
    events: list[m.Event] = field(default_factory=list)
    bus: list[bus.BusCommand] = field(default_factory=list)
    reply: m.Reply | None = None
    credits: list[CreditSession] = field(default_factory=list)

    @property
    def durable(self) -> bool:
        """Money moves: an approval's step, or a voucher's or credit's (it reserves and
        gives back its value)."""
        return bool(self.credits) or any(t.state in DURABLE for t in self.transitions)


class Engine:
    """At most one transaction at a time: one reader serves one customer."""

    def __init__(
        self,
        config: EngineConfig,
        new_id: Callable[[], str],
        prices: Callable[[], Mapping[int, int] | None] = lambda: None,
    ) -> None:
        """``prices``: the planogram's price per selection, None without a planogram."""
        self.config = config
        self.new_id = new_id
        self.prices = prices
        self.txn: Txn | None = None
        self.credit: CreditSession | None = None
        self.credit_vend_id: int | None = None  # the open credit's last vend on the bus
        self.reader_state = ev.State.INACTIVE
        self.always_idle = False
        # Recently closed transactions, so a late or repeated paid is answered truthfully.
        self.closed: OrderedDict[str, TxnState] = OrderedDict()

    # --- restart ---------------------------------------------------------------------------

    def recover(
        self, open_txn: Txn | None, now: float, open_credit: CreditSession | None = None
    ) -> Effects:
        """Settle the transaction and the voucher or credit a crash left open: never approved
        again, never forgotten.

        The bus process died with the daemon, so nothing more will happen to them on the bus:
        before any approval a transaction ended; after an approval was journaled, the machine
        cannot tell whether it dispensed (and a voucher or credit keeps that price as used).
        The voucher or credit then ends, with what it paid.
        """
        fx = Effects()
        self.credit = open_credit if open_credit and open_credit.state is CreditState.OPEN else None
        self.txn = None if open_txn is None or open_txn.state in FINAL else open_txn
        if self.txn is not None and self.txn.state in (S.LOCKED, S.REQUESTED):
            state = S.CANCELLED if self.txn.state is S.LOCKED else S.EXPIRED
            self._end(fx, state, "restart", now)
        elif self.txn is not None:
            self._vend_result(fx, S.UNKNOWN, "restart_during_vend", now)
        if self.credit is not None:
            self._finish_credit(fx, "restart", now)
        return fx

    # --- commands from the backend -----------------------------------------------------------

    def on_command(self, cmd: m.Command, now: float) -> Effects:
        fx = Effects()
        fx.reply = m.expired_reply(cmd, now)
        if fx.reply is not None:
            return fx
        match cmd:
            case m.Lock():
                self._lock(fx, cmd, now)
            case m.Unlock():
                self._unlock(fx, cmd, now)
            case m.Paid():
                self._paid(fx, cmd, now)
            case m.Deny():
                self._deny(fx, cmd, now)
            case m.Voucher() | m.Credit():
                self._open_credit(fx, cmd, now)
        return fx

    def _not_ready(self, command_id: str | None) -> m.Reply | None:
        """The refusal of a new session: one at a time, on an enabled reader."""
        if self.txn is not None:
            message = f"transaction {self.txn.txn_id} is {self.txn.state}"
            return m.Reply(command_id, False, m.ErrorCode.BUSY, message)
        if self.credit is not None:
            message = f"{self.credit.kind} {self.credit.credit_id} is open"
            return m.Reply(command_id, False, m.ErrorCode.BUSY, message)
        if self.reader_state is not ev.State.ENABLED:
            message = f"reader is {self.reader_state.name}"
            return m.Reply(command_id, False, m.ErrorCode.READER_UNAVAILABLE, message)
        return None

    def _lock(self, fx: Effects, cmd: m.Lock, now: float) -> None:
        fx.reply = self._not_ready(cmd.id)
        if fx.reply is not None:
            return
        timeout = cmd.timeout_s if cmd.timeout_s is not None else self.config.lock_timeout
        txn = Txn(
            self.new_id(),
            S.LOCKED,
            now,
            now,
            cmd.vend_type,
            cmd.ref,
            cmd.limit,
            now + timeout,
            medium=cmd.medium,
            surcharge=cmd.surcharge,
        )
        self._move(fx, txn)
        fx.bus.append(bus.BeginSession(cmd.limit, int(_PAYMENT_TYPES[cmd.vend_type])))
        fx.reply = m.Reply(cmd.id, True, result={"txn_id": txn.txn_id, "expires": now + timeout})

    # --- a reference presented on the machine (a badge reader, vmctl present) ----------------

    def present_online(self, presence_id: str, ref: str, now: float) -> Effects:
        """A reference presented while the cloud is reachable: a lock of the machine's own for
        ``ref`` (funds unknown, ``cloud.lock_timeout``), so the backend decides its selection
        from the ``txn.request`` as for any lock. ``fx.reply`` (id ``presence_id``, not for the
        cloud) accepts it or says why not."""
        lock = m.Lock(presence_id, now, ref=ref)
        fx = Effects()
        self._lock(fx, lock, now)
        if fx.reply is not None and fx.reply.ok:
            fx.reply = m.Reply(presence_id, True, result={**fx.reply.result, "mode": "online"})
        return fx

    def present_offline(
        self, presence_id: str, allowance: Allowance, timeout_s: float, now: float
    ) -> Effects:
        """A reference the allow-list lets have one vend while the cloud is unreachable: a
        session worth ``allowance.value`` in which the machine approves one selection priced
        within it (journaled, fsynced, before the bus hears of it), like a voucher for any
        selection. Its vend's ``txn.vend`` says ``offline``; the session has no outcome event.
        """
        fx = Effects()
        fx.reply = self._not_ready(presence_id)
        if fx.reply is not None:
            return fx
        result: dict[str, object] = {
            "mode": "offline",
            "ref": allowance.ref,
            "value": allowance.value,
            "list_version": allowance.version,
            "expires": now + timeout_s,
        }
        session = CreditSession(
            CreditKind.OFFLINE,
            presence_id,
            CreditState.OPEN,
            allowance.value,
            now,
            now,
            now + timeout_s,
            ref=allowance.ref,
            result=result,
            list_version=allowance.version,
        )
        self.credit_vend_id = None
        self._save_credit(fx, session, now)
        fx.bus.append(
            bus.BeginSession(allowance.value, int(PaymentType.NORMAL), timeout_s + SESSION_MARGIN_S)
        )
        fx.reply = m.Reply(presence_id, True, result=result)
        return fx

    def _open_credit(self, fx: Effects, cmd: m.Voucher | m.Credit, now: float) -> None:
        """Offer the VMC a session whose funds are the voucher's or credit's value."""
        fx.reply = self._not_ready(cmd.id)
        if fx.reply is not None:
            return
        timeout = cmd.timeout_s if cmd.timeout_s is not None else self.config.lock_timeout
        expires_at = now + timeout
        if isinstance(cmd, m.Voucher):
            kind, credit_id, selections, value = (
                CreditKind.VOUCHER,
                cmd.voucher_id,
                cmd.selections,
                cmd.value,
            )
            if value is None:
                try:
                    value = planogram_value(selections, self.prices())
                except PriceError as exc:
                    fx.reply = _refuse(cmd, exc.code, str(exc))
                    return
            result: dict[str, object] = {
                "voucher_id": credit_id,
                "value": value,
                "selections": None if selections is None else list(selections),
            }
        else:
            kind, credit_id, selections, value = CreditKind.CREDIT, cmd.credit_id, None, cmd.amount
            result = {"credit_id": credit_id, "amount": value}
        result |= {"expires": expires_at, "state": CreditState.OPEN.value}
        session = CreditSession(
            kind,
            credit_id,
            CreditState.OPEN,
            value,
            now,
            now,
            expires_at,
            selections,
            cmd.ref,
            cmd.medium,
            cmd.surcharge,
            result=result,
        )
        self.credit_vend_id = None
        self._save_credit(fx, session, now)
        fx.bus.append(bus.BeginSession(value, int(PaymentType.NORMAL), timeout + SESSION_MARGIN_S))
        fx.reply = m.Reply(cmd.id, True, result=result)

    # --- a technician's test vend -----------------------------------------------------------

    def test_vend(self, test_id: str, selection: int, timeout_s: float, now: float) -> Effects:
        """Open a test vend of ``selection`` (``vmctl test-vend``); ``fx.reply`` (not for the
        cloud: its id is ``test_id``) accepts it or says why not (``busy``,
        ``reader_unavailable``).

        A session the VMC is told is test media, with funds unknown, in which the machine
        approves ``selection`` only, once, at 0; another selection is denied and the session
        waits for the right one until ``timeout_s``. Its vend is a transaction of vend type
        ``test`` (one ``txn.vend``); the session is journaled as a ``test_vend`` credit
        (:mod:`vmc.credit`) and ends after that vend, whatever its result.
        """
        fx = Effects()
        fx.reply = self._not_ready(test_id)
        if fx.reply is not None:
            return fx
        session = CreditSession(
            CreditKind.TEST_VEND,
            test_id,
            CreditState.OPEN,
            0,
            now,
            now,
            now + timeout_s,
            (selection,),
            result={"selection": selection, "expires": now + timeout_s},
        )
        self.credit_vend_id = None
        self._save_credit(fx, session, now)
        fx.bus.append(bus.BeginSession(None, int(PaymentType.TEST), timeout_s + SESSION_MARGIN_S))
        fx.reply = m.Reply(test_id, True, result=session.result)
        return fx

    def abandon_test_vend(self, test_id: str, now: float) -> Effects:
        """The technician gave up: end the test vend's session unless its vend is running
        (that one finishes and is reported as any other)."""
        fx = Effects()
        credit = self.credit
        if credit is None or credit.credit_id != test_id or self.txn is not None:
            return fx
        fx.bus.append(bus.CancelSession(self.credit_vend_id))
        self._finish_credit(fx, "abandoned", now)
        return fx

    def _unlock(self, fx: Effects, cmd: m.Unlock, now: float) -> None:
        txn = self._find(fx, cmd, cmd.txn_id)
        if txn is None:
            return
        if txn.state in (S.APPROVING, S.DISPENSING):
            fx.reply = _refuse(cmd, m.ErrorCode.WRONG_STATE, "the vend is already approved")
            return
        if txn.state is S.REQUESTED and txn.vend_id is not None:
            fx.bus.append(bus.DenyVend(txn.vend_id))
        fx.bus.append(bus.CancelSession(txn.vend_id))
        self._end(fx, S.CANCELLED, "unlocked", now)
        fx.reply = m.Reply(cmd.id, True, result={"txn_id": txn.txn_id, "state": S.CANCELLED})

    def _paid(self, fx: Effects, cmd: m.Paid, now: float) -> None:
        txn = self._find(fx, cmd, cmd.txn_id, void_if_late=True)
        if txn is None:
            return
        if txn.state is not S.REQUESTED or txn.vend_id is None or txn.price is None:
            fx.reply = _refuse(cmd, m.ErrorCode.WRONG_STATE, f"transaction is {txn.state}")
            return
        if cmd.amount > txn.price or cmd.amount < 0:
            fx.reply = _refuse(
                cmd, m.ErrorCode.AMOUNT_MISMATCH, f"amount {cmd.amount} exceeds price {txn.price}"
            )
            return
        assert txn.deadline is not None
        if now >= txn.deadline:
            fx.reply = _refuse(cmd, m.ErrorCode.TOO_LATE, "the approval deadline has passed")
            fx.bus += [bus.DenyVend(txn.vend_id), bus.CancelSession(txn.vend_id)]
            self._end(fx, S.EXPIRED, "approval_timeout", now)
            fx.events.append(m.TxnStatus(txn.txn_id, txn.ref, "void", "late_paid"))
            return
        self._move(fx, dataclasses.replace(txn, state=S.APPROVING, amount=cmd.amount))
        fx.bus.append(bus.ApproveVend(txn.vend_id, cmd.amount))
        fx.reply = m.Reply(cmd.id, True, result={"txn_id": txn.txn_id, "state": S.APPROVING})

    def _deny(self, fx: Effects, cmd: m.Deny, now: float) -> None:
        txn = self._find(fx, cmd, cmd.txn_id)
        if txn is None:
            return
        if txn.state not in (S.REQUESTED, S.LOCKED):
            fx.reply = _refuse(cmd, m.ErrorCode.WRONG_STATE, f"transaction is {txn.state}")
            return
        if txn.vend_id is not None:
            fx.bus.append(bus.DenyVend(txn.vend_id))
        fx.bus.append(bus.CancelSession(txn.vend_id))
        self._end(fx, S.DENIED, cmd.reason or "denied", now)
        fx.reply = m.Reply(cmd.id, True, result={"txn_id": txn.txn_id, "state": S.DENIED})

    def _find(
        self,
        fx: Effects,
        cmd: m.Command,
        txn_id: str,
        *,
        void_if_late: bool = False,
    ) -> Txn | None:
        txn = self.txn
        if txn is not None and txn.txn_id == txn_id:
            return txn
        closed = self.closed.get(txn_id)
        if closed is None:
            fx.reply = _refuse(cmd, m.ErrorCode.NO_SUCH_TXN, f"transaction {txn_id} is unknown")
        elif closed in VEND_RESULT:
            fx.reply = _refuse(cmd, m.ErrorCode.WRONG_STATE, f"transaction is {closed}")
        else:
            fx.reply = _refuse(cmd, m.ErrorCode.TOO_LATE, f"transaction {txn_id} is {closed}")
            if void_if_late:
                fx.events.append(m.TxnStatus(txn_id, None, "void", "late_paid"))
        return None

    # --- the bus ----------------------------------------------------------------------------

    def on_bus(self, event: object, now: float) -> Effects:
        fx = Effects()
        txn = self.txn
        match event:
            case ev.StateChanged(new=new):
                self.reader_state = new
            case ev.FeaturesEnabled(features=features):
                self.always_idle = bool(features & Feature.ALWAYS_IDLE)
            case ev.ReaderReset():
                self.always_idle = False
            case ev.VendRequested() if self.credit is not None:
                self._credit_vend_requested(fx, event, now)
            case ev.VendRequested():
                self._vend_requested(fx, event, now)
            case ev.VendApprovedSent(vend_id=vend_id) if _is(txn, vend_id, S.APPROVING):
                assert txn is not None
                self._move(fx, dataclasses.replace(txn, state=S.DISPENSING, updated_at=now))
            case ev.VendDeniedSent(vend_id=vend_id, reason=reason) if _is(txn, vend_id):
                self._denied_on_bus(fx, reason, now)
            case ev.VendSucceeded(vend_id=vend_id, item=item) if _is(txn, vend_id, S.DISPENSING):
                assert txn is not None
                self.txn = dataclasses.replace(txn, selection=item)  # what the VMC vended
                self._vend_result(fx, S.VENDED, "", now)
            case ev.VendFailed(vend_id=vend_id) if _is(txn, vend_id, S.DISPENSING):
                self._vend_result(fx, S.FAILED, "vend_failed", now)
            case ev.VendOutcomeUnknown(vend_id=vend_id, reason=why) if _is(txn, vend_id):
                self._vend_result(fx, S.UNKNOWN, why, now)
            case ev.SessionEnded() | ev.SessionRefused() if txn is not None and txn.state in (
                S.LOCKED,
                S.REQUESTED,
            ):
                self._end(fx, S.CANCELLED, "session_ended", now)
            case ev.SessionEnded() | ev.SessionRefused() if txn is None and self.credit is not None:
                self._finish_credit(fx, "session_ended", now)
            case ev.CashSaleReported(item=item, price=price):
                money = self.config.money
                fx.events.append(m.Sale("cash", item, price, money.currency, money.decimals))
            case bus.CommandRefused(command="ApproveVend") if (
                txn is not None and txn.state is S.APPROVING and txn.paid_by_credit
            ):
                # Nothing was dispensed; the price goes back to the voucher or credit, whose
                # session stays open for another selection.
                self._end(fx, S.EXPIRED, "approval_refused", now)
            case bus.CommandRefused(command="ApproveVend", refusal=refusal) if (
                txn is not None and txn.state is S.APPROVING
            ):
                # Nothing was dispensed: the reader's own deadline passed first, or the
                # amount cannot be carried on this bus.
                fx.bus.append(bus.CancelSession(txn.vend_id))
                if refusal is bus.Refusal.MONEY:
                    self._end(fx, S.DENIED, "amount_not_representable", now)
                    fx.events.append(m.TxnStatus(txn.txn_id, txn.ref, "void", "bad_amount"))
                else:
                    self._end(fx, S.EXPIRED, "approval_timeout", now)
                    fx.events.append(m.TxnStatus(txn.txn_id, txn.ref, "void", "late_paid"))
            case bus.CommandRefused(command="BeginSession") if (
                txn is not None and txn.state is S.LOCKED
            ):
                self._end(fx, S.CANCELLED, "session_refused", now)
            case bus.CommandRefused(command="BeginSession") if (
                txn is None and self.credit is not None
            ):
                self._finish_credit(fx, "session_refused", now)
        return fx

    def _credit_vend_requested(self, fx: Effects, req: ev.VendRequested, now: float) -> None:
        """A selection in a voucher's or credit's session: the machine decides it at once."""
        credit = self.credit
        assert credit is not None
        self.credit_vend_id = req.vend_id
        if self.txn is not None:
            fx.bus.append(bus.DenyVend(req.vend_id))  # one vend at a time
            return
        if now >= credit.expires_at:  # late: it never dispenses
            fx.bus += [bus.DenyVend(req.vend_id), bus.CancelSession(req.vend_id)]
            self._finish_credit(fx, "timeout", now)
            return
        if why_refused(credit, req.item, req.price, negative=req.negative) is not None:
            fx.bus.append(bus.DenyVend(req.vend_id))  # the session stays for another selection
            return
        kind = credit.kind
        txn = Txn(
            self.new_id(),
            S.REQUESTED,
            now,
            now,
            m.VendType.TEST if kind is CreditKind.TEST_VEND else m.VendType.PAID,
            ref=credit.ref,
            selection=req.item,
            price=req.price,
            vend_id=req.vend_id,
            medium=credit.medium,
            surcharge=credit.surcharge,
            voucher_id=credit.credit_id if kind is CreditKind.VOUCHER else None,
            credit_id=credit.credit_id if kind is CreditKind.CREDIT else None,
            test_id=credit.credit_id if kind is CreditKind.TEST_VEND else None,
            offline_list=credit.list_version if kind is CreditKind.OFFLINE else None,
        )
        self._move(fx, txn)
        # The price is reserved in the same commit as the approval, before the bus hears it.
        amount = credit.amount_for(req.price)
        self._move(fx, dataclasses.replace(txn, state=S.APPROVING, amount=amount))
        self._save_credit(fx, dataclasses.replace(credit, used=credit.used + amount), now)
        fx.bus.append(bus.ApproveVend(req.vend_id, amount))

    def _vend_requested(self, fx: Effects, req: ev.VendRequested, now: float) -> None:
        txn = self.txn
        deadline = now + self.config.approval_timeout - APPROVAL_GUARD_S
        if txn is None:
            if not self.always_idle:
                fx.bus.append(bus.DenyVend(req.vend_id))  # no lock, no session: not ours
                return
            txn = Txn(self.new_id(), S.LOCKED, now, now)  # select-first: no lock came
        elif txn.state is not S.LOCKED:
            fx.bus.append(bus.DenyVend(req.vend_id))
            return
        txn = dataclasses.replace(
            txn,
            state=S.REQUESTED,
            updated_at=now,
            selection=req.item,
            price=req.price,
            vend_id=req.vend_id,
            deadline=deadline,
        )
        self._move(fx, txn)
        if req.negative or (txn.limit is not None and req.price > txn.limit):
            reason = "negative_vend" if req.negative else "over_limit"
            fx.bus += [bus.DenyVend(req.vend_id), bus.CancelSession(txn.vend_id)]
            self._end(fx, S.DENIED, reason, now)
            return
        money = self.config.money
        fx.events.append(
            m.TxnRequest(
                txn.txn_id,
                txn.ref,
                req.item,
                req.price,
                money.currency,
                money.decimals,
                deadline,
                txn.vend_type,
                txn.medium,
                txn.surcharge,
            )
        )

    def _denied_on_bus(self, fx: Effects, reason: ev.DenyReason, now: float) -> None:
        txn = self.txn
        assert txn is not None
        if txn.state in FINAL:
            return
        if reason is ev.DenyReason.APPROVAL_TIMEOUT:
            self._end(fx, S.EXPIRED, "approval_timeout", now)
        elif reason is not ev.DenyReason.APPLICATION:
            self._end(fx, S.CANCELLED, reason.value, now)

    # --- time -------------------------------------------------------------------------------

    def tick(self, now: float) -> Effects:
        fx = Effects()
        txn = self.txn
        credit = self.credit
        if txn is None and credit is not None and now >= credit.expires_at:
            fx.bus.append(bus.CancelSession(self.credit_vend_id))
            self._finish_credit(fx, "timeout", now)
        if txn is None:
            return fx
        if txn.state is S.LOCKED and txn.lock_expires is not None and now >= txn.lock_expires:
            fx.bus.append(bus.CancelSession(txn.vend_id))
            self._end(fx, S.EXPIRED, "lock_timeout", now)
        elif txn.state is S.REQUESTED and txn.deadline is not None and now >= txn.deadline:
            if txn.vend_id is not None:
                fx.bus.append(bus.DenyVend(txn.vend_id))
            fx.bus.append(bus.CancelSession(txn.vend_id))
            self._end(fx, S.EXPIRED, "approval_timeout", now)
        return fx

    # --- helpers ------------------------------------------------------------------------------

    def _move(self, fx: Effects, txn: Txn) -> None:
        old = self.txn.state if self.txn is not None else None
        if txn.state not in LEGAL.get(old, frozenset()):
            raise LocalProtocolError(f"transaction {txn.txn_id}: {old} -> {txn.state} is illegal")
        fx.transitions.append(txn)
        self.txn = None if txn.state in FINAL else txn
        if txn.state in FINAL:
            self.closed[txn.txn_id] = txn.state
            while len(self.closed) > REMEMBERED_CLOSED:
                self.closed.popitem(last=False)

    def _end(self, fx: Effects, state: TxnState, reason: str, now: float) -> None:
        txn = self.txn
        assert txn is not None
        self._move(fx, dataclasses.replace(txn, state=state, reason=reason, updated_at=now))
        if not txn.paid_by_credit:
            fx.events.append(m.TxnStatus(txn.txn_id, txn.ref, state.value, reason))
            return
        # A voucher's or credit's vend that never reached the VMC: its price goes back.
        credit = self.credit
        if credit is not None and txn.amount is not None:
            self._save_credit(fx, dataclasses.replace(credit, used=credit.used - txn.amount), now)

    def _vend_result(self, fx: Effects, state: TxnState, detail: str, now: float) -> None:
        txn = self.txn
        assert txn is not None
        self._move(fx, dataclasses.replace(txn, state=state, reason=detail, updated_at=now))
        money = self.config.money
        fx.events.append(
            m.TxnVend(
                txn.txn_id,
                txn.ref,
                VEND_RESULT[state],
                txn.selection or 0,
                txn.amount or 0,
                money.currency,
                money.decimals,
                txn.vend_type,
                detail,
                txn.medium,
                txn.surcharge,
                txn.voucher_id,
                txn.credit_id,
                txn.offline_list is not None,
                txn.offline_list,
            )
        )
        credit = self.credit
        if credit is None or not txn.paid_by_credit:
            return
        if state is S.FAILED and credit.kind is not CreditKind.TEST_VEND:
            # Nothing was dispensed: the price goes back, for another selection.
            self._save_credit(
                fx, dataclasses.replace(credit, used=credit.used - (txn.amount or 0)), now
            )
            return
        credit = dataclasses.replace(credit, txn_ids=(*credit.txn_ids, txn.txn_id))
        self._save_credit(fx, credit, now)
        if credit.kind is CreditKind.CREDIT and credit.spent:
            self._finish_credit(fx, "spent", now)
        elif credit.spent:
            self._finish_credit(fx, _ENDED_BY[state], now, txn.selection)

    def _save_credit(self, fx: Effects, credit: CreditSession, now: float) -> None:
        credit = dataclasses.replace(credit, updated_at=now)
        fx.credits.append(credit)
        self.credit = credit if credit.state is CreditState.OPEN else None

    def _finish_credit(
        self, fx: Effects, reason: str, now: float, selection: int | None = None
    ) -> None:
        """The voucher's or credit's one outcome, with what it paid."""
        credit = self.credit
        assert credit is not None
        done = dataclasses.replace(credit, state=outcome(credit, reason), reason=reason)
        self._save_credit(fx, done, now)
        money = self.config.money
        if done.kind in (CreditKind.TEST_VEND, CreditKind.OFFLINE):
            return  # asked for on the machine: its asker hears the outcome, the cloud its vend
        if done.kind is CreditKind.VOUCHER:
            fx.events.append(
                m.VoucherStatus(
                    done.credit_id,
                    done.ref,
                    done.state.value,
                    reason,
                    done.value,
                    done.used,
                    selection,
                    done.txn_ids[0] if done.txn_ids else None,
                    money.currency,
                    money.decimals,
                    done.medium,
                    done.surcharge,
                )
            )
            return
        fx.events.append(
            m.CreditStatus(
                done.credit_id,
                done.ref,
                done.state.value,
                reason,
                done.value,
                done.used,
                done.rest,
                len(done.txn_ids),
                done.txn_ids,
                money.currency,
                money.decimals,
                done.medium,
                done.surcharge,
            )
        )


def _is(txn: Txn | None, vend_id: int, state: TxnState | None = None) -> bool:
    return txn is not None and txn.vend_id == vend_id and (state is None or txn.state is state)


def _refuse(cmd: m.Command, code: m.ErrorCode, message: str) -> m.Reply:
    return m.Reply(cmd.id, False, code, message)
