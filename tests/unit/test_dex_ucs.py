"""DEX/UCS reader against the simulated VMC, in memory on a virtual clock (no loop, no sleeps)."""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.crc16 import crc16_arc
from protocols.dex import DexError, DexTimeoutError, Finished, Progress, Send
from protocols.dex.ucs import (
    EOT,
    ETB,
    ETX,
    NAK,
    SOH,
    STX,
    Action,
    Failed,
    SourceFaults,
    Stage,
    UcsReader,
    UcsSource,
    UcsTimers,
    Wait,
    data_blocks,
    encode_frame,
    handshake_frame,
    parse_response,
)
from protocols.errors import LocalProtocolError, ProtocolError
from tests.corpus import DEX
from tests.samples import AUDIT as SAMPLE

ACK0, ACK1, WACK = b"\x10\x30", b"\x10\x31", b"\x10\x3b"
BYTE_TIME = 1 / 960  # 9600 8N1
FAST_BYTE_TIME = 1e-5  # the line for FAST timers: a 245-byte block well inside timer A
FAST = UcsTimers(
    response=0.05,
    inter_char=0.01,
    inactivity=0.1,
    session_pause=0.005,
    turnaround=0.001,
    wack_pause=0.01,
    session_wait=0.3,
)


# --- a virtual line ------------------------------------------------------------------


Endpoint = UcsReader | UcsSource
Splitter = Callable[[bytes], list[bytes]]
Tamper = Callable[[str, bytes], bytes]
Latency = Callable[[str, bytes], float]


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@dataclass
class Line:
    """Two endpoints on a half-duplex 9600 Bd line simulated on a virtual clock.

    Sends arrive byte-time later in the pieces ``split`` cuts them into, ``latency`` seconds
    later still (what is sent after them waits behind them, as on a wire); each endpoint is
    polled at the time of its last ``Wait`` (no ``Wait`` in a batch: no timer runs).
    """

    reader: UcsReader
    source: UcsSource
    split: Splitter = whole
    tamper: Tamper | None = None
    latency: Latency | None = None
    byte_time: float = BYTE_TIME
    transcript: list[tuple[float, str, bytes]] = field(default_factory=list)
    arrivals: list[tuple[float, str, bytes]] = field(default_factory=list)
    progress: list[int] = field(default_factory=list)
    now: float = 0.0

    def __post_init__(self) -> None:
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._seq = itertools.count()
        self._deadline: dict[str, float | None] = {"reader": None, "source": None}
        self._line_free = {"reader": 0.0, "source": 0.0}

    def _ep(self, name: str) -> Endpoint:
        return self.reader if name == "reader" else self.source

    def _handle(self, name: str, actions: list[Action]) -> None:
        self._deadline[name] = None
        for action in actions:
            assert isinstance(action, Send | Wait | Progress | Finished | Failed)
            if isinstance(action, Send):
                assert action.data
                self.transcript.append((self.now, name, action.data))
                data = self.tamper(name, action.data) if self.tamper else action.data
                other = "source" if name == "reader" else "reader"
                late = self.latency(name, action.data) if self.latency else 0.0
                t = max(self.now + late, self._line_free[name])
                for piece in self.split(data):
                    t += len(piece) * self.byte_time
                    heapq.heappush(self._queue, (t, next(self._seq), other, piece))
                self._line_free[name] = t
            elif isinstance(action, Wait):
                self._deadline[name] = action.until
            elif isinstance(action, Progress) and name == "reader":
                self.progress.append(action.received)

    def run(self, limit: float = 300.0) -> Finished | Failed:
        self._handle("source", self.source.start(0.0))
        self._handle("reader", self.reader.start(0.0))
        while self.reader.result is None and self.now < limit:
            events: list[tuple[float, str]] = []
            if self._queue:
                events.append((self._queue[0][0], "line"))
            events += [(t, n) for n, t in self._deadline.items() if t is not None]
            if not events:
                break
            at, what = min(events)
            self.now = max(self.now, at)
            if what == "line":
                _, _, dest, piece = heapq.heappop(self._queue)
                self.arrivals.append((self.now, dest, piece))
                if not self._ep(dest).done:
                    self._handle(dest, self._ep(dest).receive(piece, self.now))
            else:
                self._handle(what, self._ep(what).poll(self.now))
        result = self.reader.result
        assert result is not None, f"no result after {self.now} s"
        return result

    def sent(self, name: str) -> list[bytes]:
        return [data for _, who, data in self.transcript if who == name]


