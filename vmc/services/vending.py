"""Local vend decisions, used until the cloud flow decides (``--local-approval``).

``accept`` approves every vend request at its price and books it as a **free** vend: no
money was collected by anyone, so it must never be counted as paid. On a VMC without
always-idle it also offers a session with funds unknown whenever the reader is enabled, as a
free-vend key would. ``deny`` refuses every vend. Negative vends (refund to card) are always
refused locally. Cash sales the VMC reports are booked as cash.

A successful vend and a cash sale take stock (:class:`~vmc.services.stock_book.StockBook`) in
the same journal commit as their record, as the cloud flow's do.

A technician's test vend (:meth:`LocalVending.test_vend`) is the machine's own session, as with
a cloud: the transaction engine's glue (``machine``) opens and decides it, and while it is open
the bus's session events are the engine's, not the policy's (cash sales and revalues stay the
policy's). With ``accept``, the policy's own free-vend session is withdrawn for it while
nobody uses it, and offered again after.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from protocols.exe import events as exe
from protocols.mdb import events as ev
from protocols.mdb.commands import Feature
from vmc.cloud.messages import VendType
from vmc.cloud.outbox import new_id
from vmc.credit import TestVendOutcome
from vmc.journal import Journal, JournalRecord
from vmc.services import bus_messages as msg
from vmc.services.stock_book import StockBook
from vmc.stock import Vend
from vmc.storage import StorageGuard

if TYPE_CHECKING:  # it imports this module's log_report
    from vmc.services.remote_vend import RemoteVending

log = structlog.get_logger("vmc.vending")

CANCEL_WAIT_S = 3.0
"""How long a test vend waits for the VMC to end the policy's unused free-vend session."""
_POLICY_ONLY = (ev.CashSaleReported, ev.RevalueRequested)
"""Reports the local policy handles even while the machine's own session is open."""
_READER = (ev.StateChanged, ev.FeaturesEnabled, ev.ReaderReset)
"""Reports the engine must always hear, to know when a session of its own may start."""


def log_report(report: object) -> None:
    """One log line for what the bus process reported (heartbeats excepted)."""
    match report:
        case ev.VendRequested(vend_id=vend_id, item=item, price=price, negative=negative):
            log.info("vend_requested", vend_id=vend_id, item=item, price=price, negative=negative)
        case ev.VendApprovedSent(vend_id=vend_id, amount=amount):
            log.info("vend_approved", vend_id=vend_id, amount=amount)
        case ev.VendDeniedSent(vend_id=vend_id, reason=reason):
            log.info("vend_denied", vend_id=vend_id, reason=reason.value)
        case ev.VendSucceeded() | ev.VendFailed() | ev.VendOutcomeUnknown():
            log.info("vend_result", result=type(report).__name__, **_fields(report))
        case ev.StateChanged(new=new):
            log.info("reader_state", state=new.name)
        case ev.FeaturesEnabled(features=features):
            log.info("features_enabled", features=features)
        case ev.ReaderReset(bus_reset=bus_reset):
            log.info("reader_reset", bus_reset=bus_reset)
        case ev.ProtocolViolation(detail=detail):
            log.warning("mdb_protocol_violation", detail=detail)
        case exe.LinkChanged(up=up):
            (log.info if up else log.warning)("exe_link", up=up)
        case exe.VmcStatus(raw=raw, inhibited=inhibited, free_vend=free_vend):
            log.info("exe_status", raw=f"{raw:#04x}", inhibited=inhibited, free_vend=free_vend)
        case exe.ExeFault(fault=fault, command=command, detail=detail):
            log.warning("exe_fault", fault=fault.value, command=command, detail=detail)
        case msg.CommandRefused(command=command, error=error):
            log.warning("bus_command_refused", command=command, error=error)
        case msg.Ready(port=port, realtime=realtime):
            log.info("bus_ready", port=port, realtime=realtime)
        case msg.Heartbeat():
            pass
        case _:
            log.debug("bus_event", kind=type(report).__name__, **_fields(report))


def _fields(report: object) -> dict[str, object]:
    if not dataclasses.is_dataclass(report):
        return {}
    return {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}


