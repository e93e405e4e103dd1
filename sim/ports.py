"""The simulator's side of a port: a URL given by the user, or a pty pair it makes itself."""

from __future__ import annotations

import os
import termios
from dataclasses import dataclass

from drivers.ports import open_port
from drivers.pty import PtyPair
from drivers.transport import MdbPort


class SimPty:
    """A pty pair whose device end waits for a reader the user starts.

    The simulator keeps a descriptor on the device end: until a reader opens it, what the VMC
    wrote stays queued there, and :meth:`discard_unread` drops it, so a reader that comes
    minutes later does not first answer a backlog of probes.
    """

    def __init__(self) -> None:
        self.pair = PtyPair()
        self._device = os.open(self.pair.device_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)

    @property
    def device_path(self) -> str:
        return self.pair.device_path

    def discard_unread(self) -> None:
        termios.tcflush(self._device, termios.TCIFLUSH)

    def close(self) -> None:
        if self._device >= 0:
            os.close(self._device)
            self._device = -1
        self.pair.close()


@dataclass
class SimPort:
    """The port the simulated VMC drives, and the pty behind it when the simulator made one."""

    port: MdbPort
    pty: SimPty | None = None

    @classmethod
    def open(cls, url: str | None) -> SimPort:
        """``url`` opened (PortError if it cannot be), or a new pty pair when it is None."""
        if url is not None:
            return cls(open_port(url))
        pty = SimPty()
        return cls(pty.pair.master, pty)

    def close(self) -> None:
        if self.pty is not None:
            self.pty.close()
        else:
            self.port.close()