def read(
    audit: bytes = SAMPLE,
    *,
    faults: SourceFaults | None = None,
    timers: UcsTimers | None = None,
    split: Splitter = whole,
    tamper: Tamper | None = None,
    latency: Latency | None = None,
    block_size: int = 245,
    legacy: bool = False,
    id_first: bool = False,
    response_code: str = "00",
) -> tuple[Finished | Failed, Line]:
    reader = UcsReader(timers=timers)
    src = UcsSource(
        audit,
        "RHV7654321",
        block_size,
        faults=faults,
        timers=timers,
        legacy=legacy,
        id_first=id_first,
        response_code=response_code,
    )
    byte_time = BYTE_TIME if timers is None else FAST_BYTE_TIME
    line = Line(reader, src, split=split, tamper=tamper, latency=latency, byte_time=byte_time)
    return line.run(), line


def failed(result: Finished | Failed) -> Failed:
    assert isinstance(result, Failed), f"expected a failure, got {result!r:.80}"
    return result


# --- framing and CRC ------------------------------------------------------------------


def test_handshake_crc_examples_from_the_spec_notes() -> None:
    assert crc16_arc(b"123456789") == 0xBB3D
    frame = handshake_frame("XYZ1234567RR00L06")
    assert frame == b"\x10\x01XYZ1234567RR00L06\x10\x03\x7b\x06"
    assert handshake_frame("00QRS7654321R00L06")[-2:] == b"\x53\x11"


def test_data_blocks_respect_the_245_byte_limit_and_end_with_etx() -> None:
    blocks = data_blocks(SAMPLE)
    for block in blocks[:-1]:
        assert block[-4:-2] == bytes((0x10, ETB))
        assert len(block) - 4 <= 245  # DLE STX and the CRC are outside the count
    assert blocks[-1][-4:-2] == bytes((0x10, ETX))
    assert data_blocks(b"") == [encode_frame(STX, b"", ETX)]
    with pytest.raises(ValueError, match="block size"):
        data_blocks(b"x", 2)


def test_a_dle_in_the_payload_is_doubled_and_counted_once() -> None:
    frame = encode_frame(STX, b"a\x10b", ETX)
    crc = crc16_arc(b"a\x10b\x03")
    assert frame == b"\x10\x02a\x10\x10b\x10\x03" + bytes((crc & 0xFF, crc >> 8))
    result, _ = read(b"x\x10y" * 200)
    assert isinstance(result, Finished)
    assert result.audit == b"x\x10y" * 200


@pytest.mark.parametrize(
    ("payload", "code", "comm_id"),
    [
        (b"00QRS7654321R00L06", "00", "QRS7654321"),  # §4.5.3 order
        (b"QRS765432100R00L06", "00", "QRS7654321"),  # §4.7 example order
        (b"04RHV0000001R01L01", "04", "RHV0000001"),
        (b"123456789004R00L06", "04", "1234567890"),  # numeric ID, code only fits second
    ],
)
def test_the_response_code_is_found_in_either_order(
    payload: bytes, code: str, comm_id: str
) -> None:
    ident = parse_response(payload)
    assert (ident.code, ident.comm_id) == (code, comm_id)


# --- whole reads -----------------------------------------------------------------------


