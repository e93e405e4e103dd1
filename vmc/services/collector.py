"""Cash collections: journal them with their command, report them once their audit is read.

A collection (``cash.collect``, or ``stock.restock`` with ``collect``) is ONE fsynced commit
with the command's reply (and the restock's stock): the collection row holds its period, from
the previous collection to now. The ``collection.report`` follows from :meth:`Collector.run`,
a task of the daemon: for each collection not yet reported it reads the audit over the DEX
port (when one is configured; the reporter reports that read as any other, trigger
``collection``), adds up the journal's sales of the period and commits the event together with
the mark that the collection is reported, and with the read as the next collection's audit
baseline. A daemon killed between the two commits finds the collection unreported at start
and reports it then, with an audit read then: exactly one report per collection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from protocols.errors import ParseError
from protocols.evadts import parse
from protocols.evadts.records import Audit
from vmc.cloud import messages as m
from vmc.cloud.codec import CommandError
from vmc.cloud.outbox import event_message, reply_message
from vmc.cloud.topics import Topics
from vmc.collection import NO_DEX_PORT, AuditError, Collection, audit_part, audit_problem
from vmc.journal import Journal
from vmc.sales import totals
from vmc.transaction import Money

if TYPE_CHECKING:
    from vmc.services.reporter import Reporter

log = structlog.get_logger("vmc.collector")

AUDIT = "collection.audit"
AUDIT_ID = "collection.audit_id"
"""The audit of the last collection whose read succeeded (raw) and its read id."""
TRIGGER = "collection"


class Collector:
    def __init__(
        self,
        journal: Journal,
        topics: Topics,
        money: Money,
        reporter: Reporter | None,
        *,
        clock: Callable[[], float] = time.time,
        on_outbox: Callable[[], None] = lambda: None,
        on_state: Callable[[], None] = lambda: None,
    ) -> None:
        self.journal = journal
        self.topics = topics
        self.money = money
        self.reporter = reporter
        self.clock = clock
        self.on_outbox = on_outbox
        self.on_state = on_state
        self._wake = asyncio.Event()

    def state(self) -> dict[str, Any]:
        """The retained ``state``'s ``last_collection`` (seed 003)."""
        return {"last_collection": self.journal.last_collection()}

    def prepare(self, collection_id: str, at: float, *, restock: bool) -> Collection:
        """A new collection for the command's commit: its period starts at the last one.

        An id used before is refused: the command table forgets ids after 7 days, the
        collections keep theirs for the retention, and a reused one must not report again.
        """
        if self.journal.has_collection(collection_id):
            raise CommandError(
                m.ErrorCode.BAD_FIELD, f"id: collection {collection_id!r} was made before"
            )
        return Collection(collection_id, at, self.journal.last_collection(), restock)

    def committed(self) -> None:
        """A collection is in the journal: report it."""
        self._wake.set()
        self.on_state()

    def handle_command(self, cmd: m.CashCollect) -> None:
        """``cash.collect``: a collection without a restock, answered with its period."""
        now = self.clock()
        reply = m.expired_reply(cmd, now)
        collections = []
        if reply is None:
            try:
                collection = self.prepare(cmd.id, now, restock=False)
            except CommandError as exc:
                reply = m.Reply(cmd.id, False, exc.code, exc.message)
            else:
                collections.append(collection)
                result = {"collection_id": cmd.id, "since": collection.since, "until": now}
                reply = m.Reply(cmd.id, True, result=result)
        message, payload = reply_message(reply, self.topics.replies, now)
        self.journal.commit(
            [], [message], command=(cmd.id, payload), collections=collections, durable=True
        )
        log.info("cash_collect", command_id=cmd.id, ok=reply.ok)
        self.on_outbox()
        if collections:
            self.committed()

    async def run(self) -> None:
        """Report every collection not reported yet (those a restart left too), then wait."""
        while True:
            self._wake.clear()
            await self.report_pending()
            await self._wake.wait()

    async def report_pending(self) -> int:
        """Report the collections not reported yet, oldest first; how many."""
        pending = self.journal.pending_collections()
        for collection in pending:
            await self._report(collection)
        return len(pending)

    async def _report(self, collection: Collection) -> None:
        audit, error, baseline = await self._audit()
        since = collection.since
        rows = self.journal.sales(-float("inf") if since is None else since, collection.at)
        event = m.CollectionReport(
            collection.collection_id,
            collection.restock,
            since,
            collection.at,
            self.money.currency,
            self.money.decimals,
            totals(rows),
            audit,
            None if error is None else error.to_json(),
        )
        message = event_message(event, self.topics.events, self.clock())
        self.journal.commit(
            [],
            [message],
            collections=[dataclasses.replace(collection, reported=True)],
            state=baseline,
            durable=True,
        )
        log.info(
            "collection_report",
            collection_id=collection.collection_id,
            sales=len(rows),
            audit=None if audit is None else audit["read_id"],
            audit_error=None if error is None else f"{error.step}: {error.reason}",
        )
        self.on_outbox()

    async def _audit(self) -> tuple[dict[str, Any] | None, AuditError | None, dict[str, bytes]]:
        """A fresh audit's cash part, or why there is none; the state that makes it the next
        collection's baseline."""
        if self.reporter is None:
            return None, NO_DEX_PORT, {}
        outcome = await self.reporter.read(TRIGGER)
        if not outcome.ok or outcome.audit is None:
            return None, AuditError(outcome.read_id, outcome.step, outcome.reason), {}
        problem = audit_problem(outcome.read_id, outcome.audit)
        if problem is not None:
            return None, problem, {}
        part = audit_part(outcome.read_id, outcome.at, outcome.audit, self._baseline())
        return part, None, {AUDIT: outcome.raw, AUDIT_ID: outcome.read_id.encode()}

    def _baseline(self) -> tuple[str, Audit] | None:
        raw, read_id = self.journal.state(AUDIT), self.journal.state(AUDIT_ID)
        if raw is None or read_id is None:
            return None
        try:
            return read_id.decode(), parse(raw)
        except ParseError:
            return None
