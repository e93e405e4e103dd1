"""Glue between the stock core, the journal and the cloud outbox.

Order of work for every operation, as for a vend transaction: the core decides
(:meth:`vmc.stock.Stock.apply`), the journal commits the new levels, their history, the
operation id, the outbox events and the command's reply (and a restock's cash collection,
whose report the :class:`~vmc.services.collector.Collector` sends once its audit is read) in
ONE fsynced commit, and only then does the state in memory move and the outbox drain wake. A
refused operation changes nothing and is answered with a code; a repeated command id never
gets here (the command table answers it with the first reply). The stock a vend takes is
prepared by :meth:`StockBook.vend_writes` and written in the same commit as the transaction's
vend result or the cash sale; a vend id counted before (``stock_ops``) is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from vmc.cloud import messages as m
from vmc.cloud.codec import CommandError
from vmc.cloud.outbox import event_message, new_id, reply_message
from vmc.cloud.topics import Topics
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
        topics: Topics,
        collector: Collector,
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

        A cashless success (any vend type: the motor turned) and a cash sale take stock; a vend
        id counted before is skipped. Nothing moves in memory until :meth:`committed`.
        """
        base = self.stock
        writes: list[StockWrite] = []
        messages: list[NewMessage] = []
        for event in events:
            if isinstance(event, m.TxnVend) and event.result == "success":
                op = Vend(event.txn_id, at, event.selection, event.vend_type)
            elif isinstance(event, m.Sale):
                op = Vend(new_id(), at, event.selection, m.VendType.PAID)
            else:
                continue
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

    def handle_command(self, cmd: m.StockCommand) -> None:
        now = self.clock()
        try:
            refusal = m.expired_reply(cmd, now)
            if refusal is not None:
                raise CommandError(m.ErrorCode.EXPIRED, refusal.message)
            op = self._operation(cmd, now)
            self._commit(op, cmd)
        except CommandError as exc:
            log.warning("stock_command_refused", command_id=cmd.id, code=exc.code.value)
            reply = m.Reply(cmd.id, False, exc.code, exc.message)
            message, payload = reply_message(reply, self.topics.replies, now)
            self.journal.commit([], [message], command=(cmd.id, payload), durable=True)
            self.on_outbox()

    def _operation(self, cmd: m.StockCommand, now: float) -> Operation:
        if isinstance(cmd, m.SetPlanogram):
            try:
                return ChangePlanogram(cmd.id, now, Planogram.from_mapping(cmd.document))
            except PlanogramError as exc:
                error = exc.command_error(cmd.id)
                raise CommandError(error.code, f"planogram.{error.message}") from None
        if self.stock.planogram is None:
            raise CommandError(
                m.ErrorCode.NO_PLANOGRAM, "no planogram: push one with planogram.set"
            )
        if isinstance(cmd, m.RestockToPar):
            return Restock(cmd.id, now)
        pairs = tuple(
            (self._key(line, index), line.quantity) for index, line in enumerate(cmd.lines)
        )
        if isinstance(cmd, m.Refill):
            return Adjust(cmd.id, now, pairs)
        return Inventory(cmd.id, now, pairs)

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
        messages = [
            event_message(_event(op.op_id, e), self.topics.events, op.at) for e in applied.events
        ]
        return StockWrite(op.op_id, op.at, base, applied), messages

    def _commit(self, op: Operation, cmd: m.StockCommand) -> None:
        write, messages = self._prepare(self.stock, op)
        state = write.applied.state
        result: dict[str, str | int | float | None] = {
            "planogram_version": None if state.planogram is None else state.planogram.version,
            "need_loading": state.need_loading,
            "changed": sum(isinstance(e, LevelChanged) for e in write.applied.events),
        }
        collections = []
        if isinstance(cmd, m.RestockToPar):
            if cmd.collect:
                collections.append(self.collector.prepare(cmd.id, op.at, restock=True))
            result["collection_id"] = cmd.id if cmd.collect else None
        message, payload = reply_message(
            m.Reply(cmd.id, True, result=result), self.topics.replies, op.at
        )
        messages.append(message)
        self.journal.commit(
            [],
            messages,
            command=(cmd.id, payload),
            stock=[write],
            collections=collections,
            durable=True,
        )
        self.on_outbox()
        self.committed([write])
        if collections:
            self.collector.committed()

    def _log(self, write: StockWrite) -> None:
        log.info(
            "stock_applied",
            op_id=write.op_id,
            events=len(write.applied.events),
            need_loading=write.applied.state.need_loading,
        )


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
