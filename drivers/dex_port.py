"""The DEX port: a plain 8N1 byte stream (no 9th bit) on a UART or a pty.

DEX/UCS runs at 9600 baud; Enhanced DDCMP starts at 2400 and may switch speed after its
START/STACK exchange, hence :meth:`DexPort.set_baud`. On a pty the speed is only recorded.
URLs as for the MDB port: ``uart:///dev/ttyUSB0[?baud=9600]``, ``pty:///dev/pts/N``.
"""

from __future__ import annotations

import os
import termios
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from drivers.pty import make_raw
from drivers.transport import read_some, write_all
from protocols.errors import PortError

DEX_BAUD = 9600
DDCMP_START_BAUD = 2400
_SPEEDS = {
    1200: termios.B1200,
    2400: termios.B2400,
    4800: termios.B4800,
    9600: termios.B9600,
    19200: termios.B19200,
    38400: termios.B38400,
    57600: termios.B57600,
    115200: termios.B115200,
}


class DexPort:
    """Non-blocking 8N1 port; ``fileno()`` for an event loop to watch."""

    def __init__(self, fd: int, url: str, baud: int, serial: Any = None) -> None:
        self._fd = fd
        self.url = url
        self.baud = baud
        self._serial = serial
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def read_available(self) -> bytes:
        """Bytes waiting now; b"" if none. PortError when the line is gone."""
        data = read_some(self._fd, self.url)
        if data is None:
            raise PortError(f"{self.url}: the other end hung up")
        return data

    def write(self, data: bytes) -> None:
        write_all(self._fd, self.url, data)

    def set_baud(self, baud: int) -> None:
        if baud not in _SPEEDS:
            raise PortError(f"{self.url}: {baud} baud is not one of {sorted(_SPEEDS)}")
        attrs = termios.tcgetattr(self._fd)
        attrs[4] = attrs[5] = _SPEEDS[baud]
        termios.tcsetattr(self._fd, termios.TCSADRAIN, attrs)
        self.baud = baud

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
        elif self._fd >= 0:
            os.close(self._fd)
        self._fd = -1


def open_dex_port(url: str, baud: int = DEX_BAUD) -> DexPort:
    parts = urlsplit(url)
    if parts.scheme not in ("uart", "pty") or not parts.path.startswith("/dev/"):
        raise PortError(f"DEX port URL {url!r}: use uart:///dev/... or pty:///dev/pts/N")
    query = dict(parse_qsl(parts.query))
    if "baud" in query:
        if not query["baud"].isdigit() or int(query["baud"]) not in _SPEEDS:
            raise PortError(f"{url}: baud must be one of {sorted(_SPEEDS)}")
        baud = int(query["baud"])
    if parts.scheme == "pty":
        try:
            fd = os.open(parts.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise PortError(f"{url}: cannot open: {exc.strerror}") from exc
        make_raw(fd)
        port = DexPort(fd, url, baud)
        port.set_baud(baud)
        return port
    import serial

    try:
        ser = serial.Serial(parts.path, baud, bytesize=8, parity="N", stopbits=1, timeout=0)
    except (serial.SerialException, ValueError) as exc:
        raise PortError(f"{url}: cannot open: {exc}") from exc
    if ser.fd is None:
        raise PortError(f"{url}: pyserial gave no file descriptor")
    return DexPort(ser.fd, url, baud, ser)
