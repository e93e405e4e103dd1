"""Property tests of the Executive master: any replies, silences and decisions in any order
never crash it, PNAK resends stay bounded, and nothing vends that was not approved, twice or
without the VMC showing the selection just before."""

from __future__ import annotations

import contextlib
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError
from protocols.exe.commands import PNAK, Command
from protocols.exe.events import ExeFault, Fault
from protocols.exe.master import ExeMaster
from protocols.exe.settings import ExeSettings
from protocols.mdb import events as ev

SETTINGS = ExeSettings(
    reply_timeout=0.05,
    poll_interval=0.1,
    silent_after=1.0,
    approval_timeout=3.0,
    vend_timeout=5.0,
    pnak_retries=2,
    status_inhibit_mask=0x40,
    price_holding=True,
)
OUTCOMES = (ev.VendSucceeded, ev.VendFailed, ev.VendOutcomeUnknown, ev.VendDeniedSent)

# The VMC answers as a VMC would ("answer", its selection and status come from the actions
# "select", "give_up", "inhibit"), or with any byte at all ("noise", weighted towards PNAK and
# the bytes that mean something), or not at all; decisions and time come in between.
noise_st = st.one_of(st.sampled_from([0x00, 0x01, 0x05, 0x40, 0xFE, 0xFF]), st.integers(0, 255))
answer_st = st.tuples(st.just("answer"), st.integers(0, 1))
action_st = st.one_of(
    answer_st,
    answer_st,
    answer_st,
    answer_st,
    st.tuples(st.just("noise"), noise_st),
    st.tuples(st.just("silence"), st.just(0)),
    st.tuples(st.just("select"), st.sampled_from([5, 6, 250])),
    st.tuples(st.just("give_up"), st.just(0)),
    st.tuples(st.just("inhibit"), st.sampled_from([0x00, 0x40])),
    st.tuples(st.just("approve"), st.integers(0, 400)),
    st.tuples(st.just("deny"), st.just(0)),
    st.tuples(st.just("begin"), st.integers(0, 500)),
    st.tuples(st.just("cancel"), st.just(0)),
    st.tuples(st.just("wait"), st.sampled_from([1, 5, 30, 1000])),
)
Action = tuple[str, int]


def _customer(selection: int, before: int, approve: int, after: int, vend: int) -> list[Action]:
    """A customer's selection, approved a few exchanges later, then answered on: what random
    actions alone reach too seldom."""
    answers: list[Action] = [("answer", vend)] * after
    return [("select", selection), *[("answer", 0)] * before, ("approve", approve), *answers]


customer_st = st.builds(
    _customer,
    st.sampled_from([5, 6]),
    st.integers(1, 4),
    st.integers(0, 400),
    st.integers(0, 4),
    st.integers(0, 1),
)
pnak_burst_st = st.integers(1, 8).map(lambda n: [("noise", PNAK)] * n)
conversation_st = st.lists(
    st.one_of(st.lists(action_st, min_size=1, max_size=4), customer_st, pnak_burst_st),
    min_size=3,
    max_size=60,
).map(lambda chunks: [action for chunk in chunks for action in chunk])


@given(conversation_st)
def test_any_conversation_is_safe(actions: list[Action]) -> None:
    core = ExeMaster(SETTINGS, 0.0)
    core.set_prices({n: 10 * n for n in range(1, 200)})
    now = 0.0
    requested: dict[int, ev.VendRequested] = {}
    approved: set[int] = set()
    outcomes: Counter[int] = Counter()
    approvals_sent: Counter[int] = Counter()
    vends_sent: Counter[int] = Counter()
    pnaked_in_a_row = 0
    previous: tuple[Command, int | None] | None = None  # the last command and its reply
    current: int | None = None  # the vend id the VMC's selection is now

    def take() -> None:
        nonlocal pnaked_in_a_row, current
        for event in core.take_events():
            if isinstance(event, ev.VendRequested):
                requested[event.vend_id] = event
                current = event.vend_id
            elif isinstance(event, ev.VendApprovedSent):
                approvals_sent[event.vend_id] += 1
                assert event.vend_id in approved
                assert event.amount <= requested[event.vend_id].price
            elif isinstance(event, OUTCOMES):
                outcomes[event.vend_id] += 1
                if event.vend_id == current:
                    current = None
            elif isinstance(event, ExeFault) and event.fault is Fault.PNAK:
                pnaked_in_a_row = 0

    selection: int | None = None
    status = 0
    for kind, value in actions:
        if kind in ("answer", "noise", "silence"):
            while (byte := core.poll(now := max(now, core.wake_at()))) is None:
                take()
            take()
            command = Command(byte)
            if command is Command.VEND:
                assert current is not None
                assert current in approved
                vends_sent[current] += 1
                vend = requested[current]
                # sent right after a CREDIT that showed the selection, or resent after a PNAK
                assert previous in ((Command.CREDIT, vend.item), (Command.VEND, PNAK))
            reply: int | None = value
            if kind == "silence":
                reply = None
            elif kind == "answer":
                reply = {
                    Command.STATUS: status,
                    Command.CREDIT: 0xFE if selection is None else selection,
                    Command.VEND: value,  # 0: vended, 1: failed
                }[command]
                if command is Command.VEND:
                    selection = None
            previous = (command, reply)
            if reply is not None:
                now += 0.001
                core.receive(bytes((reply,)), now)
                pnaked_in_a_row = pnaked_in_a_row + 1 if reply == PNAK else 0
            else:
                pnaked_in_a_row = 0
            take()
            assert pnaked_in_a_row <= SETTINGS.pnak_retries + 1
            continue
        with contextlib.suppress(LocalProtocolError):
            match kind:
                case "select":
                    selection = value
                case "give_up":
                    selection = None
                case "inhibit":
                    status = value
                case "approve" if current is not None:
                    price = requested[current].price
                    core.approve_vend(current, price if value % 2 else value)
                    approved.add(current)
                case "deny" if current is not None:
                    core.deny_vend(current)
                case "begin":
                    core.begin_session(value)
                case "cancel":
                    core.cancel_session()
                case "wait":
                    now += value / 100
                    core.receive(b"", now)
        take()

    assert all(count <= 1 for count in outcomes.values()), outcomes
    assert all(count <= 1 for count in approvals_sent.values()), approvals_sent
    assert all(count <= SETTINGS.pnak_retries + 1 for count in vends_sent.values()), vends_sent


@given(st.binary(max_size=300))
def test_reply_noise_never_crashes_the_core(noise: bytes) -> None:
    core = ExeMaster(SETTINGS, 0.0)
    now = 0.0
    for byte in noise:
        while core.poll(now := max(now, core.wake_at())) is None:
            pass
        now += 0.001
        core.receive(bytes((byte,)), now)
        core.take_events()
    assert core.replies == len(noise)
