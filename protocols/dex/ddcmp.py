"""Enhanced DDCMP (EVA-DTS 6.2 ch. 3): frame codec, the data carrier's reader, the VMC's server.

Theory of operation. Enhanced DDCMP is a subset of DEC's DDCMP: half duplex, stop and wait,
byte-counted frames. Every frame opens with an 8-byte header, six bytes and their CRC-16/ARC
(LS byte first)::

    control  05 TYPE FLAGS|SUB RESP NUM ADDR CRC            ACK 01, NACK 02, REP 03,
                                                             START 06, STACK 07
    data     81 CNT_LO FLAGS|CNT_HI RESP NUM ADDR CRC  DATA[CNT] CRC(DATA)

FLAGS is 40h (DEC's QSYNC) on everything sent; a data message adds 80h (SELECT) when it is the
sender's last before the line turns round. CNT is 14 bits, so one message carries at most
16383 bytes. Each side numbers its data messages (NUM) from 1, mod 256; RESP in an ACK or a
data message acknowledges the peer's last message received in order. A NACK (SUB 1 = header
CRC, 2 = data CRC) makes the peer repeat its unacknowledged message. ADDR, the station, is 01.

A read by the data carrier (the master, :class:`DdcmpReader`) has five steps::

    start        START at 2400 Bd until STACK (250 ms each, 10 attempts); both ends then
                 switch to the speed STACK names
    who-are-you  77 E0 ...          -> ACK, 88 E0 <status> <identity>          -> ACK
    read-data    77 E2 ... list 01  -> ACK, 88 E2 <status> <list> ... <length> -> ACK
    transfer     99 <block> <audit bytes>, SELECT on the last                  -> ACK each
    finish       77 FF              -> ACK

Our data messages are repeated after 170 ms without an ACK (plus their time on the wire),
damaged frames are NACKed; five attempts each. A NACK's RESP acknowledges like an ACK's; a NACK
that comes once the attempts are spent may be about an earlier copy, so the last attempt's
timer still decides. A copy of a message already taken is ACKed again, never taken twice. With
no valid frame for 5 s (15 s while reading data) the link is dead; that is also how a read ends
when the VMC spent its own five attempts before our ACK reached it and went idle. A reply
waits 40 ms after the last byte heard (turnaround); a frame whose bytes pause for more than
65 ms is dropped and the stream resynchronises on the next header. :class:`DdcmpSlave` is the
VMC side for the simulator, with injectable faults.

Layouts marked [verify] come from DEC DDCMP and from a field reader's frames, not from the
EVA-DTS 6.2 PDF itself; check them against ch. 3 before trusting a real machine with them:

- [verify] START and STACK carry a speed code in their RESP byte (0 2400, 1 4800, 2 9600,
  3 19200, 4 38400, 5 57600, 6 115200); STACK names the speed the VMC takes, at most the one
  proposed. Code 0 asks for no change, which is what a field reader sends.
- [verify] who-are-you command, 16 bytes: 77 E0 00, security code (2, LE), pass code (2, LE),
  date DD MM YY and time HH MM SS (BCD), user id (2, LE), one last byte (0Ch from the field
  reader; meaning unknown).
- [verify] who-are-you response: 88 E0, status (00 = accepted), then the VMC's identity.
- [verify] read-data command, 9 bytes: 77 E2 00, list (01 audit collection), record (01),
  offset (2, LE), length (2, LE; 0 = all).
- [verify] read-data response: 88 E2, status (00 = accepted), list, record, offset (2, LE),
  length of the data (2, LE; FFFFh = not known in advance).
- [verify] data block: 99, block number (from 0, mod 256), audit bytes; finish: 77 FF.
- [verify] SELECT is set on the who-are-you response and on the last data block.
- A finish the VMC never acknowledges does not fail a read whose data all arrived intact.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum

from protocols.crc16 import crc16_arc
from protocols.dex import DexError, DexTimeoutError, Finished, Progress, Send

CONTROL = 0x05
DATA = 0x81
QSYNC = 0x40
SELECT = 0x80
STATION = 0x01
HEADER_LEN = 8
MAX_DATA = 0x3FFF
START_BAUD = 2400
BAUD_CODES: dict[int, int] = {
    0: 2400,
    1: 4800,
    2: 9600,
    3: 19200,
    4: 38400,
    5: 57600,
    6: 115200,
}
_CODE_OF_BAUD = {baud: code for code, baud in BAUD_CODES.items()}

COMMAND = 0x77
RESPONSE = 0x88
BLOCK = 0x99
AUDIT_LIST = 0x01
LENGTH_UNKNOWN = 0xFFFF
DEFAULT_BLOCK_SIZE = 240


class DdcmpError(DexError):
    """An Enhanced DDCMP read or frame failed; ``step`` is a :class:`Step` value or "frame"."""


class DdcmpTimeoutError(DdcmpError, DexTimeoutError):
    """The peer went quiet: no STACK, no ACK, or no valid frame within the link timeout."""


class ControlType(IntEnum):
    ACK = 0x01
    NACK = 0x02
    REP = 0x03
    START = 0x06
    STACK = 0x07


class NackReason(IntEnum):
    HEADER_CRC = 1
    DATA_CRC = 2
    REP_RESPONSE = 3


class Op(IntEnum):
    """Application codes after 77h (command) or 88h (response)."""

    WHO_ARE_YOU = 0xE0
    READ_DATA = 0xE2
    FINISH = 0xFF


class Step(StrEnum):
    START = "start"
    WHO_ARE_YOU = "who-are-you"
    READ_DATA = "read-data"
    TRANSFER = "transfer"
    FINISH = "finish"


@dataclass(frozen=True, slots=True)
class Timing:
    """EVA-DTS 6.2 ch. 3 timers and limits; tests shorten them."""

    stack_timeout: float = 0.25
    ack_timeout: float = 0.17
    link_timeout: float = 5.0
    data_link_timeout: float = 15.0
    inter_char: float = 0.065
    turnaround: float = 0.04
    start_attempts: int = 10
    data_attempts: int = 5


DEFAULT_TIMING = Timing()


# --- frames -------------------------------------------------------------------------------


def _crc_bytes(data: bytes | bytearray) -> bytes:
    return crc16_arc(data).to_bytes(2, "little")


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} {value} does not fit a byte")


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """An 8-byte control message; ``resp`` is the baud code in START/STACK."""

    type: ControlType
    subtype: int = 0
    resp: int = 0
    num: int = 0
    address: int = STATION
    flags: int = QSYNC

    def __post_init__(self) -> None:
        if not 0 <= self.subtype <= 0x3F:
            raise ValueError(f"subtype {self.subtype} does not fit 6 bits")
        if self.flags & ~0xC0:
            raise ValueError(f"flags {self.flags:#x} are not 40h/80h bits")
        for name in ("resp", "num", "address"):
            _check_byte(name, getattr(self, name))

    @classmethod
    def ack(cls, resp: int) -> ControlMessage:
        return cls(ControlType.ACK, resp=resp)

    @classmethod
    def nack(cls, reason: NackReason, resp: int) -> ControlMessage:
        return cls(ControlType.NACK, subtype=reason, resp=resp)

    @classmethod
    def start(cls, baud: int = START_BAUD) -> ControlMessage:
        return cls(ControlType.START, resp=baud_code(baud))

    @classmethod
    def stack(cls, baud: int = START_BAUD) -> ControlMessage:
        return cls(ControlType.STACK, resp=baud_code(baud))

    @property
    def baud(self) -> int | None:
        """The speed a START proposes or a STACK accepts; None for an unknown code."""
        return BAUD_CODES.get(self.resp)

    def to_bytes(self) -> bytes:
        head = bytes(
            (CONTROL, self.type, self.flags | self.subtype, self.resp, self.num, self.address)
        )
        return head + _crc_bytes(head)

    @classmethod
    def from_bytes(cls, frame: bytes | bytearray) -> ControlMessage:
        if len(frame) != HEADER_LEN or frame[0] != CONTROL:
            raise DdcmpError("frame", f"not a control message: {bytes(frame).hex(' ')}")
        if crc16_arc(frame[:6]) != int.from_bytes(frame[6:8], "little"):
            raise DdcmpError("frame", "control message CRC mismatch")
        try:
            kind = ControlType(frame[1])
        except ValueError:
            raise DdcmpError("frame", f"unknown control message type {frame[1]:#04x}") from None
        return cls(kind, frame[2] & 0x3F, frame[3], frame[4], frame[5], frame[2] & 0xC0)


@dataclass(frozen=True, slots=True)
class DataMessage:
    """A data message: header with count, its CRC, the data and the data's CRC."""

    data: bytes
    num: int
    resp: int = 0
    select: bool = False
    address: int = STATION

    def __post_init__(self) -> None:
        if not 1 <= len(self.data) <= MAX_DATA:
            raise ValueError(f"a data message carries 1..{MAX_DATA} bytes, not {len(self.data)}")
        for name in ("resp", "num", "address"):
            _check_byte(name, getattr(self, name))

    def header(self) -> bytes:
        count = len(self.data)
        flags = QSYNC | (SELECT if self.select else 0)
        head = bytes((DATA, count & 0xFF, flags | count >> 8, self.resp, self.num, self.address))
        return head + _crc_bytes(head)

    def to_bytes(self) -> bytes:
        return self.header() + self.data + _crc_bytes(self.data)

    @classmethod
    def from_bytes(cls, frame: bytes | bytearray) -> DataMessage:
        if len(frame) < HEADER_LEN + 3 or frame[0] != DATA:
            raise DdcmpError("frame", f"not a data message: {bytes(frame[:HEADER_LEN]).hex(' ')}")
        if crc16_arc(frame[:6]) != int.from_bytes(frame[6:8], "little"):
            raise DdcmpError("frame", "data message header CRC mismatch")
        count = frame[1] | (frame[2] & 0x3F) << 8
        if len(frame) != HEADER_LEN + count + 2:
            raise DdcmpError("frame", f"data message of {len(frame)} bytes, header counts {count}")
        data = bytes(frame[HEADER_LEN : HEADER_LEN + count])
        if crc16_arc(data) != int.from_bytes(frame[-2:], "little"):
            raise DdcmpError("frame", "data message data CRC mismatch")
        return cls(data, frame[4], frame[3], bool(frame[2] & SELECT), frame[5])


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame the line damaged: NACK with ``reason``. ``num`` is known when the header held."""

    reason: NackReason
    num: int | None = None


Frame = ControlMessage | DataMessage
Received = ControlMessage | DataMessage | BadFrame


def baud_code(baud: int) -> int:
    if baud not in _CODE_OF_BAUD:
        raise ValueError(f"{baud} Bd is not one of {sorted(_CODE_OF_BAUD)}")
    return _CODE_OF_BAUD[baud]


def decode_frame(frame: bytes | bytearray) -> Frame:
    """One complete frame; DdcmpError if it is not exactly one good frame."""
    if frame[:1] == bytes((CONTROL,)):
        return ControlMessage.from_bytes(frame)
    return DataMessage.from_bytes(frame)


class FrameAssembler:
    """Cuts a byte stream into frames, however it was split, and survives any garbage.

    Bytes before a header byte (05h/81h) are skipped; a header whose CRC fails moves the search
    on by one byte, so a frame inside noise is still found. Only the first bad header of a
    noisy stretch is reported, so noise costs one NACK, not one per byte. A gap over
    ``inter_char`` seconds drops a partial frame.
    """

    def __init__(self, inter_char: float = DEFAULT_TIMING.inter_char) -> None:
        self.inter_char = inter_char
        self.skipped = 0
        self._buf = bytearray()
        self._last: float | None = None
        self._noisy = False

    def reset(self) -> None:
        self._buf.clear()
        self._last = None
        self._noisy = False

    def feed(self, data: bytes, now: float) -> list[Received]:
        if self._buf and self._last is not None and now - self._last > self.inter_char:
            self.skipped += len(self._buf)
            self._buf.clear()
            self._noisy = False
        if data:
            self._last = now
        self._buf += data
        out: list[Received] = []
        while self._next(out):
            pass
        return out

    def _next(self, out: list[Received]) -> bool:
        """Take one frame (or one byte of noise) off the buffer; False when more is needed."""
        buf = self._buf
        starts = [i for i in (buf.find(CONTROL), buf.find(DATA)) if i >= 0]
        if not starts:
            self.skipped += len(buf)
            buf.clear()
            return False
        if (first := min(starts)) > 0:
            self.skipped += first
            del buf[:first]
        if len(buf) < HEADER_LEN:
            return False
        if crc16_arc(buf[:6]) != int.from_bytes(buf[6:8], "little"):
            if not self._noisy:
                out.append(BadFrame(NackReason.HEADER_CRC))
                self._noisy = True
            self.skipped += 1
            del buf[0]
            return True
        if buf[0] == CONTROL:
            frame = bytes(buf[:HEADER_LEN])
            del buf[:HEADER_LEN]
            self._noisy = False
            try:
                out.append(ControlMessage.from_bytes(frame))
            except DdcmpError:
                self.skipped += HEADER_LEN
            return True
        count = buf[1] | (buf[2] & 0x3F) << 8
        if count == 0:
            self.skipped += 1
            del buf[0]
            return True
        total = HEADER_LEN + count + 2
        if len(buf) < total:
            return False
        frame = bytes(buf[:total])
        del buf[:total]
        self._noisy = False
        try:
            out.append(DataMessage.from_bytes(frame))
        except DdcmpError:
            out.append(BadFrame(NackReason.DATA_CRC, frame[4]))
        return True


# --- application messages -----------------------------------------------------------------


def _bcd(value: int) -> int:
    return (value // 10) << 4 | value % 10


def _from_bcd(byte: int) -> int:
    return (byte >> 4) * 10 + (byte & 0x0F)


@dataclass(frozen=True, slots=True)
class WhoAreYou:
    """The data carrier introduces itself (77 E0); layout [verify], see the module docstring."""

    security_code: int = 0
    pass_code: int = 0
    stamp: datetime | None = None
    user_id: int = 0
    last_byte: int = 0x0C

    def to_bytes(self) -> bytes:
        if self.stamp is None:
            when = bytes(6)
        else:
            s = self.stamp
            parts = (s.day, s.month, s.year % 100, s.hour, s.minute, s.second)
            when = bytes(_bcd(p) for p in parts)
        return (
            bytes((COMMAND, Op.WHO_ARE_YOU, 0))
            + self.security_code.to_bytes(2, "little")
            + self.pass_code.to_bytes(2, "little")
            + when
            + self.user_id.to_bytes(2, "little")
            + bytes((self.last_byte,))
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> WhoAreYou:
        if len(data) < 16 or data[:2] != bytes((COMMAND, Op.WHO_ARE_YOU)):
            raise DdcmpError("frame", f"not a who-are-you command: {data[:16].hex(' ')}")
        stamp = None
        if any(data[7:13]):
            d = [_from_bcd(b) for b in data[7:13]]
            try:
                stamp = datetime(2000 + d[2], d[1], d[0], d[3], d[4], d[5])
            except ValueError:
                stamp = None
        return cls(
            int.from_bytes(data[3:5], "little"),
            int.from_bytes(data[5:7], "little"),
            stamp,
            int.from_bytes(data[13:15], "little"),
            data[15],
        )


@dataclass(frozen=True, slots=True)
class ReadData:
    """Read-data command (77 E2); layout [verify]."""

    list_number: int = AUDIT_LIST
    record: int = 1
    offset: int = 0
    length: int = 0

    def to_bytes(self) -> bytes:
        return (
            bytes((COMMAND, Op.READ_DATA, 0, self.list_number, self.record))
            + self.offset.to_bytes(2, "little")
            + self.length.to_bytes(2, "little")
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReadData:
        if len(data) < 9 or data[:2] != bytes((COMMAND, Op.READ_DATA)):
            raise DdcmpError("frame", f"not a read-data command: {data[:9].hex(' ')}")
        return cls(
            data[3],
            data[4],
            int.from_bytes(data[5:7], "little"),
            int.from_bytes(data[7:9], "little"),
        )


@dataclass(frozen=True, slots=True)
class ReadDataResponse:
    """Read-data response (88 E2); ``length`` None when the VMC does not know it (FFFFh)."""

    status: int = 0
    list_number: int = AUDIT_LIST
    record: int = 1
    offset: int = 0
    length: int | None = None

    def to_bytes(self) -> bytes:
        length = LENGTH_UNKNOWN if self.length is None else self.length
        return (
            bytes((RESPONSE, Op.READ_DATA, self.status, self.list_number, self.record))
            + self.offset.to_bytes(2, "little")
            + length.to_bytes(2, "little")
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ReadDataResponse:
        if len(data) < 9 or data[:2] != bytes((RESPONSE, Op.READ_DATA)):
            raise DdcmpError("frame", f"not a read-data response: {data[:9].hex(' ')}")
        length = int.from_bytes(data[7:9], "little")
        return cls(
            data[2],
            data[3],
            data[4],
            int.from_bytes(data[5:7], "little"),
            None if length == LENGTH_UNKNOWN else length,
        )


FINISH_COMMAND = bytes((COMMAND, Op.FINISH))
ANONYMOUS = WhoAreYou()
READ_AUDIT = ReadData()


def who_are_you_response(identity: bytes, status: int = 0) -> bytes:
    return bytes((RESPONSE, Op.WHO_ARE_YOU, status)) + identity


def data_block(number: int, data: bytes) -> bytes:
    return bytes((BLOCK, number & 0xFF)) + data


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetBaud:
    """Switch the port's speed; comes after every Send that must still go at the old one."""

    baud: int


