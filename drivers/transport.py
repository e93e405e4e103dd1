"""The L0 interface: an MDB port that moves 9-bit words over a file descriptor.

Every backend delivers received bytes in the escaped form of :mod:`protocols.mdb.words`
(``FF 00 b`` for a mode-bit byte, ``FF FF`` for a literal FF): a Linux UART does so itself
under SPACE parity with ``PARMRK``, and the pty and loopback backends carry the same escape
in-band. Only sending differs: the UART switches stick parity, the others escape.
Ports are non-blocking and expose ``fileno()`` so an event loop can watch them.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Sequence
from typing import Protocol

from protocols.errors import PortError
from protocols.mdb.words import Word, encode_words

READ_CHUNK = 4096
WRITE_TIMEOUT_S = 1.0


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
        data = read_some(self._fd, self.url)
        if data is None:
            raise PortError(f"{self.url}: the other end hung up")
        return data

    def write_words(self, words: Sequence[Word]) -> None:
        write_all(self._fd, self.url, encode_words(words))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_some(fd: int, url: str) -> bytes | None:
    """One non-blocking read: b"" when nothing is waiting, None at end of file."""
    try:
        data = os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return b""
    except OSError as exc:
        raise PortError(f"{url}: read failed: {exc}") from exc
    return data or None


def write_all(fd: int, url: str, data: bytes, timeout: float = WRITE_TIMEOUT_S) -> None:
    """Write every byte to a non-blocking descriptor, waiting while it is full."""
    view = memoryview(data)
    deadline: float | None = None
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            now = time.monotonic()
            deadline = deadline or now + timeout
            if now >= deadline:
                raise PortError(f"{url}: write timed out after {timeout} s") from None
            select.select([], [fd], [], deadline - now)
            continue
        except OSError as exc:
            raise PortError(f"{url}: write failed: {exc}") from exc
        view = view[written:]
