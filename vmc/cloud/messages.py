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
    NO_PLANOGRAM = "no_planogram"
    UNKNOWN_KEY = "unknown_key"
    BAD_AMOUNT = "bad_amount"


class VendType(StrEnum):
    """Seed 003's vend types: only ``paid`` vends are money the backend collected."""

    PAID = "paid"
    FREE = "free"
    TEST = "test"


class PaymentMedium(StrEnum):
    """How the customer paid the backend (seed 004's card vend types, plus the app).

    A label the backend gives a lock, voucher or credit; the machine reports it with the vend
    and aggregates its sales by it. It changes nothing on the bus.
    """

    CONTACTLESS = "contactless"
    CONTACT = "contact"
    RFID = "rfid"
    BALANCE = "balance"
    MEMBERSHIP = "membership"
    CARD_ON_FILE = "card_on_file"
    APP = "app"
    OTHER = "other"


class Op(StrEnum):
    LOCK = "lock"
    UNLOCK = "unlock"
    PAID = "paid"
    DENY = "deny"
    PLANOGRAM_SET = "planogram.set"
    STOCK_REFILL = "stock.refill"
    STOCK_INVENTORY = "stock.inventory"
    STOCK_RESTOCK = "stock.restock"
    SALES_QUERY = "sales.query"
    VOUCHER = "voucher"
    CREDIT = "credit"


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
    medium: PaymentMedium | None = None
    surcharge: int = 0


@dataclass(frozen=True, slots=True)
class Voucher:
    """Seed 002: a session the machine pays for itself, for one of ``selections`` (None: any).

    ``value`` None is the planogram price (the highest of the set): resolved when it arrives.
    """

    id: str
    expires: float
    voucher_id: str
    selections: tuple[int, ...] | None = None
    value: int | None = None
    timeout_s: float | None = None
    ref: str | None = None
    medium: PaymentMedium | None = None
    surcharge: int = 0


@dataclass(frozen=True, slots=True)
class Credit:
    """Seed 004 ``remote_credit``: ``amount`` for any selection, several vends on a multi-vend
    VMC; what is left is reported when the session ends."""

    id: str
    expires: float
    credit_id: str
    amount: int
    timeout_s: float | None = None
    ref: str | None = None
    medium: PaymentMedium | None = None
    surcharge: int = 0


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


Command = Lock | Unlock | Paid | Deny | Voucher | Credit


@dataclass(frozen=True, slots=True)
class StockLine:
    """One selection (MDB item number) or one ingredient id, with an amount or a level."""

    selection: int | None
    ingredient: str | None
    quantity: int


@dataclass(frozen=True, slots=True)
class SetPlanogram:
    """The whole planogram document, validated by :meth:`vmc.planogram.Planogram.from_mapping`."""

    id: str
    expires: float
    document: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class Refill:
    """Seed 003 ``loading``: add (+) or remove (-) ``quantity`` per line, all or nothing."""

    id: str
    expires: float
    lines: tuple[StockLine, ...]


@dataclass(frozen=True, slots=True)
class TakeInventory:
    """Seed 003 ``inventory``: ``quantity`` is the absolute level counted."""

    id: str
    expires: float
    lines: tuple[StockLine, ...]


@dataclass(frozen=True, slots=True)
class RestockToPar:
    """Seed 004 ``restock_only``: every selection and ingredient to its par level."""

    id: str
    expires: float


StockCommand = SetPlanogram | Refill | TakeInventory | RestockToPar


@dataclass(frozen=True, slots=True)
class SalesQuery:
    """Seeds 002/004: the sales of local days ``since_date``..``to_date`` (ISO dates), answered
    in the reply. Named ``sales.query`` because ``sales.report`` is the event after an audit."""

    id: str
    expires: float
    since_date: str
    to_date: str | None = None
    selection: int | None = None


AnyCommand = Command | StockCommand | SalesQuery


def expired_reply(cmd: AnyCommand, now: float) -> Reply | None:
    """The refusal of a command that arrived after its ``expires``; None while it is current.

    One rule for every command: a backend that gave up on it must not see it act.
    """
    if cmd.expires >= now:
        return None
    return Reply(cmd.id, False, ErrorCode.EXPIRED, "the command expired before it arrived")


