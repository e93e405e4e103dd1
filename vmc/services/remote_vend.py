"""Glue between the transaction engine, the journal, the bus and the cloud outbox.

Order of work for every input: the engine decides, the journal commits the transitions with
their outbox messages, the command's reply and the stock a vend took (fsynced when money or
stock moves), and only then are the bus commands sent and the outbox drain woken. A command
id seen before is answered with the stored reply and changes nothing; so is a voucher or credit
whose id was accepted before (with that first acceptance's result). Every product that left
the machine (a cashless success of any vend type, a cash sale) is a ``sales`` row in that same
commit; ``sales.query`` is answered from those rows, and the refunds, in the reply. A ``refund``
is judged against the journal's record of the transaction (:mod:`vmc.refunds`), not the
engine's memory, so it holds across restarts for as long as the transaction is kept. With
the backend's keys configured, a command that moves money or goods is acted on only with a
good signature (:mod:`vmc.cloud.signing`), checked before anything else is.

A technician's test vend (:meth:`RemoteVending.test_vend`) goes the same way. Without a cloud
(``topics`` None) this glue serves the test vends of the local policy's machine
(:class:`~vmc.services.vending.LocalVending`): it journals and takes stock the same, and queues
nothing for a cloud.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from protocols.mdb import events as ev
from vmc import offline
from vmc.cloud import codec, signing
from vmc.cloud import messages as m
from vmc.cloud.outbox import event_message, new_id, reply_message
from vmc.cloud.topics import Topics
from vmc.credit import (
    CreditKind,
    CreditSession,
    CreditState,
    TestVendOutcome,
    TestVendResult,
    ended_test_vend,
)
from vmc.journal import OFFLINE_LIST, Journal, NewMessage, StockWrite, txn_record
from vmc.logs import soon
from vmc.offline import AllowList, Bounds, Denial, Usage, offline_state
from vmc.refunds import RefundRow, decide
from vmc.sales import Payment, Period, PeriodError, SaleRow, period, report
from vmc.services import bus_messages as bus
from vmc.services.data_service import DataService
from vmc.services.stock_book import StockBook
from vmc.services.vending import log_report
from vmc.stock import Condition, Stock
from vmc.stock_view import stock_view
from vmc.storage import StorageGuard
from vmc.transaction import Effects, Engine

log = structlog.get_logger("vmc.remote_vend")

MONEY_COMMANDS = (m.Lock, m.Paid, m.Voucher, m.Credit, m.Refund)
"""What moves money or records it: refused while the journal has no room."""
NO_ROOM = "the journal's storage is full; nothing can be recorded until there is room"

RESULT_GRACE_S = 10.0
"""How much longer than a test vend's time and the reader's ``vend_result_timeout`` its asker
waits for the outcome before giving up on it (the session still ends as usual)."""


@dataclass
class _TestWait:
    """A test vend somebody awaits: its outcome, and what the VMC asked for instead."""

    selection: int
    done: asyncio.Future[TestVendOutcome]
    others: list[int] = field(default_factory=list)


class RemoteVending:
    def __init__(
        self,
        engine: Engine,
        journal: Journal,
        topics: Topics | None,
        send_bus: Callable[[bus.BusCommand], bool],
        *,
        clock: Callable[[], float] = time.time,
        on_outbox: Callable[[], None] = lambda: None,
        on_state: Callable[[], None] = lambda: None,
        stock: StockBook | None = None,
        zone: ZoneInfo | None = None,
        data: DataService | None = None,
        keys: signing.CommandKeys | None = None,
        offline: Bounds | None = None,
        online: Callable[[], bool] = lambda: False,
        storage: StorageGuard | None = None,
    ) -> None:
        """``offline``: the bounds of offline approvals (off when None); ``online``: whether
        the cloud is reachable now (the MQTT link is up); ``storage``: while it is full, no new
        money moves (``storage_full``)."""
        self.engine = engine
        self.storage = storage
        self.journal = journal
        self.topics = topics
        self.send_bus = send_bus
        self.clock = clock
        self.on_outbox = on_outbox
        self.on_state = on_state
        self.stock = stock
        self.data = data
        self.keys = keys or signing.CommandKeys()
        """The backend's command keys; none: signatures are not checked."""
        self.zone = zone or ZoneInfo("UTC")
        self.vend_result_timeout = 60.0
        """The reader's: how long an approved vend may take (a test vend's asker waits it)."""
        self._tests: dict[str, _TestWait] = {}
        self.offline_bounds = offline or Bounds()
        self.online = online

    @property
    def busy(self) -> bool:
        """A session of the machine's own, or a transaction, is open."""
        return self.engine.txn is not None or self.engine.credit is not None

    async def test_vend(self, selection: int, timeout_s: float) -> TestVendOutcome:
        """A technician's test vend of ``selection``: its outcome once it ended.

        Refused at once (``busy``, ``reader_unavailable``) unless the reader is enabled with
        nothing open. Otherwise the VMC gets a test-media session for ``timeout_s``; the
        selection is approved at 0, journaled with vend type ``test`` (a ``txn.vend`` with a
        cloud) and its result returned. Cancelling the wait abandons the session, unless its
        vend is running.
        """
        if not self._room_for_money():
            full = m.ErrorCode.STORAGE_FULL.value
            log.info("test_vend_refused", selection=selection, code=full)
            return TestVendOutcome(TestVendResult.REFUSED, selection, NO_ROOM, full)
        test_id = new_id()
        now = self.clock()
        fx = self.engine.test_vend(test_id, selection, timeout_s, now)
        reply, fx.reply = fx.reply, None
        assert reply is not None
        if not reply.ok:
            code = None if reply.code is None else reply.code.value
            log.info("test_vend_refused", selection=selection, code=code, reason=reply.message)
            return TestVendOutcome(TestVendResult.REFUSED, selection, reply.message, code)
        wait = _TestWait(selection, asyncio.get_running_loop().create_future())
        self._tests[test_id] = wait
        log.info("test_vend", test_id=test_id, selection=selection, timeout_s=timeout_s)
        try:
            self._apply(fx, at=now)
            async with asyncio.timeout(timeout_s + self.vend_result_timeout + RESULT_GRACE_S):
                return await asyncio.shield(wait.done)
        except TimeoutError:
            reason = "no outcome in time; the journal will have it"
            return TestVendOutcome(TestVendResult.UNKNOWN, selection, reason)
        except asyncio.CancelledError:
            now = self.clock()
            self._apply(self.engine.abandon_test_vend(test_id, now), at=now)
            raise
        finally:
            del self._tests[test_id]

    def present(self, ref: str) -> dict[str, object]:
        """A reference presented on the machine (a badge reader, ``vmctl present``).

        Online, the machine locks for it and the backend decides its selection from the
        ``txn.request`` as for any lock. While the cloud is unreachable, the allow-list and the
        ``[offline]`` bounds decide (:func:`vmc.offline.decide`): allowed, the VMC gets a
        session worth what they leave for one vend. ``ok`` False says why not (``code``).
        """
        now = self.clock()
        presence_id = new_id()
        if self.topics is None:
            message = "no cloud: vmcd decides by its local policy (--local-approval)"
            return _presented(ref, None, m.Reply(presence_id, False, None, message), "no_cloud")
        if not self._room_for_money():
            full = m.Reply(presence_id, False, m.ErrorCode.STORAGE_FULL, NO_ROOM)
            return _presented(ref, None, full)
        if self.online():
            mode = "online"
            fx = self.engine.present_online(presence_id, ref, now)
        else:
            mode = "offline"
            allow = self.journal.offline_list()
            usage = Usage() if allow is None else self.journal.offline_usage(allow.version)
            decision = offline.decide(ref, allow, usage, self.offline_bounds, now)
            if isinstance(decision, Denial):
                log.info("offline_denied", ref=ref, reason=decision.value)
                refusal = m.Reply(presence_id, False, None, DENIALS[decision])
                return _presented(ref, mode, refusal, decision.value)
            timeout = self.engine.config.lock_timeout
            fx = self.engine.present_offline(presence_id, decision, timeout, now)
        reply, fx.reply = fx.reply, None
        assert reply is not None
        log.info(
            "presented",
            ref=ref,
            mode=mode,
            ok=reply.ok,
            code=None if reply.code is None else reply.code.value,
            value=reply.result.get("value"),
        )
        self._apply(fx)
        return _presented(ref, mode, reply)

    def offline_state(self) -> dict[str, object]:
        """The retained ``state``'s ``offline`` map: the bounds, the list in force, its usage."""
        allow = self.journal.offline_list()
        usage = Usage() if allow is None else self.journal.offline_usage(allow.version)
        return offline_state(self.offline_bounds, allow, usage)

    def _offline_allow(self, cmd: m.OfflineAllow) -> None:
        """A new allow-list replaces the one in force (its usage starts from nothing); the same
        version again changes nothing; an older one is refused."""
        now = self.clock()
        refusal = m.expired_reply(cmd, now)
        if refusal is not None:
            self._apply(Effects(reply=refusal), command_id=cmd.id)
            return
        current = self.journal.offline_list()
        if current is not None and cmd.version < current.version:
            message = f"version: {cmd.version} is older than the list in force ({current.version})"
            self._apply(
                Effects(reply=m.Reply(cmd.id, False, m.ErrorCode.BAD_FIELD, message)),
                command_id=cmd.id,
            )
            return
        state: dict[str, bytes] = {}
        previous: dict[str, object] | None = None
        allow = current
        if current is None or cmd.version > current.version:
            allow = AllowList(cmd.version, cmd.issued_at, now, {x.ref: x for x in cmd.limits})
            state[OFFLINE_LIST] = allow.to_json().encode()
            if current is not None:
                used = self.journal.offline_usage(current.version).total
                previous = {"version": current.version, "vends": used.vends, "value": used.value}
        assert allow is not None
        result = {
            "version": allow.version,
            "issued_at": allow.issued_at,
            "received_at": allow.received_at,
            "refs": len(allow.limits),
            "replaced": bool(state),
            "enabled": self.offline_bounds.enabled,
            "previous": previous,
        }
        log.info("offline_list", command_id=cmd.id, **{k: result[k] for k in ("version", "refs")})
        self._apply(Effects(reply=m.Reply(cmd.id, True, result=result)), cmd.id, state=state)
        self.on_state()

    def recover(self) -> None:
        """Settle what a crash left open. Without a cloud, only the machine's own sessions (a
        test vend): a lock, voucher or credit is a cloud's, settled and reported to it when
        vmcd runs with it again."""
        journal = self.journal
        txn, credit = journal.open_txn(), journal.open_credit()
        theirs = (txn is not None and txn.test_id is None) or (
            credit is not None and credit.kind is not CreditKind.TEST_VEND
        )
        if self.topics is None and theirs:
            log.warning(
                "recovery_left_for_the_cloud",
                txn_id=None if txn is None else txn.txn_id,
                credit_id=None if credit is None else credit.credit_id,
            )
            return
        now = self.clock()
        fx = self.engine.recover(txn, now, credit)
        if fx.transitions:
            log.warning(
                "txn_recovered",
                txn_id=fx.transitions[-1].txn_id,
                state=fx.transitions[-1].state.value,
            )
        if fx.credits:
            log.warning(
                "credit_recovered",
                kind=fx.credits[-1].kind.value,
                credit_id=fx.credits[-1].credit_id,
                state=fx.credits[-1].state.value,
            )
        self._apply(fx, at=now)

    def handle_bus(self, report: object) -> None:
        """The report's log line comes after its decision is committed and handed on (to the
        bus, to the outbox): the line is not on the vend's critical path."""
        if isinstance(report, ev.VendRequested):
            for wait in self._tests.values():
                if report.item != wait.selection:
                    wait.others.append(report.item)
        now = self.clock()
        try:
            self._apply(self.engine.on_bus(report, now), at=now)
        finally:
            soon(log_report, report)
        if isinstance(report, ev.StateChanged | ev.FeaturesEnabled | ev.ReaderReset):
            self.on_state()

    def tick(self) -> None:
        now = self.clock()
        self._apply(self.engine.tick(now), at=now)

    def handle_command(self, payload: bytes) -> None:
        """One command payload from the broker, whatever it holds.

        A signature is checked before the id is looked up or anything is journaled: a forged
        command is answered and reported, and its id stays free for the real one.
        """
        try:
            obj = codec.decode_map(payload)
            cmd = codec.command_from_map(obj)
        except codec.CommandError as exc:
            log.warning(
                "command_refused", code=exc.code.value, error=exc.message, command_id=exc.command_id
            )
            self._apply(Effects(reply=exc.reply()))
            return
        forged = self.keys.check(obj, cmd.expires, self.clock())
        if forged is not None:
            self._bad_signature(cmd.id, str(obj["op"]), forged)
            return
        stored = self.journal.known_reply(cmd.id)
        if stored is not None:
            log.info("command_repeated", command_id=cmd.id)
            self._store_reply_again(stored)
            return
        if isinstance(cmd, m.SalesQuery | m.StockQuery | m.TxnQuery):
            refusal = m.expired_reply(cmd, self.clock())
            reply = refusal if refusal is not None else self._query_reply(cmd)
            self._apply(Effects(reply=reply), command_id=cmd.id)
            return
        if isinstance(cmd, MONEY_COMMANDS) and not self._room_for_money():
            refusal = m.expired_reply(cmd, self.clock()) or m.Reply(
                cmd.id, False, m.ErrorCode.STORAGE_FULL, NO_ROOM
            )
            log.warning("command_refused", code=refusal.code, command_id=cmd.id)
            self._apply(Effects(reply=refusal))  # not stored: the same id may come again
            return
        if isinstance(cmd, m.Refund):
            self._refund(cmd)
            return
        if isinstance(cmd, m.SetPlanogram | m.Refill | m.TakeInventory | m.RestockToPar):
            if self.stock is None:
                self._not_here(cmd, "stock")
            else:
                self.stock.handle_command(cmd)
            return
        if isinstance(cmd, m.CashCollect):
            collector = None if self.stock is None else self.stock.collector
            if collector is None:
                self._not_here(cmd, "stock")
            else:
                collector.handle_command(cmd)
            return
        if isinstance(cmd, m.DataRequest | m.CheckStatus):
            if self.data is None:
                self._not_here(cmd, "data requests")
            else:
                self.data.handle_command(cmd)
            return
        if isinstance(cmd, m.OfflineAllow):
            self._offline_allow(cmd)
            return
        if isinstance(cmd, m.Voucher | m.Credit) and self._credit_repeated(cmd):
            return
        now = self.clock()
        fx = self.engine.on_command(cmd, now)
        try:
            self._apply(fx, command_id=cmd.id, at=now)  # an approval reaches the bus first
        finally:
            log.info(
                "command",
                op=type(cmd).__name__.lower(),
                command_id=cmd.id,
                ok=fx.reply.ok if fx.reply else None,
                code=fx.reply.code.value if fx.reply and fx.reply.code else None,
            )

    def _room_for_money(self) -> bool:
        return self.storage is None or self.storage.check()

    def _bad_signature(self, command_id: str, op: str, refusal: signing.Refusal) -> None:
        """Refuse a command for its signature and report it; the refusal is not kept under
        the id (as a decoding refusal is not), so the real command with that id still works."""
        log.warning(
            "command_bad_signature", command_id=command_id, op=op, reason=refusal.fault.value
        )
        event = m.BadSignature(command_id, op, refusal.fault.value, refusal.kid)
        reply = m.Reply(command_id, False, m.ErrorCode.BAD_SIGNATURE, refusal.message)
        self._apply(Effects(events=[event], reply=reply))

    def _credit_repeated(self, cmd: m.Voucher | m.Credit) -> bool:
        """A voucher or credit id accepted before: answered with its first result, nothing new.

        Only an accepted one is remembered; one that was refused (busy, say) may be sent again.
        """
        if isinstance(cmd, m.Voucher):
            kind, credit_id = CreditKind.VOUCHER, cmd.voucher_id
        else:
            kind, credit_id = CreditKind.CREDIT, cmd.credit_id
        known = self.journal.credit(kind, credit_id)
        if known is None or m.expired_reply(cmd, self.clock()) is not None:
            return False
        log.info("credit_repeated", kind=kind.value, credit_id=credit_id, command_id=cmd.id)
        self._apply(Effects(reply=m.Reply(cmd.id, True, result=known.result)), command_id=cmd.id)
        return True

    def _not_here(self, cmd: m.AnyCommand, what: str) -> None:
        refusal = m.Reply(cmd.id, False, m.ErrorCode.UNKNOWN_OP, f"no {what} on this device")
        self._apply(Effects(reply=refusal), command_id=cmd.id)

    def _query_reply(self, cmd: m.SalesQuery | m.StockQuery | m.TxnQuery) -> m.Reply:
        """A read-only query, answered from the journal and the stock; it changes nothing."""
        stock = self.stock.stock if self.stock is not None else Stock()
        if isinstance(cmd, m.StockQuery):
            wanted = None if cmd.conditions is None else {Condition(c) for c in cmd.conditions}
            return m.Reply(cmd.id, True, result=stock_view(stock, wanted))
        try:
            when = period(cmd.since_date, cmd.to_date, self.zone)
        except PeriodError as exc:
            log.warning("query_refused", command_id=cmd.id, field=exc.field)
            return m.Reply(cmd.id, False, m.ErrorCode.BAD_FIELD, str(exc))
        if isinstance(cmd, m.TxnQuery):
            return m.Reply(cmd.id, True, result=self._txn_page(cmd, when))
        money = self.engine.config.money
        result = report(
            self.journal.sales(when.since, when.until),
            when,
            stock,
            cmd.selection,
            self.journal.refunds(when.since, when.until),
        )
        log.info(
            "sales_query", command_id=cmd.id, since=when.first.isoformat(), sales=result["total"]
        )
        return m.Reply(
            cmd.id, True, result={**result, "currency": money.currency, "decimals": money.decimals}
        )

    def _txn_page(self, cmd: m.TxnQuery, when: Period) -> dict[str, Any]:
        """One page of the transaction list; ``next`` is the cursor for the following one."""
        rows = self.journal.txns_created(
            when.since, when.until, cmd.after, cmd.limit + 1, cmd.selection
        )
        page = rows[: cmd.limit]
        money = self.engine.config.money
        return {
            "from": when.first.isoformat(),
            "to": when.last.isoformat(),
            "timezone": when.zone.key,
            "currency": money.currency,
            "decimals": money.decimals,
            "txns": [txn_record(t, r) for t, r in page],
            "next": page[-1][0].txn_id if len(rows) > cmd.limit else None,
        }

    def _refund(self, cmd: m.Refund) -> None:
        """Record a refund against a finished vend, or refuse it with a code."""
        journal = self.journal
        decision = decide(
            cmd,
            journal.txn(cmd.txn_id),
            journal.refunds_of(cmd.txn_id),
            same_id=journal.refund(cmd.key),
            money=self.engine.config.money,
            now=self.clock(),
        )
        reply = decision.reply
        log.info(
            "refund",
            command_id=cmd.id,
            txn_id=cmd.txn_id,
            refund_id=cmd.key,
            ok=reply.ok,
            code=None if reply.code is None else reply.code.value,
            amount=None if decision.row is None else decision.row.amount,
        )
        events: list[m.Event] = [] if decision.event is None else [decision.event]
        rows = [] if decision.row is None else [decision.row]
        self._apply(Effects(events=events, reply=reply), command_id=cmd.id, refunds=rows)

    def _apply(
        self,
        fx: Effects,
        command_id: str | None = None,
        refunds: Sequence[RefundRow] = (),
        state: dict[str, bytes] | None = None,
        *,
        at: float | None = None,
    ) -> None:
        """Journal ``fx`` and act on it; ``at``: the time the engine decided it by (read
        before it closed a transaction: the steady clock may step once nothing is open)."""
        at = self.clock() if at is None else at
        topics = self.topics
        messages = (
            [] if topics is None else [event_message(e, topics.events, at) for e in fx.events]
        )
        stored: tuple[str, bytes] | None = None
        if fx.reply is not None and topics is not None:
            message, reply_bytes = reply_message(fx.reply, topics.replies, at)
            messages.append(message)
            if command_id is not None:
                stored = (command_id, reply_bytes)
        writes: list[StockWrite] = []
        if self.stock is not None:
            writes, stock_messages = self.stock.vend_writes(fx.events, at)
            messages.extend(stock_messages)
        if not (fx.transitions or messages or fx.credits or fx.events):
            for command in fx.bus:
                self.send_bus(command)
            return
        # An event or a command's reply, once published, is a promise: it must survive too.
        # A txn.request is a question that moves no money: published without waiting for an
        # fsync, since a power cut that loses it leaves a transaction no paid can approve
        # (docs/cloud-api.md 6.4); the commit that approves it is fsynced, and the request's
        # with it.
        durable = fx.durable or stored is not None or not _only_requests(fx.events)
        self.journal.commit(
            fx.transitions,
            messages,
            command=stored,
            stock=writes,
            sales=list(_sales(fx.events, at)),
            refunds=refunds,
            credits=fx.credits,
            state=state,
            durable=durable,
        )
        for command in fx.bus:
            self.send_bus(command)
        if self.stock is not None:
            self.stock.committed(writes)
        self._tests_ended(fx)
        self.on_outbox()
        if fx.transitions or fx.credits:
            self.on_state()
        soon(_log_applied, fx)  # after the wake-ups above: the loop runs them first

    def _tests_ended(self, fx: Effects) -> None:
        """Tell the askers of the test vends that ended in this (committed) effect."""
        for credit in fx.credits:
            wait = self._tests.get(credit.credit_id)
            if wait is None or credit.kind is not CreditKind.TEST_VEND:
                continue
            if credit.state is CreditState.OPEN or wait.done.done():
                continue
            wait.done.set_result(ended_test_vend(credit, _vend_of(fx, credit), tuple(wait.others)))

    def _store_reply_again(self, reply_bytes: bytes) -> None:
        assert self.topics is not None  # commands come from a cloud
        message = NewMessage(new_id(), self.topics.replies, lambda _seq: reply_bytes)
        self.journal.commit([], [message], durable=False)
        self.on_outbox()


