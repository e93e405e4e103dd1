"""Local vend decisions, used until the cloud flow decides (``--local-approval``).

``accept`` approves every vend request at its price and books it as a **free** vend: no
money was collected by anyone, so it must never be counted as paid. On a VMC without
always-idle it also offers a session with funds unknown whenever the reader is enabled, as a
free-vend key would. ``deny`` refuses every vend. Negative vends (refund to card) are always
refused locally. Cash sales the VMC reports are booked as cash.

A successful vend and a cash sale take stock (:class:`~vmc.services.stock_book.StockBook`) in
the same journal commit as their record, as the cloud flow's do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import structlog

from protocols.mdb import events as ev
from protocols.mdb.commands import Feature
from vmc.cloud.messages import VendType
from vmc.cloud.outbox import new_id
from vmc.journal import Journal, JournalRecord
from vmc.services import bus_messages as msg
from vmc.services.stock_book import StockBook
from vmc.stock import Vend

log = structlog.get_logger("vmc.vending")


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
    ) -> None:
        self.accept = accept
        self.journal = journal
        self.send = send
        self.stock = stock
        self.always_idle = False
        self.sessions_completed = 0
        self.vends_succeeded = 0

    def handle(self, report: object) -> None:
        log_report(report)
        match report:
            case ev.VendRequested(vend_id=vend_id, price=price, negative=negative):
                if self.accept and not negative:
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
                if new is ev.State.ENABLED and self.accept and not self.always_idle:
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
