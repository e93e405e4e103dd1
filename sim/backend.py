"""A simulated third-party backend: it locks machines, approves or denies, and keeps books.

It plays the two use cases of the Connectivity Platform seed: **post billing** (a member's
balance is checked at the request and charged when the vend succeeds) and **reference payment**
(a stored payment method is charged at the request, which can fail, and refunded when the vend
fails). It deduplicates events by id, as the contract asks of a backend, and counts the
duplicates it dropped.

It refunds vends by transaction id (seed 004): the machine records the refund against the
vend; the backend moves the money (a member's balance is credited back) and books it once per
refund id, from the reply or from the ``txn.refund`` event, whichever comes first.

It also pushes a planogram and refills or restocks it, and keeps the stock it expects per
selection from what it loaded and what was sold (vends that succeeded, cash sales), so the
machine's reported levels can be checked against an independent count. It asks a machine for
data (an audit read now, its configuration) and collects the read's progress and the one
result, and asks whether it is idle or busy.

It pushes the allow-list for bounded offline approvals (``offline.allow``) and books each vend
a machine approved offline once, when its ``txn.vend`` (``offline: true``) arrives, charging the
member as for any vend.

And it issues vouchers (seed 002) and remote credits (seed 004): it books each one's outcome
as the machine reports it (what a voucher charged, what a credit used and has left) next to its
own count from the ``txn.vend`` events they paid, so the two can be checked against each other.

Given a private key it signs every command it sends (:mod:`vmc.cloud.signing`), as a backend
must when the machine is configured with its public key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.errors import VmcError
from vmc.cloud import signing
from vmc.cloud.sync import NO_DELAY


class LockRefusedError(VmcError):
    """The device refused the backend's lock (busy, out of service...)."""


class StockRefusedError(VmcError):
    """The device refused a planogram or stock command."""


class RefundRefusedError(VmcError):
    """The device refused a refund (unknown or unfinished transaction, amount over the rest)."""


class CommandRefusedError(VmcError):
    """The device refused a command that should not be refused (``status.check``)."""


class Policy(StrEnum):
    POST_BILLING = "post_billing"
    REFERENCE_PAYMENT = "reference_payment"
    DENY_ALL = "deny_all"
    SILENT = "silent"  # never answers a request: the device must expire it


@dataclass
class Entry:
    """The backend's book line for one transaction."""

    txn_id: str
    device: str
    member: str | None = None
    price: int = 0
    paid: int = 0
    charged: int = 0
    states: list[str] = field(default_factory=list)
    result: str | None = None
    vend_type: str = "paid"
    refunded: int = 0


@dataclass
class CreditEntry:
    """The backend's book line for one voucher or credit (``kind``), as the machine accepted it.

    ``vends`` are the ``txn.vend`` events it paid; ``status`` its one outcome
    (``voucher.status`` or ``credit.status``) once heard.
    """

    kind: str
    credit_id: str
    device: str
    value: int = 0
    vends: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] | None = None

    @property
    def spent(self) -> int:
        """What the vends it paid took, by the backend's own count: a vend that may have
        dispensed (``unknown``) counts, a failed one does not."""
        return sum(int(v["amount"]) for v in self.vends if v["result"] != "failure")

    @property
    def used(self) -> int | None:
        """What the machine says it used (a voucher's ``charged``); None before its outcome."""
        if self.status is None:
            return None
        return int(self.status["charged" if self.kind == "voucher" else "used"])

    def agrees(self) -> bool:
        """The machine's outcome and the backend's count say the same."""
        status = self.status
        if status is None or self.used != self.spent or self.spent > self.value:
            return False
        return self.kind == "voucher" or status["rest"] == self.value - self.spent


