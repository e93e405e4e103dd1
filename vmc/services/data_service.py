"""Data requests and ``status.check``: the glue between the request book, the journal, the
reporter and the cloud outbox.

Order of work, as everywhere: the book decides (:class:`vmc.data_request.RequestBook`), the
journal commits the request's row with its reply (and, for ``config`` alone, its completion) in
one fsynced commit, and only then does the book in memory move, the outbox wake and the reporter
get asked for a read. A read's progress is committed at most once a second
(:data:`vmc.data_request.PROGRESS_EVERY_S`); its completions go into the read's own commit
(:meth:`read_finishing`), so a request is answered exactly when its audit is reported, and one
still pending at start (the daemon died during its read) is answered failed at step
``restart`` by :meth:`recover`.

A request comes from the cloud (``data.request``: its reply and its ``data.progress`` /
``data.result`` events go to the cloud) or from ``vmctl dex read`` through the control socket
(:mod:`vmc.services.local_ops`: its reply is kept under its id, its progress and result go
into its ``data_requests`` row, which the socket's ``dex.read`` follows; nothing to the cloud;
the read's audit events go to the cloud as any read's do). Both kinds share the book, so a
technician's read and the cloud's are one read.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from vmc.cloud import messages as m
from vmc.cloud.codec import encode_map, encode_reply
from vmc.cloud.outbox import event_message, reply_message
from vmc.cloud.topics import Topics
from vmc.config import Config, masked
from vmc.data_request import (
    RESTART_STEP,
    Machine,
    Request,
    RequestBook,
    RequestError,
    busy_reasons,
)
from vmc.journal import Journal, NewMessage, RequestWrite
from vmc.planogram import Planogram

if TYPE_CHECKING:
    from vmc.services.reporter import ReadOutcome, Reporter

log = structlog.get_logger("vmc.data")

KEEP_S = 86400.0
"""How long a completed request's row stays (a waiting ``vmctl`` reads it within seconds)."""


def machine_config(config: Config, planogram: Planogram | None) -> dict[str, Any]:
    """A data request's ``config``: versions, the settings in force (secrets masked, as in the
    logs) and the planogram, as vmc holds them."""
    from importlib.metadata import version  # only when asked: see vmc.daemon's _Version

    return {
        "versions": {
            "vmc": version("vmc"),
            "contract": m.CONTRACT_VERSION,
            "python": platform.python_version(),
        },
        "settings": masked(config),
        "planogram": None if planogram is None else planogram.to_mapping(),
    }


