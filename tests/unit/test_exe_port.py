"""The EXE port on a real pty: the 9th bit each setting sends, replies whatever their 9th bit."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import pytest

from drivers.exe_port import NineBitPort, PlainPort, open_exe_port
from drivers.mode_bit import ModeBit
from drivers.ports import PortKind, parse_port_url
from drivers.pty import PtyPair
from protocols.errors import PortError


@pytest.fixture
def pair() -> Iterator[PtyPair]:
    made = PtyPair()
    yield made
    made.close()


def _read(fd: int, count: int) -> bytes:
    got = b""
    while len(got) < count:
        assert select.select([fd], [], [], 2.0)[0], f"only {got!r} arrived"
        got += os.read(fd, 64)
    return got


def _replies(port: NineBitPort | PlainPort, count: int) -> bytes:
    got = b""
    while len(got) < count:
        assert select.select([port.fileno()], [], [], 2.0)[0]
        got += port.read_available()
    return got


@pytest.mark.parametrize(
    ("mode", "wire"), [(ModeBit.MARK, b"\xff\x00\x31"), (ModeBit.SPACE, b"\x31")]
)
def test_a_command_on_a_pty_carries_the_9th_bit_in_band(
    pair: PtyPair, mode: ModeBit, wire: bytes
) -> None:
    port = open_exe_port(pair.device_url, mode)
    try:
        port.write_command(0x31)
        assert _read(pair.master.fileno(), len(wire)) == wire
    finally:
        port.close()


def test_replies_lose_their_9th_bit_and_pnak_survives_the_escape(pair: PtyPair) -> None:
    port = open_exe_port(pair.device_url, ModeBit.MARK)
    assert isinstance(port, NineBitPort)
    try:
        # 0xFE plain, PNAK (0xFF, escaped as FF FF), 0x00 with its 9th bit (FF 00 00)
        os.write(pair.master.fileno(), b"\xfe\xff\xff\xff\x00\x00")
        assert _replies(port, 3) == b"\xfe\xff\x00"
    finally:
        port.close()


def test_without_a_9th_bit_a_uart_is_plain_8n1(pair: PtyPair) -> None:
    # pyserial opens a pty's device as it would a UART: raw bytes both ways.
    port = open_exe_port(f"uart://{pair.device_path}?baud=9600", ModeBit.NONE)
    assert isinstance(port, PlainPort)
    try:
        port.write_command(0x33)
        assert _read(pair.master.fileno(), 1) == b"\x33"
        os.write(pair.master.fileno(), b"\xff\x00")
        assert _replies(port, 2) == b"\xff\x00"
    finally:
        port.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/dev/ttyAMA0", "allowed schemes: uart://, pty://, loop://; write uart:///dev/ttyAMA0"),
        ("uart:///dev/ttyAMA0?baud=9601", "baud='9601'; allowed: 1200, 2400"),
        ("pty:///dev/pts/3?baud=9600", "unknown query key 'baud'"),
    ],
)
def test_exe_urls_are_checked(url: str, message: str) -> None:
    with pytest.raises(PortError, match=message.replace("?", r"\?")):
        parse_port_url(url, PortKind.EXE)


def test_a_missing_device_is_one_line() -> None:
    with pytest.raises(PortError, match="cannot open"):
        open_exe_port("pty:///dev/pts/999999", ModeBit.MARK)
