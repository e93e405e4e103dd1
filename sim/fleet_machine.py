"""One simulated machine of the fleet: vmc's transaction engine and contract codec, no I/O.

Theory of operation. A :class:`FleetMachine` is what vmcd is to the cloud, minus the journal
and the bus process: commands are decoded by :func:`vmc.cloud.codec.decode_command` and handed
to the real :class:`vmc.transaction.Engine`; its replies and events are encoded by the same codec
and returned as :class:`Outgoing` messages for the caller to publish. The VMC is played in
process: a session the engine opens is at once a customer's selection, an approval at once a
successful vend. A repeated command id gets the first reply again, as the contract says.

What it leaves out, on purpose: the SQLite journal and its fsync (ten thousand journals on one
disk would measure the disk, not the broker), planogram and stock, audits. Commands outside
the remote-vend flow are refused ``unknown_op`` with a message that says so.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protocols.mdb import events as ev
from protocols.mdb.events import State
from vmc.cloud import codec
from vmc.cloud import messages as m
from vmc.cloud.topics import Topics
from vmc.services import bus_messages as bus
from vmc.transaction import Effects, Engine, EngineConfig, Money

EURO = Money(978, 2)
PRICE = 150
SELECTIONS = range(1, 41)
REMEMBERED_COMMANDS = 64
_ENGINE_OPS = (m.Lock, m.Unlock, m.Paid, m.Deny)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the broker, QoS 1."""

    topic: str
    payload: bytes
    retain: bool = False


class FleetMachine:
    def __init__(
        self,
        device_id: str,
        *,
        prefix: str = "vmc",
        rng: random.Random | None = None,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.topics = Topics(device_id, prefix)
        self.engine = Engine(EngineConfig(EURO), new_id)
        self._rng = rng or random.Random(device_id)
        self._seq = itertools.count(1)
        self._vend_ids = itertools.count(1)
        self._answered: OrderedDict[str, bytes] = OrderedDict()
        self.vends = 0

    # --- what the broker needs at connect ------------------------------------------------------

    def will(self) -> bytes:
        return codec.encode_map({"state": "lost"})

    def status(self, state: str, now: float) -> Outgoing:
        """The retained ``status``: ``online`` after connecting, ``offline`` on a clean stop."""
        return Outgoing(self.topics.status, codec.encode_map({"state": state, "at": now}), True)

    def state(self, now: float) -> Outgoing:
        """The retained ``state`` (docs/cloud-api.md §8), the fields a fleet machine has."""
        txn = self.engine.txn
        snapshot: dict[str, Any] = {
            "reader": self.engine.reader_state.name.lower(),
            "always_idle": self.engine.always_idle,
            "txn": None if txn is None else {"txn_id": txn.txn_id, "state": txn.state.value},
            "credit": None,
            "mdb_link": "up",
            "storage": "ok",
            "operating_state": "operating",
            "at": now,
        }
        return Outgoing(self.topics.state, codec.encode_map(snapshot), True)

    def start(self, now: float) -> None:
        """The VMC enabled the reader: ready for a lock."""
        self.engine.on_bus(ev.StateChanged(State.INACTIVE, State.ENABLED), now)

    # --- the cloud -----------------------------------------------------------------------------

    def on_command(self, payload: bytes, now: float) -> tuple[list[Outgoing], bool]:
        """The messages to publish in order, and whether the retained state changed."""
        try:
            cmd = codec.decode_command(payload)
        except codec.CommandError as exc:
            return [self._reply(exc.reply(), now)], False
        again = self._answered.get(cmd.id)
        if again is not None:
            return [Outgoing(self.topics.replies, again)], False
        if not isinstance(cmd, _ENGINE_OPS):
            refusal = m.Reply(cmd.id, False, m.ErrorCode.UNKNOWN_OP, "not on a fleet machine")
            return [self._reply(refusal, now)], False
        fx = self.engine.on_command(cmd, now)
        out: list[Outgoing] = []
        changed = self._apply(fx, now, out)
        return out, changed

    def tick(self, now: float) -> tuple[list[Outgoing], bool]:
        """Deadlines (a lock nobody used, an approval that never came)."""
        out: list[Outgoing] = []
        changed = self._apply(self.engine.tick(now), now, out)
        return out, changed

    def _reply(self, reply: m.Reply, now: float) -> Outgoing:
        payload = codec.encode_reply(reply, at=now)
        if reply.command_id is not None:
            self._answered[reply.command_id] = payload
            while len(self._answered) > REMEMBERED_COMMANDS:
                self._answered.popitem(last=False)
        return Outgoing(self.topics.replies, payload)

    def _apply(self, fx: Effects, now: float, out: list[Outgoing]) -> bool:
        """Publish ``fx``'s reply and events, then play the VMC's answer to its bus commands."""
        changed = bool(fx.transitions)
        if fx.reply is not None:
            out.append(self._reply(fx.reply, now))
        for event in fx.events:
            payload = codec.encode_event(
                event, event_id=uuid.uuid4().hex, seq=next(self._seq), at=now
            )
            out.append(Outgoing(self.topics.events, payload))
            if isinstance(event, m.TxnVend):
                self.vends += 1
        for command in fx.bus:
            for answer in self._vmc(command):
                changed |= self._apply(self.engine.on_bus(answer, now), now, out)
        return changed

    def _vmc(self, command: bus.BusCommand) -> list[object]:
        """The simulated VMC's bus events for one command of the reader."""
        match command:
            case bus.BeginSession():
                vend_id = next(self._vend_ids)
                item = self._rng.choice(SELECTIONS)
                return [
                    ev.StateChanged(State.ENABLED, State.SESSION_IDLE),
                    ev.StateChanged(State.SESSION_IDLE, State.VEND),
                    ev.VendRequested(vend_id, item, PRICE),
                ]
            case bus.ApproveVend(vend_id=vend_id, amount=amount):
                txn = self.engine.txn
                item = txn.selection if txn is not None and txn.selection is not None else 0
                return [
                    ev.VendApprovedSent(vend_id, amount),
                    ev.VendSucceeded(vend_id, item, amount),
                    ev.StateChanged(State.VEND, State.SESSION_IDLE),
                    ev.SessionEnded(),
                    ev.StateChanged(State.SESSION_IDLE, State.ENABLED),
                ]
            case bus.CancelSession():
                return [ev.SessionEnded(), ev.StateChanged(self.engine.reader_state, State.ENABLED)]
        return []
