"""The cloud contract as typed messages: commands the backend sends, what the device reports.

Money is always an integer count of minor units together with the ISO 4217 numeric currency
code and its number of decimals. Times are POSIX seconds (UTC) as floats. ``docs/cloud-api.md``
documents every field; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from vmc.offline import Limit

CONTRACT_VERSION = 1
LOCAL_PREFIX = "local:"
"""The id of an operation made with ``vmctl`` (a stock operation, a data request) is this and
its local id: the cloud can tell it from its own ids, and the codec refuses cloud data request
ids that start with it, so the two never collide."""


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
    DUPLICATE = "duplicate"
    NO_DEX_PORT = "no_dex_port"
    BAD_SIGNATURE = "bad_signature"
    STORAGE_FULL = "storage_full"


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
    CASH_COLLECT = "cash.collect"
    SALES_QUERY = "sales.query"
    STOCK_QUERY = "stock.query"
    TXN_QUERY = "txn.query"
    REFUND = "refund"
    DATA_REQUEST = "data.request"
    STATUS_CHECK = "status.check"
    VOUCHER = "voucher"
    CREDIT = "credit"
    OFFLINE_ALLOW = "offline.allow"


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
    """Seed 004 ``restock_only``: every selection and ingredient to its par level; with
    ``collect``, seed 004 ``restock``: the same plus a cash collection in the same commit."""

    id: str
    expires: float
    collect: bool = False


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


@dataclass(frozen=True, slots=True)
class DataRequest:
    """Seed 003's data request (``report``: an audit read now, ``config``: what vmc holds of the
    machine's configuration), seed 004's ``dex``; ``request_id`` defaults to the command id."""

    id: str
    expires: float
    request_id: str
    report: bool
    config: bool


@dataclass(frozen=True, slots=True)
class CheckStatus:
    """Seed 004's ``check_status``: idle or busy, and why, answered at once in the reply."""

    id: str
    expires: float


@dataclass(frozen=True, slots=True)
class StockQuery:
    """Seed 004's coils and coil alarms: the stock as :func:`vmc.stock_view.stock_view` shows
    it, only the keys in ``conditions`` when given (``low``/``empty``: the alarms)."""

    id: str
    expires: float
    conditions: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class TxnQuery:
    """Seed 004's transaction list: the journal's transactions created on local days
    ``since_date``..``to_date``, ``limit`` at a time, after the ``after`` one (a cursor)."""

    id: str
    expires: float
    since_date: str
    to_date: str | None = None
    selection: int | None = None
    after: str | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class CashCollect:
    """A cash collection without a restock (a route visit that only empties the cash box)."""

    id: str
    expires: float


@dataclass(frozen=True, slots=True)
class Refund:
    """Seed 004 ``refund``: record a refund against a finished vend. The backend moves the
    money; the machine keeps the record so its sales reports net it out as the books do.

    ``amount`` None refunds what is left; ``refund_id`` None makes the command id the refund's.
    """

    id: str
    expires: float
    txn_id: str
    amount: int | None = None
    reason: str = ""
    refund_id: str | None = None

    @property
    def key(self) -> str:
        """The refund's id: a refund id seen before is a duplicate, not a second refund."""
        return self.id if self.refund_id is None else self.refund_id


@dataclass(frozen=True, slots=True)
class OfflineAllow:
    """The allow-list for offline approvals (:mod:`vmc.offline`): it replaces the list in
    force; ``issued_at`` is when the backend made it (POSIX s, its clock)."""

    id: str
    expires: float
    version: int
    issued_at: float
    limits: tuple[Limit, ...]


AnyCommand = (
    Command
    | StockCommand
    | SalesQuery
    | StockQuery
    | TxnQuery
    | CashCollect
    | Refund
    | DataRequest
    | CheckStatus
    | OfflineAllow
)


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
    offline: bool = False
    """Approved by the machine while the cloud was unreachable, under allow-list
    ``list_version`` (:mod:`vmc.offline`)."""
    list_version: int | None = None


@dataclass(frozen=True, slots=True)
class TxnRefund:
    """A refund recorded against a vend: ``amount`` now, ``refunded`` in all of ``charged``.

    ``result`` is the vend's (``success``, ``failure``, ``unknown``): only a success was a sale.
    """

    txn_id: str
    ref: str | None
    refund_id: str
    result: str
    selection: int
    amount: int
    charged: int
    refunded: int
    currency: int
    decimals: int
    vend_type: VendType
    reason: str


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
class BadSignature:
    """A command refused for its signature (:mod:`vmc.cloud.signing`): what it said it was
    and why, so the backend hears of a forgery or a key it forgot to roll out. No bytes of it."""

    command_id: str
    op: str
    reason: str
    kid: str | None


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


@dataclass(frozen=True, slots=True)
class CollectionReport:
    """Seed 004's collection report: the takings between the previous collection and this one.

    ``sales`` comes from the journal's sales rows in ``[since, until)``; ``audit`` holds the
    coin mechanism's counters of an audit read for this collection and their change since the
    audit of the previous collection, or is null with ``audit_error`` saying why.
    """

    collection_id: str
    restock: bool
    since: float | None
    until: float
    currency: int
    decimals: int
    sales: Mapping[str, object]
    audit: Mapping[str, object] | None
    audit_error: Mapping[str, object] | None


@dataclass(frozen=True, slots=True)
class DataProgress:
    """A DEX read that answers data requests received more: bytes and blocks so far."""

    request_ids: list[str]
    read_id: str
    received: int
    blocks: int


@dataclass(frozen=True, slots=True)
class DataResult:
    """The one completion of a data request: the report's read, the config, or the error."""

    request_id: str
    ok: bool
    read_id: str | None
    report: Mapping[str, object] | None
    config: Mapping[str, object] | None
    error: Mapping[str, object] | None


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """The compatibility self-test's profile (:mod:`vmc.profile`) when it changed: what the
    VMC said on the bus, what the audit reads show, what that means, and which keys changed."""

    mdb: Mapping[str, object]
    dex: Mapping[str, object]
    verdicts: Mapping[str, object]
    changed: list[str]
    updated_at: float | None


Event = (
    TxnRequest
    | TxnVend
    | TxnStatus
    | TxnRefund
    | VoucherStatus
    | CreditStatus
    | Sale
    | BadSignature
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
    | CollectionReport
    | DataProgress
    | DataResult
    | DeviceProfile
)

EVENT_TYPES: dict[type, str] = {
    TxnRequest: "txn.request",
    TxnVend: "txn.vend",
    TxnStatus: "txn.status",
    TxnRefund: "txn.refund",
    VoucherStatus: "voucher.status",
    CreditStatus: "credit.status",
    Sale: "sale",
    BadSignature: "security.bad_signature",
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
    CollectionReport: "collection.report",
    DataProgress: "data.progress",
    DataResult: "data.result",
    DeviceProfile: "device.profile",
}
