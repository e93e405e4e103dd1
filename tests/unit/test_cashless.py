"""Table-driven tests of the cashless core: every command, every level, both addresses."""

from __future__ import annotations

import pytest

from protocols.errors import LocalProtocolError
from protocols.mdb import commands as c
from protocols.mdb import events as ev
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from protocols.mdb.commands import Feature, PaymentType
from protocols.mdb.events import State
from protocols.mdb.words import Word
from tests.mdb_helpers import EVERY_LEVEL_AND_ADDRESS, Bus, block, data, enabled

ACK = b"\x00"
AI = int(Feature.ALWAYS_IDLE)
WIDE = int(Feature.WIDE_MONEY)


def _events_of(bus: Bus, kind: type) -> list[object]:
    return [e for e in bus.device.take_events() if isinstance(e, kind)]


@pytest.mark.parametrize(("level", "address"), EVERY_LEVEL_AND_ADDRESS)
def test_init_sequence(level: int, address: int) -> None:
    device = CashlessDevice(ReaderConfig(address=address, level=level))
    bus = Bus(device, address)
    assert bus.send(c.Cmd.RESET) == ACK
    assert data(bus.poll()) == bytes((c.Resp.JUST_RESET,))
    bus.ack()
    config = data(bus.exchange(c.Cmd.SETUP, 0, 3, 16, 2, 1))
    assert config == bytes((1, level, 0x19, 0x78, 1, 2, 5, 0b1011))
    assert bus.state() is State.DISABLED
    assert bus.send(c.Cmd.SETUP, 1, 0xFF, 0xFE, 0, 5) == ACK
    ident = data(bus.exchange(c.Cmd.EXPANSION, 0, *(b"SIM" + b"1" * 24 + b"\x01\x00")))
    assert ident[0] == c.Resp.PERIPHERAL_ID
    assert len(ident) == (34 if level == 3 else 30)
    assert ident[1:4] == b"VMC"
    if level == 3:
        assert int.from_bytes(ident[30:34], "big") == AI | WIDE | Feature.NEGATIVE_VEND
    assert bus.send(c.Cmd.READER, 1) == ACK
    assert bus.state() is State.ENABLED
    assert bus.poll() == ACK


@pytest.mark.parametrize(("level", "address"), EVERY_LEVEL_AND_ADDRESS)
def test_operating_level_is_the_lower_one(level: int, address: int) -> None:
    for vmc_level in (1, 2, 3):
        bus = enabled(level, address, vmc_level=vmc_level)
        assert bus.device.operating_level == min(level, vmc_level)


@pytest.mark.parametrize(("level", "address"), EVERY_LEVEL_AND_ADDRESS)
def test_session_vend_success(level: int, address: int) -> None:
    bus = enabled(level, address)
    bus.device.begin_session(500)
    begin = data(bus.poll_ack())
    assert begin[0] == c.Resp.BEGIN_SESSION
    assert begin[1:3] == (500).to_bytes(2, "big")
    assert len(begin) == (3 if level == 1 else 10)
    assert bus.state() is State.SESSION_IDLE
    assert bus.send(c.Cmd.VEND, 0, 0, 120, 0, 7) == ACK
    (request,) = _events_of(bus, ev.VendRequested)
    assert request == ev.VendRequested(1, 7, 120)
    assert bus.poll() == ACK  # the decision is not made yet
    bus.device.approve_vend(1, 120)
    assert data(bus.poll_ack()) == bytes((c.Resp.VEND_APPROVED, 0, 120))
    assert bus.send(c.Cmd.VEND, 2, 0, 7) == ACK
    assert _events_of(bus, ev.VendSucceeded) == [ev.VendSucceeded(1, 7, 120)]
    assert data(bus.send(c.Cmd.VEND, 4)) == bytes((c.Resp.END_SESSION,))
    bus.ack()
    assert bus.state() is State.ENABLED