@dataclass(frozen=True, slots=True)
class Failed:
    step: Step
    reason: str
    timed_out: bool = False

    def error(self) -> DdcmpError:
        kind = DdcmpTimeoutError if self.timed_out else DdcmpError
        return kind(self.step.value, self.reason)


Action = Send | SetBaud | Progress | Finished | Failed


# --- the machinery both ends share ----------------------------------------------------------


class _Line:
    """Outgoing actions held for the turnaround, and when each send will have left the wire."""

    def __init__(self, turnaround: float, baud: int) -> None:
        self.turnaround = turnaround
        self.baud = baud
        self._queue: list[Send | SetBaud] = []
        self._quiet_at = -math.inf
        self._busy_until = -math.inf

    def heard(self, now: float) -> None:
        self._quiet_at = now + self.turnaround

    def send(self, data: bytes, now: float) -> float:
        """Queue ``data``; returns when its last byte should be out."""
        self._queue.append(Send(data))
        begin = max(now, self._quiet_at, self._busy_until)
        self._busy_until = begin + len(data) * 10 / self.baud
        return self._busy_until

    def set_baud(self, baud: int) -> None:
        self._queue.append(SetBaud(baud))
        self.baud = baud

    def ready_at(self) -> float | None:
        return self._quiet_at if self._queue else None

    def flush(self, now: float) -> list[Action]:
        if not self._queue or now < self._quiet_at:
            return []
        out: list[Action] = list(self._queue)
        self._queue.clear()
        return out


