"""MDB link layer, peripheral side (MDB/ICP 4.2 §2.2-2.5): blocks, CHK, ACK/RET/NAK.

Theory of operation: the VMC opens every block with a word whose mode bit is set; its top
five bits are the address. Blocks for other addresses are skipped word by word until the next
mode word. A block for us ends when it reaches the length that the command's table entry gives
(:func:`protocols.mdb.commands.block_lengths`), or, for variable-length commands, where its
running sum matches the last byte. After we send a data block, the next word is the VMC's
ACK, RET or NAK whatever its mode bit says (on a Pi the parity switch can flip it). A data block
that was not ACKed is kept: RET resends it at once and the cashless core resends it on the next
POLL. ``FF 00 00`` outside that slot is a BREAK or framing error, reported as a line event.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.mdb.commands import ACK, MAX_BLOCK, NAK, RET, block_lengths
from protocols.mdb.words import Word, checksum


@dataclass(frozen=True, slots=True)
class BlockReceived:
    """A complete VMC block for us, CHK verified and stripped."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ChecksumFailed:
    data: bytes


@dataclass(frozen=True, slots=True)
class Acked:
    """The VMC acknowledged our last data block."""


@dataclass(frozen=True, slots=True)
class RetransmitRequested:
    pass


@dataclass(frozen=True, slots=True)
class Nakked:
    pass


@dataclass(frozen=True, slots=True)
class LineEvent:
    """BREAK (bus reset) or a framing error: the UART's ``FF 00 00``."""


LinkEvent = BlockReceived | ChecksumFailed | Acked | RetransmitRequested | Nakked | LineEvent
_REPLY_WORDS: dict[int, Acked | RetransmitRequested | Nakked] = {
    ACK: Acked(),
    RET: RetransmitRequested(),
    NAK: Nakked(),
}


class PeripheralLink:
    """Assembles VMC blocks addressed to ``base`` and frames our answers."""

    def __init__(self, base: int) -> None:
        if base & 0x07:
            raise ValueError(f"address {base:#04x} is not a device base address")
        self.base = base
        self.wide = False
        self._partial: bytearray | None = None
        self._awaiting_reply = False
        self.unacked: bytes | None = None

    def receive_word(self, word: Word) -> LinkEvent | None:
        """One word in; the event it completes, if any.

        Word at a time on purpose: the caller must answer a block (and so start waiting for
        the VMC's ACK) before the next word is read, even when both arrived in one read.
        """
        if self._awaiting_reply:
            self._awaiting_reply = False
            reply = _REPLY_WORDS.get(word.value)
            if reply is not None:
                if isinstance(reply, Acked):
                    self.unacked = None
                return reply
        if word.mode:
            if word.value == 0x00:
                self._partial = None
                return LineEvent()
            if (word.value & 0xF8) != self.base:
                self._partial = None
                return None
            self._partial = bytearray((word.value,))
        elif self._partial is not None:
            self._partial.append(word.value)
        else:
            return None
        return self._complete()

    def _complete(self) -> LinkEvent | None:
        partial = self._partial
        assert partial is not None
        lengths = block_lengths(bytes(partial[:2]), wide=self.wide)
        if lengths is None:
            return None
        n = len(partial)
        if n < 2:
            return None
        chk_ok = checksum(bytes(partial[:-1])) == partial[-1]
        if not lengths:
            if chk_ok and n >= 3:
                self._partial = None
                return BlockReceived(bytes(partial[:-1]))
            if n >= MAX_BLOCK:
                self._partial = None
                return ChecksumFailed(bytes(partial))
            return None
        if n in lengths and chk_ok:
            self._partial = None
            return BlockReceived(bytes(partial[:-1]))
        if n >= max(lengths):
            self._partial = None
            return ChecksumFailed(bytes(partial))
        return None

    def frame(self, payload: bytes) -> bytes:
        """Our data block with CHK appended; held until the VMC ACKs it."""
        block = payload + bytes((checksum(payload),))
        self.unacked = block
        self._awaiting_reply = True
        return block

    def resend(self) -> bytes | None:
        """The held block again (RET, or a POLL that found it un-ACKed)."""
        if self.unacked is not None:
            self._awaiting_reply = True
        return self.unacked

    def drop_unacked(self) -> None:
        """The VMC moved on with another command: the held block is superseded."""
        self.unacked = None
        self._awaiting_reply = False

    def reset(self) -> None:
        self._partial = None
        self.drop_unacked()
