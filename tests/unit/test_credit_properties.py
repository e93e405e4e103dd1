"""Money properties of vouchers and credits, with the real reader core between the engine and a
VMC that does anything a VMC may do, in any order, with crashes of the daemon at any step.

Whatever happens: every VEND APPROVED the VMC hears is for the price it asked and a selection
in the voucher's set; what it was approved, less the vends it reported failed, never exceeds
the value (one vend for a voucher); the voucher or credit has exactly one outcome; its ``used``
is never less than what the VMC got, and is exactly what its ``txn.vend`` events say.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import MoneyError, VmcError
from protocols.mdb import commands as c
from protocols.mdb import events as ev
from protocols.mdb.commands import Feature, PaymentType
from tests.mdb_helpers import Bus, enabled
from vmc.cloud import messages as m
from vmc.credit import CreditSession, CreditState
from vmc.services import bus_messages as bus
from vmc.transaction import Effects, Engine, EngineConfig, Money, Txn, TxnState

EXPIRES = 1e12
ITEMS = (1, 2, 3)
PRICES = (0, 50, 120, 150, 200, 300)


@dataclass
class Vmc:
    """What the VMC saw: each approval (item, price asked, amount approved) and each failure."""

    in_vend: tuple[int, int] | None = None  # the open request (item, price)
    holding: int | None = None  # index of the approval it has not reported on yet
    approvals: list[tuple[int, int, int]] = field(default_factory=list)
    failed: set[int] = field(default_factory=set)


class Machine:
    """The engine, a journal of its committed effects, the reader core and the VMC."""

    def __init__(self, always_idle: bool) -> None:
        self.always_idle = always_idle
        self.ids = itertools.count(1)
        self.txns: dict[str, Txn] = {}
        self.credits: dict[str, CreditSession] = {}
        self.events: list[m.Event] = []
        self.vmc = Vmc()
        self.crash_after_commit = False
        self.crashes = 0
        self.now = 0.0
        self._start(recover=False)

    def _start(self, *, recover: bool) -> None:
        features = int(Feature.ALWAYS_IDLE) if self.always_idle else 0
        self.bus: Bus = enabled(3, features=features)
        self.bus.now = self.now
        self.engine = Engine(
            EngineConfig(Money(978, 2), approval_timeout=4.0, lock_timeout=30.0),
            lambda: f"t{next(self.ids)}",
        )
        self.engine.on_bus(ev.StateChanged(ev.State.DISABLED, ev.State.ENABLED), self.now)
        self.engine.on_bus(ev.FeaturesEnabled(features), self.now)
        if recover:
            open_txns = [t for t in self.txns.values() if t.state not in FINAL_STATES]
            open_credits = [c for c in self.credits.values() if c.state is CreditState.OPEN]
            assert len(open_txns) <= 1
            assert len(open_credits) <= 1
            fx = self.engine.recover(
                open_txns[0] if open_txns else None, self.now, next(iter(open_credits), None)
            )
            self.apply(fx)

    def crash(self) -> None:
        """kill -9: the bus process dies with the daemon; the VMC starts its reader again."""
        self.crashes += 1
        self.vmc.in_vend = None
        self.vmc.holding = None  # an approval it held: the product may have dropped
        self._start(recover=True)

    def apply(self, fx: Effects) -> None:
        """Commit, then act on the bus (or die in between)."""
        for txn in fx.transitions:
            self.txns[txn.txn_id] = txn
        for credit in fx.credits:
            self.credits[credit.credit_id] = credit
        self.events += fx.events
        if self.crash_after_commit and (fx.transitions or fx.credits):
            self.crash_after_commit = False
            self.crash()
            return
        life = self.crashes
        for command in fx.bus:
            if self.crashes != life:
                return  # the process that was to send them is gone
            self.apply(self._to_reader(command))
        self.pump()

    def _to_reader(self, command: bus.BusCommand) -> Effects:
        device = self.bus.device
        try:
            match command:
                case bus.BeginSession(funds=funds, payment_type=kind, timeout=timeout):
                    device.begin_session(funds, PaymentType(kind), timeout)
                case bus.ApproveVend(vend_id=vend_id, amount=amount):
                    device.approve_vend(vend_id, amount)
                case bus.DenyVend(vend_id=vend_id):
                    device.deny_vend(vend_id)
                case bus.CancelSession(vend_id=vend_id):
                    device.cancel_session(vend_id)
        except MoneyError as exc:
            refused = bus.CommandRefused(type(command).__name__, str(exc), bus.Refusal.MONEY)
            return self.engine.on_bus(refused, self.now)
        except VmcError as exc:
            refused = bus.CommandRefused(type(command).__name__, str(exc), bus.Refusal.STATE)
            return self.engine.on_bus(refused, self.now)
        return Effects()

    def pump(self) -> None:
        life = self.crashes
        for event in self.bus.device.take_events():
            if self.crashes != life:
                return  # the old reader's news dies with its process
            self.apply(self.engine.on_bus(event, self.now))

    # --- the VMC --------------------------------------------------------------------------

    def _send(self, *payload: int, advance: float = 0.01) -> bytes:
        answer = self.bus.send(*payload, advance=advance)
        self.now = self.bus.now
        if len(answer) > 1:
            self.bus.ack()
        self.pump()
        return answer

    def poll(self, advance: float) -> None:
        answer = self._send(c.Cmd.POLL, advance=advance)
        code = answer[0] if len(answer) > 1 else None
        vmc = self.vmc
        if code == c.Resp.VEND_APPROVED and vmc.in_vend is not None:
            item, price = vmc.in_vend
            vmc.approvals.append((item, price, int.from_bytes(answer[1:3], "big")))
            vmc.holding = len(vmc.approvals) - 1
        elif code == c.Resp.VEND_DENIED:
            vmc.in_vend = None
        elif code == c.Resp.SESSION_CANCEL_REQUEST:
            self.complete()

    def request(self, item: int, price: int) -> None:
        if (
            self.vmc.in_vend is None
            and self._send(c.Cmd.VEND, 0, *price.to_bytes(2, "big"), 0, item) == b"\x00"
        ):
            self.vmc.in_vend = (item, price)

    def result(self, success: bool) -> None:
        vmc = self.vmc
        if vmc.holding is None or vmc.in_vend is None:
            return
        if not success:
            vmc.failed.add(vmc.holding)
        vmc.holding = None
        item = vmc.in_vend[0]
        vmc.in_vend = None
        if success:
            self._send(c.Cmd.VEND, 2, 0, item)
        else:
            self._send(c.Cmd.VEND, 3)

    def cancel(self) -> None:
        if self.vmc.in_vend is not None:
            self._send(c.Cmd.VEND, 1)
            self.vmc.in_vend = None
            self.vmc.holding = None

    def complete(self) -> None:
        self._send(c.Cmd.VEND, 4)
        self.vmc.in_vend = None
        self.vmc.holding = None

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.bus.now = self.now
        self.bus.device.tick(self.now)
        self.pump()
        self.apply(self.engine.tick(self.now))


FINAL_STATES = frozenset(
    {TxnState.VENDED, TxnState.FAILED, TxnState.UNKNOWN}
    | {TxnState.DENIED, TxnState.EXPIRED, TxnState.CANCELLED}
)

_ARGS: dict[str, st.SearchStrategy[tuple[object, ...]]] = {
    "request": st.tuples(st.sampled_from(ITEMS), st.sampled_from(PRICES)),
    "result": st.tuples(st.booleans()),
    "poll": st.tuples(st.sampled_from([0.01, 0.5, 3.0])),
    "tick": st.tuples(st.sampled_from([0.1, 1.0, 5.0])),
    "crash": st.tuples(st.booleans()),
}
# Selections and their results come often; the end of a session or a crash now and then.
_KINDS = ["request"] * 8 + ["result"] * 6 + ["poll", "tick"] * 2 + ["cancel", "lock"] * 2
actions = st.sampled_from([*_KINDS, "complete", "crash"]).flatmap(
    lambda kind: _ARGS.get(kind, st.just(())).map(lambda args: (kind, *args))
)


@settings(max_examples=500)
@given(
    kind=st.sampled_from(["voucher", "credit"]),
    value=st.sampled_from([120, 150, 350, 500]),
    selections=st.sampled_from([None, (1,), (1, 3)]),
    always_idle=st.booleans(),
    steps=st.lists(actions, min_size=3, max_size=40),
)
def test_never_more_than_the_value_and_one_outcome(
    kind: str,
    value: int,
    selections: tuple[int, ...] | None,
    always_idle: bool,
    steps: list[tuple[object, ...]],
) -> None:
    machine = Machine(always_idle)
    if kind == "voucher":
        cmd: m.Command = m.Voucher("c1", EXPIRES, "x", selections, value, timeout_s=20.0)
    else:
        cmd = m.Credit("c1", EXPIRES, "x", value, timeout_s=20.0)
        selections = None
    first = machine.engine.on_command(cmd, machine.now)
    assert first.reply is not None
    assert first.reply.ok
    machine.apply(first)
    for step in steps:
        match step:
            case ("poll", float(advance)):
                machine.poll(advance)
            case ("request", int(item), int(price)):
                machine.request(item, price)
            case ("result", bool(success)):
                machine.result(success)
            case ("cancel",):
                machine.cancel()
            case ("complete",):
                machine.complete()
            case ("tick", float(seconds)):
                machine.tick(seconds)
            case ("lock",):  # refused while the voucher is open; never paid afterwards
                machine.apply(machine.engine.on_command(m.Lock("c2", EXPIRES), machine.now))
            case ("crash", True):
                machine.crash()
            case ("crash", False):
                machine.crash_after_commit = True
        machine.poll(0.01)  # a VMC polls all the time
        machine.tick(0.1)
    machine.crash_after_commit = False
    machine.complete()
    machine.tick(60.0)

    vmc = machine.vmc
    kept = [a for i, a in enumerate(vmc.approvals) if i not in vmc.failed]
    for item, price, amount in vmc.approvals:
        assert amount == price  # the VMC's price, never more
        assert selections is None or item in selections
    got = sum(amount for _, _, amount in kept)
    assert got <= value
    if kind == "voucher":
        assert len(kept) <= 1
    outcomes = [e for e in machine.events if isinstance(e, m.VoucherStatus | m.CreditStatus)]
    assert len(outcomes) == 1, outcomes
    (outcome,) = outcomes
    used = outcome.charged if isinstance(outcome, m.VoucherStatus) else outcome.used
    assert got <= used <= value
    if not machine.crashes:
        assert used == got
    paid = [
        e for e in machine.events if isinstance(e, m.TxnVend) and "x" in (e.voucher_id, e.credit_id)
    ]
    assert used == sum(e.amount for e in paid if e.result != "failure")
    if isinstance(outcome, m.CreditStatus):
        assert outcome.rest == value - used
        assert outcome.txn_ids == tuple(e.txn_id for e in paid if e.result != "failure")
    assert machine.credits["x"].state is not CreditState.OPEN
