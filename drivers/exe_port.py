"""The EXE port: one command byte out at a time, the VMC's reply bytes in.

Whether Executive characters carry a 9th bit, and what it means, is not published (see
docs/executive.md); ``exe.mode_bit`` says what to send:

* ``mark``: each command byte with the 9th bit set, through the MDB driver's stick parity
  (:mod:`drivers.mdb_uart`). The default: industry notes say a mode bit marks command bytes,
  and a VMC that expects plain 8N1 reads a set 9th bit as one more stop bit, so this works for
  both guesses.
* ``space``: the 9th bit clear, the same way.
* ``none``: plain 8N1, no parity (a UART without stick parity, such as the Pi's mini-UART).

Replies are read whatever their 9th bit: under ``mark``/``space`` the port receives in SPACE with
parity marking, so a reply whose 9th (or stop) bit is 1 arrives as ``FF 00 b`` and is decoded
like an MDB mode-bit word; only its 8 data bits are passed on. A pty or ``loop://`` carries the
same in-band escape as for MDB, whatever the setting, so the simulator reads it the same way.
"""

from __future__ import annotations

from typing import Protocol

from drivers.dex_port import DexPort, open_plain
from drivers.mode_bit import ModeBit
from drivers.ports import PortKind, parse_port_url
from drivers.transport import MdbPort
from protocols.mdb.words import Word, WordDecoder

EXE_BAUD = 9600
"""The speed when the URL gives none: industry notes, not a public source (``?baud=`` sets it)."""


class ExePort(Protocol):
    url: str

    def fileno(self) -> int: ...

    def read_available(self) -> bytes:
        """The reply bytes waiting now (data bits only); b"" if none. PortError on hang-up."""
        ...

    def write_command(self, value: int) -> None:
        """Send one command byte; returns once it is handed to the OS (or on the line)."""
        ...

    def close(self) -> None: ...


class NineBitPort:
    """An EXE line over an MDB port (a UART with stick parity, a pty, a loopback)."""

    def __init__(self, port: MdbPort, mode: ModeBit) -> None:
        self.port = port
        self.url = port.url
        self.mark = mode is ModeBit.MARK
        self.decoder = WordDecoder()

    def fileno(self) -> int:
        return self.port.fileno()

    def read_available(self) -> bytes:
        return bytes(word.value for word in self.decoder.feed(self.port.read_available()))

    def write_command(self, value: int) -> None:
        self.port.write_words([Word(value, mode=self.mark)])

    def close(self) -> None:
        self.port.close()


class PlainPort:
    """An EXE line on a plain 8N1 UART (``exe.mode_bit = "none"``)."""

    def __init__(self, port: DexPort) -> None:
        self.port = port
        self.url = port.url

    def fileno(self) -> int:
        return self.port.fileno()

    def read_available(self) -> bytes:
        return self.port.read_available()

    def write_command(self, value: int) -> None:
        self.port.write(bytes((value,)))

    def close(self) -> None:
        self.port.close()


def open_exe_port(url: str, mode: ModeBit) -> ExePort:
    """Open the EXE port at ``url`` (PortError, one line, when it cannot be)."""
    target = parse_port_url(url, PortKind.EXE)
    if target.scheme == "uart" and mode is ModeBit.NONE:
        return PlainPort(open_plain(target, EXE_BAUD))
    if target.scheme == "uart":
        from drivers.mdb_uart import open_uart

        return NineBitPort(open_uart(target), mode)  # its default speed is EXE_BAUD too
    if target.scheme == "pty":
        from drivers.pty import open_pty_device

        return NineBitPort(open_pty_device(target.device), mode)
    from drivers.loopback import open_loopback

    return NineBitPort(open_loopback(target.device), mode)
