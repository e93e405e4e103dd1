"""pty backend: the bench's stand-in for a UART, and the simulator's side of the pair.

A pty ignores parity, so the 9th bit travels in-band as the same escape the kernel produces
on a real UART. Both ends are put in raw mode: no echo, no CR/LF mapping, no signals.
"""

from __future__ import annotations

import os
import termios
import tty

from drivers.transport import FdPort
from protocols.errors import PortError


def make_raw(fd: int) -> None:
    tty.setraw(fd, termios.TCSANOW)
    attrs = termios.tcgetattr(fd)
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def open_pty_device(path: str) -> FdPort:
    """Open the device end (``/dev/pts/N``) that vmcd is given."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise PortError(f"pty://{path}: cannot open: {exc.strerror}") from exc
    try:
        make_raw(fd)
    except termios.error as exc:
        os.close(fd)
        raise PortError(f"pty://{path}: not a terminal: {exc}") from exc
    return FdPort(fd, f"pty://{path}")


class PtyPair:
    """A fresh pty pair: ``master`` for the simulator, ``device_path`` for the daemon."""

    def __init__(self) -> None:
        master, slave = os.openpty()
        make_raw(master)
        make_raw(slave)
        self.device_path = os.ttyname(slave)
        # Keep the slave open so the master never sees a hang-up while the daemon restarts.
        self._slave = slave
        self.master = FdPort(master, f"pty-master://{self.device_path}")

    @property
    def device_url(self) -> str:
        return f"pty://{self.device_path}"

    def close(self) -> None:
        self.master.close()
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1
