"""The UART backend: termios flag computation, its effect on a real pty, and the kernel escape."""

from __future__ import annotations

import os
import select
import termios
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.mdb_uart import CMSPAR, UartPort, mark_attributes, open_uart, space_attributes
from drivers.ports import parse_port_url
from drivers.transport import MdbPort
from protocols.errors import PortError
from protocols.mdb.words import Word, WordDecoder

# A tcgetattr list as a freshly opened, cooked tty might report it: everything we must clear
# is set, everything we must set is clear.
COOKED: list[Any] = [
    termios.IGNPAR
    | termios.ISTRIP
    | termios.IGNBRK
    | termios.BRKINT
    | termios.ICRNL
    | termios.INLCR
    | termios.IGNCR
    | termios.IXON
    | termios.IXOFF,
    termios.OPOST | termios.ONLCR,
    termios.CS7 | termios.PARODD | termios.CSTOPB | termios.B9600,
    termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN,
    termios.B9600,
    termios.B9600,
    [b"\x00"] * 32,
]


def _assert_common(attrs: list[Any], *, on_pty: bool = False) -> None:
    iflag, oflag, cflag, lflag = attrs[0], attrs[1], attrs[2], attrs[3]
    assert iflag & termios.INPCK
    assert iflag & termios.PARMRK
    for flag in (
        termios.IGNPAR,
        termios.ISTRIP,
        termios.IGNBRK,
        termios.BRKINT,
        termios.ICRNL,
        termios.INLCR,
        termios.IGNCR,
        termios.IXON,
        termios.IXOFF,
    ):
        assert not iflag & flag, hex(flag)
    assert not oflag & termios.OPOST
    if not on_pty:
        # Linux's pty driver clears PARENB (and forces CS8|CREAD) in pty_set_termios; it keeps
        # CMSPAR, PARODD and all the iflag/lflag bits, which is what the pty tests look at.
        assert cflag & termios.PARENB
    assert cflag & CMSPAR
    assert cflag & termios.CSIZE == termios.CS8
    assert cflag & termios.CLOCAL
    assert cflag & termios.CREAD
    assert not cflag & termios.CSTOPB
    for flag in (termios.ICANON, termios.ECHO, termios.ISIG, termios.IEXTEN):
        assert not lflag & flag, hex(flag)


def _assert_space(attrs: list[Any], *, on_pty: bool = False) -> None:
    _assert_common(attrs, on_pty=on_pty)
    assert not attrs[2] & termios.PARODD


def _assert_mark(attrs: list[Any], *, on_pty: bool = False) -> None:
    _assert_common(attrs, on_pty=on_pty)
    assert attrs[2] & termios.PARODD


# -- the pure helpers ------------------------------------------------------------------------


def test_cmspar_is_the_linux_value() -> None:
    assert CMSPAR == 0o10000000000


def test_space_attributes() -> None:
    attrs = space_attributes(COOKED)
    _assert_space(attrs)
    assert attrs[6][termios.VMIN] == 0
    assert attrs[6][termios.VTIME] == 0
    assert attrs[4] == attrs[5] == termios.B9600
    assert attrs[2] & termios.CBAUD == termios.B9600


def test_mark_attributes_differ_from_space_only_by_parodd() -> None:
    space = space_attributes(COOKED)
    mark = mark_attributes(COOKED)
    _assert_mark(mark)
    assert mark[2] == space[2] | termios.PARODD
    assert mark[:2] == space[:2]
    assert mark[3:] == space[3:]


def test_helpers_do_not_modify_their_input() -> None:
    before = [*COOKED[:6], list(COOKED[6])]
    space_attributes(COOKED)
    mark_attributes(COOKED)
    assert before == COOKED


def test_helpers_are_idempotent() -> None:
    space = space_attributes(COOKED)
    assert space_attributes(space) == space
    assert space_attributes(mark_attributes(COOKED)) == space


# -- a real pty ------------------------------------------------------------------------------


class Pty:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)

    def read_master(self, n: int, timeout: float = 1.0) -> bytes:
        out = b""
        while len(out) < n:
            ready, _, _ = select.select([self.master], [], [], timeout)
            if not ready:
                break
            out += os.read(self.master, 4096)
        return out

    def close(self) -> None:
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1


@pytest.fixture
def pty() -> Iterator[Pty]:
    pair = Pty()
    yield pair
    pair.close()


def _open(path: str, query: str = "") -> UartPort:
    return open_uart(parse_port_url(f"uart://{path}{query}"))


@pytest.fixture
def port(pty: Pty) -> Iterator[UartPort]:
    uart = _open(pty.path)
    yield uart
    uart.close()


def _wait_readable(uart: UartPort) -> None:
    select.select([uart.fileno()], [], [], 1.0)


