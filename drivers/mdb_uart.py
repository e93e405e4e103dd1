"""UART backend: the MDB 9th (mode) bit carried by stick parity on a Linux serial port.

Theory of operation
-------------------
An MDB character is 1 start, 8 data, 1 mode, 1 stop bit. A UART set to *stick* parity
(``PARENB|CMSPAR``) sends a parity bit that does not depend on the data: always 1 under MARK
(``PARODD`` set), always 0 under SPACE. That bit sits exactly where MDB puts the mode bit, so

* **sending**: data bytes go out under SPACE, mode-bit bytes under MARK. A peripheral block is
  ``data... CHK`` with the mode bit on CHK only (a lone ACK is one MARK byte), so the port
  writes the data, switches to MARK with ``tcsetattr(TCSADRAIN)`` (which first waits until the
  data has left the shift register), writes the last byte, then drains and switches back to
  SPACE. The gap before CHK has to stay under the 1 ms inter-byte limit; measure it on the
  target board.
* **receiving**: the port stays in SPACE with ``INPCK|PARMRK`` set and ``IGNPAR|ISTRIP``
  clear. A byte whose mode bit is 1 then "fails" parity and the kernel hands it to user
  space as ``FF 00 b``; a literal ``FF`` is doubled to ``FF FF`` so the escape stays
  unambiguous. BREAK and framing errors arrive as ``FF 00 00`` (``IGNBRK|BRKINT`` clear), which
  no VMC address collides with. :meth:`UartPort.read_available` returns these bytes untouched;
  :class:`protocols.mdb.words.WordDecoder` decodes them, the same decoder the pty and loopback
  backends feed with the same escape written in-band.

Gotchas
-------
* pyserial's ``_reconfigure_port`` clears ``PARMRK``, ``INPCK`` and ``ISTRIP`` every time it
  runs: on open and on *any* later assignment (``ser.parity``, ``ser.baudrate``, ...). This
  module therefore sets the termios flags itself on ``ser.fd`` after opening, and
  :meth:`UartPort.reapply` must be called after any pyserial reconfiguration. The per-block
  parity switch is done with raw ``termios`` for the same reason, never through pyserial.
* RX and TX share one ``c_cflag``. While the port is in MARK to send our last byte, a byte
  arriving from the VMC is checked against MARK, so its flag comes out *inverted*: the VMC's
  ACK/RET/NAK that follows our block may be reported as a mode-bit byte. The link layer must
  take the single byte after our data block as the VMC's answer whatever its parity says.
* Hang-up: with ``VMIN=0, VTIME=0`` a tty read returns ``b""`` both when nothing is waiting and
  after a hang-up (USB adapter unplugged, pty master closed). An empty read is therefore
  followed by a zero-timeout ``poll``; ``POLLHUP``/``POLLERR`` turn it into :class:`PortError`.
* Only the Pi's PL011 (``ttyAMA*``) does stick parity; the mini-UART (``ttyS0``) has none.
  A pty accepts and stores the flags but ignores parity, which is what the unit tests use.
"""

from __future__ import annotations

import contextlib
import select
import termios
from collections.abc import Sequence
from typing import Any

import serial

from drivers.ports import MDB_BAUD, PortUrl, cannot_open
from drivers.transport import read_some, write_all
from protocols.errors import PortError
from protocols.mdb.words import Word

__all__ = [
    "CMSPAR",
    "UartPort",
    "mark_attributes",
    "open_uart",
    "space_attributes",
]

#: Linux "stick parity" flag; Python's termios module does not always export it.
CMSPAR: int = getattr(termios, "CMSPAR", 0o10000000000)

#: Seconds a block may wait for room in the output buffer before the write is refused.
WRITE_TIMEOUT = 1.0

# tcgetattr list indices.
_IFLAG, _OFLAG, _CFLAG, _LFLAG, _CC = 0, 1, 2, 3, 6