def _next_num(num: int) -> int:
    return (num + 1) & 0xFF


def _earliest(*times: float | None) -> float | None:
    real = [t for t in times if t is not None]
    return min(real) if real else None


class _Endpoint:
    """Framing, turnaround, sequence numbers and the one unacknowledged data message."""

    def __init__(self, timing: Timing, baud: int) -> None:
        self.timing = timing
        self._assembler = FrameAssembler(timing.inter_char)
        self._line = _Line(timing.turnaround, baud)
        self._events: list[Action] = []
        self.retransmissions = 0  # data messages sent again (ACK timer or NACK), all reads
        self._reset_sequence()

    def _reset_sequence(self) -> None:
        self._rx_last = 0
        self._tx_num = 0
        self._out: DataMessage | None = None
        self._out_wire: bytes = b""
        self._out_attempts = 0
        self._out_deadline: float | None = None
        self._refusal: str | None = None  # a NACK that came once the attempts were spent

    @property
    def baud(self) -> int:
        return self._line.baud

    def receive(self, data: bytes, now: float) -> list[Action]:
        """Bytes from the line, stamped with the time they were read."""
        if data:
            self._line.heard(now)
        for item in self._assembler.feed(data, now):
            self._on_frame(item, now)
        return self._drain(now)

    def poll(self, now: float) -> list[Action]:
        """Run the timers; call it at :meth:`deadline` (earlier is harmless)."""
        for item in self._assembler.feed(b"", now):
            self._on_frame(item, now)
        self._on_timer(now)
        return self._drain(now)

    def deadline(self) -> float | None:
        """When :meth:`poll` next has work; None while waiting on bytes only."""
        return _earliest(self._line.ready_at(), self._out_deadline, self._timer_deadline())

    def _drain(self, now: float) -> list[Action]:
        """Due sends first, so a Finished or Failed is the last action the driver sees."""
        events = self._events
        self._events = []
        return [*self._line.flush(now), *events]

    def _transmit(self, data: bytes, now: float) -> float:
        return self._line.send(data, now)

    def _send_control(self, message: ControlMessage, now: float) -> None:
        self._transmit(message.to_bytes(), now)

    def _send_data(self, payload: bytes, now: float, *, select: bool = False) -> None:
        self._tx_num = _next_num(self._tx_num)
        self._out = DataMessage(payload, self._tx_num, self._rx_last, select)
        self._out_wire = self._wire(self._out, first=True)
        self._out_attempts = 0
        self._retransmit(now)

    def _wire(self, message: DataMessage, *, first: bool) -> bytes:
        """The bytes of ``message`` as sent; the server's fault injection overrides this."""
        del first
        return message.to_bytes()

    def _retransmit(self, now: float) -> None:
        assert self._out is not None
        self._out_attempts += 1
        self._refusal = None
        if self._out_attempts > 1:
            self.retransmissions += 1
            self._out = DataMessage(self._out.data, self._out.num, self._rx_last, self._out.select)
            self._out_wire = self._wire(self._out, first=False)
        done = self._transmit(self._out_wire, now)
        self._out_deadline = done + self.timing.ack_timeout

    def _acknowledged(self, resp: int) -> bool:
        """Note the peer's RESP; True when it covers our outstanding message."""
        if self._out is not None and resp == self._out.num:
            self._out = None
            self._out_deadline = None
            return True
        return False

    def _ack_timer_expired(self, now: float) -> bool:
        return self._out_deadline is not None and now >= self._out_deadline

    def _on_nack(self, nack: ControlMessage, now: float) -> bool:
        """A NACK's RESP acknowledges as an ACK's does (True when it covers our message);
        otherwise our message goes again while attempts are left.

        With none left, the last attempt's ACK timer decides: a NACK may be late, about an
        earlier copy, with the ACK of a later one right behind it.
        """
        if self._acknowledged(nack.resp):
            return True
        if self._out is not None:
            if self._out_attempts < self.timing.data_attempts:
                self._retransmit(now)
            else:
                self._refusal = f"NACK reason {nack.subtype}"
        return False

    def _spent(self) -> str:
        """Why our message failed, once its attempts are spent and the last one's timer ran."""
        assert self._out is not None
        tries = f"{self._out_attempts} attempts"
        if self._refusal is not None:
            return f"message {self._out.num} refused after {tries} ({self._refusal})"
        return f"no ACK for message {self._out.num} after {tries}"

    def _on_frame(self, item: Received, now: float) -> None:
        raise NotImplementedError

    def _on_timer(self, now: float) -> None:
        raise NotImplementedError

    def _timer_deadline(self) -> float | None:
        raise NotImplementedError


