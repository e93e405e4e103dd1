"""MDB cashless commands (VMC -> reader) and responses (reader -> VMC) as frozen dataclasses.

Layouts follow MDB/ICP 4.2 section 7 (cashless device); see ``shared/reference/mdb.md`` §2.
Blocks here carry no CHK: the link layer adds and checks it. Command bytes are given with the
address bits stripped (``block[0] & 0x07``), so one parser serves cashless #1 and #2.
Multi-byte numbers are big-endian. "Wide" means the level-3 32-bit monetary format
(expanded currency) that the VMC enabled with EXPANSION 04.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from protocols.errors import RemoteProtocolError

ACK = 0x00
RET = 0xAA
NAK = 0xFF


class Cmd(IntEnum):
    RESET = 0
    SETUP = 1
    POLL = 2
    VEND = 3
    READER = 4
    REVALUE = 5
    EXPANSION = 7


class SetupSub(IntEnum):
    CONFIG_DATA = 0x00
    MAX_MIN_PRICES = 0x01


class VendSub(IntEnum):
    REQUEST = 0x00
    CANCEL = 0x01
    SUCCESS = 0x02
    FAILURE = 0x03
    SESSION_COMPLETE = 0x04
    CASH_SALE = 0x05
    NEGATIVE_REQUEST = 0x06


class ReaderSub(IntEnum):
    DISABLE = 0x00
    ENABLE = 0x01
    CANCEL = 0x02


class RevalueSub(IntEnum):
    REQUEST = 0x00
    LIMIT_REQUEST = 0x01


class ExpansionSub(IntEnum):
    REQUEST_ID = 0x00
    WRITE_TIME_DATE = 0x03
    OPTIONAL_FEATURES = 0x04
    DIAGNOSTICS = 0xFF


class Resp(IntEnum):
    JUST_RESET = 0x00
    READER_CONFIG = 0x01
    DISPLAY_REQUEST = 0x02
    BEGIN_SESSION = 0x03
    SESSION_CANCEL_REQUEST = 0x04
    VEND_APPROVED = 0x05
    VEND_DENIED = 0x06
    END_SESSION = 0x07
    CANCELLED = 0x08
    PERIPHERAL_ID = 0x09
    MALFUNCTION = 0x0A
    OUT_OF_SEQUENCE = 0x0B
    REVALUE_APPROVED = 0x0D
    REVALUE_DENIED = 0x0E
    REVALUE_LIMIT = 0x0F
    TIME_DATE_REQUEST = 0x11
    DIAGNOSTIC = 0xFF


class Feature(IntEnum):
    """Level-3 option bits (PERIPHERAL ID bytes 30-33 and EXPANSION 04)."""

    FILE_TRANSPORT = 1 << 0
    WIDE_MONEY = 1 << 1
    MULTI_CURRENCY = 1 << 2
    NEGATIVE_VEND = 1 << 3
    DATA_ENTRY = 1 << 4
    ALWAYS_IDLE = 1 << 5


class PaymentType(IntEnum):
    """BEGIN SESSION payment type (L2+): the top two bits say test media or free vend."""

    NORMAL = 0x00
    TEST = 0x40
    FREE = 0x80


class MiscOption(IntEnum):
    """READER CONFIG byte 8."""

    REFUNDS = 1 << 0
    MULTIVEND = 1 << 1
    DISPLAY = 1 << 2
    CASH_SALE = 1 << 3


# Lengths including the address byte and CHK, keyed by (command, subcommand); the pair is
# (16-bit form, 32-bit "wide" form). None as subcommand: the command has none.
_LENGTHS: dict[tuple[int, int | None], tuple[int, int]] = {
    (Cmd.RESET, None): (2, 2),
    (Cmd.POLL, None): (2, 2),
    (Cmd.SETUP, SetupSub.CONFIG_DATA): (7, 7),
    (Cmd.SETUP, SetupSub.MAX_MIN_PRICES): (7, 13),
    (Cmd.VEND, VendSub.REQUEST): (7, 9),
    (Cmd.VEND, VendSub.CANCEL): (3, 3),
    (Cmd.VEND, VendSub.SUCCESS): (5, 5),
    (Cmd.VEND, VendSub.FAILURE): (3, 3),
    (Cmd.VEND, VendSub.SESSION_COMPLETE): (3, 3),
    (Cmd.VEND, VendSub.CASH_SALE): (7, 11),
    (Cmd.VEND, VendSub.NEGATIVE_REQUEST): (7, 9),
    (Cmd.READER, ReaderSub.DISABLE): (3, 3),
    (Cmd.READER, ReaderSub.ENABLE): (3, 3),
    (Cmd.READER, ReaderSub.CANCEL): (3, 3),
    (Cmd.REVALUE, RevalueSub.REQUEST): (5, 7),
    (Cmd.REVALUE, RevalueSub.LIMIT_REQUEST): (3, 3),
    (Cmd.EXPANSION, ExpansionSub.REQUEST_ID): (32, 32),
    (Cmd.EXPANSION, ExpansionSub.OPTIONAL_FEATURES): (7, 7),
}
_NO_SUB = {Cmd.RESET, Cmd.POLL}
MAX_BLOCK = 36
VARIABLE = ()


def block_lengths(prefix: bytes, *, wide: bool) -> tuple[int, ...] | None:
    """Candidate total lengths (with CHK) of the VMC block that starts with ``prefix``.

    ``None``: more bytes are needed to tell. An empty tuple: variable length, the block ends
    where its checksum matches. The SETUP max/min form is ambiguous before expanded currency
    is on (some VMCs send the wide form anyway), so both lengths are offered then.
    """
    cmd = prefix[0] & 0x07
    if cmd in _NO_SUB:
        return (2,)
    if len(prefix) < 2:
        return None
    pair = _LENGTHS.get((cmd, prefix[1]))
    if pair is None:
        return VARIABLE
    if cmd == Cmd.SETUP and prefix[1] == SetupSub.MAX_MIN_PRICES and not wide:
        return pair
    return (pair[1],) if wide else (pair[0],)


def _u(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _ascii(data: bytes) -> str:
    return data.decode("ascii", errors="replace")


# --- Commands ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reset:
    pass


@dataclass(frozen=True, slots=True)
class Poll:
    pass


@dataclass(frozen=True, slots=True)
class SetupConfig:
    vmc_level: int
    columns: int
    rows: int
    display_info: int


@dataclass(frozen=True, slots=True)
class SetupPrices:
    max_price: int
    min_price: int
    currency: int | None = None


@dataclass(frozen=True, slots=True)
class VendRequest:
    price: int
    item: int


@dataclass(frozen=True, slots=True)
class NegativeVendRequest:
    price: int
    item: int


@dataclass(frozen=True, slots=True)
class VendCancel:
    pass


@dataclass(frozen=True, slots=True)
class VendSuccess:
    item: int


@dataclass(frozen=True, slots=True)
class VendFailure:
    pass


@dataclass(frozen=True, slots=True)
class SessionComplete:
    pass


@dataclass(frozen=True, slots=True)
class CashSale:
    price: int
    item: int
    currency: int | None = None


@dataclass(frozen=True, slots=True)
class ReaderDisable:
    pass


@dataclass(frozen=True, slots=True)
class ReaderEnable:
    pass


@dataclass(frozen=True, slots=True)
class ReaderCancel:
    pass


@dataclass(frozen=True, slots=True)
class RevalueRequest:
    amount: int


@dataclass(frozen=True, slots=True)
class RevalueLimitRequest:
    pass


@dataclass(frozen=True, slots=True)
class ExpansionRequestId:
    manufacturer: str
    serial: str
    model: str
    software_version: int


@dataclass(frozen=True, slots=True)
class OptionalFeatures:
    bits: int


@dataclass(frozen=True, slots=True)
class ExpansionOther:
    """EXPANSION sub-commands vmc acknowledges without acting on (time/date, diagnostics)."""

    sub: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    command: int
    data: bytes


Command = (
    Reset
    | Poll
    | SetupConfig
    | SetupPrices
    | VendRequest
    | NegativeVendRequest
    | VendCancel
    | VendSuccess
    | VendFailure
    | SessionComplete
    | CashSale
    | ReaderDisable
    | ReaderEnable
    | ReaderCancel
    | RevalueRequest
    | RevalueLimitRequest
    | ExpansionRequestId
    | OptionalFeatures
    | ExpansionOther
    | UnknownCommand
)

_SIMPLE: dict[tuple[int, int], Command] = {
    (Cmd.VEND, VendSub.CANCEL): VendCancel(),
    (Cmd.VEND, VendSub.FAILURE): VendFailure(),
    (Cmd.VEND, VendSub.SESSION_COMPLETE): SessionComplete(),
    (Cmd.READER, ReaderSub.DISABLE): ReaderDisable(),
    (Cmd.READER, ReaderSub.ENABLE): ReaderEnable(),
    (Cmd.READER, ReaderSub.CANCEL): ReaderCancel(),
    (Cmd.REVALUE, RevalueSub.LIMIT_REQUEST): RevalueLimitRequest(),
}


def parse_command(block: bytes, *, wide: bool) -> Command:
    """Parse one VMC block (address byte first, CHK already stripped)."""
    if not block:
        raise RemoteProtocolError("empty block")
    cmd = block[0] & 0x07
    if cmd == Cmd.RESET:
        return Reset()
    if cmd == Cmd.POLL:
        return Poll()
    if len(block) < 2:
        raise RemoteProtocolError(f"command {cmd} without its subcommand")
    sub = block[1]
    body = block[2:]
    simple = _SIMPLE.get((cmd, sub))
    if simple is not None:
        return simple
    try:
        return _parse_with_body(cmd, sub, body, wide=wide)
    except IndexError as exc:  # pragma: no cover - lengths are checked by the link layer
        raise RemoteProtocolError(f"command {cmd:#x}/{sub:#x} is too short") from exc


def _money_fields(body: bytes, *, wide: bool) -> tuple[int, int, bytes]:
    width = 4 if wide else 2
    need = width + 2
    if len(body) < need:
        raise RemoteProtocolError(f"expected at least {need} bytes of price and item")
    return _u(body[:width]), _u(body[width : width + 2]), body[width + 2 :]


def _parse_with_body(cmd: int, sub: int, body: bytes, *, wide: bool) -> Command:
    if cmd == Cmd.SETUP and sub == SetupSub.CONFIG_DATA:
        _need(body, 4, "SETUP config data")
        return SetupConfig(body[0], body[1], body[2], body[3])
    if cmd == Cmd.SETUP and sub == SetupSub.MAX_MIN_PRICES:
        if len(body) >= 10:
            return SetupPrices(_u(body[0:4]), _u(body[4:8]), _u(body[8:10]))
        _need(body, 4, "SETUP max/min prices")
        return SetupPrices(_u(body[0:2]), _u(body[2:4]))
    if cmd == Cmd.VEND and sub == VendSub.REQUEST:
        price, item, _ = _money_fields(body, wide=wide)
        return VendRequest(price, item)
    if cmd == Cmd.VEND and sub == VendSub.NEGATIVE_REQUEST:
        price, item, _ = _money_fields(body, wide=wide)
        return NegativeVendRequest(price, item)
    if cmd == Cmd.VEND and sub == VendSub.SUCCESS:
        _need(body, 2, "VEND SUCCESS")
        return VendSuccess(_u(body[0:2]))
    if cmd == Cmd.VEND and sub == VendSub.CASH_SALE:
        price, item, rest = _money_fields(body, wide=wide)
        return CashSale(price, item, _u(rest[:2]) if wide and len(rest) >= 2 else None)
    if cmd == Cmd.REVALUE and sub == RevalueSub.REQUEST:
        width = 4 if wide else 2
        _need(body, width, "REVALUE request")
        return RevalueRequest(_u(body[:width]))
    if cmd == Cmd.EXPANSION and sub == ExpansionSub.REQUEST_ID:
        _need(body, 29, "EXPANSION request ID")
        return ExpansionRequestId(
            _ascii(body[0:3]), _ascii(body[3:15]), _ascii(body[15:27]), _u(body[27:29])
        )
    if cmd == Cmd.EXPANSION and sub == ExpansionSub.OPTIONAL_FEATURES:
        _need(body, 4, "EXPANSION optional features")
        return OptionalFeatures(_u(body[0:4]))
    if cmd == Cmd.EXPANSION:
        return ExpansionOther(sub, bytes(body))
    return UnknownCommand(cmd, bytes((sub, *body)))


def _need(body: bytes, n: int, what: str) -> None:
    if len(body) < n:
        raise RemoteProtocolError(f"{what} needs {n} data bytes, got {len(body)}")


# --- Responses ---------------------------------------------------------------------------


def _be(value: int, width: int) -> bytes:
    return value.to_bytes(width, "big")


def _field(text: str, width: int) -> bytes:
    return text.encode("ascii", errors="replace")[:width].rjust(width, b" ")


class CurrencyForm(IntEnum):
    """The two forms of MDB's country/currency code, told apart by the top nibble."""

    TELEPHONE = 0x0  # the older form: the country's international telephone code
    ISO4217 = 0x1  # ISO 4217 numeric currency code