@pytest.mark.parametrize("path", DEX.params())
def test_every_recorded_audit_is_read_intact(path: Path) -> None:
    audit = path.read_bytes()
    result, line = read(audit)
    assert isinstance(result, Finished)
    assert result.audit == audit
    assert line.progress[-1] == len(audit)
    assert line.progress == sorted(line.progress)


def test_the_reader_speaks_the_handshakes_byte_for_byte() -> None:
    result, line = read()
    assert isinstance(result, Finished)
    sent = line.sent("reader")
    assert sent[:3] == [b"\x05", handshake_frame("VMC0000001RR00L06"), bytes((EOT,))]
    assert sent[3:5] == [ACK0, ACK1]  # second handshake: ENQ answered, identification taken
    blocks = len(data_blocks(SAMPLE))
    assert sent[5:] == [ACK0] + [ACK1 if i % 2 else ACK0 for i in range(1, blocks + 1)]
    assert line.reader.vmc is not None
    assert line.reader.vmc.comm_id == "RHV7654321"
    assert line.source.dc_comm_id == "VMC0000001"
    assert line.source.operation == "R"


def test_byte_by_byte_delivery() -> None:
    result, _ = read(split=bytewise)
    assert isinstance(result, Finished)
    assert result.audit == SAMPLE


@settings(max_examples=60)
@given(
    audit=st.binary(max_size=1500),
    block_size=st.integers(3, 245),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=20),
)
def test_any_audit_in_any_chunks(audit: bytes, block_size: int, cuts: list[int]) -> None:
    def split(data: bytes) -> list[bytes]:
        pieces: list[bytes] = []
        i = 0
        for n in itertools.cycle(cuts):
            if i >= len(data):
                return pieces
            pieces.append(data[i : i + n])
            i += n
        return pieces

    result, _ = read(audit, split=split, block_size=block_size)
    assert isinstance(result, Finished)
    assert result.audit == audit


def test_the_reader_waits_10_ms_before_answering_and_100_ms_between_sessions() -> None:
    result, line = read(legacy=True)  # legacy: we open the second session ourselves
    assert isinstance(result, Finished)
    heard = [t for t, who, _ in line.arrivals if who == "reader"]
    for t, who, _ in line.transcript:
        if who == "reader":
            last = max((h for h in heard if h <= t), default=None)
            assert last is None or t - last >= 0.01 - 1e-9
    # the VMC's EOT ends the first handshake; our ENQ opens the second
    eot_at = next(t for t, who, d in line.arrivals if who == "reader" and d.endswith(b"\x04"))
    enq_at = next(t for t, who, d in line.transcript if who == "reader" and d == b"\x05" and t)
    assert enq_at - eot_at >= 0.1


# --- faults ----------------------------------------------------------------------------


def test_a_bad_block_is_nakked_and_the_retransmission_taken() -> None:
    result, line = read(faults=SourceFaults(bad_crc_blocks=frozenset({2, 5}), bad_crc_times=3))
    assert isinstance(result, Finished)
    assert result.audit == SAMPLE
    assert line.sent("reader").count(bytes((NAK,))) == 6


def test_a_block_bad_four_times_fails_naming_the_block() -> None:
    result, line = read(faults=SourceFaults(bad_crc_blocks=frozenset({7}), bad_crc_times=9))
    fail = failed(result)
    assert str(fail) == "data block 7: CRC mismatch (4 times)"
    error = fail.error()
    assert isinstance(error, DexError)
    assert isinstance(error, ProtocolError)
    assert not isinstance(error, TimeoutError)
    assert line.sent("reader")[-1] == bytes((EOT,))  # we close the session


def test_retries_are_a_constructor_parameter() -> None:
    reader = UcsReader(timers=FAST, retries=1)
    faults = SourceFaults(bad_crc_blocks=frozenset({1}), bad_crc_times=2)
    source = UcsSource(SAMPLE, faults=faults, timers=FAST)
    line = Line(reader, source, byte_time=FAST_BYTE_TIME)
    assert str(failed(line.run())) == "data block 1: CRC mismatch (2 times)"


