"""Helpers for driving the sans-I/O cashless core in tests."""

from __future__ import annotations

from protocols.mdb import commands as c
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from protocols.mdb.events import State
from protocols.mdb.words import Word, checksum, vmc_words

EVERY_LEVEL_AND_ADDRESS = [(level, address) for level in (1, 2, 3) for address in (0x10, 0x60)]


def block(address: int, *payload: int) -> list[Word]:
    """A VMC block to ``address``: first payload byte is the command (0-7), CHK appended."""
    data = bytes((address | payload[0], *payload[1:]))
    return vmc_words(data + bytes((checksum(data),)))


class Bus:
    """A VMC's view of one reader: send blocks, get the reader's answer bytes."""

    def __init__(self, device: CashlessDevice, address: int) -> None:
        self.device = device
        self.address = address
        self.now = 0.0

    def state(self) -> State:
        """A call, not an attribute: keeps mypy from narrowing it across commands."""
        return self.device.state

    def send(self, *payload: int, advance: float = 0.01) -> bytes:
        self.now += advance
        out = self.device.receive(block(self.address, *payload), self.now)
        return b"".join(out)

    def ack(self) -> bytes:
        return b"".join(self.device.receive([Word(c.ACK)], self.now))

    def poll(self, advance: float = 0.01) -> bytes:
        return self.send(c.Cmd.POLL, advance=advance)

    def exchange(self, *payload: int) -> bytes:
        """Send, and ACK a data answer as a VMC does."""
        answer = self.send(*payload)
        if len(answer) > 1:
            self.ack()
        return answer

    def poll_ack(self) -> bytes:
        answer = self.poll()
        if len(answer) > 1:
            self.ack()
        return answer


def data(answer: bytes) -> bytes:
    """Strip and check the CHK of a reader data block."""
    assert len(answer) >= 2, answer.hex()
    assert checksum(answer[:-1]) == answer[-1], answer.hex()
    return answer[:-1]


def enabled(
    level: int = 3,
    address: int = 0x10,
    *,
    vmc_level: int = 3,
    features: int = 0,
    **config: object,
) -> Bus:
    """A reader taken through a VMC's init sequence to Enabled."""
    device = CashlessDevice(ReaderConfig(address=address, level=level, **config))  # type: ignore[arg-type]
    bus = Bus(device, address)
    assert bus.send(c.Cmd.RESET) == b"\x00"
    assert data(bus.poll()) == b"\x00"
    bus.ack()
    bus.exchange(c.Cmd.SETUP, 0, vmc_level, 16, 2, 1)
    assert bus.send(c.Cmd.SETUP, 1, 0x27, 0x10, 0, 5) == b"\x00"
    ident = b"SIM" + b"S" * 12 + b"M" * 12 + b"\x01\x00"
    bus.exchange(c.Cmd.EXPANSION, 0, *ident)
    if features:
        assert bus.send(c.Cmd.EXPANSION, 4, *features.to_bytes(4, "big")) == b"\x00"
    assert bus.send(c.Cmd.READER, 1) == b"\x00"
    device.take_events()
    return bus