# --- device -> backend ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one command, correlated by the command's id."""

    command_id: str | None
    ok: bool
    code: ErrorCode | None = None
    message: str = ""
    result: Mapping[str, object] = field(default_factory=dict)


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
    medium: PaymentMedium | None = None
    surcharge: int = 0


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
    medium: PaymentMedium | None = None
    surcharge: int = 0
    voucher_id: str | None = None
    credit_id: str | None = None


@dataclass(frozen=True, slots=True)
class TxnStatus:
    """A transaction ended without a vend (denied, expired, cancelled) or a late paid was void."""

    txn_id: str
    ref: str | None
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class VoucherStatus:
    """A voucher's one outcome: ``used`` (by ``txn_id``), ``expired`` or ``cancelled``."""

    voucher_id: str
    ref: str | None
    state: str
    reason: str
    value: int
    charged: int
    selection: int | None
    txn_id: str | None
    currency: int
    decimals: int
    medium: PaymentMedium | None
    surcharge: int


@dataclass(frozen=True, slots=True)
class CreditStatus:
    """A credit's one outcome, when its session ended: ``rest`` is the backend's to return."""

    credit_id: str
    ref: str | None
    state: str
    reason: str
    amount: int
    used: int
    rest: int
    vends: int
    txn_ids: tuple[str, ...]
    currency: int
    decimals: int
    medium: PaymentMedium | None
    surcharge: int


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
class StockLevel:
    """One level change; ``op_id`` is the operation (command id, txn id) that caused it."""

    op_id: str
    selection: int | None
    ingredient: str | None
    before: int
    after: int
    reason: str


@dataclass(frozen=True, slots=True)
class StockAlarm:
    """A key crossed into ``low``/``empty`` or back to ``ok``; sent once per crossing."""

    op_id: str
    selection: int | None
    ingredient: str | None
    before: str
    condition: str
    level: int


@dataclass(frozen=True, slots=True)
class StockDiscrepancy:
    """A vend the count could not account for: ``missing`` units were not there."""

    op_id: str
    kind: str
    selection: int
    ingredient: str | None
    missing: int


@dataclass(frozen=True, slots=True)
class PlanogramChanged:
    op_id: str
    before: int | None
    version: int


@dataclass(frozen=True, slots=True)
class AuditFailed:
    """A read that failed or was partial; the baseline did not move."""

    read_id: str
    read_at: float
    trigger: str
    step: str
    reason: str
    received: int


@dataclass(frozen=True, slots=True)
class StockReconcile:
    """A selection whose audit count (PA2 delta) differs from the paid vends seen on the bus.

    Both count the interval between the baseline read (``since``) and this one (``until``);
    ``audit_vends`` is null when the audit does not list the selection.
    """

    read_id: str
    baseline_read_id: str | None
    selection: int
    since: float
    until: float
    audit_vends: int | None
    bus_vends: int


Event = (
    TxnRequest
    | TxnVend
    | TxnStatus
    | VoucherStatus
    | CreditStatus
    | Sale
    | AuditReport
    | AuditSummary
    | AuditDelta
    | SalesReport
    | MachineEvent
    | AuditFailed
    | StockLevel
    | StockAlarm
    | StockDiscrepancy
    | PlanogramChanged
    | StockReconcile
)

EVENT_TYPES: dict[type, str] = {
    TxnRequest: "txn.request",
    TxnVend: "txn.vend",
    TxnStatus: "txn.status",
    VoucherStatus: "voucher.status",
    CreditStatus: "credit.status",
    Sale: "sale",
    AuditReport: "audit.report",
    AuditSummary: "audit.summary",
    AuditDelta: "audit.delta",
    SalesReport: "sales.report",
    MachineEvent: "event",
    AuditFailed: "audit.failed",
    StockLevel: "stock.level",
    StockAlarm: "stock.alarm",
    StockDiscrepancy: "stock.discrepancy",
    PlanogramChanged: "planogram.changed",
    StockReconcile: "stock.reconcile",
}