class DataService:
    def __init__(
        self,
        journal: Journal,
        reporter: Reporter | None,
        describe: Callable[[], Mapping[str, object]],
        *,
        topics: Topics | None = None,
        clock: Callable[[], float] = time.time,
        on_outbox: Callable[[], None] = lambda: None,
    ) -> None:
        self.journal = journal
        self.reporter = reporter
        self.describe = describe
        self.topics = topics
        self.clock = clock
        self.on_outbox = on_outbox
        self.machine: Callable[[], Machine] | None = None
        self.book = RequestBook(dex=reporter is not None, pending=tuple(journal.pending_requests()))
        if reporter is not None:
            reporter.watcher = self

    def attach(
        self, topics: Topics, on_outbox: Callable[[], None], machine: Callable[[], Machine]
    ) -> None:
        """Serve the cloud from now on (the daemon wires this once the sync exists)."""
        self.topics = topics
        self.on_outbox = on_outbox
        self.machine = machine

    def recover(self) -> None:
        """Answer, failed at step ``restart``, what a stopped or crashed daemon left pending: a
        restart never resumes a read (the backend asks again if it still wants the report)."""
        book, settled = self.book.settle_all()
        if not settled:
            return
        error = {
            "step": RESTART_STEP,
            "reason": "vmcd restarted before the read finished",
            "received": 0,
        }
        events, writes = self._answers(settled, None, report=None, error=error)
        self._commit(events, requests=writes)
        self.book = book
        log.warning("data_requests_settled", requests=[r.request_id for r in settled])

    # --- commands --------------------------------------------------------------------------

    def handle_command(self, cmd: m.DataRequest | m.CheckStatus, *, local: bool = False) -> m.Reply:
        """Answer ``status.check`` or accept (or refuse) a data request, its reply in the same
        commit as its row; a ``local`` one's (``vmctl``) is kept under its id, not sent.
        Returns the reply."""
        now = self.clock()
        refusal = m.expired_reply(cmd, now)
        if isinstance(cmd, m.CheckStatus):
            reply = refusal or self._status(cmd)
            self._commit([], reply=reply, local=local)
            return reply
        if refusal is not None:
            self._commit([], reply=refusal, local=local)
            return refusal
        request_id = m.LOCAL_PREFIX + cmd.id if local else cmd.request_id
        try:
            accepted = self.book.request(
                request_id, report=cmd.report, config=cmd.config, local=local, now=now
            )
        except RequestError as exc:
            log.warning("data_request_refused", request_id=request_id, code=exc.code.value)
            refused = m.Reply(cmd.id, False, exc.code, exc.message)
            self._commit([], reply=refused, local=local)
            return refused
        request = accepted.request
        events: list[m.Event] = []
        writes = [RequestWrite(request)]
        if accepted.answered:
            events, writes = self._answers([request], None, report=None, error=None)
        reply = m.Reply(
            cmd.id,
            True,
            result={
                "request_id": request.request_id,
                "report": request.report,
                "config": request.config,
                "in_progress": accepted.joined,
                "read_id": request.read_id,
            },
        )
        self._commit(events, reply=reply, requests=writes, local=local)
        self.book = accepted.book
        log.info(
            "data_request",
            request_id=request.request_id,
            report=request.report,
            config=request.config,
            joined=accepted.joined,
            read_id=request.read_id,
        )
        if accepted.read_wanted and self.reporter is not None:
            self.reporter.request_read("local" if local else "request")
        return reply

    def _status(self, cmd: m.CheckStatus) -> m.Reply:
        assert self.machine is not None  # a cloud command came through the cloud
        reasons = busy_reasons(self.machine(), self.book)
        log.info("status_check", command_id=cmd.id, busy=[r["reason"] for r in reasons])
        return m.Reply(
            cmd.id, True, result={"status": "busy" if reasons else "idle", "reasons": reasons}
        )

    # --- the reporter's reads (ReadWatcher) ---------------------------------------------------

    def read_started(self, read_id: str) -> None:
        self.book = self.book.read_started(read_id, self.clock())

    def read_block(self, read_id: str, received: int) -> None:
        now = self.clock()
        book, due = self.book.block(read_id, received, now)
        if due:
            read = book.read
            assert read is not None
            waiting = book.attached(read_id)
            cloud = [r.request_id for r in waiting if not r.local]
            events: list[m.Event] = (
                [m.DataProgress(cloud, read_id, read.received, read.blocks)] if cloud else []
            )
            writes = [RequestWrite(r, read.received, read.blocks) for r in waiting]
            self._commit(events, requests=writes)
        self.book = book

    def read_finishing(self, outcome: ReadOutcome) -> tuple[list[m.Event], list[RequestWrite]]:
        waiting = self.book.attached(outcome.read_id)
        if not waiting:
            return [], []
        report = None
        error = None
        if outcome.ok:
            audit = outcome.audit
            assert audit is not None
            report = {
                "valid": outcome.valid,
                "complete": audit.complete,
                "crc": audit.crc.value,
                "size": outcome.size,
            }
        else:
            error = {"step": outcome.step, "reason": outcome.reason, "received": outcome.size}
        return self._answers(waiting, outcome, report=report, error=error)

    def read_committed(self, read_id: str) -> None:
        self.book, done = self.book.read_finished(read_id)
        if done:
            log.info(
                "data_requests_answered", read_id=read_id, requests=[r.request_id for r in done]
            )

    # --- helpers ------------------------------------------------------------------------------

    def _answers(
        self,
        requests: Sequence[Request],
        outcome: ReadOutcome | None,
        *,
        report: Mapping[str, object] | None,
        error: Mapping[str, object] | None,
    ) -> tuple[list[m.Event], list[RequestWrite]]:
        """Each request's completion: an event for the cloud's, a row for every one (with the
        result for ``vmctl``'s, and the raw audit's file for it to copy)."""
        config = self.describe() if any(r.config for r in requests) else None
        read = None if outcome is None else self.book.read
        received, blocks = (0, 0) if read is None else (read.received, read.blocks)
        events: list[m.Event] = []
        writes: list[RequestWrite] = []
        for request in requests:
            result = m.DataResult(
                request.request_id,
                error is None,
                None if outcome is None else outcome.read_id,
                report if request.report else None,
                config if request.config else None,
                error if request.report else None,
            )
            stored = None
            if request.local:
                file = None if outcome is None or outcome.file is None else str(outcome.file)
                stored = encode_map({**dataclasses.asdict(result), "file": file})
            else:
                events.append(result)
            writes.append(RequestWrite(request, received, blocks, done=True, result=stored))
        return events, writes

    def _commit(
        self,
        events: list[m.Event],
        *,
        reply: m.Reply | None = None,
        requests: Sequence[RequestWrite] = (),
        local: bool = False,
    ) -> None:
        now = self.clock()
        topics = self.topics
        messages: list[NewMessage] = (
            [] if topics is None else [event_message(e, topics.events, now) for e in events]
        )
        command = local_reply = None
        if reply is not None:
            command_id = reply.command_id
            assert command_id is not None  # a decoded command's
            if local:
                local_reply = (command_id, encode_reply(reply, at=now))
            else:
                assert topics is not None  # a cloud command came through the cloud
                message, payload = reply_message(reply, topics.replies, now)
                messages.append(message)
                command = (command_id, payload)
        # An event or a reply, once published, is a promise; a progress row alone is not.
        durable = bool(messages) or local_reply is not None or any(w.done for w in requests)
        self.journal.commit(
            [],
            messages,
            command=command,
            local_reply=local_reply,
            requests=requests,
            durable=durable,
        )
        if messages:
            self.on_outbox()
