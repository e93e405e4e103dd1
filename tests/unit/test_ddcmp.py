"""Enhanced DDCMP: the codec, the stream assembler, and the reader against the simulated VMC.

Reader and server talk in memory on a simulated clock, so the 250 ms / 170 ms / 15 s timers of
EVA-DTS 6.2 ch. 3 cost nothing; a few tests shorten them through :class:`Timing` only to keep
the step count small.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.crc16 import crc16_arc
from protocols.dex import DexError, Finished, Progress, Send
from protocols.dex.ddcmp import (
    MAX_DATA,
    Action,
    BadFrame,
    ControlMessage,
    ControlType,
    DataMessage,
    DdcmpError,
    DdcmpReader,
    DdcmpSlave,
    DdcmpTimeoutError,
    Failed,
    FrameAssembler,
    NackReason,
    ReadData,
    ReadDataResponse,
    SetBaud,
    SlaveFaults,
    Step,
    Timing,
    WhoAreYou,
    decode_frame,
)
from protocols.errors import ProtocolError
from tests.samples import AUDIT

FAST = Timing(link_timeout=2.0, data_link_timeout=3.0)


# --- codec ------------------------------------------------------------------------------------


def test_frames_match_a_field_readers_bytes() -> None:
    # START and the who-are-you header as a field reader sends them; their CRCs check.
    assert ControlMessage.start().to_bytes() == bytes.fromhex("05 06 40 00 00 01 5c 55")
    assert ControlMessage.ack(1).to_bytes() == bytes.fromhex("05 01 40 01 00 01 b8 55")
    way = WhoAreYou(stamp=datetime(2017, 2, 13, 10, 32, 2)).to_bytes()
    assert len(way) == 16
    frame = DataMessage(way, num=1).to_bytes()
    assert frame[:8] == bytes.fromhex("81 10 40 00 01 01 0a 42")
    read = DataMessage(ReadData().to_bytes(), num=2, resp=1).to_bytes()
    assert read == bytes.fromhex("81 09 40 01 02 01 46 b0 77 e2 00 01 01 00 00 00 00 f0 72")


def test_nack_carries_its_reason_in_the_subtype() -> None:
    nack = ControlMessage.nack(NackReason.DATA_CRC, 7)
    wire = nack.to_bytes()
    assert wire[:6] == bytes((0x05, 0x02, 0x42, 7, 0, 1))
    assert decode_frame(wire) == nack


def test_data_count_uses_fourteen_bits_and_select() -> None:
    message = DataMessage(bytes(MAX_DATA), num=9, resp=8, select=True)
    wire = message.to_bytes()
    assert wire[1] == 0xFF
    assert wire[2] == 0x40 | 0x80 | 0x3F
    assert decode_frame(wire) == message
    with pytest.raises(ValueError, match="carries"):
        DataMessage(bytes(MAX_DATA + 1), num=1)


def test_decode_refuses_damage_with_a_protocol_error() -> None:
    wire = bytearray(DataMessage(b"hello", num=1).to_bytes())
    wire[-1] ^= 1
    with pytest.raises(DdcmpError, match="data CRC") as caught:
        decode_frame(wire)
    assert isinstance(caught.value, ProtocolError)
    assert isinstance(caught.value, DexError)


def test_application_messages_round_trip() -> None:
    way = WhoAreYou(0x1234, 0x0042, datetime(2024, 12, 31, 23, 59, 58), 7, 0x0C)
    assert WhoAreYou.from_bytes(way.to_bytes()) == way
    assert ReadData.from_bytes(ReadData(2, 1, 10, 20).to_bytes()) == ReadData(2, 1, 10, 20)
    for length in (0, 1813, None):
        response = ReadDataResponse(0, 1, 1, 0, length)
        assert ReadDataResponse.from_bytes(response.to_bytes()) == response


bytes_st = st.integers(0, 255)
controls_st = st.builds(
    ControlMessage,
    st.sampled_from(ControlType),
    st.integers(0, 0x3F),
    bytes_st,
    bytes_st,
    bytes_st,
    st.sampled_from([0x00, 0x40, 0x80, 0xC0]),
)
datas_st = st.builds(
    DataMessage, st.binary(min_size=1, max_size=600), bytes_st, bytes_st, st.booleans(), bytes_st
)
frames_st = st.lists(st.one_of(controls_st, datas_st), max_size=12)


@given(frames_st, st.lists(st.integers(1, 40), max_size=60))
def test_assembler_finds_every_frame_under_any_split(
    frames: list[ControlMessage | DataMessage], cuts: list[int]
) -> None:
    stream = b"".join(f.to_bytes() for f in frames)
    assembler = FrameAssembler()
    out = []
    pos = 0
    for cut in cuts:
        out += assembler.feed(stream[pos : pos + cut], 0.0)
        pos += cut
    out += assembler.feed(stream[pos:], 0.0)
    assert out == frames
    assert assembler.skipped == 0


@given(st.binary(max_size=800), st.lists(st.integers(1, 50), max_size=30), frames_st)
def test_garbage_never_crashes_and_a_pause_resynchronises(
    noise: bytes, cuts: list[int], frames: list[ControlMessage | DataMessage]
) -> None:
    assembler = FrameAssembler(inter_char=0.065)
    pos = 0
    for cut in cuts:
        for item in assembler.feed(noise[pos : pos + cut], 0.0):
            assert isinstance(item, ControlMessage | DataMessage | BadFrame)
        pos += cut
    assembler.feed(noise[pos:], 0.0)
    out = assembler.feed(b"".join(f.to_bytes() for f in frames), 1.0)
    assert out == frames


@given(st.binary(max_size=300).filter(lambda b: 0x05 not in b and 0x81 not in b), frames_st)
def test_frames_after_noise_without_header_bytes_all_arrive(
    noise: bytes, frames: list[ControlMessage | DataMessage]
) -> None:
    out = FrameAssembler().feed(noise + b"".join(f.to_bytes() for f in frames), 0.0)
    assert out == frames


def test_damaged_frames_come_out_as_what_to_nack() -> None:
    good = ControlMessage.ack(3).to_bytes()
    bad_data = bytearray(DataMessage(b"audit", num=4).to_bytes())
    bad_data[-2] ^= 0x10
    bad_header = bytearray(DataMessage(b"x", num=5).to_bytes())
    bad_header[6] ^= 1
    out = FrameAssembler().feed(bytes(bad_data) + bytes(bad_header) + good, 0.0)
    assert out == [
        BadFrame(NackReason.DATA_CRC, 4),
        BadFrame(NackReason.HEADER_CRC),
        ControlMessage.ack(3),
    ]


def test_a_frame_that_stalls_past_the_inter_char_timeout_is_dropped() -> None:
    wire = DataMessage(b"abcdef", num=1).to_bytes()
    assembler = FrameAssembler(inter_char=0.065)
    assert assembler.feed(wire[:10], 0.0) == []
    assert assembler.feed(wire[10:], 0.1) == []
    assert assembler.feed(wire, 0.2) == [DataMessage(b"abcdef", num=1)]


# --- reader against the simulated VMC ------------------------------------------------------


@dataclass
class Run:
    reader: DdcmpReader
    slave: DdcmpSlave
    actions: list[Action] = field(default_factory=list)
    slave_actions: list[Action] = field(default_factory=list)
    to_slave: list[bytes] = field(default_factory=list)
    to_reader: list[bytes] = field(default_factory=list)
    heard: float = 0.0  # when the last bytes reached the reader
    end: float = 0.0

    @property
    def outcome(self) -> Action:
        return self.actions[-1]

    def frames_to_reader(self) -> list[ControlMessage | DataMessage | BadFrame]:
        return FrameAssembler().feed(b"".join(self.to_reader), 0.0)

    def frames_to_slave(self) -> list[ControlMessage | DataMessage | BadFrame]:
        return FrameAssembler().feed(b"".join(self.to_slave), 0.0)


Latency = Callable[[bool, bytes], float]
"""Extra seconds on the way for a send (``from_reader``, the bytes)."""


def run(
    reader: DdcmpReader,
    slave: DdcmpSlave,
    *,
    limit: float = 120.0,
    latency: Latency | None = None,
) -> Run:
    """Both ends on one simulated clock; bytes arrive 1 ms after they are sent, ``latency``
    later still, each direction in order (what follows a late send waits behind it)."""
    result = Run(reader, slave)
    in_flight: list[tuple[float, bool, bytes]] = []  # (arrival, to_slave, data)
    line_free = {True: 0.0, False: 0.0}
    now = 0.0

    def carry(actions: list[Action], *, from_reader: bool) -> bool:
        for action in actions:
            (result.actions if from_reader else result.slave_actions).append(action)
            if isinstance(action, Send):
                late = latency(from_reader, action.data) if latency else 0.0
                arrival = max(now + 0.001 + late, line_free[from_reader])
                line_free[from_reader] = arrival
                in_flight.append((arrival, from_reader, action.data))
                (result.to_slave if from_reader else result.to_reader).append(action.data)
            if from_reader and isinstance(action, Finished | Failed):
                return True
        return False

    if carry(reader.start(now), from_reader=True):
        return result
    while now < limit:
        times = [t for t, _, _ in in_flight]
        times += [d for d in (reader.deadline(), slave.deadline()) if d is not None]
        if not times:
            break
        now = max(now, min(times))
        for item in sorted((i for i in in_flight if i[0] <= now), key=lambda i: i[0]):
            in_flight.remove(item)
            _, to_slave, data = item
            if to_slave:
                carry(slave.receive(data, now), from_reader=False)
                continue
            result.heard = now
            if carry(reader.receive(data, now), from_reader=True):
                result.end = now
                return result
        carry(slave.poll(now), from_reader=False)
        if carry(reader.poll(now), from_reader=True):
            result.end = now
            return result
    pytest.fail(f"no outcome by t={now:.3f}: {result.actions[-5:]}")


def test_happy_path_reads_the_audit_and_negotiates_speed() -> None:
    result = run(DdcmpReader(9600), DdcmpSlave(AUDIT, block_size=240))
    assert result.outcome == Finished(AUDIT)
    assert SetBaud(9600) in result.actions
    progress = [a.received for a in result.actions if isinstance(a, Progress)]
    assert progress[-1] == len(AUDIT)
    assert progress == sorted(progress)
    assert len(progress) == -(-len(AUDIT) // 240)
    assert result.reader.identity == b"SIM0000001"
    assert result.reader.expected_length == len(AUDIT)
    assert Finished(AUDIT) in result.slave_actions
    assert result.reader.nacks_sent == 0
    # The read starts like a field reader's: START, then who-are-you as message 1.
    first = result.frames_to_slave()
    assert first[0] == ControlMessage.start(9600)
    assert isinstance(first[1], DataMessage)
    assert first[1].num == 1
    assert first[1].data[:2] == b"\x77\xe0"


def test_vmc_may_accept_a_lower_speed_than_proposed() -> None:
    result = run(DdcmpReader(115200), DdcmpSlave(AUDIT, max_baud=19200))
    assert result.outcome == Finished(AUDIT)
    assert SetBaud(19200) in result.actions
    assert result.reader.baud == 19200


def test_staying_at_2400_sends_no_speed_change() -> None:
    result = run(DdcmpReader(2400), DdcmpSlave(AUDIT))
    assert result.outcome == Finished(AUDIT)
    assert not any(isinstance(a, SetBaud) for a in result.actions)


@pytest.mark.parametrize("size", [1, 7, 240, 1000, 16381])
def test_any_block_size_delivers_the_same_bytes(size: int) -> None:
    result = run(DdcmpReader(), DdcmpSlave(AUDIT, block_size=size), limit=1000.0)
    assert result.outcome == Finished(AUDIT)


def test_empty_audit() -> None:
    assert run(DdcmpReader(), DdcmpSlave(b"")).outcome == Finished(b"")


def test_nacked_commands_are_repeated() -> None:
    result = run(
        DdcmpReader(), DdcmpSlave(AUDIT, faults=SlaveFaults(nack_messages=frozenset({1, 2, 3})))
    )
    assert result.outcome == Finished(AUDIT)
    to_slave = [f for f in result.frames_to_slave() if isinstance(f, DataMessage)]
    assert [f.num for f in to_slave] == [1, 1, 2, 2, 3, 3]


def test_corrupted_crcs_are_nacked_and_retransmitted() -> None:
    faults = SlaveFaults(corrupt_data_crc=frozenset({0, 3}), corrupt_header_crc=frozenset({5}))
    result = run(DdcmpReader(), DdcmpSlave(AUDIT, faults=faults))
    assert result.outcome == Finished(AUDIT)
    nacks = [
        f
        for f in result.frames_to_slave()
        if isinstance(f, ControlMessage) and f.type is ControlType.NACK
    ]
    assert [n.subtype for n in nacks] == [
        NackReason.DATA_CRC,
        NackReason.DATA_CRC,
        NackReason.HEADER_CRC,
    ]
    assert result.reader.nacks_sent == 3
    assert result.slave.retransmissions == 3


def test_a_lost_ack_is_recovered_by_the_vmcs_retransmission() -> None:
    reader = DdcmpReader()
    slave = DdcmpSlave(AUDIT)
    original = reader.receive
    dropped: list[bytes] = []

    def deaf_once(data: bytes, now: float) -> list[Action]:
        # Swallow the first copy of data block 2: the reader never ACKs it, the VMC repeats it.
        if not dropped and data[8:10] == b"\x99\x02":
            dropped.append(data)
            return []
        return original(data, now)

    reader.receive = deaf_once  # type: ignore[method-assign]
    result = run(reader, slave)
    assert dropped
    assert result.outcome == Finished(AUDIT)
    assert slave.retransmissions == 1


@pytest.mark.parametrize(
    ("faults", "step", "reason"),
    [
        (SlaveFaults(silent_after_frames=1), Step.WHO_ARE_YOU, "no ACK for message 1 after 5"),
        (SlaveFaults(silent_after_frames=3), Step.READ_DATA, "no ACK for message 2 after 5"),
        (SlaveFaults(silent_at_block=0), Step.TRANSFER, "no valid frame from the VMC for 3 s"),
        (SlaveFaults(silent_at_block=4), Step.TRANSFER, "for 3 s after 960 audit bytes"),
    ],
)
def test_silence_times_out_naming_the_step(faults: SlaveFaults, step: Step, reason: str) -> None:
    result = run(DdcmpReader(timing=FAST), DdcmpSlave(AUDIT, faults=faults, timing=FAST))
    outcome = result.outcome
    assert isinstance(outcome, Failed)
    assert outcome.step is step
    assert outcome.timed_out
    assert reason in outcome.reason
    error = outcome.error()
    assert isinstance(error, DdcmpTimeoutError)
    assert isinstance(error, TimeoutError)
    assert error.step == step.value
    assert str(error).startswith(f"{step.value}: ")


def test_link_timeout_mid_transfer_defaults_to_fifteen_seconds() -> None:
    result = run(DdcmpReader(), DdcmpSlave(AUDIT, faults=SlaveFaults(silent_at_block=2)))
    assert isinstance(result.outcome, Failed)
    assert result.outcome.step is Step.TRANSFER
    assert "15 s" in result.outcome.reason
    silent_since = 2 * 0.26  # roughly: two blocks at 9600 Bd with turnarounds
    assert 15.0 < result.end < 15.0 + 1.0 + silent_since


def test_abort_mid_transfer_fails_the_transfer_step() -> None:
    result = run(DdcmpReader(), DdcmpSlave(AUDIT, faults=SlaveFaults(abort_at_block=3)))
    outcome = result.outcome
    assert isinstance(outcome, Failed)
    assert outcome.step is Step.TRANSFER
    assert "restarted the link" in outcome.reason
    assert "720 audit bytes" in outcome.reason
    assert not outcome.timed_out
    assert type(outcome.error()) is DdcmpError


def test_too_many_start_attempts() -> None:
    result = run(DdcmpReader(), DdcmpSlave(AUDIT, faults=SlaveFaults(silent_after_frames=0)))
    outcome = result.outcome
    assert isinstance(outcome, Failed)
    assert outcome.step is Step.START
    assert outcome.reason == "no STACK after 10 START attempts"
    starts = [f for f in result.frames_to_slave() if isinstance(f, ControlMessage)]
    assert starts == [ControlMessage.start(9600)] * 10
    # 10 x (START on the wire at 2400 Bd + 250 ms)
    assert result.end == pytest.approx(10 * (8 * 10 / 2400 + 0.25), abs=0.01)


def test_repeated_damage_gives_up_after_five_attempts() -> None:
    reader = DdcmpReader()
    reader.start(0.0)
    reader.receive(ControlMessage.stack(9600).to_bytes(), 0.1)
    reader.receive(ControlMessage.ack(1).to_bytes(), 0.2)
    bad = bytearray(DataMessage(b"\x88\xe0\x00", num=1, resp=1).to_bytes())
    bad[-1] ^= 1
    actions: list[Action] = []
    for i in range(5):
        actions += reader.receive(bytes(bad), 0.3 + i * 0.1)
        actions += reader.poll(0.35 + i * 0.1)
    assert isinstance(actions[-1], Failed)
    assert actions[-1].step is Step.WHO_ARE_YOU
    assert "5 damaged frames in a row (last: bad data CRC)" in actions[-1].reason
    assert reader.nacks_sent == 4


# --- late answers -------------------------------------------------------------------------
# An answer that comes after the sender's 170 ms ACK timer ran out crosses the next attempt.


def reader_awaiting_read_data_ack() -> tuple[DdcmpReader, float]:
    """A reader whose read-data command (message 2) went out once; and the time it did."""
    reader = DdcmpReader(2400, timing=Timing(turnaround=0.0))
    reader.start(0.0)
    reader.receive(ControlMessage.stack().to_bytes(), 0.1)
    reply = DataMessage(b"\x88\xe0\x00VMC", num=1, resp=1, select=True).to_bytes()
    reader.receive(ControlMessage.ack(1).to_bytes() + reply, 0.2)
    assert reader.step is Step.READ_DATA
    return reader, 0.2


def sent_frames(actions: list[Action]) -> list[ControlMessage | DataMessage | BadFrame]:
    return FrameAssembler().feed(b"".join(a.data for a in actions if isinstance(a, Send)), 0.0)


def commands_taken(slave: DdcmpSlave) -> list[bytes]:
    """The application code (77 xx) of every command the VMC acts on, as it does."""
    taken: list[bytes] = []
    act = slave._on_command

    def noting(data: bytes, now: float) -> None:
        taken.append(data[:2])
        act(data, now)

    slave._on_command = noting  # type: ignore[method-assign]
    return taken


def test_a_late_nack_does_not_fail_a_message_whose_ack_is_right_behind_it() -> None:
    reader, now = reader_awaiting_read_data_ack()
    for _ in range(4):  # no answer yet: attempts 2 to 5 go out, 170 ms apart
        deadline = reader.deadline()
        assert deadline is not None
        now = deadline
        reader.poll(now)
    # The VMC NACKed the first copy, took the second, answered; all of it arrives only now.
    response = DataMessage(ReadDataResponse(0, 1, 1, 0, 2000).to_bytes(), num=2, resp=2)
    late = (
        ControlMessage.nack(NackReason.DATA_CRC, 1).to_bytes()
        + ControlMessage.ack(2).to_bytes()
        + response.to_bytes()
    )
    actions = reader.receive(late, now + 0.01) + reader.poll(now + 0.02)
    assert not [a for a in actions if isinstance(a, Failed)]
    assert reader.step is Step.TRANSFER
    assert sent_frames(actions) == [ControlMessage.ack(2)]


def test_a_nack_acknowledges_our_message_through_its_resp() -> None:
    # DDCMP: RESP in a NACK names the last good message, as in an ACK. A NACK of RESP 2 is
    # about something after our message 2, which therefore arrived.
    reader, now = reader_awaiting_read_data_ack()
    actions = reader.receive(ControlMessage.nack(NackReason.HEADER_CRC, 2).to_bytes(), now + 0.1)
    actions += reader.poll(now + 2.0)  # long past the ACK timer: nothing goes again
    assert sent_frames(actions) == []
    assert not [a for a in actions if isinstance(a, Failed)]


def test_a_vmc_giving_up_on_late_acks_leaves_the_read_to_its_link_timeout() -> None:
    """The stress case: read-data copies cross the VMC's answer, our ACKs of it come late.

    The VMC takes read-data once, ACKs every copy again, then spends its five attempts on
    its answer before our ACK reaches it and gives up, as DDCMP wants; the read ends at its
    15 s data link timeout, naming the step. No sequence number goes wrong on either side.
    """
    ack_2 = ControlMessage.ack(2).to_bytes()
    vmc_acked = False

    def latency(from_reader: bool, data: bytes) -> float:
        nonlocal vmc_acked
        if not from_reader and data == ack_2 and not vmc_acked:
            vmc_acked = True
            return 0.45  # the VMC's ACK of read-data, its answer behind: our copies cross them
        if from_reader and vmc_acked and data == ack_2:
            return 1.0  # our ACK of its answer
        return 0.0

    reader, slave = DdcmpReader(), DdcmpSlave(AUDIT, block_size=200)
    commands = commands_taken(slave)
    result = run(reader, slave, latency=latency)
    copies = [f for f in result.frames_to_slave() if isinstance(f, DataMessage) and f.num == 2]
    assert len(copies) > 1
    assert commands.count(b"\x77\xe2") == 1
    acks_of_2 = [f for f in result.frames_to_reader() if f == decode_frame(ack_2)]
    assert len(acks_of_2) == len(copies)
    assert Failed(Step.READ_DATA, "no ACK for message 2 after 5 attempts", True) in (
        result.slave_actions
    )
    outcome = result.outcome
    assert isinstance(outcome, Failed)
    assert outcome.step is Step.TRANSFER
    assert outcome.reason.startswith("link timeout: no valid frame from the VMC for 15 s")
    assert result.end - result.heard == pytest.approx(15.0, abs=0.01)


_FAULTS = SlaveFaults(
    nack_messages=frozenset({2}),
    corrupt_data_crc=frozenset({1}),
    corrupt_header_crc=frozenset({4}),
)


@settings(max_examples=200)
@given(
    faults=st.sampled_from([SlaveFaults(), _FAULTS]),
    delays=st.lists(st.one_of(st.just(0.0), st.floats(0.0, 0.3), st.floats(0.3, 1.5)), max_size=60),
)
def test_late_answers_give_the_audit_or_a_named_failure(
    faults: SlaveFaults, delays: list[float]
) -> None:
    """Random lateness on both sides, on the virtual clock: never wrong bytes, never a
    command taken twice, never a wait past the reader's own limits."""
    sends = itertools.count()

    def latency(_from_reader: bool, _data: bytes) -> float:
        n = next(sends)
        return delays[n] if n < len(delays) else 0.0

    reader, slave = DdcmpReader(), DdcmpSlave(AUDIT, block_size=200, faults=faults)
    commands = commands_taken(slave)
    result = run(reader, slave, latency=latency)
    outcome = result.outcome
    if isinstance(outcome, Finished):
        assert outcome.audit == AUDIT
    else:
        assert isinstance(outcome, Failed)
        assert isinstance(outcome.error(), DdcmpError)
    assert len(commands) == len(set(commands))
    assert result.end - result.heard <= reader.timing.data_link_timeout + 1e-6


