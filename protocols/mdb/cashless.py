"""The MDB cashless device (reader) state machine, levels 1-3 (MDB/ICP 4.2 §7).

Theory of operation. :meth:`CashlessDevice.receive` takes the words the port decoded and the
current time, and returns the blocks to write back at once; nothing here waits. The application
(the daemon's transaction layer) never answers the VMC directly: ``begin_session``,
``approve_vend``, ``deny_vend``, ``cancel_session`` only set what the next POLL returns, so the
bus never waits on the cloud. An undecided vend is denied when the approval deadline passes;
a decision that arrives after that is refused, and one for a vend that is already over (the
customer cancelled, the session ended) is dropped: a late approval can never dispense.

States and their legal commands live in :data:`_ALLOWED`; a command outside it is answered
with CMD OUT OF SEQUENCE and reported. Answers that were not ACKed are resent on the next
POLL; any other command supersedes them. The operating level is the lower of the VMC's level
(SETUP config data) and ours, and level-3 options are used only once the VMC enabled them.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from protocols.errors import LocalProtocolError, MoneyError
from protocols.mdb import commands as c
from protocols.mdb.commands import Feature, MiscOption, PaymentType
from protocols.mdb.events import (
    CashlessEvent,
    CashSaleReported,
    Configured,
    DenyReason,
    FeaturesEnabled,
    PricesSet,
    ProtocolViolation,
    ReaderReset,
    RevalueRequested,
    RevalueResult,
    SessionEnded,
    SessionRefused,
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
    VmcIdentified,
)
from protocols.mdb.link import (
    Acked,
    BlockReceived,
    ChecksumFailed,
    LineEvent,
    LinkEvent,
    Nakked,
    PeripheralLink,
    RetransmitRequested,
)
from protocols.mdb.money import UNKNOWN_FUNDS_16, UNKNOWN_FUNDS_32, BusMoney
from protocols.mdb.words import Word

ACK_BLOCK = bytes((c.ACK,))
NAK_BLOCK = bytes((c.NAK,))
CASHLESS_ADDRESSES = (0x10, 0x60)
SUPPORTED_FEATURES = Feature.WIDE_MONEY | Feature.NEGATIVE_VEND | Feature.ALWAYS_IDLE
MAX_MEDIA_ID = 0xFFFFFFFF
LANGUAGE = re.compile(r"[A-Za-z]{2}")


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """What this reader tells the VMC about itself, and its timeouts (seconds)."""

    address: int = 0x10
    level: int = 3
    currency: int = 978  # ISO 4217 numeric: what the cloud is told, and the VMC by default
    telephone_code: int | None = None  # tell the VMC this telephone code (0x0nnn) instead
    minor_decimals: int = 2
    scale_factor: int = 1
    decimal_places: int = 2
    max_response_time: int = 5
    refunds: bool = True
    multivend: bool = True
    cash_sale: bool = True
    features: int = int(SUPPORTED_FEATURES)
    manufacturer: str = "VMC"
    serial: str = "000000000001"
    model: str = "vmc-cashless"
    software_version: int = 0x0100
    session_timeout: float = 60.0
    approval_timeout: float = 4.0
    vend_result_timeout: float = 60.0
    revalue_limit: int = 0
    payment_media_id: int = 0  # BEGIN SESSION's payment media ID (levels 2 and 3)
    language: str = "en"  # expanded BEGIN SESSION's language: ISO 639-1, two letters

    def __post_init__(self) -> None:
        """Refuse what the bus cannot carry; messages start with the field's name."""
        if self.address not in CASHLESS_ADDRESSES:
            raise ValueError(f"address: {self.address:#04x} is not allowed; use 0x10 or 0x60")
        if self.level not in (1, 2, 3):
            raise ValueError(f"level: {self.level} is not allowed; use 1, 2 or 3")
        if self.features & ~int(SUPPORTED_FEATURES):
            raise ValueError("features: only wide money, negative vend and always idle")
        if self.approval_timeout >= self.max_response_time:
            raise ValueError("approval_timeout: must be below max_response_time")
        for name in ("currency", "telephone_code"):
            number = getattr(self, name)
            if number is not None and number not in c.CURRENCY_NUMBERS:
                raise ValueError(f"{name}: {number} is not allowed; expected 1..999")
        if not 0 <= self.payment_media_id <= MAX_MEDIA_ID:
            raise ValueError(
                f"payment_media_id: {self.payment_media_id} is not allowed;"
                f" expected 0..{MAX_MEDIA_ID} (4 bytes)"
            )
        if not LANGUAGE.fullmatch(self.language):
            raise ValueError(
                f"language: {self.language!r} is not allowed; expected two ASCII letters"
                ' (ISO 639-1), e.g. "en" or "ru"'
            )

    @property
    def currency_code(self) -> c.CurrencyCode:
        """The country/currency code the VMC is told, in the form it expects."""
        if self.telephone_code is not None:
            return c.CurrencyCode(self.telephone_code, c.CurrencyForm.TELEPHONE)
        return c.CurrencyCode(self.currency)

    @property
    def options(self) -> int:
        bits = 0
        if self.refunds:
            bits |= MiscOption.REFUNDS
        if self.multivend:
            bits |= MiscOption.MULTIVEND
        if self.cash_sale:
            bits |= MiscOption.CASH_SALE
        return bits

    @property
    def money(self) -> BusMoney:
        return BusMoney(self.scale_factor, self.decimal_places, self.minor_decimals)