# --- the reader (data carrier, master) ----------------------------------------------------


class DdcmpReader(_Endpoint):
    """Reads one audit: feed it bytes and ``now``, carry out the actions it returns.

    ``baud`` is the speed proposed in START; the VMC may accept less.
    """

    def __init__(
        self,
        baud: int = 9600,
        *,
        timing: Timing = DEFAULT_TIMING,
        who_are_you: WhoAreYou = ANONYMOUS,
        request: ReadData = READ_AUDIT,
    ) -> None:
        baud_code(baud)
        super().__init__(timing, START_BAUD)
        self.proposed_baud = baud
        self.who_are_you = who_are_you
        self.request = request
        self.step = Step.START
        self.identity = b""
        self.expected_length: int | None = None
        self.nacks_sent = 0
        self._audit = bytearray()
        self._block = 0
        self._start_attempts = 0
        self._stack_deadline: float | None = None
        self._link_deadline: float | None = None
        self._bad_in_row = 0
        self._awaiting_reply = False
        self._done = False

    def start(self, now: float) -> list[Action]:
        """Begin the read (the port must be at 2400 Bd)."""
        if self._start_attempts:
            raise DdcmpError(self.step.value, "the reader was already started")
        self._send_start(now)
        return self._drain(now)

    @property
    def received(self) -> int:
        return len(self._audit)

    def _send_start(self, now: float) -> None:
        self._start_attempts += 1
        done = self._transmit(ControlMessage.start(self.proposed_baud).to_bytes(), now)
        self._stack_deadline = done + self.timing.stack_timeout

    def _fail(self, reason: str, *, timed_out: bool = False) -> None:
        self._done = True
        self._out_deadline = self._stack_deadline = self._link_deadline = None
        self._events.append(Failed(self.step, reason, timed_out))

    def _finish(self) -> None:
        self._done = True
        self._out_deadline = self._link_deadline = None
        self._events.append(Finished(bytes(self._audit)))

    def _link_alive(self, now: float) -> None:
        slow = self.step in (Step.READ_DATA, Step.TRANSFER)
        span = self.timing.data_link_timeout if slow else self.timing.link_timeout
        self._link_deadline = now + span

    def _timer_deadline(self) -> float | None:
        return _earliest(self._stack_deadline, self._link_deadline)

    def _on_timer(self, now: float) -> None:
        if self._done:
            return
        if self._stack_deadline is not None and now >= self._stack_deadline:
            if self._start_attempts >= self.timing.start_attempts:
                self._fail(f"no STACK after {self._start_attempts} START attempts", timed_out=True)
                return
            self._send_start(now)
        if self._ack_timer_expired(now):
            assert self._out is not None
            if self._out_attempts >= self.timing.data_attempts:
                if self.step is Step.FINISH:
                    self._finish()
                    return
                self._fail(self._spent(), timed_out=self._refusal is None)
                return
            self._retransmit(now)
        if self._link_deadline is not None and now >= self._link_deadline:
            if self.step is Step.FINISH:
                self._finish()
                return
            self._fail(self._silence_reason(), timed_out=True)

    def _silence_reason(self) -> str:
        slow = self.step in (Step.READ_DATA, Step.TRANSFER)
        span = self.timing.data_link_timeout if slow else self.timing.link_timeout
        got = f" after {len(self._audit)} audit bytes" if self.step is Step.TRANSFER else ""
        return f"link timeout: no valid frame from the VMC for {span:g} s{got}"

    def _on_frame(self, item: Received, now: float) -> None:
        if self._done:
            return
        if isinstance(item, BadFrame):
            self._on_bad_frame(item, now)
            return
        if self.step is Step.START:
            if isinstance(item, ControlMessage) and item.type is ControlType.STACK:
                self._on_stack(item, now)
            return
        self._bad_in_row = 0
        self._link_alive(now)
        if isinstance(item, DataMessage):
            self._on_data(item, now)
            return
        if item.type is ControlType.ACK:
            self._acknowledged(item.resp)
            self._advance(now)
        elif item.type is ControlType.NACK:
            if self._on_nack(item, now):
                self._advance(now)
        elif item.type is ControlType.REP:
            if item.num == self._rx_last:
                self._send_control(ControlMessage.ack(self._rx_last), now)
            else:
                self._send_control(ControlMessage.nack(NackReason.REP_RESPONSE, self._rx_last), now)
        elif item.type is ControlType.START:
            self._fail(f"the VMC restarted the link (START) after {len(self._audit)} audit bytes")

    def _on_bad_frame(self, item: BadFrame, now: float) -> None:
        if self.step is Step.START:
            return
        self._bad_in_row += 1
        if self._bad_in_row >= self.timing.data_attempts:
            what = "header" if item.reason is NackReason.HEADER_CRC else "data"
            self._fail(f"{self._bad_in_row} damaged frames in a row (last: bad {what} CRC)")
            return
        self.nacks_sent += 1
        self._send_control(ControlMessage.nack(item.reason, self._rx_last), now)

    def _on_stack(self, stack: ControlMessage, now: float) -> None:
        baud = stack.baud
        if baud is None or baud > self.proposed_baud:
            self._fail(f"STACK names speed code {stack.resp}, we proposed {self.proposed_baud} Bd")
            return
        self._stack_deadline = None
        if baud != self._line.baud:
            self._line.set_baud(baud)
        self.step = Step.WHO_ARE_YOU
        self._link_alive(now)
        self._send_data(self.who_are_you.to_bytes(), now)
        self._awaiting_reply = True

    def _on_data(self, message: DataMessage, now: float) -> None:
        self._acknowledged(message.resp)
        if message.num == self._rx_last:
            self._send_control(ControlMessage.ack(self._rx_last), now)
            return
        if message.num != _next_num(self._rx_last):
            return
        self._rx_last = message.num
        self._send_control(ControlMessage.ack(self._rx_last), now)
        self._on_payload(message, now)
        if not self._done:
            self._advance(now)

    def _on_payload(self, message: DataMessage, now: float) -> None:
        data = message.data
        step = self.step
        if step is Step.WHO_ARE_YOU and data[:2] == bytes((RESPONSE, Op.WHO_ARE_YOU)):
            if len(data) < 3 or data[2] != 0:
                status = data[2] if len(data) > 2 else None
                self._fail(f"the VMC refused who-are-you (status {status})")
                return
            self.identity = data[3:]
            self._awaiting_reply = False
        elif step is Step.READ_DATA and data[:2] == bytes((RESPONSE, Op.READ_DATA)):
            try:
                response = ReadDataResponse.from_bytes(data)
            except DdcmpError as exc:
                self._fail(str(exc))
                return
            if response.status != 0:
                self._fail(
                    f"the VMC refused to read list {self.request.list_number} "
                    f"(status {response.status})"
                )
                return
            self.expected_length = response.length
            self._awaiting_reply = False
        elif step is Step.TRANSFER and data[:1] == bytes((BLOCK,)) and len(data) >= 2:
            self._on_block(message, now)
        elif step is Step.FINISH:
            return
        else:
            self._fail(f"unexpected message {data[:3].hex(' ')} from the VMC")

    def _on_block(self, message: DataMessage, now: float) -> None:
        del now
        number = message.data[1]
        if number != self._block & 0xFF:
            self._fail(f"data block {number} arrived, expected block {self._block & 0xFF}")
            return
        self._block += 1
        self._audit += message.data[2:]
        self._events.append(Progress(len(self._audit)))
        complete = self.expected_length is not None and len(self._audit) >= self.expected_length
        if message.select or complete:
            self._awaiting_reply = False

    def _advance(self, now: float) -> None:
        """Move on once our message is acknowledged and the VMC's answer is in."""
        if self._done or self._out is not None or self._awaiting_reply:
            return
        if self.step is Step.WHO_ARE_YOU:
            self.step = Step.READ_DATA
            self._link_alive(now)
            self._send_data(self.request.to_bytes(), now)
            self._awaiting_reply = True
        elif self.step is Step.READ_DATA:
            self.step = Step.TRANSFER
            self._link_alive(now)
            self._awaiting_reply = True
        elif self.step is Step.TRANSFER:
            self.step = Step.FINISH
            self._link_alive(now)
            self._send_data(FINISH_COMMAND, now)
        elif self.step is Step.FINISH:
            self._finish()