_FORMS = frozenset(CurrencyForm)
CURRENCY_NUMBERS = range(1, 1000)  # three BCD digits
UNKNOWN_CURRENCY = 0xFFFF


@dataclass(frozen=True, slots=True)
class CurrencyCode:
    """READER CONFIG's (and the expanded BEGIN SESSION's) country/currency code.

    On the wire: the form in the top nibble, then three BCD digits; 0x1978 is ISO 4217 978
    (EUR) and 0x0049 is telephone code 49 (Germany). VMCs that predate ISO codes want the
    telephone form, so a reader must be able to send either.
    """

    number: int
    form: CurrencyForm = CurrencyForm.ISO4217

    def __post_init__(self) -> None:
        if self.number not in CURRENCY_NUMBERS:
            raise ValueError(f"a country/currency code is 1..999, not {self.number}")

    def to_word(self) -> int:
        return (self.form << 12) | int(f"{self.number:03d}", 16)

    @classmethod
    def from_word(cls, word: int) -> CurrencyCode | None:
        """Decode a code a peer sent; None for 0xFFFF (unknown)."""
        if word == UNKNOWN_CURRENCY:
            return None
        form, digits = word >> 12, f"{word & 0x0FFF:03x}"
        if form not in _FORMS or not digits.isdigit() or digits == "000":
            raise RemoteProtocolError(f"country/currency code {word:#06x} is not 0x0nnn or 0x1nnn")
        return cls(int(digits), CurrencyForm(form))