def test_a_nakked_identification_is_sent_again() -> None:
    result, line = read(faults=SourceFaults(nak_identification=2))
    assert isinstance(result, Finished)
    ident = handshake_frame("VMC0000001RR00L06")
    assert line.sent("reader").count(ident) == 3


def test_an_identification_nakked_every_time_fails_the_first_handshake() -> None:
    fail = failed(read(faults=SourceFaults(nak_identification=10))[0])
    assert str(fail) == "first handshake: our identification NAKed (4 times)"


def test_wack_makes_the_reader_wait_and_ask_again() -> None:
    result, line = read(faults=SourceFaults(wack_identification=3))
    assert isinstance(result, Finished)
    reader_sent = line.sent("reader")
    assert reader_sent[:2] == [b"\x05", handshake_frame("VMC0000001RR00L06")]
    assert reader_sent[2:5] == [b"\x05"] * 3  # each WACK: pause, then ENQ for the answer
    assert line.sent("source").count(WACK) == 3


def test_endless_wack_gives_up() -> None:
    fail = failed(read(faults=SourceFaults(wack_identification=100), timers=FAST)[0])
    assert fail.step == "first handshake"
    assert fail.reason == "VMC still busy (WACK) after 11 tries"
    assert isinstance(fail.error(), DexTimeoutError)


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        (
            SourceFaults(silent_in=Stage.FIRST_HANDSHAKE),
            "first handshake: no DLE 0 after ENQ within 50 ms (4 times)",
        ),
        (
            SourceFaults(silent_in=Stage.SECOND_HANDSHAKE),
            "second handshake: no ENQ from the VMC within 300 ms",
        ),
        (
            SourceFaults(silent_in=Stage.DATA_TRANSFER),
            "data transfer: no ENQ from the VMC within 300 ms",
        ),
        (
            SourceFaults(silent_from_block=3),
            "data block 3: nothing from the VMC for 100 ms",
        ),
    ],
    ids=["first", "second", "data", "block"],
)
def test_silence_fails_with_a_timeout_naming_the_step(faults: SourceFaults, message: str) -> None:
    fail = failed(read(faults=faults, timers=FAST)[0])
    assert str(fail) == message
    error = fail.error()
    assert isinstance(error, DexTimeoutError)
    assert isinstance(error, TimeoutError)
    assert str(error) == message


def test_default_timers_are_the_spec_values() -> None:
    fail = failed(read(faults=SourceFaults(silent_in=Stage.FIRST_HANDSHAKE))[0])
    assert str(fail) == "first handshake: no DLE 0 after ENQ within 1 s (4 times)"
    fail = failed(read(faults=SourceFaults(silent_from_block=2))[0])
    assert str(fail) == "data block 2: nothing from the VMC for 2 s"


def test_eot_before_the_last_block_is_an_abort_naming_the_block() -> None:
    fail = failed(read(faults=SourceFaults(eot_after_block=5))[0])
    assert str(fail) == "data block 6: VMC ended the session (EOT) before the last block"
    assert not isinstance(fail.error(), TimeoutError)


def test_a_legacy_vmc_that_sends_enq_first_makes_us_slave() -> None:
    result, line = read(legacy=True)
    assert isinstance(result, Finished)
    assert result.audit == SAMPLE
    assert line.reader.legacy
    assert line.reader.vmc is not None
    assert line.reader.vmc.comm_id == "RHV7654321"
    # our answer to its identification comes in the second handshake, code first
    assert handshake_frame("00VMC0000001R00L06") in line.sent("reader")
    assert line.source.dc_comm_id == "VMC0000001"


def test_comm_id_before_the_response_code_is_accepted() -> None:
    result, line = read(id_first=True)
    assert isinstance(result, Finished)
    assert line.reader.vmc is not None
    assert (line.reader.vmc.code, line.reader.vmc.comm_id) == ("00", "RHV7654321")