def test_open_applies_flags(pty: Pty, port: UartPort) -> None:
    attrs = termios.tcgetattr(port.fileno())
    _assert_space(attrs, on_pty=True)
    assert attrs[6][termios.VMIN] == 0
    assert attrs[6][termios.VTIME] == 0
    assert attrs[4] == attrs[5] == termios.B9600
    assert port.url == f"uart://{pty.path}"
    # The precomputed lists are what we asked for; the pty stored all of it but PARENB.
    _assert_space(port.space_attrs)
    _assert_mark(port.mark_attrs)
    assert port.space_attrs[:2] == attrs[:2]
    assert port.space_attrs[2] & ~termios.PARENB == attrs[2]
    assert port.space_attrs[3:6] == attrs[3:6]


def test_satisfies_mdb_port(port: UartPort) -> None:
    as_protocol: MdbPort = port
    assert as_protocol.fileno() == port.fileno()


def test_baud_query(pty: Pty) -> None:
    uart = _open(pty.path, "?baud=19200&low_latency=1")
    try:
        attrs = termios.tcgetattr(uart.fileno())
        assert attrs[4] == attrs[5] == termios.B19200
        _assert_space(attrs, on_pty=True)
        assert uart.url == f"uart://{pty.path}?baud=19200&low_latency=1"
        # A pty refuses ASYNC_LOW_LATENCY: the port opens anyway and says so.
        assert uart.low_latency is False
    finally:
        uart.close()


def test_reapply_restores_flags(port: UartPort) -> None:
    fd = port.fileno()
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.INPCK | termios.PARMRK)
    attrs[2] &= ~(termios.PARENB | CMSPAR)
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    assert not termios.tcgetattr(fd)[0] & termios.PARMRK
    port.reapply()
    _assert_space(termios.tcgetattr(fd), on_pty=True)


def test_reapply_after_pyserial_reconfiguration(port: UartPort) -> None:
    fd = port.fileno()
    port.serial.baudrate = 19200  # pyserial clears PARMRK/INPCK here
    assert not termios.tcgetattr(fd)[0] & termios.PARMRK
    port.reapply()
    attrs = termios.tcgetattr(fd)
    _assert_space(attrs, on_pty=True)
    assert attrs[4] == termios.B19200
    assert port.mark_attrs[4] == termios.B19200


def test_write_peripheral_block(pty: Pty, port: UartPort) -> None:
    port.write_words([Word(0x03), Word(0x00), Word(0x32), Word(0x35, mode=True)])
    assert pty.read_master(4) == b"\x03\x00\x32\x35"
    _assert_space(termios.tcgetattr(port.fileno()), on_pty=True)


def test_write_literal_ff_is_not_escaped(pty: Pty, port: UartPort) -> None:
    # On a UART the parity bit carries the mode; the bytes themselves go out plain.
    port.write_words([Word(0xFF), Word(0xFF, mode=True)])
    assert pty.read_master(2) == b"\xff\xff"


def test_write_nothing(pty: Pty, port: UartPort) -> None:
    port.write_words([])
    assert pty.read_master(1, timeout=0.05) == b""


Event = tuple[str, Any]


def _record(monkeypatch: pytest.MonkeyPatch, fd: int) -> list[Event]:
    events: list[Event] = []
    real_write = os.write
    real_tcsetattr = termios.tcsetattr

    def write(target: int, data: Any) -> int:
        if target == fd:
            events.append(("write", bytes(data)))
        return real_write(target, data)

    def tcsetattr(target: int, when: int, attrs: list[Any]) -> None:
        if target == fd:
            parity = "mark" if attrs[2] & termios.PARODD else "space"
            drain = "drain" if when == termios.TCSADRAIN else "now"
            events.append((drain, parity))
        real_tcsetattr(target, when, attrs)

    # drivers.mdb_uart calls both through the module objects, so patching them here is seen.
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(termios, "tcsetattr", tcsetattr)
    return events


def test_peripheral_block_switches_parity_for_last_byte(
    monkeypatch: pytest.MonkeyPatch, pty: Pty, port: UartPort
) -> None:
    events = _record(monkeypatch, port.fileno())
    port.write_words([Word(0x03), Word(0x00), Word(0x32), Word(0x35, mode=True)])
    assert events == [
        ("write", b"\x03\x00\x32"),
        ("drain", "mark"),
        ("write", b"\x35"),
        ("drain", "space"),
    ]


def test_lone_ack(monkeypatch: pytest.MonkeyPatch, pty: Pty, port: UartPort) -> None:
    events = _record(monkeypatch, port.fileno())
    port.write_words([Word(0x00, mode=True)])
    assert events == [("drain", "mark"), ("write", b"\x00"), ("drain", "space")]
    assert pty.read_master(1) == b"\x00"


def test_vmc_block(monkeypatch: pytest.MonkeyPatch, pty: Pty, port: UartPort) -> None:
    events = _record(monkeypatch, port.fileno())
    port.write_words([Word(0x13, mode=True), Word(0x00), Word(0x00), Word(0x13)])
    assert events == [
        ("drain", "mark"),
        ("write", b"\x13"),
        ("drain", "space"),
        ("write", b"\x00\x00\x13"),
    ]
    assert pty.read_master(4) == b"\x13\x00\x00\x13"


