"""The bus monitor's frames: one decoded exchange on the MDB bus, and how it is shown or kept.

The bus process sends each exchange raw (:class:`~vmc.services.bus_messages.Exchange`: hex and
timings, nothing decoded, so its answers never wait on this); :func:`decode` turns it into a
:class:`MonitorFrame` in the daemon. The rest is pure formatting for ``vmctl mdb monitor``
(:func:`format_line`, :func:`to_json`) and ``vmctl mdb record`` (:class:`TraceWriter`, the trace
format of ``shared/corpus/mdb/`` that ``vmc-sim replay`` plays back).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TextIO

from protocols.errors import RemoteProtocolError
from protocols.mdb import commands as c
from protocols.mdb.trace import Direction, TraceLine
from protocols.mdb.words import Word, peripheral_words, vmc_words
from vmc.services.bus_messages import Exchange, ExchangeKind

_SUBCOMMANDS: dict[int, type[IntEnum]] = {
    c.Cmd.SETUP: c.SetupSub,
    c.Cmd.VEND: c.VendSub,
    c.Cmd.READER: c.ReaderSub,
    c.Cmd.REVALUE: c.RevalueSub,
    c.Cmd.EXPANSION: c.ExpansionSub,
}
_ONE_WORD_NAMES = {
    ExchangeKind.ACK: "ACK",
    ExchangeKind.RET: "RET",
    ExchangeKind.NAK: "NAK",
    ExchangeKind.BUS_RESET: "BUS RESET",
}


@dataclass(frozen=True, slots=True)
class MonitorFrame:
    """One exchange: what the VMC sent, what the reader answered, and when.

    ``command``/``response`` are names (``"VEND REQUEST"``, ``"BEGIN SESSION"``, ``"ACK"``;
    ``response`` None: the reader sent nothing); the bytes are as on the wire, CHK included.
    ``detail``: the command's fields, money in bus units. ``answer_ms``: from reading the
    VMC's bytes to the written answer, inside the bus process (0 without an answer);
    ``poll_gap_ms``: for a POLL, since the previous POLL. ``dropped``: exchanges left out
    before this one because a listener did not keep up.
    """

    at: float
    kind: ExchangeKind
    command: str
    command_bytes: bytes
    detail: str
    response: str | None
    response_bytes: bytes
    answer_ms: float
    poll_gap_ms: float | None
    dropped: int = 0

    @property
    def is_poll(self) -> bool:
        return self.kind is ExchangeKind.BLOCK and self.command == "POLL"


def command_name(block: bytes) -> str:
    """A VMC block's name from its command and subcommand bytes (address bits ignored)."""
    if not block:
        return "EMPTY"
    cmd = block[0] & 0x07
    try:
        name = c.Cmd(cmd).name
    except ValueError:
        return f"COMMAND {cmd}"
    subs = _SUBCOMMANDS.get(cmd)
    if subs is None or len(block) < 2:
        return name
    try:
        sub = subs(block[1]).name
    except ValueError:
        return f"{name} {block[1]:02X}"
    return f"{name} {sub}".replace("_", " ")


def answer_name(answer: bytes) -> str | None:
    """ACK, NAK or the response's name; None when nothing was sent."""
    if not answer:
        return None
    if len(answer) == 1:
        return {c.ACK: "ACK", c.NAK: "NAK"}.get(answer[0], f"WORD {answer[0]:02X}")
    return c.response_name(answer[0]).replace("_", " ")


def command_detail(block: bytes, *, wide: bool) -> str:
    """The fields of a VMC block (CHK included), ``name=value`` each; "" when it has none."""
    try:
        command = c.parse_command(block[:-1], wide=wide)
    except RemoteProtocolError:
        return ""
    fields = []
    for f in dataclasses.fields(command):
        value = getattr(command, f.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, str):
            value = repr(value)
        fields.append(f"{f.name}={value}")
    return " ".join(fields)