Tapped = tuple[LinkEvent, bytes | None, float, bool]
"""One exchange as the bus monitor takes it: what the link made of the VMC's words, the block
sent back (None: nothing), when, and whether money was 32-bit then (to decode the command)."""


@dataclass(slots=True)
class _Vend:
    vend_id: int
    item: int
    price: int
    negative: bool
    requested_at: float
    decision: c.VendApproved | c.VendDenied | None = None
    deny_reason: DenyReason | None = None
    delivered: bool = False
    approved_amount: int | None = None
    approved_at: float = 0.0


@dataclass(slots=True)
class _Revalue:
    amount: int
    requested_at: float
    decision: bool | None = None


@dataclass(slots=True)
class _Session:
    started_at: float
    vends: set[int] = field(default_factory=set)
    cancel_requested: bool = False
    timeout: float | None = None  # None: ReaderConfig.session_timeout


@dataclass(slots=True)
class _Negotiated:
    vmc_level: int = 0
    columns: int = 0
    rows: int = 0
    features: int = 0


@dataclass(slots=True)
class _Pending:
    just_reset: bool = True
    begin_funds: int | None = None
    begin_wanted: bool = False
    begin_payment_type: PaymentType = PaymentType.NORMAL
    begin_timeout: float | None = None
    outbox: deque[c.Response] = field(default_factory=deque)


_IN_SESSION = frozenset({State.SESSION_IDLE, State.VEND, State.REVALUE, State.NEGATIVE_VEND})
_ANY = frozenset(State)
_CONFIGURED = _ANY - {State.INACTIVE}

# Command type -> states in which it is legal. Everything else: CMD OUT OF SEQUENCE.
_ALLOWED: dict[type, frozenset[State]] = {
    c.Reset: _ANY,
    c.Poll: _ANY,
    c.SetupConfig: _ANY - _IN_SESSION,
    c.SetupPrices: _ANY,
    c.ExpansionRequestId: _ANY,
    c.OptionalFeatures: _ANY,
    c.ExpansionOther: _ANY,
    c.UnknownCommand: _ANY,
    c.ReaderEnable: _CONFIGURED,
    c.ReaderDisable: _ANY,
    c.ReaderCancel: _CONFIGURED,
    c.VendRequest: frozenset({State.SESSION_IDLE, State.ENABLED, State.VEND}),
    c.NegativeVendRequest: frozenset({State.SESSION_IDLE, State.NEGATIVE_VEND}),
    c.VendCancel: frozenset({State.VEND, State.NEGATIVE_VEND, State.SESSION_IDLE}),
    c.VendSuccess: frozenset({State.VEND, State.NEGATIVE_VEND}),
    c.VendFailure: frozenset({State.VEND, State.NEGATIVE_VEND}),
    c.SessionComplete: _CONFIGURED,
    c.CashSale: _CONFIGURED,
    c.RevalueRequest: frozenset({State.SESSION_IDLE}),
    c.RevalueLimitRequest: _CONFIGURED,
}


