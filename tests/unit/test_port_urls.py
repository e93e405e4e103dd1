"""Port URLs: one parser checks them at start and hands the backends what they open."""

from __future__ import annotations

import pytest

from drivers.dex_port import open_dex_port
from drivers.ports import PortKind, PortUrl, parse_port_url
from drivers.pty import PtyPair
from protocols.errors import PortError


@pytest.mark.parametrize(
    ("url", "kind", "parsed"),
    [
        (
            "uart:///dev/ttyAMA0",
            PortKind.MDB,
            PortUrl("uart:///dev/ttyAMA0", "uart", "/dev/ttyAMA0"),
        ),
        (
            "uart:///dev/ttyUSB0?baud=19200&low_latency=1",
            PortKind.MDB,
            PortUrl(
                "uart:///dev/ttyUSB0?baud=19200&low_latency=1", "uart", "/dev/ttyUSB0", 19200, True
            ),
        ),
        ("pty:///dev/pts/4", PortKind.MDB, PortUrl("pty:///dev/pts/4", "pty", "/dev/pts/4")),
        ("loop://bench", PortKind.MDB, PortUrl("loop://bench", "loop", "bench")),
        (
            "pty:///dev/pts/4?baud=2400",
            PortKind.DEX,
            PortUrl("pty:///dev/pts/4?baud=2400", "pty", "/dev/pts/4", 2400),
        ),
    ],
)
def test_good_urls(url: str, kind: PortKind, parsed: PortUrl) -> None:
    assert parse_port_url(url, kind) == parsed


@pytest.mark.parametrize(
    ("url", "kind", "match"),
    [
        ("uart:///dev/t?speed=9600", PortKind.MDB, "unknown query key 'speed'; allowed: baud, low"),
        ("uart:///dev/t?baud=fast", PortKind.MDB, "baud='fast'; allowed: a whole number"),
        ("uart:///dev/t?baud=0", PortKind.MDB, "baud='0'"),
        ("uart:///dev/t?baud=-9600", PortKind.MDB, "baud='-9600'"),
        ("uart:///dev/t?baud=", PortKind.MDB, "baud=''"),
        ("uart:///dev/t?baud=\u00b2", PortKind.MDB, "baud='\u00b2'"),
        ("uart:///dev/t?low_latency=yes", PortKind.MDB, "low_latency='yes'; allowed: 0 or 1"),
        ("uart:///dev/t?low_latency=2", PortKind.MDB, "low_latency='2'"),
        ("uart:///dev/t?baud=9600&baud=19200", PortKind.MDB, "'baud' given more than once"),
        ("uart:///dev/t?baud", PortKind.MDB, "malformed query"),
        ("pty:///dev/pts/1?baud=9600", PortKind.MDB, "allowed: none for this scheme"),
        ("loop://x?foo=1", PortKind.MDB, "unknown query key 'foo'"),
        ("loop://", PortKind.MDB, "needs a name"),
        ("tcp://host:1", PortKind.MDB, "allowed schemes: uart://, pty://, loop://"),
        ("/dev/ttyAMA0", PortKind.MDB, "write uart:///dev/ttyAMA0"),
        ("uart://dev/ttyAMA0", PortKind.MDB, "must name a device under /dev/"),
        (
            "uart:///dev/t?low_latency=1",
            PortKind.DEX,
            "unknown query key 'low_latency'; allowed: baud",
        ),
        ("uart:///dev/t?baud=9601", PortKind.DEX, "baud='9601'; allowed: 1200, 2400"),
        ("loop://x", PortKind.DEX, "allowed schemes: uart://, pty://"),
        ("pty://[x", PortKind.MDB, "not a URL"),
        ("uart://]/dev/ttyAMA0", PortKind.DEX, "not a URL"),
    ],
)
def test_bad_urls(url: str, kind: PortKind, match: str) -> None:
    with pytest.raises(PortError, match=match.replace("?", r"\?")):
        parse_port_url(url, kind)


def test_the_dex_port_opens_through_the_same_parser() -> None:
    pair = PtyPair()
    try:
        with pytest.raises(PortError, match="unknown query key 'foo'"):
            open_dex_port(f"{pair.device_url}?foo=1")
        port = open_dex_port(f"{pair.device_url}?baud=2400")
        assert port.baud == 2400
        port.close()
    finally:
        pair.close()
