"""Stock operations asked for on the machine (``vmctl``), applied by the stock's one writer.

vmcd keeps the stock in memory and is the only writer of the journal's stock while it runs: a
``vmctl`` writing behind its back would be overwritten by vmcd's next commit. vmcd holds
``<state_dir>/vmcd.lock`` (:mod:`vmc.state_lock`) for its lifetime, and :func:`request`:

- takes that lock when it can: vmcd is not running, so this vmctl is the writer and applies
  the operation itself with :class:`LocalOps`, holding the lock while it does;
- otherwise leaves the operation in the journal's inbox (``local_inbox``) and waits, bounded,
  for vmcd, which looks at the inbox every tick (one indexed query) and writes the reply in the
  same commit as the operation. At the deadline the operation is withdrawn, atomically against
  vmcd taking it, so "no answer" always means "nothing changed". If vmcd stops meanwhile, the
  waiting vmctl gets the lock and applies the operation itself.

An operation is the contract's command (CBOR, as the cloud sends it), decoded and checked by
:func:`vmc.cloud.codec.decode_command` and applied by :meth:`StockBook.handle_command`: the same
validation and the same code as ``planogram.set`` and ``stock.*`` from the cloud. Its id makes a
retried vmctl a duplicate, answered with the first reply and changing nothing again. The reply
never goes to the cloud; the stock events do, whenever a cloud is configured (queued in the
outbox until vmcd sends them).

This module is the inbox's one interface: :class:`LocalOps` serves and :func:`request` asks.
A control socket (issue 10) replaces the two without touching the stock code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import structlog

from protocols.errors import VmcError
from vmc.cloud import codec
from vmc.cloud import messages as m
from vmc.cloud.topics import Topics
from vmc.journal import Journal, WithdrawnError
from vmc.services.stock_book import StockBook
from vmc.state_lock import try_lock

log = structlog.get_logger("vmc.local_ops")

BATCH = 8
"""Operations answered per tick at most: a burst never holds the event loop for long."""
POLL_S = 0.05
STOCK_COMMANDS = (m.SetPlanogram, m.Refill, m.TakeInventory, m.RestockToPar)


class NoAnswerError(VmcError):
    """vmcd did not take the operation in time; it was withdrawn and nothing changed."""


class LocalOps:
    """Answers the operations waiting in the inbox, as the stock's writer."""

    def __init__(self, journal: Journal, stock: StockBook) -> None:
        self.journal = journal
        self.stock = stock

    def serve(self) -> None:
        """Apply or refuse what waits (nothing waiting costs one indexed query)."""
        for op_id, payload in self.journal.local_waiting(BATCH):
            try:
                self._answer(op_id, payload)
            except WithdrawnError:
                log.info("local_op_withdrawn", op_id=op_id)

    def _answer(self, op_id: str, payload: bytes) -> None:
        try:
            cmd = codec.decode_command(payload)
            if not isinstance(cmd, STOCK_COMMANDS) or cmd.id != op_id:
                raise codec.CommandError(m.ErrorCode.UNKNOWN_OP, "not a local stock operation")
        except codec.CommandError as exc:
            log.warning("local_op_refused", op_id=op_id, code=exc.code.value, error=exc.message)
            reply = m.Reply(op_id, False, exc.code, exc.message)
            answer = (op_id, codec.encode_reply(reply, at=self.stock.clock()))
            self.journal.commit([], [], local_reply=answer, durable=True)
            return
        log.info("local_op", op_id=op_id, op=type(cmd).__name__.lower())
        self.stock.handle_command(cmd, local=True)


@dataclass(frozen=True, slots=True)
class Answer:
    """The reply to a local operation; ``repeated`` when its id had been asked before."""

    reply: dict[str, Any]
    repeated: bool


def request(
    state_dir: Path,
    journal: Journal,
    command: dict[str, Any],
    *,
    topics: Callable[[], Topics | None],
    wait_s: float,
) -> Answer:
    """Have ``command`` (a contract command map with ``id``) applied, by vmcd or by ourselves.

    ``topics`` (the cloud's, or None without one) is asked only when we apply it ourselves.
    Raises :class:`NoAnswerError` after ``wait_s`` without an answer, the operation withdrawn.
    """
    op_id = str(command["id"])
    command = {**command, "expires": time.time() + wait_s}
    fresh = journal.local_submit(op_id, codec.encode_map(command))
    deadline = time.monotonic() + wait_s
    try:
        while (reply := journal.local_reply(op_id)) is None:
            lock = try_lock(state_dir)
            if lock is not None:
                with lock:  # vmcd is not running: we are the writer until we let go
                    LocalOps(journal, StockBook(journal, topics())).serve()
                continue
            if time.monotonic() >= deadline and journal.local_withdraw(op_id):
                raise NoAnswerError(
                    f"vmcd did not take operation {op_id} within {wait_s:g} s; nothing changed"
                )
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        journal.local_withdraw(op_id)  # unless vmcd has it already: then it stands
        raise
    return Answer(cbor2.loads(reply), repeated=not fresh)
