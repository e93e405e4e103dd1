"""Operations asked for on the machine (``vmctl``): stock operations, applied by the stock's
one writer, and DEX reads, made by the running vmcd's reporter.

vmcd keeps the stock in memory and is the only writer of the journal's stock while it runs: a
``vmctl`` writing behind its back would be overwritten by vmcd's next commit. So:

- while vmcd runs, ``vmctl`` sends the operation over the control socket
  (:mod:`vmc.control`) and vmcd applies it with its own :class:`LocalOps`, at once;
- while it does not, ``vmctl`` takes ``<state_dir>/vmcd.lock`` (:mod:`vmc.state_lock`), so a
  vmcd starting meanwhile waits, and applies the operation with a :class:`LocalOps` of its
  own over the journal.

An operation is the contract's command (as the cloud sends it, with the ``vmctl`` id),
decoded and checked by :func:`vmc.cloud.codec.decode_command` and applied by
:meth:`StockBook.handle_command`: the same validation and the same code as ``planogram.set``
and ``stock.*`` from the cloud. Its reply is kept under its id (``local_replies``) in the same
commit as the operation, so asking again with the id is answered with the first reply and
changes nothing. The reply never goes to the cloud; the stock events do, whenever a cloud is
configured (queued in the outbox until vmcd sends them).

A DEX read (``vmctl dex read``) is the contract's ``data.request`` for a report: only a running
vmcd with a DEX port makes it (its request id is ``local:`` and the operation id); the control
socket's ``dex.read`` then follows its ``data_requests`` row (see
:mod:`vmc.services.data_service`): one read for the technician and the cloud, and one owner of
the DEX port.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2
import structlog

from vmc.cloud import codec
from vmc.cloud import messages as m
from vmc.journal import Journal
from vmc.services.data_service import DataService
from vmc.services.stock_book import StockBook

log = structlog.get_logger("vmc.local_ops")

LOCAL_COMMANDS = (m.SetPlanogram, m.Refill, m.TakeInventory, m.RestockToPar, m.DataRequest)


@dataclass(frozen=True, slots=True)
class Answer:
    """The reply to a local operation (the contract's reply fields: ``ok``, ``code``,
    ``message``, ``result``); ``repeated`` when its id had been answered before."""

    reply: dict[str, Any]
    repeated: bool

    def to_json(self) -> dict[str, Any]:
        return {"reply": self.reply, "repeated": self.repeated}


class LocalOps:
    """Applies or refuses ``vmctl``'s operations, as the stock's writer."""

    def __init__(self, journal: Journal, stock: StockBook, data: DataService | None = None) -> None:
        self.journal = journal
        self.stock = stock
        self.data = data

    def apply(self, command: Mapping[str, Any]) -> Answer:
        """Apply ``command`` (a contract command map with ``id`` and ``op``), once per id."""
        try:
            cmd = codec.decode_command(codec.encode_map(dict(command)))
            if not isinstance(cmd, LOCAL_COMMANDS):
                raise codec.CommandError(m.ErrorCode.UNKNOWN_OP, "not a local operation", cmd.id)
        except codec.CommandError as exc:  # refused before anything happened: nothing to keep
            log.warning(
                "local_op_refused", op_id=exc.command_id, code=exc.code.value, error=exc.message
            )
            return Answer(_fields(exc.reply()), repeated=False)
        stored = self.journal.local_reply(cmd.id)
        if stored is not None:
            log.info("local_op_repeated", op_id=cmd.id)
            return Answer(cbor2.loads(stored), repeated=True)
        log.info("local_op", op_id=cmd.id, op=type(cmd).__name__.lower())
        if isinstance(cmd, m.DataRequest):
            if self.data is None:
                refusal = m.Reply(cmd.id, False, m.ErrorCode.NO_DEX_PORT, "vmcd reads no DEX port")
                return Answer(_fields(refusal), repeated=False)
            return Answer(_fields(self.data.handle_command(cmd, local=True)), repeated=False)
        return Answer(_fields(self.stock.handle_command(cmd, local=True)), repeated=False)


def _fields(reply: m.Reply) -> dict[str, Any]:
    """A reply as the stored one reads back, so a first and a repeated answer look alike."""
    fields: dict[str, Any] = cbor2.loads(codec.encode_reply(reply, at=0.0))
    return fields