@pytest.mark.parametrize(("code", "meaning"), [("04", "no data"), ("01", "unrecognised")])
def test_a_response_code_other_than_00_fails_the_second_handshake(code: str, meaning: str) -> None:
    result, line = read(response_code=code)
    fail = failed(result)
    assert fail.step == "second handshake"
    assert fail.reason.startswith(f"VMC answered '{code}' ({meaning}")
    assert line.sent("reader")[-1] == ACK1  # the frame itself was fine


# --- late answers ------------------------------------------------------------------------
# An answer that comes after the peer's timer A ran out crosses the ENQ that timer sent, so
# two answers are on their way for one frame. Neither may make a block count twice.


def hold(*late: tuple[str, bytes, int, float]) -> Latency:
    """Hold back the ``nth`` (from 1) send of ``data`` by ``who`` for ``seconds``."""
    seen = [0] * len(late)

    def latency(sender: str, sent: bytes) -> float:
        total = 0.0
        for i, (who, data, nth, seconds) in enumerate(late):
            if (who, data) == (sender, sent):
                seen[i] += 1
                total += seconds if seen[i] == nth else 0.0
        return total

    return latency


def test_a_late_ack_crossing_the_vmcs_enq_sends_the_next_block_once() -> None:
    # Our DLE 0 for block 2 (our third DLE 0) comes 1.2 s late; the VMC's timer A asks with
    # ENQ, and the answer to that, DLE 0 again, arrives right behind the late one. The first
    # moves the VMC on to block 3; the second is no answer to block 3 and must not resend it.
    result, line = read(latency=hold(("reader", ACK0, 3, 1.2)))
    assert isinstance(result, Finished)
    assert result.audit == SAMPLE
    sent = b"".join(line.sent("source"))
    for block in data_blocks(SAMPLE):
        assert sent.count(block) == 1


def test_a_block_repeated_because_of_a_crossed_answer_is_acked_and_dropped() -> None:
    blocks = data_blocks(SAMPLE)
    late = hold(
        ("source", blocks[7], 1, 0.9),  # block 8 late: the VMC's timer A sends ENQ ...
        ("source", b"\x05", 3, 0.55),  # ... which reaches us after we answered block 8,
        ("reader", ACK0, 7, 1.1),  # and our DLE 0 to it reaches the VMC after it sent block 9
    )
    result, line = read(latency=late)
    # The VMC asked again about block 9 and took that late DLE 0 as "send it again".
    assert b"".join(line.sent("source")).count(blocks[8]) == 2
    assert isinstance(result, Finished)
    assert result.audit == SAMPLE


_SERVED = [SAMPLE, b"0" * 243 * 3 + b"1"]  # the second: equal consecutive blocks


@settings(max_examples=200)
@given(
    audit=st.sampled_from(_SERVED),
    block_size=st.sampled_from([245, 100]),
    delays=st.lists(st.one_of(st.just(0.0), st.floats(0.0, 1.5), st.floats(1.5, 3.0)), max_size=80),
)
def test_late_answers_give_the_audit_or_a_named_failure(
    audit: bytes, block_size: int, delays: list[float]
) -> None:
    """Random lateness on both sides, on the virtual clock: never wrong bytes, never a hang."""
    sends = itertools.count()

    def latency(_who: str, _data: bytes) -> float:
        n = next(sends)
        return delays[n] if n < len(delays) else 0.0

    result, line = read(audit, block_size=block_size, latency=latency)
    if isinstance(result, Finished):
        assert result.audit == audit
    else:
        assert result.step in {s.value for s in Stage} or result.step.startswith("data block ")
        assert isinstance(result.error(), DexError)
    # The reader gives up by its own timers: the longest is the wait for a session to open.
    timers = UcsTimers()
    heard = max((t for t, who, _ in line.arrivals if who == "reader"), default=0.0)
    assert line.now - heard <= max(timers.session_wait, 4 * timers.response) + 1e-6


# --- the reader alone, scripted ------------------------------------------------------------