# --- the server (VMC, slave) for the simulator -------------------------------------------


@dataclass(frozen=True, slots=True)
class SlaveFaults:
    """Faults the simulated VMC injects, each once per read (re-armed after a finished one).

    Master message numbers: 1 who-are-you, 2 read-data, 3 finish. Blocks count from 0.
    Silence lasts: a VMC that went quiet stays quiet.
    """

    nack_messages: frozenset[int] = frozenset()
    corrupt_data_crc: frozenset[int] = frozenset()
    corrupt_header_crc: frozenset[int] = frozenset()
    silent_after_frames: int | None = None
    silent_at_block: int | None = None
    abort_at_block: int | None = None


NO_FAULTS = SlaveFaults()


@dataclass(frozen=True, slots=True)
class _Outgoing:
    payload: bytes
    select: bool = False
    block: int | None = None


class DdcmpSlave(_Endpoint):
    """The VMC end: answers START, who-are-you and read-data, serves ``audit`` in blocks.

    One server answers any number of reads; ``sessions`` counts the finished ones.
    """

    def __init__(
        self,
        audit: bytes,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        timing: Timing = DEFAULT_TIMING,
        faults: SlaveFaults = NO_FAULTS,
        identity: bytes = b"SIM0000001",
        max_baud: int = 115200,
    ) -> None:
        if not 1 <= block_size <= MAX_DATA - 2:
            raise ValueError(f"block size must be 1..{MAX_DATA - 2}, not {block_size}")
        baud_code(max_baud)
        super().__init__(timing, START_BAUD)
        self.audit = audit
        self.block_size = block_size
        self.faults = faults
        self.identity = identity
        self.max_baud = max_baud
        self.step = Step.START
        self.running = False
        self.frames_sent = 0
        self.nacks_received = 0
        self.sessions = 0
        self._queue: deque[_Outgoing] = deque()
        self._injected: set[tuple[str, int]] = set()
        self._silent = faults.silent_after_frames == 0
        self._link_deadline: float | None = None
        self._current_block: int | None = None

    def _transmit(self, data: bytes, now: float) -> float:
        if self._silent:
            return now
        self.frames_sent += 1
        done = super()._transmit(data, now)
        limit = self.faults.silent_after_frames
        if limit is not None and self.frames_sent >= limit:
            self._silent = True
        return done

    def _wire(self, message: DataMessage, *, first: bool) -> bytes:
        wire = bytearray(message.to_bytes())
        if not first or message.data[:1] != bytes((BLOCK,)) or self._current_block is None:
            return bytes(wire)
        block = self._current_block
        if block in self.faults.corrupt_data_crc and self._inject("data", block):
            wire[-1] ^= 0xFF
        if block in self.faults.corrupt_header_crc and self._inject("header", block):
            wire[7] ^= 0xFF
        return bytes(wire)

    def _inject(self, kind: str, where: int) -> bool:
        """True the first time this fault fires in the current read."""
        if (kind, where) in self._injected:
            return False
        self._injected.add((kind, where))
        return True

    def _timer_deadline(self) -> float | None:
        return self._link_deadline

    def _on_timer(self, now: float) -> None:
        if self._ack_timer_expired(now):
            if self._out_attempts >= self.timing.data_attempts:
                self._give_up(self._spent())
                return
            self._retransmit(now)
        if self._link_deadline is not None and now >= self._link_deadline:
            self._give_up("link timeout")

    def _give_up(self, reason: str) -> None:
        self._events.append(Failed(self.step, reason, timed_out=True))
        self._idle()

    def _idle(self) -> None:
        self.running = False
        self._queue.clear()
        self._reset_sequence()
        self._link_deadline = None
        if self._line.baud != START_BAUD:
            self._line.set_baud(START_BAUD)

    def _link_alive(self, now: float) -> None:
        slow = self.step in (Step.READ_DATA, Step.TRANSFER)
        span = self.timing.data_link_timeout if slow else self.timing.link_timeout
        self._link_deadline = now + span

    def _on_frame(self, item: Received, now: float) -> None:
        if isinstance(item, BadFrame):
            if self.running:
                self._send_control(ControlMessage.nack(item.reason, self._rx_last), now)
            return
        if isinstance(item, ControlMessage):
            self._on_control(item, now)
            return
        if not self.running:
            return
        self._link_alive(now)
        if self._acknowledged(item.resp):
            self._pump(now)
        if item.num == self._rx_last:
            self._send_control(ControlMessage.ack(self._rx_last), now)
            return
        if item.num != _next_num(self._rx_last):
            return
        if item.num in self.faults.nack_messages and self._inject("nack", item.num):
            self._send_control(ControlMessage.nack(NackReason.DATA_CRC, self._rx_last), now)
            return
        self._rx_last = item.num
        self._send_control(ControlMessage.ack(self._rx_last), now)
        self._on_command(item.data, now)

    def _on_control(self, message: ControlMessage, now: float) -> None:
        if message.type is ControlType.START:
            self._on_start(message, now)
            return
        if not self.running:
            return
        self._link_alive(now)
        if message.type is ControlType.ACK:
            if self._acknowledged(message.resp):
                self._pump(now)
        elif message.type is ControlType.NACK:
            self.nacks_received += 1
            if self._on_nack(message, now):
                self._pump(now)

    def _on_start(self, message: ControlMessage, now: float) -> None:
        proposed = message.baud or START_BAUD
        baud = max(b for b in BAUD_CODES.values() if b <= min(proposed, self.max_baud))
        self._idle()
        self.running = True
        self.step = Step.START
        self._send_control(ControlMessage.stack(baud), now)
        if baud != self._line.baud:
            self._line.set_baud(baud)
        self._link_alive(now)

    def _on_command(self, data: bytes, now: float) -> None:
        if data[:2] == bytes((COMMAND, Op.WHO_ARE_YOU)):
            self.step = Step.WHO_ARE_YOU
            self._queue.append(_Outgoing(who_are_you_response(self.identity), select=True))
        elif data[:2] == bytes((COMMAND, Op.READ_DATA)):
            self.step = Step.READ_DATA
            try:
                request = ReadData.from_bytes(data)
            except DdcmpError:
                request = ReadData()
            known = len(self.audit) if len(self.audit) < LENGTH_UNKNOWN else None
            response = ReadDataResponse(0, request.list_number, request.record, 0, known)
            self._queue.append(_Outgoing(response.to_bytes()))
            chunks = [
                self.audit[i : i + self.block_size]
                for i in range(0, len(self.audit), self.block_size)
            ] or [b""]
            for n, chunk in enumerate(chunks):
                last = n == len(chunks) - 1
                self._queue.append(_Outgoing(data_block(n, chunk), select=last, block=n))
        elif data[:2] == FINISH_COMMAND:
            self.step = Step.FINISH
            self.sessions += 1
            self._injected.clear()
            self._events.append(Finished(self.audit))
            self._idle()
            return
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Send the next queued message once the last one is acknowledged (stop and wait)."""
        if self._out is not None or not self._queue or not self.running:
            return
        item = self._queue.popleft()
        if item.block is not None:
            self.step = Step.TRANSFER
            if item.block == self.faults.abort_at_block and self._inject("abort", item.block):
                self._send_control(ControlMessage.start(), now)
                self._idle()
                return
            if item.block == self.faults.silent_at_block:
                self._silent = True
        self._current_block = item.block
        self._send_data(item.payload, now, select=item.select)
        self._current_block = None
