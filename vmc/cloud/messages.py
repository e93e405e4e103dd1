"""The cloud contract as typed messages: commands the backend sends, what the device reports.

Money is always an integer count of minor units together with the ISO 4217 numeric currency
code and its number of decimals. Times are POSIX seconds (UTC) as floats. ``docs/cloud-api.md``
documents every field; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

CONTRACT_VERSION = 1


class ErrorCode(StrEnum):
    """Why a command was refused; stable strings a backend can switch on."""

    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_OP = "unknown_op"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    EXPIRED = "expired"
    BUSY = "busy"
    READER_UNAVAILABLE = "reader_unavailable"
    NO_SUCH_TXN = "no_such_txn"
    WRONG_STATE = "wrong_state"
    TOO_LATE = "too_late"
    AMOUNT_MISMATCH = "amount_mismatch"


class VendType(StrEnum):
    """Seed 003's vend types: only ``paid`` vends are money the backend collected."""

    PAID = "paid"
    FREE = "free"
    TEST = "test"


class Op(StrEnum):
    LOCK = "lock"
    UNLOCK = "unlock"
    PAID = "paid"
    DENY = "deny"


# --- commands (backend -> device) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lock:
    """Open a session for one vend; ``limit`` caps the price (None: funds unknown)."""

    id: str
    expires: float
    ref: str | None = None
    limit: int | None = None
    timeout_s: float | None = None
    vend_type: VendType = VendType.PAID


@dataclass(frozen=True, slots=True)
class Unlock:
    id: str
    expires: float
    txn_id: str


@dataclass(frozen=True, slots=True)
class Paid:
    id: str
    expires: float
    txn_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class Deny:
    id: str
    expires: float
    txn_id: str
    reason: str = ""


Command = Lock | Unlock | Paid | Deny


# --- device -> backend ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one command, correlated by the command's id."""

    command_id: str | None
    ok: bool
    code: ErrorCode | None = None
    message: str = ""
    result: dict[str, str | int | float | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TxnRequest:
    """Step 3: the customer selected; the backend answers ``paid`` or ``deny`` by ``deadline``."""

    txn_id: str
    ref: str | None
    selection: int
    price: int
    currency: int
    decimals: int
    deadline: float
    vend_type: VendType


@dataclass(frozen=True, slots=True)
class TxnVend:
    """Step 7: what the machine did. ``unknown`` when it cannot tell (power cut mid-vend)."""

    txn_id: str
    ref: str | None
    result: str  # "success" | "failure" | "unknown"
    selection: int
    amount: int
    currency: int
    decimals: int
    vend_type: VendType
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TxnStatus:
    """A transaction ended without a vend (denied, expired, cancelled) or a late paid was void."""

    txn_id: str
    ref: str | None
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class Sale:
    """A sale the VMC reported on the bus that did not go through vmc (cash)."""

    payment: str
    selection: int
    price: int
    currency: int
    decimals: int


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Seed 003's EVA-DTS report: the raw audit as read from DEX port 1 or 2.

    ``data`` is the text decoded with ``encoding``; with ``base64`` it is the base64 of the
    raw bytes instead. ``valid``: complete and its G85 did not mismatch.
    """

    read_id: str
    read_at: float
    trigger: str
    evadts_port: int
    encoding: str
    base64: bool
    data: str
    size: int
    complete: bool
    crc: str
    valid: bool


@dataclass(frozen=True, slots=True)
class AuditSummary:
    """What the audit says, in the shape of ``vmctl dex parse --json``."""

    read_id: str
    summary: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class AuditDelta:
    """What changed since the previous valid read (the baseline)."""

    read_id: str
    baseline_read_id: str | None
    delta: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class SalesReport:
    """Seed 002's sales report per slot, for the period between two reads."""

    read_id: str
    since: float | None
    until: float
    currency: int | None
    decimals: int
    slots: list[Mapping[str, object]]


@dataclass(frozen=True, slots=True)
class MachineEvent:
    """An EVA-DTS event the machine recorded (seed 003's events, e.g. EGS door open)."""

    read_id: str
    source: str
    code: str
    date: str | None
    time: str | None
    duration: int | None
    count: int | None
    active: bool | None


@dataclass(frozen=True, slots=True)
class AuditFailed:
    """A read that failed or was partial; the baseline did not move."""

    read_id: str
    read_at: float
    trigger: str
    step: str
    reason: str
    received: int


Event = (
    TxnRequest
    | TxnVend
    | TxnStatus
    | Sale
    | AuditReport
    | AuditSummary
    | AuditDelta
    | SalesReport
    | MachineEvent
    | AuditFailed
)

EVENT_TYPES: dict[type, str] = {
    TxnRequest: "txn.request",
    TxnVend: "txn.vend",
    TxnStatus: "txn.status",
    Sale: "sale",
    AuditReport: "audit.report",
    AuditSummary: "audit.summary",
    AuditDelta: "audit.delta",
    SalesReport: "sales.report",
    MachineEvent: "event",
    AuditFailed: "audit.failed",
}