@dataclass
class StockBooks:
    """Per selection (MDB item number): the backend's own count, and the machine's word.

    ``expected`` follows the contract's arithmetic (a vend or cash sale takes 1, never below 0)
    from the loads the backend sent and the sales it saw; ``reported`` is the last
    ``stock.level`` the machine sent. Alarms and discrepancies are kept as they came.
    """

    par: dict[int, int] = field(default_factory=dict)
    products: dict[int, str] = field(default_factory=dict)
    expected: dict[int, int] = field(default_factory=dict)
    reported: dict[int, int] = field(default_factory=dict)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    discrepancies: list[dict[str, Any]] = field(default_factory=list)

    def planogram(self, document: dict[str, Any]) -> None:
        """A planogram the machine accepted: a selection keeps its count only when it sells
        the same plain product; recipes take no per-selection count."""
        plain = [s for s in document["selections"] if "par_level" in s]
        products = {int(s["number"]): str(s["product"]) for s in plain}
        self.expected = {
            number: self.expected.get(number, 0) if self.products.get(number) == product else 0
            for number, product in products.items()
        }
        self.reported = {n: v for n, v in self.reported.items() if n in self.expected}
        self.products = products
        self.par = {int(s["number"]): int(s["par_level"]) for s in plain}

    def sold(self, selection: Any) -> None:
        if isinstance(selection, int) and selection in self.expected:
            self.expected[selection] = max(0, self.expected[selection] - 1)

    def machine_levels(self) -> dict[int, int]:
        """The machine's levels for the planogram's selections (0 until it reported one)."""
        return {n: self.reported.get(n, 0) for n in self.expected}


@dataclass
class DataAnswer:
    """A data request as the backend saw it: the reply, the read's progress, the result
    (None when the request was refused, or the result did not come in time)."""

    reply: dict[str, Any]
    progress: list[dict[str, Any]]
    result: dict[str, Any] | None