@pytest.mark.parametrize(("level", "address"), EVERY_LEVEL_AND_ADDRESS)
def test_vend_failure_is_reported_for_refund(level: int, address: int) -> None:
    bus = enabled(level, address)
    bus.device.begin_session(None)
    begin = data(bus.poll_ack())
    assert begin[1:3] == b"\xff\xff"
    bus.send(c.Cmd.VEND, 0, 0, 200, 0, 3)
    bus.device.approve_vend(1, 200)
    bus.poll_ack()
    assert bus.send(c.Cmd.VEND, 3) == ACK
    assert _events_of(bus, ev.VendFailed) == [ev.VendFailed(1, 3, 200)]
    assert bus.state() is State.SESSION_IDLE


@pytest.mark.parametrize(("level", "address"), EVERY_LEVEL_AND_ADDRESS)
def test_deny_and_vmc_cancel(level: int, address: int) -> None:
    bus = enabled(level, address)
    bus.device.begin_session(1000)
    bus.poll_ack()
    bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1)
    bus.device.deny_vend(1)
    assert data(bus.poll_ack()) == bytes((c.Resp.VEND_DENIED,))
    bus.send(c.Cmd.VEND, 0, 0, 100, 0, 2)
    assert data(bus.exchange(c.Cmd.VEND, 1)) == bytes((c.Resp.VEND_DENIED,))
    denials = _events_of(bus, ev.VendDeniedSent)
    assert denials == [
        ev.VendDeniedSent(1, ev.DenyReason.APPLICATION),
        ev.VendDeniedSent(2, ev.DenyReason.CANCELLED_BY_VMC),
    ]
    bus.device.approve_vend(2, 100)  # lost the race with the customer's cancel: dropped
    bus.device.deny_vend(2)
    assert bus.poll() == ACK
    assert bus.device.take_events() == []


@pytest.mark.parametrize(("level", "address"), EVERY_LEVEL_AND_ADDRESS)
def test_cash_sale_reader_commands_and_out_of_sequence(level: int, address: int) -> None:
    bus = enabled(level, address)
    assert bus.send(c.Cmd.VEND, 5, 0, 150, 0, 30) == ACK
    assert _events_of(bus, ev.CashSaleReported) == [ev.CashSaleReported(30, 150)]
    assert bus.send(c.Cmd.READER, 2) == ACK
    assert data(bus.poll_ack()) == bytes((c.Resp.CANCELLED,))
    assert bus.send(c.Cmd.READER, 0) == ACK
    assert bus.state() is State.DISABLED
    oos = data(bus.exchange(c.Cmd.VEND, 0, 0, 100, 0, 1))
    assert oos == (bytes((c.Resp.OUT_OF_SEQUENCE,)) if level == 1 else bytes((0x0B, 2)))
    assert _events_of(bus, ev.ProtocolViolation)
    assert bus.send(c.Cmd.READER, 1) == ACK
    assert bus.send(c.Cmd.READER, 1) == ACK  # VMCs repeat ENABLE
    assert bus.state() is State.ENABLED


@pytest.mark.parametrize(("level", "address"), EVERY_LEVEL_AND_ADDRESS)
def test_revalue(level: int, address: int) -> None:
    bus = enabled(level, address, revalue_limit=300)
    limit = data(bus.exchange(c.Cmd.REVALUE, 1))
    assert limit[0] == c.Resp.REVALUE_LIMIT
    assert int.from_bytes(limit[1:3], "big") == (0 if level == 1 else 300)
    bus.device.begin_session(100)
    bus.poll_ack()
    assert bus.send(c.Cmd.REVALUE, 0, 0, 50) == ACK
    if level == 1:
        assert data(bus.poll_ack()) == bytes((c.Resp.REVALUE_DENIED,))
        return
    assert _events_of(bus, ev.RevalueRequested) == [ev.RevalueRequested(50)]
    assert bus.state() is State.REVALUE
    bus.device.decide_revalue(True)
    assert data(bus.poll_ack()) == bytes((c.Resp.REVALUE_APPROVED,))
    assert bus.state() is State.SESSION_IDLE


