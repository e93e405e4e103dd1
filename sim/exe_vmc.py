"""A simulated Executive VMC: the peripheral that answers vmc's commands, one byte each.

It plugs in at L0 like the MDB VMC (the master end of a pty pair; the 9th bit travels in-band
and is recorded, not required). vmc sends STATUS, CREDIT and VEND; this VMC answers its status
byte, the selection waiting (the byte a customer's choice makes: a price line with price
holding, a price otherwise) or NO VEND REQUEST, and the vend's result once the vend took
``vend_s``. A selection waits at most ``request_wait_s`` for its VEND (a real VMC's "waiting time
after vend request") and is then given up. Faults on demand: PNAK to the next commands (without
acting on them), silence, a vend that fails.

It keeps what a test needs to judge vmc: every command as it arrived, each selection with the
VENDs it got (a second one would be a second product) and how it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from drivers.transport import MdbPort
from protocols.errors import VmcError
from protocols.exe.commands import NO_VEND_REQUEST, PNAK, VEND_SUCCESS, Command
from protocols.mdb.words import Word, WordDecoder

VEND_FAILED = 0x01
"""What this VMC answers a VEND that failed (any byte but 0x00 and PNAK means failure)."""


@dataclass
class Selection:
    """One customer's choice as the VMC shows it in its CREDIT replies."""

    byte: int
    fail: bool
    at: float
    done: asyncio.Future[str]
    vends: int = 0  # VEND commands this VMC acted on for it

    @property
    def outcome(self) -> str | None:
        """``vended``, ``failed`` or ``given_up`` once it ended."""
        return self.done.result() if self.done.done() else None


@dataclass
class Heard:
    """One command as it arrived: when (monotonic), its byte and its 9th bit."""

    at: float
    value: int
    mode: bool


@dataclass
class ExeVmc:
    port: MdbPort
    status: int = 0x00
    request_wait_s: float = 30.0
    vend_s: float = 0.2
    heard: list[Heard] = field(default_factory=list)
    selections: list[Selection] = field(default_factory=list)
    stray_vends: int = 0  # VENDs with no selection waiting
    _pending: Selection | None = None
    _pnak_left: int = 0
    _silent: bool = False
    _decoder: WordDecoder = field(default_factory=WordDecoder)
    _vending: asyncio.TimerHandle | None = None

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.port.fileno(), self._readable)

    def close(self) -> None:
        if self._vending is not None:
            self._vending.cancel()
        asyncio.get_running_loop().remove_reader(self.port.fileno())

    # --- customers and faults -------------------------------------------------------------

    def select(self, byte: int, *, fail: bool = False) -> Selection:
        """A customer chooses: the VMC shows ``byte`` in its CREDIT replies from now on."""
        if self._pending is not None and not self._pending.done.done():
            self._end(self._pending, "given_up")
        selection = Selection(
            byte, fail, time.monotonic(), asyncio.get_running_loop().create_future()
        )
        self.selections.append(selection)
        self._pending = selection
        return selection

    def give_up(self) -> None:
        """The customer walks away (or presses cancel): nothing waits any more."""
        if self._pending is not None:
            self._end(self._pending, "given_up")

    def pnak(self, count: int) -> None:
        """Answer PNAK to the next ``count`` commands, acting on none of them."""
        self._pnak_left = count

    def silence(self, silent: bool = True) -> None:
        """Stop answering (a VMC switched off, a cable pulled), or answer again."""
        self._silent = silent

    def commands(self, since: float = 0.0) -> list[int]:
        return [h.value for h in self.heard if h.at >= since]

    # --- the line ---------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self.port.read_available()
        except VmcError:
            return
        now = time.monotonic()
        for word in self._decoder.feed(data):
            self.heard.append(Heard(now, word.value, word.mode))
            reply = self._answer(word.value, now)
            if reply is not None:
                self._reply(reply)

    def _answer(self, value: int, now: float) -> int | None:
        if self._silent:
            return None
        if self._pnak_left > 0:
            self._pnak_left -= 1
            return PNAK
        pending = self._pending
        if pending is not None and now - pending.at > self.request_wait_s:
            self._end(pending, "given_up")
            pending = None
        match value:
            case Command.STATUS:
                return self.status
            case Command.CREDIT:
                return NO_VEND_REQUEST if pending is None else pending.byte
            case Command.VEND if pending is None:
                self.stray_vends += 1
                return VEND_FAILED
            case Command.VEND:
                assert pending is not None
                pending.vends += 1
                self._pending = None  # the motor turns: the selection is no longer shown
                loop = asyncio.get_running_loop()
                self._vending = loop.call_later(self.vend_s, self._vended, pending)
                return None
        return PNAK  # a command this VMC does not know

    def _vended(self, selection: Selection) -> None:
        self._vending = None
        self._end(selection, "failed" if selection.fail else "vended")
        if not self._silent:
            self._reply(VEND_FAILED if selection.fail else VEND_SUCCESS)

    def _end(self, selection: Selection, outcome: str) -> None:
        if not selection.done.done():
            selection.done.set_result(outcome)
        if self._pending is selection:
            self._pending = None

    def _reply(self, value: int) -> None:
        with contextlib.suppress(VmcError):  # nobody on the line: the reply is lost, as on a VMC
            self.port.write_words([Word(value)])