@dataclass
class Books:
    entries: dict[str, Entry] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    events: int = 0
    sales: list[dict[str, Any]] = field(default_factory=list)
    stock: StockBooks = field(default_factory=StockBooks)
    refunds: dict[str, int] = field(default_factory=dict)
    """Booked refunds: refund id -> amount (minor units)."""

    def refund(self, device: str, txn_id: str, refund_id: str, amount: int) -> None:
        """Give money back once per refund id: to the member's balance under post billing, to
        the payment method otherwise."""
        if refund_id in self.refunds:
            return
        self.refunds[refund_id] = amount
        entry = self.entries.setdefault(txn_id, Entry(txn_id, device))
        entry.refunded += amount
        if entry.member is not None and entry.member in self.balances:
            self.balances[entry.member] += amount

    credits: dict[tuple[str, str], CreditEntry] = field(default_factory=dict)
    """Vouchers and credits by (kind, id)."""
    offline: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The vends machines approved while offline, by transaction id: each booked once."""
    verified: int = 0
    """Events and replies whose device signature verified (devices with a registered key)."""
    unverified: list[str] = field(default_factory=list)
    """Those that did not (unsigned, or signed by another key): dropped, never booked."""

    def vended_by_type(self) -> Counter[str]:
        """Successful cashless vends per vend type (paid, free, test)."""
        return Counter(e.vend_type for e in self.entries.values() if e.result == "success")

    def summary(self) -> dict[str, Any]:
        results = Counter(e.result for e in self.entries.values() if e.result)
        ends = Counter(e.states[-1] for e in self.entries.values() if e.result is None and e.states)
        charged = sum(e.charged for e in self.entries.values())
        refunded = sum(e.refunded for e in self.entries.values())
        return {
            "transactions": len(self.entries),
            "vended": results.get("success", 0),
            "failed": results.get("failure", 0),
            "unknown": results.get("unknown", 0),
            "ended_without_vend": dict(ends),
            "charged": charged,
            "refunded": refunded,
            "net": charged - refunded,
            "cash_sales": len(self.sales),
            "events": self.events,
            "duplicates_dropped": self.duplicates,
        }


class SimBackend:
    def __init__(
        self,
        url: str,
        *,
        policy: Policy = Policy.POST_BILLING,
        balances: dict[str, int] | None = None,
        payment_failure_rate: float = 0.0,
        prefix: str = "vmc",
        seed: int = 1,
        username: str | None = None,
        password: str | None = None,
        answer_delay: float = 0.0,
        persistent: bool = False,
        nodelay: bool = True,
        logger: logging.Logger | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        device_keys: dict[str, Ed25519PublicKey] | None = None,
        tls_context: ssl.SSLContext | None = None,
        protocol: aiomqtt.ProtocolVersion | None = None,
    ) -> None:
        """``tls_context`` for an mqtts:// ``url`` (with the backend's client certificate for a
        broker that requires one); ``protocol`` for a broker without MQTT 5 (default: 5, or
        3.1.1 when ``persistent``)."""
        parts = urlsplit(url)
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.tls_context = tls_context
        self.policy = policy
        self.books = Books(balances=dict(balances or {}))
        self.payment_failure_rate = payment_failure_rate
        self.prefix = prefix
        self.rng = random.Random(seed)
        self.username = username
        self.password = password
        self.answer_delay = answer_delay
        self.persistent = persistent
        self.protocol = protocol or (
            aiomqtt.ProtocolVersion.V311 if persistent else aiomqtt.ProtocolVersion.V5
        )
        self.nodelay = nodelay
        self.logger = logger
        self.signing_key = signing_key
        """Signs every command sent (``kid`` and ``sig``); None: commands go unsigned."""
        self.device_keys = dict(device_keys or {})
        """Devices that sign what they publish: their events and replies must verify."""
        self.identifier = f"sim-backend-{uuid.uuid4().hex[:8]}"
        self.status: dict[str, str] = {}
        self.state: dict[str, dict[str, Any]] = {}
        self.replies: dict[str, dict[str, Any]] = {}
        self.uncorrelated: list[dict[str, Any]] = []
        self.event_log: list[dict[str, Any]] = []
        self._seen: set[str] = set()
        self._client: aiomqtt.Client | None = None
        self._changed = asyncio.Condition()
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- connection --------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected; a persistent backend keeps its session across broker restarts."""
        while True:
            try:
                await self._connection()
            except aiomqtt.MqttError:
                self._ready.clear()
                self._client = None
                if not self.persistent:
                    raise
                await asyncio.sleep(0.2)

    async def _connection(self) -> None:
        # A persistent session is an MQTT 3.1.1 clean_session=False one: the broker queues
        # QoS 1 messages for it while it is away (and, with persistence, across restarts).
        async with aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.identifier,
            username=self.username,
            password=self.password,
            protocol=self.protocol,
            clean_session=False if self.persistent else None,
            socket_options=[NO_DELAY] if self.nodelay else [],
            logger=self.logger,
            tls_context=self.tls_context,
        ) as client:
            self._client = client
            client.pending_calls_threshold = 1000
            for leaf in ("events", "reply", "status", "state"):
                await client.subscribe(f"{self.prefix}/+/{leaf}", qos=1)
            self._ready.set()
            async for message in client.messages:
                await self._on_message(str(message.topic), message.payload)

    async def ready(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _on_message(self, topic: str, payload: Any) -> None:
        _, device, leaf = topic.split("/")
        try:
            body = cbor2.loads(payload)
        except Exception:  # a backend drops what it cannot read
            return
        if leaf in ("events", "reply") and not self._signed_by(device, leaf, body):
            return
        if leaf == "status":
            self.status[device] = body.get("state")
        elif leaf == "state":
            self.state[device] = body
        elif leaf == "reply":
            if body.get("id") is not None:
                self.replies[body["id"]] = body
            else:
                self.uncorrelated.append(body)
        elif leaf == "events":
            self._on_event(device, body)
        async with self._changed:
            self._changed.notify_all()

    def _signed_by(self, device: str, leaf: str, body: Any) -> bool:
        """Whether a device with a registered key signed this message; one without passes."""
        key = self.device_keys.get(device)
        if key is None:
            return True
        if isinstance(body, dict) and signing.verify(body, key):
            self.books.verified += 1
            return True
        shown = body.get("type", body.get("id")) if isinstance(body, dict) else None
        self.books.unverified.append(f"{device} {leaf} {shown}")
        return False

    # --- commands ----------------------------------------------------------------------------

    async def command(self, device: str, op: str, **fields: Any) -> dict[str, Any]:
        """Send a command and wait for its reply."""
        cmd_id = uuid.uuid4().hex
        await self.send(device, {"id": cmd_id, "op": op, **fields})
        reply: dict[str, Any] = await self.wait_for(lambda: self.replies.get(cmd_id), 10.0)
        return reply

    async def send(self, device: str, body: dict[str, Any]) -> None:
        """Publish a command, signed when the backend has a key."""
        body.setdefault("v", 1)
        body.setdefault("expires", time.time() + 30)
        if self.signing_key is not None:
            body = signing.sign(body, self.signing_key)
        await self.publish(device, body)

    async def publish(self, device: str, body: dict[str, Any]) -> None:
        """Publish a command map exactly as given (a test's forgery, say)."""
        assert self._client is not None
        await self._client.publish(f"{self.prefix}/{device}/cmd", cbor2.dumps(body), qos=1)

    async def stock_command(self, device: str, op: str, **fields: Any) -> dict[str, Any]:
        """A planogram or stock command; when the machine applied it, the backend's expected
        stock follows. A refused one raises ``StockRefusedError`` with its code and message."""
        reply = await self.command(device, op, **fields)
        if not reply["ok"]:
            raise StockRefusedError(f"{op} refused: {reply['code']}: {reply['message']}")
        stock = self.books.stock
        if op == "planogram.set":
            stock.planogram(fields["planogram"])
        elif op == "stock.restock":
            stock.expected = {n: stock.par[n] for n in stock.expected}
        elif op == "stock.refill":
            for line in fields["lines"]:
                number = line["selection"]
                stock.expected[number] = stock.expected.get(number, 0) + line["amount"]
        elif op == "stock.inventory":
            stock.expected.update({line["selection"]: line["level"] for line in fields["lines"]})
        return reply

    async def refund(
        self,
        device: str,
        txn_id: str,
        amount: int | None = None,
        *,
        reason: str | None = None,
        refund_id: str | None = None,
    ) -> dict[str, Any]:
        """Refund a vend (all that is left when ``amount`` is None) and book it once; a refused
        refund raises ``RefundRefusedError`` with its code and message."""
        fields = {"txn_id": txn_id, "amount": amount, "reason": reason, "refund_id": refund_id}
        given = {k: v for k, v in fields.items() if v is not None}
        reply = await self.command(device, "refund", **given)
        if not reply["ok"]:
            raise RefundRefusedError(f"refund refused: {reply['code']}: {reply['message']}")
        result = reply["result"]
        self.books.refund(device, txn_id, str(result["refund_id"]), int(result["amount"]))
        return reply

    def malformed_replies(self) -> list[dict[str, Any]]:
        """Replies to commands the device could not read at all (they carry no id)."""
        return self.uncorrelated

    async def lock(self, device: str, member: str | None = None, **fields: Any) -> str:
        reply = await self.command(device, "lock", ref=member, **fields)
        if not reply["ok"]:
            raise LockRefusedError(f"lock refused: {reply['code']}: {reply['message']}")
        txn_id: str = reply["result"]["txn_id"]
        # The transaction's first events may have been read before this coroutine resumed
        # (they follow the reply at once): keep the entry they opened.
        self.books.entries.setdefault(txn_id, Entry(txn_id, device, member))
        return txn_id

    async def data_request(
        self,
        device: str,
        *,
        report: bool = False,
        config: bool = False,
        request_id: str | None = None,
        timeout: float = 30.0,
    ) -> DataAnswer:
        """Ask for a report (a DEX read now) and/or the configuration; wait for its result."""
        fields: dict[str, Any] = {"report": report, "config": config}
        if request_id is not None:
            fields["request_id"] = request_id
        answered = len(self.data_results(request_id)) if request_id is not None else 0
        reply = await self.command(device, "data.request", **fields)
        if not reply["ok"]:
            return DataAnswer(reply, [], None)
        wanted = reply["result"]["request_id"]
        result = await self.wait_for(
            lambda: found[-1] if len(found := self.data_results(wanted)) > answered else None,
            timeout,
        )
        progress = [p for p in self.data_progress(wanted) if p["read_id"] == result["read_id"]]
        return DataAnswer(reply, progress, result)

    def data_results(self, request_id: str) -> list[dict[str, Any]]:
        """The ``data.result`` events of a request id (one per request; an id may be used
        again once its request is done)."""
        return [
            e
            for e in self.event_log
            if e["type"] == "data.result" and e["request_id"] == request_id
        ]

    def data_progress(self, request_id: str) -> list[dict[str, Any]]:
        """The ``data.progress`` events of the reads that answer a request id, in order."""
        return [
            e
            for e in self.event_log
            if e["type"] == "data.progress" and request_id in e["request_ids"]
        ]

    async def check_status(self, device: str) -> dict[str, Any]:
        """``status.check``'s result: ``status`` idle or busy, and the ``reasons``."""
        reply = await self.command(device, "status.check")
        if not reply["ok"]:
            raise CommandRefusedError(f"status.check refused: {reply['code']}: {reply['message']}")
        result: dict[str, Any] = reply["result"]
        return result

    async def voucher(
        self, device: str, voucher_id: str, *, value: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Send a voucher (``value`` None: the planogram price) and book it when accepted."""
        reply = await self.command(device, "voucher", voucher_id=voucher_id, value=value, **fields)
        if reply["ok"]:
            self._credit_entry("voucher", voucher_id, device).value = reply["result"]["value"]
        return reply

    async def credit(
        self, device: str, credit_id: str, amount: int, **fields: Any
    ) -> dict[str, Any]:
        """Send a remote credit and book it when accepted."""
        reply = await self.command(device, "credit", credit_id=credit_id, amount=amount, **fields)
        if reply["ok"]:
            self._credit_entry("credit", credit_id, device).value = reply["result"]["amount"]
        return reply

    async def offline_allow(
        self,
        device: str,
        version: int,
        limits: dict[str, tuple[int, int]],
        *,
        issued_at: float | None = None,
    ) -> dict[str, Any]:
        """Push the allow-list for offline approvals: ``limits`` is ref -> (max_vends,
        max_value); with post billing, a sensible max_value is the member's balance."""
        refs = [{"ref": r, "max_vends": v, "max_value": x} for r, (v, x) in limits.items()]
        when = time.time() if issued_at is None else issued_at
        return await self.command(
            device, "offline.allow", version=version, issued_at=when, refs=refs
        )

    async def wait_credit(self, kind: str, credit_id: str, timeout: float = 15.0) -> CreditEntry:
        """Until the voucher's or credit's outcome arrived."""

        def done() -> CreditEntry | None:
            entry = self.books.credits.get((kind, credit_id))
            return entry if entry is not None and entry.status is not None else None

        entry: CreditEntry = await self.wait_for(done, timeout)
        return entry

    def _credit_entry(self, kind: str, credit_id: str, device: str) -> CreditEntry:
        return self.books.credits.setdefault(
            (kind, credit_id), CreditEntry(kind, credit_id, device)
        )

    async def wait_for(self, probe: Any, timeout: float) -> Any:
        async with asyncio.timeout(timeout), self._changed:
            while (value := probe()) is None or value is False:
                await self._changed.wait()
            return value

    async def wait_done(self, txn_id: str, timeout: float = 15.0) -> Entry:
        """Until the transaction's outcome (vend result or end state) arrived."""

        def done() -> Entry | None:
            entry = self.books.entries.get(txn_id)
            final = {"denied", "expired", "cancelled", "vended", "failed", "unknown"}
            if entry is not None and (entry.result or final & set(entry.states)):
                return entry
            return None

        result: Entry = await self.wait_for(done, timeout)
        return result

    # --- the books ---------------------------------------------------------------------------

    def _on_event(self, device: str, body: dict[str, Any]) -> None:
        event_id = str(body.get("id"))
        if event_id in self._seen:
            self.books.duplicates += 1
            return
        self._seen.add(event_id)
        self.books.events += 1
        self.event_log.append(body)
        kind = body.get("type")
        if kind == "sale":
            self.books.sales.append(body)
            self.books.stock.sold(body.get("selection"))
            return
        if kind == "stock.level" and body.get("selection") is not None:
            self.books.stock.reported[int(body["selection"])] = int(body["after"])
        elif kind == "stock.alarm":
            self.books.stock.alarms.append(body)
        elif kind == "stock.discrepancy":
            self.books.stock.discrepancies.append(body)
        if kind in ("voucher.status", "credit.status"):
            name = str(kind).split(".")[0]
            self._credit_entry(name, body[f"{name}_id"], device).status = body
            return
        if kind == "txn.vend" and (body.get("voucher_id") or body.get("credit_id")):
            # Paid from a voucher or credit: its money is in that book, not a transaction's.
            name = "voucher" if body.get("voucher_id") else "credit"
            self._credit_entry(name, body[f"{name}_id"], device).vends.append(body)
            if body["result"] == "success":
                self.books.stock.sold(body.get("selection"))
            return
        if not str(kind).startswith("txn."):
            return  # audits and machine events: kept in event_log, not in the books
        txn_id = body["txn_id"]
        entry = self.books.entries.setdefault(txn_id, Entry(txn_id, device, body.get("ref")))
        if kind == "txn.vend" and body.get("offline"):
            # Approved by the machine from the allow-list: the backend hears of it only now,
            # and charges what the machine approved (a vend that may have dispensed counts).
            self.books.offline[txn_id] = body
            entry.paid = int(body["amount"])
        if kind == "txn.request":
            entry.price = body["price"]
            entry.vend_type = str(body.get("vend_type", "paid"))
            entry.states.append("requested")
            task = asyncio.get_running_loop().create_task(self._decide(device, entry, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == "txn.vend":
            # A test vend has no txn.request: its vend says its type.
            entry.vend_type = str(body.get("vend_type", entry.vend_type))
            entry.result = body["result"]
            entry.states.append(body["result"])
            if body["result"] == "success":
                self.books.stock.sold(body.get("selection"))
            self._settle(entry, body)
        elif kind == "txn.status":
            entry.states.append(body["state"])
            if body["state"] in ("void", "expired", "cancelled", "denied"):
                self._release(entry)  # nothing was dispensed
        elif kind == "txn.refund":
            self.books.refund(device, txn_id, str(body["refund_id"]), int(body["amount"]))

    async def _decide(self, device: str, entry: Entry, request: dict[str, Any]) -> None:
        if self.policy is Policy.SILENT:
            return
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        # A free or test vend moves no money: approved with amount 0, never charged.
        price = request["price"] if entry.vend_type == "paid" else 0
        approve = self.policy is not Policy.DENY_ALL
        reason = "denied by policy"
        member = entry.member
        if approve and self.policy is Policy.POST_BILLING and member is not None:
            approve = self.books.balances.get(member, 0) >= price
            reason = "insufficient balance"
        if approve and self.policy is Policy.REFERENCE_PAYMENT:
            approve = self.rng.random() >= self.payment_failure_rate
            reason = "reference payment failed"
            if approve:
                entry.charged += price  # the reference payment is taken now
        if approve:
            entry.paid = price
            answer = {"op": "paid", "txn_id": entry.txn_id, "amount": price}
        else:
            answer = {"op": "deny", "txn_id": entry.txn_id, "reason": reason}
        # The broker may be gone (a stop, an outage): the machine then expires the request, as
        # it does when a real backend cannot reach it.
        with contextlib.suppress(aiomqtt.MqttError):
            await self.send(device, {"id": uuid.uuid4().hex, **answer})

    def _settle(self, entry: Entry, vend: dict[str, Any]) -> None:
        result = vend["result"]
        if vend.get("offline") and result == "unknown":
            result = "success"  # the machine's bound counted it: so do the books
        if self.policy is Policy.POST_BILLING and result == "success":
            entry.charged += entry.paid
            if entry.member is not None:
                self.books.balances[entry.member] = (
                    self.books.balances.get(entry.member, 0) - entry.paid
                )
        elif self.policy is Policy.REFERENCE_PAYMENT and result == "failure":
            self._release(entry)

    def _release(self, entry: Entry) -> None:
        """Return a reference payment taken at the request: nothing was dispensed."""
        if self.policy is Policy.REFERENCE_PAYMENT:
            entry.charged = 0

    async def close(self) -> None:
        """Stop deciding; a decision that failed (the broker went away) is dropped with it."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
