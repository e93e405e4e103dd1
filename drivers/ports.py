"""Port URLs: ``uart:///dev/ttyAMA0[?baud=9600&low_latency=1]``, ``pty:///dev/pts/N``, ``loop://NAME``.

:func:`parse_port_url` is the one reader of these URLs: the configuration checks them with it
at start and the backends open what it returns, so a URL that passes the check never fails
later for its options. The MDB and EXE ports take all three schemes; the DEX port (8N1, no 9th
bit) takes ``uart`` and ``pty``. DEX and EXE speeds are among :data:`DEX_BAUDS`.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from drivers.transport import MdbPort
from protocols.errors import PortError

#: Line speeds the DEX port can be set to (termios has a constant for each).
DEX_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
#: MDB runs at 9600; any whole speed up to this is passed to the UART for bench setups.
MDB_MAX_BAUD = 4_000_000
MDB_BAUD = 9600


class PortKind(enum.Enum):
    """What the port carries; it decides the schemes and options a URL may use."""

    MDB = "MDB"
    DEX = "DEX"
    EXE = "EXE"


# The query options each backend accepts, per kind and scheme; a scheme missing is refused.
_OPTIONS: dict[PortKind, dict[str, tuple[str, ...]]] = {
    PortKind.MDB: {"uart": ("baud", "low_latency"), "pty": (), "loop": ()},
    PortKind.DEX: {"uart": ("baud",), "pty": ("baud",)},
    PortKind.EXE: {"uart": ("baud", "low_latency"), "pty": (), "loop": ()},
}


@dataclass(frozen=True, slots=True)
class PortUrl:
    """A port URL its backend accepts: the device (or loop name) and the options given."""

    url: str
    scheme: str
    device: str
    baud: int | None = None
    low_latency: bool = False


def parse_port_url(url: str, kind: PortKind = PortKind.MDB) -> PortUrl:
    """Check ``url`` for a ``kind`` port; :class:`PortError` names what is wrong and allowed."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unbalanced [ or ], read as a broken IPv6 host
        raise PortError(f"{kind.value} port URL {url!r}: not a URL ({exc})") from exc
    schemes = _OPTIONS[kind]
    if parts.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        hint = f"; write uart://{url}" if url.startswith("/dev/") else ""
        raise PortError(f"{kind.value} port URL {url!r}: allowed schemes: {allowed}{hint}")
    if parts.scheme == "loop":
        name = parts.netloc or parts.path.strip("/")
        if not name:
            raise PortError(f"{kind.value} port URL {url!r} needs a name, as in loop://bench")
        device = name
    elif parts.netloc or not parts.path.startswith("/dev/"):
        raise PortError(
            f"{kind.value} port URL {url!r} must name a device under /dev/,"
            f" as in {parts.scheme}:///dev/ttyUSB0"
        )
    else:
        device = parts.path
    options = _options(url, parts.query, schemes[parts.scheme])
    baud = None
    if "baud" in options:
        baud = _baud(url, options["baud"], kind)
    low_latency = options.get("low_latency", "0") == "1"
    return PortUrl(url, parts.scheme, device, baud, low_latency)


def _options(url: str, query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise PortError(
            f"{url}: malformed query {query!r}; expected key=value pairs joined by '&'"
        ) from exc
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            choices = ", ".join(allowed) if allowed else "none for this scheme"
            raise PortError(f"{url}: unknown query key {key!r}; allowed: {choices}")
        if key in options:
            raise PortError(f"{url}: query key {key!r} given more than once")
        if key == "low_latency" and value not in ("0", "1"):
            raise PortError(f"{url}: low_latency={value!r}; allowed: 0 or 1")
        options[key] = value
    return options


def _baud(url: str, value: str, kind: PortKind) -> int:
    if kind is not PortKind.MDB:
        if not _whole(value) or int(value) not in DEX_BAUDS:
            allowed = ", ".join(str(b) for b in DEX_BAUDS)
            raise PortError(f"{url}: baud={value!r}; allowed: {allowed}")
    elif not _whole(value) or not 0 < int(value) <= MDB_MAX_BAUD:
        raise PortError(
            f"{url}: baud={value!r}; allowed: a whole number from 1 to {MDB_MAX_BAUD}"
            f" (MDB uses {MDB_BAUD})"
        )
    return int(value)


def _whole(value: str) -> bool:
    return value.isascii() and value.isdigit()


def cannot_open(url: str, exc: Exception) -> PortError:
    """One readable line for a port that would not open: the OS's reason when it gave one."""
    errno = getattr(exc, "errno", None)
    reason = os.strerror(errno) if isinstance(errno, int) else str(exc)
    return PortError(f"{url}: cannot open: {reason}")


def open_port(url: str) -> MdbPort:
    """Open an MDB port by URL."""
    port = parse_port_url(url)
    if port.scheme == "uart":
        from drivers.mdb_uart import open_uart

        return open_uart(port)
    if port.scheme == "pty":
        from drivers.pty import open_pty_device

        return open_pty_device(port.device)
    from drivers.loopback import open_loopback

    return open_loopback(port.device)