@pytest.mark.parametrize("address", [0x10, 0x60])
def test_level3_always_idle_wide_money(address: int) -> None:
    bus = enabled(3, address, features=AI | WIDE)
    assert bus.device.always_idle
    assert bus.device.wide
    # The wide SETUP max/min form is accepted once wide money is on.
    assert bus.send(c.Cmd.SETUP, 1, 0, 0, 0x27, 0x10, 0, 0, 0, 5, 0x19, 0x78) == ACK
    # Always idle: the selection comes first, no BEGIN SESSION.
    assert bus.send(c.Cmd.VEND, 0, 0, 0, 1, 0x2C, 0, 9) == ACK
    assert bus.state() is State.VEND
    (request,) = _events_of(bus, ev.VendRequested)
    assert request == ev.VendRequested(1, 9, 300)
    bus.device.approve_vend(1, 300)
    assert data(bus.poll_ack()) == bytes((c.Resp.VEND_APPROVED, 0, 0, 1, 0x2C))
    bus.send(c.Cmd.VEND, 2, 0, 9)
    bus.exchange(c.Cmd.VEND, 4)
    assert bus.state() is State.ENABLED
    # A wide BEGIN SESSION is 17 bytes.
    bus.device.begin_session(1000)
    assert len(data(bus.poll_ack())) == 17


def test_always_idle_needs_the_vmc_to_enable_it() -> None:
    bus = enabled(3, features=WIDE)
    oos = data(bus.exchange(c.Cmd.VEND, 0, 0, 0, 0, 100, 0, 1))
    assert oos[0] == c.Resp.OUT_OF_SEQUENCE


def test_negative_vend_level3() -> None:
    bus = enabled(3, features=int(Feature.NEGATIVE_VEND))
    bus.device.begin_session(0)
    bus.poll_ack()
    assert bus.send(c.Cmd.VEND, 6, 0, 80, 0, 4) == ACK
    assert bus.state() is State.NEGATIVE_VEND
    (request,) = _events_of(bus, ev.VendRequested)
    assert request.negative  # type: ignore[attr-defined]
    bus.device.approve_vend(1, 80)
    assert data(bus.poll_ack()) == bytes((c.Resp.VEND_APPROVED, 0, 80))
    assert bus.send(c.Cmd.VEND, 2, 0, 4) == ACK


def test_negative_vend_refused_when_not_enabled() -> None:
    bus = enabled(3)
    bus.device.begin_session(0)
    bus.poll_ack()
    assert data(bus.exchange(c.Cmd.VEND, 6, 0, 80, 0, 4))[0] == c.Resp.OUT_OF_SEQUENCE


def test_blocks_for_other_devices_are_ignored() -> None:
    bus = enabled(3, 0x10)
    for other in (0x08, 0x30, 0x60):
        assert bus.device.receive(block(other, c.Cmd.POLL), 1.0) == []
        assert bus.device.receive(block(other, c.Cmd.VEND, 0, 0, 1, 0, 1), 1.0) == []
    assert bus.poll() == ACK


def test_approval_deadline_denies_and_refuses_late_approval() -> None:
    bus = enabled(3, features=AI, approval_timeout=2.0)
    bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1)
    assert bus.poll(advance=1.0) == ACK
    bus.now += 1.5
    bus.device.tick(bus.now)
    with pytest.raises(LocalProtocolError):
        bus.device.approve_vend(1, 100)  # denied at the deadline, not yet told
    answer = data(bus.poll())
    bus.ack()
    assert answer == bytes((c.Resp.VEND_DENIED,))
    bus.device.approve_vend(1, 100)  # the VMC has its answer: dropped
    assert bus.poll() == ACK
    denied = _events_of(bus, ev.VendDeniedSent)
    assert denied == [ev.VendDeniedSent(1, ev.DenyReason.APPROVAL_TIMEOUT)]


def test_vend_result_timeout_asks_to_end_session() -> None:
    bus = enabled(1, vend_result_timeout=10.0)
    bus.device.begin_session(500)
    bus.poll_ack()
    bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1)
    bus.device.approve_vend(1, 100)
    bus.poll_ack()
    assert bus.poll(advance=5.0) == ACK
    assert data(bus.poll(advance=6.0)) == bytes((c.Resp.SESSION_CANCEL_REQUEST,))
    bus.ack()
    assert data(bus.send(c.Cmd.VEND, 4)) == bytes((c.Resp.END_SESSION,))
    unknown = _events_of(bus, ev.VendOutcomeUnknown)
    assert len(unknown) == 1


