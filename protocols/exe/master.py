"""The Executive master (sans-I/O): vmc is the payment system, the VMC only answers.

Theory of operation. On an Executive machine the payment system is the master, the reverse of
MDB: it sends one command byte (STATUS, CREDIT, VEND) and reads one reply byte. The VMC shows
"no link" when that dialogue stops, so the master polls all the time, STATUS and CREDIT in
turn, every ``poll_interval`` seconds, and keeps doing so while the cloud decides.

A CREDIT reply other than NO VEND REQUEST is a customer's selection waiting to be vended: the
byte is the price (standard Executive, ``price_unit`` minor units per step) or, with
``price_holding``, the price line, priced from the table the daemon gives
(:meth:`ExeMaster.set_prices`, the planogram's). It becomes a ``VendRequested``; the VMC keeps
showing it until it is vended or it gives up waiting, so the same byte is the same request.
An approval is checked with one more CREDIT (still the same selection?) and then sent as
VEND; the VEND reply is the vend's result, up to ``vend_timeout`` later. A denial sends
nothing (no refusal byte is known): the selection is left for the VMC to time out, and its
byte is not served again until the VMC withdraws it.

The core never waits: :meth:`ExeMaster.poll` returns the command to send now, or None;
:meth:`ExeMaster.receive` takes reply bytes; :meth:`ExeMaster.wake_at` says when to call
``poll`` next. Decisions (``begin_session``, ``approve_vend``, ``deny_vend``,
``cancel_session``) only change what the next exchanges do. It reports in the cashless core's
terms (:mod:`protocols.mdb.events`): the link up and not inhibited is ``ENABLED``, a lock's
session ``SESSION_IDLE``, a selection ``VEND``; an Executive VMC reports selections without a
session first, which is MDB's always-idle, so that is what the application is told.

Money safety: a selection already waiting when the link (re)starts is never served (it may
be one approved before a restart); a VEND goes out only right after a CREDIT reply showing the
same selection; an approval after the core's own ``approval_timeout`` is refused; a VEND that
gets no result, or only PNAKs, is an unknown outcome, never a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from protocols.errors import LocalProtocolError
from protocols.exe.commands import NO_VEND_REQUEST, PNAK, VEND_SUCCESS, Command
from protocols.exe.events import ExeFault, Fault, LinkChanged, VmcStatus
from protocols.exe.settings import ExeSettings
from protocols.mdb.commands import Feature, PaymentType
from protocols.mdb.events import (
    CashlessEvent,
    DenyReason,
    FeaturesEnabled,
    SessionEnded,
    SessionStarted,
    SessionTimedOut,
    State,
    StateChanged,
    VendApprovedSent,
    VendDeniedSent,
    VendFailed,
    VendOutcomeUnknown,
    VendRequested,
    VendSucceeded,
)

ExeEvent = CashlessEvent | LinkChanged | VmcStatus | ExeFault


@dataclass(slots=True)
class _Sent:
    """The command awaiting its reply."""

    command: Command
    at: float


@dataclass(slots=True)
class _Request:
    """A selection the VMC shows in its CREDIT replies."""

    vend_id: int
    raw: int
    item: int
    price: int
    requested_at: float
    approved: int | None = None
    confirmed: bool = False  # a CREDIT after the approval still showed it
    vend_sent: bool = False


@dataclass(slots=True)
class _Session:
    started_at: float
    timeout: float | None
    implicit: bool = False  # opened by a selection without a session (select-first)
    vends: set[int] = field(default_factory=set)
    cancel_requested: bool = False


class ExeMaster:
    """One Executive VMC, polled by us."""

    def __init__(self, settings: ExeSettings, now: float = 0.0) -> None:
        self.settings = settings
        self.state = State.INACTIVE
        self.link_up: bool | None = None  # None: not judged yet
        self.last_reply_at: float | None = None
        self.commands_sent = 0
        self.replies = 0
        self.stray_bytes = 0
        self.prices: dict[int, int] = {}
        self._now = now
        self._sent: _Sent | None = None
        self._resend: Command | None = None
        self._tries = 0
        self._next_at = now
        self._heard_at = now  # the last reply, or the start: silence is measured from it
        self._status_next = True
        self._status_raw: int | None = None
        self._inhibited = False
        self._fresh = True  # the next CREDIT reply is the first since the link (re)started
        self._ignored: int | None = None  # a CREDIT reply not to serve until withdrawn
        self._request: _Request | None = None
        self._session: _Session | None = None
        self._next_vend_id = 1
        self._events: list[ExeEvent] = []

    # --- what the driver calls ------------------------------------------------------------

    def poll(self, now: float) -> int | None:
        """Apply timeouts; the command byte to send now, or None when nothing is due."""
        self._now = now
        self._timeouts(now)
        if self._sent is not None:
            return None
        command = self._resend
        if command is None:
            if now < self._next_at:
                return None
            command = self._choose()
            self._tries = 0
        self._resend = None
        self._tries += 1
        self._sent = _Sent(command, now)
        self.commands_sent += 1
        request = self._request
        if command is Command.VEND and request is not None and not request.vend_sent:
            request.vend_sent = True
            assert request.approved is not None
            self._emit(VendApprovedSent(request.vend_id, request.approved))
        return int(command)

    def receive(self, data: bytes, now: float) -> None:
        """Reply bytes from the VMC; bytes nobody asked for are counted and dropped."""
        self._now = now
        for byte in data:
            sent = self._sent
            if sent is None:
                self.stray_bytes += 1
                continue
            self._reply(sent, byte, now)

    def wake_at(self) -> float:
        """When :meth:`poll` has something to do next (a reply's deadline, the next command,
        an approval or session deadline, the silence limit)."""
        if self._resend is not None:
            return self._now
        sent = self._sent
        times = [self._next_at if sent is None else self._reply_deadline(sent)]
        times += [t for t in (self._approval_deadline(), self._session_deadline()) if t is not None]
        silence = self._silence_deadline()
        if silence is not None:
            times.append(silence)
        return min(times)

    def take_events(self) -> list[ExeEvent]:
        events, self._events = self._events, []
        return events

    def set_prices(self, prices: Mapping[int, int]) -> None:
        """The price of each price line (minor units), for price holding: the planogram's."""
        self.prices = dict(prices)

    @property
    def settled(self) -> bool:
        """No VEND is waiting for its result."""
        return not self._vend_running()

    # --- decisions from the application -----------------------------------------------------

    def begin_session(
        self,
        funds: int | None = None,
        payment_type: PaymentType = PaymentType.NORMAL,
        timeout: float | None = None,
    ) -> None:
        """Open a session for a lock, voucher or credit. The VMC is not told (no Executive byte
        for it is known): the customer's next selection is served in it. ``payment_type`` has
        no Executive field either."""
        if self.state is not State.ENABLED or self._session is not None:
            raise LocalProtocolError(f"cannot begin a session in state {self.state.name}")
        self._session = _Session(self._now, timeout)
        self._set_state(State.SESSION_IDLE)
        self._emit(SessionStarted(funds))

    def approve_vend(self, vend_id: int, amount: int) -> None:
        """Vend the selection ``vend_id`` for ``amount``: checked by a CREDIT, then VEND."""
        request = self._undecided(vend_id)
        if request is None:
            return
        if amount > request.price or amount < 0:
            raise LocalProtocolError("approved amount exceeds the vend price")
        deadline = self._approval_deadline()
        if deadline is not None and self._now >= deadline:
            self._deny(request, DenyReason.APPROVAL_TIMEOUT)
            raise LocalProtocolError(f"vend {vend_id}: the approval deadline has passed")
        request.approved = amount

    def deny_vend(self, vend_id: int) -> None:
        request = self._undecided(vend_id)
        if request is not None:
            self._deny(request, DenyReason.APPLICATION)

    def cancel_session(self, vend_id: int | None = None) -> None:
        """End the session (a cloud unlock, a timeout); with ``vend_id``, only that vend's."""
        session = self._session
        if session is None or (vend_id is not None and vend_id not in session.vends):
            return
        request = self._request
        if request is not None and not request.vend_sent:
            self._deny(request, DenyReason.APPLICATION)
        if self._vend_running():
            session.cancel_requested = True  # it ends with the vend's result
            return
        self._end_session()

    def void_pending(self) -> None:
        """Before a shutdown: an undecided or unsent vend is denied; a running VEND is left to
        finish (the driver waits a moment for its result)."""
        request = self._request
        if request is not None and not request.vend_sent:
            self._deny(request, DenyReason.SHUTDOWN)

    # --- replies ------------------------------------------------------------------------------

    def _reply(self, sent: _Sent, byte: int, now: float) -> None:
        self.replies += 1
        self.last_reply_at = self._heard_at = now
        self._sent = None
        self._next_at = now + self.settings.poll_interval
        if self.link_up is not True:
            self._link_changed(True)
        if byte == PNAK:
            self._pnak(sent.command)
            return
        match sent.command:
            case Command.STATUS:
                self._status(byte)
            case Command.CREDIT:
                self._credit(byte, now)
            case Command.VEND:
                self._vend_result(byte)

    def _pnak(self, command: Command) -> None:
        if self._tries <= self.settings.pnak_retries:
            self._resend = command
            return
        self._emit(ExeFault(Fault.PNAK, command.name, f"{self._tries} tries"))
        request = self._request
        if command is Command.VEND and request is not None:
            # The VMC said it did not take the VEND, but a reply can be misread: unknown.
            self._vend_over(VendOutcomeUnknown(*self._vend_fields(request), "pnak"))

    def _status(self, byte: int) -> None:
        settings = self.settings
        inhibited = bool(byte & settings.status_inhibit_mask)
        if byte != self._status_raw:
            free = bool(byte & settings.status_free_vend_mask)
            self._emit(VmcStatus(byte, inhibited, free))
            self._status_raw = byte
        self._inhibited = inhibited
        if self.state in (State.ENABLED, State.DISABLED):
            self._set_state(self._idle_state())

    def _credit(self, byte: int, now: float) -> None:
        fresh, self._fresh = self._fresh, False
        request = self._request
        if byte == NO_VEND_REQUEST:
            self._ignored = None
            if request is not None:  # the customer or the VMC gave up the selection
                self._withdrawn(request)
            return
        if fresh:
            self._ignored = byte
            self._emit(ExeFault(Fault.STALE_REQUEST, "CREDIT", f"{byte:#04x}"))
            return
        if request is not None and byte == request.raw:
            if request.approved is not None:
                request.confirmed = True
                self._next_at = now  # the VEND goes out at once
            return
        if byte == self._ignored:
            return
        if request is not None:  # another selection replaced the waiting one
            self._withdrawn(request)
        self._ignored = None
        self._new_request(byte, now)

    def _new_request(self, byte: int, now: float) -> None:
        if self.state not in (State.ENABLED, State.SESSION_IDLE):
            self._ignored = byte
            self._emit(ExeFault(Fault.NOT_ENABLED, "CREDIT", f"{byte:#04x} in {self.state.name}"))
            return
        if self.settings.price_holding:
            item, price = byte, self.prices.get(byte)
        else:
            item, price = 0, byte * self.settings.price_unit
        if price is None:
            self._ignored = byte
            self._emit(ExeFault(Fault.UNPRICED, "CREDIT", f"price line {byte}"))
            return
        if self._session is None:
            self._session = _Session(now, None, implicit=True)
        request = _Request(self._next_vend_id, byte, item, price, now)
        self._next_vend_id += 1
        self._session.vends.add(request.vend_id)
        self._request = request
        self._set_state(State.VEND)
        self._emit(VendRequested(request.vend_id, item, price))

    def _vend_result(self, byte: int) -> None:
        request = self._request
        if request is None or not request.vend_sent:
            return  # a VEND reply for a vend already settled (it timed out): dropped
        fields = self._vend_fields(request)
        self._vend_over(VendSucceeded(*fields) if byte == VEND_SUCCESS else VendFailed(*fields))

    # --- time -----------------------------------------------------------------------------------

    def _timeouts(self, now: float) -> None:
        """Deadlines, each compared as :meth:`wake_at` computes it (no float drift)."""
        sent = self._sent
        if sent is not None and now >= self._reply_deadline(sent):
            self._sent = None
            self._next_at = now
            request = self._request
            if sent.command is Command.VEND and request is not None:
                self._heard_at = now  # the silence clock starts after the vend's long wait
                self._vend_over(VendOutcomeUnknown(*self._vend_fields(request), "no_vend_result"))
        silence = self._silence_deadline()
        if silence is not None and now >= silence:
            self._link_changed(False)
        request = self._request
        deadline = self._approval_deadline()
        if request is not None and deadline is not None and now >= deadline:
            self._deny(request, DenyReason.APPROVAL_TIMEOUT)
        deadline = self._session_deadline()
        if deadline is not None and now >= deadline:
            self._emit(SessionTimedOut())
            self._end_session()

    def _reply_deadline(self, sent: _Sent) -> float:
        settings = self.settings
        wait = settings.vend_timeout if sent.command is Command.VEND else settings.reply_timeout
        return sent.at + wait

    def _approval_deadline(self) -> float | None:
        """An undecided or not yet sent vend's: it is denied then."""
        request = self._request
        if request is None or request.vend_sent:
            return None
        return request.requested_at + self.settings.approval_timeout

    def _session_deadline(self) -> float | None:
        """A session with a timeout and no selection in it ends then."""
        session = self._session
        if session is None or session.timeout is None or self._request is not None:
            return None
        return session.started_at + session.timeout

    def _silence_deadline(self) -> float | None:
        """The link goes down then, unless the VMC answers (not judged during a VEND)."""
        if self.link_up is False or self._vend_running():
            return None
        return self._heard_at + self.settings.silent_after

    # --- helpers --------------------------------------------------------------------------------

    def _choose(self) -> Command:
        request = self._request
        if request is not None and request.approved is not None and not request.vend_sent:
            return Command.VEND if request.confirmed else Command.CREDIT
        self._status_next = not self._status_next
        return Command.CREDIT if self._status_next else Command.STATUS

    def _vend_running(self) -> bool:
        request = self._request
        return request is not None and request.vend_sent

    def _vend_fields(self, request: _Request) -> tuple[int, int, int]:
        return request.vend_id, request.item, request.approved or 0

    def _undecided(self, vend_id: int) -> _Request | None:
        """The selection ``vend_id`` if it awaits a decision; None if it is over already."""
        request = self._request
        if request is not None and request.vend_id == vend_id:
            if request.approved is not None:
                raise LocalProtocolError(f"vend {vend_id} is not awaiting a decision")
            return request
        if 0 < vend_id < self._next_vend_id:
            return None
        raise LocalProtocolError(f"vend {vend_id} is unknown")

    def _deny(self, request: _Request, reason: DenyReason) -> None:
        """Not served: the VMC keeps the selection until it gives up; we ignore it till then."""
        self._ignored = request.raw
        self._emit(VendDeniedSent(request.vend_id, reason))
        self._request_over()

    def _withdrawn(self, request: _Request) -> None:
        self._emit(VendDeniedSent(request.vend_id, DenyReason.CANCELLED_BY_VMC))
        self._request_over()

    def _vend_over(self, outcome: VendSucceeded | VendFailed | VendOutcomeUnknown) -> None:
        """A VEND's outcome; its session ends with it (one vend per session on Executive)."""
        self._request = None
        self._emit(outcome)
        self._end_session()

    def _request_over(self) -> None:
        self._request = None
        session = self._session
        if session is None:
            self._set_state(self._idle_state())
        elif session.implicit or session.cancel_requested:
            self._end_session()
        else:
            self._set_state(State.SESSION_IDLE)

    def _end_session(self) -> None:
        if self._session is not None:
            self._session = None
            self._emit(SessionEnded())
        self._set_state(self._idle_state())

    def _idle_state(self) -> State:
        if not self.link_up:
            return State.INACTIVE
        return State.DISABLED if self._inhibited else State.ENABLED

    def _link_changed(self, up: bool) -> None:
        self.link_up = up
        self._fresh = True
        self._emit(LinkChanged(up))
        if up:
            self._emit(FeaturesEnabled(int(Feature.ALWAYS_IDLE)))
            self._set_state(self._idle_state())
            return
        request = self._request
        if request is not None:
            self._deny(request, DenyReason.SESSION_ENDED)
        self._end_session()

    def _set_state(self, new: State) -> None:
        if new is not self.state:
            old, self.state = self.state, new
            self._emit(StateChanged(old, new))

    def _emit(self, event: ExeEvent) -> None:
        self._events.append(event)