@dataclass(frozen=True, slots=True)
class JustReset:
    def to_bytes(self) -> bytes:
        return bytes((Resp.JUST_RESET,))


@dataclass(frozen=True, slots=True)
class ReaderConfigData:
    level: int
    currency: int
    scale_factor: int
    decimal_places: int
    max_response_time: int
    options: int

    def to_bytes(self) -> bytes:
        return bytes(
            (
                Resp.READER_CONFIG,
                self.level,
                *_be(self.currency, 2),
                self.scale_factor,
                self.decimal_places,
                self.max_response_time,
                self.options,
            )
        )


@dataclass(frozen=True, slots=True)
class DisplayRequest:
    tenths: int
    text: bytes

    def to_bytes(self) -> bytes:
        return bytes((Resp.DISPLAY_REQUEST, self.tenths)) + self.text


@dataclass(frozen=True, slots=True)
class BeginSession:
    """BEGIN SESSION in the layout of the operating level (3, 10 or 17 bytes)."""

    funds: int
    level: int = 1
    wide: bool = False
    media_id: int = 0
    payment_type: int = 0
    payment_data: int = 0
    language: bytes = b"en"
    currency: int = 0
    card_options: int = 0

    def to_bytes(self) -> bytes:
        if self.wide:
            return (
                bytes((Resp.BEGIN_SESSION,))
                + _be(self.funds, 4)
                + _be(self.media_id, 4)
                + bytes((self.payment_type,))
                + _be(self.payment_data, 2)
                + self.language[:2].ljust(2, b" ")
                + _be(self.currency, 2)
                + bytes((self.card_options,))
            )
        out = bytes((Resp.BEGIN_SESSION,)) + _be(self.funds, 2)
        if self.level >= 2:
            out += _be(self.media_id, 4) + bytes((self.payment_type,)) + _be(self.payment_data, 2)
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> BeginSession:
        """Read it as a VMC does: the length (3, 10 or 17 bytes) tells the layout.

        A 10-byte session reads back as level 2: levels 2 and 3 share that layout.
        """
        if len(data) not in (3, 10, 17) or data[0] != Resp.BEGIN_SESSION:
            raise RemoteProtocolError(f"BEGIN SESSION of {len(data)} bytes: {data.hex()}")
        if len(data) == 3:
            return cls(_u(data[1:3]))
        wide = len(data) == 17
        body = data[5:] if wide else data[3:]
        session = cls(
            _u(data[1:5] if wide else data[1:3]),
            level=3 if wide else 2,
            wide=wide,
            media_id=_u(body[0:4]),
            payment_type=body[4],
            payment_data=_u(body[5:7]),
        )
        if not wide:
            return session
        return replace(
            session, language=bytes(body[7:9]), currency=_u(body[9:11]), card_options=body[11]
        )