def test_session_timeout_walk_away() -> None:
    bus = enabled(2, session_timeout=30.0)
    bus.device.begin_session(500)
    bus.poll_ack()
    assert bus.poll(advance=29.0) == ACK
    assert data(bus.poll(advance=2.0)) == bytes((c.Resp.SESSION_CANCEL_REQUEST,))
    assert _events_of(bus, ev.SessionTimedOut)


def test_a_session_can_carry_its_own_timeout() -> None:
    """A voucher's session lasts as long as the voucher, not the reader's session_timeout."""
    bus = enabled(2, session_timeout=30.0)
    bus.device.begin_session(500, timeout=100.0)
    bus.poll_ack()
    assert bus.poll(advance=60.0) == ACK
    assert data(bus.poll(advance=41.0)) == bytes((c.Resp.SESSION_CANCEL_REQUEST,))
    bus.ack()
    assert data(bus.send(c.Cmd.VEND, 4)) == bytes((c.Resp.END_SESSION,))
    bus.ack()
    bus.device.begin_session(500)  # the next session has the reader's own again
    bus.poll_ack()
    assert data(bus.poll(advance=31.0)) == bytes((c.Resp.SESSION_CANCEL_REQUEST,))


def test_unacked_answer_is_resent_on_poll_and_on_ret() -> None:
    bus = enabled(1)
    bus.device.begin_session(500)
    first = bus.poll()
    assert data(first)[0] == c.Resp.BEGIN_SESSION
    assert bus.poll() == first  # no ACK came: same block again
    assert b"".join(bus.device.receive([Word(c.RET)], bus.now)) == first
    bus.ack()
    assert bus.poll() == ACK


def test_other_command_supersedes_unacked_answer() -> None:
    bus = enabled(1)
    bus.device.begin_session(500)
    bus.poll()  # BEGIN SESSION, not ACKed
    assert bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1) == ACK
    assert bus.poll() == ACK


def test_checksum_error_gets_nak() -> None:
    bus = enabled(1)
    words = block(0x10, c.Cmd.VEND, 0, 0, 100, 0, 1)
    words[-1] = Word((words[-1].value + 1) & 0xFF)
    assert bus.device.receive(words, 1.0) == [b"\xff"]
    assert _events_of(bus, ev.ProtocolViolation)
    assert bus.state() is State.ENABLED


def test_bus_reset_resets_the_reader() -> None:
    bus = enabled(3, features=AI)
    bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1)
    bus.device.approve_vend(1, 100)
    bus.poll_ack()
    assert bus.device.receive([Word(0, mode=True)], bus.now) == []
    assert bus.state() is State.INACTIVE
    events = bus.device.take_events()
    assert any(isinstance(e, ev.VendOutcomeUnknown) for e in events)
    assert ev.ReaderReset(bus_reset=True) in events
    assert data(bus.poll()) == bytes((c.Resp.JUST_RESET,))


def test_reset_mid_session_settles_undecided_vend() -> None:
    bus = enabled(3, features=AI)
    bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1)
    assert bus.send(c.Cmd.RESET) == ACK
    events = bus.device.take_events()
    assert ev.VendDeniedSent(1, ev.DenyReason.SESSION_ENDED) in events
    bus.device.approve_vend(1, 100)
    assert data(bus.poll()) == bytes((c.Resp.JUST_RESET,))
    bus.ack()
    assert bus.poll() == ACK


def test_repeated_vend_request_is_tolerated() -> None:
    bus = enabled(1)
    bus.device.begin_session(500)
    bus.poll_ack()
    assert bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1) == ACK
    assert bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1) == ACK
    assert len(_events_of(bus, ev.VendRequested)) == 1
    assert data(bus.exchange(c.Cmd.VEND, 0, 0, 90, 0, 2))[0] == c.Resp.OUT_OF_SEQUENCE