class CashlessDevice:
    """A cashless reader on the bus; one instance per address."""

    def __init__(self, config: ReaderConfig, now: float = 0.0) -> None:
        self.config = config
        self.link = PeripheralLink(config.address)
        self.state = State.INACTIVE
        self._money = config.money
        self._neg = _Negotiated()
        self._pending = _Pending()
        self._session: _Session | None = None
        self._vend: _Vend | None = None
        self._revalue: _Revalue | None = None
        self._disable_after_session = False
        self._next_vend_id = 1
        self._events: list[CashlessEvent] = []
        self.last_poll_at: float | None = None
        self.polls = 0
        self._now = now
        self.tap: list[Tapped] | None = None
        """The bus monitor's: while a list, every exchange is appended to it (a tuple, no
        decoding: the answer must not wait); whoever set it drains it after writing."""

    # --- what the application sees ------------------------------------------------------

    @property
    def operating_level(self) -> int:
        vmc = self._neg.vmc_level or self.config.level
        return min(vmc, self.config.level)

    @property
    def wide(self) -> bool:
        return bool(self._neg.features & Feature.WIDE_MONEY)

    @property
    def always_idle(self) -> bool:
        return bool(self._neg.features & Feature.ALWAYS_IDLE)

    @property
    def pending_vend(self) -> VendRequested | None:
        v = self._vend
        if v is None or v.decision is not None:
            return None
        return VendRequested(v.vend_id, v.item, self._money.to_minor(v.price), v.negative)

    @property
    def settled(self) -> bool:
        """Nothing decided is still waiting to reach the VMC, or for its ACK."""
        v = self._vend
        undelivered = v is not None and v.decision is not None and not v.delivered
        return not undelivered and not self._pending.outbox and self.link.unacked is None

    def void_pending(self) -> None:
        """Before a shutdown: deny an undecided vend and withdraw an undelivered session."""
        if self._pending.begin_wanted:
            self._drop_begin("shutdown")
        v = self._vend
        if v is not None and v.decision is None:
            self._decide_deny(v, DenyReason.SHUTDOWN)

    def take_events(self) -> list[CashlessEvent]:
        events, self._events = self._events, []
        return events

    # --- application decisions (queued for the next POLL) ---------------------------------

    def begin_session(
        self,
        funds: int | None = None,
        payment_type: PaymentType = PaymentType.NORMAL,
        timeout: float | None = None,
    ) -> None:
        """Offer a session with ``funds`` minor units (None: funds unknown).

        ``payment_type`` marks test-media and free-vend sessions for the VMC's own audit
        (levels 2 and 3 carry it; level 1 has no field for it). ``timeout`` replaces
        ``session_timeout`` for this session: a voucher's lasts as long as the voucher.
        """
        if self.state is not State.ENABLED or self._session is not None:
            raise LocalProtocolError(f"cannot begin a session in state {self.state.name}")
        if funds is not None:
            self._money.to_bus(funds, wide=self.wide)
        self._pending.begin_wanted = True
        self._pending.begin_funds = funds
        self._pending.begin_payment_type = payment_type
        self._pending.begin_timeout = timeout

    def approve_vend(self, vend_id: int, amount: int) -> None:
        """Approve the pending vend ``vend_id`` for ``amount`` minor units."""
        v = self._undecided(vend_id)
        if v is None:
            return
        if amount > self._money.to_minor(v.price) and not v.negative:
            raise LocalProtocolError("approved amount exceeds the vend price")
        try:
            raw = self._money.to_bus(amount, wide=self.wide)
        except MoneyError:
            self._decide_deny(v, DenyReason.NOT_REPRESENTABLE)
            raise
        v.decision = c.VendApproved(raw, wide=self.wide)

    def deny_vend(self, vend_id: int) -> None:
        v = self._undecided(vend_id)
        if v is not None:
            self._decide_deny(v, DenyReason.APPLICATION)

    def cancel_session(self, vend_id: int | None = None) -> None:
        """End the session from our side (cloud unlock, timeout); the VMC completes it.

        With ``vend_id``, only the session that vend belongs to: a cancel that arrives after
        the VMC ended that session must not touch the next customer's.
        """
        if vend_id is not None and (self._session is None or vend_id not in self._session.vends):
            return
        if self._pending.begin_wanted:
            self._drop_begin("cancelled_by_application")
            return
        if self._vend is not None and self._vend.decision is None:
            self._decide_deny(self._vend, DenyReason.APPLICATION)
        if self._session is not None and not self._session.cancel_requested:
            self._session.cancel_requested = True
            self._pending.outbox.append(c.SessionCancelRequest())

    def decide_revalue(self, approved: bool) -> None:
        r = self._revalue
        if r is None or r.decision is not None:
            raise LocalProtocolError("no revalue awaiting a decision")
        r.decision = approved

    def report_malfunction(self, code: int) -> None:
        self._pending.outbox.append(c.Malfunction(code & 0xFF))

    def display(self, text: str, seconds: float) -> None:
        """Show ``text`` on the VMC's display, if it has one."""
        size = self._neg.columns * self._neg.rows
        if size == 0 or self.operating_level < 1:
            raise LocalProtocolError("the VMC has no display")
        raw = text.encode("ascii", errors="replace")[:size].ljust(size, b" ")
        tenths = max(1, min(255, round(seconds * 10)))
        self._pending.outbox.append(c.DisplayRequest(tenths, raw))

    # --- the bus ------------------------------------------------------------------------

    def receive(self, words: Iterable[Word], now: float) -> list[bytes]:
        """Feed decoded words; return the blocks to send (mode bit on each one's last byte)."""
        self._now = now
        out: list[bytes] = []
        for word in words:
            event = self.link.receive_word(word)
            if event is None:
                continue
            reply = self._on_link_event(event)
            if reply is not None:
                out.append(reply)
            if self.tap is not None:
                self.tap.append((event, reply, now, self.wide))
        return out

    def tick(self, now: float) -> None:
        """Apply timeouts; called on every block and periodically by the driver."""
        self._now = now
        v = self._vend
        if v is not None:
            if v.decision is None and now - v.requested_at >= self.config.approval_timeout:
                self._decide_deny(v, DenyReason.APPROVAL_TIMEOUT)
            elif (
                v.approved_amount is not None
                and now - v.approved_at >= self.config.vend_result_timeout
                and self._session is not None
                and not self._session.cancel_requested
            ):
                self._session.cancel_requested = True
                self._pending.outbox.append(c.SessionCancelRequest())
        r = self._revalue
        if (
            r is not None
            and r.decision is None
            and now - r.requested_at >= (self.config.approval_timeout)
        ):
            r.decision = False
        s = self._session
        if (
            s is not None
            and self.state is State.SESSION_IDLE
            and not s.cancel_requested
            and not s.vends
            and now - s.started_at
            >= (self.config.session_timeout if s.timeout is None else s.timeout)
        ):
            s.cancel_requested = True
            self._pending.outbox.append(c.SessionCancelRequest())
            self._emit(SessionTimedOut())

    def _on_link_event(self, event: object) -> bytes | None:
        if isinstance(event, BlockReceived):
            return self._on_block(event.data)
        if isinstance(event, ChecksumFailed):
            self._emit(ProtocolViolation(f"checksum error in block {event.data.hex()}"))
            return NAK_BLOCK
        if isinstance(event, RetransmitRequested):
            return self.link.resend()
        if isinstance(event, LineEvent):
            self._reset(bus_reset=True)
            return None
        if isinstance(event, Acked | Nakked):
            return None
        raise AssertionError(f"unhandled link event {event!r}")  # pragma: no cover

    def _on_block(self, block: bytes) -> bytes:
        cmd = c.parse_command(block, wide=self.wide)
        self.tick(self._now)
        if isinstance(cmd, c.Poll):
            self.last_poll_at = self._now
            self.polls += 1
            held = self.link.resend()
            if held is not None:
                return held
        else:
            self.link.drop_unacked()
        if self.state not in _ALLOWED[type(cmd)]:
            return self._out_of_sequence(cmd)
        reply = self._dispatch(cmd)
        if reply is None:
            return ACK_BLOCK
        return self.link.frame(reply.to_bytes())

    # --- command handlers: each returns a direct data reply, or None for a plain ACK -------

    def _dispatch(self, cmd: c.Command) -> c.Response | None:
        match cmd:
            case c.Reset():
                self._reset(bus_reset=False)
                return None
            case c.Poll():
                return self._poll()
            case c.SetupConfig():
                return self._setup_config(cmd)
            case c.SetupPrices():
                self._emit(
                    PricesSet(
                        self._to_minor_or_zero(cmd.max_price), self._to_minor_or_zero(cmd.min_price)
                    )
                )
                return None
            case c.ExpansionRequestId():
                self._emit(
                    VmcIdentified(cmd.manufacturer, cmd.serial, cmd.model, cmd.software_version)
                )
                return self._peripheral_id()
            case c.OptionalFeatures():
                if self.operating_level >= 3:
                    self._neg.features = cmd.bits & self.config.features
                    self.link.wide = self.wide
                    self._emit(FeaturesEnabled(self._neg.features))
                return None
            case c.ExpansionOther() | c.UnknownCommand():
                return None
            case c.ReaderEnable():
                self._disable_after_session = False
                if self.state is State.DISABLED:
                    self._set_state(State.ENABLED)
                return None
            case c.ReaderDisable():
                self._reader_disable()
                return None
            case c.ReaderCancel():
                if self._pending.begin_wanted:
                    self._drop_begin("reader_cancel")
                self._pending.outbox.append(c.Cancelled())
                return None
            case c.VendRequest():
                return self._vend_request(cmd.price, cmd.item, negative=False)
            case c.NegativeVendRequest():
                return self._vend_request(cmd.price, cmd.item, negative=True)
            case c.VendCancel():
                return self._vend_cancel()
            case c.VendSuccess():
                return self._vend_result(success=True, item=cmd.item)
            case c.VendFailure():
                return self._vend_result(success=False, item=None)
            case c.SessionComplete():
                return self._session_complete()
            case c.CashSale():
                self._emit(CashSaleReported(cmd.item, self._to_minor_or_zero(cmd.price)))
                return None
            case c.RevalueRequest():
                return self._revalue_request(cmd.amount)
            case c.RevalueLimitRequest():
                limit = self.config.revalue_limit if self.operating_level >= 2 else 0
                return c.RevalueLimit(self._money.to_bus(limit, wide=self.wide), wide=self.wide)
        raise AssertionError(f"unhandled command {cmd!r}")  # pragma: no cover

    def _poll(self) -> c.Response | None:
        p = self._pending
        if p.just_reset:
            p.just_reset = False
            return c.JustReset()
        v = self._vend
        if v is not None and v.decision is not None and not v.delivered:
            return self._deliver_vend_decision(v)
        r = self._revalue
        if r is not None and r.decision is not None:
            self._revalue = None
            self._set_state(State.SESSION_IDLE)
            self._emit(RevalueResult(self._to_minor_or_zero(r.amount), r.decision))
            return c.RevalueApproved() if r.decision else c.RevalueDenied()
        if p.outbox:
            return p.outbox.popleft()
        if p.begin_wanted and self.state is State.ENABLED:
            return self._deliver_begin()
        return None

    def _setup_config(self, cmd: c.SetupConfig) -> c.Response:
        self._neg = _Negotiated(vmc_level=max(1, cmd.vmc_level), columns=cmd.columns, rows=cmd.rows)
        self.link.wide = False
        self._pending.just_reset = False
        if self.state is State.INACTIVE:
            self._set_state(State.DISABLED)
        level = self.operating_level
        self._emit(Configured(cmd.vmc_level, cmd.columns, cmd.rows, level, cmd.display_info))
        cfg = self.config
        return c.ReaderConfigData(
            level,
            cfg.currency_code.to_word(),
            cfg.scale_factor,
            cfg.decimal_places,
            cfg.max_response_time,
            cfg.options,
        )

    def _peripheral_id(self) -> c.Response:
        cfg = self.config
        features = cfg.features if self.operating_level >= 3 else None
        return c.PeripheralId(
            cfg.manufacturer, cfg.serial, cfg.model, cfg.software_version, features
        )

    def _reader_disable(self) -> None:
        if self.state in _IN_SESSION:
            self._disable_after_session = True
            return
        if self._pending.begin_wanted:
            self._drop_begin("reader_disabled")
        if self.state is State.ENABLED:
            self._set_state(State.DISABLED)

    def _vend_request(self, price: int, item: int, *, negative: bool) -> c.Response | None:
        v = self._vend
        if v is not None:
            if (v.price, v.item, v.negative) == (price, item, negative):
                return None  # the VMC repeated a request it saw no ACK for
            return self._out_of_sequence_for(f"vend request while vend {v.vend_id} is open")
        if self.state is State.ENABLED:
            if not self.always_idle:
                return self._out_of_sequence_for("vend request without a session")
            if self._pending.begin_wanted:
                self._pending.begin_wanted = False
            self._session = _Session(started_at=self._now)
        if negative and not self._neg.features & Feature.NEGATIVE_VEND:
            return self._out_of_sequence_for("negative vend is not enabled")
        assert self._session is not None
        vend = _Vend(self._next_vend_id, item, price, negative, self._now)
        self._session.vends.add(vend.vend_id)
        self._next_vend_id += 1
        self._vend = vend
        self._set_state(State.NEGATIVE_VEND if negative else State.VEND)
        try:
            price_minor = self._money.to_minor(price)
        except MoneyError:
            self._decide_deny(vend, DenyReason.NOT_REPRESENTABLE)
            return None
        self._emit(VendRequested(vend.vend_id, item, price_minor, negative))
        return None

    def _vend_cancel(self) -> c.Response:
        v = self._vend
        if v is not None:
            if v.approved_amount is not None and v.delivered:
                self._emit(
                    VendOutcomeUnknown(
                        v.vend_id,
                        v.item,
                        self._to_minor_or_zero(v.approved_amount),
                        "cancelled_by_vmc_after_approval",
                    )
                )
            else:
                v.deny_reason = DenyReason.CANCELLED_BY_VMC
                self._emit(VendDeniedSent(v.vend_id, DenyReason.CANCELLED_BY_VMC))
            self._vend = None
            self._set_state(State.SESSION_IDLE)
        return c.VendDenied()

    def _vend_result(self, *, success: bool, item: int | None) -> c.Response | None:
        v = self._vend
        if v is None or v.approved_amount is None or not v.delivered:
            return self._out_of_sequence_for("vend result for a vend that was not approved")
        amount = self._to_minor_or_zero(v.approved_amount)
        if success:
            self._emit(VendSucceeded(v.vend_id, v.item if item is None else item, amount))
        else:
            self._emit(VendFailed(v.vend_id, v.item, amount))
        self._vend = None
        self._set_state(State.SESSION_IDLE)
        return None

    def _session_complete(self) -> c.Response:
        if self.state in _IN_SESSION:
            self._settle_open_vend("session_completed")
            self._session = None
            self._revalue = None
            self._emit(SessionEnded())
            disable = self._disable_after_session
            self._disable_after_session = False
            self._set_state(State.DISABLED if disable else State.ENABLED)
        return c.EndSession()

    def _revalue_request(self, amount: int) -> c.Response | None:
        if self.operating_level < 2:
            self._pending.outbox.append(c.RevalueDenied())
            return None
        self._revalue = _Revalue(amount, self._now)
        self._set_state(State.REVALUE)
        self._emit(RevalueRequested(self._to_minor_or_zero(amount)))
        return None

    # --- helpers ------------------------------------------------------------------------

    def _deliver_begin(self) -> c.Response:
        funds = self._pending.begin_funds
        self._pending.begin_wanted = False
        wide = self.wide
        if funds is None:
            raw = UNKNOWN_FUNDS_32 if wide else UNKNOWN_FUNDS_16
        else:
            raw = self._money.to_bus(funds, wide=wide)
        self._session = _Session(started_at=self._now, timeout=self._pending.begin_timeout)
        self._set_state(State.SESSION_IDLE)
        self._emit(SessionStarted(funds))
        cfg = self.config
        return c.BeginSession(
            raw,
            level=self.operating_level,
            wide=wide,
            media_id=cfg.payment_media_id,
            payment_type=self._pending.begin_payment_type,
            language=cfg.language.encode("ascii"),
            currency=cfg.currency_code.to_word(),
        )

    def _deliver_vend_decision(self, v: _Vend) -> c.Response:
        v.delivered = True
        decision = v.decision
        if isinstance(decision, c.VendApproved):
            v.approved_amount = decision.amount
            v.approved_at = self._now
            self._emit(VendApprovedSent(v.vend_id, self._to_minor_or_zero(decision.amount)))
            return decision
        self._emit(VendDeniedSent(v.vend_id, v.deny_reason or DenyReason.APPLICATION))
        self._vend = None
        self._set_state(State.SESSION_IDLE)
        return c.VendDenied()

    def _undecided(self, vend_id: int) -> _Vend | None:
        """The open vend ``vend_id`` if it awaits a decision; None if that vend is over.

        A decision that arrives after the vend ended (the customer cancelled, the session
        ended, the VMC reset) lost an ordinary race: the VMC has its answer and the core
        already reported how the vend ended, so the decision is dropped, not refused.
        """
        v = self._vend
        if v is not None and v.vend_id == vend_id:
            if v.decision is not None:
                raise LocalProtocolError(f"vend {vend_id} is not awaiting a decision")
            return v
        if 0 < vend_id < self._next_vend_id:
            return None
        raise LocalProtocolError(f"vend {vend_id} is unknown")

    def _decide_deny(self, v: _Vend, reason: DenyReason) -> None:
        v.decision = c.VendDenied()
        v.deny_reason = reason

    def _settle_open_vend(self, reason: str) -> None:
        v = self._vend
        if v is None:
            return
        if v.approved_amount is not None and v.delivered:
            amount = self._to_minor_or_zero(v.approved_amount)
            self._emit(VendOutcomeUnknown(v.vend_id, v.item, amount, reason))
        elif not v.delivered:
            self._emit(VendDeniedSent(v.vend_id, DenyReason.SESSION_ENDED))
        self._vend = None

    def _drop_begin(self, reason: str) -> None:
        self._pending.begin_wanted = False
        self._pending.begin_funds = None
        self._emit(SessionRefused(reason))

    def _reset(self, *, bus_reset: bool) -> None:
        self._settle_open_vend("reader_reset")
        if self._pending.begin_wanted:
            self._drop_begin("reader_reset")
        if self._session is not None:
            self._emit(SessionEnded())
        self._session = None
        self._revalue = None
        self._neg = _Negotiated()
        self._pending = _Pending()
        self._disable_after_session = False
        self.link.reset()
        self._set_state(State.INACTIVE)
        self._emit(ReaderReset(bus_reset=bus_reset))

    def _out_of_sequence(self, cmd: c.Command) -> bytes:
        reply = self._out_of_sequence_for(f"{type(cmd).__name__} in state {self.state.name}")
        return self.link.frame(reply.to_bytes())

    def _out_of_sequence_for(self, detail: str) -> c.Response:
        self._emit(ProtocolViolation(detail))
        state = self.state.value if self.operating_level >= 2 else None
        return c.OutOfSequence(state)

    def _to_minor_or_zero(self, raw: int) -> int:
        try:
            return self._money.to_minor(raw)
        except MoneyError:
            return 0

    def _set_state(self, new: State) -> None:
        if new is not self.state:
            old, self.state = self.state, new
            self._emit(StateChanged(old, new))

    def _emit(self, event: CashlessEvent) -> None:
        self._events.append(event)