@dataclass(frozen=True, slots=True)
class SessionCancelRequest:
    def to_bytes(self) -> bytes:
        return bytes((Resp.SESSION_CANCEL_REQUEST,))


@dataclass(frozen=True, slots=True)
class VendApproved:
    amount: int
    wide: bool = False

    def to_bytes(self) -> bytes:
        return bytes((Resp.VEND_APPROVED,)) + _be(self.amount, 4 if self.wide else 2)


@dataclass(frozen=True, slots=True)
class VendDenied:
    def to_bytes(self) -> bytes:
        return bytes((Resp.VEND_DENIED,))


@dataclass(frozen=True, slots=True)
class EndSession:
    def to_bytes(self) -> bytes:
        return bytes((Resp.END_SESSION,))


@dataclass(frozen=True, slots=True)
class Cancelled:
    def to_bytes(self) -> bytes:
        return bytes((Resp.CANCELLED,))


@dataclass(frozen=True, slots=True)
class PeripheralId:
    manufacturer: str
    serial: str
    model: str
    software_version: int
    features: int | None = None

    def to_bytes(self) -> bytes:
        out = (
            bytes((Resp.PERIPHERAL_ID,))
            + _field(self.manufacturer, 3)
            + _field(self.serial, 12)
            + _field(self.model, 12)
            + _be(self.software_version, 2)
        )
        if self.features is not None:
            out += _be(self.features, 4)
        return out


