"""9-bit MDB words and the in-band escape that carries the mode bit over 8-bit byte streams.

A Linux UART set to SPACE parity with ``INPCK|PARMRK`` reports a byte whose 9th (mode) bit is
set as ``FF 00 b`` and a literal ``FF`` as ``FF FF``. vmc uses exactly that escape in both
directions on a pty or loopback, so the receive decoder below is the same code on hardware and
on the bench. A BREAK or framing error also arrives as ``FF 00 00``; since no VMC address is
0x00, that word is read as "line event" by the link layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ESCAPE = 0xFF
MODE_MARK = 0x00


@dataclass(frozen=True, slots=True)
class Word:
    """One 9-bit MDB character: eight data bits and the mode bit."""

    value: int
    mode: bool = False

    def __str__(self) -> str:
        return f"{int(self.mode)}{self.value:02X}"


class WordDecoder:
    """Turns an escaped byte stream into words; keeps state across arbitrary splits."""

    def __init__(self) -> None:
        self._pending: bytearray = bytearray()
        self.malformed = 0

    def feed(self, data: bytes) -> list[Word]:
        """Decode as many words as ``data`` completes; an unfinished escape waits for more."""
        buf = self._pending
        buf += data
        out: list[Word] = []
        i = 0
        n = len(buf)
        while i < n:
            b = buf[i]
            if b != ESCAPE:
                out.append(Word(b))
                i += 1
                continue
            if i + 1 >= n:
                break
            nxt = buf[i + 1]
            if nxt == ESCAPE:
                out.append(Word(ESCAPE))
                i += 2
            elif nxt == MODE_MARK:
                if i + 2 >= n:
                    break
                out.append(Word(buf[i + 2], mode=True))
                i += 3
            else:
                # Not a valid escape: the kernel never produces it. Keep the FF as data
                # and count it, so a noisy line is visible but never fatal.
                self.malformed += 1
                out.append(Word(ESCAPE))
                i += 1
        del buf[:i]
        return out


def encode_words(words: Iterable[Word]) -> bytes:
    """Escape words into the in-band byte form that :class:`WordDecoder` reads."""
    out = bytearray()
    for w in words:
        if w.mode:
            out += bytes((ESCAPE, MODE_MARK, w.value))
        elif w.value == ESCAPE:
            out += b"\xff\xff"
        else:
            out.append(w.value)
    return bytes(out)


def peripheral_words(block: bytes) -> list[Word]:
    """A peripheral block on the wire: mode bit on the last byte only."""
    last = len(block) - 1
    return [Word(b, mode=(i == last)) for i, b in enumerate(block)]


def vmc_words(block: bytes) -> list[Word]:
    """A VMC block on the wire: mode bit on the first (address) byte only."""
    return [Word(b, mode=(i == 0)) for i, b in enumerate(block)]


def checksum(data: bytes) -> int:
    """MDB CHK: the sum of the block's bytes, address included, modulo 256."""
    return sum(data) & 0xFF
