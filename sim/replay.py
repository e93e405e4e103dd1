"""Replaying recorded MDB traces against a cashless device.

In process, the replayer also plays the application: when the trace shows the reader offering
a session, approving, denying or cancelling on a POLL, it makes that decision through the
core's API just before the POLL, so the core's bytes can be compared exactly. Against a port
(a running daemon), decisions are the daemon's own, so answers are compared by kind only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.transport import MdbPort
from protocols.mdb import commands as c
from protocols.mdb.cashless import CashlessDevice
from protocols.mdb.words import Word, peripheral_words
from sim.trace import Direction, TraceLine, exchanges


@dataclass(frozen=True, slots=True)
class Mismatch:
    vmc: TraceLine
    expected: TraceLine | None
    got: tuple[Word, ...]

    def report(self) -> str:
        """The exchange in trace format, with what differed as comments."""
        got_line = TraceLine(Direction.PER, self.got, f"got {answer_kind(self.got)}")
        want = "nothing" if self.expected is None else answer_kind(self.expected.words)
        lines = [
            self.vmc.format() + f"   # trace line {self.vmc.lineno}",
            got_line.format() if self.got else "# PER: (no answer)",
            f"# expected {want}",
        ]
        return "\n".join(lines)


def answer_kind(words: Sequence[Word]) -> str:
    """ACK, NAK, or the response's name: what 'differs in kind' compares."""
    if not words:
        return "nothing"
    if len(words) == 1:
        return {c.ACK: "ACK", c.NAK: "NAK"}.get(words[0].value, f"WORD_{words[0].value:02X}")
    return c.response_name(words[0].value)


def _is_poll(line: TraceLine) -> bool:
    return len(line.words) == 2 and line.words[0].mode and line.words[0].value & 0x07 == c.Cmd.POLL


def play_application(device: CashlessDevice, vmc: TraceLine, expected: TraceLine | None) -> None:
    """Make the decision the trace shows the reader delivering on this POLL."""
    if expected is None or not _is_poll(vmc) or len(expected.words) < 2:
        return
    code = expected.words[0].value
    money = device.config.money
    data = expected.data
    width = 4 if device.wide else 2
    pending = device.pending_vend
    if code == c.Resp.BEGIN_SESSION:
        raw = int.from_bytes(data[1 : 1 + width], "big")
        unknown = (1 << (8 * width)) - 1
        device.begin_session(None if raw == unknown else money.to_minor(raw))
    elif code == c.Resp.VEND_APPROVED and pending is not None:
        amount = money.to_minor(int.from_bytes(data[1 : 1 + width], "big"))
        device.approve_vend(pending.vend_id, amount)
    elif code == c.Resp.VEND_DENIED and pending is not None:
        device.deny_vend(pending.vend_id)
    elif code == c.Resp.SESSION_CANCEL_REQUEST:
        device.cancel_session()


def replay_in_process(
    device: CashlessDevice, lines: Sequence[TraceLine], *, step: float = 0.025
) -> list[Mismatch]:
    """Feed every VMC line to ``device``; return each answer that differs from the trace."""
    mismatches: list[Mismatch] = []
    now = 0.0
    for vmc, expected in exchanges(lines):
        now += step
        play_application(device, vmc, expected)
        blocks = device.receive(vmc.words, now)
        got = tuple(w for block in blocks for w in peripheral_words(block))
        want = () if expected is None else expected.words
        if got != want:
            mismatches.append(Mismatch(vmc, expected, got))
    return mismatches


async def replay_over_port(
    port: MdbPort, lines: Sequence[TraceLine], *, wait_s: float = 0.05
) -> list[Mismatch]:
    """Play the trace's VMC lines to a reader on ``port``; compare answers by kind."""
    from sim.vmc_master import VmcMaster

    vmc = VmcMaster(port, answer_timeout=wait_s)
    mismatches: list[Mismatch] = []
    try:
        for line, expected in exchanges(lines):
            answer = await vmc.send_raw(list(line.words), line.comment)
            want = () if expected is None else expected.words
            if answer_kind(answer.words) != answer_kind(want):
                mismatches.append(Mismatch(line, expected, answer.words))
    finally:
        vmc.close()
    return mismatches