_IFLAG_SET = termios.INPCK | termios.PARMRK
_IFLAG_CLEAR = (
    termios.IGNPAR
    | termios.ISTRIP
    | termios.IGNBRK
    | termios.BRKINT
    | termios.ICRNL
    | termios.INLCR
    | termios.IGNCR
    | termios.IXON
    | termios.IXOFF
    | termios.IXANY
    | getattr(termios, "IUCLC", 0)
)
_OFLAG_CLEAR = termios.OPOST
_CFLAG_SET = termios.CS8 | termios.PARENB | CMSPAR | termios.CLOCAL | termios.CREAD
_CFLAG_CLEAR = termios.CSIZE | termios.PARODD | termios.CSTOPB | getattr(termios, "CRTSCTS", 0)
_LFLAG_CLEAR = (
    termios.ICANON
    | termios.ECHO
    | termios.ECHOE
    | termios.ECHOK
    | termios.ECHONL
    | termios.ISIG
    | termios.IEXTEN
)

_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL


def space_attributes(attrs: Sequence[Any]) -> list[Any]:
    """The termios list for receiving (and sending data bytes): raw 8-bit, SPACE stick parity.

    ``attrs`` is a ``termios.tcgetattr`` list; it is not modified. Speeds are kept as given.
    """
    out = list(attrs)
    out[_IFLAG] = (attrs[_IFLAG] & ~_IFLAG_CLEAR) | _IFLAG_SET
    out[_OFLAG] = attrs[_OFLAG] & ~_OFLAG_CLEAR
    out[_CFLAG] = (attrs[_CFLAG] & ~_CFLAG_CLEAR) | _CFLAG_SET
    out[_LFLAG] = attrs[_LFLAG] & ~_LFLAG_CLEAR
    cc = list(attrs[_CC])
    cc[termios.VMIN] = 0
    cc[termios.VTIME] = 0
    out[_CC] = cc
    return out


def mark_attributes(attrs: Sequence[Any]) -> list[Any]:
    """The termios list for sending mode-bit bytes: :func:`space_attributes` plus ``PARODD``."""
    out = space_attributes(attrs)
    out[_CFLAG] |= termios.PARODD
    return out


