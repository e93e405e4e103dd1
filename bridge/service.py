"""The bridge's decisions: the seed's calls as contract commands, events as callbacks.

The HTTP layer (:mod:`bridge.api`) validates and authenticates; this module maps the txnRef to
vmc's transaction and command ids (kept in the store, so a retried call is answered from the
same command id), and turns each device event, once, into the third parties' callbacks.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from bridge import mapping, planograms
from bridge.config import BridgeConfig, ThirdParty
from bridge.courier import Courier
from bridge.fleet import Fleet, MachineView
from bridge.link import Link, new_command_id
from bridge.mapping import Callback, Event
from bridge.store import Delivery, EventBatch, NewDelivery, SeenEvent, SqlStore, Txn, TxnState
from vmc.cloud import messages as m

log = structlog.get_logger("bridge")

_IDS = uuid.UUID("5f0c8f8e-7d1b-4c56-9d55-0b6f2f6c1a10")
"""Namespace of the command ids derived from a txnRef (unlock, deny): a retry reuses them."""

OUTCOMES = frozenset({"txn.vend", "txn.status"})
LOCK_MEDIUM = m.PaymentMedium.APP


@dataclass(frozen=True, slots=True)
class Answer:
    """The seed's StandardResponse (and the lock's ``timeout``)."""

    success: bool
    message: str = ""
    timeout: int | None = None


def derived_id(txn_ref: str, op: m.Op) -> str:
    return uuid.uuid5(_IDS, f"{op.value}/{txn_ref}").hex


def _refused(reply: dict[str, Any]) -> str:
    return f"{reply.get('code')}: {reply.get('message')}"


NO_REPLY = "the vending machine did not answer"


class Bridge:
    def __init__(self, config: BridgeConfig, store: SqlStore) -> None:
        self.config = config
        self.store = store
        self.fleet = Fleet()
        self.link = Link(config, self.on_events, self.fleet.update)
        self.courier: Courier | None = None
        self.planograms = planograms.Planograms(store, self.link, self.fleet)

    # --- inbound: the third party's calls ------------------------------------------------------

    def machine(self, party: ThirdParty, machine: str) -> MachineView | None:
        """The machine if the third party may use it and the bridge has heard of it."""
        return self.fleet.view(machine) if party.owns(machine) else None

    async def lock(
        self, party: ThirdParty, machine: str, txn_ref: str, balance: int | None
    ) -> Answer:
        view = self.machine(party, machine)
        if view is None:
            return Answer(False, f"unknown vending machine {machine!r}")
        if not view.online:
            return Answer(False, "the vending machine is offline")
        txn = await self.store.begin_lock(
            txn_ref, party.name, machine, new_command_id(), time.time()
        )
        if txn.third_party != party.name or txn.machine != machine:
            return Answer(False, "txnRef is already used for another transaction")
        if txn.state not in (TxnState.LOCKING, TxnState.LOCKED):
            return Answer(False, f"transaction {txn_ref} is already {txn.state.value}")
        fields = {
            "ref": txn_ref,
            "limit": mapping.lock_limit(balance),
            "timeout_s": self.config.lock_timeout,
            "medium": LOCK_MEDIUM.value,
        }
        reply = await self.link.command(machine, m.Op.LOCK, fields, command_id=txn.lock_cmd)
        if reply is None:
            return Answer(False, NO_REPLY)
        if not reply.get("ok"):
            await self.store.update_txn(txn_ref, state=TxnState.REFUSED, only_from=TxnState.LOCKING)
            return Answer(False, _refused(reply))
        result = reply.get("result") or {}
        await self.store.lock_taken(txn_ref, str(result.get("txn_id")))
        timeout = round(float(result.get("expires", 0)) - float(reply.get("at", 0)))
        log.info("locked", third_party=party.name, machine=machine, txn_ref=txn_ref)
        return Answer(True, "", timeout if timeout > 0 else round(self.config.lock_timeout))

    async def paid(
        self, party: ThirdParty, txn_ref: str, price: int, discount: int, surcharge: int
    ) -> Answer:
        txn = await self._own_txn(party, txn_ref)
        if txn is None:
            return Answer(False, f"unknown txnRef {txn_ref!r}")
        if txn.state in (TxnState.LOCKING, TxnState.LOCKED):
            return Answer(False, "no selection yet: wait for /txn/request")
        if txn.state is not TxnState.REQUESTED and txn.paid_cmd is None:
            return Answer(False, f"transaction {txn_ref} has ended")
        amount = price - discount
        if amount < 0:
            return Answer(False, "discount is more than the price")
        if amount > mapping.MAX_LIMIT:
            return Answer(False, f"price - discount is more than {mapping.MAX_LIMIT}")
        paid_cmd = txn.paid_cmd or new_command_id()
        await self.store.update_txn(
            txn_ref, paid_cmd=paid_cmd, amount=amount, discount=discount, surcharge=surcharge
        )
        reply = await self.link.command(
            txn.machine,
            m.Op.PAID,
            {"txn_id": txn.txn_id, "amount": amount},
            command_id=paid_cmd,
            expires=txn.deadline,
        )
        if reply is None:
            return Answer(False, NO_REPLY)  # a retry sends the same command: it acts once
        if not reply.get("ok"):
            # The machine keeps its answer under that id: a corrected call needs a new one.
            await self.store.update_txn(txn_ref, paid_cmd=None)
            return Answer(False, _refused(reply))
        # Not durable: a power cut that undoes it leaves the row ``requested`` with its
        # paid_cmd, which answers the same (a retried /api/paid resends that command, and the
        # machine answers it with its first reply; /api/unlock says "already paid").
        await self.store.update_txn(
            txn_ref, state=TxnState.PAID, only_from=TxnState.REQUESTED, durable=False
        )
        log.info("paid", third_party=party.name, machine=txn.machine, txn_ref=txn_ref)
        return Answer(True)

    async def unlock(self, party: ThirdParty, machine: str | None, txn_ref: str) -> Answer:
        txn = await self._own_txn(party, txn_ref)
        if txn is None or (machine and txn.machine != machine):
            return Answer(False, f"unknown txnRef {txn_ref!r}")
        if txn.paid_cmd is not None:
            return Answer(True, "already paid: unlock has no effect")
        if txn.state is TxnState.ENDED:
            return Answer(True, "the transaction has already ended")
        if txn.txn_id is None:
            return Answer(False, "the lock was not taken")
        reply = await self.link.command(
            txn.machine,
            m.Op.UNLOCK,
            {"txn_id": txn.txn_id},
            command_id=derived_id(txn_ref, m.Op.UNLOCK),
        )
        if reply is None:
            return Answer(False, NO_REPLY)
        code = reply.get("code")
        if reply.get("ok") or code == m.ErrorCode.TOO_LATE:
            return Answer(True, "" if reply.get("ok") else "the transaction has already ended")
        if code == m.ErrorCode.WRONG_STATE:
            return Answer(True, "the vend is under way: unlock has no effect")
        return Answer(False, _refused(reply))

    async def _own_txn(self, party: ThirdParty, txn_ref: str) -> Txn | None:
        txn = await self.store.txn(txn_ref)
        return txn if txn is not None and txn.third_party == party.name else None

    # --- outbound: the device's events ---------------------------------------------------------

    async def on_events(self, batch: Sequence[tuple[str, bytes]]) -> None:
        """Events as they came (machine, payload), recorded in one durable commit: the link
        acknowledges them once this returns, and sends none again unless it raises. Each is
        recorded once, by its id, in the order given (a machine's events keep theirs)."""
        events: list[tuple[str, Event]] = []
        for machine, payload in batch:
            event = mapping.parse_event(payload)
            if event is None:
                log.warning("event_unreadable", machine=machine)
            else:
                events.append((machine, event))
        if not events:
            return
        queued = False
        async with self.store.events() as written:
            for machine, event in events:
                queued |= await self._record(written, machine, event)
        if queued and self.courier is not None:
            self.courier.wake()

    async def _record(self, written: EventBatch, machine: str, event: Event) -> bool:
        """One event of a batch with the callbacks it gives; whether it queued any."""
        seen = SeenEvent(event.id, machine, event.seq, event.type, event.at)
        if not await written.first_time(seen):
            log.info("event_duplicate", machine=machine, event_id=event.id)
            return False
        owners = self.config.owners(machine)
        txn, txn_fields, txn_calls = await self._txn_part(written, machine, event, owners)
        deliveries = list(txn_calls)
        coil = mapping.coil_change(event)
        coils = mapping.changed(await written.coils(machine), coil)
        feeds = (
            (Callback.TRANSACTIONS, mapping.transaction_feed(machine, event, coils)),
            (Callback.REFILLS, mapping.refill_feed(machine, event, coils)),
            (Callback.ALERTS, mapping.alert_feed(machine, event)),
        )
        for path, body in feeds:
            if body is not None:
                deliveries += [NewDelivery(p.name, path, body) for p in owners]
        await written.record(seen, deliveries, txn=txn, txn_fields=txn_fields, coil=coil)
        return bool(deliveries)

    async def _txn_part(
        self, written: EventBatch, machine: str, event: Event, owners: tuple[ThirdParty, ...]
    ) -> tuple[Txn | None, dict[str, Any], list[NewDelivery]]:
        """The transaction an event is about, its change, and its /txn/* callback."""
        txn_id = event.text("txn_id")
        if txn_id is None or not event.type.startswith("txn."):
            return None, {}, []
        txn = await written.txn_by_id(machine, txn_id)
        fields: dict[str, Any] = {}
        ref = event.text("ref")
        if txn is None and ref is not None:
            # The lock's reply and this event may cross: the lock's ref is the txnRef.
            txn = await written.txn(ref)
            if txn is not None and (txn.machine != machine or txn.txn_id not in (None, txn_id)):
                txn = None
            fields["txn_id"] = txn_id
        if txn is None and event.type == "txn.request" and owners:
            # Select-first (no lock): the bridge names it, for the machine's first owner.
            txn = Txn(txn_id, owners[0].name, machine, TxnState.REQUESTED, "", txn_id)
        if txn is None:
            return None, {}, []
        body: dict[str, Any] | None = None
        if event.type == "txn.request":
            body = mapping.selection_request(txn.txn_ref, event)
            fields |= {
                "state": TxnState.REQUESTED,
                "selection": event.int("selection"),
                "price": event.int("price"),
                "deadline": event.body.get("deadline"),
            }
        elif event.type == "txn.vend":
            body = mapping.vend_result(txn.txn_ref, event)
        elif event.type == "txn.status":
            body = mapping.unlock_notice(txn.txn_ref, event)
        if event.type in OUTCOMES and body is not None:
            fields["state"] = TxnState.ENDED
        path = {"txn.request": Callback.TXN_REQUEST, "txn.vend": Callback.TXN_VEND}.get(
            event.type, Callback.TXN_UNLOCK
        )
        calls = [] if body is None else [NewDelivery(txn.third_party, path, body)]
        return txn, fields, calls

    async def on_answer(self, delivery: Delivery, answer: dict[str, Any]) -> None:
        """The third party answered a callback: a /txn/request answered ``success: false``
        refuses the selection (``deny``, with its message as the reason)."""
        if delivery.path != Callback.TXN_REQUEST or answer.get("success") is not False:
            return
        txn = await self.store.txn(str(delivery.body.get("txn_ref")))
        if txn is None or txn.txn_id is None or txn.state is not TxnState.REQUESTED:
            return
        reason = str(answer.get("message") or "denied by the third party")[:256]
        reply = await self.link.command(
            txn.machine,
            m.Op.DENY,
            {"txn_id": txn.txn_id, "reason": reason},
            command_id=derived_id(txn.txn_ref, m.Op.DENY),
            expires=txn.deadline,
        )
        log.info(
            "denied", machine=txn.machine, txn_ref=txn.txn_ref, ok=bool(reply and reply.get("ok"))
        )
