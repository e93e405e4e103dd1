"""Glue between the stock core, the journal and the cloud outbox.

Order of work for every operation, as for a vend transaction: the core decides
(:meth:`vmc.stock.Stock.apply`), the journal commits the new levels, their history, the
operation id, the outbox events and the command's reply (and a restock's cash collection,
whose report the :class:`~vmc.services.collector.Collector` sends once its audit is read) in
ONE fsynced commit, and only then does the state in memory move and the outbox drain wake. A
refused operation changes nothing and is answered with a code; a repeated command id never
gets here (the command table, or the local replies for a ``vmctl`` operation, answers it with
the first reply). The stock a vend takes is prepared by :meth:`StockBook.vend_writes` (or
:meth:`StockBook.take`) and written in the same commit as the transaction's vend result, the
cash sale or the local policy's record; a vend id counted before (``stock_ops``) is skipped.

Without a cloud (``topics`` None) nothing is queued for one: no consumer would ever drain it,
and the journal's stock history records every change anyway. Cash collections are reported to
the cloud, so they need one too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from vmc.cloud import messages as m
from vmc.cloud.codec import CommandError, encode_reply
from vmc.cloud.outbox import event_message, new_id, reply_message
from vmc.cloud.topics import Topics
from vmc.collection import Collection
from vmc.journal import Journal, NewMessage, StockWrite
from vmc.planogram import Planogram, PlanogramError
from vmc.services.collector import Collector
from vmc.stock import (
    Adjust,
    AlarmChanged,
    ChangePlanogram,
    Discrepancy,
    Event,
    IngredientKey,
    Inventory,
    LevelChanged,
    Operation,
    PlanogramChanged,
    Restock,
    SlotKey,
    Stock,
    StockError,
    StockKey,
    Vend,
)

log = structlog.get_logger("vmc.stock")


class StockBook:
    def __init__(
        self,
        journal: Journal,
        topics: Topics | None,
        collector: Collector | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_outbox: Callable[[], None] = lambda: None,
        on_state: Callable[[], None] = lambda: None,
    ) -> None:
        self.journal = journal
        self.topics = topics
        self.collector = collector
        self.clock = clock
        self.on_outbox = on_outbox
        self.on_state = on_state
        self.stock = journal.load_stock()

    def state(self) -> dict[str, Any]:
        """The retained ``state``'s stock fields."""
        planogram = self.stock.planogram
        return {
            "planogram_version": None if planogram is None else planogram.version,
            "need_loading": self.stock.need_loading,
            "last_loading": self.stock.last_loading_at,
            "last_sale": self.stock.last_sale_at,
        }

    def vend_writes(
        self, events: Iterable[m.Event], at: float
    ) -> tuple[list[StockWrite], list[NewMessage]]:
        """The stock each product that left the machine takes, for the transaction's commit.

        A cashless success (any vend type: the motor turned) and a cash sale take stock.
        """
        vends: list[Vend] = []
        for event in events:
            if isinstance(event, m.TxnVend) and event.result == "success":
                vends.append(Vend(event.txn_id, at, event.selection, event.vend_type))
            elif isinstance(event, m.Sale):
                vends.append(Vend(new_id(), at, event.selection, m.VendType.PAID))
        return self.take(vends)

    def take(self, vends: Iterable[Vend]) -> tuple[list[StockWrite], list[NewMessage]]:
        """The stock ``vends`` take, for the commit of whatever booked them; a vend id counted
        before is skipped. Nothing moves in memory until :meth:`committed`."""
        base = self.stock
        writes: list[StockWrite] = []
        messages: list[NewMessage] = []
        for op in vends:
            if self.journal.stock_applied(op.op_id):
                continue
            write, more = self._prepare(base, op)
            writes.append(write)
            messages.extend(more)
            base = write.applied.state
        return writes, messages

    def committed(self, writes: Sequence[StockWrite]) -> None:
        """The journal holds ``writes``: the state in memory follows."""
        for write in writes:
            self._log(write)
        if writes:
            self.stock = writes[-1].applied.state
            self.on_state()

    def handle_command(self, cmd: m.StockCommand, *, local: bool = False) -> m.Reply:
        """Apply a stock command, or refuse it, and store its reply in the same commit.

        A cloud command's reply goes to the command table and the outbox; a ``local`` one's
        (from ``vmctl``) is kept under its id only, never sent to the cloud, and its result
        also lists the levels it changed. Its stock events go to the cloud either way, when
        there is one. Returns the reply.
        """
        now = self.clock()
        writes: list[StockWrite] = []
        messages: list[NewMessage] = []
        collections: list[Collection] = []
        try:
            refusal = m.expired_reply(cmd, now)
            if refusal is not None:
                raise CommandError(m.ErrorCode.EXPIRED, refusal.message)
            op_id = m.LOCAL_PREFIX + cmd.id if local else cmd.id
            if self.journal.stock_applied(op_id):
                # The command table forgets ids after 7 days, the stock's op ids stay for the
                # retention: an id reused in between must not apply twice.
                raise CommandError(
                    m.ErrorCode.BAD_FIELD, f"id: operation {cmd.id!r} was applied before"
                )
            write, messages = self._prepare(self.stock, self._operation(cmd, op_id, now))
            result = _result(write, detailed=local)
            if isinstance(cmd, m.RestockToPar):
                collections = self._collections(cmd, op_id, now)
                result["collection_id"] = op_id if collections else None
            writes.append(write)
            reply = m.Reply(cmd.id, True, result=result)
        except CommandError as exc:
            log.warning(
                "stock_command_refused", command_id=cmd.id, code=exc.code.value, local=local
            )
            reply = m.Reply(cmd.id, False, exc.code, exc.message)
        command: tuple[str, bytes] | None = None
        local_reply: tuple[str, bytes] | None = None
        if local:
            local_reply = (cmd.id, encode_reply(reply, at=now))
        else:
            assert self.topics is not None  # a cloud command came through the cloud
            message, payload = reply_message(reply, self.topics.replies, now)
            messages.append(message)
            command = (cmd.id, payload)
        self.journal.commit(
            [],
            messages,
            command=command,
            local_reply=local_reply,
            stock=writes,
            collections=collections,
            durable=True,
        )
        self.on_outbox()
        self.committed(writes)
        if collections and self.collector is not None:
            self.collector.committed()
        return reply

    def _collections(self, cmd: m.RestockToPar, op_id: str, now: float) -> list[Collection]:
        """The cash collection a restock with ``collect`` makes (seed 004 ``restock``)."""
        if not cmd.collect:
            return []
        if self.collector is None:
            raise CommandError(
                m.ErrorCode.BAD_FIELD,
                "collect: a cash collection is reported to a cloud: none here",
            )
        return [self.collector.prepare(op_id, now, restock=True)]

    def _operation(self, cmd: m.StockCommand, op_id: str, now: float) -> Operation:
        if isinstance(cmd, m.SetPlanogram):
            try:
                return ChangePlanogram(op_id, now, Planogram.from_mapping(cmd.document))
            except PlanogramError as exc:
                error = exc.command_error(cmd.id)
                raise CommandError(error.code, f"planogram.{error.message}") from None
        if self.stock.planogram is None:
            raise CommandError(
                m.ErrorCode.NO_PLANOGRAM, "no planogram: push one with planogram.set"
            )
        if isinstance(cmd, m.RestockToPar):
            return Restock(op_id, now)
        pairs = tuple(
            (self._key(line, index), line.quantity) for index, line in enumerate(cmd.lines)
        )
        if isinstance(cmd, m.Refill):
            return Adjust(op_id, now, pairs)
        return Inventory(op_id, now, pairs)

    def _key(self, line: m.StockLine, index: int) -> StockKey:
        key: StockKey = (
            SlotKey(line.selection)
            if line.selection is not None
            else IngredientKey(line.ingredient or "")
        )
        if key not in self.stock.levels:
            what = "selection" if isinstance(key, SlotKey) else "ingredient"
            raise CommandError(
                m.ErrorCode.UNKNOWN_KEY,
                f"lines[{index}].{what}: not counted by planogram {self._version()}"
                " (not in it, or a recipe's selection: load its ingredients)",
            )
        return key

    def _version(self) -> int | None:
        return None if self.stock.planogram is None else self.stock.planogram.version

    def _prepare(self, base: Stock, op: Operation) -> tuple[StockWrite, list[NewMessage]]:
        try:
            applied = base.apply(op)
        except StockError as exc:
            raise CommandError(m.ErrorCode.BAD_AMOUNT, str(exc)) from None
        topics = self.topics
        messages = (
            []
            if topics is None
            else [event_message(_event(op.op_id, e), topics.events, op.at) for e in applied.events]
        )
        return StockWrite(op.op_id, op.at, base, applied), messages

    def _log(self, write: StockWrite) -> None:
        log.info(
            "stock_applied",
            op_id=write.op_id,
            events=len(write.applied.events),
            need_loading=write.applied.state.need_loading,
        )


