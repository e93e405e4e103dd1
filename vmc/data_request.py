"""Data requests (seeds 003 ``report`` / ``config``, 004 ``dex``) and ``check_status``; sans-I/O.

Theory of operation. A request asks, under a request id, for ``report`` (an audit read now),
``config`` (what vmc holds of the machine's configuration) or both. ``config`` alone is answered
at once. ``report`` waits for a DEX read:

- the read running when it arrives: it *joins* that read (a report "now" is the one coming in);
- else the next read to start, which the caller asks the reporter for (``read_wanted``).

The same request id while it is pending is *coalesced* (seed 003: one request object whose parts
are merged): no second read, one completion carrying every part asked for. Any read's end
completes every request attached to it, so each request gets exactly one completion. While a
read runs, each accepted block may bring a progress notice, at most one per
:data:`PROGRESS_EVERY_S` per read (the first block at once). A restart never resumes a read:
every request still pending is settled as failed at step :data:`RESTART_STEP` (the bus and DEX
work of a crashed daemon are gone; the backend asks again).

The book is a value: each call returns the next book, and the caller commits what it implies
(the pending rows, the replies and events) before it keeps the new one. The clock is passed in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from protocols.errors import VmcError
from protocols.mdb.events import State
from vmc.cloud import messages as m

PROGRESS_EVERY_S = 1.0
"""At most one progress notice per read in this many seconds: a read of a large audit on a
slow line sends a handful, not one per block."""
MAX_PENDING = 16
"""Distinct request ids waiting at once; more are refused ``busy`` (a backend in a loop)."""
RESTART_STEP = "restart"


class RequestError(VmcError):
    """A request refused as a whole; ``code`` is the reply's error code."""

    def __init__(self, code: m.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Request:
    """One pending request; ``read_id`` names the read that answers its report, once started."""

    request_id: str
    report: bool
    config: bool
    local: bool
    created: float
    read_id: str | None = None


@dataclass(frozen=True, slots=True)
class Read:
    """The DEX read running now: bytes and blocks received, when progress was last told."""

    read_id: str
    started: float
    received: int = 0
    blocks: int = 0
    told_at: float | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a request did to the book."""

    book: RequestBook
    request: Request
    joined: bool
    """The request id was pending already: merged into it (seed 003's ``progress: true``)."""
    read_wanted: bool
    """No read runs: ask the reporter for one (asking again before it starts is harmless)."""
    answered: bool
    """``config`` alone: complete it now (it is not pending)."""


@dataclass(frozen=True, slots=True)
class RequestBook:
    """The pending requests and the read running now; ``dex``: a DEX port is configured."""

    dex: bool
    pending: tuple[Request, ...] = ()
    read: Read | None = None

    def find(self, request_id: str) -> Request | None:
        return next((r for r in self.pending if r.request_id == request_id), None)

    def request(
        self, request_id: str, *, report: bool, config: bool, local: bool, now: float
    ) -> Accepted:
        """Accept a request (or merge it into the pending one with its id); RequestError
        when ``report`` has no DEX port or too many ids wait."""
        old = self.find(request_id)
        if old is not None:
            merged = dataclasses.replace(
                old, report=old.report or report, config=old.config or config
            )
            book = dataclasses.replace(
                self, pending=tuple(merged if r is old else r for r in self.pending)
            )
            return Accepted(book, merged, joined=True, read_wanted=False, answered=False)
        if report and not self.dex:
            raise RequestError(
                m.ErrorCode.NO_DEX_PORT, "no DEX port is configured: no audit can be read"
            )
        request = Request(request_id, report, config, local, now)
        if not report:
            return Accepted(self, request, joined=False, read_wanted=False, answered=True)
        if len(self.pending) >= MAX_PENDING:
            raise RequestError(
                m.ErrorCode.BUSY, f"{MAX_PENDING} data requests wait already; try again later"
            )
        if self.read is not None:
            request = dataclasses.replace(request, read_id=self.read.read_id)
        book = dataclasses.replace(self, pending=(*self.pending, request))
        wanted = self.read is None
        return Accepted(book, request, joined=False, read_wanted=wanted, answered=False)

    def read_started(self, read_id: str, now: float) -> RequestBook:
        """A read began: every request that waits for one is answered by it."""
        pending = tuple(
            r if r.read_id is not None else dataclasses.replace(r, read_id=read_id)
            for r in self.pending
        )
        return dataclasses.replace(self, pending=pending, read=Read(read_id, now))

    def block(self, read_id: str, received: int, now: float) -> tuple[RequestBook, bool]:
        """One more block of ``read_id``; True when progress is due (someone waits for the read
        and none was told in the last :data:`PROGRESS_EVERY_S`)."""
        read = self.read
        if read is None or read.read_id != read_id:
            return self, False
        read = dataclasses.replace(read, received=received, blocks=read.blocks + 1)
        due = bool(self.attached(read_id)) and (
            read.told_at is None or now - read.told_at >= PROGRESS_EVERY_S
        )
        if due:
            read = dataclasses.replace(read, told_at=now)
        return dataclasses.replace(self, read=read), due

    def attached(self, read_id: str) -> tuple[Request, ...]:
        return tuple(r for r in self.pending if r.read_id == read_id)

    def read_finished(self, read_id: str) -> tuple[RequestBook, tuple[Request, ...]]:
        """The read ended (an audit or a failure): the requests it completes leave the book."""
        done = self.attached(read_id)
        pending = tuple(r for r in self.pending if r.read_id != read_id)
        read = None if self.read is not None and self.read.read_id == read_id else self.read
        return dataclasses.replace(self, pending=pending, read=read), done

    def settle_all(self) -> tuple[RequestBook, tuple[Request, ...]]:
        """At restart: every pending request, to be completed as failed."""
        return dataclasses.replace(self, pending=(), read=None), self.pending

    @property
    def reading(self) -> bool:
        """A read runs, or one was asked for and has not started yet."""
        return self.read is not None or any(r.read_id is None for r in self.pending)


class BusyReason(StrEnum):
    """Why ``status.check`` says busy; stable strings."""

    MDB_LINK_DOWN = "mdb_link_down"
    READER_DISABLED = "reader_disabled"
    SESSION = "session"
    VEND = "vend"
    TXN = "txn"
    DEX_READ = "dex_read"


@dataclass(frozen=True, slots=True)
class Machine:
    """What ``status.check`` judges: the MDB link, the reader and the open transaction."""

    link_up: bool
    reader: State
    txn_id: str | None = None
    txn_state: str | None = None


SESSION_STATES = frozenset({State.SESSION_IDLE, State.REVALUE, State.NEGATIVE_VEND})


def busy_reasons(machine: Machine, book: RequestBook) -> list[dict[str, object]]:
    """Every reason the machine is busy now (none: idle), each a map with ``reason`` first.

    The reader's state counts only while the link is up: without POLLs it may be stale.
    """
    reasons: list[dict[str, object]] = []
    reader = machine.reader.name.lower()
    if not machine.link_up:
        reasons.append({"reason": BusyReason.MDB_LINK_DOWN.value})
    elif machine.reader in (State.INACTIVE, State.DISABLED):
        reasons.append({"reason": BusyReason.READER_DISABLED.value, "reader": reader})
    elif machine.reader is State.VEND:
        reasons.append({"reason": BusyReason.VEND.value, "reader": reader})
    elif machine.reader in SESSION_STATES:
        reasons.append({"reason": BusyReason.SESSION.value, "reader": reader})
    if machine.txn_id is not None:
        reasons.append(
            {"reason": BusyReason.TXN.value, "txn_id": machine.txn_id, "state": machine.txn_state}
        )
    if book.reading:
        read = book.read
        reasons.append(
            {
                "reason": BusyReason.DEX_READ.value,
                "read_id": None if read is None else read.read_id,
                "received": 0 if read is None else read.received,
                "blocks": 0 if read is None else read.blocks,
            }
        )
    return reasons