class LocalVending:
    def __init__(
        self,
        accept: bool,
        journal: Journal,
        send: Callable[[msg.BusCommand], bool],
        stock: StockBook,
        *,
        machine: RemoteVending | None = None,
        storage: StorageGuard | None = None,
    ) -> None:
        """``storage``: while it is full, ``accept`` denies (nothing could be booked)."""
        self.accept = accept
        self.storage = storage
        self.journal = journal
        self.send = send
        self.stock = stock
        self.machine = machine
        self.always_idle = False
        self.sessions_completed = 0
        self.vends_succeeded = 0
        self._testing = False
        self._enabled = asyncio.Event()

    def handle(self, report: object) -> None:
        machine = self.machine
        owned = machine is not None and machine.busy and not isinstance(report, _POLICY_ONLY)
        if machine is not None and (owned or isinstance(report, _READER)):
            machine.handle_bus(report)  # it logs the report
        else:
            log_report(report)
        if isinstance(report, ev.StateChanged):
            if report.new is ev.State.ENABLED:
                self._enabled.set()
            else:
                self._enabled.clear()
        if not owned:
            self._decide(report)

    async def test_vend(self, selection: int, timeout_s: float) -> TestVendOutcome:
        """A technician's test vend without a cloud (see :meth:`RemoteVending.test_vend`)."""
        machine = self.machine
        assert machine is not None, "vmcd gives the local policy the engine's glue"
        self._testing = True
        try:
            if self._own_session_idle(machine):
                self.send(msg.CancelSession())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CANCEL_WAIT_S):
                        await self._enabled.wait()
            return await machine.test_vend(selection, timeout_s)
        finally:
            self._testing = False
            if self._offers_sessions() and self._enabled.is_set() and not machine.busy:
                self.send(msg.BeginSession(None))

    def _own_session_idle(self, machine: RemoteVending) -> bool:
        """The policy's free-vend session is open and nobody selected in it."""
        reader = machine.engine.reader_state
        return self.accept and reader is ev.State.SESSION_IDLE and not machine.busy

    def _room(self) -> bool:
        return self.storage is None or self.storage.check()

    def _offers_sessions(self) -> bool:
        return self.accept and not self.always_idle

    def _decide(self, report: object) -> None:
        match report:
            case ev.VendRequested(vend_id=vend_id, price=price, negative=negative):
                if self.accept and not negative and not self._room():
                    log.warning("vend_refused", vend_id=vend_id, code="storage_full")
                    self.send(msg.DenyVend(vend_id))
                elif self.accept and not negative:
                    self.send(msg.ApproveVend(vend_id, price))
                else:
                    self.send(msg.DenyVend(vend_id))
            case ev.VendSucceeded(vend_id=vend_id, item=item, amount=amount):
                self.vends_succeeded += 1
                self._book(
                    "vend_success",
                    vend_id=vend_id,
                    item=item,
                    amount=amount,
                    vend_type=VendType.FREE,
                    sold=VendType.FREE,
                )
            case ev.VendFailed(vend_id=vend_id, item=item, amount=amount):
                self._book(
                    "vend_failure",
                    vend_id=vend_id,
                    item=item,
                    amount=amount,
                    vend_type=VendType.FREE,
                )
            case ev.VendOutcomeUnknown(vend_id=vend_id, item=item, amount=amount, reason=why):
                self._book(
                    "vend_unknown",
                    vend_id=vend_id,
                    item=item,
                    amount=amount,
                    vend_type=VendType.FREE,
                    detail=why,
                )
            case ev.CashSaleReported(item=item, price=price):
                self._book(
                    "cash_sale",
                    vend_id=None,
                    item=item,
                    amount=price,
                    vend_type=None,
                    sold=VendType.PAID,
                )
            case ev.RevalueRequested():
                self.send(msg.DecideRevalue(approved=False))
            case ev.FeaturesEnabled(features=features):
                self.always_idle = bool(features & Feature.ALWAYS_IDLE)
            case ev.SessionEnded():
                self.sessions_completed += 1
            case ev.StateChanged(new=new):
                if new is ev.State.ENABLED and self._offers_sessions() and not self._testing:
                    self.send(msg.BeginSession(None))
            case ev.ReaderReset():
                self.always_idle = False

    def _book(
        self,
        kind: str,
        *,
        vend_id: int | None,
        item: int,
        amount: int,
        vend_type: VendType | None,
        detail: str | None = None,
        sold: VendType | None = None,
    ) -> None:
        """One record; ``sold`` (the stock's vend type) when a product left the machine."""
        record = JournalRecord(kind, vend_id, item, amount, vend_type, detail)
        at = self.stock.clock()
        vends = [] if sold is None else [Vend(new_id(), at, item, sold)]
        writes, messages = self.stock.take(vends)
        self.journal.commit([], messages, record=record, stock=writes, durable=True)
        log.info(kind, vend_id=vend_id, item=item, amount=amount, vend_type=vend_type)
        self.stock.committed(writes)