class UartPort:
    """An MDB port on a serial device opened by pyserial; see the module docstring.

    The port is always left in SPACE between calls, ready to receive. ``serial`` is the
    underlying :class:`serial.Serial`; after changing any of its settings call :meth:`reapply`.
    """

    def __init__(
        self, ser: serial.Serial, url: str, *, write_timeout: float = WRITE_TIMEOUT
    ) -> None:
        if ser.fd is None:
            raise PortError(f"{url}: serial port is not open")
        self.serial = ser
        self.url = url
        self._fd: int = ser.fd
        self._write_timeout = write_timeout
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._space_attrs: list[Any] = []
        self._mark_attrs: list[Any] = []
        #: Whether ASYNC_LOW_LATENCY was accepted by the driver (see :func:`open_uart`).
        self.low_latency = False
        self.reapply()

    # -- configuration -------------------------------------------------------------------

    def reapply(self) -> None:
        """Recompute the SPACE/MARK attribute lists from the current settings and enter SPACE.

        Call after any pyserial reconfiguration (it clears ``PARMRK``/``INPCK``); the speed
        pyserial set is kept.
        """
        try:
            current = termios.tcgetattr(self._fd)
            self._space_attrs = space_attributes(current)
            self._mark_attrs = mark_attributes(current)
            termios.tcsetattr(self._fd, termios.TCSANOW, self._space_attrs)
        except termios.error as exc:
            raise PortError(f"{self.url}: cannot set termios flags: {exc}") from exc

    @property
    def space_attrs(self) -> list[Any]:
        """The precomputed receive/data attribute list (do not modify)."""
        return self._space_attrs

    @property
    def mark_attrs(self) -> list[Any]:
        """The precomputed mode-bit attribute list (do not modify)."""
        return self._mark_attrs

    # -- MdbPort ---------------------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def read_available(self) -> bytes:
        """Raw bytes as the kernel delivers them (``FF 00 b`` / ``FF FF`` escape); b"" if none."""
        data = read_some(self._fd, self.url)
        if data:
            return data
        # VMIN=0/VTIME=0: an empty read is either "nothing yet" or a hang-up.
        for _fd, events in self._poll.poll(0):
            if events & _HANGUP:
                raise PortError(f"{self.url}: device hung up")
        return b""

    def write_words(self, words: Sequence[Word]) -> None:
        """Send ``words``: runs of data bytes under SPACE, runs of mode-bit bytes under MARK.

        Each parity switch is ``tcsetattr(TCSADRAIN)``, so it waits until the bytes before it
        have been sent. The port is back in SPACE (and drained) when this returns, unless the
        block ended in SPACE already, in which case the data may still be in the OS buffer.
        """
        if not words:
            return
        # Build every run's payload before touching the line so nothing is allocated between
        # the drain that enters MARK and the write of the mode-bit byte.
        runs: list[tuple[bool, bytes]] = []
        start = 0
        n = len(words)
        while start < n:
            mode = words[start].mode
            end = start + 1
            while end < n and words[end].mode == mode:
                end += 1
            runs.append((mode, bytes([w.value for w in words[start:end]])))
            start = end

        fd = self._fd
        in_mark = False
        try:
            for mode, payload in runs:
                if mode != in_mark:
                    termios.tcsetattr(
                        fd, termios.TCSADRAIN, self._mark_attrs if mode else self._space_attrs
                    )
                    in_mark = mode
                write_all(fd, self.url, payload, self._write_timeout)
            if in_mark:
                termios.tcsetattr(fd, termios.TCSADRAIN, self._space_attrs)
                in_mark = False
        except termios.error as exc:
            raise PortError(f"{self.url}: cannot switch parity: {exc}") from exc
        finally:
            if in_mark:
                # Leaving on an error: get back to SPACE for receiving if the line allows it;
                # the original error is what propagates.
                with contextlib.suppress(termios.error):
                    termios.tcsetattr(fd, termios.TCSANOW, self._space_attrs)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._poll.unregister(self._fd)
            self.serial.close()
            self._fd = -1


def open_uart(port: PortUrl) -> UartPort:
    """Open ``port`` (a ``uart://`` URL checked by :func:`drivers.ports.parse_port_url`).

    Its options:

    * ``baud``: line speed, default 9600 (the only speed MDB uses).
    * ``low_latency=1``: ask the driver for ``ASYNC_LOW_LATENCY`` through pyserial's
      ``set_low_latency_mode`` (USB adapters such as FTDI otherwise batch input for up to
      16 ms). This is best effort: a driver that refuses (pyserial raises ``ValueError``; the
      PL011 and ptys do) or a platform without it (``NotImplementedError``) leaves the port as
      it was, and :attr:`UartPort.low_latency` stays ``False``. Nothing is logged; any other
      error propagates.
    """
    try:
        ser = serial.Serial(
            port.device,
            port.baud or MDB_BAUD,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_SPACE,
            stopbits=serial.STOPBITS_ONE,
            timeout=0,
            write_timeout=WRITE_TIMEOUT,
        )
    except (serial.SerialException, ValueError, OSError, termios.error) as exc:
        raise cannot_open(port.url, exc) from exc
    try:
        uart = UartPort(ser, port.url)
        if port.low_latency:
            uart.low_latency = _try_low_latency(ser)
    except BaseException:
        ser.close()
        raise
    return uart


def _try_low_latency(ser: serial.Serial) -> bool:
    """Request ASYNC_LOW_LATENCY; False when the platform or driver refuses it."""
    setter = getattr(ser, "set_low_latency_mode", None)
    if setter is None:
        return False
    try:
        setter(True)
    except (ValueError, NotImplementedError):
        return False
    return True