DENIALS = {
    Denial.DISABLED: "offline approvals are off ([offline] enabled = false)",
    Denial.NO_LIST: "the cloud is unreachable and no allow-list was received",
    Denial.LIST_TOO_OLD: "the allow-list is older than [offline] max_list_age_h",
    Denial.UNKNOWN_REF: "not on the allow-list",
    Denial.REF_VENDS: "its vends on the allow-list are used up",
    Denial.REF_VALUE: "its value on the allow-list is used up",
    Denial.TOTAL_VENDS: "the machine's offline vends ([offline] max_vends) are used up",
    Denial.TOTAL_VALUE: "the machine's offline value ([offline] max_total_value) is used up",
}
"""What a badge reader's user (or a technician) is told when a reference is denied."""


def _presented(
    ref: str, mode: str | None, reply: m.Reply, code: str | None = None
) -> dict[str, object]:
    """A presentation's answer, as the control socket gives it."""
    if code is None and reply.code is not None:
        code = reply.code.value
    head = {"ok": reply.ok, "ref": ref, "mode": mode, "code": code, "message": reply.message}
    return head | dict(reply.result)


def _vend_of(fx: Effects, session: CreditSession) -> m.TxnVend | None:
    """The ``txn.vend`` of the vend a test vend's session had, if it had one in ``fx``."""
    return next(
        (e for e in fx.events if isinstance(e, m.TxnVend) and e.txn_id in session.txn_ids), None
    )


def _log_applied(fx: Effects) -> None:
    for txn in fx.transitions:
        log.info("txn", txn_id=txn.txn_id, state=txn.state.value, reason=txn.reason or None)
    for credit in fx.credits:
        log.info(
            "credit",
            kind=credit.kind.value,
            credit_id=credit.credit_id,
            state=credit.state.value,
            used=credit.used,
            rest=credit.rest,
            reason=credit.reason or None,
        )


def _only_requests(events: Iterable[m.Event]) -> bool:
    """Whether every event is a ``txn.request`` (or there is none)."""
    return all(isinstance(event, m.TxnRequest) for event in events)


def _sales(events: Iterable[m.Event], at: float) -> Iterable[tuple[str, SaleRow]]:
    """The products that left the machine, keyed by the operation that counts them once."""
    for event in events:
        if isinstance(event, m.TxnVend) and event.result == "success":
            row = SaleRow(
                at,
                event.selection,
                event.amount,
                Payment.CASHLESS,
                event.vend_type,
                event.medium,
                event.surcharge,
            )
            yield event.txn_id, row
        elif isinstance(event, m.Sale):
            yield new_id(), SaleRow(at, event.selection, event.price, Payment.CASH, m.VendType.PAID)
