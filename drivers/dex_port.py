"""The DEX port: a plain 8N1 byte stream (no 9th bit) on a UART or a pty.

DEX/UCS runs at 9600 baud; Enhanced DDCMP starts at 2400 and may switch speed after its
START/STACK exchange, hence :meth:`DexPort.set_baud`. On a pty the speed is only recorded.
URLs as for the MDB port, read by :func:`drivers.ports.parse_port_url`:
``uart:///dev/ttyUSB0[?baud=9600]``, ``pty:///dev/pts/N``.
"""

from __future__ import annotations

import os
import termios
from typing import Any

from drivers.ports import DEX_BAUDS, PortKind, PortUrl, cannot_open, parse_port_url
from drivers.pty import make_raw
from drivers.transport import read_some, write_all
from protocols.errors import PortError

DEX_BAUD = 9600
DDCMP_START_BAUD = 2400
_SPEEDS: dict[int, int] = {baud: getattr(termios, f"B{baud}") for baud in DEX_BAUDS}


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
    """Open the DEX port at ``url``; ``baud`` unless the URL's ``baud`` option says otherwise."""
    return open_plain(parse_port_url(url, PortKind.DEX), baud)


def open_plain(target: PortUrl, baud: int) -> DexPort:
    """A plain 8N1 port at ``target`` (a checked ``uart://`` or ``pty://`` URL); ``baud`` unless
    the URL's ``baud`` option says otherwise. The EXE port without a 9th bit uses it too."""
    url = target.url
    baud = target.baud or baud
    if target.scheme == "pty":
        try:
            fd = os.open(target.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            raise cannot_open(url, exc) from exc
        try:
            make_raw(fd)
        except termios.error as exc:
            os.close(fd)
            raise PortError(f"{url}: not a terminal") from exc
        port = DexPort(fd, url, baud)
        port.set_baud(baud)
        return port
    import serial

    try:
        ser = serial.Serial(target.device, baud, bytesize=8, parity="N", stopbits=1, timeout=0)
    except (serial.SerialException, ValueError, OSError, termios.error) as exc:
        raise cannot_open(url, exc) from exc
    if ser.fd is None:
        raise PortError(f"{url}: pyserial gave no file descriptor")
    return DexPort(ser.fd, url, baud, ser)
