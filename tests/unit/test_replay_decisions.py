"""The in-process replay plays every application decision its trace shows on a POLL."""

from __future__ import annotations

from collections.abc import Callable

from protocols.mdb import commands as c
from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from protocols.mdb.words import Word, peripheral_words
from sim.replay import replay_in_process
from sim.trace import Direction, TraceLine, TraceRecorder, parse_trace
from tests.mdb_helpers import block

CONFIG = ReaderConfig(level=2, revalue_limit=5000)


class RecordedVmc:
    """A VMC's side of the bus, written down by vmc's trace recorder as it goes."""

    def __init__(self, device: CashlessDevice) -> None:
        self.device = device
        self.recorder = TraceRecorder()
        self.now = 0.0

    def send(self, *payload: int) -> int | None:
        """Send a block; ACK a data answer as a VMC does; the answer's response code."""
        self.now += 0.025
        words = block(CONFIG.address, *payload)
        answer = [w for b in self.device.receive(words, self.now) for w in peripheral_words(b)]
        self.recorder.add(Direction.VMC, words)
        if answer:
            self.recorder.add(Direction.PER, answer)
        if len(answer) < 2:
            return None
        self.device.receive([Word(c.ACK)], self.now)
        self.recorder.add(Direction.VMC, [Word(c.ACK)])
        return answer[0].value

    def poll(self) -> int | None:
        return self.send(c.Cmd.POLL)


def _record_every_decision() -> list[TraceLine]:
    """A session in which the application makes each decision it can make."""
    device = CashlessDevice(CONFIG)
    vmc = RecordedVmc(device)
    vmc.send(c.Cmd.RESET)
    assert vmc.poll() == c.Resp.JUST_RESET
    vmc.send(c.Cmd.SETUP, c.SetupSub.CONFIG_DATA, 2, 16, 2, 1)
    vmc.send(c.Cmd.SETUP, c.SetupSub.MAX_MIN_PRICES, 0x27, 0x10, 0, 5)
    vmc.send(c.Cmd.EXPANSION, c.ExpansionSub.REQUEST_ID, *b"SIMSSSSSSSSSSSSMMMMMMMMMMMM\x01\x00")
    vmc.send(c.Cmd.READER, c.ReaderSub.ENABLE)
    decisions: list[tuple[Callable[[], None], int]] = [
        (lambda: device.begin_session(2000), c.Resp.BEGIN_SESSION),
        (lambda: device.display("THANK YOU, ALICE", 2.3), c.Resp.DISPLAY_REQUEST),
        (lambda: device.report_malfunction(0x1A), c.Resp.MALFUNCTION),
    ]
    for decide, code in decisions:
        assert vmc.poll() is None
        decide()
        assert vmc.poll() == code
    vmc.send(c.Cmd.REVALUE, 0x00, 0x00, 0x64)
    assert vmc.poll() is None
    device.decide_revalue(True)
    assert vmc.poll() == c.Resp.REVALUE_APPROVED
    vmc.send(c.Cmd.REVALUE, 0x00, 0x00, 0x64)
    device.decide_revalue(False)
    assert vmc.poll() == c.Resp.REVALUE_DENIED
    vmc.send(c.Cmd.VEND, c.VendSub.REQUEST, 0x00, 0x96, 0x00, 0x07)
    assert vmc.poll() is None
    pending = device.pending_vend
    assert pending is not None
    device.approve_vend(pending.vend_id, 150)
    assert vmc.poll() == c.Resp.VEND_APPROVED
    vmc.send(c.Cmd.VEND, c.VendSub.SUCCESS, 0x00, 0x07)
    device.cancel_session()
    assert vmc.poll() == c.Resp.SESSION_CANCEL_REQUEST
    assert vmc.send(c.Cmd.VEND, c.VendSub.SESSION_COMPLETE) == c.Resp.END_SESSION
    # The recorder's own text, read back as any trace file is.
    return parse_trace(vmc.recorder.text())


def test_the_trace_holds_every_decision() -> None:
    answered = {line.words[0].value for line in _record_every_decision() if len(line.words) > 1}
    assert {
        c.Resp.BEGIN_SESSION,
        c.Resp.DISPLAY_REQUEST,
        c.Resp.MALFUNCTION,
        c.Resp.REVALUE_APPROVED,
        c.Resp.REVALUE_DENIED,
        c.Resp.VEND_APPROVED,
        c.Resp.SESSION_CANCEL_REQUEST,
    } <= answered


def test_replay_in_process_plays_every_decision() -> None:
    """Byte for byte: the display's text and duration, the revalue answers, the malfunction."""
    mismatches = replay_in_process(CashlessDevice(CONFIG), _record_every_decision())
    assert not mismatches, "\n".join(m.report() for m in mismatches)
