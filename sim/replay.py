"""Replaying recorded MDB traces against a cashless device.

In process, the replayer also plays the application: when the trace shows the reader offering
a session, approving, denying, cancelling, asking the VMC to display text, answering a revalue
or reporting a malfunction on a POLL, it makes that decision through the core's API just before
the POLL, so the core's bytes can be compared exactly. Against a port (a running daemon),
decisions are the daemon's own, so answers are compared by kind only, and idle POLLs (answered
ACK) count as waiting: how many of them come before a decision is timing, not kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers.transport import MdbPort
from protocols.mdb import commands as c
from protocols.mdb.cashless import CashlessDevice
from protocols.mdb.events import State
from protocols.mdb.words import Word, peripheral_words
from sim.trace import Direction, TraceLine, exchanges

DECISION_WAIT_S = 10.0  # how long a replay polls for a decision the trace shows
DECISION_POLL_S = 0.01


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
    data = expected.data[:-1]  # without the CHK
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
    elif code == c.Resp.DISPLAY_REQUEST:
        device.display(data[2:].decode("latin-1"), data[1] / 10)
    elif code in (c.Resp.REVALUE_APPROVED, c.Resp.REVALUE_DENIED) and device.state is State.REVALUE:
        device.decide_revalue(code == c.Resp.REVALUE_APPROVED)
    elif code == c.Resp.MALFUNCTION:
        device.report_malfunction(data[1])


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


def _is_idle_poll(vmc: TraceLine, expected: TraceLine | None) -> bool:
    return _is_poll(vmc) and expected is not None and answer_kind(expected.words) == "ACK"


def _is_decision(words: Sequence[Word]) -> bool:
    """A data block answering a POLL: something the reader had queued for the VMC."""
    return len(words) >= 2


def _early_answer_at(
    pairs: Sequence[tuple[TraceLine, TraceLine | None]], idle: int, got: Sequence[Word]
) -> int | None:
    """The index of the POLL that the trace shows ``got`` answering, if only idle POLLs come
    between it and ``idle``: the reader now decided sooner, which is timing, not kind."""
    for j in range(idle + 1, len(pairs)):
        vmc, expected = pairs[j]
        if _is_idle_poll(vmc, expected):
            continue
        if _is_poll(vmc) and expected and answer_kind(expected.words) == answer_kind(got):
            return j
        return None
    return None


async def replay_over_port(
    port: MdbPort,
    lines: Sequence[TraceLine],
    *,
    wait_s: float = 0.05,
    reader_wait_s: float | None = None,
    decision_wait_s: float = DECISION_WAIT_S,
    discard_unread: Callable[[], None] | None = None,
) -> list[Mismatch]:
    """Play the trace's VMC lines to a reader on ``port``; compare answers by kind.

    With ``reader_wait_s``, the first VMC line is repeated until the reader answers it (up to
    that many seconds, VmcSimError after), as a VMC does with RESET while its reader starts.
    A POLL whose recorded answer is a decision is repeated while the reader answers ACK, up to
    ``decision_wait_s``; a decision that comes sooner than the trace shows skips the idle
    POLLs before the POLL that carried it.
    """
    from sim.vmc_master import Answer, VmcMaster

    pairs = list(exchanges(lines))
    vmc = VmcMaster(port, answer_timeout=wait_s, discard_unread=discard_unread)
    mismatches: list[Mismatch] = []
    loop = asyncio.get_running_loop()

    async def send(line: TraceLine, *, timed: bool = True) -> Answer:
        return await vmc.send_raw(list(line.words), line.comment, timed=timed)

    try:
        first: tuple[Word, ...] | None = None
        if reader_wait_s is not None and pairs:
            answers: list[Answer] = []

            async def probe() -> Answer:
                answers.append(await send(pairs[0][0], timed=False))
                return answers[-1]

            await vmc.wait_for_reader(reader_wait_s, probe=probe)
            first = answers[-1].words
        i = 0
        while i < len(pairs):
            line, expected = pairs[i]
            want = () if expected is None else expected.words
            got = first if i == 0 and first is not None else (await send(line)).words
            if _is_poll(line) and _is_decision(want):
                deadline = loop.time() + decision_wait_s
                while answer_kind(got) == "ACK" and loop.time() < deadline:
                    await asyncio.sleep(DECISION_POLL_S)
                    got = (await send(line)).words
            elif _is_idle_poll(line, expected) and _is_decision(got):
                j = _early_answer_at(pairs, i, got)
                if j is not None:
                    i = j
                    line, expected = pairs[j]
                    want = () if expected is None else expected.words
            if answer_kind(got) != answer_kind(want):
                mismatches.append(Mismatch(line, expected, got))
            i += 1
    finally:
        vmc.close()
    return mismatches
