"""DEX/UCS link, both ends: the data carrier that reads an audit, and a VMC that serves one.

Theory of operation (EVA-DTS 6.2 ch. 4, DEX/UCS; the UCS base protocol underneath). A read is
three sessions on a half-duplex 8N1 line. In each session one side is *master*: it sends ENQ,
the *slave* answers DLE '0', the master sends frames (``DLE SOH|STX ... DLE ETB|ETX crc-lo
crc-hi``) that the slave answers with DLE '1', DLE '0', DLE '1', ... in turn (or NAK to have
one sent again), and the master closes with EOT. The first handshake (DC master) carries our
identification and the operation; the second (VMC master) the VMC's response code and
identification; the data transfer (VMC master) the audit in blocks of at most 245 bytes. A
legacy VMC opens the first handshake itself; a DC that hears an ENQ before its own was answered
becomes slave for that session and master for the second.

So one master machine (:class:`_Sender`) and one slave machine (:class:`_Receiver`) serve every
session on both ends; :class:`UcsReader` (the DC) and :class:`UcsSource` (a VMC, for the
simulator) chain three of them and name the step a failure happened in. A master that hears
nothing asks for the slave's last answer with ENQ (BSC style): the expected ACK means the frame
arrived, the other one means send it again, so a lost ACK never duplicates a frame. The other
ACK counts only as the answer to that ENQ: straight after a frame it is a late answer (one sent
before timer A ran out crosses the ENQ, and two answers come back for one frame), not a refusal.
UCS has no sequence number, so a slave cannot always tell a repeated block from an equal next
one: it drops the repeat of a frame ending DLE ETX (nothing may follow it), and of any frame
once it has answered an ENQ, since that second answer is what makes a master repeat a block it
already delivered. An ACK garbled into NAK on a noisy line can still get a block kept twice
(the audit's G85 sees that); a genuine block equal to the one before it, after an ENQ, fails
the read instead of being kept.

Timers (§4.5.8): A, 1 s for an answer; B, 100 ms between the characters of a frame; D, 2 s of
silence inside a session; at least 100 ms pause before the 2nd and 3rd session; no answer
sooner than 10 ms after the peer's last byte. CRC-16/ARC over the frame from the byte after
SOH/STX through ETB/ETX, DLEs excluded, sent low byte first. Sans-I/O: bytes and ``now``
(seconds on any monotonic clock) in, :data:`Action` lists out; every list ends with a ``Wait``
telling the caller when to :meth:`~UcsReader.poll` next (no ``Wait``: no timer runs).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from protocols.crc16 import crc16_arc
from protocols.dex import DexError, DexTimeoutError, Finished, Progress, Send
from protocols.errors import LocalProtocolError

SOH = 0x01
STX = 0x02
ETX = 0x03
EOT = 0x04
ENQ = 0x05
DLE = 0x10
NAK = 0x15
SYN = 0x16
ETB = 0x17

MAX_BLOCK = 245
"""Largest block the spec allows: bytes after DLE STX through DLE ETB/ETX, CRC excluded."""
MAX_FRAME = 4096
"""Largest frame payload we keep; longer ones are refused (a real one is at most 245)."""
REVISION = "R00L06"

RESPONSE_CODES = {
    "00": "OK",
    "01": "unrecognised communication ID",
    "02": "unsupported revision/level",
    "03": "operation conflict",
    "04": "no data",
    "05": "undefined error",
    "90": "manufacturer-specific state",
}


class Stage(enum.Enum):
    """The three sessions of a DEX/UCS read, in order."""

    FIRST_HANDSHAKE = "first handshake"
    SECOND_HANDSHAKE = "second handshake"
    DATA_TRANSFER = "data transfer"


@dataclass(frozen=True, slots=True)
class UcsTimers:
    """Protocol timers in seconds (§4.5.8); tests shrink them, production keeps the defaults."""

    response: float = 1.0  # Timer A: waiting for the answer to ENQ or a frame
    inter_char: float = 0.1  # Timer B: between two characters of one frame
    inactivity: float = 2.0  # Timer D: silence inside a session
    session_pause: float = 0.1  # before opening the 2nd and 3rd session (spec: >= 100 ms)
    turnaround: float = 0.01  # no answer sooner than this after the peer's last byte
    wack_pause: float = 0.2  # after WACK, before asking again with ENQ (spec: 100-500 ms)
    session_wait: float = 10.0  # for the peer to open its session (the spec sets no limit)
    max_wacks: int = 10  # consecutive WACKs before we give up on a busy peer


# --- actions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wait:
    """Call ``poll`` at ``until`` at the latest (a later list may bring the time forward)."""

    until: float


@dataclass(frozen=True, slots=True)
class Failed:
    step: str
    reason: str
    timed_out: bool = False

    def __str__(self) -> str:
        return f"{self.step}: {self.reason}"

    def error(self) -> DexError:
        cls = DexTimeoutError if self.timed_out else DexError
        return cls(self.step, self.reason)


Action = Send | Wait | Progress | Finished | Failed


# --- framing ----------------------------------------------------------------------------


def encode_frame(start: int, payload: bytes, end: int) -> bytes:
    """``DLE start payload DLE end crc-lo crc-hi``.

    EVA-DTS text never holds a DLE; should a payload do so it is doubled (BSC transparency)
    and counted once in the CRC, which is what the receiving side expects.
    """
    crc = crc16_arc(payload + bytes((end,)))
    body = payload.replace(b"\x10", b"\x10\x10")
    return bytes((DLE, start)) + body + bytes((DLE, end, crc & 0xFF, crc >> 8))


def handshake_frame(payload: str) -> bytes:
    return encode_frame(SOH, payload.encode("ascii"), ETX)


def data_blocks(audit: bytes, block_size: int = MAX_BLOCK) -> list[bytes]:
    """The audit cut into wire blocks: DLE ETB after each but the last, which ends DLE ETX."""
    if not 3 <= block_size <= MAX_FRAME:
        raise ValueError(f"block size {block_size}: must be 3..{MAX_FRAME}")
    step = block_size - 2
    chunks = [audit[i : i + step] for i in range(0, len(audit), step)] or [b""]
    last = len(chunks) - 1
    return [encode_frame(STX, chunk, ETX if i == last else ETB) for i, chunk in enumerate(chunks)]


@dataclass(frozen=True, slots=True)
class Identification:
    """Who the peer is: response code ("" when a legacy VMC opened the first handshake and
    so sent none), communication ID and revision/level."""

    code: str
    comm_id: str
    revision: str


def parse_response(payload: bytes) -> Identification:
    """Split a second-handshake payload, accepting both orders of code and comm ID.

    §4.5.3 puts the code first, the §4.7 example puts it after the comm ID. A V6 comm ID
    starts with three letters, which decides; for old numeric IDs the spec's order wins.
    """
    text = payload.decode("latin-1")
    code_first = Identification(text[:2], text[2:12], text[12:])
    id_first = Identification(text[10:12], text[:10], text[12:])
    if text[2:5].isalpha() and code_first.code in RESPONSE_CODES:
        return code_first
    if text[:3].isalpha() and id_first.code in RESPONSE_CODES:
        return id_first
    if code_first.code not in RESPONSE_CODES and id_first.code in RESPONSE_CODES:
        return id_first
    return code_first


def check_comm_id(comm_id: str) -> str:
    if len(comm_id) != 10 or not all(0x20 <= ord(c) <= 0x7E and c != "*" for c in comm_id):
        raise ValueError(f"communication ID {comm_id!r}: must be 10 printable characters")
    return comm_id


def _secs(t: float) -> str:
    return f"{t:g} s" if t >= 1 else f"{t * 1000:g} ms"


def _summary(problems: Sequence[str]) -> str:
    last, n = problems[-1], len(problems)
    if all(p == last for p in problems):
        return f"{last} ({n} times)"
    return f"{last} ({n} failed tries: {', '.join(sorted(set(problems)))})"


# --- tokens: what the byte stream says ---------------------------------------------------


class _Kind(enum.Enum):
    ENQ = "ENQ"
    EOT = "EOT"
    NAK = "NAK"
    ACK0 = "DLE 0"
    ACK1 = "DLE 1"
    WACK = "WACK"
    RVI = "RVI"
    FRAME = "frame"


@dataclass(frozen=True, slots=True)
class _Frame:
    start: int
    payload: bytes
    end: int
    problem: str | None  # None: complete and the CRC matches

    @property
    def key(self) -> bytes:
        return bytes((self.start, self.end)) + self.payload


_Token = _Kind | _Frame
_SINGLES = {ENQ: _Kind.ENQ, EOT: _Kind.EOT, NAK: _Kind.NAK}
_AFTER_DLE = {0x30: _Kind.ACK0, 0x31: _Kind.ACK1, 0x3B: _Kind.WACK, 0x3C: _Kind.RVI}
_ACK_BYTES = {_Kind.ACK0: b"\x10\x30", _Kind.ACK1: b"\x10\x31", _Kind.WACK: b"\x10\x3b"}
_START_NAMES = {SOH: "SOH", STX: "STX"}


class _Lex(enum.Enum):
    IDLE = enum.auto()
    DLE = enum.auto()
    BODY = enum.auto()
    BODY_DLE = enum.auto()
    CRC_LO = enum.auto()
    CRC_HI = enum.auto()


_IN_FRAME = frozenset({_Lex.BODY, _Lex.BODY_DLE, _Lex.CRC_LO, _Lex.CRC_HI})


class _Lexer:
    """Bytes to tokens. Noise outside a frame is dropped; a bad frame is still a token."""

    def __init__(self) -> None:
        self.state = _Lex.IDLE
        self._start = 0
        self._end = 0
        self._body = bytearray()
        self._crc_lo = 0
        self._raw = 0
        self._problem: str | None = None

    @property
    def in_frame(self) -> bool:
        return self.state in _IN_FRAME

    def feed(self, byte: int) -> _Token | None:
        state = self.state
        if state is _Lex.IDLE:
            return self._idle(byte)
        if state is _Lex.DLE:
            self.state = _Lex.IDLE
            if byte in _AFTER_DLE:
                return _AFTER_DLE[byte]
            if byte in _START_NAMES:
                self._begin(byte)
                return None
            return None if byte == SYN else self._idle(byte)
        self._raw += 1
        if self._raw > 2 * MAX_FRAME:
            return self.abandon(f"frame longer than {MAX_FRAME} bytes")
        if state is _Lex.BODY:
            if byte == DLE:
                self.state = _Lex.BODY_DLE
            else:
                self._append(byte)
            return None
        if state is _Lex.BODY_DLE:
            self._after_body_dle(byte)
            return None
        if state is _Lex.CRC_LO:
            self._crc_lo = byte
            self.state = _Lex.CRC_HI
            return None
        self.state = _Lex.IDLE
        crc = crc16_arc(self._body + bytes((self._end,)))
        problem = self._problem
        if problem is None and crc != self._crc_lo | byte << 8:
            problem = "CRC mismatch"
        return _Frame(self._start, bytes(self._body), self._end, problem)

    def abandon(self, problem: str) -> _Frame | None:
        """Drop a frame in progress (timer B, overlong) and return it as a bad one."""
        was_in_frame = self.in_frame
        self.state = _Lex.IDLE
        if not was_in_frame:
            return None
        return _Frame(self._start, bytes(self._body), 0, problem)

    def _idle(self, byte: int) -> _Token | None:
        if byte == DLE:
            self.state = _Lex.DLE
            return None
        return _SINGLES.get(byte)

    def _begin(self, start: int) -> None:
        self.state = _Lex.BODY
        self._start = start
        self._body.clear()
        self._raw = 0
        self._problem = None

    def _append(self, byte: int) -> None:
        if len(self._body) < MAX_FRAME:
            self._body.append(byte)
        elif self._problem is None:
            self._problem = f"frame longer than {MAX_FRAME} bytes"

    def _after_body_dle(self, byte: int) -> None:
        self.state = _Lex.BODY
        if byte in (ETB, ETX):
            self._end = byte
            self.state = _Lex.CRC_LO
        elif byte == DLE:
            self._append(DLE)
        elif byte in _START_NAMES:
            self._begin(byte)  # the sender started the frame over
        elif byte != SYN and self._problem is None:
            self._problem = f"DLE {byte:02X} inside a frame"


# --- the two session machines ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Out:
    data: bytes


@dataclass(frozen=True, slots=True)
class _Got:
    frame: _Frame


@dataclass(frozen=True, slots=True)
class _Ended:
    """The session is over: the master sent EOT, or the slave received it."""


@dataclass(frozen=True, slots=True)
class _PeerEnq:
    """The peer sent ENQ while we were trying to open the session."""


@dataclass(frozen=True, slots=True)
class _Fail:
    reason: str
    timed_out: bool
    send_eot: bool


_Effect = _Out | _Got | _Ended | _PeerEnq | _Fail


def _ack_for(index: int) -> _Kind:
    """Frames are acknowledged DLE '1', DLE '0', DLE '1', ... starting with frame 1."""
    return _Kind.ACK1 if index % 2 else _Kind.ACK0


def _key(token: _Token) -> _Kind:
    return token if isinstance(token, _Kind) else _Kind.FRAME


class _SendState(enum.Enum):
    PAUSE = enum.auto()  # waiting out the pause before ENQ
    ENQ = enum.auto()  # ENQ sent, waiting for DLE '0'
    FRAME = enum.auto()  # frame ``index`` sent (or ENQ asking about it), waiting for its ACK
    DONE = enum.auto()


class _Sender:
    """Master of one session: ENQ, each frame until its ACK comes back, then EOT."""

    def __init__(
        self,
        frames: Sequence[bytes],
        label: Callable[[int], str],
        *,
        peer: str,
        timers: UcsTimers,
        retries: int,
        tamper: Callable[[int, int, bytes], bytes] | None = None,
    ) -> None:
        self.frames = frames
        self.label = label
        self.peer = peer
        self.timers = timers
        self.retries = retries
        self.tamper = tamper
        self.state = _SendState.PAUSE
        self.index = 0
        self.deadline: float | None = None
        self._sends = 0
        self._problems: list[str] = []
        self._wacks = 0
        self._wacked = False
        self._enquired = False  # ENQ sent since the frame: the previous ACK now means "again"

    def start(self, now: float, *, pause: bool) -> list[_Effect]:
        if pause:
            self.deadline = now + self.timers.session_pause
            return []
        return self._send_enq(now)

    def on_token(self, token: _Token, now: float) -> list[_Effect]:
        move = _SENDER_MOVES.get((self.state, _key(token)))
        return move(self, token, now) if move else []

    def on_timer(self, now: float) -> list[_Effect]:
        if self.state is _SendState.PAUSE or (self._wacked and self.state is _SendState.ENQ):
            return self._send_enq(now)
        if self._wacked:
            return self._ask(now)
        if self.state is _SendState.ENQ:
            problem = f"no DLE 0 after ENQ within {_secs(self.timers.response)}"
            return self._setback(problem, timed_out=True) or self._send_enq(now)
        if self.state is _SendState.FRAME:
            ack = _ack_for(self.index).value
            label = self.label(self.index)
            problem = f"no {ack} after {label} within {_secs(self.timers.response)}"
            return self._setback(problem, timed_out=True) or self._ask(now)
        self.deadline = None
        return []

    # moves

    def _enq_answered(self, _token: _Token, now: float) -> list[_Effect]:
        self._progress()
        self.index = 1
        return self._send_frame(now)

    def _enq_refused(self, _token: _Token, now: float) -> list[_Effect]:
        return self._setback("ENQ answered with NAK") or self._send_enq(now)

    def _peer_enq(self, _token: _Token, _now: float) -> list[_Effect]:
        return [_PeerEnq()]

    def _busy(self, _token: _Token, now: float) -> list[_Effect]:
        self._wacks += 1
        if self._wacks > self.timers.max_wacks:
            reason = f"{self.peer} still busy (WACK) after {self._wacks} tries"
            return [_Fail(reason, timed_out=True, send_eot=True)]
        self._wacked = True
        self.deadline = now + self.timers.wack_pause
        return []

    def _peer_ended(self, _token: _Token, _now: float) -> list[_Effect]:
        self.state = _SendState.DONE
        self.deadline = None
        return [_Fail(f"{self.peer} ended the session (EOT)", timed_out=False, send_eot=False)]

    def _frame_answered(self, token: _Token, now: float) -> list[_Effect]:
        expected = _ack_for(self.index)
        if token is not expected:
            if not self._enquired:
                # A slave answers a frame with its ACK, NAK or WACK, never with the previous
                # ACK: this one is late, meant for the frame before or for an ENQ that crossed
                # it. Sending the frame again would hand the slave a block it may have kept.
                return []
            label = self.label(self.index)
            problem = f"{label} answered with {_key(token).value} instead of {expected.value}"
            return self._setback(problem) or self._send_frame(now)
        self._progress()
        self.index += 1
        if self.index > len(self.frames):
            self.state = _SendState.DONE
            self.deadline = None
            return [_Out(bytes((EOT,))), _Ended()]
        return self._send_frame(now)

    def _frame_refused(self, _token: _Token, now: float) -> list[_Effect]:
        return self._setback(f"{self.label(self.index)} NAKed") or self._send_frame(now)

    # helpers

    def _send_enq(self, now: float) -> list[_Effect]:
        self.state = _SendState.ENQ
        self._wacked = False
        self.deadline = now + self.timers.response
        return [_Out(bytes((ENQ,)))]

    def _ask(self, now: float) -> list[_Effect]:
        """ENQ after a frame: "what was your answer?" (timer A expired or WACK)."""
        self._wacked = False
        self._enquired = True
        self.deadline = now + self.timers.response
        return [_Out(bytes((ENQ,)))]

    def _send_frame(self, now: float) -> list[_Effect]:
        self.state = _SendState.FRAME
        self._wacked = False
        self._enquired = False
        self._sends += 1
        wire = self.frames[self.index - 1]
        if self.tamper is not None:
            wire = self.tamper(self.index, self._sends, wire)
        self.deadline = now + self.timers.response
        return [_Out(wire)]

    def _progress(self) -> None:
        self._problems.clear()
        self._sends = 0
        self._wacks = 0

    def _setback(self, problem: str, *, timed_out: bool = False) -> list[_Effect]:
        """Count a failed try; past the retry budget, the failure ends the session."""
        self._problems.append(problem)
        if len(self._problems) <= self.retries:
            return []
        self.state = _SendState.DONE
        self.deadline = None
        return [_Fail(_summary(self._problems), timed_out=timed_out, send_eot=True)]


_SenderMove = Callable[[_Sender, _Token, float], list[_Effect]]
_SENDER_MOVES: dict[tuple[_SendState, _Kind], _SenderMove] = {
    (_SendState.ENQ, _Kind.ACK0): _Sender._enq_answered,
    (_SendState.ENQ, _Kind.NAK): _Sender._enq_refused,
    (_SendState.ENQ, _Kind.ENQ): _Sender._peer_enq,
    (_SendState.ENQ, _Kind.WACK): _Sender._busy,
    (_SendState.FRAME, _Kind.ACK0): _Sender._frame_answered,
    (_SendState.FRAME, _Kind.ACK1): _Sender._frame_answered,
    (_SendState.FRAME, _Kind.NAK): _Sender._frame_refused,
    (_SendState.FRAME, _Kind.WACK): _Sender._busy,
    (_SendState.FRAME, _Kind.EOT): _Sender._peer_ended,
    (_SendState.FRAME, _Kind.RVI): _Sender._peer_ended,
}


class _RecvState(enum.Enum):
    ENQ = enum.auto()  # waiting for the master's ENQ
    FRAMES = enum.auto()  # answered it; frames (or EOT) come now
    DONE = enum.auto()


class _Receiver:
    """Slave of one session: DLE '0' to ENQ, the alternating ACK to each good frame, NAK
    to a bad one, the last answer again to ENQ or to a repeat of the last frame."""

    def __init__(
        self,
        start: int,
        *,
        peer: str,
        timers: UcsTimers,
        retries: int,
        enq_timeout: float | None,
        max_frames: int | None = None,
        naks: int = 0,
        wacks: int = 0,
    ) -> None:
        self.start = start
        self.peer = peer
        self.timers = timers
        self.retries = retries
        self.enq_timeout = enq_timeout
        self.max_frames = max_frames
        self.state = _RecvState.ENQ
        self.index = 1  # the frame expected next
        self.deadline: float | None = None
        self._last_answer = _Kind.ACK0
        self._last_key: bytes | None = None
        # Answers the master may still read as the answer to a later frame (see _frame).
        self._spare_answers = 0
        self._problems: list[str] = []
        self._naks = naks  # simulator faults: refuse good frames, or claim to be busy
        self._wacks = wacks
        self._held: _Frame | None = None

    def begin(self, now: float) -> None:
        self.state = _RecvState.ENQ
        self.deadline = None if self.enq_timeout is None else now + self.enq_timeout

    def touch(self, now: float) -> None:
        """The peer is active: timer D restarts."""
        if self.state is _RecvState.FRAMES:
            self.deadline = now + self.timers.inactivity

    def on_token(self, token: _Token, now: float) -> list[_Effect]:
        move = _RECEIVER_MOVES.get((self.state, _key(token)))
        return move(self, token, now) if move else []

    def on_timer(self, _now: float) -> list[_Effect]:
        self.deadline = None
        if self.state is _RecvState.ENQ and self.enq_timeout is not None:
            reason = f"no ENQ from the {self.peer} within {_secs(self.enq_timeout)}"
            return [_Fail(reason, timed_out=True, send_eot=False)]
        if self.state is _RecvState.FRAMES:
            reason = f"nothing from the {self.peer} for {_secs(self.timers.inactivity)}"
            return [_Fail(reason, timed_out=True, send_eot=True)]
        return []

    # moves

    def _open(self, _token: _Token, now: float) -> list[_Effect]:
        self.state = _RecvState.FRAMES
        self.deadline = now + self.timers.inactivity
        return [_Out(_ACK_BYTES[_Kind.ACK0])]

    def _asked(self, _token: _Token, _now: float) -> list[_Effect]:
        if self._held is not None:
            if self._wacks > 0:
                self._wacks -= 1
                return [_Out(_ACK_BYTES[_Kind.WACK])]
            held, self._held = self._held, None
            return self._accept(held)
        # The master's timer A ran out: what we answered before may still reach it, and
        # then one of the two answers arrives while it waits for a later frame.
        self._spare_answers += 1
        return self._setback("ENQ instead of a frame") or [_Out(_ACK_BYTES[self._last_answer])]

    def _closed(self, _token: _Token, _now: float) -> list[_Effect]:
        self.state = _RecvState.DONE
        self.deadline = None
        return [_Ended()]

    def _frame(self, token: _Token, _now: float) -> list[_Effect]:
        if not isinstance(token, _Frame):
            return []
        problem = token.problem
        if problem is None and token.start != self.start:
            problem = f"{_START_NAMES[token.start]} frame in place of {_START_NAMES[self.start]}"
        if problem is not None:
            return self._setback(problem) or [_Out(bytes((NAK,)))]
        if token.key == self._last_key and (token.end == ETX or self._spare_answers):
            # The frame we kept last, again: the master missed our ACK or took a late answer
            # as a refusal. Nothing may follow DLE ETX, so that one is surely a repeat. Equal
            # blocks can be genuine; once an ENQ made us answer twice, an equal block is taken
            # as the repeat that answer provokes (a genuine one is then refused until the
            # read fails: a failed read, never a block kept twice). The answer we give now
            # is one more the master may read late, so the count stays.
            return self._setback("frame repeated") or [_Out(_ACK_BYTES[self._last_answer])]
        if self.max_frames is not None and self.index > self.max_frames:
            return self._setback("more frames than expected") or [_Out(bytes((NAK,)))]
        if self._naks > 0:
            self._naks -= 1
            return [_Out(bytes((NAK,)))]
        if self._wacks > 0:
            self._wacks -= 1
            self._held = token
            return [_Out(_ACK_BYTES[_Kind.WACK])]
        return self._accept(token)

    # helpers

    def _accept(self, frame: _Frame) -> list[_Effect]:
        answer = _ack_for(self.index)
        self.index += 1
        self._last_answer = answer
        self._last_key = frame.key
        self._problems.clear()
        return [_Out(_ACK_BYTES[answer]), _Got(frame)]

    def _setback(self, problem: str) -> list[_Effect]:
        self._problems.append(problem)
        if len(self._problems) <= self.retries:
            return []
        self.state = _RecvState.DONE
        self.deadline = None
        return [_Fail(_summary(self._problems), timed_out=False, send_eot=True)]


_ReceiverMove = Callable[[_Receiver, _Token, float], list[_Effect]]
_RECEIVER_MOVES: dict[tuple[_RecvState, _Kind], _ReceiverMove] = {
    (_RecvState.ENQ, _Kind.ENQ): _Receiver._open,
    (_RecvState.FRAMES, _Kind.FRAME): _Receiver._frame,
    (_RecvState.FRAMES, _Kind.ENQ): _Receiver._asked,
    (_RecvState.FRAMES, _Kind.EOT): _Receiver._closed,
}


# --- the two ends ------------------------------------------------------------------------


class _Endpoint:
    """Plumbing shared by both ends: lexer, output held for the turnaround, timers."""

    peer = ""

    def __init__(self, timers: UcsTimers, retries: int) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.timers = timers
        self.retries = retries
        self.stage = Stage.FIRST_HANDSHAKE
        self.result: Finished | Failed | None = None
        self._session: _Sender | _Receiver | None = None
        self._lexer = _Lexer()
        self._outbox = bytearray()
        self._out_due = 0.0
        self._last_rx: float | None = None
        self._muted = False

    @property
    def done(self) -> bool:
        return self.result is not None

    def receive(self, data: bytes, now: float) -> list[Action]:
        """Bytes that arrived at ``now``."""
        session = self._require_started()
        out: list[Action] = []
        if self._muted:
            return out
        for byte in data:
            if self.result is not None or self._muted:
                break
            self._last_rx = now
            was_in_frame = self._lexer.in_frame
            token = self._lexer.feed(byte)
            session = self._require_started()
            if token is None:
                if self._lexer.in_frame and not was_in_frame:
                    self._touch(now)
                continue
            self._touch(now)
            self._run(session.on_token(token, now), now, out)
        return self._finish(now, out)

    def poll(self, now: float) -> list[Action]:
        """Let the timers that expired by ``now`` act."""
        self._require_started()
        out: list[Action] = []
        for _ in range(64):  # each expiry moves its deadline on; the bound is a safety net
            if self.result is not None or self._muted:
                break
            session = self._require_started()
            if self._outbox and now >= self._out_due:
                self._flush(out)
                continue
            limit = self._frame_deadline()
            if limit is not None and now >= limit:
                problem = f"incomplete frame (no byte for {_secs(self.timers.inter_char)})"
                frame = self._lexer.abandon(problem)
                if frame is not None:
                    self._touch(now)
                    self._run(session.on_token(frame, now), now, out)
                continue
            if session.deadline is not None and now >= session.deadline:
                self._run(session.on_timer(now), now, out)
                continue
            break
        return self._finish(now, out)

    @property
    def deadline(self) -> float | None:
        """When ``poll`` must run next; None when no timer runs."""
        if self.result is not None or self._muted or self._session is None:
            return None
        times = [self._session.deadline, self._frame_deadline()]
        if self._outbox:
            times.append(self._out_due)
        return min((t for t in times if t is not None), default=None)

    # for subclasses

    def _step(self) -> str:
        return self.stage.value

    def _on_frame(self, frame: _Frame, now: float, out: list[Action]) -> None:
        raise NotImplementedError

    def _on_ended(self, now: float, out: list[Action]) -> None:
        raise NotImplementedError

    def _on_peer_enq(self, now: float, out: list[Action]) -> None:
        """The peer wants to be master of the first handshake; the default ignores it."""

    def _on_fail(self, fail: _Fail, now: float, out: list[Action]) -> None:
        self._fail(fail.reason, out, timed_out=fail.timed_out, send_eot=fail.send_eot)

    def _begin(self, session: _Sender | _Receiver, now: float, out: list[Action]) -> None:
        self._session = session
        if isinstance(session, _Sender):
            self._run(session.start(now, pause=True), now, out)
        else:
            session.begin(now)

    def _fail(
        self,
        reason: str,
        out: list[Action],
        *,
        timed_out: bool = False,
        send_eot: bool = False,
        step: str | None = None,
    ) -> None:
        if send_eot:
            self._outbox.append(EOT)
        self._conclude(Failed(step or self._step(), reason, timed_out), out)

    def _conclude(self, result: Finished | Failed, out: list[Action]) -> None:
        self._flush(out)  # a last ACK or EOT goes out now, turnaround or not
        self.result = result
        out.append(result)

    def _sender(self, frames: Sequence[bytes], label: Callable[[int], str]) -> _Sender:
        return _Sender(frames, label, peer=self.peer, timers=self.timers, retries=self.retries)

    def _receiver(
        self, start: int, *, max_frames: int | None = None, naks: int = 0, wacks: int = 0
    ) -> _Receiver:
        return _Receiver(
            start,
            peer=self.peer,
            timers=self.timers,
            retries=self.retries,
            enq_timeout=self.timers.session_wait,
            max_frames=max_frames,
            naks=naks,
            wacks=wacks,
        )

    # plumbing

    def _require_started(self) -> _Sender | _Receiver:
        if self._session is None:
            raise LocalProtocolError("DEX/UCS: start() must come first")
        return self._session

    def _run(self, effects: list[_Effect], now: float, out: list[Action]) -> None:
        for effect in effects:
            if self.result is not None:
                return
            if isinstance(effect, _Out):
                self._queue(effect.data, now)
            elif isinstance(effect, _Got):
                self._on_frame(effect.frame, now, out)
            elif isinstance(effect, _Ended):
                self._on_ended(now, out)
            elif isinstance(effect, _PeerEnq):
                self._on_peer_enq(now, out)
            else:
                self._on_fail(effect, now, out)

    def _queue(self, data: bytes, now: float) -> None:
        if not data:
            return
        if not self._outbox:
            heard = self._last_rx
            self._out_due = now if heard is None else max(now, heard + self.timers.turnaround)
        self._outbox += data

    def _flush(self, out: list[Action]) -> None:
        if self._outbox and not self._muted:
            out.append(Send(bytes(self._outbox)))
        self._outbox.clear()

    def _touch(self, now: float) -> None:
        if self._session is not None and isinstance(self._session, _Receiver):
            self._session.touch(now)

    def _frame_deadline(self) -> float | None:
        if self._lexer.in_frame and self._last_rx is not None:
            return self._last_rx + self.timers.inter_char
        return None

    def _finish(self, now: float, out: list[Action]) -> list[Action]:
        if self.result is None and self._outbox and now >= self._out_due:
            self._flush(out)
        deadline = self.deadline
        if deadline is not None:
            out.append(Wait(deadline))
        return out


class UcsReader(_Endpoint):
    """The data carrier (us): reads the audit from a VMC. One instance per read."""

    peer = "VMC"

    def __init__(
        self,
        comm_id: str = "VMC0000001",
        *,
        revision: str = REVISION,
        timers: UcsTimers | None = None,
        retries: int = 3,
    ) -> None:
        super().__init__(timers or UcsTimers(), retries)
        self.comm_id = check_comm_id(comm_id)
        if len(revision) != 6 or not revision.isascii():
            raise ValueError(f"revision/level {revision!r}: must be 6 characters like R00L06")
        self.revision = revision
        self.legacy = False
        self.vmc: Identification | None = None
        self._audit = bytearray()
        self._complete = False

    def start(self, now: float) -> list[Action]:
        """Open the first handshake: ENQ, then our identification with operation R."""
        if self._session is not None:
            raise LocalProtocolError("DEX/UCS: start() called twice")
        ident = handshake_frame(f"{self.comm_id}R{self.revision}")
        sender = self._sender([ident], lambda _i: "our identification")
        self._session = sender
        out: list[Action] = []
        self._run(sender.start(now, pause=False), now, out)
        return self._finish(now, out)

    def _step(self) -> str:
        session = self._session
        if (
            self.stage is Stage.DATA_TRANSFER
            and isinstance(session, _Receiver)
            and session.state is not _RecvState.ENQ
        ):
            return f"data block {session.index}"
        return self.stage.value

    def _on_peer_enq(self, now: float, out: list[Action]) -> None:
        # A legacy VMC is master of the first handshake: answer its ENQ and listen.
        self.legacy = True
        receiver = self._receiver(SOH, max_frames=1)
        self._begin(receiver, now, out)
        self._run(receiver.on_token(_Kind.ENQ, now), now, out)

    def _on_frame(self, frame: _Frame, now: float, out: list[Action]) -> None:
        if self.stage is Stage.FIRST_HANDSHAKE:  # legacy: <comm ID><op><rev>
            text = frame.payload.decode("latin-1")
            self.vmc = Identification("", text[:10], text[11:])
        elif self.stage is Stage.SECOND_HANDSHAKE:
            if len(frame.payload) < 12:
                self._fail(f"identification too short: {frame.payload!r}", out)
                return
            self.vmc = parse_response(frame.payload)
            code = self.vmc.code
            if code != "00":
                meaning = RESPONSE_CODES.get(code, "unknown response code")
                self._fail(f"VMC answered {code!r} ({meaning})", out)
        else:
            self._audit += frame.payload
            self._complete = frame.end == ETX
            out.append(Progress(len(self._audit)))

    def _on_ended(self, now: float, out: list[Action]) -> None:
        if self.stage is Stage.FIRST_HANDSHAKE:
            self.stage = Stage.SECOND_HANDSHAKE
            if self.legacy:
                ident = handshake_frame(f"00{self.comm_id}{self.revision}")
                self._begin(self._sender([ident], lambda _i: "our identification"), now, out)
            else:
                self._begin(self._receiver(SOH, max_frames=1), now, out)
        elif self.stage is Stage.SECOND_HANDSHAKE:
            if self.vmc is None:
                self._fail("VMC ended the session (EOT) without identifying itself", out)
                return
            self.stage = Stage.DATA_TRANSFER
            self._begin(self._receiver(STX), now, out)
        elif self._complete:
            self._conclude(Finished(bytes(self._audit)), out)
        elif not self._audit:
            step = Stage.DATA_TRANSFER.value
            self._fail("VMC ended the session (EOT) without sending data", out, step=step)
        else:
            self._fail("VMC ended the session (EOT) before the last block", out)

    def _on_fail(self, fail: _Fail, now: float, out: list[Action]) -> None:
        if self._complete:
            # The audit is whole and CRC-checked; what went wrong after it costs nothing.
            self._conclude(Finished(bytes(self._audit)), out)
        else:
            super()._on_fail(fail, now, out)


@dataclass(frozen=True, slots=True)
class SourceFaults:
    """Misbehaviour for :class:`UcsSource` to show, so tests can watch the reader cope."""

    nak_identification: int = 0  # NAK the DC's (good) identification this many times
    wack_identification: int = 0  # answer it with WACK this many times first
    bad_crc_blocks: frozenset[int] = frozenset()  # data blocks (1-based) sent with a bad CRC
    bad_crc_times: int = 1  # ... on this many sends each
    eot_after_block: int | None = None  # abort: EOT once this many blocks were acknowledged
    silent_in: Stage | None = None  # go quiet when this session would start
    silent_from_block: int | None = None  # go quiet instead of sending this data block


class UcsSource(_Endpoint):
    """A VMC serving an audit over DEX/UCS (the simulator's side); one instance per read."""

    peer = "DC"

    def __init__(
        self,
        audit: bytes,
        comm_id: str = "SIM0000001",
        block_size: int = MAX_BLOCK,
        *,
        response_code: str = "00",
        revision: str = REVISION,
        legacy: bool = False,
        id_first: bool = False,
        faults: SourceFaults | None = None,
        timers: UcsTimers | None = None,
        retries: int = 3,
    ) -> None:
        super().__init__(timers or UcsTimers(), retries)
        self.audit = audit
        self.comm_id = check_comm_id(comm_id)
        if len(response_code) != 2:
            raise ValueError(f"response code {response_code!r}: must be 2 characters")
        self.response_code = response_code
        self.revision = revision
        self.legacy = legacy
        self.id_first = id_first
        self.faults = faults or SourceFaults()
        self.blocks = data_blocks(audit, block_size)
        if self.faults.eot_after_block is not None:
            self.blocks = self.blocks[: self.faults.eot_after_block]
        self.dc_comm_id: str | None = None
        self.operation: str | None = None

    def start(self, now: float) -> list[Action]:
        """Legacy: send ENQ at once. Otherwise wait (for ever) for the DC's ENQ."""
        if self._session is not None:
            raise LocalProtocolError("DEX/UCS: start() called twice")
        out: list[Action] = []
        if self.legacy:
            ident = handshake_frame(f"{self.comm_id}S{self.revision}")
            sender = self._sender([ident], lambda _i: "our identification")
            self._session = sender
            self._muted = self.faults.silent_in is Stage.FIRST_HANDSHAKE
            self._run(sender.start(now, pause=False), now, out)
        else:
            self._session = self._identification_receiver()
            self._session.enq_timeout = None
            self._session.begin(now)
            self._muted = self.faults.silent_in is Stage.FIRST_HANDSHAKE
        return self._finish(now, out)

    def _identification_receiver(self) -> _Receiver:
        faults = self.faults
        return self._receiver(
            SOH,
            max_frames=1,
            naks=faults.nak_identification,
            wacks=faults.wack_identification,
        )

    def _on_frame(self, frame: _Frame, now: float, out: list[Action]) -> None:
        text = frame.payload.decode("latin-1")
        if self.legacy:  # the DC's answer in the second handshake
            ident = parse_response(frame.payload)
            self.dc_comm_id = ident.comm_id
        else:
            self.dc_comm_id, self.operation = text[:10], text[10:11]

    def _on_ended(self, now: float, out: list[Action]) -> None:
        if self.stage is Stage.FIRST_HANDSHAKE:
            self.stage = Stage.SECOND_HANDSHAKE
            self._go_quiet_in(Stage.SECOND_HANDSHAKE, out)
            if self.legacy:
                self._begin(self._identification_receiver(), now, out)
                return
            code, ident = self.response_code, self.comm_id
            payload = f"{ident}{code}" if self.id_first else f"{code}{ident}"
            frame = handshake_frame(payload + self.revision)
            self._begin(self._sender([frame], lambda _i: "our identification"), now, out)
        elif self.stage is Stage.SECOND_HANDSHAKE:
            if self.response_code != "00":
                self._conclude(Finished(b""), out)
                return
            self.stage = Stage.DATA_TRANSFER
            self._go_quiet_in(Stage.DATA_TRANSFER, out)
            sender = self._sender(self.blocks, lambda i: f"block {i}")
            sender.tamper = self._tamper
            self._begin(sender, now, out)
        else:
            self._conclude(Finished(self.audit), out)

    def _go_quiet_in(self, stage: Stage, out: list[Action]) -> None:
        if self.faults.silent_in is stage:
            self._flush(out)  # what closes the previous session still goes out
            self._muted = True

    def _tamper(self, index: int, send: int, wire: bytes) -> bytes:
        faults = self.faults
        if faults.silent_from_block is not None and index >= faults.silent_from_block:
            self._muted = True
            return b""
        if index in faults.bad_crc_blocks and send <= faults.bad_crc_times:
            return wire[:-2] + bytes((wire[-2] ^ 0xFF, wire[-1]))
        return wire

    def _step(self) -> str:
        session = self._session
        if self.stage is Stage.DATA_TRANSFER and isinstance(session, _Sender) and session.index:
            return f"data block {session.index}"
        return self.stage.value
