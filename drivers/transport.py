"""The L0 interface: an MDB port that moves 9-bit words over a file descriptor.

Every backend delivers received bytes in the escaped form of :mod:`protocols.mdb.words`
(``FF 00 b`` for a mode-bit byte, ``FF FF`` for a literal FF): a Linux UART does so itself
under SPACE parity with ``PARMRK``, and the pty and loopback backends carry the same escape
in-band. Only sending differs: the UART switches stick parity, the others escape.
Ports are non-blocking and expose ``fileno()`` so an event loop can watch them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

from protocols.errors import PortError
from protocols.mdb.words import Word, encode_words

READ_CHUNK = 4096


class MdbPort(Protocol):
    url: str

    def fileno(self) -> int: ...

    def read_available(self) -> bytes:
        """Whatever bytes are waiting (escaped form); b"" if none. PortError on hang-up."""
        ...

    def write_words(self, words: Sequence[Word]) -> None:
        """Send words with their mode bits; returns once the bytes are handed to the OS."""
        ...

    def close(self) -> None: ...


class FdPort:
    """A port over any non-blocking descriptor that carries the escape in-band."""

    def __init__(self, fd: int, url: str) -> None:
        self._fd = fd
        self.url = url
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def read_available(self) -> bytes:
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return b""
        except OSError as exc:
            raise PortError(f"{self.url}: read failed: {exc}") from exc
        if not data:
            raise PortError(f"{self.url}: the other end hung up")
        return data

    def write_words(self, words: Sequence[Word]) -> None:
        self.write_raw(encode_words(words))

    def write_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                _wait_writable(self._fd)
                continue
            except OSError as exc:
                raise PortError(f"{self.url}: write failed: {exc}") from exc
            view = view[n:]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _wait_writable(fd: int) -> None:
    import select

    select.select([], [fd], [], 0.05)
