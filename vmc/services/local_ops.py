"""Operations asked for on the machine (``vmctl``): stock operations, applied by the stock's
one writer, and DEX reads, made by the running vmcd's reporter.

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

A DEX read (``vmctl dex read``) is the contract's ``data.request`` for a report: vmcd's reply in
the inbox row means it took it (its request id is ``local:`` and the operation id), and
:func:`follow` then watches its ``data_requests`` row for the read's progress and result (see
:mod:`vmc.services.data_service`): one read for the technician and the cloud, and one owner of
the DEX port. Only a running vmcd serves it; vmctl reads the port itself when none runs.

This module is the inbox's one interface: :class:`LocalOps` serves, :func:`request` asks and
:func:`follow` waits for a read. A control socket (issue 10) replaces them without touching the
stock or reporter code.
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
from vmc.services.data_service import DataService
from vmc.services.stock_book import StockBook
from vmc.state_lock import try_lock

log = structlog.get_logger("vmc.local_ops")

BATCH = 8
"""Operations answered per tick at most: a burst never holds the event loop for long."""
POLL_S = 0.05
LOCAL_COMMANDS = (m.SetPlanogram, m.Refill, m.TakeInventory, m.RestockToPar, m.DataRequest)


class NoAnswerError(VmcError):
    """vmcd did not take the operation in time; it was withdrawn and nothing changed."""


class VmcdStoppedError(NoAnswerError):
    """vmcd stopped before the read it took had finished (it answers it failed at its start)."""


class LocalOps:
    """Answers the operations waiting in the inbox, as the stock's writer."""

    def __init__(self, journal: Journal, stock: StockBook, data: DataService | None = None) -> None:
        self.journal = journal
        self.stock = stock
        self.data = data

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
            if not isinstance(cmd, LOCAL_COMMANDS) or cmd.id != op_id:
                raise codec.CommandError(m.ErrorCode.UNKNOWN_OP, "not a local operation")
            if isinstance(cmd, m.DataRequest) and self.data is None:
                raise codec.CommandError(m.ErrorCode.NO_DEX_PORT, "vmcd does not run to read")
        except codec.CommandError as exc:
            log.warning("local_op_refused", op_id=op_id, code=exc.code.value, error=exc.message)
            reply = m.Reply(op_id, False, exc.code, exc.message)
            answer = (op_id, codec.encode_reply(reply, at=self.stock.clock()))
            self.journal.commit([], [], local_reply=answer, durable=True)
            return
        log.info("local_op", op_id=op_id, op=type(cmd).__name__.lower())
        if isinstance(cmd, m.DataRequest):
            assert self.data is not None
            self.data.handle_command(cmd, local=True)
        else:
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


@dataclass(frozen=True, slots=True)
class Progress:
    received: int
    blocks: int


def follow(
    state_dir: Path,
    journal: Journal,
    request_id: str,
    on_progress: Callable[[Progress], None],
) -> dict[str, Any]:
    """The result of a data request vmcd took (its ``data.result`` fields and ``file``, the raw
    audit kept by vmcd), telling each progress as vmcd records it (at most once a second).

    Raises :class:`VmcdStoppedError` when vmcd stops first: it answers the request at its next
    start (failed, step ``restart``), nobody waits for that.
    """
    shown: Progress | None = None
    while True:
        row = journal.data_request(request_id)
        if row is not None and row.done:
            assert row.result is not None  # a local request's result is always kept
            result: dict[str, Any] = cbor2.loads(row.result)
            return result
        if row is not None and Progress(row.received, row.blocks) != shown:
            shown = Progress(row.received, row.blocks)
            on_progress(shown)
        lock = try_lock(state_dir)
        if lock is not None:
            lock.release()
            row = journal.data_request(request_id)
            if row is None or not row.done:
                raise VmcdStoppedError("vmcd stopped before the read finished")
            continue
        time.sleep(POLL_S)