def script_to_data(reader: UcsReader, t: float = 0.0) -> float:
    """Drive a fresh reader through both handshakes; returns the virtual time reached."""
    assert reader.start(t)[0] == Send(b"\x05")
    reader.receive(ACK0, t + 0.02)
    reader.receive(ACK1, t + 0.05)
    reader.poll(t + 0.07)  # EOT goes out
    reader.receive(b"\x05", t + 0.2)
    reader.receive(handshake_frame("00RHV7654321R00L06"), t + 0.3)
    reader.poll(t + 0.32)
    reader.receive(b"\x04\x05", t + 0.5)
    assert reader.poll(t + 0.52)[0] == Send(ACK0)
    assert reader.stage is Stage.DATA_TRANSFER
    return t + 0.6


def sends(actions: list[Action]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, Send)]


def test_enq_repeats_our_last_answer_and_a_repeated_last_block_is_not_kept() -> None:
    reader = UcsReader()
    t = script_to_data(reader)
    block1 = encode_frame(STX, b"DXS*X\r\n", ETB)
    assert sends(reader.receive(block1, t) + reader.poll(t + 0.02)) == [ACK1]
    # our DLE 1 was lost: the VMC asks with ENQ and gets it again
    assert sends(reader.receive(b"\x05", t + 1.0) + reader.poll(t + 1.02)) == [ACK1]
    last = encode_frame(STX, b"DXE*1*1\r\n", ETX)
    actions = reader.receive(last, t + 1.2) + reader.poll(t + 1.22)
    assert sends(actions) == [ACK0]
    assert Progress(16) in actions
    # our DLE 0 was garbled: the VMC sends the last block again; nothing may follow it
    assert sends(reader.receive(last, t + 1.3) + reader.poll(t + 1.32)) == [ACK0]
    assert reader.receive(b"\x04", t + 1.4)[-1] == Finished(b"DXS*X\r\nDXE*1*1\r\n")


def test_a_block_repeated_after_an_enq_is_answered_again_and_dropped() -> None:
    reader = UcsReader()
    t = script_to_data(reader)
    block1 = encode_frame(STX, b"DXS*X\r\n", ETB)
    assert sends(reader.receive(block1, t) + reader.poll(t + 0.02)) == [ACK1]
    # the VMC's timer A ran out: our DLE 1 and the answer to its ENQ are both on their way
    assert sends(reader.receive(b"\x05", t + 1.0) + reader.poll(t + 1.02)) == [ACK1]
    block2 = encode_frame(STX, b"ST*001*0001\r\n", ETB)
    assert sends(reader.receive(block2, t + 1.1) + reader.poll(t + 1.12)) == [ACK0]
    # the second DLE 1 reached it while it waited for the answer to block 2: it sent it again
    actions = reader.receive(block2, t + 1.3) + reader.poll(t + 1.32)
    assert sends(actions) == [ACK0]
    assert not [a for a in actions if isinstance(a, Progress)]
    last = encode_frame(STX, b"DXE*1*1\r\n", ETX)
    assert sends(reader.receive(last, t + 1.4) + reader.poll(t + 1.42)) == [ACK1]
    done = reader.receive(b"\x04", t + 1.5)[-1]
    assert done == Finished(b"DXS*X\r\nST*001*0001\r\nDXE*1*1\r\n")


def test_equal_consecutive_blocks_are_all_kept() -> None:
    audit = b"0" * 243 * 3
    result, _ = read(audit)
    assert isinstance(result, Finished)
    assert result.audit == audit


def test_a_block_cut_short_is_nakked_after_timer_b() -> None:
    reader = UcsReader()
    t = script_to_data(reader)
    block = encode_frame(STX, b"DXS*X\r\n", ETX)
    actions = reader.receive(block[:5], t)
    assert actions[-1] == Wait(t + 0.1)  # timer B, not D, while inside a block
    assert sends(reader.poll(t + 0.1) + reader.poll(t + 0.12)) == [bytes((NAK,))]
    reader.receive(block, t + 0.5)
    assert sends(reader.poll(t + 0.52)) == [ACK1]