def test_alternating_runs(monkeypatch: pytest.MonkeyPatch, pty: Pty, port: UartPort) -> None:
    events = _record(monkeypatch, port.fileno())
    port.write_words([Word(1), Word(2, mode=True), Word(3, mode=True), Word(4), Word(5, mode=True)])
    assert events == [
        ("write", b"\x01"),
        ("drain", "mark"),
        ("write", b"\x02\x03"),
        ("drain", "space"),
        ("write", b"\x04"),
        ("drain", "mark"),
        ("write", b"\x05"),
        ("drain", "space"),
    ]
    assert pty.read_master(5) == b"\x01\x02\x03\x04\x05"


def test_read_available(pty: Pty, port: UartPort) -> None:
    assert port.read_available() == b""
    os.write(pty.master, b"\x12\x00\x34")
    _wait_readable(port)
    assert port.read_available() == b"\x12\x00\x34"
    assert port.read_available() == b""


def test_read_available_shows_the_kernel_parmrk_escape(pty: Pty, port: UartPort) -> None:
    # With PARMRK set and ISTRIP clear the line discipline doubles a literal FF, even on a pty.
    os.write(pty.master, b"\x01\xff\x02")
    _wait_readable(port)
    data = port.read_available()
    assert data == b"\x01\xff\xff\x02"
    assert WordDecoder().feed(data) == [Word(0x01), Word(0xFF), Word(0x02)]


def test_read_after_hangup_raises(pty: Pty, port: UartPort) -> None:
    os.close(pty.master)
    pty.master = -1
    with pytest.raises(PortError, match="hung up"):
        port.read_available()


def test_close_is_idempotent(pty: Pty) -> None:
    uart = _open(pty.path)
    uart.close()
    uart.close()
    assert uart.fileno() == -1


def test_open_missing_device_raises() -> None:
    with pytest.raises(PortError, match="cannot open"):
        _open("/dev/does-not-exist-mdb")


def test_open_non_tty_raises() -> None:
    with pytest.raises(PortError, match="cannot open"):
        _open("/dev/null")


# -- decoding what the kernel delivers -------------------------------------------------------


KERNEL_STREAMS: list[tuple[bytes, list[Word]]] = [
    # POLL to the cashless device at 0x10: address 0x12 with the mode bit, then CHK 0x12.
    (b"\xff\x00\x12\x12", [Word(0x12, mode=True), Word(0x12)]),
    # A literal FF data byte (e.g. a VMC NAK).
    (b"\xff\xff", [Word(0xFF)]),
    # BREAK or framing error.
    (b"\xff\x00\x00", [Word(0x00, mode=True)]),
    # A mode-bit FF: parity error on the byte FF itself.
    (b"\xff\x00\xff", [Word(0xFF, mode=True)]),
    # VEND REQUEST at 0x10: 13 00 | price 00 64 | item 00 07 | CHK 0x7E.
    (
        b"\xff\x00\x13\x00\x00\x64\x00\x07\x7e",
        [Word(0x13, mode=True), *(Word(b) for b in b"\x00\x00\x64\x00\x07\x7e")],
    ),
    # Data containing FF between ordinary bytes, then a mode-bit address.
    (
        b"\x01\xff\xff\x02\xff\x00\x10",
        [Word(0x01), Word(0xFF), Word(0x02), Word(0x10, mode=True)],
    ),
]


@pytest.mark.parametrize(("stream", "words"), KERNEL_STREAMS)
def test_decoder_whole_stream(stream: bytes, words: list[Word]) -> None:
    decoder = WordDecoder()
    assert decoder.feed(stream) == words
    assert decoder.malformed == 0


@pytest.mark.parametrize(("stream", "words"), KERNEL_STREAMS)
def test_decoder_split_at_every_position(stream: bytes, words: list[Word]) -> None:
    for cut in range(len(stream) + 1):
        decoder = WordDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert got == words, cut
        assert decoder.malformed == 0


@pytest.mark.parametrize(("stream", "words"), KERNEL_STREAMS)
def test_decoder_byte_at_a_time(stream: bytes, words: list[Word]) -> None:
    decoder = WordDecoder()
    got: list[Word] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == words


def test_decoder_all_streams_back_to_back() -> None:
    stream = b"".join(s for s, _ in KERNEL_STREAMS)
    expected = [w for _, ws in KERNEL_STREAMS for w in ws]
    for cut in range(len(stream) + 1):
        decoder = WordDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == expected


def test_decoder_unfinished_escape_waits() -> None:
    decoder = WordDecoder()
    assert decoder.feed(b"\x05\xff") == [Word(0x05)]
    assert decoder.feed(b"\x00") == []
    assert decoder.feed(b"\x10") == [Word(0x10, mode=True)]