def decode(exchange: Exchange) -> MonitorFrame:
    """The frame of one raw exchange from the bus process."""
    vmc = bytes.fromhex(exchange.vmc)
    answer = bytes.fromhex(exchange.answer)
    kind = exchange.kind
    if kind is ExchangeKind.BLOCK:
        name, detail = command_name(vmc), command_detail(vmc, wide=exchange.wide)
    elif kind is ExchangeKind.BAD_CHECKSUM:
        name, detail = "BAD CHECKSUM", ""
    else:
        name, detail = _ONE_WORD_NAMES[kind], ""
    gap = exchange.poll_gap_s
    return MonitorFrame(
        exchange.at,
        kind,
        name,
        vmc,
        detail,
        answer_name(answer),
        answer,
        round(exchange.answer_s * 1000, 3),
        None if gap is None else round(gap * 1000, 3),
        exchange.dropped,
    )


def _spaced(data: bytes) -> str:
    return data.hex(" ").upper()


def format_line(frame: MonitorFrame, zone: dt.tzinfo | None = None) -> str:
    """One human line: time, the command (its bytes unless a POLL), the answer, the timing."""
    clock = dt.datetime.fromtimestamp(frame.at, zone).strftime("%H:%M:%S.%f")[:-3]
    parts = [clock, frame.command]
    if frame.detail:
        parts.append(frame.detail)
    if frame.kind is ExchangeKind.BLOCK and not frame.is_poll:
        parts.append(f"[{_spaced(frame.command_bytes)}]")
    if frame.response is not None:
        parts.append(f"-> {frame.response}")
        if len(frame.response_bytes) > 1:
            parts.append(f"[{_spaced(frame.response_bytes)}]")
        parts.append(f"({frame.answer_ms:.2f} ms)")
    if frame.poll_gap_ms is not None:
        parts.append(f"gap {frame.poll_gap_ms:.1f} ms")
    if frame.dropped:
        parts.append(f"[{frame.dropped} dropped before]")
    return "  ".join(parts)


def to_json(frame: MonitorFrame) -> dict[str, Any]:
    """The frame as ``vmctl mdb monitor --json`` prints it (hex without spaces)."""
    return {
        "at": frame.at,
        "kind": frame.kind.value,
        "command": frame.command,
        "command_hex": frame.command_bytes.hex(),
        "detail": frame.detail,
        "response": frame.response,
        "response_hex": frame.response_bytes.hex(),
        "answer_ms": frame.answer_ms,
        "poll_gap_ms": frame.poll_gap_ms,
        "dropped": frame.dropped,
    }


def trace_lines(frame: MonitorFrame) -> list[TraceLine]:
    """The frame in the trace format: the VMC's line, then the reader's if it answered."""
    kind = frame.kind
    if kind is ExchangeKind.BLOCK:
        comment = f"{frame.command} {frame.detail}".strip()
        lines = [TraceLine(Direction.VMC, tuple(vmc_words(frame.command_bytes)), comment)]
    elif kind is ExchangeKind.BAD_CHECKSUM:
        lines = [TraceLine(Direction.VMC, tuple(vmc_words(frame.command_bytes)), frame.command)]
    elif kind is ExchangeKind.BUS_RESET:
        lines = [TraceLine(Direction.VMC, (Word(0x00, mode=True),), frame.command)]
    else:  # the VMC's reply to our data block: one word, mode bit clear
        comment = "" if kind is ExchangeKind.ACK else frame.command
        lines = [TraceLine(Direction.VMC, (Word(frame.command_bytes[0]),), comment)]
    if frame.response_bytes:
        words = tuple(peripheral_words(frame.response_bytes))
        lines.append(TraceLine(Direction.PER, words, frame.response or ""))
    return lines


class TraceWriter:
    """Writes frames to ``out`` as a trace (``vmctl mdb record FILE``); a gap where frames were
    dropped is a comment line, so a replay knows the trace is not whole there."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.frames = 0

    def comment(self, text: str) -> None:
        for line in text.splitlines():
            self.out.write(f"# {line}\n")

    def write(self, frame: MonitorFrame) -> None:
        if frame.dropped:
            self.comment(f"{frame.dropped} exchanges dropped here (the recorder fell behind)")
        for line in trace_lines(frame):
            self.out.write(line.format() + "\n")
        self.frames += 1
