"""The audit reporter: read the machine's EVA-DTS audit, keep it, and tell the cloud what it says.

Each read (scheduled, periodic, at start, on SIGUSR1 or from ``vmctl``) goes: DEX/UCS or DDCMP
over the DEX port -> the raw bytes saved on disk (the last N) -> parsed -> messages for the
outbox (``audit.report`` with the raw text as seed 003 shapes it, ``audit.summary``, and when a
baseline exists ``audit.delta``, ``sales.report`` per slot and one ``event`` per new EVA-DTS
event) committed together with the new baseline. A read that fails, or an audit that is not
complete or whose G85 does not match, is reported (``audit.failed`` / ``valid: false``) and never
moves the baseline: deltas are always between two good reads.

Reconciliation: each valid read keeps, with the baseline, the paid vends per selection the
daemon saw on the bus until the read started (``Stock.paid_vends``). The next valid read
compares its PA2 delta per selection with the bus's count over the same interval and reports
each selection that differs as one ``stock.reconcile`` event, with both numbers. The stock
follows the bus, not the audit: the bus count is live, per vend, with an id that makes it
idempotent, so alarms fire when the product leaves; the audit difference has no time and no
vend id, and a mismatch usually means vends the reader could not see (tokens, a VMC's own free
or service vends counted as paid), or a selection numbered differently in the audit. The cloud
decides what to do with it: a ``stock.inventory`` or ``stock.refill`` corrects the count. No
reconciliation runs after a ``baseline_reset`` delta (its since-reset figures do not cover the
interval), for a baseline kept before the bus count existed, or for an audit without PA1/PA2.

A valid read also commits, with its baseline, what the service flags take from it: the coin
tube contents (``low_change``) and the last door opening (``last_service``); see
:mod:`vmc.services.service_monitor`.

A :class:`ReadWatcher` (the data requests, :mod:`vmc.services.data_service`) hears when a read
starts and each block it receives, and adds the completions of the requests a read answers to
that read's own commit: a request is answered exactly when its read's events are.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import structlog

from drivers.dex_port import open_dex_port
from protocols.dex import DexError
from protocols.errors import ParseError, PortError
from protocols.evadts import parse
from protocols.evadts.deltas import AuditDelta, delta
from protocols.evadts.records import Audit, CrcStatus
from vmc.cloud import messages as m
from vmc.cloud.outbox import event_message, new_id
from vmc.cloud.topics import Topics
from vmc.config import DexConfig
from vmc.journal import Journal, RequestWrite
from vmc.sales import slot_stock
from vmc.services.audit_store import AuditStore, next_read
from vmc.services.dex_read import read_audit
from vmc.services.service_monitor import audit_state

log = structlog.get_logger("vmc.reporter")

BASELINE = "dex.baseline"
BASELINE_ID = "dex.baseline_id"
BASELINE_AT = "dex.baseline_at"
LAST_REPORT = "dex.last_report"
LAST_ACQUIRED = "dex.last_acquired_report"
BASELINE_BUS = "dex.baseline_bus_vends"
"""The baseline's bus count: paid vends per selection seen on the bus when it was read."""


@dataclass(frozen=True, slots=True)
class ReadContext:
    """Which read this is, when it started and what asked for it."""

    read_id: str
    at: float
    trigger: str
    bus_vends: Mapping[int, int] | None = None
    """Paid vends per selection seen on the bus when the read started (None: when processed)."""


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    """One read: ``ok`` when an audit was received and parsed; else the ``step`` that failed."""

    read_id: str
    at: float
    """When the read started (the ``read_at`` of its ``audit.report`` or ``audit.failed``)."""
    ok: bool
    valid: bool = False
    audit: Audit | None = None
    delta: AuditDelta | None = None
    size: int = 0
    """Bytes received (before the failure, for one that failed)."""
    file: Path | None = None
    """The raw audit as kept on disk."""
    raw: bytes = b""
    step: str = ""
    reason: str = ""

    @property
    def detail(self) -> str:
        return f"{self.step}: {self.reason}" if self.step else ""


