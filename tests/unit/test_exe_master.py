"""The Executive master core: every reply and every fault, with made-up times."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from protocols.errors import LocalProtocolError
from protocols.exe.commands import NO_VEND_REQUEST, PNAK, VEND_SUCCESS, Command
from protocols.exe.events import ExeFault, Fault, LinkChanged, VmcStatus
from protocols.exe.master import ExeMaster
from protocols.exe.settings import ExeSettings
from protocols.mdb import events as ev
from protocols.mdb.commands import Feature
from protocols.mdb.events import DenyReason, State

FAST = ExeSettings(reply_timeout=0.05, poll_interval=0.1, silent_after=1.0)
Answer = Callable[[Command], int | None]


class Line:
    """The core on a simulated line: each command is answered by ``answer`` (None: silence)."""

    def __init__(self, settings: ExeSettings = FAST) -> None:
        self.now = 0.0
        self.core = ExeMaster(settings, self.now)
        self.sent: list[tuple[float, Command]] = []
        self.events: list[object] = []

    def step(self, answer: Answer) -> Command:
        """Run until one command is sent; answer it (at once, or let it time out)."""
        while True:
            self.now = max(self.now, self.core.wake_at())
            byte = self.core.poll(self.now)
            self.events += self.core.take_events()
            if byte is not None:
                break
        command = Command(byte)
        self.sent.append((self.now, command))
        reply = answer(command)
        if reply is not None:
            self.now += 0.002
            self.core.receive(bytes((reply,)), self.now)
            self.events += self.core.take_events()
        return command

    def run(self, answer: Answer, steps: int) -> None:
        for _ in range(steps):
            self.step(answer)

    def until(self, answer: Answer, kind: type, limit: int = 200) -> object:
        """Step until an event of ``kind`` arrives (it stays in ``events``); that event."""
        for _ in range(limit):
            found = [e for e in self.events if isinstance(e, kind)]
            if found:
                return found[0]
            self.step(answer)
        raise AssertionError(f"no {kind.__name__} in {limit} steps")

    def take(self, kind: type) -> list[object]:
        """The events of ``kind`` so far (decisions' included), removed from ``events``."""
        self.events += self.core.take_events()
        found = [e for e in self.events if isinstance(e, kind)]
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return found

    def state(self) -> State:
        return self.core.state

    def commands(self) -> list[Command]:
        return [c for _, c in self.sent]


def vmc(credit: int = NO_VEND_REQUEST, status: int = 0, vend: int | None = VEND_SUCCESS) -> Answer:
    def answer(command: Command) -> int | None:
        return {Command.STATUS: status, Command.CREDIT: credit, Command.VEND: vend}[command]

    return answer


IDLE = vmc()


def started(settings: ExeSettings = FAST) -> Line:
    """A line whose VMC answered and showed no selection: ENABLED, ready to serve."""
    line = Line(settings)
    line.run(IDLE, 4)
    assert line.state() is State.ENABLED
    line.events.clear()
    return line


def request(line: Line, byte: int) -> ev.VendRequested:
    line.until(vmc(credit=byte), ev.VendRequested)
    [found] = line.take(ev.VendRequested)
    assert isinstance(found, ev.VendRequested)
    return found


def test_idle_polling_alternates_status_and_credit_at_the_poll_interval() -> None:
    line = Line()
    line.run(IDLE, 6)
    assert line.commands() == [Command.STATUS, Command.CREDIT] * 3
    gaps = [b[0] - a[0] for a, b in zip(line.sent, line.sent[1:], strict=False)]
    assert all(gap >= FAST.poll_interval for gap in gaps)
    assert line.take(LinkChanged) == [LinkChanged(True)]
    assert line.take(ev.FeaturesEnabled) == [ev.FeaturesEnabled(int(Feature.ALWAYS_IDLE))]
    assert line.state() is State.ENABLED
    assert line.core.link_up is True


def test_a_selection_waiting_at_start_is_never_served() -> None:
    line = Line()
    line.run(vmc(credit=0x05), 10)
    assert line.take(ev.VendRequested) == []
    assert line.take(ExeFault) == [ExeFault(Fault.STALE_REQUEST, "CREDIT", "0x05")]
    line.run(IDLE, 2)  # the VMC gave it up
    assert request(line, 0x05).vend_id == 1  # selected again: served


def test_standard_executive_reply_is_a_price_in_steps() -> None:
    line = started(ExeSettings(price_unit=10))
    found = request(line, 25)
    assert (found.item, found.price) == (0, 250)
    line.run(vmc(credit=25), 6)  # the VMC keeps showing it: still one request
    assert line.take(ev.VendRequested) == []
    assert line.state() is State.VEND


def test_price_holding_prices_a_line_from_the_table() -> None:
    line = started(ExeSettings(price_holding=True))
    line.core.set_prices({3: 120})
    found = request(line, 3)
    assert (found.item, found.price) == (3, 120)


def test_price_holding_does_not_serve_an_unpriced_line() -> None:
    line = started(ExeSettings(price_holding=True))
    line.core.set_prices({3: 120})
    line.run(vmc(credit=4), 6)
    assert line.take(ev.VendRequested) == []
    assert line.take(ExeFault) == [ExeFault(Fault.UNPRICED, "CREDIT", "price line 4")]
    assert request(line, 3).item == 3  # another selection is served


def approve_and_vend(line: Line, amount: int, vend: int | None) -> list[object]:
    found = request(line, 7)
    line.core.approve_vend(found.vend_id, amount)
    line.events.clear()
    line.sent.clear()
    line.until(vmc(credit=7, vend=vend), ev.SessionEnded)
    return line.events


def test_an_approval_is_checked_by_credit_then_sent_as_vend() -> None:
    line = started()
    events = approve_and_vend(line, 7, VEND_SUCCESS)
    assert line.commands()[-2:] == [Command.CREDIT, Command.VEND]
    assert [type(e) for e in events] == [
        ev.VendApprovedSent,
        ev.VendSucceeded,
        ev.SessionEnded,
        ev.StateChanged,
    ]
    assert events[1] == ev.VendSucceeded(1, 0, 7)
    assert line.state() is State.ENABLED


def test_any_other_vend_reply_is_a_failure() -> None:
    line = started()
    events = approve_and_vend(line, 7, 0x01)
    assert ev.VendFailed(1, 0, 7) in events


def test_a_vend_without_result_is_unknown_and_the_link_stays_up() -> None:
    line = started(ExeSettings(reply_timeout=0.05, silent_after=1.0, vend_timeout=30.0))
    started_at = line.now
    events = approve_and_vend(line, 7, None)
    assert ev.VendOutcomeUnknown(1, 0, 7, "no_vend_result") in events
    assert line.now - started_at >= 30.0
    assert not any(isinstance(e, LinkChanged) for e in events)  # a long vend is not silence


def test_pnak_resends_the_same_command_a_bounded_number_of_times() -> None:
    line = started(ExeSettings(pnak_retries=2))
    line.sent.clear()
    line.run(vmc(status=PNAK, credit=PNAK), 7)
    assert line.commands() == [Command.STATUS] * 3 + [Command.CREDIT] * 3 + [Command.STATUS]
    faults = line.take(ExeFault)
    assert faults == [
        ExeFault(Fault.PNAK, "STATUS", "3 tries"),
        ExeFault(Fault.PNAK, "CREDIT", "3 tries"),
    ]
    assert line.core.link_up is True  # a PNAK is an answer


def test_pnak_then_a_good_reply_goes_on() -> None:
    line = started()
    replies = iter([PNAK, PNAK, 0x09])

    def answer(command: Command) -> int:
        return next(replies) if command is Command.CREDIT else 0

    line.sent.clear()
    while not line.take(ev.VendRequested):
        line.step(answer)
    assert line.commands().count(Command.CREDIT) == 3
    assert line.take(ExeFault) == []


def test_a_vend_pnaked_every_time_is_unknown_never_failed() -> None:
    line = started(ExeSettings(pnak_retries=3))
    events = approve_and_vend(line, 7, PNAK)
    assert line.commands().count(Command.VEND) == 4
    assert ev.VendOutcomeUnknown(1, 0, 7, "pnak") in events
    assert [e for e in events if isinstance(e, ev.VendApprovedSent)] == [ev.VendApprovedSent(1, 7)]
    assert not any(isinstance(e, ev.VendFailed) for e in events)


def test_deny_sends_nothing_and_the_selection_is_not_served_again() -> None:
    line = started()
    found = request(line, 7)
    line.core.deny_vend(found.vend_id)
    assert line.take(ev.VendDeniedSent) == [ev.VendDeniedSent(1, DenyReason.APPLICATION)]
    line.sent.clear()
    line.run(vmc(credit=7), 20)
    assert Command.VEND not in line.commands()
    assert line.take(ev.VendRequested) == []
    assert line.state() is State.ENABLED  # the implicit session ended with it
    line.run(IDLE, 2)  # the VMC gave it up; the customer selects it again
    assert request(line, 7).vend_id == 2


def test_the_approval_deadline_denies_and_a_late_approval_is_refused() -> None:
    line = started(ExeSettings(approval_timeout=2.0))
    found = request(line, 7)
    line.until(vmc(credit=7), ev.VendDeniedSent)
    with pytest.raises(LocalProtocolError):
        line.core.approve_vend(99, 7)  # never asked for
    line.core.approve_vend(found.vend_id, 7)  # over already: dropped, nothing sent
    line.sent.clear()
    line.run(vmc(credit=7), 10)
    assert Command.VEND not in line.commands()


def test_an_approval_at_the_deadline_is_refused_and_denied() -> None:
    line = started(ExeSettings(approval_timeout=2.0))
    found = request(line, 7)
    line.core.receive(b"", line.now + 2.0)  # time passes before the approval is handled
    with pytest.raises(LocalProtocolError):
        line.core.approve_vend(found.vend_id, 7)
    denied = line.take(ev.VendDeniedSent) + line.core.take_events()
    assert ev.VendDeniedSent(1, DenyReason.APPROVAL_TIMEOUT) in denied


def test_a_selection_given_up_before_the_vend_is_never_vended() -> None:
    line = started()
    found = request(line, 7)
    line.core.approve_vend(found.vend_id, 7)
    line.sent.clear()
    denied = line.until(IDLE, ev.VendDeniedSent)
    assert denied == ev.VendDeniedSent(found.vend_id, DenyReason.CANCELLED_BY_VMC)
    assert Command.VEND not in line.commands()
    assert line.state() is State.ENABLED


def test_another_selection_replaces_the_waiting_one() -> None:
    line = started()
    request(line, 7)
    line.until(vmc(credit=8), ev.VendDeniedSent)
    assert line.take(ev.VendRequested) == [ev.VendRequested(2, 0, 8)]


def test_a_silent_vmc_takes_the_link_down_and_ends_what_was_open() -> None:
    line = started()
    line.core.begin_session(500)
    line.events.clear()
    line.until(lambda _c: None, LinkChanged)
    assert line.core.link_up is False
    assert line.state() is State.INACTIVE
    assert ev.SessionEnded() in line.events
    line.sent.clear()
    line.run(lambda _c: None, 5)  # it keeps polling while the VMC is silent
    assert len(line.sent) == 5
    line.events.clear()
    line.run(vmc(credit=7), 4)  # back, with a selection made meanwhile: stale
    assert line.take(LinkChanged) == [LinkChanged(True)]
    assert line.take(ev.VendRequested) == []
    assert line.state() is State.ENABLED


def test_a_silent_vmc_denies_a_waiting_selection() -> None:
    line = started()
    request(line, 7)
    line.until(lambda _c: None, LinkChanged)
    assert line.take(ev.VendDeniedSent) == [ev.VendDeniedSent(1, DenyReason.SESSION_ENDED)]


def test_a_vmc_silent_from_the_start_is_reported_once() -> None:
    line = Line()
    line.run(lambda _c: None, 40)
    assert line.take(LinkChanged) == [LinkChanged(False)]
    assert line.state() is State.INACTIVE


def test_status_masks_read_inhibited_and_free_vend() -> None:
    line = started(ExeSettings(status_inhibit_mask=0x02, status_free_vend_mask=0x01))
    line.run(vmc(status=0x03), 2)
    assert line.take(VmcStatus) == [VmcStatus(0x03, inhibited=True, free_vend=True)]
    assert line.state() is State.DISABLED
    with pytest.raises(LocalProtocolError):
        line.core.begin_session(None)
    line.run(vmc(status=0x02, credit=7), 4)
    assert line.take(ev.VendRequested) == []
    assert line.take(ExeFault) == [ExeFault(Fault.NOT_ENABLED, "CREDIT", "0x07 in DISABLED")]
    line.run(IDLE, 2)
    assert line.state() is State.ENABLED


def test_status_bits_are_not_read_by_default() -> None:
    line = started()
    line.run(vmc(status=0xC3), 2)
    assert line.take(VmcStatus) == [VmcStatus(0xC3, inhibited=False, free_vend=False)]
    assert line.state() is State.ENABLED


def test_a_lock_session_waits_for_the_selection_and_ends_after_its_vend() -> None:
    line = started()
    line.core.begin_session(300)
    assert line.take(ev.SessionStarted) == [ev.SessionStarted(300)]
    assert line.state() is State.SESSION_IDLE
    line.events.clear()
    approve_and_vend(line, 7, VEND_SUCCESS)
    assert line.state() is State.ENABLED


def test_a_denied_selection_keeps_a_lock_session_open() -> None:
    line = started()
    line.core.begin_session(300)
    found = request(line, 7)
    line.core.deny_vend(found.vend_id)
    assert line.state() is State.SESSION_IDLE
    line.core.cancel_session(found.vend_id)
    assert ev.SessionEnded() in line.core.take_events()
    assert line.state() is State.ENABLED


def test_cancel_during_a_vend_waits_for_its_result() -> None:
    line = started()
    line.core.begin_session(None)
    found = request(line, 7)
    line.core.approve_vend(found.vend_id, 7)
    line.until(vmc(credit=7, vend=None), ev.VendApprovedSent)
    line.core.cancel_session()
    assert line.core.take_events() == []
    assert not line.core.settled


def test_a_session_with_a_timeout_ends_by_itself() -> None:
    line = started()
    line.core.begin_session(500, timeout=1.0)
    line.until(IDLE, ev.SessionTimedOut)
    assert line.state() is State.ENABLED


def test_void_pending_denies_an_undecided_vend() -> None:
    line = started()
    found = request(line, 7)
    line.core.void_pending()
    assert line.core.take_events()[0] == ev.VendDeniedSent(found.vend_id, DenyReason.SHUTDOWN)
    assert line.core.settled


def test_bytes_nobody_asked_for_are_counted_and_dropped() -> None:
    line = started()
    line.core.receive(b"\x07\x00", line.now)
    assert line.core.stray_bytes == 2
    assert line.core.take_events() == []


def test_decisions_for_unknown_vends_are_refused() -> None:
    core = ExeMaster(FAST)
    with pytest.raises(LocalProtocolError):
        core.approve_vend(1, 5)
    with pytest.raises(LocalProtocolError):
        core.deny_vend(3)


def test_an_approval_over_the_price_is_refused() -> None:
    line = started()
    found = request(line, 7)
    with pytest.raises(LocalProtocolError):
        line.core.approve_vend(found.vend_id, 8)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reply_timeout": 0}, "reply_timeout"),
        ({"silent_after": 0.05}, "silent_after"),
        ({"pnak_retries": 21}, "pnak_retries"),
        ({"status_inhibit_mask": 256}, "status_inhibit_mask"),
        ({"price_unit": 0}, "price_unit"),
        ({"vend_timeout": -1}, "vend_timeout"),
    ],
)
def test_settings_refuse_what_cannot_work(changes: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}: "):
        ExeSettings(**changes)  # type: ignore[arg-type]