def test_replies_wait_for_the_turnaround() -> None:
    reader = DdcmpReader(2400, timing=Timing(turnaround=0.04))
    reader.start(0.0)
    assert reader.receive(ControlMessage.stack().to_bytes(), 1.0) == []
    assert reader.deadline() == pytest.approx(1.04)
    assert reader.poll(1.039) == []
    sent = reader.poll(1.04)
    assert len(sent) == 1
    assert isinstance(sent[0], Send)


def test_refused_read_names_the_step() -> None:
    reader = DdcmpReader(2400, timing=Timing(turnaround=0.0))
    reader.start(0.0)
    reader.receive(ControlMessage.stack().to_bytes(), 0.1)
    reply = DataMessage(b"\x88\xe0\x00VMC", num=1, resp=1, select=True).to_bytes()
    reader.receive(ControlMessage.ack(1).to_bytes() + reply, 0.2)
    refused = ReadDataResponse(status=4).to_bytes()
    actions = reader.receive(DataMessage(refused, num=2, resp=2).to_bytes(), 0.3)
    assert actions[-1] == Failed(Step.READ_DATA, "the VMC refused to read list 1 (status 4)")
    assert reader.identity == b"VMC"


def test_start_twice_is_a_local_mistake() -> None:
    reader = DdcmpReader()
    reader.start(0.0)
    with pytest.raises(DdcmpError, match="already started"):
        reader.start(0.1)


def test_the_header_crc_covers_six_bytes() -> None:
    wire = ControlMessage.stack(9600).to_bytes()
    assert int.from_bytes(wire[6:], "little") == crc16_arc(wire[:6])
