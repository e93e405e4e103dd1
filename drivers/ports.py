"""Pick an MDB port backend by URL: ``uart:///dev/ttyAMA0``, ``pty:///dev/pts/N``, ``loop://NAME``."""

from __future__ import annotations

from urllib.parse import urlsplit

from drivers.transport import MdbPort
from protocols.errors import PortError

SCHEMES = ("uart", "pty", "loop")


def validate_port_url(url: str) -> None:
    """Refuse a URL no backend can open, naming what is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        allowed = ", ".join(f"{s}://" for s in SCHEMES)
        raise PortError(f"port URL {url!r} has scheme {parts.scheme!r}; allowed: {allowed}")
    if parts.scheme in ("uart", "pty") and not parts.path.startswith("/dev/"):
        raise PortError(f"port URL {url!r} must name a device under /dev/")
    if parts.scheme == "loop" and not (parts.netloc or parts.path.strip("/")):
        raise PortError(f"port URL {url!r} needs a name, as in loop://bench")


def open_port(url: str) -> MdbPort:
    validate_port_url(url)
    parts = urlsplit(url)
    if parts.scheme == "uart":
        from drivers.mdb_uart import open_uart

        return open_uart(parts.path, parts.query)
    if parts.scheme == "pty":
        from drivers.pty import open_pty_device

        return open_pty_device(parts.path)
    from drivers.loopback import open_loopback

    return open_loopback(parts.netloc or parts.path.strip("/"))