@dataclass(frozen=True, slots=True)
class Malfunction:
    code: int

    def to_bytes(self) -> bytes:
        return bytes((Resp.MALFUNCTION, self.code))


@dataclass(frozen=True, slots=True)
class OutOfSequence:
    state: int | None = None

    def to_bytes(self) -> bytes:
        if self.state is None:
            return bytes((Resp.OUT_OF_SEQUENCE,))
        return bytes((Resp.OUT_OF_SEQUENCE, self.state))


@dataclass(frozen=True, slots=True)
class RevalueApproved:
    def to_bytes(self) -> bytes:
        return bytes((Resp.REVALUE_APPROVED,))


@dataclass(frozen=True, slots=True)
class RevalueDenied:
    def to_bytes(self) -> bytes:
        return bytes((Resp.REVALUE_DENIED,))


@dataclass(frozen=True, slots=True)
class RevalueLimit:
    amount: int
    wide: bool = False

    def to_bytes(self) -> bytes:
        return bytes((Resp.REVALUE_LIMIT,)) + _be(self.amount, 4 if self.wide else 2)


Response = (
    JustReset
    | ReaderConfigData
    | DisplayRequest
    | BeginSession
    | SessionCancelRequest
    | VendApproved
    | VendDenied
    | EndSession
    | Cancelled
    | PeripheralId
    | Malfunction
    | OutOfSequence
    | RevalueApproved
    | RevalueDenied
    | RevalueLimit
)


def response_name(code: int) -> str:
    """Name of a reader response code, for logs and trace comments."""
    try:
        return Resp(code).name
    except ValueError:
        return f"UNKNOWN_{code:02X}"
