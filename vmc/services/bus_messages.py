"""Typed messages between the daemon and its bus process (MDB or Executive).

They travel one per datagram over a ``SOCK_SEQPACKET`` socketpair as small JSON objects:
``{"type": <class name>, ...fields}``. Cashless events from :mod:`protocols.mdb.events` (which
the Executive master reports too) and the Executive link's own (:mod:`protocols.exe.events`)
are carried the same way, so the daemon sees exactly the dataclasses the core emitted. This
module imports nothing heavy: the bus process must start fast and stay small.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

from protocols.errors import RemoteProtocolError
from protocols.exe import events as exe
from protocols.mdb import events as ev

# --- daemon -> bus -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BeginSession:
    """``timeout``: seconds the session may wait for a selection (None: the reader's own)."""

    funds: int | None
    payment_type: int = 0  # protocols.mdb.commands.PaymentType
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class ApproveVend:
    vend_id: int
    amount: int


@dataclass(frozen=True, slots=True)
class DenyVend:
    vend_id: int


@dataclass(frozen=True, slots=True)
class CancelSession:
    """End the session; with ``vend_id``, only if that vend's session is still the open one."""

    vend_id: int | None = None


@dataclass(frozen=True, slots=True)
class DecideRevalue:
    approved: bool


@dataclass(frozen=True, slots=True)
class ShowText:
    text: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class SetPrices:
    """Executive price holding: each price line's price (minor units), as ``[line, price]``
    pairs; the planogram's selections. Sent when a bus process is ready and on every change."""

    prices: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        # JSON brings the pairs back as lists: whole numbers again, or the message is refused.
        pairs = tuple((int(line), int(price)) for line, price in self.prices)
        object.__setattr__(self, "prices", pairs)


@dataclass(frozen=True, slots=True)
class Monitor:
    """Stream every exchange (``on``) or stop: the daemon's bus monitor has listeners or not."""

    on: bool


# --- bus -> daemon -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    port: str
    realtime: bool


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Once a second. ``answers``: reads that were answered, ``answer_sum_s`` their answer
    times added up (both since the process started) and ``answer_max_s`` the longest since the
    previous heartbeat; an answer time runs from the read of the VMC's bytes to the written
    answer, inside the bus process."""

    state: str
    polls: int
    last_poll_age: float | None
    bytes_in: int
    blocks_out: int
    answers: int = 0
    answer_sum_s: float = 0.0
    answer_max_s: float = 0.0


class ExchangeKind(Enum):
    """What the VMC's words were: a block for us, one with a bad CHK (we NAK it), the VMC's
    reply to our data block (ACK, RET, NAK), or a BREAK on the line."""

    BLOCK = "block"
    BAD_CHECKSUM = "bad_checksum"
    ACK = "ack"
    RET = "ret"
    NAK = "nak"
    BUS_RESET = "bus_reset"


@dataclass(frozen=True, slots=True)
class Exchange:
    """One exchange for the bus monitor, raw: the daemon decodes it (:mod:`vmc.monitor`).

    ``vmc``: the VMC's block as hex, CHK included (empty for the one-word kinds); ``answer``:
    what we sent back, hex, CHK included (empty: nothing). ``answer_s`` as in the heartbeat;
    ``poll_gap_s``: for a POLL, the time since the previous POLL. ``dropped``: exchanges left
    out before this one because the daemon did not keep up.
    """

    at: float
    kind: ExchangeKind
    vmc: str
    answer: str
    wide: bool
    answer_s: float
    poll_gap_s: float | None
    dropped: int = 0


class Refusal(Enum):
    """Why the core refused a command: the state moved on, or the amount cannot be carried."""

    STATE = "state"
    MONEY = "money"


@dataclass(frozen=True, slots=True)
class CommandRefused:
    """A daemon command the core refused (a late approval, a session while disabled)."""

    command: str
    error: str
    refusal: Refusal = Refusal.STATE


@dataclass(frozen=True, slots=True)
class PortFailed:
    error: str


BusCommand = (
    BeginSession
    | ApproveVend
    | DenyVend
    | CancelSession
    | DecideRevalue
    | ShowText
    | Stop
    | Monitor
    | SetPrices
)
ExeReport = exe.LinkChanged | exe.VmcStatus | exe.ExeFault
BusReport = (
    Ready | Heartbeat | CommandRefused | PortFailed | Exchange | ev.CashlessEvent | ExeReport
)

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        BeginSession,
        ApproveVend,
        DenyVend,
        CancelSession,
        DecideRevalue,
        ShowText,
        Stop,
        Monitor,
        SetPrices,
        Ready,
        Heartbeat,
        CommandRefused,
        PortFailed,
        Exchange,
        ev.StateChanged,
        ev.ReaderReset,
        ev.Configured,
        ev.PricesSet,
        ev.VmcIdentified,
        ev.FeaturesEnabled,
        ev.SessionStarted,
        ev.SessionRefused,
        ev.SessionTimedOut,
        ev.SessionEnded,
        ev.VendRequested,
        ev.VendApprovedSent,
        ev.VendDeniedSent,
        ev.VendSucceeded,
        ev.VendFailed,
        ev.VendOutcomeUnknown,
        ev.CashSaleReported,
        ev.RevalueRequested,
        ev.RevalueResult,
        ev.ProtocolViolation,
        exe.LinkChanged,
        exe.VmcStatus,
        exe.ExeFault,
    )
}
# Fields that hold enums, by message class; everything else is JSON-plain already.
_ENUMS: dict[type[Any], dict[str, type[Enum]]] = {
    ev.StateChanged: {"old": ev.State, "new": ev.State},
    ev.VendDeniedSent: {"reason": ev.DenyReason},
    CommandRefused: {"refusal": Refusal},
    Exchange: {"kind": ExchangeKind},
    exe.ExeFault: {"fault": exe.Fault},
}


def encode(message: object) -> bytes:
    assert dataclasses.is_dataclass(message)
    assert not isinstance(message, type)
    fields = {f.name: _plain(getattr(message, f.name)) for f in dataclasses.fields(message)}
    fields["type"] = type(message).__name__
    return json.dumps(fields, separators=(",", ":")).encode()


def _plain(value: object) -> object:
    return value.name if isinstance(value, Enum) else value


def decode(data: bytes) -> Any:
    """Rebuild the dataclass a peer sent; anything else is a RemoteProtocolError."""
    try:
        obj = json.loads(data)
        cls = _TYPES[obj.pop("type")]
        for name, enum in _ENUMS.get(cls, {}).items():
            obj[name] = enum[obj[name]]
        return cls(**obj)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RemoteProtocolError(f"bad bus message {data[:80]!r}: {exc}") from exc