def test_disable_during_session_keeps_the_session() -> None:
    bus = enabled(1)
    bus.device.begin_session(500)
    bus.poll_ack()
    assert bus.send(c.Cmd.READER, 0) == ACK
    assert bus.state() is State.SESSION_IDLE
    assert bus.poll() == ACK
    bus.exchange(c.Cmd.VEND, 4)
    assert bus.state() is State.DISABLED


def test_scaled_money_both_ways() -> None:
    # RUB with scale 5 and one decimal: bus 10 = 5.0 RUB = 500 kopecks.
    bus = enabled(1, currency=643, scale_factor=5, decimal_places=1, max_response_time=120)
    bus.device.begin_session(2500)
    assert data(bus.poll_ack()) == bytes((3, 0, 50))
    bus.send(c.Cmd.VEND, 0, 0, 10, 0, 7)
    (request,) = _events_of(bus, ev.VendRequested)
    assert request.price == 500  # type: ignore[attr-defined]
    bus.device.approve_vend(1, 500)
    assert data(bus.poll_ack()) == bytes((5, 0, 10))


def test_display_and_malfunction_are_queued_for_poll() -> None:
    bus = enabled(2)
    bus.device.display("THANK YOU", 2.0)
    shown = data(bus.poll_ack())
    assert shown[:2] == bytes((c.Resp.DISPLAY_REQUEST, 20))
    assert shown[2:].rstrip() == b"THANK YOU"
    assert len(shown) == 2 + 32
    bus.device.report_malfunction(0x30)
    assert data(bus.poll_ack()) == bytes((c.Resp.MALFUNCTION, 0x30))


def test_application_misuse_is_refused() -> None:
    bus = enabled(1)
    with pytest.raises(LocalProtocolError, match="unknown"):
        bus.device.approve_vend(1, 100)
    bus.device.begin_session(100)
    bus.poll_ack()
    with pytest.raises(LocalProtocolError):
        bus.device.begin_session(100)
    bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1)
    with pytest.raises(LocalProtocolError):
        bus.device.approve_vend(1, 101)


def test_application_cancel_session() -> None:
    bus = enabled(1)
    bus.device.begin_session(100)
    bus.device.cancel_session()  # before delivery: nothing reaches the bus
    assert bus.poll() == ACK
    assert _events_of(bus, ev.SessionRefused)
    bus.device.begin_session(100)
    bus.poll_ack()
    bus.device.cancel_session()
    assert data(bus.poll_ack()) == bytes((c.Resp.SESSION_CANCEL_REQUEST,))


def test_vend_result_without_approval_is_out_of_sequence() -> None:
    bus = enabled(1)
    bus.device.begin_session(100)
    bus.poll_ack()
    bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1)
    answer = data(bus.exchange(c.Cmd.VEND, 2, 0, 1))
    assert answer[0] == c.Resp.OUT_OF_SEQUENCE
    assert not _events_of(bus, ev.VendSucceeded)


def test_a_stale_cancel_does_not_touch_the_next_session() -> None:
    bus = enabled(3, features=AI)
    bus.send(c.Cmd.VEND, 0, 0, 100, 0, 1)
    bus.device.approve_vend(1, 100)
    bus.poll_ack()
    bus.send(c.Cmd.VEND, 2, 0, 1)
    bus.exchange(c.Cmd.VEND, 4)  # the VMC ended the first session itself
    bus.send(c.Cmd.VEND, 0, 0, 100, 0, 2)  # the next customer selects at once
    bus.device.cancel_session(1)  # a late cancel meant for the first session
    assert bus.device.pending_vend is not None
    assert bus.poll() == ACK
    bus.device.cancel_session(2)
    assert data(bus.poll_ack()) == bytes((c.Resp.VEND_DENIED,))


@pytest.mark.parametrize(
    ("payment_type", "byte"),
    [(PaymentType.NORMAL, 0x00), (PaymentType.TEST, 0x40), (PaymentType.FREE, 0x80)],
)
def test_test_and_free_sessions_are_marked_for_the_vmc(
    payment_type: PaymentType, byte: int
) -> None:
    bus = enabled(2)
    bus.device.begin_session(500, payment_type)
    begin = data(bus.poll_ack())
    assert begin[7] == byte  # funds(2), media id(4), then the payment type