def test_a_handshake_frame_in_place_of_a_block_is_refused() -> None:
    reader = UcsReader(timers=FAST)
    t = script_to_data(reader)
    reader.receive(encode_frame(SOH, b"hello", ETX), t)
    assert sends(reader.poll(t + 0.01)) == [bytes((NAK,))]


def test_the_audit_is_kept_when_the_last_eot_never_comes() -> None:
    reader = UcsReader()
    t = script_to_data(reader)
    reader.receive(encode_frame(STX, b"DXE*1*1\r\n", ETX), t)
    reader.poll(t + 0.02)
    assert reader.poll(t + 2.1)[-1] == Finished(b"DXE*1*1\r\n")


def test_eot_without_any_block_names_the_data_transfer() -> None:
    reader = UcsReader()
    t = script_to_data(reader)
    assert str(reader.receive(b"\x04", t)[-1]) == (
        "data transfer: VMC ended the session (EOT) without sending data"
    )


def test_misuse_is_refused() -> None:
    reader = UcsReader()
    with pytest.raises(LocalProtocolError):
        reader.receive(b"\x05", 0.0)
    reader.start(0.0)
    with pytest.raises(LocalProtocolError):
        reader.start(0.0)
    with pytest.raises(ValueError, match="communication ID"):
        UcsReader("SHORT")
    with pytest.raises(ValueError, match="communication ID"):
        UcsSource(b"", "TEN*CHARS!")


# --- garbage ---------------------------------------------------------------------------


def fed_reader(chunks: list[bytes], gaps: list[float]) -> Iterator[Action]:
    """A reader fed whatever comes, at whatever pace, and polled after every piece."""
    reader = UcsReader(timers=FAST)
    yield from reader.start(0.0)
    now = 0.0
    for chunk, gap in zip(chunks, itertools.cycle(gaps), strict=False):
        now += gap
        yield from reader.receive(chunk, now)
        yield from reader.poll(now)


_CONTROL = st.sampled_from(
    [b"\x05", b"\x04", b"\x15", ACK0, ACK1, WACK, b"\x10<", b"\x10\x02", b"\x10\x01", b"\x10\x17"]
)


@settings(max_examples=200)
@given(
    chunks=st.lists(st.one_of(st.binary(max_size=30), _CONTROL), max_size=60),
    gaps=st.lists(st.floats(0.0, 0.2), min_size=1, max_size=5),
)
def test_garbage_never_crashes_the_reader(chunks: list[bytes], gaps: list[float]) -> None:
    actions = list(fed_reader(chunks, gaps))
    results = [a for a in actions if isinstance(a, Finished | Failed)]
    assert len(results) <= 1
    if results:
        assert actions[-1] is results[0]  # nothing after the end


@settings(max_examples=40)
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([0.0005, 0.002, 0.02]),
    both_ways=st.booleans(),
)
def test_a_noisy_line_gives_the_audit_or_a_named_failure(
    seed: int, rate: float, both_ways: bool
) -> None:
    rng = random.Random(seed)

    def spoil(who: str, data: bytes) -> bytes:
        if who == "reader" and not both_ways:
            return data
        return bytes(rng.randrange(256) if rng.random() < rate else b for b in data)

    audit = SAMPLE[:3000]
    result, _ = read(audit, tamper=spoil, timers=FAST, split=bytewise)
    if isinstance(result, Failed):
        assert result.step in {s.value for s in Stage} or result.step.startswith("data block ")
        assert isinstance(result.error(), DexError)
    elif not both_ways:
        # Block CRCs guard what the VMC sends. (Our ACKs have no CRC: one garbled into NAK
        # or the other ACK makes the VMC repeat a block we kept; the audit's G85 sees that.)
        assert result.audit == audit