def _result(write: StockWrite, *, detailed: bool) -> dict[str, object]:
    """A stock reply's result; ``detailed`` adds each level change (``vmctl`` prints them)."""
    state = write.applied.state
    changes = [e for e in write.applied.events if isinstance(e, LevelChanged)]
    result: dict[str, object] = {
        "planogram_version": None if state.planogram is None else state.planogram.version,
        "need_loading": state.need_loading,
        "changed": len(changes),
    }
    if detailed:
        result["changes"] = [
            {
                "selection": selection,
                "ingredient": ingredient,
                "before": e.before,
                "after": e.after,
                "reason": e.reason.value,
            }
            for e in changes
            for selection, ingredient in [_key_fields(e.key)]
        ]
    return result


def _key_fields(key: StockKey | None) -> tuple[int | None, str | None]:
    if isinstance(key, SlotKey):
        return key.number, None
    if isinstance(key, IngredientKey):
        return None, key.id
    return None, None


def _event(op_id: str, event: Event) -> m.Event:
    """A core event as the contract's message."""
    if isinstance(event, LevelChanged):
        return m.StockLevel(op_id, *_key_fields(event.key), event.before, event.after, event.reason)
    if isinstance(event, AlarmChanged):
        return m.StockAlarm(op_id, *_key_fields(event.key), event.before, event.after, event.level)
    if isinstance(event, Discrepancy):
        _, ingredient = _key_fields(event.key)
        return m.StockDiscrepancy(op_id, event.kind, event.selection, ingredient, event.missing)
    assert isinstance(event, PlanogramChanged)
    return m.PlanogramChanged(op_id, event.before, event.version)
