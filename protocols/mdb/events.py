"""What the cashless core tells the application (the layer that talks to the cloud).

Amounts are integers in vmc's minor unit; ``vend_id`` correlates a request with its outcome
and with the application's approve/deny call.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class State(Enum):
    """Reader states of MDB 4.2 §7.2; the value is the state byte of OUT OF SEQUENCE."""

    INACTIVE = 1
    DISABLED = 2
    ENABLED = 3
    SESSION_IDLE = 4
    VEND = 5
    REVALUE = 6
    NEGATIVE_VEND = 7


class DenyReason(Enum):
    APPLICATION = "application"
    APPROVAL_TIMEOUT = "approval_timeout"
    CANCELLED_BY_VMC = "cancelled_by_vmc"
    READER_RESET = "reader_reset"
    SESSION_ENDED = "session_ended"
    NOT_REPRESENTABLE = "not_representable"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class StateChanged:
    old: State
    new: State


@dataclass(frozen=True, slots=True)
class ReaderReset:
    """RESET or a bus reset; whatever was in flight has been settled by other events."""

    bus_reset: bool


@dataclass(frozen=True, slots=True)
class Configured:
    """SETUP config data: the VMC's level and display (columns x rows, 0 x 0 for none)."""

    vmc_level: int
    columns: int
    rows: int
    operating_level: int
    display_info: int = 0


@dataclass(frozen=True, slots=True)
class PricesSet:
    max_price: int
    min_price: int


@dataclass(frozen=True, slots=True)
class VmcIdentified:
    manufacturer: str
    serial: str
    model: str
    software_version: int


@dataclass(frozen=True, slots=True)
class FeaturesEnabled:
    features: int


@dataclass(frozen=True, slots=True)
class SessionStarted:
    funds: int | None


@dataclass(frozen=True, slots=True)
class SessionRefused:
    """A begin-session could not be delivered (reader disabled, reset or cancelled)."""

    reason: str


@dataclass(frozen=True, slots=True)
class SessionTimedOut:
    """No selection within the session timeout: the reader asked the VMC to end it."""


@dataclass(frozen=True, slots=True)
class SessionEnded:
    pass


@dataclass(frozen=True, slots=True)
class VendRequested:
    vend_id: int
    item: int
    price: int
    negative: bool = False


@dataclass(frozen=True, slots=True)
class VendApprovedSent:
    vend_id: int
    amount: int


@dataclass(frozen=True, slots=True)
class VendDeniedSent:
    vend_id: int
    reason: DenyReason


@dataclass(frozen=True, slots=True)
class VendSucceeded:
    vend_id: int
    item: int
    amount: int


@dataclass(frozen=True, slots=True)
class VendFailed:
    vend_id: int
    item: int
    amount: int


@dataclass(frozen=True, slots=True)
class VendOutcomeUnknown:
    """An approved vend ended without VEND SUCCESS or FAILURE (timeout, reset, session end)."""

    vend_id: int
    item: int
    amount: int
    reason: str


@dataclass(frozen=True, slots=True)
class CashSaleReported:
    item: int
    price: int


@dataclass(frozen=True, slots=True)
class RevalueRequested:
    amount: int


@dataclass(frozen=True, slots=True)
class RevalueResult:
    amount: int
    approved: bool


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The VMC sent something the current state does not allow, or a block failed CHK."""

    detail: str


CashlessEvent = (
    StateChanged
    | ReaderReset
    | Configured
    | PricesSet
    | VmcIdentified
    | FeaturesEnabled
    | SessionStarted
    | SessionRefused
    | SessionTimedOut
    | SessionEnded
    | VendRequested
    | VendApprovedSent
    | VendDeniedSent
    | VendSucceeded
    | VendFailed
    | VendOutcomeUnknown
    | CashSaleReported
    | RevalueRequested
    | RevalueResult
    | ProtocolViolation
)