class ReadWatcher(Protocol):
    """Told of each read as it runs; adds to the commit that reports it."""

    def read_started(self, read_id: str) -> None: ...

    def read_block(self, read_id: str, received: int) -> None: ...

    def read_finishing(self, outcome: ReadOutcome) -> tuple[list[m.Event], list[RequestWrite]]:
        """Events and data request rows to commit with the read's own events."""
        ...

    def read_committed(self, read_id: str) -> None:
        """The read's commit is on disk."""
        ...


class Reporter:
    def __init__(
        self,
        config: DexConfig,
        journal: Journal,
        store: AuditStore,
        topics: Topics | None,
        *,
        on_outbox: Callable[[], None] = lambda: None,
        on_state: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        zone: ZoneInfo | None = None,
    ) -> None:
        self.config = config
        self.zone = zone or ZoneInfo("UTC")  # the machine's: EA1 dates and times are local
        self.journal = journal
        self.store = store
        self.topics = topics
        self.on_outbox = on_outbox
        self.on_state = on_state
        self.clock = clock
        self._wanted = asyncio.Event()
        self._trigger = "request"
        self._lock = asyncio.Lock()
        self.watcher: ReadWatcher | None = None
        self.listeners: list[Callable[[ReadOutcome], None]] = []
        """Told of each read once it is committed (the compatibility self-test's facts)."""
        self.last_read: ReadOutcome | None = None
        """The last read since vmcd started, whatever its outcome (``vmctl status``)."""

    def attach(
        self, topics: Topics, on_outbox: Callable[[], None], on_state: Callable[[], None]
    ) -> None:
        """Report to the cloud from now on (the daemon wires this once the sync exists)."""
        self.topics = topics
        self.on_outbox = on_outbox
        self.on_state = on_state

    @property
    def reading(self) -> bool:
        return self._lock.locked()

    # --- when to read -------------------------------------------------------------------------

    def request_read(self, trigger: str = "request") -> None:
        """Read now; while a read runs, that read is the answer (nothing more is read)."""
        if self._lock.locked():
            return
        self._trigger = trigger
        self._wanted.set()

    async def run(self) -> None:
        if self.config.read_at_start:
            await self.read("start")
        while True:
            wait, trigger = self._next_wait()
            try:
                await asyncio.wait_for(self._wanted.wait(), wait)
                trigger = self._trigger
            except TimeoutError:
                pass
            await self.read(trigger)

    def _next_wait(self) -> tuple[float | None, str]:
        now = dt.datetime.now().astimezone()
        scheduled = next_read(now, self.config.schedule)
        waits: list[tuple[float, str]] = []
        if scheduled is not None:
            waits.append(((scheduled - now).total_seconds(), "schedule"))
        if self.config.interval_s is not None:
            waits.append((self.config.interval_s, "interval"))
        if not waits:
            return None, "request"
        return min(waits)

    # --- one read ------------------------------------------------------------------------------

    async def read(self, trigger: str) -> ReadOutcome:
        """Read the machine now over the configured DEX port and report what came back."""
        async with self._lock:
            self._wanted.clear()  # this read answers whoever asked for one
            ctx = ReadContext(new_id(), self.clock(), trigger, self._bus_vends())
            if self.watcher is not None:
                self.watcher.read_started(ctx.read_id)
            received = 0

            def progress(count: int) -> None:
                nonlocal received
                received = count
                if self.watcher is not None:
                    self.watcher.read_block(ctx.read_id, count)

            if self.config.port is None:
                return self._failed(ctx, "open", "no DEX port configured", 0)
            log.info("dex_read", read_id=ctx.read_id, trigger=trigger, port=self.config.port)
            try:
                port = open_dex_port(self.config.port)
            except PortError as exc:
                return self._failed(ctx, "open", str(exc), 0)
            try:
                raw = await read_audit(
                    port,
                    protocol=self.config.protocol,
                    comm_id=self.config.comm_id,
                    on_progress=progress,
                )
            except DexError as exc:
                return self._failed(ctx, exc.step, exc.reason, received)
            except PortError as exc:
                return self._failed(ctx, "transfer", str(exc), received)
            finally:
                port.close()
            return self.process(raw, ctx)

    def process(self, raw: bytes, ctx: ReadContext) -> ReadOutcome:
        """Keep, parse and report one audit; move the baseline only for a valid one."""
        read_id, at = ctx.read_id, ctx.at
        file = self.store.save(raw, read_id, at)
        try:
            audit = parse(raw)
        except ParseError as exc:
            return self._failed(ctx, "parse", str(exc), len(raw))
        valid = audit.complete and audit.crc is not CrcStatus.MISMATCH
        events: list[m.Event] = [
            self._report(raw, ctx, audit, valid=valid),
            m.AuditSummary(read_id, audit.to_json()),
        ]
        state = {LAST_ACQUIRED: _stamp(at)}
        change = None
        if valid:
            bus = self._bus_vends() if ctx.bus_vends is None else ctx.bus_vends
            change = self._changes(audit, ctx, bus, events)
            state |= {
                BASELINE_BUS: json.dumps({str(n): c for n, c in bus.items()}).encode(),
                BASELINE: raw,
                BASELINE_ID: read_id.encode(),
                BASELINE_AT: _stamp(at),
                LAST_REPORT: _stamp(at),
                **audit_state(self.journal, audit, change, at, self.zone),
            }
        outcome = ReadOutcome(
            read_id, at, True, valid, audit=audit, delta=change, size=len(raw), file=file, raw=raw
        )
        self._commit(events, state, outcome)
        log.info(
            "dex_report",
            read_id=read_id,
            valid=valid,
            crc=audit.crc.value,
            complete=audit.complete,
            bytes=len(raw),
            baseline_reset=None if change is None else change.baseline_reset,
        )
        return outcome

    def _bus_vends(self) -> dict[int, int]:
        return dict(self.journal.load_stock().paid_vends)

    def _changes(
        self, audit: Audit, ctx: ReadContext, bus: Mapping[int, int], events: list[m.Event]
    ) -> AuditDelta | None:
        read_id = ctx.read_id
        baseline_raw = self.journal.state(BASELINE)
        if baseline_raw is None:
            return None
        try:
            baseline = parse(baseline_raw)
        except ParseError:
            return None
        change = delta(baseline, audit)
        baseline_id = (self.journal.state(BASELINE_ID) or b"").decode() or None
        since = _unstamp(self.journal.state(BASELINE_AT))
        events.append(m.AuditDelta(read_id, baseline_id, change.to_json()))
        events.append(self._sales(ctx, since, audit, change))
        stored_bus = self.journal.state(BASELINE_BUS)
        if since is not None and stored_bus is not None and not change.baseline_reset:
            before = {int(n): int(c) for n, c in json.loads(stored_bus).items()}
            for selection, audit_vends, bus_vends in reconcile(change, before, bus):
                log.warning(
                    "stock_reconcile",
                    read_id=read_id,
                    selection=selection,
                    audit_vends=audit_vends,
                    bus_vends=bus_vends,
                )
                events.append(
                    m.StockReconcile(
                        read_id, baseline_id, selection, since, ctx.at, audit_vends, bus_vends
                    )
                )
        for event in change.new_events:
            events.append(
                m.MachineEvent(
                    read_id,
                    "evadts",
                    event.code,
                    event.date,
                    event.time,
                    event.duration,
                    None,
                    None,
                )
            )
        for increase in change.event_increases:
            events.append(
                m.MachineEvent(
                    read_id,
                    "evadts",
                    increase.code,
                    None,
                    None,
                    None,
                    increase.increase,
                    increase.active,
                )
            )
        return change

    def _sales(
        self, ctx: ReadContext, since: float | None, audit: Audit, change: AuditDelta
    ) -> m.SalesReport:
        """Seed 002's per-slot sales: what each selection sold between the two reads."""
        products = {p.selection: p for p in audit.products if p.selection is not None}
        stock = self.journal.load_stock()
        slots: list[Mapping[str, object]] = []
        for selection in change.selections:
            product = products.get(selection.selection)
            number = selection.selection
            counted = slot_stock(stock, int(number)) if number.isdecimal() else {}
            price = None if product is None else product.price
            slots.append(
                {
                    "slotId": number,
                    "product": (product.product_id if product else None) or counted.get("product"),
                    "price": counted.get("price") if price is None else price,
                    "itemsLeft": counted.get("itemsLeft"),
                    "salesSinceRefill": counted.get("salesSinceRefill"),
                    "capacity": counted.get("capacity"),
                    "sales": selection.change.vends,
                    "cash": selection.change.value,
                }
            )
        numeric = audit.currency.numeric
        currency = (
            int(numeric)
            if numeric is not None and numeric.isascii() and numeric.isdecimal()
            else None
        )
        return m.SalesReport(ctx.read_id, since, ctx.at, currency, change.decimals, slots)

    def _report(self, raw: bytes, ctx: ReadContext, audit: Audit, *, valid: bool) -> m.AuditReport:
        encoding = self.config.upload_encoding
        if self.config.upload_base64:
            data = base64.b64encode(raw.decode("latin-1").encode(encoding, "replace")).decode()
        else:
            data = raw.decode(encoding, "replace")
        return m.AuditReport(
            ctx.read_id,
            ctx.at,
            ctx.trigger,
            self.config.evadts_port,
            encoding,
            self.config.upload_base64,
            data,
            len(raw),
            audit.complete,
            audit.crc.value,
            valid,
        )

    def _failed(self, ctx: ReadContext, step: str, reason: str, received: int) -> ReadOutcome:
        log.warning(
            "dex_read_failed", read_id=ctx.read_id, step=step, reason=reason, received=received
        )
        failed = m.AuditFailed(ctx.read_id, ctx.at, ctx.trigger, step, reason, received)
        outcome = ReadOutcome(ctx.read_id, ctx.at, False, size=received, step=step, reason=reason)
        self._commit([failed], {}, outcome)
        return outcome

    def _commit(self, events: list[m.Event], state: dict[str, bytes], outcome: ReadOutcome) -> None:
        topics, at = self.topics, self.clock()
        requests: list[RequestWrite] = []
        if self.watcher is not None:
            answers, requests = self.watcher.read_finishing(outcome)
            events = [*events, *answers]
        messages = [] if topics is None else [event_message(e, topics.events, at) for e in events]
        self.journal.commit([], messages, state=state, requests=requests, durable=True)
        self.last_read = outcome
        if self.watcher is not None:
            self.watcher.read_committed(outcome.read_id)
        for listener in self.listeners:
            listener(outcome)
        if messages:
            self.on_outbox()
        if state:
            self.on_state()

    def timestamps(self) -> dict[str, float | None]:
        """``last_report`` (valid) and ``last_acquired_report`` (any), as seed 003 names them."""
        return {
            "last_report": _unstamp(self.journal.state(LAST_REPORT)),
            "last_acquired_report": _unstamp(self.journal.state(LAST_ACQUIRED)),
        }


def reconcile(
    change: AuditDelta, before: Mapping[int, int], after: Mapping[int, int]
) -> list[tuple[int, int | None, int]]:
    """``(selection, audit vends, bus vends)`` for each selection whose counts differ.

    The audit's selection (PA101) is the MDB item number in decimal; one that is not, or that
    has no PA2 count, is not compared. A selection the bus sold but the audit does not list
    differs with ``None``. An audit that lists no selection at all is not compared.
    """
    listed = {
        int(s.selection): s.change.vends for s in change.selections if s.selection.isdecimal()
    }
    if not listed:
        return []
    sold = {n: c - before.get(n, 0) for n, c in after.items() if c != before.get(n, 0)}
    out = []
    for selection in sorted(set(listed) | set(sold)):
        audit_vends = listed.get(selection)
        if selection in listed and audit_vends is None:
            continue
        bus_vends = sold.get(selection, 0)
        if audit_vends != bus_vends:
            out.append((selection, audit_vends, bus_vends))
    return out


def _stamp(at: float) -> bytes:
    return repr(at).encode()


def _unstamp(value: bytes | None) -> float | None:
    return None if value is None else float(value.decode())
