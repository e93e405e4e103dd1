"""In-process loopback: two connected ports over a socketpair, for fast tests.

``loop://NAME`` opened twice returns the two ends of one pair; the escape travels in-band
exactly as on a pty, so the code under test is the same.
"""

from __future__ import annotations

import socket

from drivers.transport import FdPort

_waiting: dict[str, socket.socket] = {}


def loopback_pair(name: str = "pair") -> tuple[FdPort, FdPort]:
    a, b = socket.socketpair()
    return FdPort(a.detach(), f"loop://{name}#a"), FdPort(b.detach(), f"loop://{name}#b")


def open_loopback(name: str) -> FdPort:
    """First call makes a pair and returns one end; the second call returns the other."""
    other = _waiting.pop(name, None)
    if other is not None:
        return FdPort(other.detach(), f"loop://{name}#b")
    a, b = socket.socketpair()
    _waiting[name] = b
    return FdPort(a.detach(), f"loop://{name}#a")
